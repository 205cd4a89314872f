"""Same-model transfer: one instance of a model reads a prompt, its cache goes through a file
(`kvproj.cache_file`: safetensors + JSON metadata), and another instance of the same model - in float32, bfloat16,
float16, or bitsandbytes 8-bit / 4-bit - continues from it. Measured per context length against the receiving
instance re-reading the prompt itself: max logit difference and KL over the next `new_tokens` + 1 positions, greedy
token agreement over `new_tokens` generated tokens, the file round trip's own error, and the time a load takes
against a re-prefill.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from kvproj.adapters.heads import logits_from_hidden
from kvproj.cache import forward_with_cache, generate_from_ids, generate_with_cache, hidden_states, read_cache
from kvproj.cache_file import load_cache, save_cache, tokenizer_hash
from kvproj.experiments.common import (
    ExperimentSettings,
    Report,
    Run,
    Series,
    as_spec,
    check_int,
    fmt,
    fmt_stat,
    line_plot,
    markdown_table,
    model_record,
    stat,
    stat_seed,
)
from kvproj.models import ModelSpec, load_model

log = logging.getLogger(__name__)
NAME = "same-model"
RECEIVERS = ("float32", "bfloat16", "float16", "8bit", "4bit")


@dataclass
class Settings(ExperimentSettings):
    """Same-model transfer through a cache file.

    Args:
        model: The model (the sender; receivers are other instances of it, loaded in their own dtype).
        receivers: Receiving instances: float32, bfloat16, float16 (plain dtypes) and 8bit / 4bit (bitsandbytes);
            one that cannot be loaded or run here is reported as skipped with the reason.
        context_lengths: Prompt lengths in tokens.
        n_prompts: Prompts per context length (different texts).
        new_tokens: Greedy tokens generated after each prompt (and scored teacher-forced).
        store_dtype: Dtype of the tensors in the file (null: as the sender made them).
    """

    UNIT_SELECTORS: ClassVar[tuple[str, ...]] = (
        "receivers",
        "context_lengths",
        "n_prompts",
    )  # a run can be extended by any of them

    model: ModelSpec = field(default_factory=lambda: ModelSpec("smollm2-135m-instruct"))
    receivers: tuple[str, ...] = ("float32", "bfloat16", "float16")
    context_lengths: tuple[int, ...] = (64, 256, 1024, 2048)
    n_prompts: int = 4
    new_tokens: int = 32
    store_dtype: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.model = as_spec(self.model)
        self.receivers, self.context_lengths = tuple(self.receivers), tuple(self.context_lengths)
        bad = [r for r in self.receivers if r not in RECEIVERS]
        if not self.receivers or bad:
            raise ValueError(f"--receivers: got {list(self.receivers)}; valid: {', '.join(RECEIVERS)}")
        if not self.context_lengths:
            raise ValueError("--context_lengths: give one or more lengths")
        for n in self.context_lengths:
            check_int("context_lengths", n, 2, 131_072)
        check_int("n_prompts", self.n_prompts, 1)
        check_int("new_tokens", self.new_tokens, 1)
        if self.store_dtype not in (None, "float32", "bfloat16", "float16"):
            raise ValueError(f"--store_dtype: float32, bfloat16, float16 or null, got {self.store_dtype!r}")


def receiver_spec(spec: ModelSpec, receiver: str) -> ModelSpec:
    if receiver in ("8bit", "4bit"):
        return replace(spec, quantization=receiver)
    return replace(spec, dtype=receiver, quantization=None)


def prompt_ids(tokenizer, length: int, index: int, seed: int) -> torch.Tensor:
    """Prompt `index`: BOS (if any) + synthetic facts paragraphs (the facts corpus, a different stretch per
    prompt and seed), cut to exactly `length` tokens. [1, length]."""
    from kvproj.data.facts import FactsConfig, train_example

    cfg = FactsConfig(seed=seed)
    ids = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    i = 1000 * index
    while len(ids) < length:
        ex = train_example(cfg, i)
        ids += tokenizer(ex.context + "\n", add_special_tokens=False).input_ids
        i += 1
    return torch.tensor([ids[:length]])


def _timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, 1000 * (time.perf_counter() - start)


def _logits(model, hidden: torch.Tensor) -> torch.Tensor:
    return logits_from_hidden(model, hidden[0]).float()  # [P, V]


@torch.no_grad()
def measure(sender, receiver, ids: torch.Tensor, new_tokens: int, store_dtype: str | None, folder: Path) -> dict:
    """One prompt, one receiver: the sender's cache of ids[:-1] through a file into the receiver, against the
    receiver re-reading ids itself."""
    prefix, last = ids[:, :-1], ids[:, -1:]
    kv = read_cache(sender.model, prefix, geometry=sender.geometry)
    path = folder / "cache.safetensors"
    save_cache(path, kv, sender, input_ids=prefix, dtype=store_dtype)
    (loaded, stored_ids), load_ms = _timed(load_cache, path, receiver)
    assert stored_ids is not None and torch.equal(stored_ids.cpu(), prefix.cpu())
    dev = receiver.device
    # the receiver's own answer: it re-reads the whole prompt and generates
    reference = generate_from_ids(receiver.model, ids.to(dev), max_new_tokens=new_tokens)
    transferred = generate_with_cache(receiver.model, loaded, last.to(dev), max_new_tokens=new_tokens)
    n = min(reference.shape[1], transferred.shape[1])
    agree = (reference[0, :n] == transferred[0, :n]).float()
    first_diff = int((agree == 0).nonzero()[0, 0]) if (agree == 0).any() else n
    # teacher-forced on the receiver's own continuation: logits at the last prompt token and after each new token
    cont = torch.cat([last.to(dev), reference[:, :-1]], dim=1)  # [1, 1 + N - 1]
    full = torch.cat([prefix.to(dev), cont], dim=1)
    ref_logits = _logits(
        receiver.model, hidden_states(receiver.model, full, torch.ones_like(full))[:, -cont.shape[1] :]
    )
    got = _logits(receiver.model, forward_with_cache(receiver.model, loaded, cont, return_hidden=True))
    in_memory = _logits(receiver.model, forward_with_cache(receiver.model, kv, cont, return_hidden=True))
    kl = (F.softmax(ref_logits, -1) * (F.log_softmax(ref_logits, -1) - F.log_softmax(got, -1))).sum(-1)
    # the floor for this receiver: its OWN cache of the prefix, injected, against its re-prefill (what a
    # cache in this dtype differs by from one long prefill even without any transfer)
    own, prefill_ms = _timed(read_cache, receiver.model, prefix.to(dev), geometry=receiver.geometry)
    own_tokens = generate_with_cache(receiver.model, own, last.to(dev), max_new_tokens=new_tokens)
    own_logits = _logits(receiver.model, forward_with_cache(receiver.model, own, cont, return_hidden=True))
    m = min(reference.shape[1], own_tokens.shape[1])
    return {
        "own_cache_max_logit_diff": float((own_logits - ref_logits).abs().max()),
        "own_cache_agreement": float((reference[0, :m] == own_tokens[0, :m]).float().mean()),
        "max_logit_diff": float((got - ref_logits).abs().max()),
        "kl": float(kl.mean()),
        "greedy_agreement": float(agree.mean()),
        "first_divergence": first_diff,
        "file_roundtrip_max_diff": float((got - in_memory).abs().max()),
        "file_bytes": path.stat().st_size,
        "load_ms": load_ms,
        "prefill_ms": prefill_ms,
        "reference_text": receiver.tokenizer.decode(reference[0]),
        "transferred_text": receiver.tokenizer.decode(transferred[0]),
    }


def load_receiver(spec: ModelSpec, receiver: str):
    """(loaded model, None) or (None, why it is skipped): a receiver that cannot be loaded, or cannot run one
    forward here (bitsandbytes without a supported device, float16 kernels missing), is skipped, never faked."""
    rspec = receiver_spec(spec, receiver)
    try:
        loaded = load_model(rspec)
        tokenizer_hash(loaded.tokenizer)  # once per receiver, as a long-lived process would: not in load times
        probe = torch.tensor([[loaded.tokenizer.bos_token_id or 0] * 4]).to(loaded.device)
        read_cache(loaded.model, probe, geometry=loaded.geometry)
    except Exception as err:  # noqa: BLE001 - any failure to load or run here is the reason it is skipped
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return None, f"{type(err).__name__}: {first[:300]}"
    return loaded, None


METRICS = (
    "max_logit_diff",
    "kl",
    "greedy_agreement",
    "file_roundtrip_max_diff",
    "own_cache_max_logit_diff",
    "own_cache_agreement",
)
TIMES = ("load_ms", "prefill_ms")


def run(settings: Settings, command: str = NAME) -> dict[str, Any]:
    s = settings
    run_ = Run(NAME, s)
    run_.check()
    sender = load_model(s.model)
    run_.start()
    numbers: dict[str, Any] = {}
    timing: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    generations: list[dict[str, Any]] = []
    models = {"sender": model_record(sender)}
    for receiver_name in s.receivers:
        receiver, why = load_receiver(s.model, receiver_name)
        if receiver is None:
            log.warning("%s: receiver %s skipped: %s", NAME, receiver_name, why)
            skipped[receiver_name] = why
            continue
        models[f"receiver_{receiver_name}"] = model_record(receiver)
        keys = [f"{receiver_name}-L{n}-p{p}" for n in s.context_lengths for p in range(s.n_prompts)]

        def compute(key: str, receiver=receiver) -> dict:
            length, p = (int(x[1:]) for x in key.split("-")[-2:])
            ids = prompt_ids(sender.tokenizer, length, p, s.seed)
            with tempfile.TemporaryDirectory(prefix="kvproj-same-model-") as tmp:
                return measure(sender, receiver, ids, s.new_tokens, s.store_dtype, Path(tmp))

        units = run_.units(keys, compute, f"receiver {receiver_name}")
        per_length: dict[str, Any] = {}
        per_time: dict[str, Any] = {}
        for n in s.context_lengths:
            rows = [units[f"{receiver_name}-L{n}-p{p}"] for p in range(s.n_prompts)]
            per_length[str(n)] = {
                m: stat([r[m] for r in rows], stat_seed(s.seed, receiver_name, n, m), s.bootstrap_resamples)
                for m in METRICS
            }
            per_length[str(n)]["first_divergence_min"] = min(r["first_divergence"] for r in rows)
            per_time[str(n)] = {
                m: stat([r[m] for r in rows], stat_seed(s.seed, receiver_name, n, m), s.bootstrap_resamples)
                for m in TIMES
            }
            per_time[str(n)]["file_mb"] = rows[0]["file_bytes"] / 2**20
            for p, r in enumerate(rows):
                generations.append({"receiver": receiver_name, "context_length": n, "prompt": p,
                                    "reference": r["reference_text"], "transferred": r["transferred_text"],
                                    "agreement": r["greedy_agreement"]})  # fmt: skip
        numbers[receiver_name] = per_length
        timing[receiver_name] = per_time
        del receiver
    report = build_report(s, numbers, timing, skipped, run_, command)
    return run_.finish(
        numbers, models, report, generations,
        extra={"skipped": skipped, "timing": timing,
               "control": "the receiving instance re-reading the whole prompt itself (re-prefill)"},
    )  # fmt: skip


def build_report(s: Settings, numbers, timing, skipped, run_: Run, command: str) -> Report:
    lengths = list(s.context_lengths)
    report = Report(f"Same-model transfer through a cache file: {s.model.name}", command)
    report.section(
        "What was measured",
        f"The sender ({s.model.name}, {s.model.dtype}) reads a prompt of L tokens (synthetic facts paragraphs); "
        f"its cache of the first L-1 tokens is written to a file (`kvproj.cache_file`, stored as "
        f"{s.store_dtype or 'the sender dtype'}) and loaded into a separately loaded receiving instance, which "
        f"then reads the last prompt token and generates {s.new_tokens} greedy tokens. The control is the "
        "receiver re-reading the whole prompt itself. The floor of each receiver ('own cache' columns) is its own "
        "cache of the same prefix, injected the same way: what any cache in that dtype differs by from one long "
        "prefill, with no transfer at all. Logit difference and KL(re-prefill || transferred) are over "
        f"the {s.new_tokens} teacher-forced positions of the receiver's own continuation; agreement is the share of "
        f"the {s.new_tokens} generated tokens equal position by position. {s.n_prompts} prompts per length.",
    )
    plots = []
    for metric, label, scale in (
        ("max_logit_diff", "max |logit difference|", "log"),
        ("kl", "KL(re-prefill || transferred), mean per position", "log"),
        ("greedy_agreement", f"greedy agreement over {s.new_tokens} tokens", "linear"),
    ):
        series = []
        for r, per in numbers.items():
            vals = [per[str(n)][metric] for n in lengths]
            floor = 1e-12 if scale == "log" else None
            y = [max(v["mean"], floor) if floor and v["mean"] is not None else v["mean"] for v in vals]
            lo = [max(v["ci95"][0], floor) if floor else v["ci95"][0] for v in vals]
            hi = [max(v["ci95"][1], floor) if floor else v["ci95"][1] for v in vals]
            series.append(Series(f"receiver {r}", lengths, y, lo, hi))
        png = line_plot(run_.path(f"{metric}.png"), series, title=f"{label} vs context length ({s.model.name})",
                        xlabel="context length (tokens)", ylabel=label, xscale="log", yscale=scale)  # fmt: skip
        plots.append((metric, png, label))
    time_series = []
    for r, per in timing.items():
        time_series.append(
            Series(f"load, receiver {r}", lengths, [per[str(n)]["load_ms"]["mean"] for n in lengths])
        )
        time_series.append(
            Series(f"re-prefill, receiver {r}", lengths, [per[str(n)]["prefill_ms"]["mean"] for n in lengths])
        )
    time_png = line_plot(run_.path("time.png"), time_series, title="load from file vs re-prefill",
                    xlabel="context length (tokens)", ylabel="ms", xscale="log", yscale="log")  # fmt: skip
    rows = []
    for r, per in numbers.items():
        for n in lengths:
            v, t = per[str(n)], timing[r][str(n)]
            rows.append([r, n, fmt(v["file_roundtrip_max_diff"]["mean"], 2, "g"),
                         fmt_stat(v["max_logit_diff"], 2, "g"), fmt_stat(v["kl"], 2, "g"),
                         fmt_stat(v["greedy_agreement"], 3), v["first_divergence_min"],
                         fmt(v["own_cache_max_logit_diff"]["mean"], 2, "g"),
                         fmt(v["own_cache_agreement"]["mean"], 3), fmt(t["load_ms"]["mean"], 1), fmt(t["prefill_ms"]["mean"], 1),
                         fmt(t["file_mb"], 2)])  # fmt: skip
    report.section(
        "Numbers",
        markdown_table(
            [
                "receiver",
                "L",
                "file round-trip max diff",
                "max logit diff",
                "KL",
                "greedy agreement",
                "earliest divergence",
                "own cache: max logit diff",
                "own cache: agreement",
                "load ms",
                "re-prefill ms",
                "file MB",
            ],
            rows,
        ),  # fmt: skip
    )
    for _metric, png, label in plots:
        report.plot(label, png, f"{label} per receiver against context length (shaded: 95% CI over prompts).")
    report.plot("Time", time_png, "Mean wall time to load the cache file vs to re-read the prompt (this machine).")
    if skipped:
        report.section("Skipped", "\n".join(f"- `{r}`: {why}" for r, why in skipped.items()))
    report.section("Finding", finding(s, numbers, timing, skipped))
    report.section(
        "What the numbers do not show",
        "- The file is written and read by one process here; the receivers are separately loaded instances of "
        "the model, and the file carries everything another process needs (tensors, positions, token ids, model "
        "spec, geometry, tokenizer hash), but no second process or machine was involved.\n"
        "- Differences against re-prefill come from different matmul shapes (one long prefill vs prefix + "
        "continuation) and, for other dtypes, from the sender's float32 cache replacing the receiver's own "
        "lower-precision cache; they are not errors of the file, whose own round trip is the column above.\n"
        "- Times are wall clock on this machine (shared with other work), one measurement per prompt. The file is "
        "read right after it was written, from the page cache (memory speed); a cold read from disk costs about "
        "its size over the disk's bandwidth (90 MB at 500 MB/s: 0.18 s), and sending it over a network its size "
        "over the link's. A GPU re-prefills much faster than these CPU figures. The file grows linearly with L.\n"
        f"- {s.n_prompts} prompts per length from one synthetic text source; prompts of another kind (code, chat) "
        "were not measured.\n"
        + (
            f"- Receivers not in this run's settings ({', '.join(r for r in RECEIVERS if r not in s.receivers)}) were "
            "not measured here; add them with --receivers (8bit / 4bit need a device where bitsandbytes runs)."
            if set(RECEIVERS) - set(s.receivers)
            else ""
        ),
    )
    return report


def finding(s: Settings, numbers, timing, skipped) -> str:
    lines = []
    longest = str(max(s.context_lengths))
    for r, per in numbers.items():
        v = per[longest]
        rt = max(per[str(n)]["file_roundtrip_max_diff"]["mean"] for n in s.context_lengths)
        t = timing[r][longest]
        lines.append(
            f"- receiver {r}: the file round trip changes logits by at most {rt:.3g} (0 = bit-exact); at "
            f"L={longest} the max logit difference to re-prefill is {fmt_stat(v['max_logit_diff'], 2, 'g')}, KL "
            f"{fmt_stat(v['kl'], 2, 'g')}, greedy agreement {fmt_stat(v['greedy_agreement'])}; loading took "
            f"{fmt(t['load_ms']['mean'], 1)} ms against {fmt(t['prefill_ms']['mean'], 1)} ms to re-prefill. "
            f"Its own cache, injected the same way, differs from re-prefill by "
            f"{fmt(v['own_cache_max_logit_diff']['mean'], 2, 'g')} (agreement "
            f"{fmt(v['own_cache_agreement']['mean'], 3)}): the floor of any cache in {r}."
        )
    for r, per in numbers.items():
        worse = [
            n for n in s.context_lengths
            if per[str(n)]["max_logit_diff"]["ci95"][0] > 1.5 * per[str(n)]["own_cache_max_logit_diff"]["mean"]
            or per[str(n)]["greedy_agreement"]["ci95"][1] < per[str(n)]["own_cache_agreement"]["mean"]
        ]  # fmt: skip
        lines.append(
            f"- receiver {r}, transferred vs its own cache: "
            + (
                "at every length the transferred cache is within the receiver's own floor (max logit difference "
                "below 1.5x the floor, agreement CI reaching the floor's): the transfer adds no error of its own."
                if not worse
                else f"the transferred cache is worse than the receiver's own at L = {worse}."
            )
        )
    for r, why in skipped.items():
        lines.append(f"- receiver {r}: skipped ({why}).")
    return "\n".join(lines)
