"""The projector interface and registry: one architecture per file, each registering itself here.

A projector maps, for every target layer, the source keys/values at aligned positions (RoPE already undone)
to target keys/values (RoPE not yet applied). The transfer pipeline (kvproj/transfer.py) does the rotations.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from kvproj.cache import CacheGeometry
from kvproj.projectors.layer_map import resolve_layer_map

MODES = ("replace", "fuse")
REGISTRY: dict[str, type[Projector]] = {}


def register(name: str):
    def wrap(cls: type[Projector]) -> type[Projector]:
        if name in REGISTRY:
            raise ValueError(f"projector {name!r} registered twice")
        cls.architecture = name
        REGISTRY[name] = cls
        return cls

    return wrap


def build_projector(
    architecture: str, source: CacheGeometry, target: CacheGeometry, **init_args: Any
) -> Projector:
    if architecture not in REGISTRY:
        raise ValueError(f"model.projector: got {architecture!r}; valid: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[architecture](source, target, **init_args)


class Projector(nn.Module):
    """Base class. Subclasses implement `project_layer` and declare their init args.

    Args:
        source: Geometry of the source model's cache.
        target: Geometry of the target model's cache.
        layer_map: "proportional", "terminal" or one source layer index per target layer.
        mode: "replace" (the projection IS the target cache) or "fuse" (added to the target's own cache of the
            same text; an untrained projector then changes nothing).
        target_key_norm: In replace mode, pass projected keys through the target's own frozen key norm (Gemma 3,
            Qwen 3) before RoPE, which puts them on the target's key scale for free.
    """

    architecture: ClassVar[str] = ""

    def __init__(
        self,
        source: CacheGeometry,
        target: CacheGeometry,
        layer_map: str | list[int] = "proportional",
        mode: str = "replace",
        target_key_norm: bool = True,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"model.mode: got {mode!r}; valid: {', '.join(MODES)}")
        self.source_geometry = source
        self.target_geometry = target
        self.layer_map = resolve_layer_map(layer_map, source.num_layers, target.num_layers)
        self.mode = mode
        self.target_key_norm = target_key_norm and mode == "replace"
        self.init_args: dict[str, Any] = {"layer_map": layer_map, "mode": mode, "target_key_norm": target_key_norm}
        self.progress = 0.0  # training progress in [0, 1] (annealing schedules); set by the LightningModule
        self.step = (
            0  # optimizer step: stochastic projectors seed their noise from it (exact resume, no RNG state)
        )

    def set_progress(self, fraction: float, step: int = 0) -> None:
        self.progress = float(min(max(fraction, 0.0), 1.0))
        self.step = int(step)

    def noise_generator(self, device: torch.device, salt: int = 0) -> torch.Generator:
        """A generator seeded by (step, salt): training noise is a pure function of the step."""
        g = torch.Generator(device=device)
        g.manual_seed(1_000_003 * self.step + salt)
        return g

    def forward(
        self,
        source_keys: list[torch.Tensor],
        source_values: list[torch.Tensor],
        target_keys: list[torch.Tensor] | None = None,
        target_values: list[torch.Tensor] | None = None,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """source_*[s]: [B, Hs, T, Ds] per SOURCE layer; target_*[t]: [B, Ht, T, Dt] per target layer (fuse).

        Returns per-target-layer keys and values [B, Ht, T, Dt] (keys un-rotated).
        """
        if self.mode == "fuse" and (target_keys is None or target_values is None):
            raise ValueError("a projector in fuse mode needs the target's own cache of the same text")
        keys, values = [], []
        for t, s in enumerate(self.layer_map):
            base_k = target_keys[t] if target_keys is not None else None
            base_v = target_values[t] if target_values is not None else None
            k, v = self.project_layer(t, source_keys[s], source_values[s], base_k, base_v)
            keys.append(k)
            values.append(v)
        return keys, values

    def project_layer(
        self,
        target_layer: int,
        source_keys: torch.Tensor,
        source_values: torch.Tensor,
        target_keys: torch.Tensor | None,
        target_values: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    # helpers shared by architectures -------------------------------------------------------------------------
    def to_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """[B, H, T, D] -> [B, T, H*D]."""
        b, h, t, d = x.shape
        return x.transpose(1, 2).reshape(b, t, h * d)

    def to_heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, Ht*Dt] -> [B, Ht, T, Dt] in the target geometry."""
        b, t, _ = x.shape
        g = self.target_geometry
        return x.reshape(b, t, g.num_kv_heads, g.head_dim).transpose(1, 2)

    def combine(self, projected: torch.Tensor, base: torch.Tensor | None) -> torch.Tensor:
        """replace: the projection; fuse: the target's own cache plus the projection (residual)."""
        return projected if self.mode == "replace" else base + projected

    def layer_diagnostics(self) -> dict[str, float]:
        """Scalars worth logging per layer (e.g. gate values); none by default."""
        return {}

    def parameter_report(self) -> dict[str, float]:
        n = sum(p.numel() for p in self.parameters() if p.requires_grad)
        mb = sum(p.numel() * p.element_size() for p in self.parameters()) / 2**20
        return {"trainable_parameters": n, "megabytes": round(mb, 3)}
