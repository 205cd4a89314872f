"""Closed-form start for the linear and low-rank projectors: per-layer ridge regression from aligned (source, target) cache
pairs of the same text, fitted on a part of the data stream that training never reaches, then fine-tuned.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import Any

import torch

from kvproj.adapters.attention import captured_key_projections, key_norms
from kvproj.rope import undo_rope

log = logging.getLogger(__name__)
RIDGE_STREAM_OFFSET = 1_000_000_000  # examples used for the fit come from far past any training position


@torch.no_grad()
def ridge_init(module: Any, datamodule: Any, batches: int | None = None, lam: float | None = None) -> dict:
    """Fit every target layer's key and value map by ridge regression (with bias); returns fit statistics.

    Keys: source keys with RoPE undone -> the target's pre-RoPE keys (before its key norm when the projector
    passes outputs through it: the key projection's output, `captured_key_projections`). Values -> values.
    Positions: target prefix positions with an aligned source position.
    """
    proj = module.projector
    if not hasattr(proj, "set_linear_map"):
        raise ValueError(
            f"model.ridge_init: the {proj.architecture!r} projector has no closed-form start; valid: 'linear' "
            "(the ridge solution) or 'lowrank' (its truncated SVD)"
        )
    hp = module.hparams
    batches = batches or hp.ridge_batches
    lam = hp.ridge_lambda if lam is None else lam
    pair = module.pair
    device = module.device
    pair.to(device)
    target = pair.target.model
    capture_pre_norm = proj.target_key_norm and any(n is not None for n in key_norms(target))
    n_layers = proj.target_geometry.num_layers
    d_in, d_out = proj.in_width + 1, proj.target_geometry.width
    xtx = {
        kind: [torch.zeros(d_in, d_in, dtype=torch.float64, device=device) for _ in range(n_layers)]
        for kind in "kv"
    }
    xty = {
        kind: [torch.zeros(d_in, d_out, dtype=torch.float64, device=device) for _ in range(n_layers)]
        for kind in "kv"
    }
    stream = datamodule.iter_examples(start=RIDGE_STREAM_OFFSET)
    rows = 0
    # the target's key projection outputs (before its key norm and RoPE), captured during its forward
    with captured_key_projections(target) if capture_pre_norm else nullcontext({}) as captured:
        for _ in range(batches):
            encoded = [datamodule.encode(next(stream)) for _ in range(datamodule.batch_size)]
            batch = datamodule.transfer_batch_to_device(datamodule.collate(encoded), device, 0)
            source = pair.add_caches(batch, with_target_cache=False)["source_cache"]
            captured.clear()  # only this target forward's key projections (not the head's, if it ran above)
            own = pair.target_cache(batch)
            index = batch["align_index"]
            valid = batch["target_prefix_mask"].bool() & (index >= 0)  # [B, Tt]
            rows += int(valid.sum())
            src_k, src_v = module.transfer.source_inputs(source, index)  # exactly what the projector reads
            for t, layers in enumerate(proj.source_layers):
                x_k = proj.to_tokens(proj.stack(src_k, layers))[valid].double()  # [N, in_width]
                x_v = proj.to_tokens(proj.stack(src_v, layers))[valid].double()
                if capture_pre_norm:
                    y_k = captured[t][valid].double()  # key projection output [B, T, Ht*Dt]
                else:
                    y_k = proj.to_tokens(undo_rope(own.keys[t], own.positions, proj.target_geometry.rope[t]))[
                        valid
                    ].double()
                y_v = proj.to_tokens(own.values[t])[valid].double()
                for kind, x, y in (("k", x_k, y_k), ("v", x_v, y_v)):
                    x1 = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)  # bias column
                    xtx[kind][t] += x1.T @ x1
                    xty[kind][t] += x1.T @ y
    stats = {"rows": rows}
    for kind in "kv":
        for t in range(n_layers):
            a = xtx[kind][t]
            scale = a.diagonal()[:-1].mean().clamp_min(1e-12)
            reg = torch.eye(d_in, dtype=a.dtype, device=device) * lam * scale
            reg[-1, -1] = 0  # the bias is not penalised
            w = torch.linalg.solve(a + reg, xty[kind][t])  # [d_in, d_out]
            proj.set_linear_map("keys" if kind == "k" else "values", t, w[:-1].T, w[-1])
    log.info("ridge start: fitted %d target layers on %d aligned positions (lambda %.3g)", n_layers, rows, lam)
    shares = proj.source_layer_shares()
    if shares is not None:  # which source depth feeds each target layer most, by weight norm
        top = [max(d.items(), key=lambda kv: kv[1]) for d in shares]
        log.info("ridge start: largest source layer share per target layer: %s",
                 ", ".join(f"{t}<-{s} ({w:.0%})" for t, (s, w) in enumerate(top)))  # fmt: skip
        stats["source_layer_shares"] = shares
    return stats
