"""Training objectives through the frozen target: answer cross-entropy, KL to the oracle (the target reading the
prefix as text), cache reconstruction. Logits are computed only at scored positions (Gemma-3 has 262k words).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from kvproj.adapters.heads import logits_from_hidden
from kvproj.cache import KVCache

KLTokens = Literal["continuation", "answer"]  # where model.kl_weight's KL is scored (model.kl_tokens)
KL_TOKENS = get_args(KLTokens)


def scored_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden state j predicts token j+1: (mask over hidden positions [B, L-1], their target ids [N])."""
    targets = labels[:, 1:]
    mask = targets != -100
    return mask, targets[mask]


def answer_cross_entropy(model: nn.Module, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy on labelled continuation tokens. hidden [B, L, H], labels [B, L]."""
    mask, targets = scored_positions(labels)
    if targets.numel() == 0:
        raise ValueError("no labelled continuation tokens in this batch (every answer was cut or empty)")
    logits = logits_from_hidden(model, hidden[:, :-1][mask])  # [N, V]
    return F.cross_entropy(logits.float(), targets)


def kl_per_token(student_logits: torch.Tensor, oracle_logits: torch.Tensor) -> torch.Tensor:
    """KL(oracle || student) in nats at each of N scored positions; both [N, V] -> [N]. The oracle is the target
    reading the context as text; the student is the target with the condition's cache (e.g. the projected one)."""
    oracle = F.log_softmax(oracle_logits.float(), dim=-1)
    student = F.log_softmax(student_logits.float(), dim=-1)
    return (oracle.exp() * (oracle - student)).sum(-1)


def kl_per_example(
    student_logits: torch.Tensor, oracle_logits: torch.Tensor, example: torch.Tensor, n_examples: int
) -> torch.Tensor:
    """kvproj's one KL-to-oracle figure: for each example, the mean of `kl_per_token` over its scored positions.
    `example` [N] gives each position's example (row) index; returns [n_examples], NaN for an example with no
    scored position. Evaluation scores the answer tokens; training (`kl_to_oracle`) every continuation token."""
    kl = kl_per_token(student_logits, oracle_logits)
    total = kl.new_zeros(n_examples).index_add(0, example, kl)
    count = kl.new_zeros(n_examples).index_add(0, example, torch.ones_like(kl))
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))


def kl_to_oracle(
    student_logits: torch.Tensor, oracle_logits: torch.Tensor, example: torch.Tensor, n_examples: int
) -> torch.Tensor:
    """The training loss: `kl_per_example` averaged over the examples that have scored positions (each example
    weighs alike, as in evaluation's mean over examples)."""
    return kl_per_example(student_logits, oracle_logits, example, n_examples).nanmean()


def reconstruction(
    projected: KVCache, reference: KVCache, valid: torch.Tensor
) -> tuple[torch.Tensor, list[float], list[float]]:
    """MSE between projected and reference caches at valid positions [B, T], normalised per layer by the
    reference's mean square (so layers of different scale weigh alike); plus per-layer cosine of keys/values."""
    sel = valid.bool()
    total = projected.keys[0].new_zeros((), dtype=torch.float32)
    cos_keys, cos_values = [], []
    for pk, pv, rk, rv in zip(projected.keys, projected.values, reference.keys, reference.values):
        for p, r, out in ((pk, rk, cos_keys), (pv, rv, cos_values)):
            p_sel = p.transpose(1, 2)[sel].float()  # [N, H, D]
            r_sel = r.transpose(1, 2)[sel].float()
            total = total + ((p_sel - r_sel) ** 2).mean() / (r_sel**2).mean().clamp_min(1e-8)
            out.append(F.cosine_similarity(p_sel.flatten(1), r_sel.flatten(1), dim=-1).mean().item())
    return total / (2 * len(projected.keys)), cos_keys, cos_values
