"""The frozen source/target pair and its prompt formats; and `load_transfer`, the one loader of a trained transfer.

Owned by neither the data nor the model layer: training builds a `FrozenPair` from the config's `pair:` section
and hands it to both the datamodule and the LightningModule; `evaluate`, `predict` and the experiments rebuild
everything from an exported projector folder with `load_transfer`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kvproj.adapters.attention import key_norms
from kvproj.cache import KVCache, read_cache
from kvproj.data.pairs import PairCodec, SideFormat
from kvproj.models import LoadedModel, ModelSpec, load_model, resolve_device
from kvproj.transfer import CacheTransfer, head_fallback

log = logging.getLogger(__name__)

DEFAULT_QUESTION_TEMPLATE = "\nQuestion: {question}\nAnswer:"


class FrozenPair:
    """The frozen source and target models with their prompt formats; held outside any nn.Module so that
    their weights never enter a checkpoint.

    Args:
        source: The frozen model whose cache is projected.
        target: The frozen model that receives the projected cache.
        chat_template: Wrap context + question in each model's chat template (instruct models).
        question_template: Plain-format text after the context; must contain "{question}".
    """

    def __init__(
        self,
        source: ModelSpec = ModelSpec("smollm2-135m-instruct"),
        target: ModelSpec = ModelSpec("gemma3-270m"),
        chat_template: bool = False,
        question_template: str = DEFAULT_QUESTION_TEMPLATE,
    ) -> None:
        specs = [s if isinstance(s, ModelSpec) else ModelSpec(**s) for s in (source, target)]
        self._init(specs[0], specs[1], chat_template, question_template)

    @classmethod
    def from_models(
        cls,
        source: LoadedModel,
        target: LoadedModel,
        chat_template: bool = False,
        question_template: str = DEFAULT_QUESTION_TEMPLATE,
    ) -> FrozenPair:
        """A pair of models that are already loaded (tests, experiments that share models)."""
        pair = cls.__new__(cls)
        pair._init(source, target, chat_template, question_template)
        return pair

    def _init(
        self,
        source: LoadedModel | ModelSpec,
        target: LoadedModel | ModelSpec,
        chat_template: bool,
        question_template: str,
    ) -> None:
        """Check the formats, then load the sides given as specs (so a bad template fails before any load)."""
        if "{question}" not in question_template:
            raise ValueError(f"pair.question_template must contain '{{question}}', got {question_template!r}")
        source, target = (load_model(m) if isinstance(m, ModelSpec) else m for m in (source, target))
        self.source, self.target = source, target
        self.chat_template, self.question_template = chat_template, question_template
        self.source_format = SideFormat.build(source.tokenizer, chat_template, question_template)
        self.target_format = SideFormat.build(target.tokenizer, chat_template, question_template)
        self._head: KVCache | None = None

    def codec(
        self,
        answer_template: str = " {answer}",
        max_context_tokens: int | None = None,
        answer_end: str = "",
        answer_follow: int = 0,
    ) -> PairCodec:
        """Turns raw examples into padded batches in this pair's formats (`answer_end`, `answer_follow`: training
        only)."""
        return PairCodec(
            self.source.tokenizer,
            self.target.tokenizer,
            self.source_format,
            self.target_format,
            answer_template=answer_template,
            max_context_tokens=max_context_tokens,
            answer_end=answer_end,
            answer_follow=answer_follow,
        )

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
    def target_cache(self, batch: dict[str, Any]) -> KVCache:
        """The target's own cache of the batch's prefix (the oracle: the target reading the context)."""
        return read_cache(
            self.target.model,
            batch["target_prefix_ids"],
            batch["target_prefix_mask"],
            geometry=self.target.geometry,
        )

    def add_target_head(self, batch: dict[str, Any]) -> dict[str, Any]:
        """`batch["target_head"]`: the target-native head (BOS, chat opening), computed once, broadcast to the
        batch's left-padded prefixes (the fallback where no source position stands in); None without a head."""
        head = self.target_head()
        batch["target_head"] = head_fallback(head, batch["target_prefix_mask"]) if head is not None else None
        return batch

    @torch.no_grad()
    def add_caches(self, batch: dict[str, Any], with_target_cache: bool = True) -> dict[str, Any]:
        """Run the frozen models on a collated batch (on its device): the source cache of the context, the
        target-native head as fallback, and the target's own cache of the prefix (the oracle) if asked."""
        self.to(batch["source_ids"].device)
        batch["source_cache"] = read_cache(
            self.source.model, batch["source_ids"], batch["source_mask"], geometry=self.source.geometry
        )
        self.add_target_head(batch)
        if with_target_cache:
            batch["target_cache"] = self.target_cache(batch)
        return batch


