"""Spot-instance preemption: on SIGTERM (and optionally SIGUSR1/SIGINT) finish the current step, write a
checkpoint, stop, and let the CLI exit with 143 so a supervisor restarts the job (Lightning alone exits 0).

Signals are acted on at step boundaries: one optimizer step must be shorter than the provider's notice (often
30 s - 2 min). `train/step_seconds` in TensorBoard shows it; lower data.batch_size or max_context_tokens if not.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import lightning as L
import torch

log = logging.getLogger(__name__)
EXIT_PREEMPTED = 143  # 128 + SIGTERM: what supervisors expect from a job stopped by SIGTERM


class PreemptionHandler(L.Callback):
    """Args:
    dirpath: The run's checkpoint folder (the checkpoint goes to last.ckpt there).
    signals: Signal names that mean "preempted".
    """

    received: int | None = None  # process-wide: the CLI reads it after fit returns

    def __init__(self, dirpath: str | Path, signals: tuple[str, ...] = ("SIGTERM",)) -> None:
        self.path = Path(dirpath) / "last.ckpt"
        self.signals = []
        for name in signals:
            if not hasattr(signal, name):
                raise ValueError(f"run.preemption_signals: unknown signal {name!r}; e.g. SIGTERM, SIGUSR1, SIGINT")
            self.signals.append(getattr(signal, name))
        self._previous: dict[int, object] = {}

    def _handler(self, signum, frame) -> None:
        if PreemptionHandler.received is None:
            log.warning(
                "received %s: finishing this step, then checkpointing and stopping", signal.Signals(signum).name
            )
        PreemptionHandler.received = signum

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        # installed after Lightning's own handlers (registered when the run starts), so these take precedence
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handler)

    def on_train_batch_end(self, trainer: L.Trainer, module, outputs, batch, batch_idx) -> None:
        if PreemptionHandler.received is not None and not trainer.should_stop:
            trainer.save_checkpoint(self.path)
            log.warning("preempted: checkpoint at step %d written to %s", trainer.global_step, self.path)
            trainer.should_stop = True
            trainer.kvproj_preempted = True

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


def preempted(trainer: L.Trainer | None) -> bool:
    return bool(trainer is not None and getattr(trainer, "kvproj_preempted", False))


class FaultInjection(L.Callback):
    """Test hook for scripts/preempt_test.py: `KVPROJ_FAULT=STEP:SIGNAL` sends SIGNAL (TERM or KILL) to this
    process when optimizer step STEP ends; `KVPROJ_FAULT=STEP:SAVEKILL` kills it in the middle of writing
    last.ckpt at that step; `KVPROJ_FAULT=STEP:NAN` makes the projector diverge (NaN weights) after that step.
    Inactive unless the variable is set."""

    def __init__(self, dirpath: str | Path) -> None:
        self.path = Path(dirpath) / "last.ckpt"
        spec = os.environ.get("KVPROJ_FAULT", "")
        self.step, self.kind = None, None
        if spec:
            step, kind = spec.split(":")
            self.step, self.kind = int(step), kind.upper()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.step is None or trainer.global_step != self.step:
            return
        if self.kind == "NAN":
            with torch.no_grad():
                next(module.projector.parameters()).fill_(float("nan"))
            return
        if self.kind == "SAVEKILL":
            os.environ["KVPROJ_KILL_DURING_SAVE"] = "1"
            trainer.save_checkpoint(self.path)
        else:
            os.kill(os.getpid(), getattr(signal, f"SIG{self.kind}"))
