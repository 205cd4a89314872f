"""Cross-model mode transfer: does a mode travel through a projector?

The source reads the same prompts under mode A (answer only from the context, else `unknown`) and mode B (always
answer confidently); its caches are projected into the target with a trained projector. The target's behaviour
with the projected A / B caches is compared with its own behaviour reading the A / B prompts as text, with the
source's own behaviour, and with the shuffled control (the projected cache of another prompt of the same mode).
The finding: does the target move the same way, and by what fraction of its own mode gap.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kvproj.data.pairs import mask_rows, pad_rows
from kvproj.eval.facts import derangement
from kvproj.experiments.common import (
    ExperimentSettings,
    Report,
    Run,
    Series,
    check_int,
    fmt,
    fmt_stat,
    line_plot,
    markdown_table,
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
from kvproj.experiments.sweep import missing_projector_advice, transfer_record

NAME = "mode-transfer"
CONDITIONS = ("target_text", "projected", "shuffled", "source_text")


@dataclass
class Settings(ExperimentSettings):
    """Mode transfer through a trained projector.

    Args:
        projector: Exported projector folder (checkpoints/RUN/projector); it names the source and target models.
        instruction_a: Mode A's instruction, before the context (both models read the same text).
        instruction_b: Mode B's instruction.
        n_questions: Answerable facts questions (facts test split); as many unanswerable ones are made from them.
        batch_size: Prompts per batch (the shuffled control draws within a batch).
        max_new_tokens: Greedy tokens generated per answer.
        device: Override the models' device (cpu, cuda, auto).
    """

    projector: str = "checkpoints/default/projector"
    instruction_a: str = INSTRUCTION_A
    instruction_b: str = INSTRUCTION_B
    n_questions: int = 24
    batch_size: int = 8
    max_new_tokens: int = 8
    device: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("n_questions", self.n_questions, 2)
        check_int("batch_size", self.batch_size, 2)
        check_int("max_new_tokens", self.max_new_tokens, 1)


@torch.no_grad()
def score_batch(s: Settings, trained, rows: list[dict], index: int) -> dict[str, Any]:
    """One unit: both modes, every condition; KL of the first answer token to the target's own pure modes."""
    pair, codec = trained.pair, trained.codec
    device, tgt, src = pair.target.device, pair.target, pair.source
    instructions = {"A": s.instruction_a, "B": s.instruction_b}
    perm = derangement(len(rows), s.seed * 100_003 + index)
    batches, out, pure = {}, {}, {}
    for mode in ("A", "B"):
        examples = [{**r, "context": f"{instructions[mode]}\n\n{r['context']}"} for r in rows]
        batch = codec.collate([codec.encode(e, stream_index=i) for i, e in enumerate(examples)])
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        batches[mode] = pair.add_caches(batch, with_target_cache=True)
        q = batch["question_ids"], batch["question_mask"]
        pure[mode] = first_token_logprobs(tgt.model, batches[mode]["target_cache"], *q)
    for mode, batch in batches.items():
        q = batch["question_ids"], batch["question_mask"]
        projected = trained.transfer(batch["source_cache"], batch["align_index"], batch["target_prefix_mask"],
                                     fallback=batch.get("target_head"))  # fmt: skip
        caches = {"target_text": batch["target_cache"], "projected": projected, "shuffled": projected.select(perm)}
        for name, kv in caches.items():
            scored, _, gen = score(tgt.model, tgt.tokenizer, kv, *q, rows, s.max_new_tokens, pure)
            out[f"{name} {mode}"] = {**scored, "generated": gen}
        fmt_ = pair.source_format
        questions = [src.tokenizer(fmt_.middle + r["question"] + fmt_.tail, add_special_tokens=False).input_ids
                     for r in rows]  # fmt: skip
        sq = (pad_rows(questions, src.tokenizer.pad_token_id, True).to(src.device),
              mask_rows(questions, True).to(src.device))  # fmt: skip
        scored, _, gen = score(src.model, src.tokenizer, batch["source_cache"], *sq, rows, s.max_new_tokens)
        out[f"source_text {mode}"] = {**scored, "generated": gen}  # another vocabulary: no KL to the target's
    return out


