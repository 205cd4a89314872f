"""Checkpoints you can trust: loading one runs no code, a save is never half-written, a non-finite state never
replaces a good one, and one writer keeps `last.ckpt` (the run's newest state) and the newest N `step=*.ckpt`."""

from __future__ import annotations

import logging
import math
import pickle
import re
import time
from pathlib import Path
from typing import Any, BinaryIO

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from kvproj.atomic import atomic_open

log = logging.getLogger(__name__)

LAST = "last.ckpt"
PERIODIC = re.compile(r"^step=(\d+)\.ckpt$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used for this run: truncated, not kvproj's, or for another pair/projector."""


def load_checkpoint_file(path: str | Path, setting: str = "--ckpt_path", mmap: bool = False) -> dict:
    """torch.load with weights_only=True: tensors and plain Python values only, so a crafted file cannot run code
    while it is read. Everything kvproj and Lightning write loads this way. Raises CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{setting} {path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # truncated zip, garbage, wrong format, unsafe pickle: all mean "not usable"
        text = str(err)
        first = text.splitlines()[0] if text else type(err).__name__
        if isinstance(err, pickle.UnpicklingError) and ("weights_only" in text or "Unsupported global" in text):
            raise CheckpointError(
                f"{setting} {path}: refused: it holds Python objects that could run code when loaded ({first}). "
                "kvproj checkpoints hold only tensors and plain values; load only checkpoints that you made"
            ) from err
        raise CheckpointError(
            f"{setting} {path}: cannot be read as a checkpoint (truncated or not one): {first}"
        ) from err


def checkpoint_step(path: str | Path) -> int | None:
    """global_step stored in a checkpoint file (None if there is none or it cannot be read)."""
    try:
        return int(load_checkpoint_file(path, mmap=True).get("global_step"))
    except (CheckpointError, TypeError, ValueError):
        return None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temporary file in the same folder, fsync, then rename over the destination: a kill -9 in the
    middle of a save leaves the previous file intact (or no file), never a truncated one that `last` picks.
    Loads with weights_only=True (what Lightning's own resume, validate and test read through)."""

    def _write(self, checkpoint: dict[str, Any], f: BinaryIO) -> None:
        torch.save(checkpoint, f)

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        path = Path(path)
        kept = f"the previous {path.name} is kept" if path.exists() else f"no {path.name} was written"
        advice = (
            f"{kept}; free space on that disk or point --trainer.default_root_dir to another one, then resume "
            "with --ckpt_path last"
        )
        # temp file beside it, fsync, rename; removed on failure; an OSError names the file and gives the advice
        with atomic_open(path, "wb", advice=advice) as f:
            self._write(checkpoint, f)

    def load_checkpoint(self, path, map_location=None, weights_only: bool | None = None) -> dict[str, Any]:
        return load_checkpoint_file(path)  # never weights_only=False, whatever the caller asks


def _non_finite(tensors: Any, prefix: str) -> str | None:
    """Name of the first floating tensor holding NaN/inf in a (nested) state, or None."""
    if isinstance(tensors, torch.Tensor):
        if tensors.is_floating_point() and not torch.isfinite(tensors).all():
            return prefix
        return None
    if isinstance(tensors, dict):
        items = tensors.items()
    elif isinstance(tensors, list | tuple):
        items = enumerate(tensors)
    else:
        return None
    for key, value in items:
        found = _non_finite(value, f"{prefix}.{key}" if not prefix.endswith(" ") else f"{prefix}{key}")
        if found:
            return found
    return None


def divergence_advice(lr: Any, precision: Any) -> str:
    """What to change after a run diverged (NaN/inf): the learning rate, the warmup, and a full-precision run
    unless it already is one."""
    advice = [f"lower model.lr (now {lr})", "raise model.warmup_steps"]
    if str(precision)[:2] not in ("32", "64"):
        advice.append(f"use trainer.precision 32-true (now {precision})")
    return " or ".join(advice)


class LossRiseWatch(L.Callback):
    """Warns once when the training loss climbs well above where this run (or this resume) started: the mean
    loss of a window of steps exceeds `factor` x the first window's mean and the first by at least `margin`. A
    finite loss that rises is a divergence the NaN check never sees (a learning rate too high for the pair: on
    SmolLM2 -> Qwen-Coder-0.5B, 1e-3 took the loss from ~3 at the ridge start to 5 - 7 within 90 steps).
    Window means, not single batches: one batch of the default run swings between 0.05 and 0.8."""

    def __init__(self, window: int = 20, factor: float = 1.5, margin: float = 0.5) -> None:
        self.window, self.factor, self.margin = window, factor, margin
        self.baseline: tuple[int, int, float] | None = None  # first step, last step, mean loss
        self._steps: list[int] = []
        self._losses: list[float] = []
        self.warned = False

    def observe(self, step: int, loss: float) -> str | None:
        """Feed one step's loss; returns the warning (once) when the rise is seen, else None."""
        if self.warned or not math.isfinite(loss):
            return None
        self._steps.append(step)
        self._losses.append(loss)
        if len(self._losses) < self.window:
            return None
        first, last, mean = self._steps[0], self._steps[-1], sum(self._losses) / len(self._losses)
        self._steps, self._losses = [], []
        if self.baseline is None:
            self.baseline = (first, last, mean)
            return None
        b_first, b_last, b_mean = self.baseline
        if mean > self.factor * b_mean and mean - b_mean >= self.margin:
            self.warned = True
            return (
                f"train/loss is rising: mean {mean:.3f} over steps {first}-{last} against {b_mean:.3f} over steps "
                f"{b_first}-{b_last}; the run may be diverging"
            )
        return None

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any, i: int):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if self.warned or loss is None:
            return
        rising = self.observe(trainer.global_step, float(loss.detach()))
        if rising:
            log.warning("%s: %s", rising, divergence_advice(module.hparams.get("lr"), trainer.precision))


