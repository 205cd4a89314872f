"""What every experiment shares: the run folder, resumable units, numbers with bootstrap CIs, plots, the report.

A run lives in `OUTPUT_DIR/NAME/RUN/`:

    settings.json      the settings it was started with (a restart with other settings is refused)
    units/KEY.json     one finished unit of work each (a restart skips them)
    results.json       settings, models, versions, every number with its bootstrap 95% CI and its control
    generations.jsonl  generated text, where the experiment generates
    *.png              plots (matplotlib, Agg backend: no display needed)
    report.md          the plots, the finding in numbers, and what the numbers do not show

`results.json` is written last: it marks a finished run, which is never replaced without `overwrite`. Every file
is written atomically (kvproj/atomic.py). Same settings and seed, same numbers: units hold plain JSON numbers and
every random choice is seeded from the settings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import platform
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

import kvproj
from kvproj.atomic import atomic_write, recover
from kvproj.callbacks.progress import loop_progress
from kvproj.eval import metrics
from kvproj.models import ModelSpec

log = logging.getLogger(__name__)

RESULTS, SETTINGS, UNITS, GENERATIONS, REPORT = (
    "results.json",
    "settings.json",
    "units",
    "generations.jsonl",
    "report.md",
)
UNIT_SECONDS = "unit_seconds"
# settings that change where or whether a run is written, not what it computes
NOT_COMPARED = ("overwrite", "output_dir", "run")


@dataclass
class ExperimentSettings:
    """Options every experiment takes.

    Args:
        run: Name of the run folder: results go to OUTPUT_DIR/NAME/RUN/.
        output_dir: Folder that holds one folder per experiment.
        seed: Seeds every random choice (example order, shuffled controls, bootstrap): same seed, same numbers.
        overwrite: Replace a finished run in the same folder (otherwise it is refused).
        bootstrap_resamples: Resamples of the percentile bootstrap behind every 95% CI.
    """

    # options that only choose which units run (units are keyed by them): a run may be resumed with other values
    UNIT_SELECTORS: ClassVar[tuple[str, ...]] = ()

    run: str = "default"
    output_dir: str = "results"
    seed: int = 0
    overwrite: bool = False
    bootstrap_resamples: int = 1000

    def __post_init__(self) -> None:
        if not self.run or "/" in self.run or self.run in (".", ".."):
            raise ValueError(f"--run: a folder name without '/', got {self.run!r}")
        check_int("bootstrap_resamples", self.bootstrap_resamples, 100)

    def to_dict(self) -> dict[str, Any]:
        return jsonable(asdict(self))


def check_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> None:
    """A whole number in [minimum, maximum], else ValueError naming the option."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < minimum
        or (maximum is not None and value > maximum)
    ):
        bound = f">= {minimum}" + (f" and <= {maximum}" if maximum is not None else "")
        raise ValueError(f"--{name}: must be a whole number {bound}, got {value!r}")


def check_fractions(name: str, values: Sequence[float]) -> None:
    if not values or any(isinstance(v, bool) or not 0.0 <= float(v) <= 1.0 for v in values):
        raise ValueError(f"--{name}: one or more numbers in [0, 1], got {list(values)!r}")


def jsonable(value: Any) -> Any:
    """Plain JSON types: dataclasses and tuples become dicts and lists, NaN becomes None."""
    if is_dataclass(value) and not isinstance(value, type):
        return jsonable(asdict(value))
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ------------------------------------------------------------------------------------------------ numbers
def stat(values: Iterable[float | None], seed: int, resamples: int = 1000) -> dict[str, Any]:
    """Mean of `values` (None / NaN dropped) with its percentile-bootstrap 95% CI and n."""
    present = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not present:
        return {"mean": None, "ci95": None, "n": 0}
    lo, hi = metrics.bootstrap_ci(present, seed=seed, resamples=resamples)
    return {"mean": metrics.mean(present), "ci95": [lo, hi], "n": len(present)}


