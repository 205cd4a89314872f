"""Why the 0.5B -> 1.5B pair's new run may reuse the earlier run's reference conditions (narrative, passages:test)."""

import json
import sys

P = "docs/results/pairs/"


def rows(name, condition):
    return [r for r in map(json.loads, open(P + name)) if r["condition"] == condition]


out = {"command": "python " + " ".join(sys.argv), "sets": {}}
for s in ("narrative", "passages-test"):
    old = rows(f"qwen-coder-0.5b-1.5b-{s}-generations.jsonl", "target_text")
    new = rows(f"qwen-coder-0.5b-1.5b-wfollow-{s}-generations.jsonl", "projected")
    same_examples = [(r["id"], r["answer"]) for r in old] == [(r["id"], r["answer"]) for r in new]
    # the contexts: the SmolLM2 -> Qwen-Coder-0.5B run (2026-12-05) printed them in its target_text prompts
    sq = rows(f"smollm2-qwen-coder-wfollow-{s}-generations.jsonl", "target_text")
    same_contexts = [r["prompt"] for r in old] == [r["prompt"] for r in sq]
    # Qwen-Coder-0.5B reading the text: source_text of the 2026-11-28 run, target_text of the 2026-12-05 run
    src = rows(f"qwen-coder-0.5b-1.5b-{s}-generations.jsonl", "source_text")
    identical = sum(a["generated"] == b["generated"] for a, b in zip(src, sq, strict=True))
    out["sets"][s] = {
        "examples": len(old),
        "same_ids_and_answers_as_the_new_run": same_examples,
        "same_prompts_with_context": same_contexts,
        "qwen_0.5b_reading_the_text_identical_generations_2026-11-28_vs_2026-12-05": identical,
    }
print(json.dumps(out, indent=1))
