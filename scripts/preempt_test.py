#!/usr/bin/env python
"""Fault injection against an uninterrupted reference run: final weights must be bitwise equal.

Random kills (SIGTERM, SIGKILL, SIGKILL in the middle of a checkpoint write), resuming with --ckpt_path last
after each:

    python scripts/preempt_test.py --config configs/smoke.yaml --kills 5 --seed 0

Fault matrix: every kill point (mid-step, step end, mid-save, mid-validation, mid-export, right after a resume)
x signal (TERM, INT, USR1 as preemption signals, KILL), each cell with settings that change the checkpoint path
(periodic by steps, or by steps and by minutes, keep_checkpoints 1 or 3, facts-eval callback on or off). One line per cell:
exit code, last.ckpt after the kill (stale? corrupt?), signal-to-exit time, final weights bitwise equal to the
reference with the same settings, -vN files, periodic files over keep, temp leftovers. Exit 1 on any failure.

    python scripts/preempt_test.py --matrix --seed 0 --seed 1 --json docs/results/preempt_matrix.json

Signal-to-exit latency (SIGTERM from outside at a random moment of training; median of N):

    python scripts/preempt_test.py --latency 5
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kvproj.callbacks.checkpointing import periodic_files
from kvproj.callbacks.faults import POINTS

ROOT = Path(__file__).resolve().parent.parent
SIGNALS = ("TERM", "INT", "USR1", "KILL")
PREEMPTION_SIGNALS = "[SIGTERM,SIGINT,SIGUSR1]"
FAULT_LINE = re.compile(r"kvproj-fault: (\w+)@(\w+) at step (\d+), t=([\d.]+)")


def fit(
    config: str, root: Path, extra: list[str], fault: str | None, resume: bool, checkout: Path = ROOT
) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "KVPROJ_LOG": "WARNING", "PYTHONPATH": str(checkout)}
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
    started = time.time()
    proc = subprocess.run(cmd, cwd=checkout, env=env, capture_output=True, text=True, timeout=900)
    proc.ended = time.time()  # for signal-to-exit times
    proc.started = started
    return proc


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def last_state(root: Path, run: str) -> dict:
    return load(root / "checkpoints" / run / "last.ckpt")


def run_name(config: str) -> str:
    import yaml

    return yaml.safe_load(Path(config).read_text())["run"]["name"]


def tensors_equal(a, b) -> bool:
    """Bitwise equality of nested checkpoint states (tensors, dicts, lists, plain values)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(tensors_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(tensors_equal(x, y) for x, y in zip(a, b))
    return a == b


# --------------------------------------------------------------------------------------------- random kills
def random_kills(args) -> int:
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
            proc = fit(args.config, root, extra, f"{step}:{kind}", resume=resumes > 0)
            expected = 143 if kind == "TERM" else -9
            if kind == "SAVEKILL" and proc.returncode == 0:
                expected = 0  # no checkpoint write at or after this step (the run ended first)
            if proc.returncode != expected:
                sys.stderr.write(proc.stderr[-4000:])
                print(f"kill at step {step} ({kind}): expected exit {expected}, got {proc.returncode}")
                return 1
            last = root / "checkpoints" / run / "last.ckpt"
            resumed_from = last_state(root, run)["global_step"] if last.exists() else 0
            redone += max(step - resumed_from, 0)
            resumes += 1
        final = fit(args.config, root, extra, None, resume=True)
        if final.returncode != 0:
            sys.stderr.write(final.stderr[-4000:])
            print(f"final resume failed with exit {final.returncode}")
            return 1
        got = last_state(root, run)
        equal = tensors_equal(reference["state_dict"], got["state_dict"])
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


# --------------------------------------------------------------------------------------------- the matrix
@dataclass(frozen=True)
class Settings:
    by: str  # "steps" or "minutes"
    keep: int
    facts: bool

    @property
    def name(self) -> str:
        return f"{self.by}-keep{self.keep}-facts_{'on' if self.facts else 'off'}"

    def args(self, every: int) -> list[str]:
        out = ["--run.keep_checkpoints", str(self.keep), "--run.checkpoint_every_n_steps", str(every)]
        if self.by == "minutes":  # also last.ckpt by the clock every ~0.1 s: at nearly every step
            out += ["--run.checkpoint_every_minutes", "0.002"]
        if not self.facts:
            out += ["--trainer.callbacks", "[]"]
        return out


SETTINGS = [
    Settings(by, keep, facts) for by, keep, facts in itertools.product(("steps", "minutes"), (1, 3), (True, False))
]


@dataclass
class Cell:
    seed: int
    point: str
    signal: str
    settings: Settings
    step: int  # the fault's STEP (for "resume": the step of the preemption before the resumed run)
    result: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"seed={self.seed} {self.point:>8}/{self.signal:<4} {self.settings.name:<26}"


def plan_cells(seed: int, args) -> list[Cell]:
    rng = random.Random(seed)
    cells = []
    vals = list(range(args.val_every, args.max_steps - 1, args.val_every))  # validation after these steps
    for i, (point, sig) in enumerate(itertools.product(POINTS, SIGNALS)):
        settings = SETTINGS[(i + 3 * seed) % len(SETTINGS)]
        if point in ("step", "mid_step"):
            step = rng.randint(2, args.max_steps - 2)
        elif point == "save":
            multiples = list(range(args.every, args.max_steps - 2, args.every))
            step = rng.choice(multiples) if settings.by == "steps" else rng.randint(2, args.max_steps - 4)
        elif point in ("val", "export"):
            step = rng.randint(1, vals[-1])
        else:  # resume: preempted at `step` first, then the fault strikes at the first batch of the resumed run
            step = rng.randint(2, args.max_steps - 4)
        cells.append(Cell(seed, point, sig, settings, step))
    return cells


def expected_last(cell: Cell, struck_at: int, every: int) -> tuple[int, int]:
    """Range of last.ckpt's global_step right after the fault run (inclusive)."""
    if cell.signal != "KILL":
        # preemption: acted on at the end of the step that was running (step, mid_step) or of the next one
        at = struck_at if cell.point in ("step", "mid_step") else struck_at + 1
        return at, at
    if cell.point == "resume":
        return cell.step, cell.step
    if cell.settings.by == "minutes":
        return 0, struck_at  # saved by the clock: at most the step reached
    # by steps: the newest periodic save that completed before the kill
    if cell.point in ("step", "mid_step", "save"):  # that step's save had not happened yet, or was being written
        return (struck_at - 1) // every * every, (struck_at - 1) // every * every
    return struck_at // every * every, struck_at // every * every  # val / export: after that step's save


def inspect_folder(folder: Path, keep: int) -> dict:
    names = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    periodic = sorted(periodic_files(folder))
    return {
        "v_files": [n for n in names if re.search(r"-v\d+\.ckpt$", n)],
        "periodic": len(periodic),
        "periodic_steps": periodic,
        "periodic_over_keep": max(len(periodic) - keep, 0),
        "leftovers": [n for n in names if n.startswith(".")],
    }


def run_cell(cell: Cell, args, work: Path, reference: dict, run: str) -> dict:
    root = work / f"seed{cell.seed}-{cell.point}-{cell.signal}"
    shutil.rmtree(root, ignore_errors=True)
    extra = common_args(args, cell.seed) + cell.settings.args(args.every)
    folder = root / "checkpoints" / run
    res = {"seed": cell.seed, "point": cell.point, "signal": cell.signal, "settings": cell.settings.name}
    problems = []
    resume = False
    if cell.point == "resume":
        res["before"] = f"{cell.step}:TERM"  # the preemption whose resumed run the fault strikes
        prep = fit(args.config, root, extra, res["before"], resume=False)
        if prep.returncode != 143:
            return {**res, "ok": False, "problems": [f"preparing run exited {prep.returncode}"]}
        resume = True
    fault = f"{0 if cell.point == 'resume' else cell.step}:{cell.signal}@{cell.point}"
    proc = fit(args.config, root, extra, fault, resume=resume)
    res["fault"] = fault
    res["exit"] = proc.returncode
    expected_exit = -9 if cell.signal == "KILL" else 143
    struck = FAULT_LINE.search(proc.stderr)
    if struck is None:
        problems.append(f"fault {fault} never struck (exit {proc.returncode})")
    else:
        struck_at = int(struck.group(3))
        res["struck_at"] = struck_at
        res["signal_to_exit_s"] = round(proc.ended - float(struck.group(4)), 3)
        if proc.returncode != expected_exit:
            problems.append(f"exit {proc.returncode}, expected {expected_exit}")
        lo, hi = expected_last(cell, struck_at, args.every)
        last = folder / "last.ckpt"
        if last.exists():
            try:
                state = load(last)
                res["last_step"] = state["global_step"]
                if not all(torch.isfinite(v).all() for v in state["state_dict"].values()):
                    problems.append("last.ckpt not finite")
            except Exception as err:  # noqa: BLE001 - a corrupt last.ckpt is what we look for
                problems.append(f"last.ckpt corrupt: {str(err).splitlines()[0]}")
                res["corrupt_last"] = True
        else:
            res["last_step"] = 0 if lo == 0 else None
        if res.get("last_step") is not None and not lo <= res["last_step"] <= hi:
            problems.append(f"stale last.ckpt: step {res['last_step']}, expected {lo}..{hi}")
            res["stale_last"] = True
        newer = inspect_folder(folder, cell.settings.keep)["periodic_steps"]
        if res.get("last_step") is not None and newer and max(newer) > res["last_step"]:
            problems.append(f"stale last.ckpt: step {res['last_step']} but step={max(newer)}.ckpt exists")
            res["stale_last"] = True
    final = fit(args.config, root, extra, None, resume=True)
    res["final_exit"] = final.returncode
    if final.returncode != 0:
        problems.append(f"final resume exited {final.returncode}: {final.stderr.strip().splitlines()[-1:]}")
    else:
        got = last_state(root, run)
        res["final_step"] = got["global_step"]
        same = got["global_step"] == reference["global_step"]
        same = same and tensors_equal(got["state_dict"], reference["state_dict"])
        same = same and tensors_equal(got["optimizer_states"], reference["optimizer_states"])
        res["bitwise_equal"] = bool(same)
        if not same:
            problems.append("final weights/optimizer differ from the uninterrupted run")
        export = folder / "projector" / "projector.safetensors"
        if not export.is_file():
            problems.append("no projector export after the final run")
    files = inspect_folder(folder, cell.settings.keep)
    res.update(files)
    if files["v_files"]:
        problems.append(f"-vN files: {files['v_files']}")
    if files["periodic_over_keep"]:
        problems.append(f"{files['periodic']} periodic files, keep {cell.settings.keep}")
    if files["leftovers"]:
        problems.append(f"leftovers: {files['leftovers']}")
    res["ok"] = not problems
    res["problems"] = problems
    if not args.keep_outputs:
        shutil.rmtree(root, ignore_errors=True)
    return res


def common_args(args, seed: int) -> list[str]:
    return [
        "--seed_everything", str(seed),
        "--trainer.max_steps", str(args.max_steps),
        "--trainer.val_check_interval", str(args.val_every),
        "--trainer.deterministic", "true",
        "--run.preemption_signals", PREEMPTION_SIGNALS,
    ]  # fmt: skip


def matrix(args) -> int:
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="kvproj-matrix-"))
    run = run_name(args.config)
    seeds = args.seed or [0]
    cells = [c for s in seeds for c in plan_cells(s, args)]
    if args.cells:
        wanted = set(args.cells.split(","))
        cells = [c for c in cells if f"{c.point}/{c.signal}" in wanted]
    if args.settings:
        cells = [Cell(c.seed, c.point, c.signal, Settings(*_parse_settings(args.settings)), c.step) for c in cells]
        cells = [replace_step(c, args) for c in cells]
    references: dict[tuple[int, str], dict] = {}
    results, started = [], time.time()
    try:
        for cell in cells:
            key = (cell.seed, cell.settings.name)
            if key not in references:
                ref_root = work / f"reference-seed{cell.seed}-{cell.settings.name}"
                shutil.rmtree(ref_root, ignore_errors=True)
                extra = common_args(args, cell.seed) + cell.settings.args(args.every)
                proc = fit(args.config, ref_root, extra, None, resume=False)
                if proc.returncode != 0:
                    sys.stderr.write(proc.stderr[-4000:])
                    print(f"reference run {key} failed with exit {proc.returncode}")
                    return 1
                references[key] = last_state(ref_root, run)
                shutil.rmtree(ref_root, ignore_errors=True)
            res = run_cell(cell, args, work, references[key], run)
            results.append(res)
            timing = f"exit {res['signal_to_exit_s']:.2f}s" if "signal_to_exit_s" in res else "exit -"
            print(
                f"{cell.label} {res.get('fault', ''):<16} rc={res.get('exit')!s:>4} last={res.get('last_step')!s:>3} "
                f"{timing} final={res.get('final_step')} bitwise={'EQUAL' if res.get('bitwise_equal') else 'NO'} "
                f"v_files={len(res.get('v_files', []))} periodic={res.get('periodic')}/{cell.settings.keep} "
                f"{'OK' if res['ok'] else 'FAIL: ' + '; '.join(res['problems'])}",
                flush=True,
            )
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    failed = [r for r in results if not r["ok"]]
    kills = len(results)
    latencies = [r["signal_to_exit_s"] for r in results if r["signal"] != "KILL" and "signal_to_exit_s" in r]
    summary = {
        "cells": kills,
        "seeds": seeds,
        "failed": len(failed),
        "bitwise_equal": sum(bool(r.get("bitwise_equal")) for r in results),
        "stale_last": sum(bool(r.get("stale_last")) for r in results),
        "corrupt_last": sum(bool(r.get("corrupt_last")) for r in results),
        "v_files": sum(len(r.get("v_files", [])) for r in results),
        "periodic_over_keep": sum(r.get("periodic_over_keep", 0) for r in results),
        "preemption_signal_to_exit_s": {
            "median": round(statistics.median(latencies), 3) if latencies else None,
            "max": max(latencies) if latencies else None,
        },
        "wall_minutes": round((time.time() - started) / 60, 1),
    }
    print(
        f"matrix: {kills} cells ({len(seeds)} seed(s)), {summary['bitwise_equal']} bitwise equal, "
        f"{summary['stale_last']} stale last, {summary['corrupt_last']} corrupt last, {summary['v_files']} -v files, "
        f"{summary['periodic_over_keep']} periodic over keep; preemption signal-to-exit median "
        f"{summary['preemption_signal_to_exit_s']['median']} s; {len(failed)} failed"
    )
    if args.json:
        out = {
            "command": "python scripts/preempt_test.py " + " ".join(args.argv),
            "settings": {
                "config": args.config,
                "max_steps": args.max_steps,
                "every": args.every,
                "val_every": args.val_every,
                "preemption_signals": PREEMPTION_SIGNALS,
            },  # fmt: skip
            "summary": summary,
            "cells": results,
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 1 if failed or not results else 0


def _parse_settings(text: str) -> tuple[str, int, bool]:
    m = re.fullmatch(r"(steps|minutes)-keep(\d+)-facts_(on|off)", text)
    if not m:
        raise SystemExit(f"--settings: got {text!r}; e.g. steps-keep1-facts_off or minutes-keep3-facts_on")
    return m.group(1), int(m.group(2)), m.group(3) == "on"


def replace_step(cell: Cell, args) -> Cell:
    """A forced settings change may need another kill step (mid-save by steps strikes at a periodic step)."""
    if cell.point == "save" and cell.settings.by == "steps" and cell.step % args.every:
        cell.step = max(args.every, cell.step // args.every * args.every)
    return cell


# --------------------------------------------------------------------------------------------- latency
def latency(args) -> int:
    """SIGTERM from outside at a random moment of training; seconds until the process has exited."""
    checkout = Path(args.checkout).resolve()
    rng = random.Random(args.seed[0] if args.seed else 0)
    times = []
    for rep in range(args.latency):
        work = Path(tempfile.mkdtemp(prefix="kvproj-latency-"))
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "KVPROJ_LOG": "INFO", "PYTHONPATH": str(checkout)}
        env.pop("KVPROJ_FAULT", None)
        cmd = [sys.executable, "-m", "kvproj", "fit", "--config", args.config, "--trainer.default_root_dir",
               str(work), "--trainer.max_steps", "100000"]  # fmt: skip
        proc = subprocess.Popen(
            cmd, cwd=checkout, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
        )
        for line in proc.stderr:
            if "training stream starts" in line:
                break
        time.sleep(rng.uniform(2.0, 6.0))
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.stderr.read()
        code = proc.wait()
        times.append(time.monotonic() - sent)
        print(f"rep {rep}: exit {code}, signal-to-exit {times[-1]:.2f} s", flush=True)
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"signal-to-exit: median {statistics.median(times):.2f} s, max {max(times):.2f} s over {len(times)} runs"
    )
    if args.json:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=checkout, capture_output=True, text=True)
        record = {
            "command": "python scripts/preempt_test.py " + " ".join(args.argv),
            "checkout_commit": commit.stdout.strip() or None,
            "config": args.config,
            "signal_to_exit_s": [round(t, 3) for t in times],
            "median_s": round(statistics.median(times), 3),
            "max_s": round(max(times), 3),
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/smoke.yaml")
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--seed", type=int, action="append", help="random seed (repeat it in --matrix mode)")
    parser.add_argument("--max_steps", type=int, default=None, help="steps of each run (40; --matrix: 20)")
    parser.add_argument("--every", type=int, default=None, help="periodic checkpoint interval (7; --matrix: 5)")
    parser.add_argument("--workdir", help="keep outputs here (default: a temporary folder, removed)")
    parser.add_argument("--matrix", action="store_true", help="run the fault matrix")
    parser.add_argument("--val_every", type=int, default=6, help="--matrix: validation every N steps")
    parser.add_argument("--cells", help="--matrix: only these POINT/SIGNAL cells, e.g. save/KILL,val/USR1")
    parser.add_argument(
        "--settings", help="--matrix: force one setting for all cells, e.g. minutes-keep1-facts_off"
    )
    parser.add_argument("--json", help="--matrix / --latency: write the results here")
    parser.add_argument("--keep_outputs", action="store_true", help="--matrix: keep each cell's folders")
    parser.add_argument("--latency", type=int, default=0, metavar="N", help="measure signal-to-exit N times")
    parser.add_argument("--checkout", default=str(ROOT), help="--latency: the kvproj checkout to run")
    args = parser.parse_args(argv)
    args.argv = argv
    if args.latency:
        return latency(args)
    if args.matrix:
        args.max_steps = args.max_steps or 20
        args.every = args.every or 5
        if args.max_steps < 2 * args.val_every + 2:
            parser.error(f"--max_steps must be >= {2 * args.val_every + 2} with --val_every {args.val_every}")
        return matrix(args)
    args.max_steps = args.max_steps or 40
    args.every = args.every or 7
    args.seed = (args.seed or [0])[0]
    if args.kills < 0 or args.kills >= args.max_steps:
        parser.error(f"--kills must be in [0, {args.max_steps - 1}], got {args.kills}")
    return random_kills(args)


if __name__ == "__main__":
    raise SystemExit(main())