class FiniteStateGuard(L.Callback):
    """Refuse to write a checkpoint whose projector weights or optimizer state hold NaN/inf: the previous (good)
    files stay, and the run stops with a message naming the step of the good checkpoint kept (the run's
    checkpoint folder is that of its RunCheckpoint)."""

    def on_save_checkpoint(
        self, trainer: L.Trainer, module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        bad = _non_finite(checkpoint.get("state_dict", {}), "projector weight ") or _non_finite(
            checkpoint.get("optimizer_states", []), "optimizer state "
        )
        if bad is None:
            return
        folder = Path(run_checkpoint(trainer).dirpath)
        last = folder / LAST
        step = checkpoint_step(last) if last.is_file() else None
        kept = (
            f"the last good checkpoint, {last} (step {step}), is kept"
            if step is not None
            else f"no checkpoint of this run was written before ({folder} has no {LAST})"
        )
        raise FloatingPointError(
            f"{bad} is not finite (NaN/inf) at step {trainer.global_step}: checkpoint not written; {kept}. "
            f"The run diverged: {divergence_advice(module.hparams.get('lr'), trainer.precision)}, in a new run "
            "(--run.name NAME, or --run.overwrite true): a resumed run keeps the learning rate saved in its checkpoint"
        )


def periodic_files(folder: str | Path) -> dict[int, Path]:
    """The periodic checkpoints `step=NNNNNNN.ckpt` in `folder`, by step."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    return {int(m.group(1)): p for p in folder.iterdir() if (m := PERIODIC.match(p.name))}


class RunCheckpoint(ModelCheckpoint):
    """The one writer of a run's checkpoints: `last.ckpt` (always the newest state: every N steps, every M minutes,
    on preemption and at the end of fit) and the newest `keep` `step=NNNNNNN.ckpt` files. Never `-vN` files: a name
    that exists is replaced. last.ckpt is written before the periodic file of the same step, so a kill between the
    two never leaves last.ckpt older than a periodic file; files left by an interrupted run beyond the step resumed
    from, or over `keep`, are removed when training starts.

    Args:
        dirpath: The run's checkpoint folder.
        every_n_steps: Periodic checkpoint (and last.ckpt) every N optimizer steps.
        keep: Periodic checkpoints kept (the newest).
        every_minutes: Also save last.ckpt every M minutes of training (None: off).
    """

    def __init__(
        self, dirpath: str | Path, every_n_steps: int, keep: int, every_minutes: float | None = None
    ) -> None:
        super().__init__(
            dirpath=str(dirpath),
            filename="step={step:07d}",
            auto_insert_metric_name=False,
            every_n_train_steps=every_n_steps,
            save_top_k=keep,
            monitor="step",
            mode="max",
            save_last=True,
            enable_version_counter=False,
        )
        self.keep = keep
        self.every_seconds = every_minutes * 60 if every_minutes else None
        self._last_written_step: int | None = None
        self._last_written_time = time.monotonic()

    @property
    def state_key(self) -> str:  # the name checkpoints of earlier kvproj versions stored this state under
        return self._generate_state_key(
            monitor=self.monitor,
            mode=self.mode,
            every_n_train_steps=self._every_n_train_steps,
            every_n_epochs=self._every_n_epochs,
            train_time_interval=self._train_time_interval,
        ).replace(type(self).__qualname__, "ModelCheckpoint", 1)

    # ----------------------------------------------------------------- what is on disk
    def _sync_from_disk(self, trainer: L.Trainer, current_step: int) -> None:
        """Keep the newest `keep` periodic files at or before `current_step`; make Lightning's top-k state say so."""
        files = periodic_files(self.dirpath)
        for step, path in files.items():
            if step > current_step:
                log.warning("removing %s: beyond step %d that training resumed from", path, current_step)
        newest = sorted((s for s in files if s <= current_step), reverse=True)[: self.keep]
        for step, path in files.items():
            if step not in newest and trainer.is_global_zero:
                path.unlink(missing_ok=True)
        self.best_k_models = {str(files[s]): torch.tensor(s) for s in newest}
        if newest:
            self.best_model_path, self.best_model_score = str(files[newest[0]]), torch.tensor(newest[0])
            if len(newest) == self.keep:
                self.kth_best_model_path, self.kth_value = str(files[newest[-1]]), torch.tensor(newest[-1])
            else:
                self.kth_best_model_path, self.kth_value = "", torch.tensor(-torch.inf)
        self.last_model_path = str(Path(self.dirpath) / LAST)

    # ----------------------------------------------------------------- hooks
    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        super().on_train_start(trainer, module)
        self._last_written_time = time.monotonic()
        self._last_written_step = trainer.global_step if trainer.ckpt_path else None
        self._sync_from_disk(trainer, trainer.global_step)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, module, outputs, batch, batch_idx)
        if (
            self.every_seconds is not None
            and time.monotonic() - self._last_written_time >= self.every_seconds
            and self._last_written_step != trainer.global_step
            and not trainer.sanity_checking
        ):
            self.write_last(trainer)

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        # the final step, whatever the periodic interval (a finished run's last.ckpt is its final step)
        if self._last_written_step != trainer.global_step:
            self.write_last(trainer)

    def write_last(self, trainer: L.Trainer) -> Path:
        """Write last.ckpt now (preemption, time-based saves, end of fit)."""
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        return Path(self.dirpath) / LAST

    # ----------------------------------------------------------------- Lightning's writers, reordered
    def _save_topk_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict) -> None:
        self._save_last_checkpoint(trainer, monitor_candidates)  # last first: never older than a periodic file
        super()._save_topk_checkpoint(trainer, monitor_candidates)
        self._sync_from_disk(trainer, trainer.global_step)

    def _save_last_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict) -> None:
        if self._last_written_step == trainer.global_step and (Path(self.dirpath) / LAST).exists():
            return  # already written at this step
        self.last_model_path = str(Path(self.dirpath) / LAST)
        self._save_checkpoint(trainer, self.last_model_path)
        self._last_written_step = trainer.global_step
        self._last_written_time = time.monotonic()


def run_checkpoint(trainer: L.Trainer) -> RunCheckpoint:
    """The run's RunCheckpoint, the writer of its checkpoint folder (not `trainer.checkpoint_callback`: that is
    the first ModelCheckpoint, which may be one the user added)."""
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, RunCheckpoint):
            return callback
    raise RuntimeError("this trainer has no RunCheckpoint (kvproj's CLI adds one to every run)")


def validate_checkpoint(path: str | Path, module: L.LightningModule) -> None:
    """Refuse, with a message naming the file, a checkpoint that is unreadable or belongs to another setup."""
    path = Path(path)
    state = load_checkpoint_file(path, mmap=True)  # only its 'kvproj' record is read: no full load of the weights
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
