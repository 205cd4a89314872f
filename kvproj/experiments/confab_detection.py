"""Confabulation detection from cache signatures.

Facts questions whose answer is in the context and the same questions over another example's context (which names
neither the person nor the answer: the model must make the answer up, or say it does not know). Each model answers
greedily under one instruction; two labels: by construction (1 = the answer is not in the context) and by
correctness (1 = the generated answer is wrong: not the answer where it is in the context, anything but `unknown`
where it is not).

Per layer, linear probes (standardised features, logistic regression) on the cache of the prompt: keys (RoPE
undone) and values at the last prompt token and mean-pooled over the context, heads concatenated. Baselines on
the same folds: the hidden state of the same layer at the last prompt token (probe), and three one-number probes:
the entropy of the first answer token, the mean log-probability of the answer's tokens, the answer's length in
tokens. Cross-validation is grouped by question (a question and its unanswerable twin always share a fold), never
by sample. AUROC of the out-of-fold scores with a bootstrap 95% CI per layer and method, and the best layer.

Transfer (with `projector`): a probe trained on the projector's target model's own prefix caches (question stated
before the context, so the prefix holds it) is applied to the caches projected from the source model for the same
prompts, against the shuffled control (another prompt's projected cache).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from kvproj.cache import KVCache, generate_from_ids, read_cache_internals, stop_token_ids
from kvproj.callbacks.progress import loop_progress
from kvproj.experiments.common import (
    ExperimentSettings,
    Report,
    Run,
    Series,
    as_spec,
    check_int,
    fmt,
    line_plot,
    markdown_table,
    model_record,
    stat_seed,
)
from kvproj.experiments.modes import behaviour, is_unknown
from kvproj.experiments.stats import auroc, fit_probe, folds, probe_predictions, relative_depth
from kvproj.models import ModelSpec, load_model
from kvproj.pair import DEFAULT_QUESTION_TEMPLATE

NAME = "confab-detection"
LABELS = ("construction", "incorrect")
CACHE_METHODS = ("cache", "keys", "values")
BASELINES = ("first_token_entropy", "answer_logprob", "answer_length")


@dataclass
class Settings(ExperimentSettings):
    """Confabulation detection from cache signatures.

    Args:
        models: The models whose caches are probed.
        instruction: The instruction before the context (the same for every prompt).
        chat_template: Use the model's chat template where it has one (one user turn); else plain format.
        n_questions: Answerable facts questions (test split); as many unanswerable ones are made from them.
        max_new_tokens: Greedy answer tokens.
        cv_folds: Cross-validation folds, grouped by question.
        probe_c: Inverse regularisation strength of the logistic-regression probes.
        projector: Exported projector folder for the transfer test (null: no transfer test). Its target model
            is probed on its own caches and on the caches projected from its source.
        device: Override the projector's models' device (cpu, cuda, auto).
    """

    models: list[ModelSpec] = field(
        default_factory=lambda: [ModelSpec("smollm2-135m-instruct"), ModelSpec("gemma3-270m")]
    )
    instruction: str = "Read the text below and answer the question."
    chat_template: bool = True
    n_questions: int = 48
    max_new_tokens: int = 8
    cv_folds: int = 5
    probe_c: float = 0.1
    projector: str | None = None
    device: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.models = [as_spec(m) for m in self.models]
        if not self.models and not self.projector:
            raise ValueError("--models: give one or more models (or a --projector)")
        check_int("n_questions", self.n_questions, 4)
        check_int("max_new_tokens", self.max_new_tokens, 1)
        check_int("cv_folds", self.cv_folds, 2, 20)
        if not self.probe_c > 0:
            raise ValueError(f"--probe_c: must be > 0, got {self.probe_c!r}")


# ------------------------------------------------------------------------------------------------ features
def cache_features(kv: KVCache, last: int, context: slice | torch.Tensor, example: int = 0) -> dict[str, list]:
    """Per layer: keys (RoPE undone) and values at position `last` and mean-pooled over `context` (a slice, or a
    [T] 0/1 mask), heads concatenated. {"keys": [L][2*H*D], "values": [L][2*H*D]}."""
    out: dict[str, list] = {"keys": [], "values": []}
    for layer in range(kv.num_layers):
        for name, x in (("keys", kv.unrotated_keys(layer)), ("values", kv.values[layer])):
            x = x[example].float().permute(1, 0, 2).flatten(1)  # [T, H*D]
            if isinstance(context, slice):
                pooled = x[context].mean(0)
            else:
                w = context.float().to(x.device)
                pooled = (x * w[:, None]).sum(0) / w.sum().clamp_min(1)
            out[name].append(torch.cat([x[last], pooled]).cpu().numpy())
    return out


@torch.no_grad()
def read_examples(s: Settings, loaded, rows: list[dict]) -> dict[str, Any]:
    """Greedy answers, labels, per-layer cache and hidden-state features, and the one-number baselines."""
    from kvproj.data.pairs import SideFormat

    tok = loaded.tokenizer
    chat = s.chat_template and bool(getattr(tok, "chat_template", None))
    fmt_ = SideFormat.build(tok, chat, DEFAULT_QUESTION_TEMPLATE)
    head, instr = list(fmt_.head_ids), tok(s.instruction, add_special_tokens=False).input_ids
    feats: dict[str, list] = {"keys": [], "values": [], "hidden": []}
    base: dict[str, list] = {b: [] for b in BASELINES}
    labels: dict[str, list] = {"construction": [], "incorrect": []}
    gens = []
    stop = stop_token_ids(loaded.model) | ({tok.pad_token_id} - {None})  # the answer ends before these
    with loop_progress(len(rows), f"{NAME} {loaded.spec.name}: answers and caches", "prompts") as advance:
        for r in rows:
            context = tok("\n\n" + r["context"], add_special_tokens=False).input_ids
            question = tok(fmt_.middle + r["question"] + fmt_.tail, add_special_tokens=False).input_ids
            ids = head + instr + context + question
            start = len(head) + len(instr)
            prompt = torch.tensor([ids])
            new = generate_from_ids(loaded.model, prompt, max_new_tokens=s.max_new_tokens)[0].cpu()
            answer = []
            for t in new.tolist():
                if t in stop:
                    break
                answer.append(t)
            full = torch.cat([prompt[0], torch.tensor(answer, dtype=prompt.dtype)])[None]
            kv, logits, hidden, _ = read_cache_internals(loaded.model, full, geometry=loaded.geometry)
            last = len(ids) - 1
            f = cache_features(kv, last, slice(start, start + len(context)))
            feats["keys"].append(f["keys"])
            feats["values"].append(f["values"])
            feats["hidden"].append([h[0, last].float().cpu().numpy() for h in hidden[1:]])
            logp = F.log_softmax(logits[0].float(), -1)
            base["first_token_entropy"].append(float(-(logp[last].exp() * logp[last]).sum()))
            scored = [float(logp[last + i, t]) for i, t in enumerate(answer)]
            base["answer_logprob"].append(float(np.mean(scored)) if scored else 0.0)
            base["answer_length"].append(float(len(answer)))
            text = tok.decode(answer, skip_special_tokens=True)
            correct = bool(behaviour([r], [text])["accuracy"][0]) if r["answerable"] else is_unknown(text)
            labels["construction"].append(int(not r["answerable"]))
            labels["incorrect"].append(int(not correct))
            gens.append({"id": r["id"], "answerable": r["answerable"], "generated": text, "answer": r["answer"],
                         "correct": correct})  # fmt: skip
            advance()
    return {"feats": {k: np.asarray(v) for k, v in feats.items()},  # [N, L, F]
            "baselines": {k: np.asarray(v)[:, None] for k, v in base.items()},
            "labels": {k: np.asarray(v) for k, v in labels.items()}, "generations": gens, "chat": chat}  # fmt: skip


def confab_examples(n: int, seed: int) -> list[dict[str, Any]]:
    """n answerable facts questions (test split) and the same n questions over the contexts of n other test
    examples (each naming neither the person asked about nor the answer). The borrowed contexts are never the
    context of an answerable prompt, so a context's own features cannot carry the label across folds."""
    from kvproj.data.facts import FactsConfig, generate_splits

    pool = [e.to_dict() for e in generate_splits(FactsConfig(n_train_examples=1))["test"]]
    if len(pool) < 2 * n:
        raise ValueError(
            f"--n_questions: at most {len(pool) // 2} (the facts test split has {len(pool)} examples)"
        )
    asked, donors = pool[:n], pool[n : 2 * n]
    order = np.random.default_rng(seed).permutation(n)
    rows = [{**e, "answerable": True} for e in asked]
    for i, e in enumerate(asked):
        for shift in range(n):
            other = donors[order[(i + shift) % n]]
            if e["entity"] not in other["context"] and e["answer"] not in other["context"]:
                rows.append(
                    {**e, "id": f"{e['id']}-unanswerable", "context": other["context"], "answerable": False}
                )
                break
    return rows


