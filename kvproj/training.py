"""LightningCLI for kvproj: fixed per-run folders (checkpoints/<run>/, lightning_logs/<run>/) so that
`--ckpt_path last` always finds the run's latest checkpoint and TensorBoard curves continue across resumes."""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger

from kvproj.callbacks.checkpointing import AtomicCheckpointIO, FinalCheckpoint, validate_checkpoint
from kvproj.callbacks.export import ProjectorExport
from kvproj.callbacks.memory import MemoryWatch
from kvproj.callbacks.preemption import FaultInjection, PreemptionHandler
from kvproj.callbacks.progress import progress_callbacks
from kvproj.data.datamodule import KVPairDataModule
from kvproj.module import KVProjectorModule
from kvproj.pair import FrozenPair

_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class RunOptions:
    """Where a run's outputs go and how often it checkpoints.

    Args:
        name: Run name: outputs go to checkpoints/<name>/ and lightning_logs/<name>/ under trainer.default_root_dir.
        checkpoint_every_n_steps: Save a periodic checkpoint (and last.ckpt) every N optimizer steps.
        checkpoint_every_minutes: Also save last.ckpt every M minutes of wall-clock time (None: off).
        keep_checkpoints: Keep the newest N periodic checkpoints (last.ckpt is always kept).
        preemption_signals: Signals that mean "preempted": finish the step, checkpoint, exit 143.
        overwrite: Start from scratch even if this run already has checkpoints (they are replaced as training goes).
    """

    name: str = "default"
    checkpoint_every_n_steps: int = 100
    checkpoint_every_minutes: float | None = None
    keep_checkpoints: int = 3
    preemption_signals: tuple[str, ...] = ("SIGTERM",)
    overwrite: bool = False


def ensure_writable(folder: Path, setting: str) -> None:
    """Fail before any training if an output folder cannot be written (read-only mount, full disk)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as err:
        raise OSError(
            f"{setting}: cannot write to {folder} ({err.strerror or err}); choose a writable folder with "
            f"--{setting}=PATH or free space there"
        ) from err


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
        # the frozen models: built once from `pair:` and handed to both the datamodule and the module
        parser.add_class_arguments(FrozenPair, "pair")
        parser.link_arguments("pair", "data.pair", apply_on="instantiate")
        parser.link_arguments("pair", "model.pair", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        mode, protocol = config["model"]["mode"], config["data"]["protocol"]
        if mode == "fuse" and protocol != "shared":
            raise ValueError(
                f"model.mode 'fuse' needs data.protocol 'shared' (the target must read the context), got {protocol!r}"
            )

    def before_fit(self) -> None:
        ckpt = self.config["fit"].get("ckpt_path")
        existing = Path(self.trainer.checkpoint_callback.dirpath) / "last.ckpt"
        run = self.config["fit"]["run"]
        overwrite = run.overwrite if isinstance(run, RunOptions) else run.get("overwrite", False)
        if ckpt is None and existing.exists() and not overwrite:
            raise FileExistsError(
                f"run {existing.parent.name!r} already has checkpoints ({existing}); resume it with --ckpt_path last, "
                "start a new run with --run.name NAME, or replace it with --run.overwrite true"
            )
        if ckpt == "last":
            ckpt_dir = Path(self.trainer.checkpoint_callback.dirpath)
            ckpt = ckpt_dir / "last.ckpt" if (ckpt_dir / "last.ckpt").exists() else None
        if ckpt and str(ckpt) not in ("best", "hpc", "registry"):
            validate_checkpoint(ckpt, self.model)

    def instantiate_trainer(self, **kwargs):
        config = self.config[self.subcommand] if self.subcommand else self.config
        run = config["run"]
        run = run if isinstance(run, RunOptions) else RunOptions(**dict(run))
        name, every, keep = run.name, run.checkpoint_every_n_steps, run.keep_checkpoints
        if keep < 1:
            raise ValueError(f"run.keep_checkpoints: must be >= 1, got {keep}")
        if not _RUN_NAME.match(name or ""):
            raise ValueError(f"run.name: got {name!r}; use letters, digits, '.', '_' or '-' (it names folders)")
        if every < 1:
            raise ValueError(f"run.checkpoint_every_n_steps: must be >= 1, got {every}")
        trainer_config = self._get(self.config_init, "trainer", default={})
        root = Path(trainer_config.get("default_root_dir") or os.getcwd())
        ckpt_dir, log_dir = run_dirs(root, name)
        for folder, setting in ((ckpt_dir, "trainer.default_root_dir"), (log_dir, "trainer.default_root_dir")):
            ensure_writable(folder, setting)
        for stale in ckpt_dir.glob(".*.ckpt.*.tmp"):  # left by a kill -9 mid-save; never a usable checkpoint
            stale.unlink(missing_ok=True)
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
            FaultInjection(ckpt_dir),  # before the handler: an injected signal is acted on at the same step end
            PreemptionHandler(ckpt_dir, tuple(run.preemption_signals)),
            MemoryWatch(),
            ProjectorExport(ckpt_dir / "projector"),
            LearningRateMonitor(logging_interval="step"),
            *progress_callbacks(trainer_config),  # tokens/s; steps/max_steps, loss, ETA (plain lines off a TTY)
        ]
        if run.checkpoint_every_minutes:
            callbacks.append(
                ModelCheckpoint(
                    dirpath=str(ckpt_dir),
                    filename="time-{step:07d}",
                    train_time_interval=timedelta(minutes=run.checkpoint_every_minutes),
                    save_top_k=1,
                    monitor="step",
                    mode="max",
                    save_last=True,
                )
            )
        kwargs["callbacks"] = callbacks
        plugins = trainer_config.get("plugins") or []
        plugins = plugins if isinstance(plugins, list) else [plugins]
        kwargs["plugins"] = [*plugins, AtomicCheckpointIO()]
        return super().instantiate_trainer(**kwargs)
