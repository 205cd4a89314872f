"""Which examples one run gets right that another gets wrong, and the reverse: the flips between two
generations.jsonl files of `python -m kvproj evaluate` on the same eval set (matched by example id), for one
condition. Two runs with the same exact match can differ on many examples; the flips say what changed.

    .venv/bin/python scripts/flips.py BEFORE/generations.jsonl AFTER/generations.jsonl [--condition projected]
        [--output flips.json [--overwrite]]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from _output import add_output, check_output, write_output

from kvproj.eval.generations import read_generations


def _rows(path: Path, condition: str) -> dict[str, dict]:
    try:
        return {r["id"]: r for r in read_generations(path, condition)}
    except ValueError as error:
        raise SystemExit(f"--condition: {error}") from None


def flips(before: dict[str, dict], after: dict[str, dict]) -> dict:
    """Counts and lists of the examples that turn right / wrong from `before` to `after` (shared ids only)."""
    shared = [k for k in before if k in after]
    if not shared:
        raise SystemExit("the two files share no example id: are they from the same eval set?")

    def listed(keys: list[str]) -> list[dict]:
        return [
            {
                "id": k,
                "answer": after[k]["answer"],
                "before": before[k]["generated"],
                "after": after[k]["generated"],
            }
            for k in keys
        ]

    right = [k for k in shared if after[k]["correct"] and not before[k]["correct"]]
    wrong = [k for k in shared if before[k]["correct"] and not after[k]["correct"]]
    return {
        "examples": len(shared),
        "correct_before": sum(bool(before[k]["correct"]) for k in shared),
        "correct_after": sum(bool(after[k]["correct"]) for k in shared),
        "turn_right": len(right),
        "turn_wrong": len(wrong),
        "right": listed(right),
        "wrong": listed(wrong),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path, help="generations.jsonl of the reference run")
    parser.add_argument("after", type=Path, help="generations.jsonl of the run compared with it")
    parser.add_argument("--condition", default="projected")
    add_output(parser, "the flips")
    args = parser.parse_args(argv)
    check_output(args)
    out = {
        "before": str(args.before),
        "after": str(args.after),
        "condition": args.condition,
        **flips(_rows(args.before, args.condition), _rows(args.after, args.condition)),
    }
    write_output(args, out, indent=1, echo=False)
    print(
        f"{out['examples']} examples: {out['correct_before']} -> {out['correct_after']} correct; "
        f"{out['turn_right']} turn right, {out['turn_wrong']} turn wrong"
    )
    for tag in ("right", "wrong"):
        for r in out[tag]:
            print(
                f"  {'+' if tag == 'right' else '-'} {r['answer']!r}: {r['before'][:40]!r} -> {r['after'][:40]!r}"
            )
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except BrokenPipeError:  # `| head` closed stdout early; --output was written before any printing
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the Python docs' recipe (signal module)
        raise SystemExit(0) from None
