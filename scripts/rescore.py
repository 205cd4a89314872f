"""Re-score saved generations with the current metric: for every generations.jsonl given (files or folders, searched
recursively for *generations.jsonl), each condition's exact match as it was written (the rows' `correct`) and as
`kvproj.eval.metrics.exact_match` scores the same text now, with the examples whose score moved. Run it after a
change to the metric to see which committed numbers it moves; nothing is rewritten.

    .venv/bin/python scripts/rescore.py docs/results [--changed_only] [--output rescore.json [--overwrite]]
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

from _output import add_output, check_output, write_output

from kvproj.eval.generations import read_rows
from kvproj.eval.metrics import exact_match


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


def rescore(path: Path) -> dict[str, dict]:
    """Per condition: n, exact match as written and now, and the ids (with answer and first 60 characters written)
    whose score moved."""
    by_condition: dict[str, list[dict]] = defaultdict(list)
    for number, row in enumerate(read_rows(path), 1):
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", type=Path, nargs="+", help="generations.jsonl files or folders holding them")
    parser.add_argument("--changed_only", action="store_true", help="list only the conditions whose score moved")
    add_output(parser, "the re-scored exact matches")
    args = parser.parse_args(argv)
    check_output(args)
    files = generation_files(args.paths)
    if not files:
        raise SystemExit(f"no *generations.jsonl under {', '.join(map(str, args.paths))}")
    results = {}
    moved = 0
    for path in files:
        scored = rescore(path)
        moved += sum(len(c["moved"]) for c in scored.values())
        if args.changed_only:
            scored = {k: v for k, v in scored.items() if v["moved"]}
        if scored:
            results[str(path)] = scored
    write_output(args, {"files": len(files), "rows_moved": moved, "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
