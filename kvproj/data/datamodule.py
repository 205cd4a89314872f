"""The LightningDataModule: streams (source cache, target prefix) pairs made on the fly by the frozen models.

Text -> token pairs happens in the DataLoader (CPU); the frozen models run in `on_after_batch_transfer`, in the
main process on the training device (never in forked workers). The stream position of the batch the model
actually consumed is recorded there too, and saved in checkpoints for exact resume.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset

from kvproj.cache import KVCache, read_cache
from kvproj.data.facts import FactsConfig
from kvproj.data.pairs import EncodedExample, PairCodec, SideFormat
from kvproj.models import LoadedModel, ModelSpec, load_model
from kvproj.transfer import head_fallback

log = logging.getLogger(__name__)

PROTOCOLS = ("masked", "shared")
DATASETS = ("facts", "text")


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


class FrozenPair:
    """The frozen source and target models with their prompt formats; held outside any nn.Module so that
    their weights never enter a checkpoint."""

    def __init__(self, source: LoadedModel, target: LoadedModel, chat_template: bool, question_template: str):
        self.source, self.target = source, target
        self.source_format = SideFormat.build(source.tokenizer, chat_template, question_template)
        self.target_format = SideFormat.build(target.tokenizer, chat_template, question_template)
        self._head: KVCache | None = None

    def to(self, device: torch.device) -> FrozenPair:
        for side in (self.source, self.target):
            if side.device != device and not getattr(side.model, "is_quantized", False):
                side.model.to(device)
        self._head = None
        return self

    @torch.no_grad()
    def target_head(self) -> KVCache | None:
        """The target's own cache of its head (BOS / chat opening), computed once per device."""
        if not self.target_format.head_ids:
            return None
        if self._head is None or self._head.keys[0].device != self.target.device:
            ids = torch.tensor([self.target_format.head_ids], device=self.target.device)
            self._head = read_cache(self.target.model, ids, geometry=self.target.geometry)
        return self._head

    def head_only(self, batch_size: int) -> KVCache | None:
        """A prefix of the target's own head alone (no context): the floor. None if the target has no head."""
        head = self.target_head()
        if head is None:
            return None
        return KVCache(
            [k.expand(batch_size, -1, -1, -1) for k in head.keys],
            [v.expand(batch_size, -1, -1, -1) for v in head.values],
            attention_mask=head.attention_mask.expand(batch_size, -1),
            positions=head.positions.expand(batch_size, -1),
            geometry=head.geometry,
        )

    @torch.no_grad()
    def add_caches(self, batch: dict[str, Any], with_target_cache: bool = True) -> dict[str, Any]:
        """Run the frozen models on a collated batch (on its device): the source cache of the context, the
        target-native head as fallback, and the target's own cache of the prefix (the oracle) if asked."""
        self.to(batch["source_ids"].device)
        batch["source_cache"] = read_cache(
            self.source.model, batch["source_ids"], batch["source_mask"], geometry=self.source.geometry
        )
        head = self.target_head()
        batch["target_head"] = head_fallback(head, batch["target_prefix_mask"]) if head is not None else None
        if with_target_cache:
            batch["target_cache"] = read_cache(
                self.target.model,
                batch["target_prefix_ids"],
                batch["target_prefix_mask"],
                geometry=self.target.geometry,
            )
        return batch


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _uniform(seed: int, index: int, salt: str) -> float:
    digest = hashlib.blake2b(f"{seed}:{salt}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class _ExampleStream(IterableDataset):
    """Endless deterministic training stream from index `start`: example i is a pure function of (seed, i)."""

    def __init__(self, dm: KVPairDataModule, start: int) -> None:
        self.dm, self.start = dm, start

    def __iter__(self) -> Iterator[EncodedExample]:
        rank, world = _rank_world()
        for i, example in enumerate(self.dm.iter_examples(self.start), start=self.start):
            if (i - self.start) % world == rank:  # DDP: each rank reads its own share of the one stream
                yield self.dm.encode(example, stream_index=i)


class KVPairDataModule(L.LightningDataModule):
    """Paired source/target KV caches streamed from text.

    Args:
        source: The frozen model whose cache is projected.
        target: The frozen model that receives the projected cache.
        dataset: "facts" (synthetic facts, question answering; the default) or "text" (language modelling on
            general text: the context is the first part of a text, the answer the rest).
        facts: Options of the synthetic facts corpus.
        text: Text sources (for dataset "text", or mixed into "facts" with text.share).
        protocol: "masked" (the target never sees the context: the projected cache stands in for it) or
            "shared" (the target reads the context too; the projection fuses into its own cache).
        chat_template: Wrap context + question in each model's chat template (instruct models).
        question_template: Plain-format text after the context; must contain "{question}".
        answer_template: How the answer follows; must contain "{answer}".
        batch_size: Training examples per step.
        val_batch_size: Validation examples per batch.
        val_examples: Held-out validation examples (entities never seen in training).
        max_context_tokens: Keep at most this many target context tokens (the end of the context).
        lm_context_fraction: For text examples, the share of characters that forms the context.
        num_workers: DataLoader workers for tokenization (the models never run in workers).
    """

    def __init__(
        self,
        source: ModelSpec = ModelSpec("smollm2-135m-instruct"),
        target: ModelSpec = ModelSpec("gemma3-270m"),
        dataset: str = "facts",
        facts: FactsConfig = FactsConfig(),
        text: TextOptions = TextOptions(),
        protocol: str = "masked",
        chat_template: bool = False,
        question_template: str = "\nQuestion: {question}\nAnswer:",
        answer_template: str = " {answer}",
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
        if dataset not in DATASETS:
            raise ValueError(f"data.dataset: got {dataset!r}; valid: {', '.join(DATASETS)}")
        if protocol not in PROTOCOLS:
            raise ValueError(f"data.protocol: got {protocol!r}; valid: {', '.join(PROTOCOLS)}")
        if "{question}" not in question_template:
            raise ValueError(f"data.question_template must contain '{{question}}', got {question_template!r}")
        if "{answer}" not in answer_template:
            raise ValueError(f"data.answer_template must contain '{{answer}}', got {answer_template!r}")
        for name, value in (
            ("batch_size", batch_size),
            ("val_batch_size", val_batch_size),
            ("max_context_tokens", max_context_tokens),
        ):
            if value < 1:
                raise ValueError(f"data.{name}: must be >= 1, got {value}")
        if not 0.0 <= text.share <= 1.0:
            raise ValueError(f"data.text.share: must be in [0, 1], got {text.share}")
        self.save_hyperparameters()
        self.dataset, self.protocol = dataset, protocol
        self.facts_options, self.text_options = facts, text
        self.answer_template, self.max_context_tokens = answer_template, max_context_tokens
        self.lm_context_fraction = lm_context_fraction
        self.batch_size, self.val_batch_size, self.val_examples = batch_size, val_batch_size, val_examples
        self.num_workers = num_workers
        self.pair = FrozenPair(
            load_model(source if isinstance(source, ModelSpec) else ModelSpec(**source)),
            load_model(target if isinstance(target, ModelSpec) else ModelSpec(**target)),
            chat_template,
            question_template,
        )
        self.codec = PairCodec(
            self.pair.source.tokenizer,
            self.pair.target.tokenizer,
            self.pair.source_format,
            self.pair.target_format,
            answer_template=answer_template,
            max_context_tokens=max_context_tokens,
        )
        self.with_target_cache = protocol == "shared"  # the module may also ask for it (reconstruction loss)
        self.consumed = 0  # training examples the model has consumed (exact resume)
        self._splits: dict[str, list[dict]] | None = None
        self._texts: list[str] | None = None

    # ------------------------------------------------------------------ examples
    @property
    def splits(self) -> dict[str, list[dict]]:
        if self._splits is None:
            from kvproj.data.facts import generate_splits

            self._splits = {k: [e.to_dict() for e in v] for k, v in generate_splits(self.facts_options).items()}
        return self._splits

    @property
    def texts(self) -> list[str]:
        if self._texts is None:
            self._texts = load_texts(self.text_options)
            if not self._texts:
                raise ValueError(
                    "data.text: no texts found (files, hf_dataset and sampled are all empty or gave nothing); "
                    "set data.text.files to a .txt/.jsonl file or data.text.sampled to make a corpus"
                )
        return self._texts

    def text_example(self, i: int) -> dict[str, Any]:
        texts = self.texts
        text = texts[i % len(texts)]
        cut = int(len(text) * self.lm_context_fraction)
        space = text.rfind(" ", 0, cut)
        cut = space if space > 0 else cut
        return {"id": f"text-{i}", "context": text[:cut], "question": "", "answer": text[cut:].lstrip()}

    def is_text(self, i: int) -> bool:
        share = 1.0 if self.dataset == "text" else self.text_options.share
        return share > 0 and _uniform(self.facts_options.seed, i, "text") < share

    def iter_examples(self, start: int = 0) -> Iterator[dict[str, Any]]:
        """The training stream from example `start` (deterministic: example i depends on (seed, i) only)."""
        if self.dataset == "text":
            for i in itertools.count(start):
                yield self.text_example(i)
        from kvproj.data.facts import iter_train

        for i, fact in enumerate(iter_train(self.facts_options, start=start), start=start):
            yield self.text_example(i) if self.is_text(i) else fact.to_dict()

    def encode(self, example: dict[str, Any], stream_index: int = -1) -> EncodedExample:
        return self.codec.encode(example, stream_index=stream_index)

    def collate(self, examples: list[EncodedExample]) -> dict[str, Any]:
        return self.codec.collate(examples)

    def val_raw(self) -> list[dict]:
        if self.dataset == "text":
            return [self.text_example(10_000_000 + i) for i in range(self.val_examples)]
        return self.splits["val"][: self.val_examples]

    # ------------------------------------------------------------------ loaders
    def train_dataloader(self) -> DataLoader:
        log.info("training stream starts at example %d", self.consumed)
        return DataLoader(
            _ExampleStream(self, self.consumed),
            batch_size=self.batch_size,
            collate_fn=self.collate,
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader:
        encoded = [self.encode(e, stream_index=i) for i, e in enumerate(self.val_raw())]
        if not encoded:
            raise ValueError("data.val_examples: the validation set is empty; set data.val_examples >= 1")
        return DataLoader(encoded, batch_size=self.val_batch_size, collate_fn=self.collate, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Held-out facts (entities and values never seen in training); text: a later slice of the texts."""
        raw = (
            [self.text_example(20_000_000 + i) for i in range(self.val_examples)]
            if self.dataset == "text"
            else self.splits["test"]
        )
        encoded = [self.encode(e, stream_index=i) for i, e in enumerate(raw)]
        return DataLoader(encoded, batch_size=self.val_batch_size, collate_fn=self.collate, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    # ------------------------------------------------------------------ caches, on the device
    def transfer_batch_to_device(self, batch: dict[str, Any], device: torch.device, dataloader_idx: int):
        return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}

    def add_caches(self, batch: dict[str, Any]) -> dict[str, Any]:
        training = self.trainer is not None and self.trainer.training
        return self.pair.add_caches(batch, with_target_cache=self.with_target_cache or not training)

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        batch["step_started"] = time.perf_counter()  # step time includes the frozen forwards below
        trainer = self.trainer
        if trainer is not None and trainer.training:
            # this batch is the one the model consumes next (prefetching happens before transfer)
            rank, world = _rank_world()
            # the stream is shared round-robin by the ranks: after this batch, every rank has consumed up to here
            self.consumed = int(batch["stream_index"].max().item()) - rank + world
        return self.add_caches(batch)

    def state_dict(self) -> dict[str, Any]:
        return {"consumed": self.consumed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.consumed = int(state["consumed"])
