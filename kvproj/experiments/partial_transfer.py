"""Partial cache transfer: how much of a cache has to cross the wire.

Subsets of target layers (first / last fraction), of KV heads (first fraction), and of context tokens (first /
last 0-25-50-75-100% of the context, or only the tokens of the entity's name and of the answer), alone and
combined, scored on the facts task against the fraction of the context's cache bytes they transfer. What is not
transferred holds the donor (another example's cache of the same kind: the shuffled control), as in the layer
sweep; the shuffled control (0%) and the full transfer (100%) are the reference lines.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kvproj.experiments.common import Report, Series, check_fractions, fmt, fmt_stat, line_plot, markdown_table
from kvproj.experiments.mixing import Selection
from kvproj.experiments.sweep import FactsSweepSettings, mean_of, prepare, run_sweep, transfer_record

NAME = "partial-transfer"
SPANS = ("entity", "answer", "entity+answer")


@dataclass
class Settings(FactsSweepSettings):
    """Partial transfer on the facts task.

    Args:
        layer_fractions: Fractions of the target's layers transferred, taken from the first and from the last.
        head_fractions: Fractions of the KV heads transferred (the first ones), every layer and token.
        token_fractions: Fractions of the context tokens transferred, taken from the start and from the end.
        spans: Named token spans transferred alone: entity, answer, entity+answer.
        combined: Also combine the last half of the layers with the last half of the tokens and with the
            entity+answer span.
    """

    layer_fractions: tuple[float, ...] = (0.25, 0.5, 0.75)
    head_fractions: tuple[float, ...] = (0.5,)
    token_fractions: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    spans: tuple[str, ...] = SPANS
    combined: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("layer_fractions", "head_fractions", "token_fractions", "spans"):
            setattr(self, name, tuple(getattr(self, name)))
        check_fractions("layer_fractions", self.layer_fractions)
        check_fractions("head_fractions", self.head_fractions)
        check_fractions("token_fractions", self.token_fractions)
        bad = [x for x in self.spans if x not in SPANS]
        if bad:
            raise ValueError(f"--spans: got {list(self.spans)}; valid: {', '.join(SPANS)}")


def selections(s: Settings, num_layers: int, num_heads: int) -> dict[str, tuple[str, Selection]]:
    """name -> (family, selection). Families: layers, heads, tokens, spans, combined, and the references."""
    layers = tuple(range(num_layers))
    out: dict[str, tuple[str, Selection]] = {"full": ("reference", Selection()),
                                             "control": ("reference", Selection(span="none"))}  # fmt: skip
    for f in s.layer_fractions:
        k = round(f * num_layers)
        out[f"layers_first_{f:g}"] = ("layers (first)", Selection(layers=layers[:k]))
        out[f"layers_last_{f:g}"] = ("layers (last)", Selection(layers=layers[num_layers - k :]))
    for f in s.head_fractions:
        h = round(f * num_heads)
        out[f"heads_first_{f:g}"] = ("kv heads (first)", Selection(heads=tuple(range(h))))
    for f in s.token_fractions:
        out[f"tokens_first_{f:g}"] = ("tokens (first)", Selection(span=f"first:{f:g}"))
        out[f"tokens_last_{f:g}"] = ("tokens (last)", Selection(span=f"last:{f:g}"))
    for span in s.spans:
        out[f"span_{span}"] = ("spans", Selection(span=span))
    if s.combined:
        half = layers[num_layers - round(0.5 * num_layers) :]
        out["last_half_layers+last_half_tokens"] = ("combined", Selection(layers=half, span="last:0.5"))
        out["last_half_layers+entity+answer"] = ("combined", Selection(layers=half, span="entity+answer"))
    return out


def run(settings: Settings, command: str = NAME) -> dict[str, Any]:
    s = settings
    run_, examples, trained, config = prepare(NAME, s)
    g = trained.pair.target.geometry
    families = selections(s, g.num_layers, g.num_kv_heads)
    run_.start()
    numbers, rows = run_sweep(run_, s, trained, examples, {k: v for k, (_, v) in families.items()})
    report = build_report(s, numbers, families, run_, command, trained)
    return run_.finish(
        numbers, transfer_record(trained, config), report, rows if s.generate else None,
        extra={"families": {k: fam for k, (fam, _) in families.items()},
               "control": "control: the donor (another example's cache of the same kind) everywhere; what a "
                          "condition does not transfer holds the donor"},
    )  # fmt: skip


def build_report(s, numbers, families, run_, command, trained) -> Report:
    pair = trained.pair
    report = Report(f"Partial cache transfer: {pair.source.spec.name} -> {pair.target.spec.name}", command)
    n = numbers["target"]["oracle"]["answer_nll"]["n"]
    report.section(
        "What was measured",
        f"{n} facts examples ({s.eval_file or 'facts:' + s.split}). Each condition transfers a subset of the "
        "context's cache (target layers x KV heads x context tokens); everything else holds the donor, another "
        "example's cache of the same kind (the shuffled control), so the target always reads a full-size cache in "
        "its usual range. The x axis is the share of the context's cache elements transferred (the head tokens, "
        "target-native in every condition, are not counted). Transferred caches: `projected`"
        + (" and `same_model` (the target's own cache: the reference)." if s.reference else "."),
    )
    metrics_ = [("kl_to_oracle", "KL to oracle"), ("answer_nll", "answer NLL")] + (
        [("exact_match", "exact match")] if s.generate else []
    )
    for source in [x for x in ("projected", "same_model") if x in numbers]:
        by_family: dict[str, list[str]] = {}
        for name, (fam, _) in families.items():
            if fam != "reference":
                by_family.setdefault(fam, []).append(name)
        for metric, label in metrics_:
            series = []
            for fam, names in by_family.items():
                pts = sorted((numbers[source][c]["byte_fraction"], numbers[source][c][metric]) for c in names)
                series.append(Series(fam, [p[0] for p in pts], [p[1]["mean"] for p in pts],
                                     [p[1]["ci95"][0] for p in pts], [p[1]["ci95"][1] for p in pts],
                                     points=fam in ("spans", "combined")))  # fmt: skip
            png = line_plot(run_.path(f"{metric}_{source}.png"), series,
                            title=f"{label} vs share of cache transferred ({source})",
                            xlabel="share of the context's cache bytes transferred", ylabel=label,
                            references={"full transfer": mean_of(numbers, source, "full", metric),
                                        "shuffled control": mean_of(numbers, source, "control", metric)})  # fmt: skip
            report.plot(f"{label} ({source})", png, f"{label} against the share of cache bytes transferred, per "
                        "kind of subset (95% CIs shaded; spans and combined subsets are separate conditions, shown as "
                        "points with CI bars); dashed: full transfer; dotted: the shuffled control.")  # fmt: skip
        rows = []
        for name, (fam, _) in families.items():
            e = numbers[source][name]
            rows.append([name, fam, fmt(e.get("byte_fraction"), 3), fmt_stat(e.get("exact_match")),
                         fmt_stat(e["answer_nll"]), fmt_stat(e["kl_to_oracle"])])  # fmt: skip
        report.section(f"Numbers ({source})", markdown_table(
            ["condition", "kind", "bytes share", "exact match", "answer NLL", "KL to oracle"], rows))  # fmt: skip
    report.section("Finding", finding(numbers, families))
    report.section(
        "What the numbers do not show",
        "- The byte share counts cache elements, not a compressed wire format; quantizing or compressing what is "
        "sent was not measured.\n"
        "- Named spans (entity, answer) are found by the answer's text in the context: they presuppose knowing the "
        "answer, so they measure where the information sits, not a transfer policy that could be used blind.\n"
        "- What is not transferred holds another example's cache rather than nothing; a receiver that drops "
        "those positions (a shorter cache) is a different experiment.\n"
        f"- {n} examples; conditions that differ by less than their CIs are not distinguished.",
    )
    return report


def finding(numbers, families) -> str:
    lines = []
    for source in [x for x in ("projected", "same_model") if x in numbers]:
        full = mean_of(numbers, source, "full", "kl_to_oracle")
        control = mean_of(numbers, source, "control", "kl_to_oracle")
        if full is None or control is None or abs(control - full) < 1e-12:
            continue
        x, y = numbers[source]["full"]["kl_to_oracle"]["ci95"], numbers[source]["control"]["kl_to_oracle"]["ci95"]
        if x and y and not (x[1] < y[0] or y[1] < x[0]):
            lines.append(
                f"- {source}: the full transfer (KL to oracle {fmt(full)}) is not distinguishable from the shuffled "
                f"control ({fmt(control)}) at this n (their 95% CIs overlap): there is no transferred information "
                "to split, and the subsets below say nothing."
            )
            continue
        recovered = []
        for name, (fam, _) in families.items():
            if fam == "reference":
                continue
            e = numbers[source][name]
            share = (control - e["kl_to_oracle"]["mean"]) / (control - full)
            recovered.append((e["byte_fraction"], share, name))
        cheap = sorted((b, -r, n) for b, r, n in recovered if r >= 0.5)
        line = f"- {source}: full transfer KL to oracle {fmt(full)}, shuffled control {fmt(control)}. "
        if cheap:
            b, r, n = cheap[0]
            line += (f"The smallest subset that closes at least half of that KL gap is `{n}`: {fmt(b, 3)} of the "
                     f"bytes close {fmt(-r, 2)} of the gap.")  # fmt: skip
        else:
            line += "No subset short of the full cache closes half of the KL gap."
        best = max(recovered, key=lambda x: x[1] / max(x[0], 1e-3))
        line += f" Most gap per byte: `{best[2]}` ({fmt(best[0], 3)} of the bytes, {fmt(best[1], 2)} of the gap)."
        lines.append(line)
    return "\n".join(lines) or "- The full transfer is no closer to the oracle than the control: nothing to split."