def question_group(row: dict) -> str:
    return row["id"].removesuffix("-unanswerable")


def probe_auroc(x: np.ndarray, y: np.ndarray, splits, s: Settings, label: str) -> dict[str, Any]:
    """AUROC (bootstrap CI) of a probe's out-of-fold scores."""
    seed = stat_seed(s.seed, label)
    scores = probe_predictions(x, y, splits, kind="score", c=s.probe_c, seed=seed)
    return auroc(y, scores, seed, s.bootstrap_resamples)


def evaluate(s: Settings, data: dict[str, Any], groups: list[str], label_prefix: str) -> dict[str, Any]:
    """Per label: AUROC per layer of each cache method and the hidden-state probe, and of each baseline."""
    splits = folds(groups, s.cv_folds)
    n_layers = data["feats"]["keys"].shape[1]
    out: dict[str, Any] = {}
    for name, y in data["labels"].items():
        per: dict[str, Any] = {"positives": int(y.sum()), "n": len(y)}
        if len(set(y.tolist())) < 2:
            out[name] = {**per, "skipped": "one class only"}
            continue
        for method in (*CACHE_METHODS, "hidden"):
            per[method] = []
            for layer in range(n_layers):
                if method == "cache":
                    x = np.concatenate([data["feats"]["keys"][:, layer], data["feats"]["values"][:, layer]], 1)
                else:
                    x = data["feats"][method][:, layer]
                per[method].append(probe_auroc(x, y, splits, s, f"{label_prefix}/{name}/{method}/{layer}"))
        for b in BASELINES:
            per[b] = probe_auroc(data["baselines"][b], y, splits, s, f"{label_prefix}/{name}/{b}")
        best = max(range(n_layers), key=lambda i: per["cache"][i]["auroc"] or 0.0)
        per["best_layer"] = {"layer": best, "relative_depth": relative_depth(n_layers)[best], **per["cache"][best]}
        out[name] = per
    return out


