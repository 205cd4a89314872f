"""The LightningDataModule: streams (source cache, target prefix) pairs made on the fly by the frozen models.

Text -> token pairs happens in the DataLoader (CPU, optionally in workers); the frozen models (a `FrozenPair`
from kvproj/pair.py, handed in, never built here) run in `on_after_batch_transfer`, in the main process on the
training device. The stream position of the batch the model actually consumed is recorded there too, and saved
in checkpoints for exact resume.

Sharding: the training stream is cut into global batches of `batch_size x world_size` consecutive examples;
rank r takes the r-th `batch_size` slice of each, and DataLoader worker w of a rank builds the global batches
g with g % num_workers == w. Worker batches come back in order, so after global batch g every rank has consumed
exactly the first (g + 1) x batch_size x world_size examples: resume stays exact with workers and DDP.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from kvproj.data.facts import FactsConfig
from kvproj.data.pairs import EncodedExample
from kvproj.data.passages import PassagesConfig, passage_example
from kvproj.data.text import lm_example
from kvproj.pair import FrozenPair

log = logging.getLogger(__name__)

PROTOCOLS = ("masked", "shared")
DATASETS = ("facts", "passages", "text")


@dataclass
class TextOptions:
    """General text for language-modelling examples (context = first part of a text, answer = the rest).

    Args:
        files: Local .txt / .jsonl files or folders.
        hf_dataset: A datasets name or builder ("json", "text") read with streaming.
        hf_data_files: data_files for a builder such as "json".
        field: Text field of JSONL records / dataset rows.
        sampled: Make broad-vocabulary text offline by sampling a model: {"model": NAME, "n_texts": N,
            "seed": S, "max_new_tokens": T}; cached as JSONL under $KVPROJ_HOME/corpora.
        max_texts: Read at most this many texts.
        share: Share of training examples taken from text when the dataset is "facts" (a mix).
    """

    files: list[str] = field(default_factory=list)
    hf_dataset: str | None = None
    hf_data_files: list[str] | None = None
    field: str = "text"
    sampled: dict[str, Any] | None = None
    max_texts: int = 20000
    share: float = 0.0


def load_texts(options: TextOptions) -> list[str]:
    """All configured text sources, in a fixed order, up to `max_texts`."""
    from kvproj.data import text as sources

    streams = [sources.iter_local_texts(path, field=options.field) for path in options.files]
    if options.hf_dataset:
        streams.append(
            sources.iter_hf_dataset(options.hf_dataset, field=options.field, data_files=options.hf_data_files)
        )
    if options.sampled:
        from kvproj.zoo import kvproj_home

        spec = dict(options.sampled)
        model = spec.pop("model")
        n_texts, seed = int(spec.pop("n_texts", 2000)), int(spec.pop("seed", 0))
        out = kvproj_home() / "corpora" / f"{model.replace(':', '_').replace('/', '_')}-n{n_texts}-s{seed}.jsonl"
        path = sources.sample_corpus(model, n_texts=n_texts, seed=seed, out_path=out, **spec)
        streams.append(sources.iter_local_texts(path, field="text"))
    return [t for t in itertools.islice(itertools.chain(*streams), options.max_texts) if t.strip()]


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _uniform(seed: int, index: int, salt: str) -> float:
    digest = hashlib.blake2b(f"{seed}:{salt}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def stream_source(dataset: str, facts_seed: int, text_share: float, passages_share: float, index: int) -> str:
    """Which corpus training example `index` comes from: "facts", "passages" or "text". For dataset "facts" the
    mix is a seeded draw per index (text with probability text_share, passages with passages_share, else facts);
    any other dataset is all one corpus. The training stream and `plan`'s length sample both call this."""
    if dataset != "facts":
        return dataset
    u = _uniform(facts_seed, index, "text")
    if u < text_share:
        return "text"
    if u < text_share + passages_share:
        return "passages"
    return "facts"


def synthetic_example(kind: str, index: int, facts: FactsConfig, passages: PassagesConfig) -> dict[str, Any]:
    """Training example `index` of the facts or passages corpus (`stream_source` says which)."""
    if kind == "passages":
        return passage_example(passages, "train", index)
    from kvproj.data.facts import train_example

    return train_example(facts, index).to_dict()


