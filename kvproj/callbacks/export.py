"""Write the self-describing projector folder (checkpoints/<run>/projector/) during and after training."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L

from kvproj.callbacks.preemption import preempted
from kvproj.projectors.io import save_projector

log = logging.getLogger(__name__)


class ProjectorExport(L.Callback):
    """Export after every validation during fit (a preempted run keeps a recent export) and at the end.

    Args:
        dirpath: Folder to write (replaced atomically).
    """

    def __init__(self, dirpath: str | Path) -> None:
        self.dirpath = Path(dirpath)

    def export(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        extra = {"global_step": trainer.global_step, "hparams": dict(module.hparams)}
        dm = getattr(trainer, "datamodule", None)
        if dm is not None:
            # what evaluation needs to read examples exactly as training did
            extra["data"] = {
                k: dm.hparams[k]
                for k in (
                    "answer_template",
                    "answer_end",
                    "answer_follow",
                    "max_context_tokens",
                    "protocol",
                    "lm_context_fraction",
                )
                if k in dm.hparams
            }
            extra["data"]["chat_template"] = module.pair.chat_template
            extra["data"]["question_template"] = module.pair.question_template
            extra["data"]["facts"] = {
                k: getattr(dm.facts_options, k) for k in dm.facts_options.__dataclass_fields__
            }
            extra["data"]["dataset"] = dm.dataset
            extra["data"]["passages"] = {
                k: getattr(dm.passages_options, k) for k in dm.passages_options.__dataclass_fields__
            }
        save_projector(
            self.dirpath,
            module.projector,
            module.pair.source.spec.to_dict(),
            module.pair.target.spec.to_dict(),
            extra,
        )

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self.export(trainer, module)

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if preempted(trainer):  # leave promptly; the run that finishes exports
            return
        self.export(trainer, module)
        log.info("projector exported to %s", self.dirpath)
