"""Checkpoints you can trust (issue 9): loading runs no code, a non-finite state never replaces a good one, one
last.ckpt and no -vN files, --run.overwrite starts clean, settings checked at the boundary, a preempted run
exits promptly. Each test drives the CLI as users run it (tiny models, seconds)."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import pytest
import torch
from conftest import fit, state

from kvproj.callbacks.checkpointing import AtomicCheckpointIO, CheckpointError, load_checkpoint_file
from kvproj.callbacks.faults import FaultInjection, FaultyCheckpointIO


def folder(root: Path, run: str = "smoke") -> Path:
    return root / "checkpoints" / run


def versioned(root: Path) -> list[str]:
    return sorted(p.name for p in folder(root).iterdir() if re.search(r"-v\d+\.ckpt$", p.name))


def periodic(root: Path) -> list[str]:
    return sorted(p.name for p in folder(root).glob("step=*.ckpt"))


class Evil:
    """Unpickling this runs `touch MARKER`: what a malicious checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"state_dict": {}, "global_step": 1, "kvproj": {}, "payload": Evil(marker)}, path)
    return path


# ---------------------------------------------------------------------------------------------- 1: no code on load
def test_evil_checkpoint_runs_no_code_in_any_loader(tmp_path):
    marker = tmp_path / "MARKER"
    evil = _evil_checkpoint(tmp_path / "evil.ckpt", marker)
    with pytest.raises(CheckpointError, match="evil.ckpt.*refus"):
        load_checkpoint_file(evil)
    with pytest.raises(CheckpointError, match="evil.ckpt.*refus"):
        AtomicCheckpointIO().load_checkpoint(evil)  # what Lightning's trainer.fit(ckpt_path=...) calls
    assert not marker.exists()


def test_evil_ckpt_path_is_refused_with_a_message(tmp_path):
    marker = tmp_path / "MARKER"
    evil = _evil_checkpoint(tmp_path / "evil.ckpt", marker)
    proc = fit(tmp_path / "a", "--ckpt_path", str(evil))
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "evil.ckpt" in proc.stderr and "refus" in proc.stderr
    assert not marker.exists()
    # the same file planted as a run's last.ckpt, reached through --ckpt_path last
    folder(tmp_path / "b").mkdir(parents=True)
    _evil_checkpoint(folder(tmp_path / "b") / "last.ckpt", marker)
    proc = fit(tmp_path / "b", "--ckpt_path", "last")
    assert proc.returncode == 1 and "last.ckpt" in proc.stderr and "refus" in proc.stderr
    assert not marker.exists()


