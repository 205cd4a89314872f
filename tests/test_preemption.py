"""Preemption and bad input: exit codes, exact resume, atomic checkpoints, clear errors (tiny models, CLI)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, fit, state, step_of


def test_sigterm_finishes_the_step_checkpoints_and_exits_143(tmp_path):
    proc = fit(tmp_path, fault="6:TERM")
    assert proc.returncode == 143, proc.stderr[-2000:]
    last = tmp_path / "checkpoints" / "smoke" / "last.ckpt"
    assert step_of(last) == 6  # the step in flight was finished and saved, not lost
    resumed = fit(tmp_path, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert step_of(last) == 12


def test_a_users_own_model_checkpoint_does_not_take_the_runs_place(tmp_path):
    """A ModelCheckpoint of the user's, listed before kvproj's own: preemption, `--ckpt_path last` and the check
    for an existing run still use the run's folder, checkpoints/<run>/."""
    mine = tmp_path / "mine"
    user = ["--trainer.callbacks", json.dumps([{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                                "init_args": {"dirpath": str(mine)}}])]  # fmt: skip
    proc = fit(tmp_path, *user, fault="3:TERM")
    assert proc.returncode == 143, proc.stderr[-2000:]
    last = tmp_path / "checkpoints" / "smoke" / "last.ckpt"
    assert step_of(last) == 3
    assert not (mine / "last.ckpt").exists()
    again = fit(tmp_path, *user)  # neither resumed nor overwritten: refused
    assert again.returncode == 1 and "already has checkpoints" in again.stderr, again.stderr[-2000:]
    resumed = fit(tmp_path, *user, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "starts from step 0" not in resumed.stderr
    assert step_of(last) == 12


def test_kill_during_checkpoint_write_never_corrupts_last(tmp_path):
    proc = fit(tmp_path, fault="6:SAVEKILL")
    assert proc.returncode == -9
    folder = tmp_path / "checkpoints" / "smoke"
    assert step_of(folder / "last.ckpt") == 4  # the previous complete checkpoint, intact
    resumed = fit(tmp_path, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert step_of(folder / "last.ckpt") == 12
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_preempt_script_resumes_bitwise_equal():
    proc = subprocess.run(
        [sys.executable, "scripts/preempt_test.py", "--config", "configs/smoke.yaml", "--kills", "3", "--seed", "4",
         "--max_steps", "16", "--every", "5"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "weights=EQUAL" in proc.stdout and "resumes=3" in proc.stdout


@pytest.mark.faults
def test_fault_matrix_slice():
    """Two cells of `preempt_test.py --matrix` (seeded): SIGKILL in the middle of a checkpoint write, and SIGUSR1 as
    a configured preemption signal in the middle of a projector export; by steps and by minutes, keep 1."""
    proc = subprocess.run(
        [sys.executable, "scripts/preempt_test.py", "--matrix", "--seed", "0", "--max_steps", "14",
         "--cells", "save/KILL,export/USR1", "--settings", "minutes-keep1-facts_off"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "2 cells (1 seed(s)), 2 bitwise equal, 0 stale last, 0 corrupt last, 0 -v files" in proc.stdout


def test_truncated_and_foreign_checkpoints_are_refused(tmp_path):
    assert fit(tmp_path / "a").returncode == 0
    last = tmp_path / "a" / "checkpoints" / "smoke" / "last.ckpt"
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    proc = fit(tmp_path / "b", "--ckpt_path", str(truncated))
    assert proc.returncode == 1
    assert "truncated.ckpt: cannot be read as a checkpoint" in proc.stderr
    proc = fit(tmp_path / "c", "--ckpt_path", str(last), "--pair.target.name", "tiny:qwen2")
    assert proc.returncode == 1
    assert "made for tiny:llama -> tiny:gemma3_text" in proc.stderr and "target geometry" in proc.stderr


def test_bad_inputs_get_messages_and_nonzero_exits(tmp_path):
    proc = fit(tmp_path, "--model.no_such_key", "1")
    assert proc.returncode == 2 and "no_such_key" in proc.stderr
    proc = fit(tmp_path, "--pair.source.name", "tiny:bert")
    assert proc.returncode == 1 and "unknown tiny family" in proc.stderr
    proc = fit(tmp_path, "--model.projector.layer_map", "[0, 0, 0, 9]")
    assert proc.returncode == 1 and "target layer 3 maps to source layer 9" in proc.stderr
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    proc = fit(tmp_path, "--data.dataset", "text", "--data.text.files", f"[{empty}]")
    assert proc.returncode == 1 and "data.text: no texts found" in proc.stderr
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the output folder should be")
    proc = fit(blocker)
    assert proc.returncode == 1 and "trainer.default_root_dir: cannot write to" in proc.stderr


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    proc = fit(tmp_path, fault="5:NAN")  # the projector diverges after step 5
    assert proc.returncode == 1
    assert "FloatingPointError: train/loss is nan at step 5" in proc.stderr
    assert "the last good checkpoint is kept" in proc.stderr
    last = state(tmp_path / "checkpoints" / "smoke" / "last.ckpt")
    assert last["global_step"] == 4  # the periodic checkpoint before the divergence, untouched
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())
