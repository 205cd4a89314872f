"""What kinds of answers a set asks for: the share of numbers, codes (anything else with a digit: "CA-3831", "12
May"), names and titles (capitalized: "Hamish Dunleavy", "The Silver Goat") and common words ("a tiny snail") among
its answers, and for a run, its exact match on each kind. Two held-out sets with different mixes can move in
opposite directions under one change of the training passages (docs/evaluation.md, "Wider genres"); raising a
kind's share among the training answers did not carry that kind better ("Balancing the kinds of answer").

    .venv/bin/python scripts/answer_mix.py narrative passages:test train:core train:wide [--limit 100]
        [--train_examples 1500] [--output answer_mix.json [--overwrite]]

A set is an evaluation set as `python -m kvproj evaluate --eval_file` reads it (`narrative`, `passages:val`,
`passages:test` with the default held-out genres, or a JSONL file of {context, question, answer}), first --limit
examples; or `train:GENRE_SET` (core, wide) or `train:GENRE_SET+balanced` (with `data.passages.answer_balance`): the
first --train_examples TRAINING passages of that genre set, with the broad lexicon the default trains on; or
`run:GENERATIONS.jsonl` (written by `python -m kvproj evaluate`): the answers of one condition's rows (--condition,
default projected), all of them but --exclude_ids, with the exact match the run got overall and on each kind.

    .venv/bin/python scripts/answer_mix.py run:RUN/generations.jsonl run:OTHER/generations.jsonl
"""

from __future__ import annotations

import argparse
from collections import Counter

from _output import add_output, check_output, write_output

from kvproj.data.facts import BUNDLED_EVAL_FILES
from kvproj.data.passages import ANSWER_KINDS, GENRE_SETS, PassagesConfig, answer_kind, passage_example

TRAIN_SETS = [f"train:{g}{b}" for g in GENRE_SETS for b in ("", "+balanced")]
EVAL_SETS = ", ".join([*BUNDLED_EVAL_FILES, "passages:val", "passages:test"])


def mix(answers: list[str]) -> dict[str, float]:
    counts = Counter(answer_kind(a) for a in answers)
    return {k: round(counts[k] / len(answers), 3) for k in ANSWER_KINDS}


def scores_by_kind(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Per answer kind: how many of a run's examples ask for it, the share it got right (exact match: the answer in
    the first line) and the share whose first line starts with the answer (`kvproj.eval.metrics.answer_first`)."""
    from kvproj.eval.metrics import answer_first

    out = {}
    for k in ANSWER_KINDS:
        of_kind = [r for r in rows if answer_kind(r["answer"]) == k]
        n = len(of_kind)
        hits = sum(r["correct"] for r in of_kind)
        first = sum(answer_first(r["generated"], r["answer"]) for r in of_kind)
        out[k] = {
            "examples": n,
            "exact_match": round(hits / n, 3) if n else None,
            "answer_first": round(first / n, 3) if n else None,
        }
    return out


def run_rows(spec: str, condition: str) -> list[dict]:
    from kvproj.eval.generations import read_generations

    path = spec.removeprefix("run:")
    try:
        return read_generations(path, condition)
    except FileNotFoundError:
        raise SystemExit(
            f"set {spec}: no such file; valid: run:GENERATIONS.jsonl written by `kvproj evaluate`"
        ) from None
    except ValueError as error:
        raise SystemExit(f"--condition: {error}") from None


def answers_of(spec: str, limit: int, train_examples: int) -> list[str]:
    if spec.startswith("train:"):
        if spec not in TRAIN_SETS:
            raise SystemExit(f"set {spec}: valid training sets are {', '.join(TRAIN_SETS)}")
        genre_set, _, balanced = spec.removeprefix("train:").partition("+")
        cfg = PassagesConfig(lexicon="broad", genre_set=genre_set, answer_balance=bool(balanced))
        return [passage_example(cfg, "train", i)["answer"] for i in range(train_examples)]
    from kvproj.eval.run import load_examples

    try:
        examples = load_examples("facts", spec, "test", None, limit)
    except (ValueError, FileNotFoundError) as error:
        # the evaluator's message names the eval sets; add the sets only this script reads
        raise SystemExit(
            f"set {spec}: {error}; or a training set ({', '.join(TRAIN_SETS)}) or run:GENERATIONS.jsonl"
        ) from None
    return [e["answer"] for e in examples[:limit]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "sets",
        nargs="+",
        help=f"{EVAL_SETS}, a JSONL file, {', '.join(TRAIN_SETS)}, run:GENERATIONS.jsonl",
    )
    parser.add_argument("--limit", type=int, default=100, help="first examples of each evaluation set")
    parser.add_argument("--train_examples", type=int, default=1500, help="training passages of each train: set")
    parser.add_argument("--condition", default="projected", help="the condition read from run: sets")
    parser.add_argument(
        "--exclude_ids",
        nargs="+",
        default=[],
        metavar="ID",
        help="example ids left out of run: sets (a subset check)",
    )
    add_output(parser, "the shares")
    args = parser.parse_args(argv)
    for name in ("limit", "train_examples"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name}: got {getattr(args, name)}; valid: an int >= 1")
    check_output(args)
    out = {"limit": args.limit, "train_examples": args.train_examples, "condition": args.condition, "sets": {}}
    if args.exclude_ids:
        out["exclude_ids"] = args.exclude_ids
    for spec in args.sets:
        if spec.startswith("run:"):
            rows = [r for r in run_rows(spec, args.condition) if r["id"] not in args.exclude_ids]
            answers = [r["answer"] for r in rows]
            correct = round(sum(r["correct"] for r in rows) / len(rows), 3) if rows else None
            out["sets"][spec] = {
                "examples": len(answers),
                **mix(answers),
                "exact_match": correct,
                "by_kind": scores_by_kind(rows),
            }
        else:
            answers = answers_of(spec, args.limit, args.train_examples)
            out["sets"][spec] = {"examples": len(answers), **mix(answers)}
    write_output(args, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
