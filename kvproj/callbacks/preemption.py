"""Spot-instance preemption: on SIGTERM (and optionally SIGUSR1/SIGINT) finish the current step, write a
checkpoint, stop at once (no validation, eval or export on the way out), and let the CLI exit with 143 so a
supervisor restarts the job (Lightning alone exits 0).

Signals are acted on at step boundaries: one optimizer step must be shorter than the provider's notice (often
30 s - 2 min). `train/step_seconds` in TensorBoard shows it; lower data.batch_size or max_context_tokens if not.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

import lightning as L

from kvproj.callbacks.checkpointing import run_checkpoint

log = logging.getLogger(__name__)
EXIT_PREEMPTED = 143  # 128 + SIGTERM: what supervisors expect from a job stopped by SIGTERM


class PreemptionHandler(L.Callback):
    """The checkpoint goes to last.ckpt in the run's checkpoint folder, through its RunCheckpoint.

    Args:
        signals: Signal names that mean "preempted".
    """

    received: int | None = None  # process-wide: the CLI reads it after fit returns

    def __init__(self, signals: tuple[str, ...] = ("SIGTERM",)) -> None:
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
        if PreemptionHandler.received is None or preempted(trainer):
            return
        # checkpoint first, then leave at once: no validation pass (Lightning runs one when should_stop is set),
        # no facts eval, no export (a later run exports at its end); the notice period is short
        # through the one writer of last.ckpt (no last-v1.ckpt beside it)
        path = run_checkpoint(trainer).write_last(trainer)
        trainer.kvproj_preempted = True
        log.warning("preempted: checkpoint at step %d written to %s; exiting", trainer.global_step, path)
        trainer.should_stop = True
        trainer.limit_val_batches = 0

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


def preempted(trainer: L.Trainer | None) -> bool:
    return bool(trainer is not None and getattr(trainer, "kvproj_preempted", False))


def exit_now(code: int) -> None:
    """Leave without the interpreter's finalization (about a second of C-level teardown of the models and
    libraries on the smoke config; longer with real models): by now the checkpoint is fsynced, the loggers are
    closed and fit has returned, so only output buffers need flushing."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
