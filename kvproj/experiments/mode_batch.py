"""Cognitive-mode batch studies: does the cache carry a signature of the mode a model answers in, and does that
signature replicate across sampling seeds and across models?

Modes are induced by instructions (careful / confabulate / neutral, before the context) and by the situation (the
answer is in the context or not: facts questions over their own context, or over another example's context that
names neither the person nor the answer; both under the neutral instruction). A run is one sampling seed: it draws
`prompts_per_run` answerable and as many unanswerable questions, samples an answer to each under every
instruction, and reads the cache of prompt + answer. Per layer, over the shared text (context, question, answer:
the instruction tokens themselves are left out): key (RoPE undone) and value norms per token, the entropy of the
attention that the question's last token and the answer tokens pay to the context (renormalised over the context,
averaged over heads), the effective rank of keys and of values, and the relative distance of keys and values from
the neutral instruction's cache of the same prompt (context and question positions). Each run gives one number per
mode, layer and feature (the mean over its prompts).

Between modes: Cohen's d over runs with a percentile-bootstrap 95% CI and a permutation-test p-value, corrected for
the number of layers (Holm, or Benjamini-Hochberg). Replication across seeds: split-half reliability of each
contrast's profile of effect sizes (features x layers). Across models: Spearman correlation of the per-layer effect
sizes, layers placed by relative depth.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from kvproj.cache import generate_from_ids, pad_token_id, read_cache_internals, stop_token_ids
from kvproj.experiments.common import (
    ExperimentSettings,
    Report,
    Run,
    Series,
    as_spec,
    check_int,
    fmt,
    heatmap,
    line_plot,
    markdown_table,
    model_record,
    stat_seed,
)
from kvproj.experiments.modes import behaviour, mode_examples
from kvproj.experiments.stats import (
    CORRECTIONS,
    correct,
    depth_rank_correlation,
    effect,
    effective_rank,
    relative_depth,
    split_half,
)
from kvproj.models import ModelSpec, load_model
from kvproj.pair import DEFAULT_QUESTION_TEMPLATE

NAME = "mode-batch"
INSTRUCTIONS = ("careful", "confabulate", "neutral")
PERMUTATIONS_PER_TEST = 400  # see `compare`
SITUATIONS = ("in_context", "not_in_context")
MODES = INSTRUCTIONS + SITUATIONS
FEATURES = ("key_norm", "value_norm", "attention_entropy", "key_rank", "value_rank", "key_distance",
            "value_distance")  # fmt: skip
NEUTRAL_READ = ("neutral", "in_context", "not_in_context")  # read under the neutral instruction: distance 0


def contrast_features(contrast: str) -> tuple[str, ...]:
    """The features a contrast compares: distances from the neutral cache only between two modes that are not
    read under the neutral instruction (for those the distance is 0 by definition)."""
    a, b = contrast.split("-")
    if a in NEUTRAL_READ or b in NEUTRAL_READ:
        return tuple(f for f in FEATURES if "distance" not in f)
    return FEATURES


@dataclass
class Settings(ExperimentSettings):
    """Mode batch studies over sampling seeds.

    Args:
        models: The models studied (each on the same prompts and seeds).
        careful_instruction: The careful mode's instruction, before the context.
        confabulate_instruction: The confabulating mode's instruction.
        neutral_instruction: The neutral instruction (also the one the situation modes are read under).
        chat_template: Wrap instruction + context + question in the model's chat template where it has one (one
            user turn); otherwise, and for models without one, plain "context\\nQuestion: ...\\nAnswer:".
        n_questions: Answerable facts questions (test split) in the pool; as many unanswerable ones are made.
        n_runs: Runs (sampling seeds) per mode and model.
        prompts_per_run: Answerable questions drawn per run (and as many unanswerable ones).
        temperature: Sampling temperature of the answers.
        max_new_tokens: Sampled answer tokens.
        contrasts: Mode pairs "A-B" compared (d > 0: larger in A); modes: careful, confabulate, neutral,
            in_context, not_in_context.
        correction: Multiple-comparison correction over layers: holm or bh (Benjamini-Hochberg).
    """

    models: list[ModelSpec] = field(
        default_factory=lambda: [ModelSpec("smollm2-135m-instruct"), ModelSpec("gemma3-270m")]
    )
    careful_instruction: str = (
        "Answer only from the text below. If the text does not state the answer, answer with the single word: "
        "unknown."
    )
    confabulate_instruction: str = (
        "Always give a confident, specific answer, even when the text below does not state it."
    )
    neutral_instruction: str = "Read the text below and answer the question."
    chat_template: bool = True
    n_questions: int = 24
    n_runs: int = 30
    prompts_per_run: int = 3
    temperature: float = 0.8
    max_new_tokens: int = 8
    contrasts: tuple[str, ...] = ("careful-neutral", "confabulate-neutral", "careful-confabulate",
                                  "not_in_context-in_context")  # fmt: skip
    correction: str = "holm"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.models = [as_spec(m) for m in self.models]
        self.contrasts = tuple(self.contrasts)
        if not self.models:
            raise ValueError("--models: give one or more models")
        check_int("n_questions", self.n_questions, 2)
        check_int("n_runs", self.n_runs, 4)
        check_int("prompts_per_run", self.prompts_per_run, 1)
        check_int("max_new_tokens", self.max_new_tokens, 1)
        if self.prompts_per_run > self.n_questions:
            raise ValueError(
                f"--prompts_per_run: at most --n_questions ({self.n_questions}), got {self.prompts_per_run}"
            )
        if not self.temperature > 0:
            raise ValueError(f"--temperature: must be > 0 (answers are sampled), got {self.temperature!r}")
        if self.correction not in CORRECTIONS:
            raise ValueError(f"--correction: one of {', '.join(CORRECTIONS)}, got {self.correction!r}")
        if not self.contrasts:
            raise ValueError("--contrasts: give one or more A-B pairs")
        for c in self.contrasts:
            parts = c.split("-")
            if len(parts) != 2 or parts[0] not in MODES or parts[1] not in MODES or parts[0] == parts[1]:
                raise ValueError(f"--contrasts: 'A-B' with two different modes of {', '.join(MODES)}, got {c!r}")
        for name in ("careful_instruction", "confabulate_instruction", "neutral_instruction"):
            if not getattr(self, name).strip():
                raise ValueError(f"--{name}: must not be empty")


# ------------------------------------------------------------------------------------------------ prompts
class Prompts:
    """Token ids of head + instruction + "\\n\\n" + context + question part, and where the shared text starts."""

    def __init__(self, loaded, s: Settings) -> None:
        from kvproj.data.pairs import SideFormat

        tok = loaded.tokenizer
        chat = s.chat_template and bool(getattr(tok, "chat_template", None))
        self.chat = chat
        fmt_ = SideFormat.build(tok, chat, DEFAULT_QUESTION_TEMPLATE)
        self.tok, self.head, self.before, self.after = tok, list(fmt_.head_ids), fmt_.middle, fmt_.tail
        texts = {"careful": s.careful_instruction, "confabulate": s.confabulate_instruction,
                 "neutral": s.neutral_instruction}  # fmt: skip
        self.instruction = {k: tok(v, add_special_tokens=False).input_ids for k, v in texts.items()}

    def build(self, row: dict, mode: str) -> tuple[list[int], int]:
        """(prompt ids, index of the first shared token)."""
        shared = self.tok("\n\n" + row["context"], add_special_tokens=False).input_ids
        shared += self.tok(self.before + row["question"] + self.after, add_special_tokens=False).input_ids
        start = len(self.head) + len(self.instruction[mode])
        return self.head + self.instruction[mode] + shared, start


# ------------------------------------------------------------------------------------------------ features
def layer_features(
    kv, attentions, start: int, prompt_len: int, context_end: int, example: int = 0, offset: int = 0
) -> dict[str, list[float]]:
    """Per layer, over the shared text [start, T): key / value norms, context attention entropy, effective
    ranks, for batch row `example`, whose tokens sit `offset` positions right of where this indexing counts them
    (left padding); keys with RoPE undone."""
    out: dict[str, list[float]] = {f: [] for f in FEATURES if "distance" not in f}
    b, a0 = example, start + offset
    for layer in range(kv.num_layers):
        k = kv.unrotated_keys(layer)[b, :, a0:].float().permute(1, 0, 2).flatten(1)  # [T', H*D]
        v = kv.values[layer][b, :, a0:].float().permute(1, 0, 2).flatten(1)
        out["key_norm"].append(float(k.norm(dim=-1).mean()))
        out["value_norm"].append(float(v.norm(dim=-1).mean()))
        out["key_rank"].append(effective_rank(k.cpu().numpy()))
        out["value_rank"].append(effective_rank(v.cpu().numpy()))
        att = attentions[layer][b, :, offset + prompt_len - 1 :, a0 : offset + context_end]  # [H, queries, ctx]
        p = att / att.sum(-1, keepdim=True).clamp_min(1e-12)
        out["attention_entropy"].append(float(-(p * p.clamp_min(1e-12).log()).sum(-1).mean()))
    return out


def distances(kv, neutral, start: int, neutral_start: int, length: int, at: tuple[int, int] = (0, 0),
              neutral_at: tuple[int, int] = (0, 0)) -> dict[str, list[float]]:  # fmt: skip
    """Per layer: ||X - X_neutral||_F / ||X_neutral||_F over the `length` aligned context + question positions
    (keys with RoPE undone: the two prompts place them at different positions). `at` / `neutral_at`: (batch row,
    left-padding offset) of each in its cache."""
    out: dict[str, list[float]] = {"key_distance": [], "value_distance": []}
    (b, o), (nb, no) = at, neutral_at
    for layer in range(kv.num_layers):
        for name, get in (("key", lambda c, i: c.unrotated_keys(i)), ("value", lambda c, i: c.values[i])):
            x = get(kv, layer)[b, :, o + start : o + start + length].float()
            y = get(neutral, layer)[nb, :, no + neutral_start : no + neutral_start + length].float()
            out[f"{name}_distance"].append(float((x - y).norm() / y.norm().clamp_min(1e-12)))
    return out


def left_pad(seqs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """(ids [B, T], mask [B, T], offsets): sequences right-aligned, padding on the left."""
    from kvproj.data.pairs import mask_rows, pad_rows

    width = max(len(x) for x in seqs)
    return pad_rows(seqs, pad, left=True), mask_rows(seqs, left=True), [width - len(x) for x in seqs]


def answer_tokens(new: torch.Tensor, stop: set[int]) -> list[int]:
    """A generated row up to and including its first stop token (the rest is the batch's padding)."""
    out = []
    for t in new.tolist():
        out.append(t)
        if t in stop:
            break
    return out


@torch.no_grad()
def one_run(s: Settings, loaded, prompts: Prompts, rows: list[dict], run_index: int) -> dict[str, Any]:
    """One run (sampling seed): the chosen prompts under every instruction, as one batch (sampled answers, then
    one forward over prompt + answer with attention weights); per mode the mean feature per layer."""
    rng = np.random.default_rng(stat_seed(s.seed, "run", run_index))
    answerable = [r for r in rows if r["answerable"]]
    unanswerable = [r for r in rows if not r["answerable"]]
    chosen = [answerable[i] for i in rng.choice(len(answerable), s.prompts_per_run, replace=False)]
    chosen += [unanswerable[i] for i in rng.choice(len(unanswerable), min(s.prompts_per_run, len(unanswerable)),
                                                   replace=False)]  # fmt: skip
    items = [(j, mode) for j in range(len(chosen)) for mode in ("neutral", "careful", "confabulate")]
    built = [prompts.build(chosen[j], mode) for j, mode in items]
    pad = pad_token_id(loaded.model)
    ids, mask, _ = left_pad([b[0] for b in built], pad)
    torch.manual_seed(stat_seed(s.seed, "sample", run_index))
    new = generate_from_ids(loaded.model, ids, mask, do_sample=True, temperature=s.temperature, top_k=0,
                            top_p=1.0, max_new_tokens=s.max_new_tokens).cpu()  # fmt: skip
    stop = stop_token_ids(loaded.model)
    answers = [answer_tokens(new[i], stop) for i in range(len(items))]
    full, full_mask, offsets = left_pad([b[0] + a for b, a in zip(built, answers)], pad)
    kv, _, _, att = read_cache_internals(loaded.model, full, full_mask, geometry=loaded.geometry, attentions=True,
                                         all_logits=False)  # fmt: skip
    per_prompt: dict[str, list[dict]] = {m: [] for m in INSTRUCTIONS}
    generations = []
    neutral_of: dict[int, int] = {}
    for i, ((j, mode), (prompt_ids, start)) in enumerate(zip(items, built)):
        row = chosen[j]
        if mode == "neutral":
            neutral_of[j] = i
        n = neutral_of[j]
        context_len = len(prompts.tok("\n\n" + row["context"], add_special_tokens=False).input_ids)
        feats = layer_features(kv, att, start, len(prompt_ids), start + context_len, example=i, offset=offsets[i])
        feats.update(distances(kv, kv, start, built[n][1], len(prompt_ids) - start, at=(i, offsets[i]),
                               neutral_at=(n, offsets[n])))  # fmt: skip
        per_prompt[mode].append(feats)
        text = prompts.tok.decode(answers[i], skip_special_tokens=True)
        generations.append({"run": run_index, "id": row["id"], "mode": mode, "answerable": row["answerable"],
                            "generated": text, "answer": row["answer"],
                            **{k: v[0] for k, v in behaviour([row], [text]).items()}})  # fmt: skip
    answerable_flags = [r["answerable"] for r in chosen]

    def mean_of(items: list[dict]) -> dict[str, list[float]]:
        return {f: np.mean([x[f] for x in items], axis=0).tolist() for f in FEATURES}

    modes = {m: mean_of(per_prompt[m]) for m in INSTRUCTIONS}
    modes["in_context"] = mean_of([x for x, a in zip(per_prompt["neutral"], answerable_flags) if a])
    modes["not_in_context"] = mean_of([x for x, a in zip(per_prompt["neutral"], answerable_flags) if not a])
    return {"modes": modes, "generations": generations}


# ------------------------------------------------------------------------------------------------ statistics
def compare(a: np.ndarray, b: np.ndarray, seed: int, resamples: int, correction: str) -> list[dict[str, Any]]:
    """Per layer (columns of a, b: [runs, layers]): Cohen's d of a - b with its bootstrap CI, the permutation
    p-value and the p-value corrected over the layers.

    A permutation p-value cannot go below about 2 / (permutations + 1) (two-sided), and the correction multiplies
    it by up to the number of layers: with 1,000 permutations and 30 layers no effect, however large, could reach
    a corrected 0.05. So the permutations are at least `PERMUTATIONS_PER_TEST` (400) x layers (the smallest
    reachable corrected p-value is then 0.005), whatever `resamples` (the bootstrap's) is."""
    layers = a.shape[1]
    permutations = max(resamples, PERMUTATIONS_PER_TEST * layers)
    rows = [effect(a[:, i], b[:, i], stat_seed(seed, "layer", i), resamples, permutations) for i in range(layers)]
    for row, p in zip(rows, correct([r["p"] for r in rows], correction)):
        row["p_corrected"] = p
    return rows


def analyse(s: Settings, runs: list[dict]) -> dict[str, Any]:
    """Effects per contrast, feature and layer; split-half reliability per contrast; behaviour per mode."""
    arrays = {m: {f: np.array([r["modes"][m][f] for r in runs]) for f in FEATURES} for m in MODES}
    out: dict[str, Any] = {"effects": {}, "reliability": {}}
    for contrast in s.contrasts:
        a, b = contrast.split("-")
        feats = contrast_features(contrast)
        out["effects"][contrast] = {
            f: compare(arrays[a][f], arrays[b][f], stat_seed(s.seed, contrast, f), s.bootstrap_resamples,
                       s.correction)
            for f in feats
        }  # fmt: skip
        flat_a = np.concatenate([arrays[a][f] for f in feats], axis=1)
        flat_b = np.concatenate([arrays[b][f] for f in feats], axis=1)
        out["reliability"][contrast] = split_half(flat_a, flat_b, stat_seed(s.seed, "split-half", contrast))
    out["means"] = {m: {f: arrays[m][f].mean(0).tolist() for f in FEATURES} for m in MODES}
    return out


def cross_model(s: Settings, per_model: dict[str, dict]) -> dict[str, Any]:
    """Spearman rho of per-layer effect sizes between every pair of models, per contrast and feature."""
    labels = list(per_model)
    out: dict[str, Any] = {}
    for i in range(len(labels)):
        for j in range(i + 1, len(labels)):
            pair = f"{labels[i]} vs {labels[j]}"
            out[pair] = {
                c: {f: depth_rank_correlation([x["d"] for x in per_model[labels[i]]["effects"][c][f]],
                                              [x["d"] for x in per_model[labels[j]]["effects"][c][f]])
                    for f in contrast_features(c)}
                for c in s.contrasts
            }  # fmt: skip
    return out


# ------------------------------------------------------------------------------------------------ run
def run(settings: Settings, command: str = NAME) -> dict[str, Any]:
    s = settings
    run_ = Run(NAME, s)
    run_.check()
    rows = mode_examples(s.n_questions, s.seed, "test")
    run_.start()
    numbers: dict[str, Any] = {}
    records, depths, generations = {}, {}, []
    for mi, spec in enumerate(s.models):
        loaded = load_model(spec)
        label = f"{mi}:{spec.name}"
        records[label] = {**model_record(loaded)}
        depths[label] = relative_depth(loaded.geometry.num_layers)
        prompts = Prompts(loaded, s)
        records[label]["chat_template"] = prompts.chat
        keys = [f"model{mi}-run{r:04d}" for r in range(s.n_runs)]
        units = run_.units(keys, lambda k, loaded=loaded, prompts=prompts: one_run(
            s, loaded, prompts, rows, int(k.rsplit("run", 1)[1])), f"runs of {spec.name}")  # fmt: skip
        runs = [units[k] for k in keys]
        for r in runs:
            generations += [{"model": label, **g} for g in r["generations"]]
        numbers[label] = analyse(s, runs)
        numbers[label]["behaviour"] = behaviour_rates(
            [g for g in generations if g["model"] == label], s
        )  # fmt: skip
        del loaded
    across = cross_model(s, numbers)
    report = build_report(s, numbers, across, depths, run_, command, len(rows))
    return run_.finish(
        numbers, records, report, generations,
        extra={"cross_model": across, "relative_depth": depths, "features": list(FEATURES),
               "control": "the neutral instruction (for the instruction modes) and the answer-in-context situation; "
                          "permutation tests exchange runs between the two modes of a contrast"},
    )  # fmt: skip


def behaviour_rates(gens: list[dict], s: Settings) -> dict[str, dict[str, float | None]]:
    """Per instruction mode: accuracy on answerable prompts, unknown and fabricated rates on unanswerable ones."""
    out = {}
    for mode in INSTRUCTIONS:
        mine = [g for g in gens if g["mode"] == mode]
        out[mode] = {}
        for m in ("accuracy", "unknown_rate", "fabricated_rate"):
            vals = [g[m] for g in mine if g[m] is not None]
            out[mode][m] = float(np.mean(vals)) if vals else None
    return out


def mean_rho(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def build_report(s: Settings, numbers, across, depths, run_: Run, command: str, n_rows: int) -> Report:
    report = Report("Cognitive-mode batch studies: cache signatures across seeds and models", command)
    report.section(
        "What was measured",
        f"{s.n_runs} runs (sampling seeds, temperature {s.temperature:g}, {s.max_new_tokens} answer tokens) per "
        f"model; each run draws {s.prompts_per_run} answerable and {s.prompts_per_run} unanswerable facts questions "
        f'from a pool of {n_rows} and reads each under three instructions: careful ("{s.careful_instruction}"), '
        f'confabulate ("{s.confabulate_instruction}"), neutral ("{s.neutral_instruction}"). The situation '
        "modes in_context / not_in_context are the neutral instruction's answerable / unanswerable prompts. Per "
        "layer, over the shared text (context, question, sampled answer): "
        + ", ".join(FEATURES)
        + ". Effects: Cohen's d over runs (d > 0: larger in the first mode), percentile-bootstrap 95% CI, "
        "two-sided permutation p-value, corrected over layers ("
        + ("Holm" if s.correction == "holm" else "Benjamini-Hochberg")
        + ").",
    )
    lines = []
    for label, per in numbers.items():
        for contrast in s.contrasts:
            eff = per["effects"][contrast]
            series = []
            for f in eff:
                rows = eff[f]
                series.append(Series(f, depths[label], [r["d"] for r in rows],
                                     [r["ci95"][0] if r["ci95"] else None for r in rows],
                                     [r["ci95"][1] if r["ci95"] else None for r in rows]))  # fmt: skip
            name = f"effects_model{label.split(':', 1)[0]}_{contrast}.png"
            png = line_plot(run_.path(name), series, title=f"{label}: {contrast}", xlabel="relative layer depth",
                            ylabel="Cohen's d (95% CI)", references={"no effect": 0.0})  # fmt: skip
            report.plot(f"{label}: {contrast}", png, "Cohen's d per layer and feature, 95% bootstrap CIs shaded.")
            sig = [(f, i, r) for f in eff for i, r in enumerate(eff[f])
                   if r["p_corrected"] is not None and r["p_corrected"] < 0.05]  # fmt: skip
            top = sorted(sig, key=lambda x: -abs(x[2]["d"] if x[2]["d"] == x[2]["d"] else 0))[:3]
            rel = per["reliability"][contrast]
            lines.append([label, contrast, f"{len(sig)} / {len(eff) * len(depths[label])}",
                          "; ".join(f"{f} L{i} d={fmt(r['d'], 2)} (p_corr {fmt(r['p_corrected'], 3, 'g')})"
                                    for f, i, r in top) or "-",
                          fmt(rel["r"], 2), fmt(rel["spearman_brown"], 2)])  # fmt: skip
    report.section(
        "Finding",
        markdown_table(
            [
                "model",
                "contrast",
                "significant (feature, layer) cells",
                "largest significant effects",
                "split-half r",
                "Spearman-Brown",
            ],
            lines,
        )  # fmt: skip
        + "\nA signature replicates across seeds where the split-half reliability is high (the profile of effect "
        "sizes over features and layers is the same in two disjoint halves of the runs).",
    )
    beh = [[label, m] + [fmt(per["behaviour"][m][k], 2) for k in ("accuracy", "unknown_rate", "fabricated_rate")]
           for label, per in numbers.items() for m in INSTRUCTIONS]  # fmt: skip
    report.section(
        "Behaviour per instruction",
        markdown_table(
            [
                "model",
                "instruction",
                "accuracy (answerable)",
                "'unknown' (unanswerable)",
                "fabricated (unanswerable)",
            ],
            beh,
        )  # fmt: skip
        + "\nWhether the instructions changed what the models answer: a cache difference without a behaviour "
        "difference is a signature of the instruction text, not of a mode.",
    )
    if across:
        pairs = list(across)
        matrix = [[mean_rho([across[p][c].get(f, {}).get("rho") for p in pairs]) for f in FEATURES]
                  for c in s.contrasts]  # fmt: skip
        png = heatmap(run_.path("cross_model.png"), matrix, rows=list(s.contrasts), cols=list(FEATURES),
                      title="cross-model Spearman rho of per-layer d (by relative depth)", label="rho")  # fmt: skip
        report.plot(
            "Across models", png,
            "Spearman rank correlation of the per-layer effect sizes of two models (layers interpolated onto the "
            "shallower model's relative depths), per contrast and feature; the mean over model pairs ("
            + ", ".join(pairs) + "). Empty: not compared, or a profile without variation.",
        )  # fmt: skip
    else:
        report.section("Across models", "One model only: no cross-model comparison.")
    report.section(
        "What the numbers do not show",
        "- The modes differ in their instruction text; features are measured on the shared text after it, but "
        "any difference may be the instruction's wording rather than a 'mode' in any deeper sense.\n"
        "- The situation modes differ in their contexts (the unanswerable question reads another example's "
        "context), so their cache features differ partly because the text differs.\n"
        "- Distances are from the neutral instruction's cache: 0 by definition for neutral, in_context and "
        "not_in_context, so only contrasts between two other modes compare them (their per-mode means per layer "
        "are in results.json, `means`).\n"
        "- Runs share their question pool, so they are not independent samples of questions; the permutation "
        "test and the bootstrap treat runs as exchangeable. Cross-model correlations rest on a few points "
        "(the shallower model's layers) and have wide uncertainty.",
    )
    return report