# ------------------------------------------------------------------------------------ 4: never save a NaN state
def test_non_finite_weights_are_never_saved_over_a_good_checkpoint(tmp_path):
    proc = fit(tmp_path, fault="8:NAN")  # the projector diverges at step 8, a checkpoint step
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = state(folder(tmp_path) / "last.ckpt")
    assert last["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())
    assert periodic(tmp_path) == ["step=0000004.ckpt"]
    err = " ".join(proc.stderr.split())
    assert "is not finite (NaN/inf) at step 8" in err and "step 4" in err and "last.ckpt" in err
    assert "32-true" not in err  # already the precision: advice that does not apply is not given


# ------------------------------------------------------------------------------- 5: one last.ckpt, no -vN files
def test_preempt_before_first_periodic_save_then_resume_then_finish(tmp_path):
    assert fit(tmp_path, fault="3:TERM").returncode == 143
    assert state(folder(tmp_path) / "last.ckpt")["global_step"] == 3
    proc = fit(tmp_path, "--ckpt_path", "last")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert versioned(tmp_path) == []
    assert state(folder(tmp_path) / "last.ckpt")["global_step"] == 12
    assert periodic(tmp_path) == ["step=0000008.ckpt", "step=0000012.ckpt"]  # keep_checkpoints: 2


def test_run_shorter_than_the_interval_then_resumed_with_more_steps(tmp_path):
    proc = fit(tmp_path, "--trainer.max_steps", "3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert versioned(tmp_path) == [] and state(folder(tmp_path) / "last.ckpt")["global_step"] == 3
    proc = fit(tmp_path, "--trainer.max_steps", "10", "--ckpt_path", "last")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert versioned(tmp_path) == [] and state(folder(tmp_path) / "last.ckpt")["global_step"] == 10


def test_time_based_checkpoints_write_the_same_last(tmp_path):
    proc = fit(tmp_path, "--run.checkpoint_every_minutes", "0.0001", fault="7:KILL")
    assert proc.returncode == -9
    assert state(folder(tmp_path) / "last.ckpt")["global_step"] >= 5  # saved by time, not only every 4 steps
    proc = fit(tmp_path, "--run.checkpoint_every_minutes", "0.0001", "--ckpt_path", "last")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert versioned(tmp_path) == [] and state(folder(tmp_path) / "last.ckpt")["global_step"] == 12
    assert len(periodic(tmp_path)) <= 2


def test_kill_between_periodic_and_last_leaves_no_extra_files(tmp_path):
    proc = fit(tmp_path, fault="8:KILL@save")  # dies writing the first checkpoint file of step 8
    assert proc.returncode == -9
    assert state(folder(tmp_path) / "last.ckpt")["global_step"] == 4
    proc = fit(tmp_path, "--ckpt_path", "last")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert versioned(tmp_path) == [] and periodic(tmp_path) == ["step=0000008.ckpt", "step=0000012.ckpt"]
    assert not [p for p in folder(tmp_path).iterdir() if p.name.startswith(".")]


# --------------------------------------------------------------------------- 6: overwrite moves the old run aside
def test_overwrite_moves_the_old_run_aside(tmp_path):
    assert fit(tmp_path).returncode == 0
    proc = fit(tmp_path, "--run.overwrite", "true", "--trainer.max_steps", "5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert periodic(tmp_path) == ["step=0000004.ckpt"]
    assert state(folder(tmp_path) / "last.ckpt")["global_step"] == 5
    old_ckpts = list((tmp_path / "checkpoints").glob("smoke.old-*"))
    old_logs = list((tmp_path / "lightning_logs").glob("smoke.old-*"))
    assert len(old_ckpts) == 1 and len(old_logs) == 1
    assert state(old_ckpts[0] / "last.ckpt")["global_step"] == 12
    assert len(list((tmp_path / "lightning_logs" / "smoke").glob("events.out.tfevents.*"))) == 1
    assert "moved" in proc.stderr and str(old_ckpts[0]) in " ".join(proc.stderr.split())
    proc = fit(tmp_path, "--run.overwrite", "true", "--ckpt_path", "last")
    assert proc.returncode == 1 and "run.overwrite" in proc.stderr and "--ckpt_path last" in proc.stderr


# --------------------------------------------------------------------- 7: --ckpt_path last that finds nothing
def test_ckpt_path_last_with_nothing_there_says_so(tmp_path):
    proc = fit(tmp_path, "--ckpt_path", "last", "--trainer.max_steps", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    err = " ".join(proc.stderr.split())
    assert f"no last.ckpt in {folder(tmp_path).resolve()}" in err and "starts from step 0" in err


# ------------------------------------------------------------------------------ 8: settings checked at the boundary
@pytest.mark.parametrize("value", ["0", "-5"])
def test_max_context_tokens_must_be_positive(tmp_path, value):
    proc = fit(tmp_path, f"--data.max_context_tokens={value}")
    assert proc.returncode == 1
    assert f"data.max_context_tokens: must be >= 1, got {value}" in proc.stderr


def test_abbreviated_settings_are_not_guessed(tmp_path):
    proc = fit(tmp_path, "--trainer.max_step", "5")
    assert proc.returncode == 2
    assert "trainer.max_step" in proc.stderr
    assert not (folder(tmp_path) / "last.ckpt").exists()


def test_full_disk_during_a_save_names_the_file_and_what_to_do(tmp_path):
    proc = fit(tmp_path, fault="8:ENOSPC@save")
    assert proc.returncode == 1, proc.stderr[-3000:]
    err = " ".join(proc.stderr.split())
    assert "No space left on device" in err and str(folder(tmp_path).resolve()) in err
    assert "trainer.default_root_dir" in err and "free space" in err
    assert state(folder(tmp_path) / "last.ckpt")["global_step"] == 4
    assert not [p for p in folder(tmp_path).iterdir() if p.name.endswith(".tmp")]


def test_full_disk_during_a_save_keeps_the_previous_file(tmp_path):
    path = tmp_path / "last.ckpt"
    io = FaultyCheckpointIO(FaultInjection("2:ENOSPC@save"))  # the first write at global_step >= 2 fails
    io.save_checkpoint({"global_step": 1}, path)
    with pytest.raises(OSError, match=r"last\.ckpt.*No space left on device.*free space") as err:
        io.save_checkpoint({"global_step": 2}, path)
    assert err.value.errno == errno.ENOSPC
    assert "the previous last.ckpt is kept" in str(err.value)
    assert torch.load(path, weights_only=True) == {"global_step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temp file left


# ------------------------------------------------------------------------------------ 10: prompt preemption exit
def test_preempted_run_skips_validation_eval_and_export(tmp_path):
    # step 15 is a facts-eval step in the smoke config; the stop would also trigger a validation pass
    proc = fit(tmp_path, "--trainer.max_steps", "20", fault="15:TERM", callbacks=True)
    assert proc.returncode == 143, proc.stderr[-3000:]
    assert state(folder(tmp_path) / "last.ckpt")["global_step"] == 15
    assert "facts eval" not in proc.stderr
    assert not (folder(tmp_path) / "projector").exists()  # exported at the end of a later run instead
    proc = fit(tmp_path, "--trainer.max_steps", "20", "--ckpt_path", "last")
    assert proc.returncode == 0 and (folder(tmp_path) / "projector" / "projector.safetensors").is_file()


def test_loss_rise_watch_warns_once_on_a_finite_divergence():
    import random

    from kvproj.callbacks.checkpointing import LossRiseWatch

    rng = random.Random(0)
    # the shape of SmolLM2 -> Qwen-Coder-0.5B at lr 1e-3: ~3 from the ridge start, then 5 - 7.5
    losses = [3.0 + rng.uniform(-1.2, 1.2) for _ in range(20)] + [6.5 + rng.uniform(-1.4, 1.0) for _ in range(60)]
    watch = LossRiseWatch()
    messages = [m for step, loss in enumerate(losses, 1) if (m := watch.observe(step, loss))]
    assert len(messages) == 1 and watch.warned
    assert re.search(r"mean 6\.\d+ over steps 21-40 against [23]\.\d+ over steps 1-20", messages[0])


@pytest.mark.parametrize(
    "losses",
    [
        [2.5 - i / 40 + random_noise for i, random_noise in enumerate([0.6, -0.6] * 100)],  # falling, noisy
        [0.3] * 20 + [0.55] * 40,  # 1.8x but only +0.25: small losses swing by that much
        [3.0] * 19 + [float("nan")] + [3.0] * 40,  # a non-finite loss is the NaN check's business, not this one's
    ],
)
def test_loss_rise_watch_stays_quiet_on_healthy_runs(losses):
    from kvproj.callbacks.checkpointing import LossRiseWatch

    watch = LossRiseWatch()
    assert not [m for step, loss in enumerate(losses, 1) if (m := watch.observe(step, loss))]


def test_loss_rise_watch_is_a_training_callback_that_names_the_learning_rate(caplog):
    import inspect
    from types import SimpleNamespace

    from kvproj.callbacks.checkpointing import LossRiseWatch
    from kvproj.training import KVProjCLI

    assert "LossRiseWatch()" in inspect.getsource(KVProjCLI.instantiate_trainer)  # fit installs it

    watch = LossRiseWatch()
    module = SimpleNamespace(hparams={"lr": 1e-3})
    with caplog.at_level("WARNING", logger="kvproj"):
        for step, loss in enumerate([3.0] * 20 + [7.0] * 20, 1):
            watch.on_train_batch_end(SimpleNamespace(global_step=step, precision="32-true"), module,
                                     {"loss": torch.tensor(loss)}, None, step)  # fmt: skip
    assert watch.warned and "lower model.lr (now 0.001)" in caplog.text and "steps 21-40" in caplog.text
