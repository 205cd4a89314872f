"""A Cache-to-Cache-style fuser (Fu et al. 2025): per target layer, separate K and V nets read the source and
target per-token features, an MLP proposes a correction, per-head sigmoid weights and an annealed per-layer gate
decide how much of it enters the target cache. Zero-initialised output: an untrained fuser changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from kvproj.cache import CacheGeometry
from kvproj.projectors.base import Projector, ProjectorConfig


class _FuserNet(nn.Module):
    """[B, T, Ds*Hs (+ Dt*Ht)] -> correction [B, T, Ht*Dt] and per-head weights [B, T, Ht]."""

    def __init__(self, d_in: int, d_out: int, heads: int, hidden: int, depth: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(d_in, hidden), nn.GELU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.GELU()]
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(hidden, d_out)
        self.head_weight = nn.Linear(hidden, heads)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        nn.init.zeros_(self.head_weight.weight)
        nn.init.constant_(self.head_weight.bias, 2.0)  # sigmoid(2) ~ 0.88: open heads, learn to close

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.out(h), torch.sigmoid(self.head_weight(h))


@dataclass(frozen=True)
class C2CConfig(ProjectorConfig):
    """Cache-to-Cache-style fuser with per-layer gates.

    Gate: a logit per target layer; in training a Gumbel-sigmoid sample at a temperature annealed from
    `gate_temperature_start` to `gate_temperature_end` over training; in eval a hard 0/1 gate (logit > 0).
    In replace mode the target features are absent (zeros) and the output is the gated correction alone.

    Args:
        hidden: Width of each MLP (>= 1).
        depth: Hidden layers per MLP (>= 1).
        gate_init: Initial gate logit (positive = layer starts open).
        gate_temperature_start: Gumbel-sigmoid temperature at the start of training (> 0).
        gate_temperature_end: Temperature at the end of training (> 0).
        hard_gate_in_eval: Use a hard 0/1 gate at inference (as in C2C).
    """

    architecture: ClassVar[str] = "c2c"

    hidden: int = 512
    depth: int = 2
    gate_init: float = 3.0
    gate_temperature_start: float = 1.0
    gate_temperature_end: float = 0.1
    hard_gate_in_eval: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("hidden", "depth"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"model.projector.{name}: must be an integer >= 1, got {value!r}")
        for name in ("gate_temperature_start", "gate_temperature_end"):
            if not getattr(self, name) > 0:
                raise ValueError(f"model.projector.{name}: must be > 0, got {getattr(self, name)!r}")

    def build(self, source: CacheGeometry, target: CacheGeometry, mode: str = "replace") -> C2CFuser:
        return C2CFuser(source, target, self, mode)


class C2CFuser(Projector):
    """Per target layer, K and V fuser nets propose a correction, per-head weights and a gate scale it (see
    `C2CConfig`)."""

    config: C2CConfig

    def __init__(self, source: CacheGeometry, target: CacheGeometry, config: C2CConfig, mode: str = "replace"):
        super().__init__(source, target, config, mode)
        d_in = self.in_width + (target.width if self.mode == "fuse" else 0)
        n, heads, hidden, depth = target.num_layers, target.num_kv_heads, config.hidden, config.depth
        self.keys = nn.ModuleList(_FuserNet(d_in, target.width, heads, hidden, depth) for _ in range(n))
        self.values = nn.ModuleList(_FuserNet(d_in, target.width, heads, hidden, depth) for _ in range(n))
        self.gate_logits = nn.Parameter(torch.full((n,), float(config.gate_init)))
        self.t_start, self.t_end = config.gate_temperature_start, config.gate_temperature_end
        self.hard_gate_in_eval = config.hard_gate_in_eval

    def temperature(self) -> float:
        # geometric annealing: most of the sharpening happens late
        return self.t_start * (self.t_end / self.t_start) ** self.progress

    def gate(self, target_layer: int) -> torch.Tensor:
        logit = self.gate_logits[target_layer]
        if not self.training:
            return (logit > 0).to(logit.dtype) if self.hard_gate_in_eval else torch.sigmoid(logit)
        # noise from the step, not the global RNG: a resumed run draws exactly what an uninterrupted one did
        gen = self.noise_generator(logit.device, salt=target_layer)
        u = torch.rand((), device=logit.device, generator=gen).clamp(1e-6, 1 - 1e-6)
        noise = torch.log(u) - torch.log1p(-u)  # logistic noise = difference of two Gumbels
        return torch.sigmoid((logit + noise) / self.temperature())

    def project_layer(self, target_layer, source_keys, source_values, target_keys, target_values):
        gate = self.gate(target_layer)  # one draw per layer and step, shared by K and V
        out = []
        for net, src, base in (
            (self.keys[target_layer], source_keys, target_keys),
            (self.values[target_layer], source_values, target_values),
        ):
            feats = self.to_tokens(src)  # [B, T, Hs*Ds]
            if self.mode == "fuse":
                feats = torch.cat([feats, self.to_tokens(base)], dim=-1)  # [B, T, Hs*Ds + Ht*Dt]
            correction, head_w = net(feats)  # [B, T, Ht*Dt], [B, T, Ht]
            correction = self.to_heads(correction) * head_w.transpose(1, 2)[..., None]  # [B, Ht, T, Dt]
            out.append(self.combine(correction * gate, base))
        return out[0], out[1]

    def layer_diagnostics(self) -> dict[str, float]:
        return {f"gate/{t}": torch.sigmoid(g).item() for t, g in enumerate(self.gate_logits.detach())}
