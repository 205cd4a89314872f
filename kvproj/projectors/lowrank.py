"""Per-layer low-rank maps for keys and values: the linear projector with fewer parameters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from kvproj.cache import CacheGeometry
from kvproj.projectors.base import Projector, ProjectorConfig


@dataclass(frozen=True)
class LowRankConfig(ProjectorConfig):
    """Per target layer, rank-r maps (down to r, up to the target width) for keys and values. Init: random down,
    random up (zero in fuse mode: an untrained projector changes nothing); `model.ridge_init: true` starts it
    from the truncated SVD of the ridge solution instead (the best rank-r approximation of that map).

    Args:
        rank: Inner dimension r (>= 1).
    """

    architecture: ClassVar[str] = "lowrank"

    rank: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"model.projector.rank: must be an integer >= 1, got {self.rank!r}")

    def build(self, source: CacheGeometry, target: CacheGeometry, mode: str = "replace") -> LowRankProjector:
        return LowRankProjector(source, target, self, mode)


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


class LowRankProjector(Projector):
    """keys_t = up_k[t](down_k[t](keys_s)), values likewise (see `LowRankConfig`)."""

    config: LowRankConfig

    def __init__(self, source: CacheGeometry, target: CacheGeometry, config: LowRankConfig, mode: str = "replace"):
        super().__init__(source, target, config, mode)
        zero = self.mode == "fuse"
        n, rank = target.num_layers, config.rank
        self.keys = nn.ModuleList(_LowRank(self.in_width, target.width, rank, zero) for _ in range(n))
        self.values = nn.ModuleList(_LowRank(self.in_width, target.width, rank, zero) for _ in range(n))

    def project_layer(self, target_layer, source_keys, source_values, target_keys, target_values):
        k = self.to_heads(self.keys[target_layer](self.to_tokens(source_keys)))
        v = self.to_heads(self.values[target_layer](self.to_tokens(source_values)))
        return self.combine(k, target_keys), self.combine(v, target_values)

    def input_weights(self) -> list[list[torch.Tensor]]:
        return [[k.up.weight @ k.down.weight, v.up.weight @ v.down.weight] for k, v in zip(self.keys, self.values)]

    @torch.no_grad()
    def set_linear_map(self, kind: str, target_layer: int, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Start target layer's `kind` ("keys" / "values") map from the rank-r truncated SVD of weight
        [d_out, d_in] (split as up = U sqrt(S), down = sqrt(S) V^T) and bias [d_out] (the ridge start)."""
        net = getattr(self, kind)[target_layer]
        u, s, vh = torch.linalg.svd(weight.double(), full_matrices=False)
        r = min(self.config.rank, s.shape[0])
        root = s[:r].sqrt()
        up = torch.zeros_like(net.up.weight, dtype=torch.float64)
        down = torch.zeros_like(net.down.weight, dtype=torch.float64)
        up[:, :r] = u[:, :r] * root
        down[:r] = root[:, None] * vh[:r]
        net.up.weight.copy_(up.to(net.up.weight.dtype))
        net.down.weight.copy_(down.to(net.down.weight.dtype))
        net.up.bias.copy_(bias.to(net.up.bias.dtype))
