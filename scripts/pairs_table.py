"""One markdown row per (pair, eval set) from `kvproj evaluate` results files: every condition's exact match, the
projected cache's 95% CI, the floor-to-oracle gap it closes and its margin over text-to-text.

A row may merge several results files of the same examples (same eval set, n, source and target), e.g. the
references of one run with the projected cache of another: `FILE@cond+cond` takes only those conditions of FILE;
a condition taken from two files must agree.

    python scripts/pairs_table.py "LABEL=results.json[@cond+cond][,more.json[@...]]" ... [--output table.json [--overwrite]]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from _output import add_output, check_output, write_output

from kvproj.eval.metrics import gap_closed

CONDITIONS = ("target_alone", "target_text", "source_text", "projected", "shuffled_source", "text_to_text")
SAME = ("eval_set", "n", "source", "target")


def merge(files: list[str]) -> dict:
    merged: dict = {"files": files, "conditions": {}}
    for item in files:
        f, _, only = item.partition("@")
        if not Path(f).is_file():
            sys.exit(f"{f}: no such results file; give results.json files written by `kvproj evaluate`")
        r = json.loads(Path(f).read_text())
        wanted = set(only.split("+")) if only else set(r["conditions"])
        if wanted - set(r["conditions"]):
            sys.exit(
                f"{f}: has no condition {sorted(wanted - set(r['conditions']))}; it has {sorted(r['conditions'])}"
            )
        for key in SAME:
            if key in merged and merged[key] != r[key]:
                sys.exit(f"{f}: {key} is {r[key]!r}, another file of the row has {merged[key]!r}")
            merged[key] = r[key]
        for name, c in r["conditions"].items():
            if name not in wanted:
                continue
            old = merged["conditions"].get(name)
            if old is not None and abs(old["exact_match"] - c["exact_match"]) > 1e-9:
                sys.exit(f"{f}: condition {name} disagrees with another file of the row")
            merged["conditions"][name] = c
    return merged


def row(label: str, merged: dict) -> tuple[str, dict]:
    c = merged["conditions"]
    em = {k: c[k]["exact_match"] for k in CONDITIONS if k in c}
    summary = {"label": label, **{k: merged[k] for k in SAME}, "exact_match": em, "files": merged["files"]}
    cells = [label, merged["eval_set"], str(merged["n"])]
    for k in CONDITIONS:
        if k not in em:
            cells.append("-")
        elif k == "projected":
            lo, hi = c[k]["ci95"]["exact_match"]
            cells.append(f"**{em[k]:.2f}** [{lo:.2f}, {hi:.2f}]")
        else:
            cells.append(f"{em[k]:.2f}")
    gap = None
    if {"target_alone", "target_text", "projected"} <= em.keys():
        gap = gap_closed(em["projected"], em["target_alone"], em["target_text"])
    summary["gap_closed"] = gap
    cells.append("-" if gap is None else f"{gap:.2f}")
    if {"projected", "text_to_text"} <= em.keys():
        summary["over_text_to_text"] = em["projected"] - em["text_to_text"]
        cells.append(f"{em['projected'] - em['text_to_text']:+.2f}")
    else:
        cells.append("-")
    return "| " + " | ".join(cells) + " |", summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rows", nargs="+", help="LABEL=results.json[@cond+cond][,more.json...]")
    add_output(ap, "the rows")
    # the name the committed tables' recorded commands use
    ap.add_argument("--json", type=Path, dest="output", help="the same as --output")
    args = ap.parse_args(argv)
    check_output(args)
    header = ["pair", "eval set", "n", "floor", "oracle", "source reads text", "projected [95% CI]", "shuffled",
              "text-to-text", "gap closed", "projected - text-to-text"]  # fmt: skip
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    out = []
    for spec in args.rows:
        if "=" not in spec:
            sys.exit(f"row {spec!r}: expected LABEL=results.json[,more.json...]")
        label, files = spec.split("=", 1)
        line, summary = row(label, merge(files.split(",")))
        print(line)
        out.append(summary)
    command = " ".join(["scripts/pairs_table.py", *(sys.argv[1:] if argv is None else argv)])
    write_output(args, {"command": command, "rows": out}, indent=1, echo=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
