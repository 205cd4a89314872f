"""How near the misses of one condition come: of the examples a condition gets wrong, how many first lines hold
the first four characters of an answer word (the entity carried, its spelling not: "Hamish Dunlebya" for "Hamish
Dunleavy", "Tessalville" for "Tessaluna"; `kvproj.eval.metrics.near_miss`), and how many run the whole answer on
into a longer word ("Tamsworthsmith" for "Tamsworth", "191111" for "1911"; `kvproj.eval.metrics.overrun`). Also
how many first lines START with the answer (`kvproj.eval.metrics.answer_first`: a line listing several candidates
counts as exact match, not here), and how many first lines are lists of three or more comma-separated parts
(`kvproj.eval.metrics.listed`), with the exact matches among them that are not the list's first item.

    .venv/bin/python scripts/near_misses.py RUN/generations.jsonl [--condition projected] [--output near_misses.json [--overwrite]]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _output import add_output, check_output, write_output

from kvproj.eval.generations import read_generations
from kvproj.eval.metrics import answer_first, listed, near_miss, overrun


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("generations", type=Path, help="generations.jsonl written by `python -m kvproj evaluate`")
    parser.add_argument("--condition", default="projected")
    add_output(parser, "the counts")
    args = parser.parse_args(argv)
    check_output(args)
    try:
        rows = read_generations(args.generations, args.condition)
    except ValueError as error:
        raise SystemExit(f"--condition: {error}") from None
    misses = [r for r in rows if not r["correct"]]
    near = [r for r in misses if near_miss(r["generated"], r["answer"])]
    over = [r for r in misses if overrun(r["generated"], r["answer"])]
    lists = [r for r in rows if listed(r["generated"])]
    hedged = [r for r in lists if r["correct"] and not answer_first(r["generated"], r["answer"])]
    out = {
        "generations": str(args.generations),
        "condition": args.condition,
        "examples": len(rows),
        "correct": len(rows) - len(misses),
        "correct_answer_first": int(sum(answer_first(r["generated"], r["answer"]) for r in rows)),
        "misses": len(misses),
        "near_misses": len(near),
        "near_miss_examples": [{"answer": r["answer"], "generated": r["generated"][:60]} for r in near[:8]],
        "overruns": len(over),
        "overrun_examples": [{"answer": r["answer"], "generated": r["generated"][:60]} for r in over[:8]],
        "listed": len(lists),
        "listed_correct_not_first": len(hedged),
        "listed_correct_not_first_examples": [
            {"answer": r["answer"], "generated": r["generated"][:60]} for r in hedged[:8]
        ],
    }
    write_output(args, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
