"""Parts of one cache over another: what the layer sweep and partial transfer share.

A *transferred* cache T (projected from the source, or the target's own cache for the same-model reference) is
compared with itself where parts of it are replaced by a *donor*: the same kind of cache made from another example
(the shuffled control, a seeded derangement), stretched to this example's length and rotated at its positions, so
every layer / head / token the target reads stays in its usual range; only the information is wrong. A selection
(layers x kv heads x context tokens) says which elements come from T; everything else comes from the donor.
Selecting everything gives T exactly; selecting nothing gives the donor (the shuffled control).

The facts scoring (exact match, answer NLL, KL to the oracle) is `kvproj.eval.facts.score_prefix`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from kvproj.align import align
from kvproj.cache import KVCache
from kvproj.eval import metrics
from kvproj.eval.facts import derangement, score_prefix
from kvproj.rope import apply_rope


def donor_cache(kv: KVCache, perm: list[int], head_len: int) -> KVCache:
    """For each example i, the cache of example perm[i] laid over example i's slots: the shared head (the first
    `head_len` real tokens, the same for every example) stays; context position p of example i reads context
    position round(p * (m_j - 1) / (m_i - 1)) of the donor (m: context lengths), its key un-rotated there and
    rotated again at example i's position. Same mask, positions and shapes as `kv`."""
    if kv.geometry is None:
        raise ValueError("donor_cache needs the cache's geometry (rotary parameters)")
    b, t = kv.attention_mask.shape
    real = kv.attention_mask.long().sum(1).tolist()
    index = torch.zeros(b, t, dtype=torch.long)
    for i, j in enumerate(perm):
        n_i, n_j = real[i], real[j]
        off_i, off_j = t - n_i, t - n_j
        m_i, m_j = n_i - head_len, n_j - head_len
        for p in range(n_i):
            if p < head_len or m_j <= 0:
                q = min(p, n_j - 1)
            else:
                q = head_len + (round((p - head_len) * (m_j - 1) / max(m_i - 1, 1)) if m_i > 1 else 0)
            index[i, off_i + p] = off_j + q
    donors = torch.as_tensor(perm)
    index = index.to(kv.attention_mask.device)
    keys, values = [], []
    for layer in range(kv.num_layers):
        unrotated = kv.unrotated_keys(layer)[donors]  # [B, H, T, D], rows already the donors'
        gather = index[:, None, :, None].expand(-1, unrotated.shape[1], -1, unrotated.shape[3])
        keys.append(apply_rope(unrotated.gather(2, gather), kv.positions, kv.geometry.rope[layer]))
        values.append(kv.values[layer][donors].gather(2, gather))
    return replace(kv, keys=keys, values=values)


@dataclass(frozen=True)
class Selection:
    """Which elements of the cache come from the transferred cache (the rest: from the donor).

    layers / heads: indices (None: all). span: "all", "none", "first:F" / "last:F" (the first / last fraction F of
    each example's context tokens), or "+"-joined named spans of the example: "entity", "answer".
    """

    layers: tuple[int, ...] | None = None
    heads: tuple[int, ...] | None = None
    span: str = "all"


def token_mask(
    selection: Selection, kv: KVCache, head_len: int, spans: list[dict[str, list[int]]]
) -> torch.Tensor:
    """[B, T] bool: the context slots `selection.span` takes from the transferred cache (head slots: never)."""
    b, t = kv.attention_mask.shape
    real = kv.attention_mask.long().sum(1).tolist()
    mask = torch.zeros(b, t, dtype=torch.bool)
    for i in range(b):
        off, m = t - real[i], real[i] - head_len
        start = off + head_len
        span = selection.span
        if span == "all":
            mask[i, start:] = True
        elif span == "none":
            pass
        elif span.startswith(("first:", "last:")):
            side, frac = span.split(":")
            k = round(float(frac) * m)
            if k and side == "first":
                mask[i, start : start + k] = True
            elif k:
                mask[i, t - k :] = True
        else:
            for name in span.split("+"):
                for token in spans[i][name]:
                    mask[i, start + token] = True
    return mask.to(kv.attention_mask.device)


