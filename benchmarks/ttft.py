#!/usr/bin/env python
"""Time to the target's first answer token, as the context grows: the target reading the context itself
(`target_text`), the source reading it and its cache projected into the target (`projected`: source prefill +
projection), and the source writing a hint that the target reads (`text_to_text`). One run, ratios to
`target_text` (absolute times depend on the machine; the ratios are the claim).

    python benchmarks/ttft.py --source qwen2.5-coder-0.5b-instruct --target qwen2.5-coder-1.5b-instruct \\
        --lengths 64 256 1024 2048 --repeats 3 --json docs/results/ttft_qwen05_qwen15.json

Without --projector the projector is an untrained linear one of the right geometry: its cost is a trained one's
(a few matmuls per layer); give --projector DIR to time an exported one (its folder names the models).
Contexts are facts-corpus paragraphs joined until the target's tokenizer counts at least L tokens; the question
is the first paragraph's. Each cell is the median of --repeats runs after one warm-up run at that length.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

from kvproj.adapters.attention import key_norms
from kvproj.atomic import atomic_write
from kvproj.data.facts import FactsConfig, train_example
from kvproj.eval.facts import EvalSettings, FactsEvaluator
from kvproj.models import ModelSpec
from kvproj.pair import FrozenPair, load_transfer
from kvproj.projectors import LinearConfig
from kvproj.transfer import CacheTransfer

CONDITIONS = ("target_text", "projected", "text_to_text")


def long_example(tokenizer, length: int, seed: int = 0) -> dict:
    """A facts-corpus example whose context is at least `length` tokens of `tokenizer`."""
    cfg = FactsConfig(seed=seed)
    first = train_example(cfg, 0)
    parts, i = [first.context], 1
    while len(tokenizer("\n".join(parts), add_special_tokens=False).input_ids) < length:
        parts.append(train_example(cfg, i).context)
        i += 1
    return {
        "id": f"ttft-{length}",
        "context": "\n".join(parts),
        "question": first.question,
        "answer": first.answer,
    }


def build(args) -> FactsEvaluator:
    if args.projector:
        trained = load_transfer(args.projector, device=args.device, dtype=args.dtype)
        pair, transfer = trained.pair, trained.transfer
    else:
        pair = FrozenPair(ModelSpec(args.source, dtype=args.dtype, device=args.device),
                          ModelSpec(args.target, dtype=args.dtype, device=args.device))  # fmt: skip
        projector = LinearConfig().build(pair.source.geometry, pair.target.geometry)
        transfer = CacheTransfer(projector.to(pair.target.device).eval(), key_norms(pair.target.model))
    codec = pair.codec(max_context_tokens=None)
    settings = EvalSettings(batch_size=1, max_new_tokens=1, hint_tokens=args.hint_tokens, conditions=CONDITIONS)
    return FactsEvaluator(pair, codec, transfer, None, settings)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", default="qwen2.5-coder-0.5b-instruct")
    p.add_argument("--target", default="qwen2.5-coder-1.5b-instruct")
    p.add_argument("--projector", default=None, help="an exported projector folder (it names the models)")
    p.add_argument("--lengths", type=int, nargs="+", default=[64, 256, 1024, 2048])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--hint_tokens", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument(
        "--json", default=None, help="write the results here (refuses to overwrite without --overwrite)"
    )
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    if args.repeats < 1 or any(n < 1 for n in args.lengths):
        p.error(f"--repeats and --lengths must be >= 1, got {args.repeats} and {args.lengths}")
    if args.json and not args.overwrite:
        from pathlib import Path

        if Path(args.json).exists():
            p.error(f"--json {args.json} exists; pass --overwrite to replace it")
    evaluator = build(args)
    pair = evaluator.pair
    rows = []
    print("| context tokens (target) | condition | ms to first token | ratio to target_text |")
    print("|---|---|---|---|")
    for length in args.lengths:
        example = long_example(pair.target.tokenizer, length)
        n_tokens = len(pair.target.tokenizer(example["context"], add_special_tokens=False).input_ids)
        times = {}
        for condition in CONDITIONS:
            evaluator.time_to_first_token(condition, [example])  # warm-up at this length
            times[condition] = statistics.median(
                evaluator.time_to_first_token(condition, [example]) for _ in range(args.repeats)
            )
        for condition in CONDITIONS:
            ratio = times[condition] / times["target_text"]
            rows.append({"length": length, "context_tokens": n_tokens, "condition": condition,
                         "ms": round(1000 * times[condition], 1), "ratio_to_target_text": round(ratio, 3)})  # fmt: skip
            print(f"| {n_tokens} | {condition} | {1000 * times[condition]:.0f} | {ratio:.2f}x |", flush=True)
    if args.json:
        record = {
            "command": "python benchmarks/ttft.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "source": pair.source.spec.to_dict(), "target": pair.target.spec.to_dict(),
            "projector": args.projector or "untrained linear (same cost as a trained one)",
            "hint_tokens": args.hint_tokens, "repeats": args.repeats, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "rows": rows,
        }  # fmt: skip
        atomic_write(args.json, json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
