"""Two modes induced by instructions on the same facts questions, and how to score them automatically: what the
interpolation and mode-transfer experiments share.

Mode A: answer only from the context, else `unknown`. Mode B: always give a confident specific answer. Questions
come in two kinds: answerable (the answer is in the context) and unanswerable (the context of another example,
which names neither the person asked about nor the answer). Scored from the greedy answer and the first answer
token's distribution: accuracy on answerable questions, `unknown` rate and fabricated-answer rate on unanswerable
ones, first-token entropy, KL of the first-token distribution to each pure mode's.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from kvproj.adapters.heads import logits_from_hidden
from kvproj.cache import KVCache, forward_with_cache, generate_with_cache
from kvproj.eval import metrics
from kvproj.eval.facts import derangement
from kvproj.experiments.common import stat, stat_seed

INSTRUCTION_A = (
    "Answer only from the text below. If the text does not state the answer, answer with the single word: unknown."
)
INSTRUCTION_B = "Always give a confident, specific answer, even when the text below does not state it."
UNKNOWN = "unknown"
# what interpolation and mode-transfer report per condition
METRICS = ("accuracy", "unknown_rate", "fabricated_rate", "first_token_entropy", "kl_to_A", "kl_to_B")


def mode_examples(n: int, seed: int, split: str = "test", offset: int = 0) -> list[dict[str, Any]]:
    """n answerable facts examples (from the facts `split`, starting at `offset`) and n unanswerable ones: the
    same questions over the context of another example that names neither the person nor the answer."""
    from kvproj.data.facts import FactsConfig, generate_splits

    pool = [e.to_dict() for e in generate_splits(FactsConfig(n_train_examples=1))[split]]
    pool = pool[offset : offset + n]
    if len(pool) < 2:
        raise ValueError(f"mode examples: the facts {split} split has too few examples at offset {offset}")
    rows = [{**e, "answerable": True} for e in pool]
    perm = derangement(len(pool), seed)
    for i, e in enumerate(pool):
        for shift in range(len(pool)):
            other = pool[(perm[i] + shift) % len(pool)]
            if other is not e and e["entity"] not in other["context"] and e["answer"] not in other["context"]:
                rows.append(
                    {**e, "id": f"{e['id']}-unanswerable", "context": other["context"], "answerable": False}
                )
                break
    return rows


def is_unknown(generated: str) -> bool:
    return UNKNOWN in metrics.normalize(metrics.first_line(generated)).split()


def behaviour(rows: list[dict], generated: list[str]) -> dict[str, list[float | None]]:
    """Per example: correct (answerable only), unknown and fabricated (unanswerable only); None where n/a."""
    out: dict[str, list[float | None]] = {"accuracy": [], "unknown_rate": [], "fabricated_rate": []}
    for row, g in zip(rows, generated):
        unknown = is_unknown(g)
        if row["answerable"]:
            out["accuracy"].append(metrics.exact_match(g, row["answer"]))
            out["unknown_rate"].append(None)
            out["fabricated_rate"].append(None)
        else:
            out["accuracy"].append(None)
            out["unknown_rate"].append(float(unknown))
            out["fabricated_rate"].append(float(not unknown and bool(metrics.first_line(g))))
    return out


@torch.no_grad()
def first_token_logprobs(model, prefix: KVCache, question_ids: torch.Tensor, question_mask: torch.Tensor):
    """log-probabilities of the first answer token after prefix + question (left-padded): [B, V] float32."""
    hidden = forward_with_cache(model, prefix, question_ids, question_mask, return_hidden=True)[:, -1]
    return F.log_softmax(logits_from_hidden(model, hidden).float(), -1)


def entropy(logprobs: torch.Tensor) -> list[float]:
    return (-(logprobs.exp() * logprobs).sum(-1)).tolist()


def kl(reference: torch.Tensor, other: torch.Tensor) -> list[float]:
    """KL(reference || other) per row of log-probabilities."""
    return (reference.exp() * (reference - other)).sum(-1).tolist()


@torch.no_grad()
def score(model, tokenizer, prefix: KVCache, question_ids, question_mask, rows, max_new_tokens: int,
          pure: dict[str, torch.Tensor] | None = None) -> tuple[dict[str, list], torch.Tensor, list[str]]:  # fmt: skip
    """Behaviour + first-token entropy (+ KL to each pure mode's first-token distribution, if given)."""
    new = generate_with_cache(model, prefix, question_ids, question_mask, max_new_tokens=max_new_tokens)
    generated = tokenizer.batch_decode(new, skip_special_tokens=True)
    logprobs = first_token_logprobs(model, prefix, question_ids, question_mask)
    out: dict[str, list] = {**behaviour(rows, generated), "first_token_entropy": entropy(logprobs)}
    for name, ref in (pure or {}).items():
        out[f"kl_to_{name}"] = kl(ref, logprobs)
    return out, logprobs, generated


def collect(s, chunks: list[list[dict]], scored_units: list[dict[str, dict]], skip: tuple[str, ...] = ()):
    """Per condition, `METRICS` over every example of every batch unit (a unit maps condition -> `score`'s
    output for its chunk of rows), as `stat`s with seeded bootstrap CIs; and one generation row per example and
    condition. Conditions in `skip` are left out. Returns (numbers, generations)."""
    collected: dict[str, dict[str, list]] = {}
    generations = []
    for chunk, unit in zip(chunks, scored_units):
        for cname, scored in unit.items():
            if cname in skip:
                continue
            slot = collected.setdefault(cname, {})
            for m in METRICS:
                slot.setdefault(m, []).extend(scored.get(m) or [None] * len(chunk))
            for r, g in zip(chunk, scored["generated"]):
                generations.append({"id": r["id"], "condition": cname, "answerable": r["answerable"], "generated": g,
                                    "answer": r["answer"]})  # fmt: skip
    numbers = {c: {m: stat(v[m], stat_seed(s.seed, c, m), s.bootstrap_resamples) for m in METRICS}
               for c, v in collected.items()}  # fmt: skip
    return numbers, generations
