"""Fault injection for scripts/preempt_test.py and the tests. Installed only when KVPROJ_FAULT is set (the CLI
never adds it otherwise); production checkpoint IO knows nothing about it.

`KVPROJ_FAULT=STEP:KIND[@POINT]`

KIND: TERM, INT, USR1, KILL (a signal to this process), NAN (the projector's weights become NaN), ENOSPC (a
checkpoint write fails with "No space left on device"; POINT save only), SAVEKILL (= KILL@save).

POINT, where the fault strikes (once per process):
    step      the end of optimizer step STEP (default)
    mid_step  inside optimizer step STEP, before the optimizer updates the weights
    save      inside the first checkpoint write at step >= STEP (KILL: the file is half written, then SIGKILL)
    val       inside the first validation batch at step >= STEP
    export    inside the first projector export at step >= STEP (weights written, folder not yet renamed)
    resume    at the first batch of a run resumed from a checkpoint, at step >= STEP

The line `kvproj-fault: KIND@POINT at step N, t=UNIX_TIME` goes to stderr when it strikes (for timing).
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import time
from typing import Any, BinaryIO

import lightning as L
import torch

from kvproj.callbacks.checkpointing import AtomicCheckpointIO

KINDS = ("TERM", "INT", "USR1", "KILL", "NAN", "ENOSPC", "SAVEKILL")
POINTS = ("step", "mid_step", "save", "val", "export", "resume")


def parse_fault(spec: str) -> tuple[int, str, str]:
    """'7:TERM@val' -> (7, 'TERM', 'val'); raises ValueError naming KVPROJ_FAULT and what is valid."""
    try:
        step, rest = spec.split(":", 1)
        kind, _, point = rest.partition("@")
        step, kind, point = int(step), kind.upper(), (point or "step").lower()
    except ValueError:
        raise ValueError(
            f"KVPROJ_FAULT: got {spec!r}; expected STEP:KIND[@POINT], e.g. 7:TERM or 8:KILL@save"
        ) from None
    if kind == "SAVEKILL":
        kind, point = "KILL", "save"
    if kind not in KINDS:
        raise ValueError(f"KVPROJ_FAULT: kind {kind!r} in {spec!r}; valid: {', '.join(KINDS)}")
    if point not in POINTS:
        raise ValueError(f"KVPROJ_FAULT: point {point!r} in {spec!r}; valid: {', '.join(POINTS)}")
    if kind == "ENOSPC" and point != "save":
        raise ValueError(f"KVPROJ_FAULT: ENOSPC strikes inside a checkpoint write only ({spec!r}: use @save)")
    if kind == "NAN" and point != "step":
        raise ValueError(f"KVPROJ_FAULT: NAN strikes at a step end only ({spec!r}: drop @{point})")
    return step, kind, point


class FaultyCheckpointIO(AtomicCheckpointIO):
    """The atomic IO, with a fault in the middle of one write."""

    def __init__(self, fault: FaultInjection) -> None:
        super().__init__()
        self.fault = fault

    def _write(self, checkpoint: dict[str, Any], f: BinaryIO) -> None:
        fault = self.fault
        if fault.fired or int(checkpoint.get("global_step", -1)) < fault.step:
            return super()._write(checkpoint, f)
        fault.strike(int(checkpoint["global_step"]), signal_now=False)
        if fault.kind == "ENOSPC":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if fault.kind == "KILL":
            super()._write(checkpoint, f)
            f.flush()
            f.truncate(f.tell() // 2)
            os.kill(os.getpid(), signal.SIGKILL)
        os.kill(os.getpid(), getattr(signal, f"SIG{fault.kind}"))  # arrives now, mid-save; the handler records it
        return super()._write(checkpoint, f)


class FaultInjection(L.Callback):
    """Test hook: strikes as KVPROJ_FAULT says (see the module docstring)."""

    def __init__(self, spec: str | None = None) -> None:
        spec = os.environ.get("KVPROJ_FAULT", "") if spec is None else spec
        self.step, self.kind, self.point = parse_fault(spec)
        self.fired = False
        self.trainer: L.Trainer | None = None

    def strike(self, step: int, signal_now: bool = True) -> None:
        self.fired = True
        sys.stderr.write(f"kvproj-fault: {self.kind}@{self.point} at step {step}, t={time.time():.6f}\n")
        sys.stderr.flush()
        if signal_now:
            os.kill(os.getpid(), getattr(signal, f"SIG{self.kind}"))

    def _due(self, trainer: L.Trainer, point: str, step: int | None = None) -> bool:
        step = trainer.global_step if step is None else step
        return not self.fired and self.point == point and step >= self.step

    def setup(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        if self.point == "save":
            trainer.strategy.checkpoint_io = FaultyCheckpointIO(self)
        if self.point == "export":
            self._wrap_export()

    def _wrap_export(self) -> None:
        import kvproj.projectors.io as projector_io

        real = projector_io.save_file
        fault = self

        def save_file(tensors, filename, *args, **kwargs):
            real(tensors, filename, *args, **kwargs)
            if not fault.fired and fault.trainer is not None and fault.trainer.global_step >= fault.step:
                fault.strike(fault.trainer.global_step)  # weights written to the temp folder, not yet renamed

        projector_io.save_file = save_file

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.trainer = trainer

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if self._due(trainer, "resume") and trainer.ckpt_path is not None:
            self.strike(trainer.global_step)

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        if self._due(trainer, "mid_step", trainer.global_step + 1):  # the step being made
            self.strike(trainer.global_step + 1)

    def on_validation_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.sanity_checking and self._due(trainer, "val"):
            self.strike(trainer.global_step)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.fired or self.point != "step" or trainer.global_step != self.step:
            return
        if self.kind == "NAN":
            self.fired = True
            with torch.no_grad():
                next(module.projector.parameters()).fill_(float("nan"))
            return
        self.strike(trainer.global_step)


def fault_callbacks() -> list[L.Callback]:
    """[FaultInjection] when KVPROJ_FAULT is set, else []."""
    return [FaultInjection()] if os.environ.get("KVPROJ_FAULT") else []
