"""Checkpoint files that are never half-written, and a last.ckpt that holds the final step of a run."""

from __future__ import annotations

import os
import signal
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temporary file in the same folder, fsync, then rename over the destination: a kill -9 in the
    middle of a save leaves the previous file intact (or no file), never a truncated one that `last` picks."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                if os.environ.get("KVPROJ_KILL_DURING_SAVE"):  # fault injection: die with a half-done save
                    f.truncate(f.tell() // 2)
                    os.kill(os.getpid(), signal.SIGKILL)
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class FinalCheckpoint(L.Callback):
    """Save `last.ckpt` when fit ends, so a finished run's last checkpoint is its final step (periodic saves
    happen every N steps and would otherwise miss the tail)."""

    def __init__(self, dirpath: str | Path) -> None:
        self.path = Path(dirpath) / "last.ckpt"

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not getattr(trainer, "kvproj_preempted", False):  # a preempted run has just saved it
            trainer.save_checkpoint(self.path)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used for this run: truncated, not kvproj's, or for another pair/projector."""


def read_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint file or raise CheckpointError naming it (missing, truncated, not a checkpoint)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"--ckpt_path {path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # truncated zip, garbage, wrong format: all mean "not usable"
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(
            f"--ckpt_path {path}: cannot be read as a checkpoint (truncated or not one): {first}"
        ) from err


def validate_checkpoint(path: str | Path, module: L.LightningModule) -> None:
    """Refuse, with a message naming the file, a checkpoint that is unreadable or belongs to another setup."""
    path = Path(path)
    state = read_checkpoint(path)
    meta = state.get("kvproj") if isinstance(state, dict) else None
    if meta is None:
        raise CheckpointError(f"--ckpt_path {path}: not a kvproj training checkpoint (no 'kvproj' record)")
    pair = module.pair
    expected = {
        "source geometry": pair.source.geometry.to_dict(),
        "target geometry": pair.target.geometry.to_dict(),
        "projector": module.projector.architecture,
        "projector init args": module.projector.init_args,
    }
    found = {
        "source geometry": meta.get("source_geometry"),
        "target geometry": meta.get("target_geometry"),
        "projector": meta.get("projector"),
        "projector init args": meta.get("projector_init_args"),
    }
    wrong = [k for k in expected if _jsonish(expected[k]) != _jsonish(found[k])]
    if wrong:
        raise CheckpointError(
            f"--ckpt_path {path}: made for {meta.get('source', {}).get('name')} -> {meta.get('target', {}).get('name')} "
            f"with projector {meta.get('projector')!r}; this run is {pair.source.spec.name} -> {pair.target.spec.name} "
            f"with {module.projector.architecture!r}. Differs in: {', '.join(wrong)}"
        )


def _jsonish(value):
    import json

    return json.loads(json.dumps(value, default=str))
