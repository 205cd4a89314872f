"""`plan --measure N`: run N real training steps of a config here (kvproj's own LightningCLI, in this process) and
measure peak memory and step time, to set against the estimate.

Peak memory: on CUDA, `torch.cuda.max_memory_allocated` over the run (everything of the run lives on the GPU:
weights, caches, projector, optimizer); on CPU, the process's peak resident set (VmHWM) during the steps minus
its resident set before the models were loaded (the high-water mark is reset after loading, so the transient of
reading the checkpoint files is not counted). Step time: from the moment the batch reaches the device (the frozen
forwards included) to the end of the optimizer step, the median over the steps after the first.
"""

from __future__ import annotations

import logging
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


def _status_kib(field: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    found = re.search(rf"^{field}:\s+(\d+)\s+kB", text, re.M)
    return int(found.group(1)) if found else None


def _reset_peak_rss() -> bool:
    """Reset the process's VmHWM to its current RSS (Linux >= 4.0); False where it cannot be done."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def calibrate_cpu(seconds: float = 1.0) -> dict[str, float]:
    """This machine's fp32 matmul rate and copy bandwidth with the current torch threads, measured (about a
    second): the 'GPU spec' of the CPU for the time model."""
    a, b = torch.randn(512, 1024), torch.randn(1024, 1024)
    torch.mm(a, b)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds / 2:
        torch.mm(a, b)
        n += 1
    flops = n * 2 * 512 * 1024 * 1024 / (time.perf_counter() - start)
    x = torch.empty(32 * 2**20 // 4)
    y = torch.empty_like(x)
    y.copy_(x)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds / 2:
        y.copy_(x)
        n += 1
    bandwidth = n * 2 * x.numel() * 4 / (time.perf_counter() - start)
    return {
        "fp32_tflops": flops / 1e12,
        "bf16_tflops": None,
        "fp16_tflops": None,
        "bandwidth_gbs": bandwidth / 1e9,
        "name": f"this CPU ({torch.get_num_threads()} threads, calibrated)",
    }


def _trim() -> None:
    """Free what Python and the C allocator hold unused, so that a later RSS baseline is not inflated."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _train(config: str, steps: int, device: str) -> dict[str, Any]:
    """One in-process training run of `steps` steps: step times and (CPU) resident-set readings."""
    import lightning as L

    from kvproj.training import KVProjCLI

    times: list[float] = []

    class StepClock(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - batch["step_started"])

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss_before = _status_kib("VmRSS")
    with tempfile.TemporaryDirectory(prefix="kvproj-plan-measure-") as tmp:
        args = [
            "--config", config,
            "--trainer.max_steps", str(steps),
            "--trainer.default_root_dir", tmp,
            "--trainer.accelerator", "gpu" if device == "cuda" else "cpu",
            "--trainer.limit_val_batches", "0",
            "--trainer.num_sanity_val_steps", "0",
            "--trainer.enable_progress_bar", "false",
            "--model.ridge_init", "false",
            "--run.checkpoint_every_n_steps", str(steps + 1000),
        ]  # fmt: skip
        started = time.perf_counter()
        cli = KVProjCLI(args=args, run=False)
        # the config's held-out generation checks are not training steps: they would add minutes of generation
        # (and their own memory) to what is measured
        from kvproj.callbacks.evaluation import FactsEvalCallback

        cli.trainer.callbacks[:] = [c for c in cli.trainer.callbacks if not isinstance(c, FactsEvalCallback)]
        cli.trainer.callbacks.append(StepClock())
        loaded_s = time.perf_counter() - started
        rss_loaded = _status_kib("VmRSS")
        reset = _reset_peak_rss()
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        peak_kib = _status_kib("VmHWM")
        out: dict[str, Any] = {"times": times, "load_seconds": loaded_s}
        if device == "cuda":
            out["peak_bytes"] = torch.cuda.max_memory_allocated()
            out["reserved_bytes"] = torch.cuda.max_memory_reserved()
        elif rss_before is None or peak_kib is None or rss_loaded is None or not reset:
            raise OSError("--measure on CPU reads /proc/self/status and resets /proc/self/clear_refs (Linux only)")
        else:
            out["peak_bytes"] = (peak_kib - rss_before) * 1024
            out["rss_after_load_bytes"] = (rss_loaded - rss_before) * 1024
    return out


def _preimport() -> None:
    """Import what a training run imports on its way (Lightning's trainer and TensorBoard logger, kvproj's
    training code), so that the resident-set baseline taken before loading the models already holds the code:
    the increase is then the run's data, not its modules."""
    import importlib

    for name in (
        "kvproj.training",
        "lightning.pytorch",
        "torch.utils.tensorboard",
        "tensorboardX",
        "kvproj.data.facts",
        "kvproj.data.passages",
        "kvproj.ridge",
    ):
        try:
            importlib.import_module(name)
        except ImportError:
            pass


def measure(config: str, steps: int, device: str) -> dict[str, Any]:
    """Train `steps` steps of `config` on `device` ("cpu" or "cuda") in a temporary folder, in this process; return
    the peak memory and step times. Ridge initialisation and validation are off (they run before / between steps).
    The code a run imports is imported before the baseline (the caller has also built both models' shapes, which
    imports their transformers modules)."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: CUDA is not available here; use --device cpu")
    _preimport()
    _trim()
    run = _train(config, steps, device)
    times = run["times"]
    out: dict[str, Any] = {
        "device": device,
        "steps": len(times),
        "load_seconds": round(run["load_seconds"], 2),
        "step_seconds": [round(t, 4) for t in times],
        "median_step_seconds": statistics.median(times[1:] or times),
        "peak_bytes": run["peak_bytes"],
        "note": "ridge init, validation and the config's generation checks off; median step time over the steps after the first",
    }
    if device == "cuda":
        out["reserved_bytes"] = run["reserved_bytes"]
        out["peak_measure"] = "torch.cuda.max_memory_allocated"
        out["gpu_name"] = torch.cuda.get_device_name(0)
    else:
        out["rss_after_load_bytes"] = run["rss_after_load_bytes"]
        out["peak_measure"] = "peak RSS during the steps (VmHWM, reset after loading) minus RSS before loading"
    return out
