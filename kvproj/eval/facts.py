"""The facts-transfer task: every condition on the same examples, scored on what the model generates.

Conditions: target_alone (floor), target_text (oracle), source_text, projected, shuffled_source (the projected
cache of another example: must fall to the floor), text_to_text (the source writes a hint in words, the target
reads it), untrained (the projector at initialization). A projector in fuse mode (the shared-context protocol) adds
its projection to the target's own cache of the context; its shuffled_source keeps that cache and takes the source
from another example (what remains of the gain is an adapter effect, not transfer).
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F

from kvproj.adapters.heads import logits_from_hidden
from kvproj.cache import (
    KVCache,
    forward_with_cache,
    generate_from_ids,
    generate_with_cache,
    hidden_states,
    read_cache,
)
from kvproj.data.pairs import PairCodec, mask_rows, pad_rows
from kvproj.eval import metrics
from kvproj.losses import kl_per_example
from kvproj.pair import FrozenPair
from kvproj.transfer import CacheTransfer

log = logging.getLogger(__name__)

Condition = Literal[
    "target_alone", "target_text", "source_text", "projected", "shuffled_source", "text_to_text", "untrained"
]
CONDITIONS: tuple[str, ...] = get_args(Condition)
TARGET_SIDE = ("target_alone", "target_text", "projected", "shuffled_source", "text_to_text", "untrained")


@dataclass
class EvalSettings:
    """Args:
    batch_size: Examples per batch.
    max_new_tokens: Greedy tokens generated per answer.
    seed: Seeds the shuffled control, the untrained projector and the bootstrap.
    hint_tokens: Tokens the source may write for text_to_text.
    hint_prompt: What the source reads after the context to write its hint (plain format).
    conditions: Which conditions to run.
    """

    batch_size: int = 16
    max_new_tokens: int = 16
    seed: int = 0
    hint_tokens: int = 32
    hint_prompt: str = "\nIn one sentence, the key facts above are:"
    conditions: tuple[str, ...] = CONDITIONS
    bootstrap_resamples: int = metrics.BOOTSTRAP_RESAMPLES

    def __post_init__(self) -> None:
        unknown = sorted(set(self.conditions) - set(CONDITIONS))
        if unknown:
            raise ValueError(f"conditions: unknown {unknown}; valid: {', '.join(CONDITIONS)}")


def derangement(n: int, seed: int, contexts: Sequence[str] | None = None) -> list[int]:
    """A seeded permutation with no fixed point (each example gets another example's cache). With `contexts` (one
    per example), no example gets the cache of an example with the same context either: an eval file that asks
    several questions about one passage must not hand the shuffled control its own passage. With distinct
    contexts the permutation is the same as without them."""
    if n < 2:
        return list(range(n))
    keys = list(contexts) if contexts is not None else list(range(n))
    largest = max(Counter(keys).values())
    if largest > n - largest:
        raise ValueError(
            f"shuffled_source: {largest} of the {n} examples of a batch share one context, so no shuffle gives each "
            "another context; valid: a batch where no context holds more than half of the examples (a larger "
            "--batch_size, or fewer questions per passage)"
        )
    rng = random.Random(seed)
    while True:
        perm = list(range(n))
        rng.shuffle(perm)
        if all(keys[i] != keys[p] for i, p in enumerate(perm)):
            return perm


@dataclass
class _Scores:
    generated: list[str] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    nll: list[float | None] = field(default_factory=list)
    kl: list[float | None] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)


def _answer_scores(model, hidden: torch.Tensor, labels: torch.Tensor):
    """Per example: mean answer NLL [B], plus logits at answer positions [N, V] and their example index [N]."""
    targets = labels[:, 1:]
    mask = targets != -100
    logits = logits_from_hidden(model, hidden[:, :-1][mask]).float()  # [N, V]
    example = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(targets)[mask]
    token_nll = F.cross_entropy(logits, targets[mask], reduction="none")
    nll = torch.zeros(labels.shape[0], device=labels.device).index_add_(0, example, token_nll)
    count = torch.zeros(labels.shape[0], device=labels.device).index_add_(0, example, torch.ones_like(token_nll))
    return nll / count.clamp_min(1), logits, example


@torch.no_grad()
def score_prefix(
    pair: FrozenPair,
    batch: dict[str, Any],
    prefix: KVCache | None,
    *,
    max_new_tokens: int = 16,
    generate: bool = True,
    oracle_logits: torch.Tensor | None = None,
) -> dict[str, Any]:
    """What the target does after any prefix cache, scored as the facts task scores its conditions (for
    experiments that build their own prefixes): greedy answers after the batch's questions (if `generate`), mean
    answer NLL per example, KL(oracle || this) per example when the oracle's answer-position logits are given.

    Returns {"generated": [str] or None, "answer_nll": [float], "kl_to_oracle": [float] or [None],
    "logits": answer-position logits [N, V] (pass the oracle's as `oracle_logits`)}.
    """
    model, tok = pair.target.model, pair.target.tokenizer
    generated = None
    if generate:
        if prefix is None:
            new = generate_from_ids(model, batch["question_ids"], batch["question_mask"],
                                    max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id)  # fmt: skip
        else:
            new = generate_with_cache(
                model, prefix, batch["question_ids"], batch["question_mask"], max_new_tokens=max_new_tokens
            )
        generated = tok.batch_decode(new, skip_special_tokens=True)
    if prefix is None:
        hidden = hidden_states(model, batch["continuation_ids"], batch["continuation_mask"])
    else:
        hidden = forward_with_cache(
            model, prefix, batch["continuation_ids"], batch["continuation_mask"], return_hidden=True
        )
    nll, logits, _ = _answer_scores(model, hidden, batch["labels"])
    b = batch["labels"].shape[0]
    kl = _kl_per_example(logits, oracle_logits, batch["labels"]) if oracle_logits is not None else [None] * b
    return {"generated": generated, "answer_nll": nll.tolist(), "kl_to_oracle": kl, "logits": logits}


class FactsEvaluator:
    """Runs the facts task for one pair and projector.

    Args:
        pair: The frozen source and target.
        codec: Turns examples into batches (same formats as training).
        transfer: The trained projector with its fixed steps.
        untrained: The same architecture at initialization (None skips that condition).
        settings: Batch size, generation length, seed, conditions.
    """

    def __init__(
        self,
        pair: FrozenPair,
        codec: PairCodec,
        transfer: CacheTransfer,
        untrained: CacheTransfer | None,
        settings: EvalSettings | None = None,
    ) -> None:
        self.pair, self.codec, self.transfer, self.untrained = pair, codec, transfer, untrained
        self.fuse = transfer.projector.mode == "fuse"  # the shared-context protocol: the target reads the context
        self.settings = settings or EvalSettings()
        self.conditions = [c for c in self.settings.conditions if c != "untrained" or untrained is not None]

    # --------------------------------------------------------------------------------------------- prefixes
    def _timed(self, fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn(*args)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return out, time.perf_counter() - start

    def _projected(self, batch: dict[str, Any], transfer: CacheTransfer, fresh_source: bool = False) -> KVCache:
        """Project the batch's source cache. `fresh_source` re-runs the source (so `projected`'s latency counts
        the source prefill); the controls reuse the cache `add_caches` already made. A projector in fuse mode (the
        shared-context protocol) adds its projection to the target's own cache of the context, which the target
        reads here (and its latency counts)."""
        if fresh_source:
            source = read_cache(
                self.pair.source.model,
                batch["source_ids"],
                batch["source_mask"],
                geometry=self.pair.source.geometry,
            )
        else:
            source = batch["source_cache"]
        base = self.pair.target_cache(batch) if transfer.projector.mode == "fuse" else None
        return transfer(
            source,
            batch["align_index"],
            batch["target_prefix_mask"],
            fallback=batch.get("target_head"),
            target_base=base,
        )

    def _hint_prefix(self, batch: dict[str, Any], raw: list[dict]) -> tuple[KVCache, list[str]]:
        """text_to_text: the source writes a hint after reading the context; the target reads head + hint (with a
        fuse projector, the shared-context protocol: head + context + hint, since the target reads the context)."""
        src = self.pair.source
        prompt_ids = src.tokenizer(self.settings.hint_prompt, add_special_tokens=False).input_ids
        ids = [list(self.codec.encode(e).source_ids) + prompt_ids for e in raw]
        device = src.device
        input_ids = pad_rows(ids, src.tokenizer.pad_token_id, left=True).to(device)
        mask = mask_rows(ids, left=True).to(device)
        new = generate_from_ids(
            src.model,
            input_ids,
            mask,
            max_new_tokens=self.settings.hint_tokens,
            do_sample=False,
            pad_token_id=src.tokenizer.pad_token_id,
        )
        hints = [h.strip() for h in src.tokenizer.batch_decode(new, skip_special_tokens=True)]
        tgt = self.pair.target
        head = self.pair.target_format.head_ids
        if self.fuse:
            # the target's own prefix (head + context) and then the hint, on a line of its own
            reads = [list(self.codec.encode(e).target_prefix_ids) for e in raw]
            hint_rows = [tgt.tokenizer("\n" + (h or "."), add_special_tokens=False).input_ids for h in hints]
            rows = [r + h for r, h in zip(reads, hint_rows)]
        else:
            rows = [head + tgt.tokenizer(h or ".", add_special_tokens=False).input_ids for h in hints]
        prefix_ids = pad_rows(rows, tgt.tokenizer.pad_token_id, left=True).to(tgt.device)
        prefix_mask = mask_rows(rows, left=True).to(tgt.device)
        return read_cache(tgt.model, prefix_ids, prefix_mask, geometry=tgt.geometry), hints

    def _prefix(
        self, condition: str, batch: dict[str, Any], raw: list[dict]
    ) -> tuple[KVCache | None, list | None]:
        """The target's prefix cache under `condition` (None: no prefix at all)."""
        if condition == "target_alone":
            return self.pair.head_only(len(raw)), None
        if condition == "target_text":
            return self.pair.target_cache(batch), None
        if condition == "projected":
            return self._projected(batch, self.transfer, fresh_source=True), None
        if condition == "shuffled_source":
            perm = derangement(len(raw), self.settings.seed, [r["context"] for r in raw])
            if self.fuse:
                # the target keeps its own cache of THIS context; only the source's contribution comes from another
                # example: what the fused cache gains without the right source is an adapter effect, not transfer
                shuffled = {**batch, "source_cache": batch["source_cache"].select(perm)}
                return self._projected(shuffled, self.transfer), None
            return self._projected(batch, self.transfer).select(perm), None
        if condition == "untrained":
            return self._projected(batch, self.untrained), None
        if condition == "text_to_text":
            return self._hint_prefix(batch, raw)
        raise ValueError(f"unknown condition {condition!r}")

    def _prefix_and_answer(self, condition: str, batch: dict[str, Any], raw: list[dict], generate: bool = True):
        prefix, hints = self._prefix(condition, batch, raw)
        if not generate:
            return prefix, hints, torch.zeros(len(raw), 0, dtype=torch.long)
        new = self._generate(prefix, self.pair.target.model, batch["question_ids"], batch["question_mask"])
        return prefix, hints, new

    @torch.no_grad()
    def time_to_first_token(self, condition: str, raw: list[dict[str, Any]]) -> float:
        """Seconds from the raw examples' tokens to the target's first answer token under `condition`: everything
        the condition needs (`target_text`: the target reads the context; `projected`: the source reads it and
        the projector maps its cache; `text_to_text`: the source reads it, writes its hint, the target reads the
        hint), then the question and one greedy token. Tokenization is not counted."""
        batch = self.codec.collate([self.codec.encode(e) for e in raw])
        target = self.pair.target
        batch = {k: v.to(target.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        self.pair.add_target_head(batch)  # computed once per pair: not part of any condition's time

        def first_token():
            prefix, _ = self._prefix(condition, batch, raw)
            return generate_with_cache(target.model, prefix, batch["question_ids"], batch["question_mask"],
                                       max_new_tokens=1)  # fmt: skip

        _, seconds = self._timed(first_token)
        return seconds

    # --------------------------------------------------------------------------------------------- scoring
    def _generate(self, prefix: KVCache | None, model, question_ids, question_mask) -> torch.Tensor:
        n = self.settings.max_new_tokens
        if prefix is None:  # a target without any head token: generate from the question alone
            return generate_from_ids(
                model, question_ids, question_mask, max_new_tokens=n, do_sample=False,
                pad_token_id=self.pair.target.tokenizer.pad_token_id,
            )  # fmt: skip
        return generate_with_cache(model, prefix, question_ids, question_mask, max_new_tokens=n)

    def _hidden(self, prefix: KVCache | None, batch: dict[str, Any]) -> torch.Tensor:
        model = self.pair.target.model
        if prefix is None:
            return hidden_states(model, batch["continuation_ids"], batch["continuation_mask"])
        return forward_with_cache(
            model, prefix, batch["continuation_ids"], batch["continuation_mask"], return_hidden=True
        )

    @torch.no_grad()
    def _source_text(self, batch: dict[str, Any], raw: list[dict], scores: _Scores) -> None:
        """The source answers from the text itself (its own tokenizer and format)."""
        src, fmt = self.pair.source, self.pair.source_format
        tok = src.tokenizer
        questions = [tok(fmt.middle + e["question"] + fmt.tail, add_special_tokens=False).input_ids for e in raw]
        answers = [
            tok(self.codec.answer_template.format(answer=e["answer"]), add_special_tokens=False).input_ids
            for e in raw
        ]
        dev = src.device

        def run():
            prefix = read_cache(src.model, batch["source_ids"], batch["source_mask"], geometry=src.geometry)
            q_ids, q_mask = pad_rows(questions, tok.pad_token_id, True).to(dev), mask_rows(questions, True).to(dev)
            new = generate_with_cache(
                src.model, prefix, q_ids, q_mask, max_new_tokens=self.settings.max_new_tokens
            )
            return prefix, new

        (prefix, new), seconds = self._timed(run)  # noqa: B023
        cont = [q + a for q, a in zip(questions, answers)]
        labels = [[-100] * len(q) + a for q, a in zip(questions, answers)]
        c_ids, c_mask = pad_rows(cont, tok.pad_token_id, False).to(dev), mask_rows(cont, False).to(dev)
        hidden = forward_with_cache(src.model, prefix, c_ids, c_mask, return_hidden=True)
        nll, _, _ = _answer_scores(src.model, hidden, pad_rows(labels, -100, False).to(dev))
        scores.generated += tok.batch_decode(new, skip_special_tokens=True)
        scores.prompts += [e["context"] + fmt.middle + e["question"] + fmt.tail for e in raw]
        scores.nll += nll.tolist()
        scores.kl += [None] * len(raw)  # different vocabulary: no KL to the target's oracle
        scores.latency_ms += [1000 * seconds / len(raw)] * len(raw)

    @torch.no_grad()
    def run(
        self, examples: list[dict[str, Any]], progress: Callable[[int], None] | None = None, generate: bool = True
    ):
        """Returns (results dict, generation rows). `generate=False` scores likelihoods only (the lm task)."""
        if not examples:
            raise ValueError("the evaluation set is empty")
        s = self.settings
        target = self.pair.target
        tok = target.tokenizer
        scores = {c: _Scores() for c in self.conditions}
        for raw, batch in self.codec.batches(examples, s.batch_size):
            batch = {k: v.to(target.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            batch = self.pair.add_caches(batch, with_target_cache=False)
            b = len(raw)
            oracle_logits = None
            order = ["target_text"] + [c for c in self.conditions if c != "target_text"]
            for condition in order:
                if condition not in self.conditions:
                    continue
                if condition == "source_text":
                    if not generate:
                        continue
                    self._source_text(batch, raw, scores[condition])
                    continue

                (prefix, hints, new), seconds = self._timed(
                    self._prefix_and_answer, condition, batch, raw, generate
                )
                hidden = self._hidden(prefix, batch)
                nll, logits, _ = _answer_scores(target.model, hidden, batch["labels"])
                if condition == "target_text":
                    oracle_logits = logits
                kl = _kl_per_example(logits, oracle_logits, batch["labels"]) if oracle_logits is not None else None
                sc = scores[condition]
                sc.generated += tok.batch_decode(new, skip_special_tokens=True)
                question_text = [
                    self.pair.target_format.middle + e["question"] + self.pair.target_format.tail for e in raw
                ]
                if condition == "target_text":
                    sc.prompts += [e["context"] + q for e, q in zip(raw, question_text)]
                elif condition == "text_to_text" and self.fuse:
                    sc.prompts += [f"{e['context']}\n[hint] {h}{q}" for e, h, q in zip(raw, hints, question_text)]
                elif condition == "text_to_text":
                    sc.prompts += [f"[hint] {h}{q}" for h, q in zip(hints, question_text)]
                else:
                    sc.prompts += [f"[{condition} cache]{q}" for q in question_text]
                sc.nll += nll.tolist()
                sc.kl += kl if kl is not None else [None] * b
                sc.latency_ms += [1000 * seconds / b] * b
            if progress is not None:
                progress(b)
        return self._summarize(examples, scores)

    def _summarize(self, examples: list[dict], scores: dict[str, _Scores]):
        s = self.settings
        answers = [e["answer"] for e in examples]
        conditions: dict[str, Any] = {}
        rows: list[dict[str, Any]] = []
        for ci, (name, sc) in enumerate(scores.items()):
            text = metrics.text_scores(sc.generated, answers)
            per_metric = {**text, "answer_nll": sc.nll, "kl_to_oracle": sc.kl, "latency_ms": sc.latency_ms}
            conditions[name] = metrics.summarize(
                per_metric, seed=metrics.condition_seed(s.seed, ci), resamples=s.bootstrap_resamples
            )
            for e, g, p, c, nll, kl in zip(examples, sc.generated, sc.prompts, text["exact_match"], sc.nll, sc.kl):
                rows.append({"id": e.get("id"), "condition": name, "prompt": p, "generated": g, "answer": e["answer"],
                             "correct": bool(c), "answer_nll": nll, "kl_to_oracle": kl})  # fmt: skip
        summary = {"n": len(examples), "conditions": conditions, "gap_closed": metrics.gap_closed_of(conditions)}
        return summary, rows


def _kl_per_example(logits: torch.Tensor, oracle: torch.Tensor, labels: torch.Tensor) -> list[float | None]:
    """`kvproj.losses.kl_per_example` over each example's answer positions (None: no answer token scored)."""
    mask = labels[:, 1:] != -100
    example = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(mask)[mask]
    kl = kl_per_example(logits, oracle, example, labels.shape[0])
    return [None if v != v else v for v in kl.tolist()]