# ------------------------------------------------------------------------------------------------ transfer
@torch.no_grad()
def transfer_test(s: Settings, rows: list[dict]) -> dict[str, Any]:
    """Probe trained on the target's own prefix caches (label by construction), applied to projected caches."""
    from kvproj.eval.facts import derangement
    from kvproj.pair import load_transfer

    trained = load_transfer(s.projector, device=s.device)
    pair, codec = trained.pair, trained.codec
    device = pair.target.device
    own, projected = {"keys": [], "values": []}, {"keys": [], "values": []}
    y = np.array([int(not r["answerable"]) for r in rows])
    batch_size = 8
    for i in range(0, len(rows), batch_size):
        chunk = rows[i : i + batch_size]
        examples = [
            {**r, "context": f"{s.instruction}\n\nQuestion: {r['question']}\n\n{r['context']}"} for r in chunk
        ]
        batch = codec.collate([codec.encode(e, stream_index=j) for j, e in enumerate(examples)])
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        batch = pair.add_caches(batch, with_target_cache=True)
        moved = trained.transfer(batch["source_cache"], batch["align_index"], batch["target_prefix_mask"],
                                 fallback=batch.get("target_head"))  # fmt: skip
        for store, kv in ((own, batch["target_cache"]), (projected, moved)):
            for b in range(kv.batch_size):
                f = cache_features(kv, kv.length - 1, kv.attention_mask[b], example=b)
                store["keys"].append(f["keys"])
                store["values"].append(f["values"])
    own = {k: np.asarray(v) for k, v in own.items()}
    projected = {k: np.asarray(v) for k, v in projected.items()}
    perm = np.asarray(derangement(len(rows), stat_seed(s.seed, "transfer-shuffle")))
    groups = [question_group(r) for r in rows]
    splits = folds(groups, s.cv_folds)
    n_layers = own["keys"].shape[1]
    per_layer = []
    for layer in range(n_layers):
        xo = np.concatenate([own["keys"][:, layer], own["values"][:, layer]], 1)
        xp = np.concatenate([projected["keys"][:, layer], projected["values"][:, layer]], 1)
        seed = stat_seed(s.seed, "transfer", layer)
        scores = {k: np.zeros(len(y)) for k in ("own", "projected", "shuffled")}
        for train, test in splits:  # out of fold: the probe never saw the prompts it scores, in either form
            if len(set(y[train].tolist())) < 2:
                for k in scores:
                    scores[k][test] = float(y[train][0])
                continue
            probe = fit_probe(xo[train], y[train], s.probe_c, seed)
            positive = list(probe.classes_).index(1)
            scores["own"][test] = probe.predict_proba(xo[test])[:, positive]
            scores["projected"][test] = probe.predict_proba(xp[test])[:, positive]
            scores["shuffled"][test] = probe.predict_proba(xp[perm[test]])[:, positive]
        per_layer.append({k: auroc(y, v, seed, s.bootstrap_resamples) for k, v in scores.items()})
    return {"source": pair.source.spec.name, "target": pair.target.spec.name, "layers": per_layer,
            "relative_depth": relative_depth(n_layers)}  # fmt: skip


