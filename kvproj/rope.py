"""Rotary position embeddings of cached keys: read a model's rotation, undo it, apply another's.

Transformers caches keys AFTER RoPE. Moving keys between models with different rotary bases (1e4 SmolLM2, 1e6
Qwen2.5, per-layer-type bases in Gemma 3) means undoing the source rotation and applying the target's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from kvproj.adapters.attention import rotary_tables

# Rope types whose frequencies change with the sequence length at run time; a fixed spec cannot follow them.
_DYNAMIC_ROPE_TYPES = {"dynamic", "longrope"}


@dataclass(frozen=True)
class RopeSpec:
    """How one attention layer rotates its keys.

    `inv_freq` has rotary_dim/2 entries; the rotated dims are the first `rotary_dim` of each head (GPT-NeoX and
    Phi-3 may rotate only a fraction); `attention_scaling` multiplies cos and sin (llama3/yarn-style scaling).
    """

    inv_freq: tuple[float, ...]
    attention_scaling: float = 1.0
    rope_type: str = "default"

    @property
    def rotary_dim(self) -> int:
        return 2 * len(self.inv_freq)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RopeSpec:
        return cls(
            tuple(float(x) for x in d["inv_freq"]), float(d["attention_scaling"]), d.get("rope_type", "default")
        )


def rope_specs(model: nn.Module) -> list[RopeSpec | None]:
    """One RopeSpec per decoder layer (None where keys are not rotated, e.g. GPT-2), read from the model itself.

    Reading the live rotary module (`kvproj/adapters/attention.py`) instead of re-deriving from the config covers
    every scaling scheme that transformers implements for a static frequency table (default, linear, llama3,
    yarn...).
    """
    config = model.config.get_text_config(decoder=True)
    n_layers = config.num_hidden_layers
    layer_types = getattr(config, "layer_types", None) or ["full_attention"] * n_layers
    tables = rotary_tables(model, layer_types)
    if tables is None:
        return [None] * n_layers
    specs: list[RopeSpec | None] = []
    for inv_freq, scaling, rope_type in tables:
        if rope_type in _DYNAMIC_ROPE_TYPES:
            raise NotImplementedError(
                f"model {config.model_type}: rope_type {rope_type!r} changes its frequencies with the sequence length; "
                f"kvproj supports static rotary tables ({', '.join(['default', 'linear', 'llama3', 'yarn'])})"
            )
        specs.append(RopeSpec(tuple(inv_freq.float().cpu().tolist()), float(scaling), str(rope_type)))
    return specs


def cos_sin(spec: RopeSpec, positions: torch.Tensor, dtype: torch.dtype = torch.float32):
    """cos/sin for `positions` [B, T] exactly as transformers computes them: [B, 1, T, rotary_dim] each."""
    inv_freq = torch.tensor(spec.inv_freq, dtype=torch.float32, device=positions.device)
    freqs = positions[..., None].float() * inv_freq  # [B, T, rotary_dim/2]
    emb = torch.cat((freqs, freqs), dim=-1)  # [B, T, rotary_dim]
    cos = (emb.cos() * spec.attention_scaling).to(dtype)
    sin = (emb.sin() * spec.attention_scaling).to(dtype)
    return cos[:, None], sin[:, None]  # broadcast over heads


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(keys: torch.Tensor, positions: torch.Tensor, spec: RopeSpec | None) -> torch.Tensor:
    """Rotate un-rotated keys [B, H, T, D] at `positions` [B, T] the way the model does."""
    if spec is None:
        return keys
    d = spec.rotary_dim
    cos, sin = cos_sin(spec, positions, keys.dtype)
    rot, keep = keys[..., :d], keys[..., d:]
    return torch.cat((rot * cos + _rotate_half(rot) * sin, keep), dim=-1)


def undo_rope(keys: torch.Tensor, positions: torch.Tensor, spec: RopeSpec | None) -> torch.Tensor:
    """Inverse of `apply_rope`: recover the pre-rotation keys [B, H, T, D] at `positions` [B, T].

    Each (x1, x2) pair is rotated by angle a and scaled by s; the inverse rotates by -a and divides by s^2
    (cos^2 + sin^2 = s^2), so scaled rope types invert exactly too. Computed in float32 for accuracy.
    """
    if spec is None:
        return keys
    d = spec.rotary_dim
    cos, sin = cos_sin(spec, positions, torch.float32)
    rot, keep = keys[..., :d].float(), keys[..., d:]
    undone = (rot * cos - _rotate_half(rot) * sin) / (cos * cos + sin * sin)
    return torch.cat((undone.to(keys.dtype), keep), dim=-1)
