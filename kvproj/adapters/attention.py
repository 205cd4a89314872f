"""Attention internals of a transformers decoder: layers, key projection and key norm, rotary module.

Attribute names follow transformers 5.x (`model.base_model.layers[i].self_attn.{k_proj,k_norm}`,
`model.base_model.rotary_emb`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def decoder_layers(model: nn.Module) -> list[nn.Module] | None:
    """The decoder layers of a causal LM in order (None if the model has no `layers` list, e.g. GPT-2)."""
    layers = getattr(model.base_model, "layers", None)
    return None if layers is None else list(layers)


def key_norms(model: nn.Module) -> list[nn.Module | None]:
    """Per layer, the model's own key normalisation applied before RoPE (Gemma 3, Qwen 3), else None."""
    layers = decoder_layers(model)
    if layers is None:
        return []
    return [getattr(getattr(layer, "self_attn", None), "k_norm", None) for layer in layers]


@contextmanager
def captured_key_projections(model: nn.Module) -> Iterator[dict[int, torch.Tensor]]:
    """While open, a dict layer index -> the last output of that layer's `k_proj` ([B, T, H_kv*D]: before the key
    norm and RoPE). Forward hooks only read; the model's outputs do not change. Hooks are removed on exit."""
    captured: dict[int, torch.Tensor] = {}
    hooks = []
    try:
        for t, layer in enumerate(decoder_layers(model) or []):
            hooks.append(
                layer.self_attn.k_proj.register_forward_hook(lambda _m, _i, out, t=t: captured.__setitem__(t, out))
            )
        yield captured
    finally:
        for h in hooks:
            h.remove()


def rotary_module(model: nn.Module) -> nn.Module | None:
    """The model's rotary-embedding module (None where keys are not rotated, e.g. GPT-2)."""
    base = getattr(model, "base_model", model)
    for candidate in (getattr(base, "rotary_emb", None), getattr(model, "rotary_emb", None)):
        if candidate is not None:
            return candidate
    return None


def rotary_tables(model: nn.Module, layer_types: list[str]) -> list[tuple[torch.Tensor, float, str]] | None:
    """Per layer: (inv_freq [rotary_dim/2], attention_scaling, rope_type) as the rotary module holds them.

    `layer_types` are the config's per-layer attention types; a module with per-type tables (Gemma 3) is read per
    type, otherwise every layer shares the one table. The original (unscaled-by-length) `inv_freq` is preferred.
    Returns None when the model has no rotary module.
    """
    rotary = rotary_module(model)
    if rotary is None:
        return None
    tables = []
    for layer_type in layer_types:
        inv_freq = getattr(rotary, f"{layer_type}_original_inv_freq", None)
        if inv_freq is not None:  # per-layer-type rotation (Gemma 3)
            scaling = getattr(rotary, f"{layer_type}_attention_scaling", 1.0)
            rope_type = rotary.rope_type.get(layer_type, "default")
        else:
            inv_freq = getattr(rotary, "original_inv_freq", None)
            if inv_freq is None:
                inv_freq = rotary.inv_freq
            scaling = getattr(rotary, "attention_scaling", 1.0)
            rope_type = getattr(rotary, "rope_type", "default")
        tables.append((inv_freq, scaling, rope_type))
    return tables