# ---------------------------------------------------------------------------------------------- trained transfers
@dataclass
class TrainedTransfer:
    """Everything needed to use an exported projector: the frozen pair, the codec that reads examples exactly
    as training did, the projector inside its fixed transfer steps, and the folder's config."""

    pair: FrozenPair
    codec: PairCodec
    transfer: CacheTransfer
    config: dict[str, Any]
    directory: Path

    def untrained(self, seed: int = 0) -> CacheTransfer:
        """The same architecture at initialization (the `untrained` control), seeded."""
        from kvproj.projectors import build_projector

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            fresh = build_projector(
                self.config["architecture"],
                self.pair.source.geometry,
                self.pair.target.geometry,
                **self.config["init_args"],
            )
        return CacheTransfer(fresh.to(self.pair.target.device).eval(), key_norms(self.pair.target.model))


def transfer_specs(
    config: dict[str, Any], device: str | None = None, dtype: str | None = None
) -> dict[str, ModelSpec]:
    """The source and target ModelSpecs a projector folder names, with optional device/dtype overrides; a device
    override that cannot be used here ("cuda" without CUDA) is refused before any model is loaded (ValueError)."""
    if device:
        resolve_device(device)
    specs = {}
    for side in ("source", "target"):
        spec = dict(config[side]["spec"])
        if device:
            spec["device"] = device
        if dtype:
            spec["dtype"] = dtype
        specs[side] = ModelSpec(**spec)
    return specs


def read_transfer(
    projector_dir: str | Path, device: str | None = None, dtype: str | None = None
) -> tuple[dict[str, Any], dict[str, ModelSpec]]:
    """The cheap half of `load_transfer`, loading nothing big: the folder's `projector_config.json` (present, valid
    JSON, written by this kvproj major.minor) and the two model specs it names (valid, `tiny` overrides in bounds).

    Raises:
        FileNotFoundError: not an exported projector folder.
        ProjectorFolderError: a damaged config, another kvproj version, or model specs that cannot be read.
        ValueError: a device or dtype override that is not valid.
    """
    from kvproj.projectors.io import CONFIG, ProjectorFolderError, read_config

    directory = Path(projector_dir)
    config = read_config(directory)
    try:
        return config, transfer_specs(config, device, dtype)
    except (KeyError, TypeError, AttributeError) as err:
        raise ProjectorFolderError(
            f"--projector {directory}: {directory / CONFIG} has no valid source/target model spec "
            f"({type(err).__name__}: {err}); re-export the folder from its checkpoint"
        ) from err


def load_transfer(
    projector_dir: str | Path, device: str | None = None, dtype: str | None = None
) -> TrainedTransfer:
    """Load a trained transfer from its exported folder (checkpoints/<run>/projector): reads
    `projector_config.json`, checks its kvproj version and that the weights fit it, says which models it will load
    (the folder chooses them), loads both through their specs, checks their cache geometries against the ones the
    projector was trained for, and returns the projector inside a `CacheTransfer` (eval mode, target's device).

    Args:
        projector_dir: The exported projector folder.
        device: Override the models' device ("cpu", "cuda", "auto").
        dtype: Override the models' dtype ("float32", "bfloat16", "float16").

    Raises:
        FileNotFoundError, ProjectorFolderError: see `read_transfer`; also weights that do not fit the config.
        ProjectorMismatchError: models whose cache geometry differs from the one the projector was trained for.
    """
    from kvproj.projectors.io import CONFIG, check_geometries, load_projector

    directory = Path(projector_dir)
    config, specs = read_transfer(directory, device, dtype)
    projector, _ = load_projector(directory)  # weights against the config, before any model is loaded
    for side in ("source", "target"):
        s = specs[side]
        log.info(
            "loading the %s model named by %s: %s (dtype %s, device %s%s)",
            side,
            directory / CONFIG,
            s.name,
            s.dtype,
            s.device,
            f", tiny overrides {s.tiny}" if s.tiny else "",
        )
    data = config.get("data", {})
    pair = FrozenPair.from_models(
        load_model(specs["source"]),
        load_model(specs["target"]),
        data.get("chat_template", False),
        data.get("question_template", DEFAULT_QUESTION_TEMPLATE),
    )
    check_geometries(
        directory,
        (projector.source_geometry, projector.target_geometry),
        (pair.source.geometry, pair.target.geometry),
        (repr(pair.source.spec.name), repr(pair.target.spec.name)),
    )
    projector.to(pair.target.device)
    codec = pair.codec(data.get("answer_template", " {answer}"), data.get("max_context_tokens"))
    transfer = CacheTransfer(projector, key_norms(pair.target.model)).eval()
    return TrainedTransfer(pair, codec, transfer, config, directory)