def stat_seed(seed: int, *labels: Any) -> int:
    """A bootstrap seed per number: the run's seed and the number's labels, stable across processes."""
    digest = hashlib.sha256(json.dumps([seed, *map(str, labels)]).encode()).digest()
    return int.from_bytes(digest[:4], "little")


def fmt(value: float | None, digits: int = 3, kind: str = "f") -> str:
    """`value` with `digits` decimals (kind "f") or significant digits (kind "g"); "-" for None / NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}{kind}}"


def fmt_stat(s: dict[str, Any] | None, digits: int = 3, kind: str = "f") -> str:
    """ "0.512 [0.41, 0.60]" for a `stat` dict."""
    if not s or s.get("mean") is None:
        return "-"
    lo, hi = s["ci95"]
    return f"{fmt(s['mean'], digits, kind)} [{fmt(lo, digits, kind)}, {fmt(hi, digits, kind)}]"


# ------------------------------------------------------------------------------------------------ the run folder
class Run:
    """One run's folder: refuses to replace a finished run, resumes an unfinished one unit by unit.

    Args:
        experiment: The experiment's name (same-model, layer-sweep, ...).
        settings: Its settings (an `ExperimentSettings` subclass).
    """

    def __init__(self, experiment: str, settings: ExperimentSettings) -> None:
        self.experiment, self.settings = experiment, settings
        self.folder = Path(settings.output_dir) / experiment / settings.run
        self.started = time.perf_counter()
        self.resumed_units = 0
        self.unit_seconds = 0.0  # compute time of every unit, this attempt's and earlier attempts' alike

    # -- starting
    def check(self) -> None:
        """Cheap checks before any model is loaded: a finished run is replaced only with `overwrite`; an
        unfinished one is resumed only with the same settings."""
        results = self.folder / RESULTS
        if results.exists() and not self.settings.overwrite:
            raise FileExistsError(
                f"{self.folder}: a finished run is there ({RESULTS}); pass --overwrite to replace it, or choose "
                "another --run"
            )
        if self.folder.exists() and not self.folder.is_dir():
            raise ValueError(f"{self.folder} is a file; choose another --run or --output_dir")

    def start(self) -> None:
        """Create (or resume in) the folder; with `overwrite`, a previous run's files are removed first."""
        self.check()
        if self.settings.overwrite and self.folder.exists():
            if not (self.folder / SETTINGS).exists():
                raise ValueError(
                    f"{self.folder}: --overwrite replaces run folders only, and this one has no {SETTINGS}; "
                    "remove it yourself or choose another --run"
                )
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        recover(self.folder)
        recover(self.folder / UNITS)
        selectors = type(self.settings).UNIT_SELECTORS
        mine = comparable(self.settings.to_dict(), selectors)
        stored_path = self.folder / SETTINGS
        if stored_path.exists():
            stored = comparable(json.loads(stored_path.read_text()).get("settings", {}), selectors)
            differ = sorted(k for k in set(mine) | set(stored) if mine.get(k) != stored.get(k))
            if differ:
                raise ValueError(
                    f"{self.folder}: an unfinished run started with other settings is there (differ: "
                    f"{', '.join(differ)}); rerun with the same settings to resume it, pass --overwrite to start "
                    "again, or choose another --run"
                )
            self.resumed_units = len(list((self.folder / UNITS).glob("*.json")))
            if self.resumed_units:
                log.info("resuming %s: %d finished units are kept", self.folder, self.resumed_units)
        if not stored_path.exists() or selectors:
            atomic_write(stored_path, json.dumps({"experiment": self.experiment, "settings": self.settings.to_dict()},
                                                 indent=2) + "\n")  # fmt: skip
        log.info("%s: writing to %s", self.experiment, self.folder)

    # -- units
    def unit(self, key: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The result of unit `key`: read from units/KEY.json if a previous attempt finished it, else computed
        and written there (plain JSON: a resumed run gives the same numbers as an uninterrupted one)."""
        path = self.folder / UNITS / f"{safe_name(key)}.json"
        if path.exists():
            value = json.loads(path.read_text())
        else:
            start = time.perf_counter()
            value = jsonable(compute())
            if isinstance(value, dict):  # the compute time of the unit, summed in results.json
                value[UNIT_SECONDS] = round(time.perf_counter() - start, 3)
            atomic_write(path, json.dumps(value) + "\n")
            value = json.loads(json.dumps(value))  # exactly what a resumed run reads back
        if isinstance(value, dict):
            self.unit_seconds += value.pop(UNIT_SECONDS, 0.0)
        return value

    def units(self, keys: Sequence[str], compute: Callable[[str], dict[str, Any]], label: str) -> dict[str, Any]:
        """Every unit of `keys` (finished ones skipped), with a progress display."""
        out = {}
        with loop_progress(len(keys), f"{self.experiment} {label}", "units") as advance:
            for key in keys:
                out[key] = self.unit(key, lambda k=key: compute(k))
                advance(1)
        return out

    # -- finishing
    def path(self, name: str) -> Path:
        return self.folder / name

    def finish(
        self,
        numbers: dict[str, Any],
        models: dict[str, Any],
        report: Report,
        generations: list[dict[str, Any]] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Write generations.jsonl, report.md and, last, results.json (which marks the run finished)."""
        results = {
            "experiment": self.experiment,
            "run": self.settings.run,
            "kvproj_version": kvproj.__version__,
            "versions": versions(),
            "settings": self.settings.to_dict(),
            "models": jsonable(models),
            **jsonable(extra or {}),
            "numbers": jsonable(numbers),
            "wall_seconds": round(time.perf_counter() - self.started, 1),
            "unit_seconds": round(self.unit_seconds, 1),
            "resumed_units": self.resumed_units,
        }
        if generations is not None:
            atomic_write(
                self.folder / GENERATIONS, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in generations)
            )
        atomic_write(self.folder / REPORT, report.render(results))
        atomic_write(self.folder / RESULTS, json.dumps(results, indent=2) + "\n")
        log.info("%s: finished in %.0f s; %s", self.experiment, results["wall_seconds"], self.folder / REPORT)
        return results


