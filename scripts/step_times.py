"""Step times, losses and events of a training run, read from its console log(s) (the progress lines of
`kvproj.callbacks.progress`), as a small JSON for docs/results/.

    python scripts/step_times.py LOG [LOG ...] --command "how the run was started" --json OUT

Several logs are one run resumed (`--ckpt_path last`): their progress lines are concatenated in order and the
training wall clock is the sum of each log's last `elapsed`. Lines read: `step N/M (..) | train/loss X | ... [| T tok/s] |
S s/step | elapsed H:MM:SS | ...`, the ridge start's INFO lines, preemption / loss-rise WARNING lines.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from datetime import timedelta
from pathlib import Path

from kvproj.atomic import atomic_write

_PROGRESS = re.compile(
    r"step (?P<step>\d+)/(?P<total>\d+) \([^)]*\) \| train/loss (?P<loss>[-+0-9.eE]+|nan|inf)"
    r".*?(?:\| (?P<tps>[0-9,]+) tok/s )?\| (?P<sps>[0-9.]+) s/step \| elapsed (?P<elapsed>\d+:\d\d:\d\d)"
)


def _seconds(hms: str) -> int:
    h, m, s = (int(x) for x in hms.split(":"))
    return 3600 * h + 60 * m + s


def read_logs(paths: list[Path]) -> dict:
    progress, ridge, events, wall = [], [], [], 0
    for path in paths:
        last_elapsed = 0
        # progress bars rewrite one line with carriage returns: split on both
        for line in re.split(r"[\r\n]+", path.read_text(errors="replace")):
            if m := _PROGRESS.search(line):
                progress.append(
                    {
                        "step": int(m["step"]),
                        "train_loss": float(m["loss"]),
                        "s_per_step": float(m["sps"]),
                        # real (unpadded) tokens per step: the line's tokens/s times its seconds per step
                        "tokens_per_step": round(int(m["tps"].replace(",", "")) * float(m["sps"]))
                        if m["tps"]
                        else None,
                        "elapsed": m["elapsed"],
                        "log": path.name,
                    }
                )
                last_elapsed = _seconds(m["elapsed"])
            elif "ridge start:" in line:
                ridge.append(line[line.index("INFO") :] if "INFO" in line else line.strip())
            elif "WARNING" in line and ("preempted" in line or "loss" in line):
                events.append(line.strip())
        wall += last_elapsed
    if not progress:
        raise SystemExit(
            f"no progress lines ('step N/M ... s/step | elapsed ...') in {', '.join(map(str, paths))}"
        )
    # the first line of each log (after a start or resume) includes warm-up: each entry names its log
    rates = [p["s_per_step"] for p in progress]
    tokens = [p["tokens_per_step"] for p in progress if p["tokens_per_step"] is not None]
    return {
        "logs": [str(p) for p in paths],
        "steps": f"{progress[0]['step']} - {progress[-1]['step']}",
        "training_wall_clock": str(timedelta(seconds=wall)),  # the progress lines' format
        "s_per_step_min": min(rates),
        "s_per_step_median": statistics.median(rates),
        "s_per_step_max": max(rates),
        # the work per step, to tell a slower host from a heavier recipe when comparing runs
        "tokens_per_step_median": statistics.median(tokens) if tokens else None,
        "events": events,
        "ridge": ridge,
        "progress": progress,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("logs", nargs="+", type=Path, help="console log(s) of one run, in order")
    parser.add_argument("--command", required=True, help="the command that made the logs (kept in the JSON)")
    parser.add_argument("--json", type=Path, required=True, help="where to write the JSON")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.logs if not p.is_file()]
    if missing:
        parser.error(f"logs: no such file: {', '.join(missing)}")
    if args.json.exists() and not args.overwrite:
        parser.error(f"--json: {args.json} exists; pass --overwrite to replace it")
    out = {"command": args.command, **read_logs(args.logs)}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.json, json.dumps(out, indent=1) + "\n")  # a killed run leaves no half file
    print(
        f"{out['steps']}: {out['s_per_step_min']} - {out['s_per_step_max']} s/step "
        f"(median {out['s_per_step_median']}), training {out['training_wall_clock']}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
