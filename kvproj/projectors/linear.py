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

    `residual_hidden > 0` adds, per target layer and per keys/values, a nonlinear branch beside the linear map:
    RMS-normalised input -> Linear(d_in, residual_hidden) -> GELU -> Linear(residual_hidden, d_out), whose output
    layer starts at zero, so the projector starts exactly where the linear map (or its ridge fit) is and training
    adds only the correction the linear map cannot express.

    Args:
        bias: Learn a bias per output feature.
        residual_hidden: Width of the nonlinear residual branch (0: none, the plain linear map).
    """

    architecture: ClassVar[str] = "linear"

    bias: bool = True
    residual_hidden: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        h = self.residual_hidden
        if isinstance(h, bool) or not isinstance(h, int) or h < 0:
            raise ValueError(
                f"model.projector.residual_hidden: got {h!r}; valid: an int >= 0 (0: no nonlinear residual branch)"
            )

    def build(self, source: CacheGeometry, target: CacheGeometry, mode: str = "replace") -> LinearProjector:
        return LinearProjector(source, target, self, mode)


class _Residual(nn.Module):
    """RMS norm (no weights) -> Linear -> GELU -> Linear with a zero output layer: starts as the zero map."""

    def __init__(self, d_in: int, d_out: int, hidden: int) -> None:
        super().__init__()
        self.up = nn.Linear(d_in, hidden)
        self.down = nn.Linear(hidden, d_out)
        nn.init.normal_(self.up.weight, std=d_in**-0.5)
        nn.init.zeros_(self.up.bias)
        nn.init.zeros_(self.down.weight)
        nn.init.zeros_(self.down.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
        return self.down(nn.functional.gelu(self.up(x)))


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
        self.residual_keys: nn.ModuleList | None = None
        self.residual_values: nn.ModuleList | None = None
        if h := config.residual_hidden:
            self.residual_keys = nn.ModuleList(_Residual(d_in, d_out, h) for _ in range(target.num_layers))
            self.residual_values = nn.ModuleList(_Residual(d_in, d_out, h) for _ in range(target.num_layers))

    def _map(self, kind: str, target_layer: int, x: torch.Tensor) -> torch.Tensor:
        x = self.to_tokens(x)
        y = getattr(self, kind)[target_layer](x)
        residual = getattr(self, f"residual_{kind}")
        if residual is not None:
            y = y + residual[target_layer](x)
        return self.to_heads(y)  # [B, Ht, T, Dt]

    def project_layer(self, target_layer, source_keys, source_values, target_keys, target_values):
        k = self._map("keys", target_layer, source_keys)
        v = self._map("values", target_layer, source_values)
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