def run(settings: Settings, command: str = NAME) -> dict[str, Any]:
    from kvproj.pair import load_transfer, read_transfer

    s = settings
    run_ = Run(NAME, s)
    run_.check()
    if not Path(s.projector).is_dir():
        raise FileNotFoundError(missing_projector_advice(s.projector))
    config, _ = read_transfer(s.projector, s.device)
    trained = load_transfer(s.projector, device=s.device)
    run_.start()
    rows = mode_examples(s.n_questions, s.seed, "test")
    chunks = [rows[i : i + s.batch_size] for i in range(0, len(rows), s.batch_size)]
    if len(chunks) > 1 and len(chunks[-1]) < 2:
        chunks[-2] += chunks.pop()
    keys = [f"batch{i:04d}" for i in range(len(chunks))]
    units = run_.units(keys, lambda k: score_batch(s, trained, chunks[int(k[5:])], int(k[5:])), "batches")
    numbers, generations = collect(s, chunks, [units[k] for k in keys], skip=())
    gaps = mode_gaps(numbers)
    report = build_report(s, numbers, gaps, run_, command, trained, len(rows))
    return run_.finish(
        numbers, transfer_record(trained, config), report, generations,
        extra={"mode_gap": gaps, "n_questions": len(rows),
               "control": "shuffled: the projected cache of another prompt of the same mode; the target's own A / B "
                          "behaviour reading the text is the reference gap"},
    )  # fmt: skip


def mode_gaps(numbers: dict[str, Any]) -> dict[str, Any]:
    """Per behaviour metric and condition: A - B, and its fraction of the target's own A - B gap."""
    out = {}
    for m in ("unknown_rate", "fabricated_rate", "accuracy"):
        own = _diff(numbers, "target_text", m)
        out[m] = {}
        for cond in CONDITIONS:
            d = _diff(numbers, cond, m)
            frac = d / own if d is not None and own not in (None, 0.0) else None
            out[m][cond] = {"a_minus_b": d, "fraction_of_target_gap": frac}
    return out


def _diff(numbers, cond: str, m: str) -> float | None:
    a, b = numbers.get(f"{cond} A", {}).get(m), numbers.get(f"{cond} B", {}).get(m)
    if not a or not b or a["mean"] is None or b["mean"] is None:
        return None
    return a["mean"] - b["mean"]


def build_report(s: Settings, numbers, gaps, run_: Run, command: str, trained, n_rows: int) -> Report:
    pair = trained.pair
    report = Report(f"Mode transfer: {pair.source.spec.name} -> {pair.target.spec.name}", command)
    report.section(
        "What was measured",
        f'Mode A: "{s.instruction_a}" Mode B: "{s.instruction_b}" (before the context, read by both models). '
        f"{n_rows} prompts: {n_rows // 2} answerable facts questions and as many unanswerable ones. Conditions per "
        "mode: `target_text` (the target reads the prompt: its own mode), `projected` (the source's cache of it "
        "through the projector at " + str(trained.directory) + "), `shuffled` (the projected cache of another "
        "prompt of the same mode: the control), `source_text` (the source itself answering).",
    )
    rows = [[c] + [fmt_stat(numbers[c][m], 2, "g" if m.startswith(("kl", "first")) else "f") for m in METRICS]
            for c in numbers]  # fmt: skip
    report.section("Numbers", markdown_table(["condition", *METRICS], rows))
    series = []
    for m in ("unknown_rate", "fabricated_rate", "accuracy"):
        series.append(Series(m, list(range(len(CONDITIONS))),
                             [gaps[m][c]["a_minus_b"] for c in CONDITIONS]))  # fmt: skip
    png = line_plot(run_.path("mode_gap.png"), series,
                    title="A - B per condition (0 target_text, 1 projected, 2 shuffled, 3 source_text)",
                    xlabel="condition", ylabel="A - B", references={"no difference": 0.0})  # fmt: skip
    report.plot("Mode gap per condition", png, "Difference between mode A and mode B of each behaviour rate.")
    g = gaps["unknown_rate"]
    report.section(
        "Finding",
        f"- 'unknown' on unanswerable questions, A - B: target reading the text {fmt(g['target_text']['a_minus_b'])}, "
        f"projected {fmt(g['projected']['a_minus_b'])} (fraction of the target's own gap "
        f"{fmt(g['projected']['fraction_of_target_gap'], 2)}), shuffled {fmt(g['shuffled']['a_minus_b'])}, source "
        f"itself {fmt(g['source_text']['a_minus_b'])}.\n"
        f"- Projected: A {fmt_stat(numbers['projected A']['unknown_rate'], 2)} vs B "
        f"{fmt_stat(numbers['projected B']['unknown_rate'], 2)}; where these CIs overlap, the projected caches do not "
        "show the mode at this sample size.",
    )
    report.section(
        "What the numbers do not show",
        "- The fraction of the mode gap is a ratio of two differences of means, given without a CI; when the target's "
        "own gap is near zero it is undefined (shown as -).\n"
        "- The projector was trained on facts prompts without instructions; a mode that does not travel may be lost "
        "by the projector on instruction tokens rather than absent from the source cache.\n"
        "- 'unknown' is matched as a word in the first answer line; other refusals count as fabricated, an empty answer as neither (the three rates need not sum to 1).",
    )
    return report
