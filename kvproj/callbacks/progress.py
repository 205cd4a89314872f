"""Training progress counted in optimizer steps (the training data is an endless stream: epochs mean nothing),
and tokens/s.

- `StepProgressBar`: on a terminal, Lightning's rich progress bar over `trainer.max_steps` with loss, tokens/s
  and the time left. When stdout is not a terminal (a nohup log, a cluster job), a plain line instead, every
  `trainer.log_every_n_steps` steps or every `every_seconds`, whichever comes first, and at the last step:

      step 20/600 (3%) | train/loss 2.3140 | val/loss 2.4100 | 1,830 tok/s | 0.41 s/step | elapsed 0:00:08 | ETA 0:03:58

- `TokenThroughput`: Lightning's ThroughputMonitor counting each batch's real tokens; logs tokens/s to TensorBoard.
- `progress_callbacks`: both, as `kvproj fit` installs them.
- `loop_progress`: the same habit for loops outside training (`evaluate`, experiments): a bar on a terminal,
  plain lines after each 10% elsewhere.

Tokens of a batch (`batch_tokens`): source context + target prefix + continuation, padding excluded, counted once
when the batch is collated (`batch["n_tokens"]`, kvproj/data/pairs.py). The clock
runs between the ends of consecutive training batches, so it includes the frozen models' forwards (the datamodule
runs them in `on_after_batch_transfer`), backward and optimizer step; time spent in validation is left out.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, ProgressBar, RichProgressBar, ThroughputMonitor


def batch_tokens(batch: dict[str, Any]) -> int:
    """Real (unpadded) tokens of a kvproj batch: source context + target prefix + continuation (counted at
    collate time, a plain int: no device sums)."""
    return batch["n_tokens"]


def batch_examples(batch: dict[str, Any]) -> int:
    return int(batch["continuation_ids"].shape[0])


def total_steps(trainer: L.Trainer) -> int | None:
    """The optimizer step training stops at: trainer.max_steps, else an estimate if finite, else None."""
    if trainer.max_steps is not None and trainer.max_steps > 0:
        return int(trainer.max_steps)
    try:
        estimate = trainer.estimated_stepping_batches
    except Exception:  # no dataloader yet, or one without a length
        return None
    return int(estimate) if math.isfinite(estimate) else None


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=int(max(seconds, 0))))


class TokenThroughput(ThroughputMonitor):
    """Lightning's ThroughputMonitor counting kvproj batches: examples (`samples`) and real tokens (`items`).

    Logs, every `trainer.log_every_n_steps` steps once `window_size` batches have been seen,
    `train/device/items_per_sec` (tokens/s on one device; `train/items_per_sec`: all devices),
    `train/device/samples_per_sec`, `train/device/batches_per_sec`, and running totals (`train/lengths`: tokens).
    Validation time is not counted.

    Args:
        window_size: Batches in the rolling average.
    """

    def __init__(self, window_size: int = 10) -> None:
        super().__init__(batch_size_fn=batch_examples, length_fn=batch_tokens, window_size=window_size)


class StepProgressBar(RichProgressBar):
    """Progress in optimizer steps: step / max_steps, loss, tokens/s, time left.

    On a terminal: a rich progress bar. Otherwise (stdout redirected to a file or a pipe): a plain line every
    `trainer.log_every_n_steps` steps, or when `every_seconds` have passed since the last one, and at the end.

    Args:
        every_seconds: Plain mode: also print a line when this many seconds have passed since the last one.
        plain: Force plain lines (True) or the bar (False); None: plain when stdout is not a terminal.
        window: Steps over which tokens/s and seconds/step are averaged.

    The bar keeps its own short window rather than reading `TokenThroughput`: that one reports only once its
    window is full, only to the logger, and may not be installed; both count tokens from `batch["n_tokens"]`.
    """

    def __init__(self, every_seconds: float = 30.0, plain: bool | None = None, window: int = 20) -> None:
        super().__init__()
        self.every_seconds = every_seconds
        self.plain = plain
        self._printing = False
        # (active seconds, tokens so far, step) at recent batch ends; active seconds exclude validation
        self._window: deque[tuple[float, int, int]] = deque(maxlen=window + 1)
        self._tokens = 0
        self._paused = 0.0
        self._pause_started: float | None = None
        self._started = 0.0
        self._start_step = 0
        self._last_print = 0.0
        self._last_printed_step = -1

    # ------------------------------------------------------------------ measurements
    def _active(self) -> float:
        return time.perf_counter() - self._paused

    def rates(self) -> tuple[float | None, float | None]:
        """(tokens/s, seconds/step) over the recent window; None before the first step."""
        if len(self._window) < 2:
            return None, None
        (t0, n0, s0), (t1, n1, s1) = self._window[0], self._window[-1]
        seconds = max(t1 - t0, 1e-9)
        return (n1 - n0) / seconds, (seconds / (s1 - s0) if s1 > s0 else None)

    def eta(self, step: int, total: int | None) -> float | None:
        """Seconds left: the steps left times the average wall time per step of this session (validation,
        evaluation and checkpoints included)."""
        done = step - self._start_step
        if total is None or done <= 0:
            return None
        return (total - step) * (time.perf_counter() - self._started) / done

    def line(self, trainer: L.Trainer) -> str:
        """The plain progress line for the current step."""
        step, total = trainer.global_step, total_steps(trainer)
        parts = [f"step {step}/{total} ({100 * step / total:.0f}%)" if total else f"step {step}"]
        for name, value in self._scalar_metrics(trainer).items():
            parts.append(f"{name} {value:.4f}")
        tokens_per_s, step_seconds = self.rates()
        if tokens_per_s is not None:
            parts.append(f"{tokens_per_s:,.0f} tok/s")
        if step_seconds is not None:
            parts.append(f"{step_seconds:.2f} s/step")
        parts.append(f"elapsed {_clock(time.perf_counter() - self._started)}")
        eta = self.eta(step, total)
        if eta is not None:
            parts.append(f"ETA {_clock(eta)}")
        return " | ".join(parts)

    @staticmethod
    def _scalar_metrics(trainer: L.Trainer) -> dict[str, float]:
        out = {}
        for name, value in trainer.progress_bar_metrics.items():
            try:
                out[name] = float(value)
            except (TypeError, ValueError):
                continue
        return out

    def _emit(self, trainer: L.Trainer) -> None:
        sys.stdout.write(self.line(trainer) + "\n")
        sys.stdout.flush()
        self._last_print = time.perf_counter()
        self._last_printed_step = trainer.global_step

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)  # disables the bar on ranks other than 0
        plain = (not sys.stdout.isatty()) if self.plain is None else self.plain
        self._printing = plain and trainer.is_global_zero and self.is_enabled
        if plain:
            self.disable()  # no rich output at all: a redirected rich bar only prints its final state

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._started = self._last_print = time.perf_counter()
        self._paused, self._tokens, self._start_step = 0.0, 0, trainer.global_step
        self._window.clear()
        self._window.append((self._active(), 0, trainer.global_step))

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # not the parent's "Epoch 0/-2" task: one task counting optimizer steps towards max_steps
        if self.is_disabled or self.progress is None:
            return
        total = total_steps(trainer) or float("inf")
        if self.train_progress_bar_id is None:
            self.train_progress_bar_id = self.progress.add_task(
                "train", total=total, completed=trainer.global_step
            )
        else:
            self.progress.reset(
                self.train_progress_bar_id, total=total, completed=trainer.global_step, description="train"
            )
        self.refresh()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._tokens += batch_tokens(batch)
        self._window.append((self._active(), self._tokens, trainer.global_step))
        step, total = trainer.global_step, total_steps(trainer)
        if self._printing:
            n = max(int(trainer.log_every_n_steps or 1), 1)
            due = step % n == 0 or step == total or time.perf_counter() - self._last_print >= self.every_seconds
            if due and step != self._last_printed_step:
                self._emit(trainer)
            return
        if self.is_disabled or self.progress is None:
            return
        if self.train_progress_bar_id is None:  # resumed mid-epoch: no epoch start was seen
            self.on_train_epoch_start(trainer, pl_module)
        self.progress.update(self.train_progress_bar_id, completed=step)
        self._update_metrics(trainer, pl_module)
        self.refresh()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._printing and trainer.global_step != self._last_printed_step:
            self._emit(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_start(trainer, pl_module)
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._pause_started = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if self._pause_started is not None:
            self._paused += time.perf_counter() - self._pause_started
            self._pause_started = None

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        tokens_per_s, _ = self.rates()
        if trainer.training and tokens_per_s is not None:
            metrics["tok/s"] = f"{tokens_per_s:,.0f}"
        return metrics


def progress_callbacks(trainer_config: dict[str, Any]) -> list[Callback]:
    """What `kvproj fit` adds: tokens/s logging, and the step progress display unless `trainer.enable_progress_bar`
    is false or `trainer.callbacks` already has a progress bar."""
    callbacks: list[Callback] = [TokenThroughput()]
    given = trainer_config.get("callbacks") or []
    given = given if isinstance(given, list) else [given]
    if trainer_config.get("enable_progress_bar") is not False and not any(
        isinstance(c, ProgressBar) for c in given
    ):
        callbacks.append(StepProgressBar())
    return callbacks


@contextlib.contextmanager
def loop_progress(total: int, label: str, unit: str = "") -> Iterator[Callable[[int], None]]:
    """Progress of a loop over `total` items; yields `advance(n=1)`. On a terminal a rich bar; on a log file or
    pipe (nohup, cluster jobs) a plain line on the `kvproj` logger after each 10% more and at the end:
    "LABEL 4/6 UNIT, 12 s elapsed, about 6 s to go"."""
    if sys.stderr.isatty():
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(
            TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True
        ) as bar:
            job = bar.add_task(label, total=total)
            yield lambda n=1: bar.advance(job, n)
        return
    log = logging.getLogger("kvproj.progress")
    start, done, shown = time.perf_counter(), 0, 0
    suffix = f" {unit}" if unit else ""

    def advance(n: int = 1) -> None:
        nonlocal done, shown
        done += n
        if done - shown >= max(total // 10, 1) or done == total:
            shown = done
            elapsed = time.perf_counter() - start
            rest = elapsed / done * (total - done)
            log.info("%s %d/%d%s, %.0f s elapsed, about %.0f s to go", label, done, total, suffix, elapsed, rest)

    yield advance
