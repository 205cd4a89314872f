"""Per-layer linear maps for keys and values (optionally low-rank), the simplest RoPE-aware projector."""

from __future__ import annotations

import torch
from torch import nn

from kvproj.cache import CacheGeometry
from kvproj.projectors.base import Projector, register


def _init_linear(layer: nn.Linear, identity: bool, zero: bool) -> None:
    nn.init.zeros_(layer.bias) if layer.bias is not None else None
    if zero:
        nn.init.zeros_(layer.weight)
    elif identity:
        with torch.no_grad():
            layer.weight.copy_(torch.eye(layer.out_features, layer.in_features))
    else:
        # variance-preserving for [B, T, Hs*Ds] features: keeps projected keys/values on the source scale
        nn.init.normal_(layer.weight, std=layer.in_features**-0.5)


@register("linear")
class LinearProjector(Projector):
    """keys_t = W_k[t] keys_s + b, values_t = W_v[t] values_s + b, per target layer t (full rank).

    Init: identity when both geometries have the same width (same-model transfer starts exact), zero in fuse
    mode (an untrained projector changes nothing), else variance-preserving random.

    Args:
        bias: Learn a bias per output feature.
    """

    def __init__(self, source: CacheGeometry, target: CacheGeometry, bias: bool = True, **kwargs) -> None:
        super().__init__(source, target, **kwargs)
        self.init_args["bias"] = bias
        d_in, d_out = source.width, target.width
        identity = d_in == d_out
        self.keys = nn.ModuleList(nn.Linear(d_in, d_out, bias=bias) for _ in range(target.num_layers))
        self.values = nn.ModuleList(nn.Linear(d_in, d_out, bias=bias) for _ in range(target.num_layers))
        for layer in [*self.keys, *self.values]:
            _init_linear(layer, identity=identity, zero=self.mode == "fuse")

    def project_layer(self, target_layer, source_keys, source_values, target_keys, target_values):
        k = self.to_heads(self.keys[target_layer](self.to_tokens(source_keys)))  # [B, Ht, T, Dt]
        v = self.to_heads(self.values[target_layer](self.to_tokens(source_values)))
        return self.combine(k, target_keys), self.combine(v, target_values)


class _LowRank(nn.Module):
    def __init__(self, d_in: int, d_out: int, rank: int, zero: bool) -> None:
        super().__init__()
        self.down = nn.Linear(d_in, rank, bias=False)
        self.up = nn.Linear(rank, d_out, bias=True)
        nn.init.normal_(self.down.weight, std=d_in**-0.5)
        nn.init.zeros_(self.up.bias)
        nn.init.zeros_(self.up.weight) if zero else nn.init.normal_(self.up.weight, std=rank**-0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))


@register("lowrank")
class LowRankProjector(Projector):
    """Per-layer rank-r maps (down to r, up to the target width) for keys and values: fewer parameters.

    Args:
        rank: Inner dimension r.
    """

    def __init__(self, source: CacheGeometry, target: CacheGeometry, rank: int = 64, **kwargs) -> None:
        super().__init__(source, target, **kwargs)
        if rank < 1:
            raise ValueError(f"model.projector_args.rank: must be >= 1, got {rank}")
        self.init_args["rank"] = rank
        zero = self.mode == "fuse"
        n = target.num_layers
        self.keys = nn.ModuleList(_LowRank(source.width, target.width, rank, zero) for _ in range(n))
        self.values = nn.ModuleList(_LowRank(source.width, target.width, rank, zero) for _ in range(n))

    def project_layer(self, target_layer, source_keys, source_values, target_keys, target_values):
        k = self.to_heads(self.keys[target_layer](self.to_tokens(source_keys)))
        v = self.to_heads(self.values[target_layer](self.to_tokens(source_values)))
        return self.combine(k, target_keys), self.combine(v, target_values)


@register("identity")
class IdentityProjector(Projector):
    """Passes the source cache through: same-model transfer, and the floor that benchmarks compare against.

    Needs equal kv heads and head_dim, and replace mode. One learnable scalar gain on the values (1.0 at init,
    so exactly the identity) keeps a backward pass through the frozen target, as in real training.
    """

    def __init__(self, source: CacheGeometry, target: CacheGeometry, **kwargs) -> None:
        kwargs["target_key_norm"] = False  # source keys of the same model are already normalised
        super().__init__(source, target, **kwargs)
        if (source.num_kv_heads, source.head_dim) != (target.num_kv_heads, target.head_dim):
            raise ValueError(
                f"model.projector 'identity' needs equal kv heads and head_dim, got source "
                f"{source.num_kv_heads}x{source.head_dim} and target {target.num_kv_heads}x{target.head_dim}"
            )
        if self.mode != "replace":
            raise ValueError(f"model.projector 'identity' only works in mode 'replace', got {self.mode!r}")
        self.value_gain = nn.Parameter(torch.ones(()))

    def project_layer(self, target_layer, source_keys, source_values, target_keys, target_values):
        return source_keys, source_values * self.value_gain
