"""Cache archaeology: what does each layer's cache encode?

Facts contexts (test split) are read by each model; per token and layer, its keys (RoPE undone) and its values
(heads concatenated) are the features of linear probes (logistic regression or ridge, standardised features,
grouped cross-validation: a context never sits in both a training and a test fold; for the attribute, an entity
never does) for five labels: the current token's identity and the previous token's (the `top_tokens` most
frequent ids), the absolute position (R^2), whether the token is part of a person's name (a named entity of the
facts corpus), and an attribute of the person whose name it is part of (`attribute_relation`, its
`attribute_classes` most frequent values, known from the corpus). Controls: the same probe with shuffled labels
(same rows, same folds), and the token embeddings (the model's input layer) as the floor. Decodability (accuracy
or R^2, bootstrap 95% CI over tokens) is plotted against relative layer depth, all models on one plot per label.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from kvproj.cache import read_cache_internals
from kvproj.experiments.common import (
    ExperimentSettings,
    Report,
    Run,
    Series,
    as_spec,
    check_int,
    fmt_stat,
    line_plot,
    markdown_table,
    model_record,
    stat,
    stat_seed,
)
from kvproj.experiments.stats import folds, probe_predictions, r2_with_ci, relative_depth
from kvproj.models import ModelSpec, load_model

NAME = "archaeology"
TASKS = ("token", "previous_token", "position", "entity", "attribute")
KINDS = ("keys", "values")


@dataclass
class Settings(ExperimentSettings):
    """Per-layer linear probes on keys (RoPE undone) and values.

    Args:
        models: The models whose caches are probed (each on the same contexts).
        n_contexts: Facts contexts (test split) read by each model.
        top_tokens: Token-identity probes classify the most frequent ids only (tokens with other ids are left out).
        attribute_relation: The facts relation whose value (of the person a name token belongs to) is decoded.
        attribute_classes: Most frequent values of that relation kept as classes.
        cv_folds: Grouped cross-validation folds.
        probe_c: Inverse regularisation strength of the probes (logistic C; ridge alpha = 1 / C).
    """

    models: list[ModelSpec] = field(
        default_factory=lambda: [ModelSpec("smollm2-135m-instruct"), ModelSpec("gemma3-270m")]
    )
    n_contexts: int = 96
    top_tokens: int = 20
    attribute_relation: str = "birthplace"
    attribute_classes: int = 4
    cv_folds: int = 4
    probe_c: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        from kvproj.data.facts import RELATION_NAMES

        self.models = [as_spec(m) for m in self.models]
        if not self.models:
            raise ValueError("--models: give one or more models")
        check_int("n_contexts", self.n_contexts, 4)
        check_int("top_tokens", self.top_tokens, 2)
        check_int("attribute_classes", self.attribute_classes, 2)
        check_int("cv_folds", self.cv_folds, 2, 20)
        if self.attribute_relation not in RELATION_NAMES:
            raise ValueError(
                f"--attribute_relation: one of {', '.join(RELATION_NAMES)}, got {self.attribute_relation!r}"
            )
        if not self.probe_c > 0:
            raise ValueError(f"--probe_c: must be > 0, got {self.probe_c!r}")


# ------------------------------------------------------------------------------------------------ labels
def contexts(n: int) -> tuple[list[dict], dict[str, dict[str, str]]]:
    """The first n facts test examples and the attributes of the split's people."""
    from kvproj.data.facts import FactsConfig, generate_splits, people

    cfg = FactsConfig(n_train_examples=1)
    rows = [e.to_dict() for e in generate_splits(cfg)["test"][:n]]
    return rows, people(cfg, "test")


def mentions(text: str, names: dict[str, dict[str, str]]) -> list[tuple[int, int, str]]:
    """(start, end, name) of every person's name in `text` (character spans)."""
    out = []
    for name in names:
        start = text.find(name)
        while start >= 0:
            out.append((start, start + len(name), name))
            start = text.find(name, start + 1)
    return out


