"""Summarize a scripts/gpu_curves.sh run: one row per recipe and evaluated step, as markdown and JSON.

    python scripts/gpu_curves_table.py ROOT [--json OUT.json] [--overwrite]

Reads ROOT/runs.tsv (name, overrides; written by gpu_curves.sh) and every ROOT/NAME/**/eval/<set>-step<N>.json. Each
row: projected exact match with its bootstrap 95% CI, answer NLL and shuffled_source exact match on the narrative file
and on the held-out passage genres.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SETS = ("narrative", "passages-test")


def read_runs(root: Path) -> list[tuple[str, str]]:
    table = root / "runs.tsv"
    if not table.is_file():
        raise SystemExit(f"{table}: not found; ROOT must be the folder gpu_curves.sh wrote (ROOT=...)")
    runs = []
    for line in table.read_text().splitlines():
        if line.strip():
            name, _, overrides = line.partition("\t")
            runs.append((name, overrides))
    return runs


def points(root: Path, name: str) -> dict[int, dict[str, dict]]:
    """step -> set -> results JSON of run `name`."""
    found: dict[int, dict[str, dict]] = {}
    for path in sorted((root / name).glob("**/eval/*-step*.json")):
        tag, _, step = path.stem.rpartition("-step")
        if tag in SETS:
            found.setdefault(int(step), {})[tag] = json.loads(path.read_text())
    return found


def cell(results: dict | None) -> dict | None:
    if results is None:
        return None
    projected, shuffled = results["conditions"]["projected"], results["conditions"].get("shuffled_source")
    return {
        "n": results["n"],
        "projected_exact_match": projected["exact_match"],
        "projected_ci95": projected["ci95"]["exact_match"],
        "projected_answer_nll": projected["answer_nll"],
        "shuffled_exact_match": None if shuffled is None else shuffled["exact_match"],
    }


def rows(root: Path) -> list[dict]:
    out = []
    for name, overrides in read_runs(root):
        for step, sets in sorted(points(root, name).items()):
            out.append({"run": name, "overrides": overrides, "step": step, **{s: cell(sets.get(s)) for s in SETS}})
    return out


def markdown(table: list[dict]) -> str:
    head = (
        "| run | overrides | step | narrative: projected EM [95% CI] | NLL | shuffled "
        "| passages:test: projected EM [95% CI] | NLL | shuffled |"
    )
    lines = [head, "|" + " --- |" * 9]
    for r in table:
        cells = []
        for s in SETS:
            c = r[s]
            if c is None:
                cells += ["-", "-", "-"]
                continue
            lo, hi = c["projected_ci95"]
            cells += [
                f"{c['projected_exact_match']:.2f} [{lo:.2f}, {hi:.2f}]",
                f"{c['projected_answer_nll']:.2f}",
                "-" if c["shuffled_exact_match"] is None else f"{c['shuffled_exact_match']:.2f}",
            ]
        lines.append(
            f"| {r['run']} | `{r['overrides'] or '(default)'}` | {r['step']} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--json", type=Path, help="also write the rows (and the command) to this JSON file")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    args = parser.parse_args(argv)
    table = rows(args.root)
    if not table:
        raise SystemExit(f"{args.root}: no eval/<set>-step<N>.json files under the runs named in runs.tsv")
    print(markdown(table))
    if args.json:
        if args.json.exists() and not args.overwrite:
            raise SystemExit(f"--json {args.json}: exists; pass --overwrite to replace it")
        args.json.parent.mkdir(parents=True, exist_ok=True)
        command = "python scripts/gpu_curves_table.py " + " ".join(sys.argv[1:] if argv is None else argv)
        args.json.write_text(json.dumps({"command": command, "rows": table}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
