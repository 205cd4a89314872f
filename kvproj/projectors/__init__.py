"""Projectors: one architecture per file, each a typed config (`ProjectorConfig` subclass) that builds its
nn.Module; export/reload in `io.py`.

In a YAML config: `model.projector: {class_path: kvproj.projectors.LowRankConfig, init_args: {rank: 64}}`;
on the command line: `--model.projector LowRankConfig --model.projector.rank 64`.
"""

from kvproj.projectors.base import (
    ARCHITECTURES,
    Projector,
    ProjectorConfig,
    build_projector,
    config_from_init_args,
)
from kvproj.projectors.c2c import C2CConfig, C2CFuser
from kvproj.projectors.identity import IdentityConfig, IdentityProjector
from kvproj.projectors.layer_map import resolve_layer_map
from kvproj.projectors.linear import LinearConfig, LinearProjector
from kvproj.projectors.lowrank import LowRankConfig, LowRankProjector

__all__ = [
    "ARCHITECTURES",
    "C2CConfig",
    "C2CFuser",
    "IdentityConfig",
    "IdentityProjector",
    "LinearConfig",
    "LinearProjector",
    "LowRankConfig",
    "LowRankProjector",
    "Projector",
    "ProjectorConfig",
    "build_projector",
    "config_from_init_args",
    "resolve_layer_map",
]
