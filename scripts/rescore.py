"""Re-score saved generations with the current metric: for every generations.jsonl given (files or folders, searched
recursively for *generations.jsonl), each condition's exact match as it was written (the rows' `correct`) and as
`kvproj.eval.metrics.exact_match` scores the same text now, with the examples whose score moved. Run it after a
change to the metric to see which committed numbers it moves. Nothing is rewritten unless --rewrite is given: then
every generations file whose scores moved, and the results file beside it (generations.jsonl -> results.json,
NAME-generations.jsonl -> NAME.json), are rewritten with the text metrics scored again
(kvproj.eval.rescore.rescore_results: means, 95% intervals, gap closed; NLL, KL and latency kept), and the results
record the rescoring under "rescored".

    .venv/bin/python scripts/rescore.py docs/results [--changed_only] [--rewrite] [--output rescore.json [--overwrite]]
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections import defaultdict
from pathlib import Path

from _output import add_output, check_output, write_output

from kvproj.atomic import atomic_write
from kvproj.eval.generations import read_rows, write_generations
from kvproj.eval.metrics import exact_match
from kvproj.eval.rescore import RescoreError, rescore_results


def generation_files(paths: list[Path]) -> list[Path]:
    """The generations files named, folders expanded (sorted); SystemExit naming a path that is neither."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(path.rglob("*generations.jsonl"))
        elif path.is_file():
            files.append(path)
        else:
            raise SystemExit(
                f"{path}: no such file or folder; give generations.jsonl files or folders holding them"
            )
    return files


def rescore(path: Path, rows: list[dict]) -> dict[str, dict]:
    """Per condition of one generations file's rows: n, exact match as written and now, and the ids (with answer and
    first 60 characters written) whose score moved."""
    by_condition: dict[str, list[dict]] = defaultdict(list)
    for number, row in enumerate(rows, 1):
        missing = {"condition", "generated", "answer", "correct"} - row.keys()
        if missing:
            raise SystemExit(f"{path}: row {number} needs {sorted(missing)}; is this an evaluate output?")
        by_condition[row["condition"]].append(row)
    out = {}
    for condition, rows in by_condition.items():
        now = [exact_match(r["generated"], r["answer"]) for r in rows]
        moved = [
            {"id": r.get("id"), "answer": r["answer"], "generated": r["generated"][:60], "was": bool(r["correct"])}
            for r, score in zip(rows, now)
            if bool(score) != bool(r["correct"])
        ]
        out[condition] = {
            "n": len(rows),
            "exact_match_written": sum(bool(r["correct"]) for r in rows) / len(rows),
            "exact_match_now": sum(now) / len(rows),
            "moved": moved,
        }
    return out


def results_beside(path: Path) -> Path:
    """The results file an evaluation wrote beside its generations file."""
    suffix = "-generations.jsonl"
    if path.name.endswith(suffix):
        return path.with_name(path.name[: -len(suffix)] + ".json")
    return path.with_name("results.json")


def rewrites(files: dict[Path, list[dict]], command: str) -> list[tuple[Path, Path, dict, list[dict], int]]:
    """For every generations file whose scores moved: (generations path, results path, rescored results, rescored
    rows, rows moved). Token F1 can move with no exact match moving. Everything is checked and scored before the
    caller writes anything: SystemExit naming the files when a generations file has no results beside it or the two
    do not belong together."""
    lonely = [p for p in files if not results_beside(p).is_file()]
    if lonely:
        raise SystemExit(
            "--rewrite needs each generations file's results beside it (generations.jsonl -> results.json, "
            "NAME-generations.jsonl -> NAME.json); none for: "
            + ", ".join(str(p) for p in lonely)
            + "; name the files to rewrite instead of their folder"
        )
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    out = []
    for path, read in files.items():
        results_path = results_beside(path)
        try:
            written = json.loads(results_path.read_text())
            results, rows, moved = rescore_results(written, read)
        except RescoreError as err:
            raise SystemExit(f"{path} and {results_path}: {err}") from err
        if results != written:
            results.setdefault("rescored", []).append({"date": stamp, "rows_moved": moved, "command": command})
            out.append((path, results_path, results, rows, moved))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", type=Path, nargs="+", help="generations.jsonl files or folders holding them")
    parser.add_argument("--changed_only", action="store_true", help="list only the conditions whose score moved")
    parser.add_argument(
        "--rewrite", action="store_true", help="rewrite the generations and results files whose scores moved"
    )
    add_output(parser, "the re-scored exact matches")
    args = parser.parse_args(argv)
    check_output(args)
    files = {path: read_rows(path) for path in generation_files(args.paths)}  # each file read once
    if not files:
        raise SystemExit(f"no *generations.jsonl under {', '.join(map(str, args.paths))}")
    results = {}
    moved = 0
    command = "python scripts/rescore.py " + " ".join(sys.argv[1:] if argv is None else argv)
    for path, rows in files.items():
        scored = rescore(path, rows)
        moved += sum(len(c["moved"]) for c in scored.values())
        if args.changed_only:
            scored = {k: v for k, v in scored.items() if v["moved"]}
        if scored:
            results[str(path)] = scored
    planned = rewrites(files, command) if args.rewrite else []  # after the rows' checks above; before any write
    for path, results_path, rescored, rows, rows_moved in planned:
        write_generations(path, rows)
        atomic_write(results_path, json.dumps(rescored, indent=2) + "\n")
        print(f"rewrote {results_path} ({rows_moved} exact-match rows moved) and {path}", file=sys.stderr)
    out = {"files": len(files), "rows_moved": moved, "results": results}
    if args.rewrite:
        out["rewritten"] = [str(p[1]) for p in planned]
    write_output(args, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
