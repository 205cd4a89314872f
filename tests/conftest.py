"""Shared fixtures: offline always, fixed seeds, tiny models built from configs."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from kvproj.models import TINY_FAMILIES, load_model  # noqa: E402

FAMILIES = sorted(TINY_FAMILIES)
ROOT = Path(__file__).resolve().parent.parent
FAST = ["--trainer.max_steps", "12", "--run.checkpoint_every_n_steps", "4"]


@pytest.fixture(autouse=True)
def _fresh_kvproj_logger():
    """Each test starts with kvproj's logger as a new process has it: an in-process `main()` gives it a handler
    on the sys.stderr of its moment (pytest's capture of that test), which must not outlive the test."""
    logger = logging.getLogger("kvproj")
    saved = list(logger.handlers), logger.level, logger.propagate
    logger.handlers[:] = []
    yield
    logger.handlers[:], logger.propagate = saved[0], saved[2]
    logger.setLevel(saved[1])


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


def fit(
    root: Path, *extra: str, fault: str | None = None, callbacks: bool = False, config: str = "configs/smoke.yaml"
) -> subprocess.CompletedProcess:
    """`python -m kvproj fit` of the smoke config into `root` (12 steps, checkpoint every 4), as users run it.
    `fault`: KVPROJ_FAULT (kvproj/callbacks/faults.py); `callbacks`: keep the config's callbacks (facts eval)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "KVPROJ_LOG": "INFO"}
    env.pop("KVPROJ_FAULT", None)
    if fault:
        env["KVPROJ_FAULT"] = fault
    cmd = [sys.executable, "-m", "kvproj", "fit", "--config", config, "--trainer.default_root_dir", str(root), *FAST,
           *([] if callbacks else ["--trainer.callbacks", "[]"]), *extra]  # fmt: skip
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def state(path: Path) -> dict:
    """A checkpoint file's contents (weights_only, as kvproj loads them)."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def step_of(path: Path) -> int:
    return state(path)["global_step"]
