#!/usr/bin/env python
"""Fault injection: train a config once uninterrupted, then again while killing it K times at random steps (a mix
of SIGTERM, SIGKILL and SIGKILL in the middle of a checkpoint write), resuming with --ckpt_path last each time;
compare the final projector weights bitwise. Exit 0 only if they are equal.

    python scripts/preempt_test.py --config configs/smoke.yaml --kills 5 --seed 0
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def fit(config: str, root: Path, extra: list[str], fault: str | None, resume: bool) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "KVPROJ_LOG": "WARNING"}
    env.pop("KVPROJ_FAULT", None)
    if fault:
        env["KVPROJ_FAULT"] = fault
    cmd = [
        sys.executable,
        "-m",
        "kvproj",
        "fit",
        "--config",
        config,
        "--trainer.default_root_dir",
        str(root),
        *extra,
    ]
    if resume:
        cmd += ["--ckpt_path", "last"]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def last_state(root: Path, run: str) -> dict:
    return torch.load(root / "checkpoints" / run / "last.ckpt", map_location="cpu", weights_only=False)


def run_name(config: str) -> str:
    import yaml

    return yaml.safe_load(Path(config).read_text())["run"]["name"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/smoke.yaml")
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_steps", type=int, default=40, help="steps of each run (overrides the config)")
    parser.add_argument("--every", type=int, default=7, help="periodic checkpoint interval (steps)")
    parser.add_argument("--workdir", help="keep outputs here (default: a temporary folder, removed)")
    args = parser.parse_args(argv)
    if args.kills < 0 or args.kills >= args.max_steps:
        parser.error(f"--kills must be in [0, {args.max_steps - 1}], got {args.kills}")
    rng = random.Random(args.seed)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="kvproj-preempt-"))
    run = run_name(args.config)
    extra = ["--trainer.max_steps", str(args.max_steps), "--run.checkpoint_every_n_steps", str(args.every),
             "--trainer.deterministic", "true"]  # fmt: skip
    try:
        clean = fit(args.config, work / "clean", extra, None, resume=False)
        if clean.returncode != 0:
            sys.stderr.write(clean.stderr[-4000:])
            print(f"uninterrupted run failed with exit {clean.returncode}")
            return 1
        reference = last_state(work / "clean", run)

        root = work / "interrupted"
        kill_steps = sorted(rng.sample(range(1, args.max_steps), args.kills))
        kinds = [rng.choice(["TERM", "KILL", "SAVEKILL"]) for _ in kill_steps]
        resumes, redone, resumed_from = 0, 0, 0
        for step, kind in zip(kill_steps, kinds):
            started = resumed_from
            if step <= started:  # already past this step after a resume: kill at the next one
                step = started + 1
            proc = fit(
                args.config, root, extra, f"{step}:{kind}", resume=resumes > 0 or (root / "checkpoints").exists()
            )
            expected = 143 if kind == "TERM" else -9
            if proc.returncode != expected:
                sys.stderr.write(proc.stderr[-4000:])
                print(f"kill at step {step} ({kind}): expected exit {expected}, got {proc.returncode}")
                return 1
            last = root / "checkpoints" / run / "last.ckpt"
            resumed_from = last_state(root, run)["global_step"] if last.exists() else 0
            redone += step - resumed_from
            resumes += 1
        final = fit(args.config, root, extra, None, resume=True)
        if final.returncode != 0:
            sys.stderr.write(final.stderr[-4000:])
            print(f"final resume failed with exit {final.returncode}")
            return 1
        got = last_state(root, run)
        a, b = reference["state_dict"], got["state_dict"]
        equal = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        equal = equal and reference["global_step"] == got["global_step"]
        plan = ", ".join(f"{s}:{k}" for s, k in zip(kill_steps, kinds))
        print(
            f"kills={args.kills} ({plan}) resumes={resumes} steps_redone={redone} "
            f"final_step={got['global_step']} weights={'EQUAL' if equal else 'DIFFERENT'}"
        )
        return 0 if equal else 1
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