# ------------------------------------------------------------------------------------------------ run
def run(settings: Settings, command: str = NAME) -> dict[str, Any]:
    s = settings
    run_ = Run(NAME, s)
    run_.check()
    if s.projector and not Path(s.projector).is_dir():
        from kvproj.experiments.sweep import missing_projector_advice

        raise FileNotFoundError(missing_projector_advice(s.projector))
    rows = confab_examples(s.n_questions, s.seed)
    groups = [question_group(r) for r in rows]
    run_.start()
    numbers: dict[str, Any] = {}
    records, depths, generations = {}, {}, []
    for mi, spec in enumerate(s.models):
        label = f"{mi}:{spec.name}"

        def compute(_key: str, spec=spec, label=label) -> dict[str, Any]:
            loaded = load_model(spec)
            data = read_examples(s, loaded, rows)
            return {"record": {**model_record(loaded), "chat_template": data["chat"]},
                    "results": evaluate(s, data, groups, label), "generations": data["generations"]}  # fmt: skip

        unit = run_.units([f"model{mi}"], compute, f"probes of {spec.name}")[f"model{mi}"]
        records[label] = unit["record"]
        depths[label] = relative_depth(unit["record"]["geometry"]["num_layers"])
        numbers[label] = unit["results"]
        generations += [{"model": label, **g} for g in unit["generations"]]
    transfer = None
    if s.projector:
        transfer = run_.units(["transfer"], lambda _k: transfer_test(s, rows), "transfer")["transfer"]
    report = build_report(s, numbers, transfer, depths, run_, command, len(rows))
    return run_.finish(
        numbers, records, report, generations,
        extra={"transfer": transfer, "relative_depth": depths, "n_prompts": len(rows),
               "control": "baselines on the same grouped folds (first-token entropy, answer log-probability, answer "
                          "length, hidden-state probe); AUROC 0.5 is chance; transfer: the shuffled projected cache"},
    )  # fmt: skip