def shard_indices(start: int, batch_size: int, rank: int, world: int, worker: int, workers: int) -> Iterator[int]:
    """Stream indices one (rank, worker) builds, in order (see the module docstring for the layout)."""
    per_global = batch_size * world
    for g in itertools.count(worker, max(workers, 1)):
        first = start + g * per_global + rank * batch_size
        yield from range(first, first + batch_size)


class _ExampleStream(IterableDataset):
    """Endless deterministic training stream from index `start`: example i is a pure function of (seed, i)."""

    def __init__(self, dm: KVPairDataModule, start: int) -> None:
        self.dm, self.start = dm, start

    def __iter__(self) -> Iterator[EncodedExample]:
        rank, world = _rank_world()
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for i in shard_indices(self.start, self.dm.batch_size, rank, world, worker, workers):
            yield self.dm.encode(self.dm.example_at(i), stream_index=i)


class KVPairDataModule(L.LightningDataModule):
    """Paired source/target KV caches streamed from text.

    Args:
        pair: The frozen source and target with their prompt formats (the CLI builds it from the `pair:` section
            and hands the same object to the model).
        dataset: "facts" (synthetic facts, question answering; the default), "passages" (multi-genre passages
            with same-type distractors; validation and test on held-out genres) or "text" (language modelling on
            general text: the context is the first part of a text, the answer the rest).
        facts: Options of the synthetic facts corpus.
        passages: Options of the multi-genre passages (for dataset "passages", or mixed into "facts" with
            passages.share).
        text: Text sources (for dataset "text", or mixed into "facts" with text.share).
        protocol: "masked" (the target never sees the context: the projected cache stands in for it) or
            "shared" (the target reads the context too; the projection fuses into its own cache).
        answer_template: How the answer follows; must contain "{answer}".
        answer_end: Tokens scored after each training answer (tokenized on their own), e.g. "\n": the target
            learns from the projected cache where the answer ends, instead of running a name on ("Tamsworthsmith"
            for "Tamsworth"). Training and validation only: `kvproj evaluate` scores the answer alone, and exact
            match reads the generation's first line. Not used for language-modelling examples.
        answer_follow: Characters of the context that follow the answer's first whole-word mention (through the
            first line break), scored after each training answer like answer_end: the target learns from the
            projected cache what comes after the answer in the text ("DEW-6716, which" rather than
            "DEW-67165565..."). 0: off (configs/default.yaml: 12). Training and validation only; not with
            answer_end. The text is tokenized on its own and may end inside a word.
        batch_size: Training examples per step.
        val_batch_size: Validation examples per batch.
        val_examples: Held-out validation examples (facts: entities never seen in training; text: a seeded
            slice of the texts that training never reads, and another one of the same size for test).
        max_context_tokens: Keep at most this many target context tokens (the end of the context).
        lm_context_fraction: For text examples, the share of characters that forms the context.
        num_workers: DataLoader workers for tokenization (the models never run in workers).
    """

    def __init__(
        self,
        pair: FrozenPair | None = None,
        dataset: str = "facts",
        facts: FactsConfig = FactsConfig(),
        passages: PassagesConfig = PassagesConfig(),
        text: TextOptions = TextOptions(),
        protocol: str = "masked",
        answer_template: str = " {answer}",
        answer_end: str = "",
        answer_follow: int = 0,
        batch_size: int = 16,
        val_batch_size: int = 16,
        val_examples: int = 64,
        max_context_tokens: int = 256,
        lm_context_fraction: float = 0.5,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        facts = FactsConfig(**facts) if isinstance(facts, dict) else facts
        text = TextOptions(**text) if isinstance(text, dict) else text
        passages = PassagesConfig(**passages) if isinstance(passages, dict) else passages
        if dataset not in DATASETS:
            raise ValueError(f"data.dataset: got {dataset!r}; valid: {', '.join(DATASETS)}")
        if protocol not in PROTOCOLS:
            raise ValueError(f"data.protocol: got {protocol!r}; valid: {', '.join(PROTOCOLS)}")
        if pair is None:
            raise ValueError("KVPairDataModule needs the frozen pair (the CLI builds it from the `pair:` section)")
        if "{answer}" not in answer_template:
            raise ValueError(f"data.answer_template must contain '{{answer}}', got {answer_template!r}")
        if answer_end and not pair.target.tokenizer(answer_end, add_special_tokens=False).input_ids:
            raise ValueError(
                f"data.answer_end: got {answer_end!r}; valid: plain text that tokenizes to at least one token "
                f"(e.g. '\\n'), or '' for none"
            )
        if isinstance(answer_follow, bool) or not isinstance(answer_follow, int) or answer_follow < 0:
            raise ValueError(
                f"data.answer_follow: got {answer_follow!r}; valid: an int >= 0 (characters of the context after "
                "the answer; 0: off)"
            )
        if answer_follow and answer_end:
            raise ValueError(
                f"data.answer_end ({answer_end!r}) and data.answer_follow ({answer_follow}): valid: one of them, "
                "both say what is scored after the answer"
            )
        for name, value in (
            ("batch_size", batch_size),
            ("val_batch_size", val_batch_size),
            ("val_examples", val_examples),
            ("max_context_tokens", max_context_tokens),
        ):
            if value < 1:
                raise ValueError(f"data.{name}: must be >= 1, got {value}")
        if num_workers < 0:
            raise ValueError(f"data.num_workers: must be >= 0, got {num_workers}")
        if not 0.0 < lm_context_fraction < 1.0:
            raise ValueError(f"data.lm_context_fraction: must be in (0, 1), got {lm_context_fraction}")
        if not 0.0 <= text.share <= 1.0:
            raise ValueError(f"data.text.share: must be in [0, 1], got {text.share}")
        if dataset == "facts" and text.share + passages.share > 1.0:
            raise ValueError(
                f"data.text.share + data.passages.share: must be <= 1, got {text.share} + {passages.share}"
            )
        self.save_hyperparameters(ignore=["pair"])
        self.dataset, self.protocol = dataset, protocol
        self.facts_options, self.text_options, self.passages_options = facts, text, passages
        self.answer_template, self.max_context_tokens = answer_template, max_context_tokens
        self.lm_context_fraction = lm_context_fraction
        self.batch_size, self.val_batch_size, self.val_examples = batch_size, val_batch_size, val_examples
        self.num_workers = num_workers
        self.pair = pair
        self.codec = pair.codec(
            answer_template=answer_template,
            max_context_tokens=max_context_tokens,
            answer_end=answer_end,
            answer_follow=answer_follow,
        )
        # what evaluation encodes with (FactsEvalCallback, as `kvproj evaluate`): the answer alone is scored, without
        # the training-only answer_end / answer_follow tokens
        self.eval_codec = pair.codec(answer_template=answer_template, max_context_tokens=max_context_tokens)
        self.consumed = 0  # training examples the model has consumed (exact resume)
        self._splits: dict[str, list[dict]] | None = None
        self._text_splits: dict[str, list[str]] | None = None

    # ------------------------------------------------------------------ examples
    @property
    def splits(self) -> dict[str, list[dict]]:
        if self._splits is None:
            from kvproj.data.facts import generate_splits

            self._splits = {k: [e.to_dict() for e in v] for k, v in generate_splits(self.facts_options).items()}
        return self._splits

    @property
    def text_splits(self) -> dict[str, list[str]]:
        """The texts split once, by seed, into disjoint train / val / test lists (duplicates removed first, so no
        held-out text is also a training text): val and test take `val_examples` texts each, train the rest."""
        if self._text_splits is None:
            texts = list(dict.fromkeys(load_texts(self.text_options)))
            if not texts:
                raise ValueError(
                    "data.text: no texts found (files, hf_dataset and sampled are all empty or gave nothing); "
                    "set data.text.files to a .txt/.jsonl file or data.text.sampled to make a corpus"
                )
            n = self.val_examples
            if len(texts) < 2 * n + 1:
                raise ValueError(
                    f"data.text: {len(texts)} distinct texts, but validation and test hold out data.val_examples="
                    f"{n} each and training needs at least one more; add texts or lower data.val_examples"
                )
            order = list(range(len(texts)))
            random.Random(f"text-split/{self.facts_options.seed}").shuffle(order)
            val, test = sorted(order[:n]), sorted(order[n : 2 * n])
            held = set(val) | set(test)
            self._text_splits = {
                "train": [t for i, t in enumerate(texts) if i not in held],
                "val": [texts[i] for i in val],
                "test": [texts[i] for i in test],
            }
        return self._text_splits

    def text_example(self, i: int, split: str = "train") -> dict[str, Any]:
        texts = self.text_splits[split]
        return lm_example(texts[i % len(texts)], self.lm_context_fraction, f"text-{split}-{i}")

    def source_of(self, i: int) -> str:
        """Which corpus training example i comes from: "facts", "passages" or "text" (`stream_source`)."""
        return stream_source(
            self.dataset, self.facts_options.seed, self.text_options.share, self.passages_options.share, i
        )

    def example_at(self, i: int) -> dict[str, Any]:
        """Training example i of the stream (deterministic: a pure function of (seed, i))."""
        kind = self.source_of(i)
        if kind == "text":
            return self.text_example(i)
        return synthetic_example(kind, i, self.facts_options, self.passages_options)

    def iter_examples(self, start: int = 0) -> Iterator[dict[str, Any]]:
        """The training stream from example `start`."""
        for i in itertools.count(start):
            yield self.example_at(i)

    def encode(self, example: dict[str, Any], stream_index: int = -1) -> EncodedExample:
        return self.codec.encode(example, stream_index=stream_index)

    def collate(self, examples: list[EncodedExample]) -> dict[str, Any]:
        return self.codec.collate(examples)

    def held_out(self, split: str) -> list[dict]:
        """The raw held-out examples of `split` ("val" or "test"). Facts: entities and values never seen in
        training (val: the first `val_examples`; test: all of them); passages: `val_examples` from held-out genres;
        text: the `val_examples` held-out texts of the split."""
        if split not in ("val", "test"):
            raise ValueError(f"held-out split: got {split!r}; valid: val, test")
        if self.dataset == "text":
            return [self.text_example(i, split) for i in range(self.val_examples)]
        if self.dataset == "passages":
            return [passage_example(self.passages_options, split, i) for i in range(self.val_examples)]
        return self.splits[split][: self.val_examples] if split == "val" else self.splits[split]

    def val_raw(self) -> list[dict]:
        return self.held_out("val")

    # ------------------------------------------------------------------ loaders
    def train_dataloader(self) -> DataLoader:
        log.info("training stream starts at example %d", self.consumed)
        if self.dataset == "text" or (self.dataset == "facts" and self.text_options.share > 0):
            # load (or sample) the corpus once, here: DataLoader workers inherit it instead of each loading it
            _ = self.text_splits
        return DataLoader(
            _ExampleStream(self, self.consumed),
            batch_size=self.batch_size,
            collate_fn=self.collate,
            num_workers=self.num_workers,
        )

    def _eval_loader(self, split: str) -> DataLoader:
        encoded = [self.encode(e, stream_index=i) for i, e in enumerate(self.held_out(split))]
        if not encoded:
            raise ValueError(f"data.val_examples: the {split} set is empty; set data.val_examples >= 1")
        # already encoded in the main process: workers would only copy them (and repeat nothing: a map-style
        # dataset is split by index)
        return DataLoader(encoded, batch_size=self.val_batch_size, collate_fn=self.collate, shuffle=False)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        """The held-out test examples (see `held_out`)."""
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    # ------------------------------------------------------------------ caches, on the device
    def transfer_batch_to_device(self, batch: dict[str, Any], device: torch.device, dataloader_idx: int):
        return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}

    def add_caches(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The source cache and the target's head; the target's own cache (the oracle) is left to the module,
        which makes it once per batch when something needs it (`KVProjectorModule.target_cache`)."""
        return self.pair.add_caches(batch, with_target_cache=False)

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        batch["step_started"] = time.perf_counter()  # step time includes the frozen forwards below
        trainer = self.trainer
        if trainer is not None and trainer.training:
            # this batch is the one the model consumes next (prefetching happens before transfer)
            rank, world = _rank_world()
            # global batch g spans [start + g*B*world, start + (g+1)*B*world); this rank holds slice `rank`
            last = int(batch["stream_index"].max().item())
            self.consumed = last + 1 + (world - 1 - rank) * len(batch["ids"])
        return self.add_caches(batch)

    def state_dict(self) -> dict[str, Any]:
        return {"consumed": self.consumed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.consumed = int(state["consumed"])
