"""`plan --study FILE`: the cost of a whole study (runs x pairs x repeats x hours x rate) per provider and GPU,
the cheapest option that fits each run, tier totals against their caps; and spot instances with preemptions.

A study file (YAML; example: configs/studies/proposal.yaml):

    budget_cap: 150                 # USD, the whole study
    spot: {preemption_per_hour: 0.1, price_factor: 0.5}   # optional: also cost each run on spot instances
    tiers:
      - name: "$25"
        cap: 25
        runs:
          - name: pilot
            config: smollm2-gemma3  # a training config (file or shipped name): planned, fits checked
            pairs: 1                # source/target pairs run with it
            repeats: 3              # seeds
            steps: 2000             # optional: replaces trainer.max_steps
            hours: 0.5              # optional: stated hours per run (else planned from the estimate)
            gpu: rtx-3090           # optional: the GPU (else every GPU that fits is costed)
            provider: vastai        # optional, with gpu: the provider
            rate: 0.30              # optional, with gpu: the hourly rate used instead of hardware.yaml's
          - name: evaluation suite  # an experiment without a config: hours (and gpu or rate) must be stated
            hours: 0.2
            rate: 0.44
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from kvproj.plan.estimate import (
    GIB,
    Estimate,
    check_gpus,
    estimate,
    fits,
    hardware,
    prices,
    run_hours,
    step_seconds,
)

RUN_KEYS = {"name", "config", "pairs", "repeats", "steps", "hours", "gpu", "provider", "rate", "note"}
SPOT_DEFAULTS = {
    "preemption_per_hour": 0.1,  # kills per hour of spot time (a stated assumption: providers publish none)
    "price_factor": 0.5,  # spot price / on-demand price
    "restart_minutes": 5.0,  # a new instance, the container, loading the models, before training resumes
    "checkpoint_write_gbs": 0.5,  # disk write speed for a checkpoint (GB/s), plus one second per write
    "notice": False,  # a kill with notice (SIGTERM): kvproj checkpoints at once, one step is redone
}


# ------------------------------------------------------------------------------------------------ spot
def spot_hours(
    work_h: float, interval_h: float, write_h: float, rate: float, restart_h: float, lost_h: float | None = None
) -> float:
    """Expected wall hours for `work_h` hours of training on an instance killed `rate` times per hour (Poisson),
    checkpointing every `interval_h` hours of work at `write_h` hours per checkpoint, `restart_h` hours to come
    back after a kill. A kill redoes the work since the last checkpoint: on average half a segment
    ((interval + write) / 2, at most the interval), or `lost_h` when given (a kill with notice).
    E = W (1 + c/tau) / (1 - rate (lost + R)): each hour of wall time brings `rate` kills, each costing lost + R.
    Infinite when kills come faster than progress."""
    lost = (interval_h + write_h) / 2 if lost_h is None else lost_h
    denominator = 1 - rate * (lost + restart_h)
    if denominator <= 0:
        return math.inf
    return work_h * (1 + write_h / interval_h) / denominator


def best_interval(work_h: float, write_h: float, rate: float, restart_h: float) -> tuple[float, float]:
    """(checkpoint interval in hours that minimises `spot_hours`, its expected hours): a golden-section search on
    log(interval), between write_h / 100 and the run's own length; Young's first-order answer is
    sqrt(2 write / rate)."""
    if rate <= 0:
        return math.inf, work_h

    def f(log_tau: float) -> float:
        return spot_hours(work_h, math.exp(log_tau), write_h, rate, restart_h)

    # no longer than the run: an interval past its end means one checkpoint, at the end
    lo, hi = math.log(max(write_h, 1e-9) / 100), math.log(max(work_h, 1e-6))
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(200):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if f(a) <= f(b):
            hi = b
        else:
            lo = a
    tau = math.exp((lo + hi) / 2)
    return tau, spot_hours(work_h, tau, write_h, rate, restart_h)


def spot_plan(
    est: Estimate, seconds: float, hours: float, on_demand: float, spot: dict[str, Any]
) -> dict[str, Any]:
    """Expected spot cost of one run: its checkpoint interval (run.checkpoint_every_n_steps steps, or
    checkpoint_every_minutes if sooner), the cost per checkpoint, the restart time; and the interval that
    minimises the expected cost."""
    s = {**SPOT_DEFAULTS, **spot}
    settings = est.settings
    interval_h = settings.checkpoint_every_n_steps * seconds / 3600
    if settings.checkpoint_every_minutes:
        interval_h = min(interval_h, settings.checkpoint_every_minutes / 60)
    interval_h = min(interval_h, hours) if hours > 0 else interval_h
    ckpt_bytes = 4 * est.terms["projector_parameters"]  # weights + AdamW's two moments, float32 (+ small state)
    write_h = (ckpt_bytes / (s["checkpoint_write_gbs"] * 1e9) + 1.0) / 3600
    restart_h = s["restart_minutes"] / 60
    rate = s["preemption_per_hour"]
    lost = seconds / 3600 if s["notice"] else None
    expected = spot_hours(hours, interval_h, write_h, rate, restart_h, lost)
    tau, best = best_interval(hours, write_h, rate, restart_h)
    price = on_demand * s["price_factor"]
    best_steps = max(1, round(tau * 3600 / seconds)) if math.isfinite(tau) else None
    return {
        "preemption_per_hour": rate,
        "price_per_hour": round(price, 4),
        "checkpoint_interval_steps": settings.checkpoint_every_n_steps,
        "checkpoint_interval_hours": round(interval_h, 4),
        "checkpoint_write_seconds": round(write_h * 3600, 2),
        "restart_minutes": s["restart_minutes"],
        "expected_hours": round(expected, 4) if math.isfinite(expected) else None,
        "expected_cost": round(expected * price, 4) if math.isfinite(expected) else None,
        "best_interval_steps": best_steps,
        "best_interval_hours": round(tau, 4) if math.isfinite(tau) else None,
        "best_expected_hours": round(best, 4) if math.isfinite(best) else None,
        "best_expected_cost": round(best * price, 4) if math.isfinite(best) else None,
        "young_interval_hours": round(math.sqrt(2 * write_h / rate), 4) if rate > 0 else None,
    }


# ------------------------------------------------------------------------------------------------ study
def _flatten(runs: list[Any]) -> list[Any]:
    out: list[Any] = []
    for run in runs:
        out.extend(_flatten(run) if isinstance(run, list) else [run])
    return out


def read_study(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    with open(path) as f:
        study = yaml.safe_load(f) or {}
    tiers = study.get("tiers")
    if not isinstance(tiers, list) or not tiers:
        raise ValueError(f"--study {path}: needs a list `tiers:` (each with a name and runs)")
    for tier in tiers:
        tier["runs"] = _flatten(tier.get("runs") or [])  # lists of runs may be YAML anchors of lists
        for run in tier["runs"]:
            if not isinstance(run, dict):
                raise ValueError(
                    f"--study {path}: tier {tier.get('name')!r}: a run must be a mapping, got {run!r}"
                )
            unknown = set(run) - RUN_KEYS
            if unknown:
                raise ValueError(
                    f"--study {path}: tier {tier.get('name')!r}, run {run.get('name')!r}: unknown keys "
                    f"{', '.join(sorted(unknown))}; valid: {', '.join(sorted(RUN_KEYS))}"
                )
            if "config" not in run and "hours" not in run:
                raise ValueError(
                    f"--study {path}: tier {tier.get('name')!r}, run {run.get('name')!r}: give a config to plan, or "
                    "the hours it takes"
                )
            if "config" not in run and "rate" not in run and "gpu" not in run:
                raise ValueError(
                    f"--study {path}: tier {tier.get('name')!r}, run {run.get('name')!r}: without a config, state "
                    "its rate (USD/h) or its gpu"
                )
            if "gpu" in run:
                check_gpus([run["gpu"]])
            if "provider" in run and run["provider"] not in hardware()["providers"]:
                raise ValueError(
                    f"--study {path}: run {run.get('name')!r}: provider {run['provider']!r}: unknown; valid: "
                    f"{', '.join(hardware()['providers'])}"
                )
    return study


def plan_study(
    study: dict[str, Any], resolve_config, efficiency: float | None = None, gpus: list[str] | None = None
) -> dict[str, Any]:
    """Every run of every tier costed on every (provider, GPU) that has a price and fits it; the cheapest option
    (or the run's stated gpu / provider / rate) is what the tier totals count."""
    from kvproj.plan.estimate import read_settings

    gpus = gpus or list(hardware()["gpus"])
    spot = study.get("spot")
    cache: dict[tuple, Any] = {}
    tiers_out = []
    grand = 0.0
    for tier in study["tiers"]:
        rows = []
        total = 0.0
        for run in tier.get("runs") or []:
            units = int(run.get("pairs", 1)) * int(run.get("repeats", 1))
            row: dict[str, Any] = {"name": run.get("name", run.get("config")), "units": units, "options": []}
            est = None
            if "config" in run:
                key = (run["config"], run.get("steps"))
                if key not in cache:
                    settings = read_settings(resolve_config(run["config"]))
                    if "steps" in run:
                        settings = settings.replace(max_steps=int(run["steps"]))
                    cache[key] = estimate(settings)
                est = cache[key]
                row["config"] = est.settings.config
                row["steps"] = est.settings.max_steps
                row["memory_gib"] = round(est.total / GIB, 2)
            for gpu in gpus if "gpu" not in run else [run["gpu"]]:
                fit = fits(est, gpu) if est is not None else {"fits": True}
                if est is not None:
                    seconds = step_seconds(est, hardware()["gpus"][gpu], efficiency)["seconds"]
                    hours = float(run["hours"]) if "hours" in run else run_hours(est, seconds)
                else:
                    seconds, hours = None, float(run["hours"])
                offers = prices(gpu)
                if "provider" in run:
                    offers = [o for o in offers if o["provider"] == run["provider"]]
                if "rate" in run:
                    offers = [
                        {
                            "provider": run.get("provider", "stated"),
                            "per_hour": float(run["rate"]),
                            "low": float(run["rate"]),
                            "high": float(run["rate"]),
                            "date": "stated in the study",
                        }
                    ]
                for offer in offers:
                    option = {
                        "gpu": gpu,
                        "provider": offer["provider"],
                        "fits": fit["fits"],
                        "hours_per_run": round(hours, 4),
                        "rate": offer["per_hour"],
                        "cost": round(units * hours * offer["per_hour"], 4),
                        "cost_range": [
                            round(units * hours * offer["low"], 4),
                            round(units * hours * offer["high"], 4),
                        ],
                        "hours_stated": "hours" in run,
                    }
                    if spot and est is not None and seconds and offer["per_hour"] > 0:
                        sp = spot_plan(est, seconds, hours, offer["per_hour"], spot)
                        option["spot_cost"] = (
                            None if sp["expected_cost"] is None else round(units * sp["expected_cost"], 4)
                        )
                        option["spot"] = sp
                    row["options"].append(option)
            if est is not None and ("hours" in run or "gpu" in run or "rate" in run):
                row["planned_cheapest"] = _planned_cheapest(est, units, efficiency)
            fitting = [o for o in row["options"] if o["fits"]]
            if not fitting:
                row["chosen"] = None
            else:
                row["chosen"] = min(fitting, key=lambda o: (o["cost"], o["hours_per_run"]))
                total += row["chosen"]["cost"]
            rows.append(row)
        cap = tier.get("cap")
        tiers_out.append(
            {
                "name": tier.get("name"),
                "cap": cap,
                "total": round(total, 4),
                "runs": rows,
                "within_cap": None if cap is None else total <= float(cap) + 1e-9,
            }
        )
        grand = max(grand, total) if study.get("alternatives") else grand + total
    cap = study.get("budget_cap")
    return {
        "tiers": tiers_out,
        "total": round(grand, 4),
        "budget_cap": cap,
        "total_is": "the largest tier (tiers are alternative budgets)"
        if study.get("alternatives")
        else "the sum of the tiers",
        "within_budget": None if cap is None else grand <= float(cap) + 1e-9,
        "prices": {p: {"date": str(v["date"]), "source": v["source"]} for p, v in hardware()["providers"].items()},
    }


def _planned_cheapest(est: Estimate, units: int, efficiency: float | None) -> dict[str, Any] | None:
    """The cheapest priced (provider, GPU) that fits the run, at plan's estimated hours (not the stated ones)."""
    best = None
    for gpu, spec in hardware()["gpus"].items():
        if not fits(est, gpu)["fits"]:
            continue
        hours = run_hours(est, step_seconds(est, spec, efficiency)["seconds"])
        for offer in prices(gpu):
            if offer["per_hour"] <= 0:
                continue  # an owned card: no hourly price to compare
            cost = units * hours * offer["per_hour"]
            if best is None or cost < best["cost"]:
                best = {
                    "gpu": gpu,
                    "provider": offer["provider"],
                    "rate": offer["per_hour"],
                    "hours_per_run": round(hours, 4),
                    "cost": round(cost, 4),
                }
    return best


def study_markdown(result: dict[str, Any]) -> str:
    """The budget table: per tier, each run's cheapest fitting option and its cost on every provider x GPU."""
    lines = []
    for tier in result["tiers"]:
        cap = f" (cap ${tier['cap']})" if tier["cap"] is not None else ""
        lines += [
            f"### {tier['name']}{cap}: ${tier['total']:.2f}"
            + (" - over the cap" if tier["within_cap"] is False else ""),
            "",
        ]
        columns = sorted({(o["provider"], o["gpu"]) for r in tier["runs"] for o in r["options"]})
        lines.append(
            "| run | runs | cheapest that fits | hours/run | cost | "
            + " | ".join(f"{p} {g}" for p, g in columns)
            + " | planned cheapest (estimated hours) |"
        )
        lines.append("|" + " --- |" * (6 + len(columns)))
        for r in tier["runs"]:
            c = r["chosen"]
            chosen = f"{c['provider']} {c['gpu']} ${c['rate']:.2f}/h" if c else "nothing fits"
            cells = []
            for p, g in columns:
                o = next((o for o in r["options"] if (o["provider"], o["gpu"]) == (p, g)), None)
                cells.append("" if o is None else ("does not fit" if not o["fits"] else f"${o['cost']:.2f}"))
            hours = f"{c['hours_per_run']:.2f}" if c else ""
            cost = f"${c['cost']:.2f}" if c else ""
            p = r.get("planned_cheapest")
            planned = f"{p['provider']} {p['gpu']}: {p['hours_per_run']:.2f} h, ${p['cost']:.2f}" if p else ""
            lines.append(
                f"| {r['name']} | {r['units']} | {chosen} | {hours} | {cost} | "
                + " | ".join(cells)
                + f" | {planned} |"
            )
        lines.append("")
    if result["budget_cap"] is not None:
        verdict = "within" if result["within_budget"] else "OVER"
        lines.append(
            f"**Total ({result['total_is']}) ${result['total']:.2f} against the ${result['budget_cap']} cap: "
            f"{verdict}.**"
        )
    else:
        lines.append(f"**Total ${result['total']:.2f}.**")
    dates = ", ".join(f"{p} {v['date']}" for p, v in result["prices"].items())
    lines.append(f"\nPrices: kvproj/plan/hardware.yaml ({dates}); stated hours and rates are the study file's.")
    return "\n".join(lines) + "\n"
