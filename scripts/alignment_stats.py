"""How close to one-to-one a source and a target tokenizer are on an eval set's contexts: the alignment training
and evaluation use (`kvproj.align.align` on the raw context, as `kvproj.data.pairs.encode_example` calls it).
Tokenizers only, no model weights are read.

Per eval set: contexts, source and target tokens, the share of target tokens aligned one-to-one, the share that
overlap several source tokens (where pooling over source positions could differ from the single gathered
position), the share whose gathered source position also covers characters after the target token, and the same
two shares over the answer's tokens (the answer's first whole-word mention in its context).

    python scripts/alignment_stats.py --source smollm2-135m-instruct --target gemma3-270m \\
        --eval_file narrative genres passages:test [--limit N] [--output stats.json [--overwrite]]
"""

from __future__ import annotations

import argparse
import sys

from _output import add_output, check_output, write_output

from kvproj.align import align
from kvproj.data.pairs import mention
from kvproj.eval.run import load_examples
from kvproj.models import load_tokenizer


def token_flags(a) -> tuple[list[bool], list[bool]]:
    """Per target token of alignment `a`: does it overlap several source tokens; does its gathered source token
    (`last_source_index`, what training and evaluation read) also cover characters after it."""
    last = a.last_source_index()
    several = [len(s) > 1 for s in a.target_to_source]
    reads_past = [
        end > start and j >= 0 and a.source_spans[j][1] > end for (start, end), j in zip(a.target_spans, last)
    ]
    return several, reads_past


def set_stats(examples: list[dict], source_tokenizer, target_tokenizer) -> dict:
    """Alignment counts over the distinct contexts of `examples` and over each example's answer mention."""
    per_context = {}  # context -> (alignment, several, reads_past), each context aligned once
    for e in examples:
        if e["context"] not in per_context:
            a = align(e["context"], source_tokenizer, target_tokenizer)
            per_context[e["context"]] = (a, *token_flags(a))
    n = {"source": 0, "target": 0, "one_to_one": 0.0, "unaligned": 0, "several": 0, "reads_past": 0}
    for a, several, reads_past in per_context.values():
        counts = a.stats()
        n["source"] += counts["source_tokens"]
        n["target"] += counts["target_tokens"]
        n["one_to_one"] += counts["one_to_one_share"] * counts["target_tokens"]
        n["unaligned"] += counts["unaligned_target"]
        n["several"] += sum(several)
        n["reads_past"] += sum(reads_past)
    answer = {"examples": 0, "tokens": 0, "several": 0, "reads_past": 0}
    for e in examples:
        found = mention(e["context"], str(e["answer"]))
        if found is None:
            continue
        a, several, reads_past = per_context[e["context"]]
        answer["examples"] += 1
        for k, (start, end) in enumerate(a.target_spans):
            if end > start and start < found.end() and end > found.start():
                answer["tokens"] += 1
                answer["several"] += several[k]
                answer["reads_past"] += reads_past[k]
    t = max(n["target"], 1)
    return {
        "contexts": len(per_context),
        "source_tokens": n["source"],
        "target_tokens": n["target"],
        "source_per_target": n["source"] / t,
        "one_to_one_share": n["one_to_one"] / t,
        "several_sources_share": n["several"] / t,
        "unaligned_share": n["unaligned"] / t,
        "reads_past_share": n["reads_past"] / t,
        "answers_stated": answer["examples"],
        "answer_tokens": answer["tokens"],
        "answer_several_sources_share": answer["several"] / max(answer["tokens"], 1),
        "answer_reads_past_share": answer["reads_past"] / max(answer["tokens"], 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--source", required=True, help="source model name (zoo name, folder, .gguf, hub id, tiny:...)"
    )
    ap.add_argument("--target", required=True, help="target model name")
    ap.add_argument("--eval_file", nargs="+", required=True,
                    help="bundled set (narrative, genres), a {context, question, answer} JSONL file, passages:val/test")  # fmt: skip
    ap.add_argument("--limit", type=int, default=None, help="first N examples of each set (default: all)")
    add_output(ap, "the statistics")
    args = ap.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        sys.exit(f"--limit: got {args.limit}; valid: an int >= 1 (or leave it out for every example)")
    check_output(args)
    source, target = load_tokenizer(args.source), load_tokenizer(args.target)
    sets = {}
    for name in args.eval_file:
        try:
            examples = load_examples("facts", name, "test", None, args.limit)
        except (FileNotFoundError, ValueError) as err:
            sys.exit(str(err))
        sets[name] = set_stats(examples, source, target)
    header = ["eval set", "contexts", "source / target tokens", "one-to-one", "several sources", "reads past",
              "answer tokens", "answer: several sources", "answer: reads past"]  # fmt: skip
    print(f"{args.source} -> {args.target}")
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for name, s in sets.items():
        cells = [name, str(s["contexts"]), f"{s['source_per_target']:.3f}", f"{s['one_to_one_share']:.3f}",
                 f"{s['several_sources_share']:.3f}", f"{s['reads_past_share']:.3f}", str(s["answer_tokens"]),
                 f"{s['answer_several_sources_share']:.3f}", f"{s['answer_reads_past_share']:.3f}"]  # fmt: skip
        print("| " + " | ".join(cells) + " |")
    command = " ".join(["scripts/alignment_stats.py", *(sys.argv[1:] if argv is None else argv)])
    out = {"command": command, "source": args.source, "target": args.target, "sets": sets}
    write_output(args, out, indent=1, echo=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
