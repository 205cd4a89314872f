"""Cache interpolation between two modes induced by instructions (A: answer only from the context, else
`unknown`; B: always answer confidently) on answerable and unanswerable facts questions, in one model.

(a) Blends: the cache of the same prompt under both instructions (the shorter instruction padded with filler
tokens so every position is shared), `alpha * C_A + (1 - alpha) * C_B`, over all layers and per layer group
(the other layers keep C_B). (b) Steering: per-layer mean key (RoPE undone) and value differences A - B over
contrastive prompts from another split, added with a coefficient to the cache of a neutral instruction.
Measured along alpha / coefficient: accuracy on answerable questions, `unknown` and fabricated-answer rates on
unanswerable ones, first-token entropy, KL of the first answer token to each pure mode.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from kvproj.cache import KVCache, read_cache
from kvproj.data.pairs import SideFormat, mask_rows, pad_rows
from kvproj.experiments.common import (
    ExperimentSettings,
    Report,
    Run,
    Series,
    as_spec,
    check_fractions,
    check_int,
    fmt_stat,
    line_plot,
    markdown_table,
    model_record,
)
from kvproj.experiments.modes import (
    INSTRUCTION_A,
    INSTRUCTION_B,
    METRICS,
    collect,
    first_token_logprobs,
    mode_examples,
    score,
)
from kvproj.models import ModelSpec, load_model
from kvproj.pair import DEFAULT_QUESTION_TEMPLATE
from kvproj.rope import apply_rope

NAME = "interpolation"
FILLER = "."


@dataclass
class Settings(ExperimentSettings):
    """Cache interpolation between two instruction-induced modes.

    Args:
        model: The model whose caches are blended.
        instruction_a: Mode A's instruction, before the context.
        instruction_b: Mode B's instruction.
        neutral_instruction: The instruction of the cache that steering vectors are added to.
        chat_template: Wrap instruction + context + question in the model's chat template (one user turn; instruct
            models follow instructions there); false: plain "context\\nQuestion: ...\\nAnswer:".
        n_questions: Answerable facts questions (facts test split); as many unanswerable ones are made from them.
        n_contrastive: Prompts (facts val split) whose A - B cache differences make the steering vectors.
        alphas: Blend weights of mode A.
        layer_groups: Consecutive layer groups blended on their own (0: only the global blend).
        coefficients: Steering coefficients (0: the neutral cache).
        batch_size: Prompts per batch.
        max_new_tokens: Greedy tokens generated per answer.
    """

    model: ModelSpec = field(default_factory=lambda: ModelSpec("smollm2-135m-instruct"))
    instruction_a: str = INSTRUCTION_A
    instruction_b: str = INSTRUCTION_B
    neutral_instruction: str = "Read the text below and answer the question."
    chat_template: bool = True
    n_questions: int = 24
    n_contrastive: int = 16
    alphas: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    layer_groups: int = 3
    coefficients: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0)
    batch_size: int = 8
    max_new_tokens: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        self.model = as_spec(self.model)
        self.alphas, self.coefficients = tuple(self.alphas), tuple(self.coefficients)
        check_fractions("alphas", self.alphas)
        if not self.coefficients:
            raise ValueError("--coefficients: give one or more numbers")
        check_int("n_questions", self.n_questions, 2)
        check_int("n_contrastive", self.n_contrastive, 1)
        check_int("layer_groups", self.layer_groups, 0, 64)
        check_int("batch_size", self.batch_size, 1)
        check_int("max_new_tokens", self.max_new_tokens, 1)
        for name in ("instruction_a", "instruction_b", "neutral_instruction"):
            if not getattr(self, name).strip():
                raise ValueError(f"--{name}: must not be empty")


# ------------------------------------------------------------------------------------------------ prompts
class Prompts:
    """Token ids of `head + instruction (+ filler) + "\\n\\n" + context` and of the question part, per mode, in the
    model's plain or chat format (`kvproj.data.pairs.SideFormat`: with the chat template, head = the template's
    opening, the question part = the rest of the user turn + the assistant opening). The instructions of A and B
    are padded with filler tokens to the same length, so their caches share every position."""

    def __init__(self, loaded, instructions: dict[str, str], chat_template: bool) -> None:
        tok = loaded.tokenizer
        self.tok = tok
        fmt_ = SideFormat.build(tok, chat_template, DEFAULT_QUESTION_TEMPLATE)
        self.head, self.before, self.after = list(fmt_.head_ids), fmt_.middle, fmt_.tail
        ids = {k: tok(v, add_special_tokens=False).input_ids for k, v in instructions.items()}
        filler = tok(FILLER, add_special_tokens=False).input_ids[-1:]
        longest = max(len(ids["A"]), len(ids["B"]))
        for k in ("A", "B"):
            ids[k] = ids[k] + filler * (longest - len(ids[k]))
        self.instruction_ids = ids

    def batch(self, rows: list[dict], mode: str, device) -> dict[str, torch.Tensor]:
        prefix = [self.head + self.instruction_ids[mode] + self.tok("\n\n" + r["context"], add_special_tokens=False)
                  .input_ids for r in rows]  # fmt: skip
        questions = [self.tok(self.before + r["question"] + self.after, add_special_tokens=False).input_ids
                     for r in rows]  # fmt: skip
        pad = self.tok.pad_token_id
        return {
            "prefix_ids": pad_rows(prefix, pad, left=True).to(device),
            "prefix_mask": mask_rows(prefix, left=True).to(device),
            "question_ids": pad_rows(questions, pad, left=True).to(device),
            "question_mask": mask_rows(questions, left=True).to(device),
            "head_len": len(self.head),
        }


def blend(a: KVCache, b: KVCache, alpha: float, layers: set[int] | None = None) -> KVCache:
    """alpha * a + (1 - alpha) * b at `layers` (None: all), b elsewhere. Needs the same positions."""
    if not torch.equal(a.positions, b.positions) or not torch.equal(a.attention_mask, b.attention_mask):
        raise ValueError("blend: the two caches must share positions and mask")
    keys, values = [], []
    for i, (ka, kb, va, vb) in enumerate(zip(a.keys, b.keys, a.values, b.values)):
        if layers is None or i in layers:
            keys.append(alpha * ka + (1 - alpha) * kb)
            values.append(alpha * va + (1 - alpha) * vb)
        else:
            keys.append(kb)
            values.append(vb)
    return replace(b, keys=keys, values=values)


def steer(kv: KVCache, vectors: dict[str, list], coefficient: float, head_len: int) -> KVCache:
    """Add coefficient * (mean A - B difference) to every non-head position: to un-rotated keys (then rotated
    again at their positions) and to values. vectors: {"keys": [L][H][D], "values": [L][H][D]}."""
    b, t = kv.attention_mask.shape
    real = kv.attention_mask.long().sum(1)
    slot = torch.arange(t, device=real.device)[None, :]
    where = (slot >= (t - real + head_len)[:, None])[:, None, :, None].to(kv.keys[0].dtype)  # [B, 1, T, 1]
    keys, values = [], []
    for i in range(kv.num_layers):
        dk = torch.tensor(vectors["keys"][i], dtype=kv.keys[i].dtype, device=where.device)[None, :, None, :]
        dv = torch.tensor(vectors["values"][i], dtype=kv.values[i].dtype, device=where.device)[None, :, None, :]
        unrotated = kv.unrotated_keys(i) + coefficient * dk * where
        keys.append(apply_rope(unrotated, kv.positions, kv.geometry.rope[i]))
        values.append(kv.values[i] + coefficient * dv * where)
    return replace(kv, keys=keys, values=values)


def groups(num_layers: int, n: int) -> dict[str, set[int]]:
    if n == 0:
        return {}
    n = min(n, num_layers)
    bounds = [round(i * num_layers / n) for i in range(n + 1)]
    return {f"layers {bounds[i]}-{bounds[i + 1] - 1}": set(range(bounds[i], bounds[i + 1])) for i in range(n)}


# ------------------------------------------------------------------------------------------------ units
@torch.no_grad()
def steering_vectors(loaded, prompts: Prompts, rows: list[dict], batch_size: int) -> dict[str, list]:
    """Per layer, the mean over prompts and non-head positions of (A - B) un-rotated keys and values: [L][H][D]."""
    g = loaded.geometry
    sums = {"keys": [torch.zeros(g.num_kv_heads, g.head_dim) for _ in range(g.num_layers)],
            "values": [torch.zeros(g.num_kv_heads, g.head_dim) for _ in range(g.num_layers)]}  # fmt: skip
    count = 0
    for i in range(0, len(rows), batch_size):
        chunk = rows[i : i + batch_size]
        caches = {}
        for mode in ("A", "B"):
            bt = prompts.batch(chunk, mode, loaded.device)
            caches[mode] = read_cache(loaded.model, bt["prefix_ids"], bt["prefix_mask"], geometry=g)
        real = caches["A"].attention_mask.long().sum(1)
        t = caches["A"].length
        slot = torch.arange(t, device=real.device)[None, :]
        where = (slot >= (t - real + bt["head_len"])[:, None]).float()  # [B, T]
        count += float(where.sum())
        for layer in range(g.num_layers):
            dk = caches["A"].unrotated_keys(layer).float() - caches["B"].unrotated_keys(layer).float()
            dv = caches["A"].values[layer].float() - caches["B"].values[layer].float()
            sums["keys"][layer] += (dk * where[:, None, :, None]).sum((0, 2)).cpu()
            sums["values"][layer] += (dv * where[:, None, :, None]).sum((0, 2)).cpu()
    return {k: [(x / max(count, 1)).tolist() for x in v] for k, v in sums.items()}


@torch.no_grad()
def score_batch(s: Settings, loaded, prompts: Prompts, rows: list[dict], vectors: dict[str, list]) -> dict:
    g = loaded.geometry
    caches, batch = {}, {}
    for mode in ("A", "B", "neutral"):
        batch[mode] = prompts.batch(rows, mode, loaded.device)
        caches[mode] = read_cache(loaded.model, batch[mode]["prefix_ids"], batch[mode]["prefix_mask"], geometry=g)
    q = batch["A"]["question_ids"], batch["A"]["question_mask"]
    out: dict[str, Any] = {"answerable": [r["answerable"] for r in rows]}
    pure = {mode: first_token_logprobs(loaded.model, caches[mode], *q) for mode in ("A", "B")}
    conditions: dict[str, KVCache] = {"pure A": caches["A"], "pure B": caches["B"]}
    for alpha in s.alphas:
        conditions[f"global alpha={alpha:g}"] = blend(caches["A"], caches["B"], alpha)
        for name, layers in groups(g.num_layers, s.layer_groups).items():
            conditions[f"{name} alpha={alpha:g}"] = blend(caches["A"], caches["B"], alpha, layers)
    for c in s.coefficients:
        conditions[f"steer c={c:g}"] = steer(caches["neutral"], vectors, c, batch["neutral"]["head_len"])
    for name, kv in conditions.items():
        scored, _, gen = score(loaded.model, loaded.tokenizer, kv, *q, rows, s.max_new_tokens, pure)
        out[name] = {**scored, "generated": gen}
    return out


def run(settings: Settings, command: str = NAME) -> dict[str, Any]:
    s = settings
    run_ = Run(NAME, s)
    run_.check()
    loaded = load_model(s.model)
    run_.start()
    prompts = Prompts(
        loaded, {"A": s.instruction_a, "B": s.instruction_b, "neutral": s.neutral_instruction}, s.chat_template
    )
    rows = mode_examples(s.n_questions, s.seed, "test")
    contrast = [r for r in mode_examples(s.n_contrastive, s.seed, "val") if r["answerable"]]
    vectors = run_.unit("steering_vectors", lambda: steering_vectors(loaded, prompts, contrast, s.batch_size))
    chunks = [rows[i : i + s.batch_size] for i in range(0, len(rows), s.batch_size)]
    keys = [f"batch{i:04d}" for i in range(len(chunks))]
    units = run_.units(keys, lambda k: score_batch(s, loaded, prompts, chunks[int(k[5:])], vectors), "batches")
    numbers, generations = collect(s, chunks, [units[k] for k in keys], skip=("answerable",))
    report = build_report(s, numbers, loaded, run_, command, len(rows))
    return run_.finish(
        numbers, {"model": model_record(loaded)}, report, generations,
        extra={"control": "the pure caches: alpha=1 is mode A's own cache, alpha=0 mode B's; steering c=0 is the "
                          "neutral instruction's cache", "n_questions": len(rows)},
    )  # fmt: skip


def build_report(s: Settings, numbers, loaded, run_: Run, command: str, n_rows: int) -> Report:
    report = Report(f"Cache interpolation between modes: {s.model.name}", command)
    report.section(
        "What was measured",
        f'Mode A: "{s.instruction_a}" Mode B: "{s.instruction_b}" (each before the context; the shorter is '
        f"padded with '{FILLER}' tokens so both caches share every position). {n_rows} prompts: "
        f"{n_rows // 2} answerable facts questions and as many unanswerable ones (the question over another "
        "example's context). Blends `alpha * C_A + (1 - alpha) * C_B` over all layers (global) and over one layer "
        "group at a time (other layers: C_B). Steering: the mean A - B difference of un-rotated keys and of values "
        f"per layer over {s.n_contrastive} contrastive prompts (facts val split), times c, added to the cache of "
        f'"{s.neutral_instruction}". The pure caches are the controls (alpha 1 = A, alpha 0 = B, c 0 = neutral).',
    )
    labels = {"accuracy": "accuracy (answerable)", "unknown_rate": "'unknown' rate (unanswerable)",
              "fabricated_rate": "fabricated-answer rate (unanswerable)",
              "first_token_entropy": "first-token entropy (nats)", "kl_to_A": "KL(A || blend), first token",
              "kl_to_B": "KL(B || blend), first token"}  # fmt: skip
    families = ["global"] + list(groups(loaded.geometry.num_layers, s.layer_groups))
    for m, label in labels.items():
        series = []
        for fam in families:
            vals = [numbers[f"{fam} alpha={a:g}"][m] for a in s.alphas]
            series.append(Series(fam, list(s.alphas), [v["mean"] for v in vals],
                                 [v["ci95"][0] if v["ci95"] else None for v in vals],
                                 [v["ci95"][1] if v["ci95"] else None for v in vals]))  # fmt: skip
        png = line_plot(run_.path(f"blend_{m}.png"), series, title=f"{label} vs alpha", xlabel="alpha (weight of mode A)",
                        ylabel=label)  # fmt: skip
        report.plot(f"Blend: {label}", png, f"{label} along alpha, globally and per layer group (95% CIs shaded).")
    series = []
    for m in ("accuracy", "unknown_rate", "fabricated_rate"):
        vals = [numbers[f"steer c={c:g}"][m] for c in s.coefficients]
        series.append(Series(labels[m], list(s.coefficients), [v["mean"] for v in vals],
                             [v["ci95"][0] if v["ci95"] else None for v in vals],
                             [v["ci95"][1] if v["ci95"] else None for v in vals]))  # fmt: skip
    png = line_plot(run_.path("steering.png"), series, title="steering the neutral cache towards A",
                    xlabel="coefficient c", ylabel="rate")  # fmt: skip
    report.plot("Steering", png, "Behaviour rates of the neutral cache plus c times the mean A - B difference.")
    rows = [[c] + [fmt_stat(numbers[c][m], 2, "g" if m.startswith(("kl", "first")) else "f") for m in METRICS]
            for c in numbers]  # fmt: skip
    report.section("Numbers", markdown_table(["condition", *METRICS], rows))
    a, b = numbers["pure A"], numbers["pure B"]
    report.section(
        "Finding",
        f"- Pure mode A: accuracy {fmt_stat(a['accuracy'], 2)}, 'unknown' on "
        f"unanswerable {fmt_stat(a['unknown_rate'], 2)}, fabricated {fmt_stat(a['fabricated_rate'], 2)}. Pure mode "
        f"B: accuracy {fmt_stat(b['accuracy'], 2)}, 'unknown' "
        f"{fmt_stat(b['unknown_rate'], 2)}, fabricated {fmt_stat(b['fabricated_rate'], 2)}.\n"
        + "\n".join(
            f"- global alpha={al:g}: 'unknown' {fmt_stat(numbers[f'global alpha={al:g}']['unknown_rate'], 2)}, "
            f"KL to A {fmt_stat(numbers[f'global alpha={al:g}']['kl_to_A'], 2, 'g')}, KL to B "
            f"{fmt_stat(numbers[f'global alpha={al:g}']['kl_to_B'], 2, 'g')}"
            for al in s.alphas
        )
        + "\n- Whether the behaviour moves monotonically with alpha, and which layer group moves it most, is read "
        "from the curves above; where the two pure modes do not differ (overlapping CIs), nothing in between can.",
    )
    report.section(
        "What the numbers do not show",
        "- Blending two caches makes states the model never produced; a change in behaviour along alpha shows the "
        "cache carries the mode, not that the model represents modes linearly.\n"
        "- 'unknown' is detected as the word in the first answer line, and fabrication as any other non-empty "
        "answer: refusals worded otherwise count as fabricated, an empty answer as neither.\n"
        "- The filler tokens that equalise the instruction lengths are part of both prompts; one instruction pair "
        f"was measured, with {n_rows} prompts and greedy answers of at most {s.max_new_tokens} tokens.",
    )
    return report
