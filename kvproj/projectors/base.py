"""The projector interface and its typed configs.

One architecture per file, each with two classes: a `ProjectorConfig` subclass (a frozen dataclass: the
architecture's settings, validated and documented; LightningCLI shows them under `model.projector`) and the
`Projector` it builds (the nn.Module). In a YAML config:

    model:
      projector:
        class_path: kvproj.projectors.LowRankConfig   # or just LowRankConfig
        init_args: {rank: 64}

A projector maps, for every target layer, the source keys/values at aligned positions (RoPE already undone)
to target keys/values (RoPE not yet applied). The transfer pipeline (kvproj/transfer.py) does the rotations.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from kvproj.cache import CacheGeometry
from kvproj.projectors.layer_map import resolve_layer_map, source_windows

MODES = ("replace", "fuse")
ARCHITECTURES: dict[str, type[ProjectorConfig]] = {}  # architecture name -> config class, filled by subclassing


@dataclass(frozen=True)
class ProjectorConfig(ABC):
    """Settings every projector architecture has. Subclasses add theirs and implement `build`.

    Args:
        layer_map: "proportional", "terminal" or one source layer index per target layer.
        target_key_norm: In replace mode, pass projected keys through the target's own frozen key norm (Gemma 3,
            Qwen 3) before RoPE, which puts them on the target's key scale for free.
        source_window: Each target layer reads the 2 * source_window + 1 consecutive source layers around its
            mapped one, concatenated per token (0: the mapped layer alone). The map learns how much each source
            depth contributes (`source_layer_shares`); the ridge start fits all of them at once.
        source_tokens: Each target token reads the source cache at its aligned source position and the
            source_tokens - 1 positions before it, concatenated per layer (1: the aligned position alone). A target
            token spelled by several source tokens (or one whose source token carries little of its identity)
            then sees all of them, not only the last; positions before the source's first token read zeros.
        extra_source_layers: Source layers every target layer reads besides its window (appended after it, even
            where the window already holds one), e.g. [0]: the source's lexical layer, whose keys and values are
            a fixed function of each token alone, for the deep target layers too.
    """

    architecture: ClassVar[str] = ""  # the name in projector_config.json and checkpoints

    layer_map: Literal["proportional", "terminal"] | list[int] = "proportional"
    target_key_norm: bool = True
    source_window: int = 0
    source_tokens: int = 1
    extra_source_layers: list[int] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        extra = self.extra_source_layers
        if (
            not isinstance(extra, (list, tuple))
            or any(isinstance(x, bool) or not isinstance(x, int) or x < 0 for x in extra)
            or len(set(extra)) != len(extra)
        ):
            raise ValueError(
                f"model.projector.extra_source_layers: got {extra!r}; valid: a list of distinct source layer "
                "indices >= 0 (empty: the window alone)"
            )
        object.__setattr__(self, "extra_source_layers", list(extra))
        n = self.source_tokens
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(
                f"model.projector.source_tokens: got {n!r}; valid: an int >= 1 (1: the aligned source position alone)"
            )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("architecture")
        if not name:
            return
        known = ARCHITECTURES.get(name)
        if known is not None and known.__qualname__ != cls.__qualname__:
            raise ValueError(
                f"projector architecture {name!r} defined twice: {known.__qualname__}, {cls.__qualname__}"
            )
        ARCHITECTURES[name] = cls

    @abstractmethod
    def build(self, source: CacheGeometry, target: CacheGeometry, mode: str = "replace") -> Projector:
        """The projector for these cache geometries, initialised.

        Args:
            source: Geometry of the source model's cache.
            target: Geometry of the target model's cache.
            mode: "replace" (the projection IS the target cache) or "fuse" (added to the target's own cache of
                the same text; an untrained projector then changes nothing).
        """

    def init_args(self, mode: str) -> dict[str, Any]:
        """The settings as written to projector_config.json and checkpoints (`init_args`), with the mode."""
        return {**dataclasses.asdict(self), "mode": mode}


def config_from_init_args(architecture: str, init_args: dict[str, Any]) -> tuple[ProjectorConfig, str]:
    """The config and mode that `ProjectorConfig.init_args` wrote (projector_config.json, checkpoints)."""
    if architecture not in ARCHITECTURES:
        raise ValueError(
            f"unknown projector architecture {architecture!r}; valid: {', '.join(sorted(ARCHITECTURES))}"
        )
    cls = ARCHITECTURES[architecture]
    args = dict(init_args)
    mode = args.pop("mode", "replace")
    fields = {f.name for f in dataclasses.fields(cls)}
    if unknown := sorted(set(args) - fields):
        raise ValueError(
            f"projector {architecture!r}: unknown init args {', '.join(unknown)}; valid: {', '.join(sorted(fields))}"
        )
    return cls(**args), mode


def build_projector(
    architecture: str, source: CacheGeometry, target: CacheGeometry, **init_args: Any
) -> Projector:
    """Build by architecture name from `init_args` as `ProjectorConfig.init_args` wrote them (mode included)."""
    config, mode = config_from_init_args(architecture, init_args)
    return config.build(source, target, mode)


class Projector(nn.Module):
    """Base class. Subclasses implement `project_layer`; their settings are their `ProjectorConfig`.

    Args:
        source: Geometry of the source model's cache.
        target: Geometry of the target model's cache.
        config: The architecture's settings.
        mode: "replace" or "fuse" (see `ProjectorConfig.build`).
    """

    def __init__(
        self, source: CacheGeometry, target: CacheGeometry, config: ProjectorConfig, mode: str = "replace"
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"model.mode: got {mode!r}; valid: {', '.join(MODES)}")
        self.config = config
        self.source_geometry = source
        self.target_geometry = target
        self.layer_map = resolve_layer_map(config.layer_map, source.num_layers, target.num_layers)
        # the source layers each target layer reads (its mapped one, or a window around it), and their width
        self.source_layers = source_windows(
            self.layer_map, source.num_layers, config.source_window, config.extra_source_layers
        )
        # per source layer read: source_tokens positions side by side ([aligned, aligned - 1, ...])
        self.source_tokens = config.source_tokens
        self.in_width = source.width * self.source_tokens * len(self.source_layers[0])
        self.mode = mode
        self.target_key_norm = config.target_key_norm and mode == "replace"
        self.progress = 0.0  # training progress in [0, 1] (annealing schedules); set by the LightningModule
        # optimizer step: stochastic projectors seed their noise from it (exact resume, no RNG state)
        self.step = 0

    @property
    def architecture(self) -> str:
        return self.config.architecture

    @property
    def init_args(self) -> dict[str, Any]:
        """Everything needed to rebuild it (with `build_projector`): the config's fields and the mode."""
        return self.config.init_args(self.mode)

    def set_progress(self, fraction: float, step: int = 0) -> None:
        self.progress = float(min(max(fraction, 0.0), 1.0))
        self.step = int(step)

    def noise_generator(self, device: torch.device, salt: int = 0) -> torch.Generator:
        """A generator seeded by (step, salt): training noise is a pure function of the step."""
        g = torch.Generator(device=device)
        g.manual_seed(1_000_003 * self.step + salt)
        return g

    def forward(
        self,
        source_keys: list[torch.Tensor],
        source_values: list[torch.Tensor],
        target_keys: list[torch.Tensor] | None = None,
        target_values: list[torch.Tensor] | None = None,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """source_*[s]: [B, source_tokens * Hs, T, Ds] per SOURCE layer (`CacheTransfer.source_inputs`; only
        those in `source_layers` are read; None elsewhere is fine); target_*[t]: [B, Ht, T, Dt] per target layer
        (fuse).

        Returns per-target-layer keys and values [B, Ht, T, Dt] (keys un-rotated). A target layer reading several
        source layers gets them stacked as extra heads ([B, n * Hs, T, Ds]: `to_tokens` makes that n * Hs * Ds
        features per token, source layer by source layer).
        """
        if self.mode == "fuse" and (target_keys is None or target_values is None):
            raise ValueError("a projector in fuse mode needs the target's own cache of the same text")
        keys, values = [], []
        for t, layers in enumerate(self.source_layers):
            base_k = target_keys[t] if target_keys is not None else None
            base_v = target_values[t] if target_values is not None else None
            src_k, src_v = self.stack(source_keys, layers), self.stack(source_values, layers)
            k, v = self.project_layer(t, src_k, src_v, base_k, base_v)
            keys.append(k)
            values.append(v)
        return keys, values

    def project_layer(
        self,
        target_layer: int,
        source_keys: torch.Tensor,
        source_values: torch.Tensor,
        target_keys: torch.Tensor | None,
        target_values: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    # helpers shared by architectures -------------------------------------------------------------------------
    @staticmethod
    def stack(per_layer: list[torch.Tensor], layers: list[int]) -> torch.Tensor:
        """The source layers `layers` as one tensor: [B, Hs, T, Ds] for one, [B, n * Hs, T, Ds] for n."""
        return per_layer[layers[0]] if len(layers) == 1 else torch.cat([per_layer[s] for s in layers], dim=1)

    def _input_norms(self) -> torch.Tensor | None:
        """[target layers, source layers read, source_tokens]: the squared weight norm of the key and value maps on
        each (source layer, position) block of a target layer's input (`stack` puts layers, then positions, then
        heads); None for an architecture without plain input weights."""
        weights = self.input_weights()
        if weights is None:
            return None
        n_layers, n, width = len(self.source_layers[0]), self.source_tokens, self.source_geometry.width
        return torch.stack(
            [
                sum(
                    w.detach().float().reshape(w.shape[0], n_layers, n, width).pow(2).sum((0, 3))
                    for w in per_layer
                )
                for per_layer in weights
            ]
        )

    def source_layer_shares(self) -> list[dict[int, float]] | None:
        """Per target layer, each source layer's share of the squared weight norm of the key and value maps on
        its features (sums to 1): which source depths feed which target depth. None for one source layer per
        target layer or an architecture without plain input weights."""
        norms = self._input_norms() if len(self.source_layers[0]) > 1 else None
        if norms is None:
            return None
        per_layer = norms.sum(2)  # [target layers, source layers read]
        shares = per_layer / per_layer.sum(1, keepdim=True).clamp_min(1e-30)
        out: list[dict[int, float]] = []
        for layers, row in zip(self.source_layers, shares):
            share: dict[int, float] = {}
            for s, x in zip(layers, row):  # a layer read twice (window and extra_source_layers): both blocks
                share[s] = share.get(s, 0.0) + float(x)
            out.append(share)
        return out

    def source_token_shares(self) -> list[float] | None:
        """Each source position's share ([aligned, aligned - 1, ...]) of the squared weight norm of the key and
        value maps, over all target layers (sums to 1); None for one position or no plain input weights."""
        norms = self._input_norms() if self.source_tokens > 1 else None
        if norms is None:
            return None
        per_position = norms.sum((0, 1))
        return [float(x) for x in per_position / per_position.sum().clamp_min(1e-30)]

    def input_weights(self) -> list[list[torch.Tensor]] | None:
        """Per target layer, the matrices [d_out, in_width] that read the source features (keys and values);
        None where the architecture has none."""
        return None

    def to_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """[B, H, T, D] -> [B, T, H*D]."""
        b, h, t, d = x.shape
        return x.transpose(1, 2).reshape(b, t, h * d)

    def to_heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, Ht*Dt] -> [B, Ht, T, Dt] in the target geometry."""
        b, t, _ = x.shape
        g = self.target_geometry
        return x.reshape(b, t, g.num_kv_heads, g.head_dim).transpose(1, 2)

    def combine(self, projected: torch.Tensor, base: torch.Tensor | None) -> torch.Tensor:
        """replace: the projection; fuse: the target's own cache plus the projection (residual)."""
        return projected if self.mode == "replace" else base + projected

    def layer_diagnostics(self) -> dict[str, float]:
        """Scalars worth logging per layer (e.g. gate values); none by default."""
        return {}

    def parameter_report(self) -> dict[str, float]:
        n = sum(p.numel() for p in self.parameters() if p.requires_grad)
        mb = sum(p.numel() * p.element_size() for p in self.parameters()) / 2**20
        return {"trainable_parameters": n, "megabytes": round(mb, 3)}
