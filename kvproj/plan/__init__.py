"""`python -m kvproj plan`: peak memory, step time and cloud cost of a run or a whole study, offline.

estimate.py (memory and time model), shapes.py (model tensors from configs, sequence lengths from the run's data),
measure.py (`--measure N`), study.py (`--study`, spot preemptions), hardware.yaml (GPUs, dated prices),
architectures.yaml (hub models' numbers). See docs/planning.md.
"""

from __future__ import annotations

import json as jsonlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("kvproj")

STUDIES = Path(__file__).resolve().parent.parent / "configs" / "studies"


def _resolve(value: str, option: str, folder: Path) -> Path:
    """A file, or the name of one shipped in `folder` ("default", "smoke.yaml")."""
    path = Path(value)
    if path.is_file():
        return path
    shipped = folder / f"{Path(value).name.removesuffix('.yaml')}.yaml"
    if shipped.is_file():
        return shipped
    names = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
    raise FileNotFoundError(f"{option} {value}: no such file, and no shipped one of that name ({names})")


def resolve_config(value: str) -> Path:
    from kvproj.cli import PACKAGED_CONFIGS

    return _resolve(value, "--config", PACKAGED_CONFIGS)


def _gib(n: float) -> float:
    return round(n / 2**30, 3)


def plan_run(
    config: str, gpus: list[str], efficiency: float | None, suggest: bool, spot: dict[str, Any] | None
) -> dict[str, Any]:
    from kvproj.plan.estimate import estimate, fits, hardware, prices, read_settings, run_hours, step_seconds
    from kvproj.plan.study import spot_plan

    settings = read_settings(resolve_config(config))
    est = estimate(settings, "cuda")
    hw = hardware()
    out: dict[str, Any] = {
        "config": settings.config,
        "run": settings.name,
        "source": {
            **est.source.summary(),
            "dtype": settings.source.dtype,
            "quantization": settings.source.quantization,
        },
        "target": {
            **est.target.summary(),
            "dtype": settings.target.dtype,
            "quantization": settings.target.quantization,
        },
        "projector": {
            "architecture": est.projector.architecture,
            "parameters": est.projector.parameters,
            "mode": settings.mode,
        },
        "batch_size": settings.batch_size,
        "precision": settings.precision,
        "compute_dtype": est.compute_dtype,
        "lengths": est.lengths.__dict__,
        "memory": {
            "estimated_for": "cuda",
            "total_gib": _gib(est.total),
            "total_bytes": est.total,
            "terms": {k: {"bytes": v, "gib": _gib(v), "what": est.notes[k]} for k, v in est.terms.items()},
        },
        "step": {
            "flops": est.flops,
            "traffic_bytes": est.traffic,
            "kernels": est.kernels,
            "tokens": round(est.tokens_per_step, 1),
        },
        "max_steps": settings.max_steps,
        "assumptions": hw["assumptions"],
        "gpus": {},
    }
    for gpu in gpus:
        spec = hw["gpus"][gpu]
        time = step_seconds(est, spec, efficiency)
        hours = run_hours(est, time["seconds"])
        entry: dict[str, Any] = {
            **fits(est, gpu),
            "step_seconds": round(time["seconds"], 4),
            "bound": time["bound"],
            "tokens_per_second": round(est.tokens_per_step / time["seconds"], 1),
            "hours": round(hours, 6),
            "cost": [
                {
                    **p,
                    "cost": round(hours * p["per_hour"], 3),
                    "cost_range": [round(hours * p["low"], 3), round(hours * p["high"], 3)],
                }
                for p in prices(gpu)
            ],
        }
        if spot is not None:
            entry["spot"] = [
                spot_plan(est, time["seconds"], hours, p["per_hour"], spot)
                for p in prices(gpu)
                if p["per_hour"] > 0
            ]
        if suggest and not entry["fits"]:
            from kvproj.plan.estimate import suggestions

            entry["would_fit"] = suggestions(settings, gpu)
        out["gpus"][gpu] = entry
    return out


