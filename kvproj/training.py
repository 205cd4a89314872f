"""LightningCLI for kvproj: fixed per-run folders (checkpoints/<run>/, lightning_logs/<run>/) so that
`--ckpt_path last` always finds the run's latest checkpoint and TensorBoard curves continue across resumes."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger

from kvproj.callbacks.checkpointing import AtomicCheckpointIO, FinalCheckpoint
from kvproj.callbacks.export import ProjectorExport
from kvproj.data.datamodule import KVPairDataModule
from kvproj.module import KVProjectorModule

_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class RunOptions:
    """Where a run's outputs go and how often it checkpoints.

    Args:
        name: Run name: outputs go to checkpoints/<name>/ and lightning_logs/<name>/ under trainer.default_root_dir.
        checkpoint_every_n_steps: Save a periodic checkpoint (and last.ckpt) every N optimizer steps.
        keep_checkpoints: Keep the newest N periodic checkpoints (last.ckpt is always kept).
    """

    name: str = "default"
    checkpoint_every_n_steps: int = 100
    keep_checkpoints: int = 3


def run_dirs(root: str | Path, name: str) -> tuple[Path, Path]:
    root = Path(root)
    return root / "checkpoints" / name, root / "lightning_logs" / name


class KVProjCLI(LightningCLI):
    def __init__(self, args: list[str] | None = None, **kwargs) -> None:
        super().__init__(
            KVProjectorModule,
            KVPairDataModule,
            args=args,
            save_config_kwargs={"overwrite": True},
            **kwargs,
        )

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_class_arguments(RunOptions, "run")
        parser.link_arguments("data.pair", "model.pair", apply_on="instantiate")

    def instantiate_trainer(self, **kwargs):
        config = self.config[self.subcommand] if self.subcommand else self.config
        run: RunOptions = config["run"]
        name = run.name if isinstance(run, RunOptions) else run["name"]
        every = run.checkpoint_every_n_steps if isinstance(run, RunOptions) else run["checkpoint_every_n_steps"]
        keep = run.keep_checkpoints if isinstance(run, RunOptions) else run["keep_checkpoints"]
        if not _RUN_NAME.match(name or ""):
            raise ValueError(f"run.name: got {name!r}; use letters, digits, '.', '_' or '-' (it names folders)")
        if every < 1:
            raise ValueError(f"run.checkpoint_every_n_steps: must be >= 1, got {every}")
        trainer_config = self._get(self.config_init, "trainer", default={})
        root = Path(trainer_config.get("default_root_dir") or os.getcwd())
        ckpt_dir, log_dir = run_dirs(root, name)
        kwargs["default_root_dir"] = str(root)
        if trainer_config.get("logger") in (None, True):
            kwargs["logger"] = TensorBoardLogger(save_dir=str(root / "lightning_logs"), name=name, version="")
        callbacks = list(trainer_config.get("callbacks") or [])
        callbacks += [
            ModelCheckpoint(
                dirpath=str(ckpt_dir),
                filename="step={step:07d}",
                auto_insert_metric_name=False,
                every_n_train_steps=every,
                save_top_k=keep,
                monitor="step",
                mode="max",
                save_last=True,
            ),
            FinalCheckpoint(ckpt_dir),
            ProjectorExport(ckpt_dir / "projector"),
            LearningRateMonitor(logging_interval="step"),
        ]
        kwargs["callbacks"] = callbacks
        plugins = trainer_config.get("plugins") or []
        plugins = plugins if isinstance(plugins, list) else [plugins]
        kwargs["plugins"] = [*plugins, AtomicCheckpointIO()]
        return super().instantiate_trainer(**kwargs)