def comparable(settings: dict[str, Any], selectors: tuple[str, ...] = ()) -> dict[str, Any]:
    return {k: v for k, v in settings.items() if k not in NOT_COMPARED and k not in selectors}


def safe_name(key: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in key)


def versions() -> dict[str, str]:
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def as_spec(value: Any) -> ModelSpec:
    """A model setting as a `ModelSpec` (YAML gives a mapping: {name: ..., dtype: ...})."""
    return value if isinstance(value, ModelSpec) else ModelSpec(**value)


def model_record(loaded) -> dict[str, Any]:
    """What results.json says about a loaded model: its spec, kind and cache geometry."""
    g = loaded.geometry
    return {
        "spec": loaded.spec.to_dict(),
        "kind": loaded.source_kind,
        "geometry": {"family": g.family, "num_layers": g.num_layers, "num_kv_heads": g.num_kv_heads,
                     "head_dim": g.head_dim},
    }  # fmt: skip


# ------------------------------------------------------------------------------------------------ plots
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless: no display, same PNGs everywhere
    import matplotlib.pyplot as plt

    return plt


@dataclass
class Series:
    """One line of a plot: y values (with optional CI bounds) at x."""

    label: str
    x: list[float]
    y: list[float | None]
    lo: list[float | None] | None = None
    hi: list[float | None] | None = None
    points: bool = False  # separate conditions, not a curve: markers with CI bars, no connecting line


