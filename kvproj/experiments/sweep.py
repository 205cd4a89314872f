"""The facts task under many partial caches: what the layer sweep and partial transfer run.

For each batch of facts examples (one resumable unit): the floor (the target's head alone), the oracle (the target
reading the context), and for each transferred cache - `projected` (the exported projector's output) and, as the
reference, `same_model` (the target's own cache of the context) - every condition: a `Selection` of that cache laid
over the donor cache of another example (`kvproj.experiments.mixing`). Scored with the facts metrics.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from kvproj.experiments.common import ExperimentSettings, Run, check_int, stat, stat_seed
from kvproj.experiments.mixing import (
    BatchScorer,
    Selection,
    byte_fraction,
    context_spans,
    derangement_for,
    donor_cache,
    mix,
    token_mask,
)
from kvproj.losses import reconstruction

log = logging.getLogger(__name__)
METRICS = ("exact_match", "answer_nll", "kl_to_oracle")
SOURCES = ("projected", "same_model")


@dataclass
class FactsSweepSettings(ExperimentSettings):
    """Options of the experiments that score partial caches on the facts task.

    Args:
        projector: Exported projector folder (checkpoints/RUN/projector, written by `python -m kvproj fit`); it
            names the source and target models.
        reference: Also run every condition on the target's own cache of the context (same-model transfer):
            the reference for what the projector reaches.
        eval_file: JSONL of {context, question, answer} ("narrative" / "genres": the bundled files); default: the facts
            split of the projector's run.
        split: Facts split when no eval_file is given (test, test_in_distribution, val).
        limit: Examples scored (the first N).
        batch_size: Examples per batch (the shuffled control draws its donors within a batch).
        max_new_tokens: Greedy tokens generated per answer.
        generate: Generate answers (exact match); false scores likelihoods only (answer NLL, KL), much faster.
        device: Override the models' device (cpu, cuda, auto).
    """

    projector: str = "checkpoints/default/projector"
    reference: bool = True
    eval_file: str | None = None
    split: str = "test"
    limit: int = 32
    batch_size: int = 8
    max_new_tokens: int = 8
    generate: bool = True
    device: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("limit", self.limit, 2)
        check_int("batch_size", self.batch_size, 2)
        check_int("max_new_tokens", self.max_new_tokens, 1)
        if self.split not in ("test", "test_in_distribution", "val"):
            raise ValueError(f"--split: test, test_in_distribution or val, got {self.split!r}")


def missing_projector_advice(path: str) -> str:
    return (
        f"--projector {path}: no exported projector folder there. Train one first, e.g. `python -m kvproj fit` "
        "(the default SmolLM2-135M -> Gemma-3-270m run, about 25 minutes on 2 CPU cores; exports "
        "checkpoints/default/projector) or `python -m kvproj fit --config smoke` (tiny models, seconds; exports "
        "checkpoints/smoke/projector), or pass --projector DIR"
    )


def prepare(name: str, s: FactsSweepSettings):
    """Cheap checks, then the examples and the loaded transfer: (run, examples, trained)."""
    from pathlib import Path

    from kvproj.eval.run import load_examples
    from kvproj.pair import load_transfer, read_transfer

    run_ = Run(name, s)
    run_.check()
    if not Path(s.projector).is_dir():
        raise FileNotFoundError(missing_projector_advice(s.projector))
    config, _ = read_transfer(s.projector, s.device)
    data = config.get("data", {})
    examples = load_examples("facts", s.eval_file, s.split, data.get("facts"), s.limit, data.get("passages"))
    if len(examples) < 2:
        raise ValueError("--limit / --eval_file: the shuffled control needs at least 2 examples")
    trained = load_transfer(s.projector, device=s.device)
    return run_, examples, trained, config


def batches(examples: list[dict], batch_size: int) -> list[list[dict]]:
    """Batches of `batch_size`; a last batch of one example joins the one before (a donor needs another)."""
    out = [examples[i : i + batch_size] for i in range(0, len(examples), batch_size)]
    if len(out) > 1 and len(out[-1]) < 2:
        out[-2] += out.pop()
    return out


@torch.no_grad()
def score_batch(
    s: FactsSweepSettings, trained, raw: list[dict], batch_index: int, selections: dict[str, Selection]
) -> dict[str, Any]:
    """One unit: floor, oracle, and every selection of every transferred cache, per example."""
    pair, codec = trained.pair, trained.codec
    device = pair.target.device
    batch = codec.collate([codec.encode(e, stream_index=i) for i, e in enumerate(raw)])
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    batch = pair.add_caches(batch, with_target_cache=False)
    scorer = BatchScorer(pair, batch, raw, s.max_new_tokens, s.generate)
    head_len = len(pair.target_format.head_ids)
    spans = [context_spans(e, codec) for e in raw]
    perm = derangement_for(len(raw), s.seed, batch_index)
    out: dict[str, Any] = {
        "ids": [str(e.get("id", i)) for i, e in enumerate(raw)],
        "floor": scorer.score(pair.head_only(len(raw))).to_dict(),
        "oracle": scorer.scored_oracle().to_dict(),
    }
    transferred = {
        "projected": lambda: trained.transfer(
            batch["source_cache"],
            batch["align_index"],
            batch["target_prefix_mask"],
            fallback=batch.get("target_head"),
        ),
        "same_model": lambda: scorer.oracle_cache,
    }
    for source in SOURCES if s.reference else SOURCES[:1]:
        kv = transferred[source]()
        if source == "projected":  # the per-layer cosines training logs (layers/val_cos_*), on these examples
            valid = batch["target_prefix_mask"].bool() & (batch["align_index"] >= 0)
            _, cos_k, cos_v = reconstruction(kv, scorer.oracle_cache, valid)
            out["cosine"] = {"keys": cos_k, "values": cos_v, "n": len(raw)}
        donor = donor_cache(kv, perm, head_len)
        out[source] = {}
        for cname, sel in selections.items():
            tokens = token_mask(sel, kv, head_len, spans)
            scored = scorer.score(mix(kv, donor, sel, tokens, head_len))
            scored.byte_fraction = byte_fraction(sel, kv.geometry, tokens, kv, head_len)
            out[source][cname] = scored.to_dict()
    return out


def run_sweep(
    run_: Run, s: FactsSweepSettings, trained, examples: list[dict], selections: dict[str, Selection]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Every batch (resumable), then the numbers: per source and condition, each metric with its 95% CI, the
    mean byte fraction; and the generation rows."""
    groups = batches(examples, s.batch_size)
    keys = [f"batch{i:04d}" for i in range(len(groups))]
    units = run_.units(
        keys, lambda k: score_batch(s, trained, groups[int(k[5:])], int(k[5:]), selections), "batches"
    )
    collected: dict[str, dict[str, dict[str, list]]] = {}
    rows: list[dict[str, Any]] = []

    def add(source: str, cname: str, scored: dict[str, Any], ids: list[str], group: list[dict]) -> None:
        slot = collected.setdefault(source, {}).setdefault(cname, {m: [] for m in (*METRICS, "byte_fraction")})
        for m in METRICS:
            slot[m] += scored[m]
        if scored.get("byte_fraction") is not None:
            slot["byte_fraction"] += scored["byte_fraction"]
        if s.generate:
            for i, e, g, c in zip(ids, group, scored["generated"], scored["exact_match"]):
                rows.append({"id": i, "source": source, "condition": cname, "generated": g, "answer": e["answer"],
                             "correct": bool(c)})  # fmt: skip

    for key, group in zip(keys, groups):
        u = units[key]
        add("target", "floor", u["floor"], u["ids"], group)
        add("target", "oracle", u["oracle"], u["ids"], group)
        for source in SOURCES:
            for cname, scored in u.get(source, {}).items():
                add(source, cname, scored, u["ids"], group)
    cos = [units[k]["cosine"] for k in keys if "cosine" in units[k]]
    numbers: dict[str, Any] = {}
    if cos:  # example-weighted mean per layer over batches
        total = sum(c["n"] for c in cos)
        numbers["projector_cosine"] = {
            part: [sum(c[part][x] * c["n"] for c in cos) / total for x in range(len(cos[0][part]))]
            for part in ("keys", "values")
        }
    for source, conds in collected.items():
        numbers[source] = {}
        for cname, values in conds.items():
            entry = {
                m: stat(values[m], stat_seed(s.seed, source, cname, m), s.bootstrap_resamples)
                for m in METRICS
                if s.generate or m != "exact_match"
            }
            if values["byte_fraction"]:
                entry["byte_fraction"] = sum(values["byte_fraction"]) / len(values["byte_fraction"])
            numbers[source][cname] = entry
    return numbers, rows


def transfer_record(trained, config: dict[str, Any]) -> dict[str, Any]:
    from kvproj.experiments.common import model_record

    return {
        "source": model_record(trained.pair.source),
        "target": model_record(trained.pair.target),
        "projector": {"path": str(trained.directory), "architecture": config.get("architecture"),
                      "global_step": config.get("global_step"), "layer_map": config.get("layer_map")},
    }  # fmt: skip


def mean_of(numbers: dict[str, Any], source: str, cname: str, metric: str) -> float | None:
    entry = numbers.get(source, {}).get(cname, {}).get(metric)
    return entry["mean"] if entry else None