def mix(
    transferred: KVCache, donor: KVCache, selection: Selection, tokens: torch.Tensor, head_len: int
) -> KVCache:
    """`transferred` where `selection` (with its token mask [B, T]) says so, `donor` elsewhere. The head slots
    (the first `head_len` real tokens: target-native and the same for every example) always come from
    `transferred`, so that selecting every context token gives `transferred` exactly."""
    g = transferred.num_layers
    layers = set(range(g) if selection.layers is None else selection.layers)
    h = transferred.keys[0].shape[1]
    heads = torch.zeros(h, dtype=torch.bool, device=tokens.device)
    heads[list(range(h)) if selection.heads is None else list(selection.heads)] = True
    b, t = tokens.shape
    real = transferred.attention_mask.long().sum(1)
    slot = torch.arange(t, device=tokens.device)[None, :]
    head = (slot < (t - real + head_len)[:, None])[:, None, :, None]  # [B, 1, T, 1]: head and padding
    take = (heads[None, :, None, None] & tokens[:, None, :, None]) | head  # [B, H, T, 1]
    keys, values = [], []
    for layer in range(g):
        chosen = take if layer in layers else head
        keys.append(torch.where(chosen, transferred.keys[layer], donor.keys[layer]))
        values.append(torch.where(chosen, transferred.values[layer], donor.values[layer]))
    return replace(transferred, keys=keys, values=values)


def byte_fraction(selection: Selection, geometry, tokens: torch.Tensor, kv: KVCache, head_len: int) -> list[float]:
    """Per example: the share of the context's cache elements (layers x kv heads x tokens) taken from the
    transferred cache: what would have to cross the wire."""
    layers = geometry.num_layers if selection.layers is None else len(selection.layers)
    heads = geometry.num_kv_heads if selection.heads is None else len(selection.heads)
    context = (kv.attention_mask.long().sum(1) - head_len).clamp(min=1)
    share = tokens.long().sum(1) / context
    return (share * layers / geometry.num_layers * heads / geometry.num_kv_heads).tolist()


def context_spans(example: dict[str, Any], codec) -> dict[str, list[int]]:
    """Target context token indices (0 = first context token after the head, after any cut that
    `max_context_tokens` makes) that overlap the entity's name and the answer in the context text."""
    context = example["context"]
    alignment = align(context, codec.source_tokenizer, codec.target_tokenizer)
    n = len(alignment.target_ids)
    cut = max(n - codec.max_context_tokens, 0) if codec.max_context_tokens else 0
    out = {}
    for name in ("entity", "answer"):
        needle = example.get(name) or ""
        ranges = []
        start = context.find(needle) if needle else -1
        while start >= 0:
            ranges.append((start, start + len(needle)))
            start = context.find(needle, start + 1)
        out[name] = [
            k - cut
            for k, (a, b) in enumerate(alignment.target_spans)
            if k >= cut and b > a and any(a < e and s < b for s, e in ranges)
        ]
    return out


@dataclass
class ScoredBatch:
    """Per-example scores of one batch under one condition."""

    exact_match: list[float]
    answer_nll: list[float]
    kl_to_oracle: list[float | None]
    generated: list[str]
    byte_fraction: list[float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class BatchScorer:
    """Scores prefixes of one collated batch against its oracle (the target reading the context as text)."""

    def __init__(self, pair, batch: dict[str, Any], raw: list[dict], max_new_tokens: int, generate: bool) -> None:
        self.pair, self.batch, self.raw = pair, batch, raw
        self.max_new_tokens, self.generate = max_new_tokens, generate
        self.oracle_cache = pair.target_cache(batch)
        self.oracle = score_prefix(
            pair, batch, self.oracle_cache, max_new_tokens=max_new_tokens, generate=generate
        )

    def score(self, prefix: KVCache | None) -> ScoredBatch:
        out = score_prefix(
            self.pair, self.batch, prefix, max_new_tokens=self.max_new_tokens, generate=self.generate,
            oracle_logits=self.oracle["logits"],
        )  # fmt: skip
        return self._scored(out)

    def scored_oracle(self) -> ScoredBatch:
        return self._scored({**self.oracle, "kl_to_oracle": [0.0] * len(self.raw)})

    def _scored(self, out: dict[str, Any]) -> ScoredBatch:
        generated = out["generated"] or [""] * len(self.raw)
        em = [metrics.exact_match(g, e["answer"]) if self.generate else None for g, e in zip(generated, self.raw)]
        return ScoredBatch(em, out["answer_nll"], out["kl_to_oracle"], generated)


def derangement_for(batch_size: int, seed: int, batch_index: int) -> list[int]:
    return derangement(batch_size, seed * 100_003 + batch_index)