def line_plot(
    path: Path,
    series: list[Series],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    references: dict[str, float | None] | None = None,
    xscale: str = "linear",
    yscale: str = "linear",
) -> Path:
    """Lines with shaded 95% CIs, horizontal reference lines (controls), written as PNG."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for s in series:
        y = np.array([np.nan if v is None else v for v in s.y], dtype=float)
        lo = hi = None
        if s.lo is not None and s.hi is not None:
            lo = np.array([np.nan if v is None else v for v in s.lo], dtype=float)
            hi = np.array([np.nan if v is None else v for v in s.hi], dtype=float)
        if s.points:
            err = None if lo is None else np.vstack([y - lo, hi - y])
            ax.errorbar(s.x, y, yerr=err, fmt="D", markersize=4, capsize=3, linestyle="none", label=s.label)
            continue
        ax.plot(s.x, y, marker="o", markersize=3, label=s.label)
        if lo is not None:
            ax.fill_between(s.x, lo, hi, alpha=0.15)
    styles = ["--", ":", "-."]
    for i, (name, value) in enumerate((references or {}).items()):
        if value is not None:
            ax.axhline(value, linestyle=styles[i % 3], color="gray", linewidth=1)
            ax.annotate(name, (0.01, value), xycoords=("axes fraction", "data"), fontsize=7, color="dimgray",
                        va="bottom")  # fmt: skip
    ax.set_xscale(xscale)
    ax.set_yscale(yscale)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def heatmap(
    path: Path, matrix: list[list[float | None]], *, rows: list[str], cols: list[str], title: str, label: str
) -> Path:
    """A matrix as colours, each cell annotated with its value."""
    plt = _pyplot()
    data = np.array([[np.nan if v is None else v for v in r] for r in matrix], dtype=float)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * len(cols) + 2), max(2.2, 0.45 * len(rows) + 1.2)), dpi=110)
    im = ax.imshow(data, aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(cols)), cols, fontsize=7, rotation=90 if len(cols) > 12 else 0)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    if data.size <= 200:
        for (i, j), v in np.ndenumerate(data):
            if not np.isnan(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="white")
    fig.colorbar(im, ax=ax, label=label)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    import io

    buffer = io.BytesIO()
    # no timestamp in the file: the same numbers give the same bytes
    fig.savefig(buffer, format="png", metadata={"Software": None})
    _pyplot().close(fig)
    return atomic_write(path, buffer.getvalue())


# ------------------------------------------------------------------------------------------------ the report
class Report:
    """report.md: title, what was run, the plots, the finding in numbers, what the numbers do not show."""

    def __init__(self, title: str, command: str) -> None:
        self.title, self.command = title, command
        self.sections: list[tuple[str, str]] = []

    def section(self, heading: str, text: str) -> Report:
        self.sections.append((heading, text.rstrip() + "\n"))
        return self

    def plot(self, heading: str, png: Path, caption: str) -> Report:
        return self.section(heading, f"![{heading}]({png.name})\n\n{caption}")

    def render(self, results: dict[str, Any]) -> str:
        models = ", ".join(f"{k}: `{v['spec']['name']}`" for k, v in results["models"].items() if "spec" in v)
        v = results["versions"]
        head = (
            f"# {self.title}\n\n"
            f"Run `{results['run']}` of `{results['experiment']}`: kvproj {results['kvproj_version']}, torch "
            f"{v['torch']}, transformers {v['transformers']}; models {models}; seed {results['settings']['seed']}; "
            f"{results['wall_seconds']:.0f} s wall"
            + (
                f" (resumed: {results['resumed_units']} units read back"
                + (
                    f"; all units together took {results['unit_seconds']:.0f} s to compute)"
                    if results["unit_seconds"]
                    else ")"
                )
                if results["resumed_units"]
                else ""
            )
            + ".\n\n"
            f"Command: `{self.command}`\n\nEvery number is a mean with its percentile-bootstrap 95% CI "
            f"({results['settings']['bootstrap_resamples']} resamples over examples); all numbers are in "
            "`results.json`.\n"
        )
        return head + "".join(f"\n## {h}\n\n{t}" for h, t in self.sections)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def command_line(experiment: str, config: str | None) -> str:
    return f"python -m kvproj experiment {experiment}" + (f" --config {config}" if config else "")