def build_report(s: Settings, numbers, transfer, depths, run_: Run, command: str, n_rows: int) -> Report:
    report = Report("Confabulation detection from cache signatures", command)
    report.section(
        "What was measured",
        f"{n_rows} prompts: {n_rows // 2} facts questions over their own context and the same questions over "
        "the context of another example (never one of the answerable prompts' contexts), under "
        f'"{s.instruction}"; greedy answers of at most {s.max_new_tokens} tokens. '
        "Labels: by construction (answer not in the context) and by correctness (the answer is wrong; "
        "where it is not in the context, anything but 'unknown' is wrong). Per layer, logistic-regression probes "
        f"(C={s.probe_c:g}) on keys (RoPE undone) and values at the last prompt token and pooled over the context "
        f"(cache = both, keys, values), and on the layer's hidden state at the last prompt token; one-number "
        f"baselines ({', '.join(BASELINES)}) through the same probe. {s.cv_folds}-fold cross-validation grouped "
        "by question; AUROC of the out-of-fold scores with a bootstrap 95% CI over prompts.",
    )
    table = []
    for label, per_model in numbers.items():
        for name in LABELS:
            per = per_model[name]
            if "skipped" in per:
                table.append([label, name, f"skipped: {per['skipped']} ({per['positives']} / {per['n']} positive)"]
                             + ["-"] * 6)  # fmt: skip
                continue
            series = [Series(m, depths[label], [x["auroc"] for x in per[m]],
                             [x["ci95"][0] if x["ci95"] else None for x in per[m]],
                             [x["ci95"][1] if x["ci95"] else None for x in per[m]])
                      for m in (*CACHE_METHODS, "hidden")]  # fmt: skip
            refs = {b: per[b]["auroc"] for b in BASELINES}
            refs["chance"] = 0.5
            png = line_plot(run_.path(f"auroc_model{label.split(':', 1)[0]}_{name}.png"), series,
                            title=f"{label}: label {name}", xlabel="relative layer depth", ylabel="AUROC",
                            references=refs)  # fmt: skip
            report.plot(f"{label}: label {name}", png,
                        "AUROC per layer of the cache probes and the hidden-state probe (95% CIs shaded); "
                        "horizontal lines: the one-number baselines and chance.")  # fmt: skip
            best = per["best_layer"]
            hidden_best = max(per["hidden"], key=lambda x: x["auroc"] or 0.0)
            base_best = max(BASELINES, key=lambda b: per[b]["auroc"] or 0.0)
            table.append([label, name, f"{per['positives']} / {per['n']}",
                          f"L{best['layer']} ({best['relative_depth']:.2f})", auc_str(best), auc_str(hidden_best),
                          f"{base_best} {auc_str(per[base_best])}",
                          verdict(best, hidden_best, per[base_best])])  # fmt: skip
    report.section(
        "Finding",
        markdown_table(
            [
                "model",
                "label",
                "positives",
                "best cache layer",
                "cache probe AUROC",
                "best hidden-state probe",
                "best baseline",
                "cache probe vs the others",
            ],
            table,
        )  # fmt: skip
        + "\nThe best layer is chosen on the same out-of-fold AUROCs it reports, so its AUROC is optimistic by "
        "the choice among layers; the hidden-state probe's best layer likewise.",
    )
    if transfer:
        layers = transfer["layers"]
        series = [Series(k, transfer["relative_depth"], [x[k]["auroc"] for x in layers]) for k in
                  ("own", "projected", "shuffled")]  # fmt: skip
        png = line_plot(run_.path("transfer.png"), series, title=f"probe of {transfer['target']} on projected caches",
                        xlabel="relative layer depth", ylabel="AUROC", references={"chance": 0.5})  # fmt: skip
        best = max(range(len(layers)), key=lambda i: layers[i]["own"]["auroc"] or 0.0)
        report.plot(
            "Transfer to projected caches",
            png,
            f"A probe trained on {transfer['target']}'s own prefix caches (label by construction; the question is "
            f"stated before the context) applied to the caches projected from {transfer['source']} and to the "
            f"shuffled control (another prompt's projected cache), all scored out of fold (the probe never saw the "
            f"prompts it scores). At the layer where the own probe is best (L{best}): own "
            f"{auc_str(layers[best]['own'])}, projected {auc_str(layers[best]['projected'])}, shuffled "
            f"{auc_str(layers[best]['shuffled'])}.",
        )
    report.section(
        "What the numbers do not show",
        "- By construction the two classes differ in their contexts (another example's text), so a probe may "
        "separate them by the text rather than by a 'confabulation' state; the correctness label is closer to "
        "the question but rests on few and unbalanced positives.\n"
        "- Linear probes on a few hundred prompts of one synthetic task; the best layer is picked on the numbers "
        "it reports. AUROC CIs resample prompts, not questions.\n"
        "- Transfer uses the prefix cache only (the question written before the context): a different read-out "
        "than the per-model probes above.",
    )
    return report


def auc_str(x: dict[str, Any]) -> str:
    if x.get("auroc") is None:
        return "-"
    lo, hi = x["ci95"] or (None, None)
    return f"{fmt(x['auroc'], 2)} [{fmt(lo, 2)}, {fmt(hi, 2)}]"


def verdict(cache: dict, hidden: dict, baseline: dict) -> str:
    """Plain words: is the cache probe's CI above, below or overlapping each competitor's AUROC."""

    def against(other: dict, name: str) -> str:
        if cache.get("ci95") is None or other.get("auroc") is None:
            return f"{name}: -"
        lo, hi = cache["ci95"]
        if lo > other["auroc"]:
            return f"above {name}"
        if hi < other["auroc"]:
            return f"below {name}"
        return f"not separated from {name}"

    return "; ".join((against(hidden, "hidden"), against(baseline, "baseline")))
