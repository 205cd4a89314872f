"""The identity projector: same-model transfer, and the floor that benchmarks compare against."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from kvproj.cache import CacheGeometry
from kvproj.projectors.base import Projector, ProjectorConfig


@dataclass(frozen=True)
class IdentityConfig(ProjectorConfig):
    """Passes the source cache through. Needs equal kv heads and head_dim, and model.mode replace. One learnable
    scalar gain on the values (1.0 at init, so exactly the identity) keeps a backward pass through the frozen
    target, as in real training.

    Args:
        target_key_norm: Must be false: the source keys of the same model are already normalised.
        source_window: Must be 0: each target layer is one source layer.
        source_tokens: Must be 1: each target position is one source position.
        extra_source_layers: Must be empty.
    """

    architecture: ClassVar[str] = "identity"

    target_key_norm: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.target_key_norm:
            raise ValueError(
                "model.projector.target_key_norm: must be false for IdentityConfig (the keys it passes through "
                "are already normalised), got true"
            )
        if self.source_window != 0:
            raise ValueError(
                f"model.projector.source_window: must be 0 for IdentityConfig (it passes one source layer "
                f"through), got {self.source_window!r}"
            )
        if self.extra_source_layers:
            raise ValueError(
                f"model.projector.extra_source_layers: must be empty for IdentityConfig (it passes one source "
                f"layer through), got {self.extra_source_layers!r}"
            )
        if self.source_tokens != 1:
            raise ValueError(
                f"model.projector.source_tokens: must be 1 for IdentityConfig (it passes one source position "
                f"through), got {self.source_tokens!r}"
            )

    def build(self, source: CacheGeometry, target: CacheGeometry, mode: str = "replace") -> IdentityProjector:
        return IdentityProjector(source, target, self, mode)


class IdentityProjector(Projector):
    """keys_t = keys_s, values_t = gain * values_s (see `IdentityConfig`)."""

    config: IdentityConfig

    def __init__(
        self, source: CacheGeometry, target: CacheGeometry, config: IdentityConfig, mode: str = "replace"
    ):
        super().__init__(source, target, config, mode)
        if (source.num_kv_heads, source.head_dim) != (target.num_kv_heads, target.head_dim):
            raise ValueError(
                f"model.projector IdentityConfig needs equal kv heads and head_dim, got source "
                f"{source.num_kv_heads}x{source.head_dim} and target {target.num_kv_heads}x{target.head_dim}"
            )
        if self.mode != "replace":
            raise ValueError(
                f"model.projector IdentityConfig only works with model.mode 'replace', got {self.mode!r}"
            )
        self.value_gain = nn.Parameter(torch.ones(()))

    def project_layer(self, target_layer, source_keys, source_values, target_keys, target_values):
        return source_keys, source_values * self.value_gain