def render(result: dict[str, Any]) -> str:
    """The plan as text for a terminal."""
    m = result["memory"]
    lines = [
        f"plan {result['config']} (run {result['run']}): {result['source']['name']} -> {result['target']['name']}, "
        f"{result['projector']['architecture']} projector ({result['projector']['parameters']:,} parameters), "
        f"batch {result['batch_size']}, precision {result['precision']}",
        f"  tokens per example (longest batch): source {result['lengths']['source_max']}, target prefix "
        f"{result['lengths']['prefix_max']}, continuation {result['lengths']['continuation_max']} "
        f"({result['lengths']['how']})",
        f"peak memory estimate ({m['estimated_for']}): {m['total_gib']:.2f} GiB",
    ]
    for name, t in m["terms"].items():
        lines.append(f"  {name:24s} {t['gib'] * 1024:9.1f} MiB  {t['what']}")
    if result["gpus"]:
        lines.append(
            "GPU (usable GiB)        fits  need GiB  headroom  s/step  tokens/s  hours  cost per provider"
        )
    for gpu, g in result["gpus"].items():
        costs = (
            ", ".join(
                f"{c['provider']} ${c['cost']:.2f}"
                + (f" (${c['cost_range'][0]:.2f}-{c['cost_range'][1]:.2f})" if c["low"] != c["high"] else "")
                for c in g["cost"]
            )
            or "no price"
        )
        lines.append(
            f"  {gpu:14s} {g['usable_gib']:6.1f}  {'yes' if g['fits'] else 'NO ':4s} {g['need_gib']:8.2f} "
            f"{g['headroom_gib']:9.2f} {g['step_seconds']:7.3f} {g['tokens_per_second']:9.0f} {g['hours']:6.2f}  {costs}"
        )
        for s in g.get("spot", []):
            lines.append(
                f"      spot at ${s['price_per_hour']:.2f}/h, {s['preemption_per_hour']} kills/h: expected "
                f"{s['expected_hours']} h (${s['expected_cost']}); checkpoint every {s['best_interval_steps']} steps "
                f"instead of {s['checkpoint_interval_steps']}: {s['best_expected_hours']} h (${s['best_expected_cost']})"
            )
        for s in g.get("would_fit", []):
            if s["fits"]:
                lines.append(
                    f"      would fit: {s['change']}: {s['total_gib']:.2f} GiB, headroom {s['headroom_gib']:.2f} GiB"
                )
    a = result["assumptions"]
    lines.append(
        f"time at {a['compute_efficiency']:.0%} of peak FLOP/s and {a['bandwidth_efficiency']:.0%} of bandwidth, "
        f"{a['kernel_overhead_us']} us per kernel; fits = estimate x {1 + a['allocator_margin']:.2f} + "
        f"{a['cuda_context_gib']} GiB CUDA context"
    )
    if "measured" in result:
        r = result["measured"]
        lines.append(
            f"measured ({r['steps']} steps on {r['device']}): peak {r['peak_gib']:.3f} GiB vs predicted "
            f"{r['predicted_gib']:.3f} GiB ({r['memory_error']:+.1%}); step {r['median_step_seconds']:.3f} s vs "
            f"predicted {r['predicted_step_seconds']:.3f} s; corrected hours for {result['max_steps']} steps: "
            f"{r['corrected_hours']:.2f}"
        )
    return "\n".join(lines) + "\n"


