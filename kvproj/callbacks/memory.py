"""Memory watch: peak GPU memory (allocated / reserved) or the process's peak RSS on CPU, to TensorBoard; on CUDA
out-of-memory, a message naming the settings to lower."""

from __future__ import annotations

import logging
import resource
import sys

import lightning as L
import torch

log = logging.getLogger(__name__)

OOM_ADVICE = (
    "CUDA ran out of memory. Lower data.batch_size (or raise trainer.accumulate_grad_batches to keep the effective "
    "batch), lower data.max_context_tokens, load the frozen models in 4-bit (pair.target.quantization: 4bit), or "
    "use trainer.precision bf16-mixed. The last periodic checkpoint is kept; resume with --ckpt_path last."
)


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


class MemoryWatch(L.Callback):
    """Args:
    every_n_steps: Log memory every N steps.
    """

    def __init__(self, every_n_steps: int = 10) -> None:
        self.every_n_steps = every_n_steps

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every_n_steps:
            return
        device = module.device
        if device.type == "cuda":
            module.log("memory/gpu_peak_allocated_mb", torch.cuda.max_memory_allocated(device) / 2**20)
            module.log("memory/gpu_peak_reserved_mb", torch.cuda.max_memory_reserved(device) / 2**20)
        module.log("memory/cpu_peak_rss_mb", peak_rss_mb())

    def on_exception(self, trainer, module, exception: BaseException) -> None:
        if isinstance(exception, torch.cuda.OutOfMemoryError):
            log.error("%s", OOM_ADVICE)
