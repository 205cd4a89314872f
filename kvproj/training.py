"""LightningCLI for kvproj: fixed per-run folders (checkpoints/<run>/, lightning_logs/<run>/) so that
`--ckpt_path last` always finds the run's latest checkpoint and TensorBoard curves continue across resumes."""

from __future__ import annotations

import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger

from kvproj.atomic import recover
from kvproj.callbacks.checkpointing import (
    LAST,
    AtomicCheckpointIO,
    FiniteStateGuard,
    LossRiseWatch,
    RunCheckpoint,
    periodic_files,
    run_checkpoint,
    validate_checkpoint,
)
from kvproj.callbacks.export import ProjectorExport
from kvproj.callbacks.faults import fault_callbacks
from kvproj.callbacks.memory import MemoryWatch
from kvproj.callbacks.preemption import PreemptionHandler
from kvproj.callbacks.progress import progress_callbacks
from kvproj.data.datamodule import KVPairDataModule
from kvproj.data.facts import FactsConfig
from kvproj.data.passages import PassagesConfig
from kvproj.module import KVProjectorModule
from kvproj.pair import FrozenPair

log = logging.getLogger(__name__)
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
MATMUL_PRECISIONS = ("highest", "high", "medium")


@dataclass
class RunOptions:
    """Where a run's outputs go and how often it checkpoints.

    Args:
        name: Run name: outputs go to checkpoints/<name>/ and lightning_logs/<name>/ under trainer.default_root_dir.
        checkpoint_every_n_steps: Save a periodic checkpoint (and last.ckpt) every N optimizer steps.
        checkpoint_every_minutes: Also save last.ckpt every M minutes of wall-clock time (None: off).
        keep_checkpoints: Keep the newest N periodic checkpoints (last.ckpt is always kept).
        preemption_signals: Signals that mean "preempted": finish the step, checkpoint, exit 143.
        overwrite: Start from scratch even if this run already has outputs: its checkpoint and log folders are
            moved aside to <name>.old-<timestamp> first.
        matmul_precision: float32 matrix products on the GPU (`torch.set_float32_matmul_precision`): "highest"
            (true float32, the default: same numbers as the CPU path up to kernel order), "high" (TF32 tensor cores,
            several times faster on Ampere and later, ~1e-3 relative error per product) or "medium" (bf16).
    """

    name: str = "default"
    checkpoint_every_n_steps: int = 100
    checkpoint_every_minutes: float | None = None
    keep_checkpoints: int = 3
    preemption_signals: tuple[str, ...] = ("SIGTERM",)
    overwrite: bool = False
    matmul_precision: str = "highest"


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


def has_checkpoints(ckpt_dir: Path) -> bool:
    return (ckpt_dir / LAST).exists() or bool(periodic_files(ckpt_dir))