def plan(
    config: str = "default",
    gpu: list[str] | None = None,
    json: bool = False,
    output: str | None = None,
    measure: int = 0,
    device: str = "cpu",
    efficiency: float | None = None,
    study: str | None = None,
    suggest: bool = True,
    spot: bool = False,
    preemption_per_hour: float = 0.1,
    spot_price_factor: float = 0.5,
    overwrite: bool = False,
) -> int:
    """Peak GPU memory, step time and cloud cost of a training run (or a whole study), offline, from its config.

    Args:
        config: A training config (file, or a shipped name: default, smoke, ...).
        gpu: GPUs to plan for (kvproj/plan/hardware.yaml); default all of them.
        json: Print the plan as JSON instead of text.
        output: Also write the plan to this file (JSON; a study with a .md name is written as Markdown).
        measure: Run this many real training steps here and compare measured with predicted memory and step time;
            the measured step time corrects the time estimate.
        device: Where --measure runs: cpu or cuda (the GPU plan itself is always for CUDA).
        efficiency: Share of the GPU's peak FLOP/s a step reaches (default: hardware.yaml's compute_efficiency).
        study: A study file (runs x pairs x repeats, tiers with caps), or a shipped one (proposal): the budget
            table per provider and GPU.
        suggest: When a run does not fit a GPU, list the settings that would, each with its new estimate.
        spot: Also cost spot instances: expected cost with preemptions and the best checkpoint interval.
        preemption_per_hour: Spot kills per hour (with --spot).
        spot_price_factor: Spot price as a share of the on-demand price (with --spot).
        overwrite: Replace an existing --output file (checked before any work, --measure included).
    """
    from kvproj.atomic import atomic_write
    from kvproj.plan.estimate import check_gpus, gpu_names

    if device not in ("cpu", "cuda"):
        raise ValueError(f"--device {device!r}: valid: cpu, cuda")
    if measure < 0:
        raise ValueError(f"--measure {measure}: must be >= 0 (steps)")
    if efficiency is not None and not 0 < efficiency <= 1:
        raise ValueError(f"--efficiency {efficiency}: must be in (0, 1]")
    if not 0 <= preemption_per_hour:
        raise ValueError(f"--preemption_per_hour {preemption_per_hour}: must be >= 0")
    if output and not overwrite and os.path.exists(output):
        raise ValueError(
            f"--output {output!r}: the file exists; pass --overwrite to replace it, or choose another --output"
        )
    gpus = list(gpu) if gpu else gpu_names()
    check_gpus(gpus)
    if study is not None:
        from kvproj.plan.study import plan_study, read_study, study_markdown

        path = _resolve(study, "--study", STUDIES)
        result = plan_study(read_study(path), resolve_config, efficiency, gpus if gpu else None)
        result["study"] = str(path)
        text = study_markdown(result)
        if output:
            atomic_write(output, text if output.endswith(".md") else jsonlib.dumps(result, indent=2) + "\n")
        sys.stdout.write(jsonlib.dumps(result, indent=2) + "\n" if json else text)
        return 0
    spot_opts = {"preemption_per_hour": preemption_per_hour, "price_factor": spot_price_factor} if spot else None
    result = plan_run(config, gpus, efficiency, suggest, spot_opts)
    if measure:
        result["measured"] = compare(result, config, measure, device, efficiency)
    if output:
        atomic_write(output, jsonlib.dumps(result, indent=2) + "\n")
    sys.stdout.write(jsonlib.dumps(result, indent=2) + "\n" if json else render(result))
    return 0


def compare(
    result: dict[str, Any], config: str, steps: int, device: str, efficiency: float | None
) -> dict[str, Any]:
    """Measure `steps` steps and set them against the estimate; the measured step time replaces the predicted one
    for this device, and on CUDA its ratio corrects every GPU's time estimate."""
    from kvproj.plan.estimate import estimate, read_settings, run_hours, step_seconds
    from kvproj.plan.measure import calibrate_cpu, measure

    settings = read_settings(resolve_config(config))
    est = estimate(settings, device)
    if device == "cpu":
        spec = calibrate_cpu()
        predicted = step_seconds(est, spec, efficiency=1.0)  # the calibration is what this CPU reaches
    else:
        import torch

        from kvproj.plan.estimate import hardware

        name = torch.cuda.get_device_name(0).lower() if torch.cuda.is_available() else ""
        key = next((k for k in hardware()["gpus"] if k.split("-")[0] in name.replace(" ", "")), None)
        spec = hardware()["gpus"][key] if key else hardware()["gpus"]["h100-sxm"]
        predicted = step_seconds(est, spec, efficiency)
    got = measure(resolve_config(config).as_posix(), steps, device)
    # the measured step starts when the batch reaches the device: the host's tokenizing is not in it
    device_seconds = predicted["seconds"] - predicted["host_s"]
    ratio = got["median_step_seconds"] / device_seconds
    out = {
        **got,
        "peak_gib": got["peak_bytes"] / 2**30,
        "predicted_bytes": est.total,
        "predicted_gib": est.total / 2**30,
        "memory_error": (est.total - got["peak_bytes"]) / got["peak_bytes"],
        "predicted_step_seconds": device_seconds,
        "predicted_host_seconds": predicted["host_s"],
        "time_ratio_measured_over_predicted": ratio,
        "corrected_hours": run_hours(est, got["median_step_seconds"] + predicted["host_s"]),
        "device_spec": spec,
    }
    if device == "cuda":
        for g in result["gpus"].values():
            g["corrected_step_seconds"] = round(g["step_seconds"] * ratio, 4)
            g["corrected_hours"] = round(g["hours"] * ratio, 3)
        out["correction"] = "every GPU's step time scaled by the measured / predicted ratio on this GPU"
    else:
        out["correction"] = (
            "corrected_hours: this CPU at the measured step time; GPU estimates are not corrected by a CPU run"
        )
    log.info("measured %s", {k: out[k] for k in ("peak_gib", "predicted_gib", "median_step_seconds")})
    return out
