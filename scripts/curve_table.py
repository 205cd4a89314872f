"""A learning curve as one markdown table and a small JSON: the files `FactsEvalCallback` writes during training
(`<log dir>/eval/<set>-step<N>.json`), one row per step, per eval set the projected cache's exact match [95% CI],
its answer NLL and the shuffled control.

The callback evaluates only the conditions it was given (projected, shuffled_source); the references of the same
examples (floor = target_alone, oracle = target_text, text_to_text) may come from a `kvproj evaluate` results file
of the same set and size: `--references SET=results.json` adds each step's floor-to-oracle gap closed and margin
over text-to-text for that set.

    python scripts/curve_table.py EVAL_DIR [--references narrative=results.json ...] [--sets narrative ...]
        [--output curve.json [--overwrite]]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from _output import add_output, check_output, write_output

from kvproj.eval.metrics import gap_closed

REFERENCES = ("target_alone", "target_text", "source_text", "text_to_text")
_NAME = re.compile(r"(?P<tag>.+)-step(?P<step>\d+)\.json$")


def read_points(folder: Path) -> dict[str, dict[int, dict]]:
    """{set tag: {step: callback results}} from the files in `folder`."""
    if not folder.is_dir():
        sys.exit(f"{folder}: no such folder; give the eval/ folder of a run with FactsEvalCallback")
    points: dict[str, dict[int, dict]] = {}
    for path in sorted(folder.iterdir()):
        if m := _NAME.match(path.name):
            points.setdefault(m["tag"], {})[int(m["step"])] = json.loads(path.read_text())
    if not points:
        sys.exit(f"{folder}: no <set>-step<N>.json files (what FactsEvalCallback writes)")
    return points


def read_references(specs: list[str], points: dict[str, dict[int, dict]]) -> dict[str, dict]:
    refs = {}
    for spec in specs:
        tag, sep, file = spec.partition("=")
        if not sep:
            sys.exit(f"--references {spec!r}: expected SET=results.json")
        if tag not in points:
            sys.exit(f"--references {spec!r}: the curve has no set {tag!r}; it has {sorted(points)}")
        if not Path(file).is_file():
            sys.exit(f"--references {spec!r}: no such results file {file}")
        r = json.loads(Path(file).read_text())
        n = {p["n"] for p in points[tag].values()}
        if n != {r["n"]}:
            sys.exit(f"--references {spec!r}: {file} has n={r['n']}, the curve's {tag} points have n={sorted(n)}")
        missing = {"target_alone", "target_text"} - set(r["conditions"])
        if missing:
            sys.exit(f"--references {spec!r}: {file} lacks {sorted(missing)}; it has {sorted(r['conditions'])}")
        refs[tag] = {k: c["exact_match"] for k, c in r["conditions"].items() if k in REFERENCES}
        refs[tag]["file"] = file
    return refs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path, help="the eval/ folder FactsEvalCallback wrote")
    ap.add_argument(
        "--references", nargs="*", default=[], help="SET=results.json of `kvproj evaluate`, same examples"
    )
    ap.add_argument(
        "--sets", nargs="+", default=None, help="the sets (file tags) to show, in this order (default: all)"
    )
    add_output(ap, "the curve")
    args = ap.parse_args(argv)
    check_output(args)
    points = read_points(args.folder)
    refs = read_references(args.references, points)
    tags = args.sets or sorted(points)
    if unknown := [t for t in tags if t not in points]:
        sys.exit(f"--sets: the curve has no set {unknown}; it has {sorted(points)}")
    steps = sorted({s for per in points.values() for s in per})
    header = ["step"]
    for tag in tags:
        header += [f"{tag}: projected EM [95% CI]", "answer NLL", "shuffled"]
        if tag in refs:
            header += ["gap closed", "- text-to-text"]
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    rows = []
    for step in steps:
        cells, row = [f"{step:,}"], {"step": step}
        for tag in tags:
            p = points[tag].get(step)
            if p is None:
                cells += ["-"] * (5 if tag in refs else 3)
                continue
            c = p["conditions"]
            proj = c["projected"]
            lo, hi = proj["ci95"]["exact_match"]
            entry = {
                "n": p["n"],
                "projected": proj["exact_match"],
                "ci95": [lo, hi],
                "answer_nll": proj["answer_nll"],
            }
            cells += [f"{proj['exact_match']:.2f} [{lo:.2f}, {hi:.2f}]", f"{proj['answer_nll']:.2f}"]
            if "shuffled_source" in c:
                entry["shuffled"] = c["shuffled_source"]["exact_match"]
                cells.append(f"{entry['shuffled']:.2f}")
            else:
                cells.append("-")
            if tag in refs:
                ref = refs[tag]
                entry["gap_closed"] = gap_closed(proj["exact_match"], ref["target_alone"], ref["target_text"])
                cells.append("-" if entry["gap_closed"] is None else f"{entry['gap_closed']:.2f}")
                if "text_to_text" in ref:
                    entry["over_text_to_text"] = proj["exact_match"] - ref["text_to_text"]
                    cells.append(f"{entry['over_text_to_text']:+.2f}")
                else:
                    cells.append("-")
            row[tag] = entry
        print("| " + " | ".join(cells) + " |")
        rows.append(row)
    command = " ".join(["scripts/curve_table.py", *(sys.argv[1:] if argv is None else argv)])
    write_output(args, {"command": command, "references": refs, "rows": rows}, indent=1, echo=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
