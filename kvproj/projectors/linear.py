"""Per-layer linear maps for keys and values: the simplest RoPE-aware projector (ridge regression can start it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from kvproj.cache import CacheGeometry
from kvproj.projectors.base import Projector, ProjectorConfig


def _init_linear(layer: nn.Linear, identity: bool, zero: bool, block: int = 0) -> None:
    nn.init.zeros_(layer.bias) if layer.bias is not None else None
    if zero:
        nn.init.zeros_(layer.weight)
    elif identity:  # identity on input block `block` (of out_features columns), zero elsewhere
        with torch.no_grad():
            layer.weight.zero_()
            n = layer.out_features
            layer.weight[:, block * n : (block + 1) * n].copy_(torch.eye(n))
    else:
        # variance-preserving for [B, T, Hs*Ds] features: keeps projected keys/values on the source scale
        nn.init.normal_(layer.weight, std=layer.in_features**-0.5)


@dataclass(frozen=True)
class LinearConfig(ProjectorConfig):
    """Per target layer t, full-rank maps keys_t = W_k[t] keys_s + b, values_t = W_v[t] values_s + b.

    Init: identity when both geometries have the same width (same-model transfer starts exact), zero in fuse
    mode (an untrained projector changes nothing), else variance-preserving random. `model.ridge_init: true`
    fits it in closed form first.

    Args:
        bias: Learn a bias per output feature.
    """

    architecture: ClassVar[str] = "linear"

    bias: bool = True

    def build(self, source: CacheGeometry, target: CacheGeometry, mode: str = "replace") -> LinearProjector:
        return LinearProjector(source, target, self, mode)


class LinearProjector(Projector):
    """keys_t = W_k[t] keys_s + b, values_t = W_v[t] values_s + b, per target layer t (see `LinearConfig`)."""

    config: LinearConfig

    def __init__(self, source: CacheGeometry, target: CacheGeometry, config: LinearConfig, mode: str = "replace"):
        super().__init__(source, target, config, mode)
        d_in, d_out = self.in_width, target.width
        identity = source.width == d_out
        self.keys = nn.ModuleList(nn.Linear(d_in, d_out, bias=config.bias) for _ in range(target.num_layers))
        self.values = nn.ModuleList(nn.Linear(d_in, d_out, bias=config.bias) for _ in range(target.num_layers))
        for t in range(target.num_layers):
            # identity: on the mapped source layer's aligned position (same-model transfer starts exact with a
            # window of layers or positions too)
            block = self.source_layers[t].index(self.layer_map[t]) * self.source_tokens if identity else 0
            for layer in (self.keys[t], self.values[t]):
                _init_linear(layer, identity=identity, zero=self.mode == "fuse", block=block)

    def project_layer(self, target_layer, source_keys, source_values, target_keys, target_values):
        k = self.to_heads(self.keys[target_layer](self.to_tokens(source_keys)))  # [B, Ht, T, Dt]
        v = self.to_heads(self.values[target_layer](self.to_tokens(source_values)))
        return self.combine(k, target_keys), self.combine(v, target_values)

    def input_weights(self) -> list[list[torch.Tensor]]:
        return [[k.weight, v.weight] for k, v in zip(self.keys, self.values)]

    @torch.no_grad()
    def set_linear_map(self, kind: str, target_layer: int, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Set target layer's `kind` ("keys" / "values") map to weight [d_out, d_in] and bias [d_out] (the ridge
        start, `kvproj.ridge`)."""
        layer = getattr(self, kind)[target_layer]
        layer.weight.copy_(weight.to(layer.weight.dtype))
        if layer.bias is not None:
            layer.bias.copy_(bias.to(layer.bias.dtype))
