"""Projectors: one architecture per file, each registered in `base.REGISTRY`; export/reload in `io.py`."""

from kvproj.projectors import c2c, linear  # noqa: F401  (registers the architectures)
from kvproj.projectors.base import REGISTRY, Projector, build_projector, register
from kvproj.projectors.layer_map import resolve_layer_map

__all__ = ["REGISTRY", "Projector", "build_projector", "register", "resolve_layer_map"]
