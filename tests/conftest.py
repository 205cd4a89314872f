"""Shared fixtures: offline always, fixed seeds, tiny models built from configs."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from kvproj.models import TINY_FAMILIES, load_model  # noqa: E402

FAMILIES = sorted(TINY_FAMILIES)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


_cache: dict = {}


def tiny(family: str, **kwargs):
    """A tiny frozen model of `family`, memoized per (family, kwargs) for the session."""
    key = (family, tuple(sorted(kwargs.items())))
    if key not in _cache:
        _cache[key] = load_model(f"tiny:{family}") if not kwargs else load_model_spec(family, kwargs)
    return _cache[key]


def load_model_spec(family, kwargs):
    from kvproj.models import ModelSpec

    return load_model(ModelSpec(f"tiny:{family}", **kwargs))
