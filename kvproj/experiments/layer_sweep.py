"""Layer-by-layer analysis: which target layers of a transferred cache carry the information the target uses.

For a trained projector (and the target's own cache as the same-model reference), the facts metrics when only
layer l is transferred, when all but layer l are, and for the first-k / last-k layers. A layer that is not
transferred holds the donor cache of another example at that layer (the shuffled control), so every layer the
target reads stays in its usual range.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kvproj.experiments.common import (
    Report,
    Series,
    check_fractions,
    fmt,
    fmt_stat,
    heatmap,
    line_plot,
    markdown_table,
)
from kvproj.experiments.mixing import Selection
from kvproj.experiments.sweep import FactsSweepSettings, mean_of, prepare, run_sweep, transfer_record

NAME = "layer-sweep"


@dataclass
class Settings(FactsSweepSettings):
    """Layer sweep on the facts task.

    Args:
        k_fractions: First-k / last-k layer counts as fractions of the target's layers (rounded, at least 1).
    """

    k_fractions: tuple[float, ...] = (0.25, 0.5, 0.75)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.k_fractions = tuple(self.k_fractions)
        check_fractions("k_fractions", self.k_fractions)


def selections(num_layers: int, k_fractions: tuple[float, ...]) -> dict[str, Selection]:
    every = tuple(range(num_layers))
    out = {"full": Selection(), "control": Selection(span="none")}
    for layer in every:
        out[f"only_{layer}"] = Selection(layers=(layer,))
        out[f"all_but_{layer}"] = Selection(layers=tuple(x for x in every if x != layer))
    for k in ks(num_layers, k_fractions):
        out[f"first_{k}"] = Selection(layers=every[:k])
        out[f"last_{k}"] = Selection(layers=every[num_layers - k :])
    return out


def ks(num_layers: int, fractions: tuple[float, ...]) -> list[int]:
    return sorted({min(max(round(f * num_layers), 1), num_layers) for f in fractions})


def run(settings: Settings, command: str = NAME) -> dict[str, Any]:
    s = settings
    run_, examples, trained, config = prepare(NAME, s)
    num_layers = trained.pair.target.geometry.num_layers
    sel = selections(num_layers, s.k_fractions)
    run_.start()
    numbers, rows = run_sweep(run_, s, trained, examples, sel)
    analysis = analyse(numbers, num_layers)
    diagnostics = trained.transfer.projector.layer_diagnostics()
    report = build_report(s, numbers, analysis, diagnostics, num_layers, run_, command, trained)
    return run_.finish(
        numbers, transfer_record(trained, config), report, rows if s.generate else None,
        extra={"analysis": analysis, "projector_layer_diagnostics": diagnostics,
               "control": "control: every layer from the donor (another example's cache of the same kind); "
                          "a layer not transferred holds the donor's layer"},
    )  # fmt: skip


def analyse(numbers: dict[str, Any], num_layers: int) -> dict[str, Any]:
    """Per source: per layer, how much KL to the oracle falls when only that layer is transferred (against the
    control) and rises when only that layer is withheld (against full transfer); the layers ranked by each."""
    out = {}
    for source in ("projected", "same_model"):
        if source not in numbers:
            continue
        control = mean_of(numbers, source, "control", "kl_to_oracle")
        full = mean_of(numbers, source, "full", "kl_to_oracle")
        alone = [control - mean_of(numbers, source, f"only_{x}", "kl_to_oracle") for x in range(num_layers)]
        withheld = [mean_of(numbers, source, f"all_but_{x}", "kl_to_oracle") - full for x in range(num_layers)]
        out[source] = {
            "kl_drop_alone": alone,
            "kl_rise_withheld": withheld,
            "rank_alone": sorted(range(num_layers), key=lambda x: -alone[x]),
            "rank_withheld": sorted(range(num_layers), key=lambda x: -withheld[x]),
        }
    return out


def build_report(s, numbers, analysis, diagnostics, num_layers, run_, command, trained) -> Report:
    pair = trained.pair
    report = Report(f"Layer sweep: {pair.source.spec.name} -> {pair.target.spec.name}", command)
    n = numbers["target"]["oracle"]["answer_nll"]["n"]
    report.section(
        "What was measured",
        f"{n} facts examples ({s.eval_file or 'facts:' + s.split}). For each target layer l: `only_l` (layer l from "
        "the transferred cache, every other layer from the donor), `all_but_l` (layer l from the donor), and the "
        "first-k / last-k layers. **A layer that is not transferred holds the donor: the cache of another example "
        "of the batch (seeded derangement), made the same way, stretched to this example's length and rotated at "
        "its positions** - the shuffled control at that layer - so the cache the target reads stays in its usual "
        "range; `control` is the donor at every layer. Transferred caches: `projected` (the projector at "
        f"{trained.directory})"
        + (
            " and `same_model` (the target's own cache of the context: the reference)." if s.reference else "."
        ),  # fmt: skip
    )
    t = numbers["target"]
    rows = [["floor (head only)", "-", fmt_stat(t["floor"].get("exact_match")), fmt_stat(t["floor"]["answer_nll"]),
             fmt_stat(t["floor"]["kl_to_oracle"])],
            ["oracle (reads the text)", "-", fmt_stat(t["oracle"].get("exact_match")),
             fmt_stat(t["oracle"]["answer_nll"]), "0"]]  # fmt: skip
    for source in analysis:
        for cname in ("full", "control"):
            e = numbers[source][cname]
            rows.append([cname, source, fmt_stat(e.get("exact_match")), fmt_stat(e["answer_nll"]),
                         fmt_stat(e["kl_to_oracle"])])  # fmt: skip
    report.section("References", markdown_table(["condition", "cache", "exact match", "answer NLL", "KL to oracle"],
                                                rows))  # fmt: skip
    layers = list(range(num_layers))
    for source in analysis:
        matrix = [[mean_of(numbers, source, f"{kind}_{x}", "kl_to_oracle") for x in layers]
                  for kind in ("only", "all_but")]  # fmt: skip
        png = heatmap(run_.path(f"heatmap_{source}.png"), matrix, rows=["only l", "all but l"],
                      cols=[str(x) for x in layers], title=f"KL to oracle per target layer ({source})",
                      label="KL to oracle")  # fmt: skip
        report.plot(
            f"Heatmap ({source})",
            png,
            "KL to the oracle's answer distributions when only layer l is "
            "transferred (top) and when all layers but l are (bottom); lower is closer to the oracle.",
        )
        for metric, label in (("kl_to_oracle", "KL to oracle"), ("answer_nll", "answer NLL"),
                              ("exact_match", "exact match")):  # fmt: skip
            if metric == "exact_match" and not s.generate:
                continue
            series = []
            for kind in ("only", "all_but"):
                vals = [numbers[source][f"{kind}_{x}"][metric] for x in layers]
                series.append(Series(f"{kind.replace('_', ' ')} l", layers, [v["mean"] for v in vals],
                                     [v["ci95"][0] for v in vals], [v["ci95"][1] for v in vals]))  # fmt: skip
            png = line_plot(run_.path(f"{metric}_{source}.png"), series, title=f"{label} per target layer ({source})",
                            xlabel="target layer l", ylabel=label,
                            references={"full transfer": mean_of(numbers, source, "full", metric),
                                        "control (donor everywhere)": mean_of(numbers, source, "control", metric)})  # fmt: skip
            report.plot(f"{label} per layer ({source})", png, f"{label} with 95% CIs; dashed: full transfer, dotted: "
                        "the shuffled control.")  # fmt: skip
        kvals = sorted({int(c.split("_")[1]) for c in numbers[source] if c.startswith("first_")})
        series = [Series(f"{side} k", kvals, [mean_of(numbers, source, f"{side}_{k}", "kl_to_oracle") for k in kvals])
                  for side in ("first", "last")]  # fmt: skip
        png = line_plot(run_.path(f"first_last_k_{source}.png"), series, title=f"first-k / last-k layers ({source})",
                        xlabel="k (layers transferred)", ylabel="KL to oracle",
                        references={"full": mean_of(numbers, source, "full", "kl_to_oracle"),
                                    "control": mean_of(numbers, source, "control", "kl_to_oracle")})  # fmt: skip
        report.plot(f"First-k / last-k ({source})", png, "KL to the oracle when the first or the last k layers are "
                    "transferred and the rest hold the donor.")  # fmt: skip
    report.section("Finding", finding(numbers, analysis, num_layers))
    report.section("Per-layer training diagnostics", diagnostics_text(numbers, analysis, diagnostics, num_layers))
    report.section(
        "What the numbers do not show",
        "- One layer at a time measures what each layer adds *over the donor*; layers can be redundant (all-but-l "
        "barely moves when another layer carries the same information) or only useful together (first-k / "
        "last-k), which per-layer numbers alone do not reveal.\n"
        "- The donor keeps the target's value ranges, but a layer that mixes examples is not a cache the target "
        "ever makes itself; effects of that mismatch are part of every partial condition.\n"
        "- KL and NLL are measured on the answer tokens teacher-forced; exact match on greedy answers of at most "
        f"{s.max_new_tokens} tokens. {numbers['target']['oracle']['answer_nll']['n']} examples: small effects sit "
        "inside the CIs.",
    )
    return report


def spearman(a: list[float], b: list[float]) -> float | None:
    """Rank correlation of two equally long lists (average ranks for ties)."""
    import numpy as np

    if len(a) < 3:
        return None

    def ranks(x):
        x = np.asarray(x, dtype=float)
        order = x.argsort()
        r = np.empty(len(x))
        r[order] = np.arange(len(x))
        for v in np.unique(x):  # ties: their mean rank
            r[x == v] = r[x == v].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def diagnostics_text(numbers, analysis, diagnostics, num_layers) -> str:
    """The per-layer diagnostics training logs, set against what the sweep finds."""
    parts = []
    cos = numbers.get("projector_cosine")
    if cos and "projected" in analysis:
        a = analysis["projected"]
        rho_k = spearman(cos["keys"], a["kl_drop_alone"])
        rho_v = spearman(cos["values"], a["kl_drop_alone"])
        table = markdown_table(
            ["target layer", "key cosine", "value cosine", "KL drop alone", "KL rise withheld"],
            [[x, fmt(cos["keys"][x]), fmt(cos["values"][x]), fmt(a["kl_drop_alone"][x], 3, "g"),
              fmt(a["kl_rise_withheld"][x], 3, "g")]
             for x in range(num_layers)],
        )  # fmt: skip
        parts.append(
            "Training logs the cosine between the projected and the target's own keys and values per layer "
            "(`layers/val_cos_keys/NN`, `layers/val_cos_values/NN`); recomputed here on these examples "
            "(`kvproj.losses.reconstruction`, RoPE applied, aligned positions):\n\n" + table + "\n"
            f"Rank correlation over layers of the cosine with the KL drop when the layer is transferred alone: keys "
            f"{fmt(rho_k, 2)}, values {fmt(rho_v, 2)} (a high cosine need not mean the layer matters: the sweep "
            "measures use, the cosine measures likeness)."
        )
    if diagnostics:
        parts.append("The projector reports: " + ", ".join(f"{k} {fmt(v)}" for k, v in diagnostics.items()) + ".")
    else:
        parts.append("This projector architecture has no per-layer diagnostics of its own (gate values).")
    return "\n\n".join(parts)


def finding(numbers, analysis, num_layers) -> str:
    lines = []
    for source, a in analysis.items():
        top = a["rank_alone"][:3]
        withheld = a["rank_withheld"][:3]
        lines.append(
            f"- {source}: transferred alone, layers {top} bring the KL to the oracle down most from the control "
            f"({fmt(mean_of(numbers, source, 'control', 'kl_to_oracle'))}): "
            + ", ".join(f"layer {x}: {fmt(mean_of(numbers, source, f'only_{x}', 'kl_to_oracle'))}" for x in top)
            + f". Withheld alone, layers {withheld} raise it most from the full transfer "
            f"({fmt(mean_of(numbers, source, 'full', 'kl_to_oracle'))}): "
            + ", ".join(
                f"layer {x}: {fmt(mean_of(numbers, source, f'all_but_{x}', 'kl_to_oracle'))}" for x in withheld
            )
            + ". "
            + separation(numbers, source, f"only_{top[0]}", "control")
        )
    return "\n".join(lines)


def separation(numbers, source: str, a: str, b: str) -> str:
    """Whether the 95% CIs of two conditions' KL to the oracle overlap, said plainly."""
    x, y = numbers[source][a]["kl_to_oracle"], numbers[source][b]["kl_to_oracle"]
    if not x["ci95"] or not y["ci95"]:
        return ""
    apart = x["ci95"][1] < y["ci95"][0] or y["ci95"][1] < x["ci95"][0]
    return f"`{a}` {fmt_stat(x)} vs `{b}` {fmt_stat(y)}: " + (
        "the CIs are apart." if apart else "the CIs overlap, so this ranking is not established at this n."
    )