def move_aside(folders: list[Path]) -> list[tuple[Path, Path]]:
    """Rename each non-empty folder to <name>.old-<timestamp> (one timestamp for all); return the moves made."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    moves = []
    for folder in folders:
        if not folder.is_dir() or not any(folder.iterdir()):
            continue
        target, n = folder.with_name(f"{folder.name}.old-{stamp}"), 1
        while target.exists():
            n += 1
            target = folder.with_name(f"{folder.name}.old-{stamp}-{n}")
        os.replace(folder, target)
        moves.append((folder, target))
    return moves


class KVProjCLI(LightningCLI):
    def __init__(self, args: list[str] | None = None, **kwargs) -> None:
        super().__init__(
            KVProjectorModule,
            KVPairDataModule,
            args=args,
            save_config_kwargs={"overwrite": True},
            # `--trainer.max_step 5` is an error, not a guess at `max_steps`; usage and errors name
            # `python -m kvproj [options] fit`, not sys.argv[0] (kvproj/__main__.py)
            parser_kwargs={
                "prog": "python -m kvproj",
                "allow_abbrev": False,
                **{c: {"allow_abbrev": False} for c in self.subcommands()},
            },
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
        precision = config["run"]["matmul_precision"]
        if precision not in MATMUL_PRECISIONS:  # before the models load: it sets how they compute
            raise ValueError(f"run.matmul_precision: got {precision!r}; valid: {', '.join(MATMUL_PRECISIONS)}")
        torch.set_float32_matmul_precision(precision)
        if precision != "highest":
            log.info("float32 matrix products at precision %r (run.matmul_precision)", precision)
        for name, options in (("facts", FactsConfig), ("passages", PassagesConfig)):
            # the datasets' own checks (data.passages.lexicon, ...), before the models load rather than after
            value = config["data"].get(name)
            if value is not None and not isinstance(value, options):
                options(**(value.as_dict() if hasattr(value, "as_dict") else dict(value)))
        mode, protocol = config["model"]["mode"], config["data"]["protocol"]
        if mode == "fuse" and protocol != "shared":
            raise ValueError(
                f"model.mode 'fuse' needs data.protocol 'shared' (the target must read the context), got {protocol!r}"
            )
        if mode == "fuse" and config["model"].get("ridge_init"):
            # the ridge map predicts the target's own cache; fuse adds the projection TO that cache (a residual that
            # starts at zero), so a ridge start would count the target's cache twice
            raise ValueError(
                "model.ridge_init: got true with model.mode 'fuse'; valid: false (a fuse projector starts at zero "
                "and learns a residual on the target's own cache; the ridge start fits that cache itself)"
            )

    def before_fit(self) -> None:
        ckpt = self.config["fit"].get("ckpt_path")
        ckpt_dir = Path(run_checkpoint(self.trainer).dirpath)
        existing = ckpt_dir / LAST
        if ckpt is None and has_checkpoints(ckpt_dir):  # (with run.overwrite they were moved aside already)
            raise FileExistsError(
                f"run {ckpt_dir.name!r} already has checkpoints ({existing if existing.exists() else ckpt_dir}); "
                "resume it with --ckpt_path last, start a new run with --run.name NAME, or replace it with "
                "--run.overwrite true"
            )
        if ckpt == "last":
            ckpt = existing if existing.exists() else None
            if ckpt is None:
                log.warning(
                    "--ckpt_path last: no last.ckpt in %s, so training starts from step 0 (a new run). If you "
                    "meant to resume, check --run.name and --trainer.default_root_dir",
                    ckpt_dir,
                )
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
        minutes = run.checkpoint_every_minutes
        if minutes is not None and not minutes > 0:
            raise ValueError(f"run.checkpoint_every_minutes: must be > 0 (or null: off), got {minutes}")
        trainer_config = self._get(self.config_init, "trainer", default={})
        root = Path(trainer_config.get("default_root_dir") or os.getcwd())
        ckpt_dir, log_dir = run_dirs(root, name)
        if run.overwrite and self.subcommand == "fit":
            self._overwrite(ckpt_dir, log_dir, config.get("ckpt_path"))
        for folder, setting in ((ckpt_dir, "trainer.default_root_dir"), (log_dir, "trainer.default_root_dir")):
            ensure_writable(folder, setting)
        recover(ckpt_dir)  # what a kill -9 in the middle of a checkpoint save or projector export left
        kwargs["default_root_dir"] = str(root)
        if trainer_config.get("logger") in (None, True):
            kwargs["logger"] = TensorBoardLogger(save_dir=str(root / "lightning_logs"), name=name, version="")
        user_callbacks = list(trainer_config.get("callbacks") or [])
        kwargs["callbacks"] = [
            *fault_callbacks(),  # test hook, only with KVPROJ_FAULT; before the handler (same step end)
            # first: on preemption the checkpoint is written before any other step-end work (e.g. facts eval)
            PreemptionHandler(tuple(run.preemption_signals)),
            *user_callbacks,
            FiniteStateGuard(),
            LossRiseWatch(),  # warns once when the loss climbs: a divergence the NaN check never sees
            MemoryWatch(),
            ProjectorExport(ckpt_dir / "projector"),
            LearningRateMonitor(logging_interval="step"),
            RunCheckpoint(ckpt_dir, every_n_steps=every, keep=keep, every_minutes=minutes),  # the one writer
            *progress_callbacks(trainer_config),  # tokens/s; steps/max_steps, loss, ETA (plain lines off a TTY)
        ]
        plugins = trainer_config.get("plugins") or []
        plugins = plugins if isinstance(plugins, list) else [plugins]
        kwargs["plugins"] = [*plugins, AtomicCheckpointIO()]
        return super().instantiate_trainer(**kwargs)

    @staticmethod
    def _overwrite(ckpt_dir: Path, log_dir: Path, ckpt_path: str | None) -> None:
        """run.overwrite: move the old run's checkpoints and logs aside, so the new run starts clean."""
        if ckpt_path == "last":
            raise ValueError(
                "run.overwrite true with --ckpt_path last: one starts the run afresh, the other resumes it; "
                "drop one of them"
            )
        if ckpt_path and ckpt_dir.resolve() in Path(ckpt_path).resolve().parents:
            raise ValueError(
                f"run.overwrite true with --ckpt_path {ckpt_path}: that file is in the run folder being moved "
                f"aside ({ckpt_dir}); copy it elsewhere first or drop run.overwrite"
            )
        for old, new in move_aside([ckpt_dir, log_dir]):
            log.warning("run.overwrite: moved the old run's %s aside to %s", old, new)
