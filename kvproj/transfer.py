"""Source cache -> target cache: undo the source RoPE, gather aligned positions, project, apply the target's
key norm (where it has one) and RoPE. The projector itself only sees un-rotated per-head features.
"""

from __future__ import annotations

import torch
from torch import nn

from kvproj.cache import KVCache, positions_from_mask
from kvproj.projectors.base import Projector
from kvproj.rope import apply_rope, undo_rope


def gather_positions(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x [B, H, T, D], index [B, T'] (values in 0..T-1) -> [B, H, T', D]."""
    b, h, _, d = x.shape
    return x.gather(2, index[:, None, :, None].expand(b, h, index.shape[1], d))


def gather_source_tokens(x: torch.Tensor, index: torch.Tensor, tokens: int, mask: torch.Tensor) -> torch.Tensor:
    """The source cache at each target token's aligned position and the `tokens - 1` positions before it, side by
    side as extra heads: x [B, Hs, Ts, Ds], index [B, Tt] (values in 0..Ts-1), mask [B, Ts] (the source's
    attention mask) -> [B, tokens * Hs, Tt, Ds], heads [aligned, aligned - 1, ...]. An earlier position before
    the start of the tensor or on source padding reads zeros."""
    out = [gather_positions(x, index)]  # the aligned position, as the alignment gives it
    for j in range(1, tokens):
        shifted = index - j
        idx = shifted.clamp(min=0)
        real = (shifted >= 0) & mask.gather(1, idx).bool()  # [B, Tt]
        out.append(gather_positions(x, idx) * real[:, None, :, None].to(x.dtype))
    return out[0] if tokens == 1 else torch.cat(out, dim=1)


class CacheTransfer(nn.Module):
    """Wraps a projector with the fixed (non-trainable) steps around it.

    Args:
        projector: The trainable map.
        key_norms: Target per-layer key norms (`kvproj.adapters.attention.key_norms`); applied to projected keys
            in replace mode so they land on the target's own key scale.
    """

    def __init__(self, projector: Projector, key_norms: list[nn.Module | None] | None = None) -> None:
        super().__init__()
        self.projector = projector
        # a plain list: the target's frozen norms must not become parameters of the projector/checkpoint
        self._key_norms = list(key_norms or [])

    def source_inputs(
        self, source: KVCache, index: torch.Tensor
    ) -> tuple[list[torch.Tensor | None], list[torch.Tensor | None]]:
        """What the projector reads, per source layer: keys with the source RoPE undone and values, gathered for
        each target position at its aligned source position (and the `source_tokens - 1` before it):
        [B, source_tokens * Hs, Tt, Ds]; None for source layers no target layer reads. index [B, Tt] as in
        `forward` (-1 reads position 0; the caller replaces those positions). The ridge start fits on these."""
        p = self.projector
        sg = p.source_geometry
        gather_idx, n, mask = index.clamp(min=0), p.source_tokens, source.attention_mask
        keys: list[torch.Tensor | None] = [None] * sg.num_layers
        values: list[torch.Tensor | None] = [None] * sg.num_layers
        for s in sorted({s for layers in p.source_layers for s in layers}):
            unrotated = undo_rope(source.keys[s], source.positions, sg.rope[s])  # [B, Hs, Ts, Ds]
            keys[s] = gather_source_tokens(unrotated, gather_idx, n, mask)
            values[s] = gather_source_tokens(source.values[s], gather_idx, n, mask)
        return keys, values

    def forward(
        self,
        source: KVCache,
        index: torch.Tensor,
        target_mask: torch.Tensor,
        fallback: KVCache | None = None,
        target_base: KVCache | None = None,
    ) -> KVCache:
        """Build the target's prefix cache.

        source: the source's cache of the context. index [B, Tt]: for each target prefix position, the source
        position whose cache stands in for it (-1: take it from `fallback`, e.g. target-native BOS/template
        head). target_mask [B, Tt]: the target prefix mask. fallback: target KVCache at the same positions
        (used where index < 0). target_base: the target's own cache of the same text (fuse mode).
        """
        p = self.projector
        tg = p.target_geometry
        index = index.to(source.attention_mask.device)
        source_keys, source_values = self.source_inputs(source, index)
        positions = positions_from_mask(target_mask)
        base_keys = base_values = None
        if target_base is not None:
            base_keys = [undo_rope(k, target_base.positions, tg.rope[t]) for t, k in enumerate(target_base.keys)]
            base_values = list(target_base.values)
        keys, values = p(source_keys, source_values, base_keys, base_values)
        out_keys, out_values = [], []
        take_fallback = (index < 0)[:, None, :, None]  # [B, 1, Tt, 1]
        for t in range(tg.num_layers):
            k = keys[t]
            if p.target_key_norm and t < len(self._key_norms) and self._key_norms[t] is not None:
                k = self._key_norms[t](k)
            k = apply_rope(k, positions, tg.rope[t])
            v = values[t]
            if fallback is not None:
                k = torch.where(take_fallback, fallback.keys[t].to(k.dtype), k)
                v = torch.where(take_fallback, fallback.values[t].to(v.dtype), v)
            out_keys.append(k)
            out_values.append(v)
        return KVCache(out_keys, out_values, attention_mask=target_mask, positions=positions, geometry=tg)


def head_fallback(head: KVCache, target_mask: torch.Tensor) -> KVCache:
    """Broadcast a target-native head cache (e.g. BOS + chat-template opening, [1, H, h, D]) to the positions of
    a left-padded target prefix [B, Tt]: position p < h takes head position p. Causality makes the head's cache
    the same for every example, so it is computed once.
    """
    positions = positions_from_mask(target_mask)  # [B, Tt]
    idx = positions.clamp(max=head.length - 1)
    b = target_mask.shape[0]
    keys = [gather_positions(k.expand(b, -1, -1, -1), idx) for k in head.keys]
    values = [gather_positions(v.expand(b, -1, -1, -1), idx) for v in head.values]
    return KVCache(keys, values, attention_mask=target_mask, positions=positions, geometry=head.geometry)
