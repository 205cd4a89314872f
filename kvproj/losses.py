"""Training objectives through the frozen target: answer cross-entropy, KL to the oracle (the target reading the
prefix as text), cache reconstruction. Logits are computed only at scored positions (Gemma-3 has 262k words).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kvproj.adapters.heads import logits_from_hidden
from kvproj.cache import KVCache


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


def kl_to_oracle(student_logits: torch.Tensor, oracle_logits: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL(oracle || student); both [N, V]."""
    oracle = F.log_softmax(oracle_logits.float(), dim=-1)
    student = F.log_softmax(student_logits.float(), dim=-1)
    return F.kl_div(student, oracle, log_target=True, reduction="batchmean")


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