def token_rows(loaded, rows: list[dict], who: dict[str, dict[str, str]], relation: str) -> list[dict]:
    """Per context: ids, and per token its position, previous id, entity (name or None), attribute value."""
    from kvproj.data.facts import is_closed_value

    out = []
    for i, r in enumerate(rows):
        enc = loaded.tokenizer(r["context"], return_offsets_mapping=True)
        spans = mentions(r["context"], who)
        entity = []
        for a, b in enc["offset_mapping"]:
            hit = [n for s, e, n in spans if b > a and a < e and b > s]
            entity.append(hit[0] if hit else None)
        attribute = [
            who[e][relation] if e is not None and is_closed_value(relation, who[e][relation]) else None
            for e in entity
        ]
        out.append({"context": i, "ids": list(enc["input_ids"]), "entity": entity, "attribute": attribute})
    return out


@torch.no_grad()
def features(loaded, tokens: list[dict], edit=None) -> dict[str, np.ndarray]:
    """Per token of every context (concatenated): "embedding" [N, hidden], "keys L" / "values L" [N, H*D].
    `edit(kv, token_row)`, if given, changes each context's KVCache in place before its features are taken (the
    tests plant structure with it)."""
    out: dict[str, list[np.ndarray]] = {}
    for t in tokens:
        ids = torch.tensor([t["ids"]])
        kv, _, hidden, _ = read_cache_internals(loaded.model, ids, geometry=loaded.geometry)
        if edit is not None:
            edit(kv, t)
        out.setdefault("embedding", []).append(hidden[0][0].float().cpu().numpy())
        for layer in range(kv.num_layers):
            k = kv.unrotated_keys(layer)[0].float().permute(1, 0, 2).flatten(1)  # [T, H*D]
            v = kv.values[layer][0].float().permute(1, 0, 2).flatten(1)
            out.setdefault(f"keys {layer}", []).append(k.cpu().numpy())
            out.setdefault(f"values {layer}", []).append(v.cpu().numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def task_labels(tokens: list[dict], s: Settings) -> dict[str, dict[str, np.ndarray]]:
    """Per task: rows (indices into the concatenated tokens), labels y, groups, and whether it is a regression."""
    flat = []
    for t in tokens:
        for pos, tid in enumerate(t["ids"]):
            prev = t["ids"][pos - 1] if pos else None
            flat.append((t["context"], pos, tid, prev, t["entity"][pos], t["attribute"][pos]))
    common = {x for x, _ in Counter(f[2] for f in flat).most_common(s.top_tokens)}
    common_prev = {x for x, _ in Counter(f[3] for f in flat if f[3] is not None).most_common(s.top_tokens)}
    top_attr = {x for x, _ in Counter(f[5] for f in flat if f[5] is not None).most_common(s.attribute_classes)}
    picks = {
        "token": [(i, f[2], f[0]) for i, f in enumerate(flat) if f[2] in common],
        "previous_token": [(i, f[3], f[0]) for i, f in enumerate(flat) if f[3] in common_prev],
        "position": [(i, f[1], f[0]) for i, f in enumerate(flat)],
        "entity": [(i, int(f[4] is not None), f[0]) for i, f in enumerate(flat) if f[1] > 0],
        "attribute": [(i, f[5], f[4]) for i, f in enumerate(flat) if f[5] in top_attr],
    }
    out = {}
    for task, chosen in picks.items():
        if not chosen:
            continue
        index, y, groups = zip(*chosen)
        y = (
            np.asarray(y, dtype=np.float64)
            if task == "position"
            else np.unique(np.asarray(y, dtype=str), return_inverse=True)[1]
        )
        out[task] = {"rows": np.asarray(index), "y": y, "groups": np.asarray([str(g) for g in groups])}
    return out


def decode(
    x: np.ndarray, y: np.ndarray, splits, *, regress: bool, c: float, seed: int, resamples: int
) -> dict[str, Any]:
    """Out-of-fold decodability of y from x: accuracy (mean of per-item correctness, bootstrap CI) for classes,
    R^2 (bootstrap CI) for a number."""
    if regress:
        pred = probe_predictions(x, y, splits, kind="regress", c=c)
        return r2_with_ci(y, pred, seed, resamples)
    pred = probe_predictions(x, y, splits, kind="classify", c=c, seed=seed)
    return stat((pred == y).astype(float).tolist(), seed, resamples)


def probe_task(feats: dict[str, np.ndarray], task: dict[str, np.ndarray], regress: bool, s: Settings,
               label: str) -> dict[str, Any]:  # fmt: skip
    """Every feature set of `feats` (embedding, keys L, values L) decoded for one task, with the shuffled-label
    control on the same rows and folds. Returns {feature: {"probe": ..., "control": ...}} plus the chance level."""
    rows, y, groups = task["rows"], task["y"], task["groups"]
    splits = folds(groups, s.cv_folds)
    shuffled = np.random.default_rng(stat_seed(s.seed, label, "shuffle")).permutation(y)
    out: dict[str, Any] = {}
    for name, x in feats.items():
        seed = stat_seed(s.seed, label, name)
        out[name] = {
            "probe": decode(x[rows], y, splits, regress=regress, c=s.probe_c, seed=seed,
                            resamples=s.bootstrap_resamples),
            "control": decode(x[rows], shuffled, splits, regress=regress, c=s.probe_c, seed=seed,
                              resamples=s.bootstrap_resamples),
        }  # fmt: skip
    if regress:
        out["chance"] = 0.0
    else:
        out["chance"] = float(np.bincount(y).max() / len(y))
    out["n"] = len(y)
    out["classes"] = None if regress else int(len(np.unique(y)))
    return out


# ------------------------------------------------------------------------------------------------ run
def run(settings: Settings, command: str = NAME) -> dict[str, Any]:
    s = settings
    run_ = Run(NAME, s)
    run_.check()
    rows, who = contexts(s.n_contexts)
    run_.start()
    numbers: dict[str, Any] = {}
    records: dict[str, Any] = {}
    depths: dict[str, list[float]] = {}
    for mi, spec in enumerate(s.models):
        loaded = load_model(spec)
        label = f"{mi}:{spec.name}"
        records[label] = model_record(loaded)
        depths[label] = relative_depth(loaded.geometry.num_layers)
        cached: dict[str, Any] = {}

        def compute(key: str, loaded=loaded, cached=cached, label=label) -> dict[str, Any]:
            if not cached:
                tokens = token_rows(loaded, rows, who, s.attribute_relation)
                cached["feats"] = features(loaded, tokens)
                cached["tasks"] = task_labels(tokens, s)
            task = key.split("-", 1)[1]
            if task not in cached["tasks"]:
                return {"skipped": f"no tokens carry a {task} label in these contexts"}
            return probe_task(cached["feats"], cached["tasks"][task], task == "position", s, f"{label}/{task}")

        keys = [f"model{mi}-{task}" for task in TASKS]
        units = run_.units(keys, compute, f"probes of {spec.name}")
        numbers[label] = {task: units[f"model{mi}-{task}"] for task in TASKS}
        del loaded, cached
    report = build_report(s, numbers, depths, run_, command)
    return run_.finish(
        numbers, records, report,
        extra={"control": "the same probe with shuffled labels (same rows, same folds); the token embeddings as "
                          "the floor", "relative_depth": depths, "tasks": list(TASKS)},
    )  # fmt: skip


def layer_curve(per: dict[str, Any], kind: str, n_layers: int, which: str = "probe") -> list[dict]:
    return [per[f"{kind} {layer}"][which] for layer in range(n_layers)]


def build_report(s: Settings, numbers: dict, depths: dict, run_: Run, command: str) -> Report:
    report = Report("Cache archaeology: what the layers' keys and values encode", command)
    report.section(
        "What was measured",
        f"{s.n_contexts} facts contexts (test split) read by each model. Per token and layer, linear probes "
        f"(standardised features; logistic regression with C={s.probe_c:g}, ridge for position) on the keys with "
        f"RoPE undone and on the values (heads concatenated), {s.cv_folds}-fold cross-validation grouped by "
        "context (the attribute: by person). Labels: current token id and previous token id (the "
        f"{s.top_tokens} most frequent ids), absolute position (R^2), part of a person's name (binary), and the "
        f"{s.attribute_relation} of that person ({s.attribute_classes} most frequent values; tokens of names "
        "only). Controls: shuffled labels on the same rows and folds; the token embeddings (input layer) as the "
        "floor. CIs: percentile bootstrap over tokens.",
    )
    metric = {t: ("R^2" if t == "position" else "accuracy") for t in TASKS}
    table = []
    for task in TASKS:
        series = []
        refs: dict[str, float | None] = {}
        for label, per_model in numbers.items():
            per = per_model[task]
            if "skipped" in per:
                continue
            n_layers = len(depths[label])
            for kind in KINDS:
                curve = layer_curve(per, kind, n_layers)
                series.append(Series(f"{label} {kind}", depths[label], [c["mean"] for c in curve],
                                     [c["ci95"][0] if c["ci95"] else None for c in curve],
                                     [c["ci95"][1] if c["ci95"] else None for c in curve]))  # fmt: skip
            control = layer_curve(per, "values", n_layers, "control")
            series.append(Series(f"{label} values, shuffled labels", depths[label], [c["mean"] for c in control]))
            refs[f"{label} embedding floor"] = per["embedding"]["probe"]["mean"]
            best = max(((kind, layer) for kind in KINDS for layer in range(n_layers)),
                       key=lambda kl: per[f"{kl[0]} {kl[1]}"]["probe"]["mean"] or -1e9)  # fmt: skip
            b = per[f"{best[0]} {best[1]}"]
            table.append([task, label, f"{best[0]} {best[1]} (depth {depths[label][best[1]]:.2f})",
                          fmt_stat(b["probe"]), fmt_stat(b["control"]), fmt_stat(per["embedding"]["probe"]),
                          f"{per['chance']:.3f}", per["n"]])  # fmt: skip
        if series:
            png = line_plot(run_.path(f"{task}.png"), series, title=f"{task}: decodability vs relative depth",
                            xlabel="relative layer depth", ylabel=metric[task], references=refs)  # fmt: skip
            report.plot(
                f"{task} ({metric[task]})", png,
                f"Probe {metric[task]} per layer (keys RoPE undone, values), the shuffled-label control on the "
                "values, and the embedding floor per model (horizontal lines).",
            )  # fmt: skip
    report.section(
        "Finding",
        "Best layer per label and model, against its shuffled-label control, the embedding floor and the majority-"
        "class rate (chance):\n\n"
        + markdown_table(
            ["label", "model", "best layer", "probe", "shuffled control", "embedding floor", "chance", "tokens"],
            table,
        )  # fmt: skip
        + "\nA layer encodes a label (linearly) where its probe's CI sits above both the shuffled control's and "
        "the chance level; above the embedding floor means more than the token itself gives.",
    )
    report.section(
        "What the numbers do not show",
        "- Linear decodability only: a label a non-linear read-out could recover, or that attention combines "
        "across tokens, can be missed; a decodable label need not be used by the model.\n"
        "- Token-id labels cover the most frequent ids only; the attribute is decoded from the tokens of a name, "
        "whose context may state it, so it mixes 'the model knows the person' with 'the text said so earlier'.\n"
        "- One corpus of synthetic facts contexts; CIs resample tokens, which are not independent within a "
        "context (they are too narrow); folds are grouped, so the probes never saw the test contexts.",
    )
    return report
