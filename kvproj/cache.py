"""kvproj's own KV-cache format, and the ONE module that calls the transformers cache API.

`KVCache` holds per-layer keys/values `[B, H_kv, T, D]` with the attention mask and positions they were made
with, plus the `CacheGeometry` of the model that made (or will read) them. Everything else in kvproj works on
these objects; a new transformers release should mean changes here only (docs/design-notes.md: the 5.x cache).
Every forward and generate call kvproj makes goes through here too (`read_cache`, `read_cache_internals`,
`forward_with_cache`, `hidden_states`, `generate_with_cache`, `generate_from_ids`); the other model internals
kvproj touches (layers, key projection and norm, rotary module, output head) live in `kvproj/adapters/`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import nn
from transformers import DynamicCache, PretrainedConfig
from transformers.cache_utils import get_layer_types_and_kwargs

from kvproj.rope import RopeSpec, rope_specs, undo_rope


@dataclass(frozen=True)
class CacheGeometry:
    """Shape of one model's KV cache: what a projector must read or produce."""

    family: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    layer_types: tuple[str, ...]
    sliding_windows: tuple[int | None, ...]  # per layer; None = full attention
    rope: tuple[RopeSpec | None, ...] = field(repr=False)  # per layer; None = keys are not rotated

    @property
    def width(self) -> int:
        """Features per token per layer for keys (or values): H_kv * D."""
        return self.num_kv_heads * self.head_dim

    def summary(self) -> str:
        rotary = {s.rotary_dim for s in self.rope if s is not None}
        windows = sorted({w for w in self.sliding_windows if w is not None})
        return (
            f"{self.family}: {self.num_layers} layers x {self.num_kv_heads} kv heads x {self.head_dim} head_dim"
            + (f", rotary dims {sorted(rotary)}" if rotary else ", no rotary")
            + (f", sliding windows {windows}" if windows else "")
        )

    def to_dict(self) -> dict:
        return {
            "family": self.family,
            "num_layers": self.num_layers,
            "num_kv_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "layer_types": list(self.layer_types),
            "sliding_windows": list(self.sliding_windows),
            "rope": [None if s is None else s.to_dict() for s in self.rope],
        }

    @classmethod
    def from_dict(cls, d: dict) -> CacheGeometry:
        return cls(
            family=d["family"],
            num_layers=int(d["num_layers"]),
            num_kv_heads=int(d["num_kv_heads"]),
            head_dim=int(d["head_dim"]),
            layer_types=tuple(d["layer_types"]),
            sliding_windows=tuple(d["sliding_windows"]),
            rope=tuple(None if s is None else RopeSpec.from_dict(s) for s in d["rope"]),
        )

    def mismatches(self, other: CacheGeometry) -> list[str]:
        """Human-readable differences that matter for a projector ([] when compatible)."""
        out = []
        for name in ("num_layers", "num_kv_heads", "head_dim"):
            a, b = getattr(self, name), getattr(other, name)
            if a != b:
                out.append(f"{name}: expected {a}, got {b}")
        if not out:
            for i, (a, b) in enumerate(zip(self.rope, other.rope)):
                if (a is None) != (b is None) or (
                    a is not None and b is not None and (a.rotary_dim != b.rotary_dim or not _close(a, b))
                ):
                    out.append(f"layer {i} rotary embedding differs")
                    break
        return out


def _close(a: RopeSpec, b: RopeSpec) -> bool:
    return abs(a.attention_scaling - b.attention_scaling) < 1e-6 and all(
        abs(x - y) <= 1e-6 * max(abs(x), 1e-30) for x, y in zip(a.inv_freq, b.inv_freq)
    )


def text_sizes(config: PretrainedConfig) -> dict[str, int]:
    """Layer and head sizes of a transformers decoder text config, with the usual fallbacks: as many kv heads as
    attention heads when unset, head_dim = hidden_size // heads when unset."""
    heads = config.num_attention_heads
    return {
        "num_layers": config.num_hidden_layers,
        "num_attention_heads": heads,
        "num_kv_heads": getattr(config, "num_key_value_heads", None) or heads,
        "head_dim": getattr(config, "head_dim", None) or config.hidden_size // heads,
    }


def geometry_of(model: nn.Module) -> CacheGeometry:
    """Read the cache geometry of a transformers causal LM."""
    config = model.config.get_text_config(decoder=True)
    sizes = text_sizes(config)
    layer_types, kwargs = get_layer_types_and_kwargs(config)
    windows = tuple(kw.get("sliding_window") for kw in kwargs)
    return CacheGeometry(
        family=config.model_type,
        num_layers=sizes["num_layers"],
        num_kv_heads=sizes["num_kv_heads"],
        head_dim=sizes["head_dim"],
        layer_types=tuple(layer_types),
        sliding_windows=windows,
        rope=tuple(rope_specs(model)),
    )


@dataclass
class KVCache:
    """Per-layer keys and values of a prefix, independent of transformers' cache classes.

    keys[i], values[i]: [B, H_kv, T, D]; keys carry the model's RoPE (as transformers caches them).
    attention_mask: [B, T] (1 = real token; left padding puts zeros first).
    positions: [B, T] position ids the keys were rotated with (padding-aware).
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    attention_mask: torch.Tensor
    positions: torch.Tensor
    geometry: CacheGeometry | None = None

    def __post_init__(self) -> None:
        if len(self.keys) != len(self.values):
            raise ValueError(f"KVCache: {len(self.keys)} key layers but {len(self.values)} value layers")
        batch, length = self.attention_mask.shape
        for i, (k, v) in enumerate(zip(self.keys, self.values)):
            if k.dim() != 4 or k.shape != v.shape or k.shape[0] != batch or k.shape[2] != length:
                raise ValueError(
                    f"KVCache layer {i}: keys {tuple(k.shape)} and values {tuple(v.shape)} must both be "
                    f"[batch={batch}, kv_heads, seq={length}, head_dim]"
                )
        if self.geometry is not None:
            g = self.geometry
            if (
                len(self.keys) != g.num_layers
                or self.keys[0].shape[1] != g.num_kv_heads
                or (self.keys[0].shape[3] != g.head_dim)
            ):
                raise ValueError(
                    f"KVCache: tensors are {len(self.keys)} layers x {tuple(self.keys[0].shape)} but the geometry "
                    f"says {g.summary()}"
                )

    @property
    def batch_size(self) -> int:
        return self.attention_mask.shape[0]

    @property
    def length(self) -> int:
        return self.attention_mask.shape[1]

    @property
    def num_layers(self) -> int:
        return len(self.keys)

    def clone(self) -> KVCache:
        return replace(
            self,
            keys=[k.clone() for k in self.keys],
            values=[v.clone() for v in self.values],
            attention_mask=self.attention_mask.clone(),
            positions=self.positions.clone(),
        )

    def to(self, device=None, dtype: torch.dtype | None = None) -> KVCache:
        return replace(
            self,
            keys=[k.to(device=device, dtype=dtype) for k in self.keys],
            values=[v.to(device=device, dtype=dtype) for v in self.values],
            attention_mask=self.attention_mask.to(device),
            positions=self.positions.to(device),
        )

    def select(self, index: torch.Tensor | list[int]) -> KVCache:
        """Examples `index` of the batch (e.g. a permutation for shuffled controls)."""
        index = torch.as_tensor(index, device=self.attention_mask.device)
        return replace(
            self,
            keys=[k[index] for k in self.keys],
            values=[v[index] for v in self.values],
            attention_mask=self.attention_mask[index],
            positions=self.positions[index],
        )

    def prefix(self, length: int) -> KVCache:
        """The first `length` positions (e.g. a cache without its last token, to feed that token again)."""
        return replace(
            self,
            keys=[k[:, :, :length] for k in self.keys],
            values=[v[:, :, :length] for v in self.values],
            attention_mask=self.attention_mask[:, :length],
            positions=self.positions[:, :length],
        )

    def unrotated_keys(self, layer: int) -> torch.Tensor:
        """Keys of `layer` with the model's rotation undone: [B, H_kv, T, D]."""
        if self.geometry is None:
            raise ValueError("KVCache.unrotated_keys needs the cache's geometry (rotary parameters)")
        return undo_rope(self.keys[layer], self.positions, self.geometry.rope[layer])


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip padding: mask.cumsum - 1, clamped at 0 on pads. [B, T] -> [B, T]."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _model_dtype(model: nn.Module) -> torch.dtype:
    """Dtype of the model's activations (a quantized model keeps float params for norms/embeddings)."""
    emb = model.get_input_embeddings()
    return emb.weight.dtype if emb is not None and emb.weight.is_floating_point() else torch.float32


def _device(model: nn.Module) -> torch.device:
    return model.get_input_embeddings().weight.device


def _read(model: nn.Module, input_ids, attention_mask, geometry, **forward_kwargs):
    """One forward over `input_ids` that keeps its cache: (KVCache, the model's output). The cache is built without
    a config so sliding-window layers keep every position (full length); padded batches get padding-aware
    position ids."""
    device = _device(model)
    input_ids = input_ids.to(device)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    attention_mask = attention_mask.to(device)
    positions = positions_from_mask(attention_mask)
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=positions,
        cache=DynamicCache(),  # no config: sliding layers are NOT truncated
        use_cache=True,
        **forward_kwargs,
    )
    layers = out.cache.layers
    kv = KVCache(
        keys=[layer.keys for layer in layers],
        values=[layer.values for layer in layers],
        attention_mask=attention_mask,
        positions=positions,
        geometry=geometry if geometry is not None else geometry_of(model),
    )
    return kv, out


def read_cache(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    geometry: CacheGeometry | None = None,
    return_logits: bool = False,
):
    """Run `model` over `input_ids` [B, T] and return its full KVCache (and logits if asked).

    The cache is built without a config so sliding-window layers keep every position (full length); padded
    batches get padding-aware position ids. Returns `KVCache` or `(KVCache, logits [B, T, V])`.
    """
    kv, out = _read(model, input_ids, attention_mask, geometry, logits_to_keep=0 if return_logits else 1)
    return (kv, out.logits) if return_logits else kv


def read_cache_internals(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    geometry: CacheGeometry | None = None,
    attentions: bool = False,
    all_logits: bool = True,
) -> tuple[KVCache, torch.Tensor, list[torch.Tensor], list[torch.Tensor] | None]:
    """`read_cache` plus what analyses of the cache compare it with: (KVCache, logits [B, T, V] (only the last
    position, [B, 1, V], unless `all_logits`: a batch of long prompts and a large vocabulary makes gigabytes),
    hidden states (num_layers + 1 tensors [B, T, hidden]: the embeddings, then each layer's output), attention
    weights (num_layers tensors [B, H, T, T], float32; None unless `attentions`)).

    Attention weights need the eager attention path: it is switched on for this call only and restored after.
    """
    previous = getattr(model.config, "_attn_implementation", None)
    switch = attentions and previous != "eager"
    if switch:
        model.set_attn_implementation("eager")
    try:
        kv, out = _read(
            model,
            input_ids,
            attention_mask,
            geometry,
            output_hidden_states=True,
            output_attentions=attentions,
            logits_to_keep=0 if all_logits else 1,
        )
    finally:
        if switch and previous is not None:
            model.set_attn_implementation(previous)
    weights = [a.float() for a in out.attentions] if attentions else None
    return kv, out.logits, list(out.hidden_states), weights


def to_transformers(kv: KVCache, model: nn.Module) -> DynamicCache:
    """A fresh transformers DynamicCache holding `kv` in the model's dtype and device.

    Built without a config: every layer holds the full length, and the model's own masks apply the sliding
    windows by position, which the prefix+suffix invariant tests confirm for Mistral and Gemma 2/3.
    A fresh object each call because forward/generate mutate caches in place.
    """
    geometry = geometry_of(model)
    if kv.num_layers != geometry.num_layers:
        raise ValueError(
            f"cannot inject a {kv.num_layers}-layer cache into {geometry.family} with {geometry.num_layers} layers"
        )
    k0 = kv.keys[0]
    if k0.shape[1] != geometry.num_kv_heads or k0.shape[3] != geometry.head_dim:
        raise ValueError(
            f"cannot inject keys of {k0.shape[1]} kv heads x {k0.shape[3]} head_dim into {geometry.summary()}"
        )
    dtype, device = _model_dtype(model), _device(model)
    data = [
        (k.to(device=device, dtype=dtype), v.to(device=device, dtype=dtype)) for k, v in zip(kv.keys, kv.values)
    ]
    return DynamicCache(ddp_cache_data=data)


def forward_with_cache(
    model: nn.Module,
    kv: KVCache,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    logits_to_keep: int | torch.Tensor = 0,
    return_hidden: bool = False,
):
    """Continue from an injected prefix cache: logits [B, L, V] for `input_ids` [B, L] read after `kv`.

    The mask covers cache + new tokens and positions continue each example's own prefix length, so left-padded
    prefixes work. Gradients flow back into `kv`'s tensors. With `return_hidden`, returns the final hidden states
    [B, L, hidden] instead (score a few positions without the full-vocabulary logits).
    """
    device = _device(model)
    input_ids = input_ids.to(device)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    full_mask = torch.cat([kv.attention_mask.to(device), attention_mask.to(device)], dim=1)  # [B, P+L]
    # the prefix holds n = mask.sum() real tokens at positions 0..n-1: the new tokens continue from n
    start = kv.attention_mask.to(device).long().sum(dim=1, keepdim=True)  # [B, 1]
    positions = start + (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # [B, L]
    kwargs = dict(
        input_ids=input_ids,
        attention_mask=full_mask,
        position_ids=positions,
        cache=to_transformers(kv, model),
        use_cache=True,
    )
    if return_hidden:
        return _last_hidden(model, **kwargs)
    return model(**kwargs, logits_to_keep=logits_to_keep).logits


def _last_hidden(model: nn.Module, **kwargs) -> torch.Tensor:
    """The decoder body's final hidden states (no LM head): [B, L, hidden]."""
    return model.base_model(**kwargs).last_hidden_state


def hidden_states(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """A plain forward without an injected cache: final hidden states [B, L, hidden] for `input_ids` [B, L]
    (score chosen positions with `kvproj.adapters.heads.logits_from_hidden`)."""
    return _last_hidden(model, input_ids=input_ids, attention_mask=attention_mask)


def generate_with_cache(
    model: nn.Module,
    kv: KVCache,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    **generate_kwargs,
) -> torch.Tensor:
    """Generate after an injected prefix cache; returns only the new tokens [B, N].

    `input_ids` [B, L>=1] is what follows the prefix (e.g. the question); pad it on the left. transformers'
    generate feeds only the uncached tail, so the cached part of the ids is a placeholder; positions come from
    the mask (cumsum), which matches how `read_cache` made the prefix.
    """
    device = _device(model)
    input_ids = input_ids.to(device)
    if input_ids.shape[1] < 1:
        raise ValueError("generate_with_cache needs at least one token after the prefix cache")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    placeholder = torch.zeros(kv.batch_size, kv.length, dtype=input_ids.dtype, device=device)
    full_ids = torch.cat([placeholder, input_ids], dim=1)
    full_mask = torch.cat([kv.attention_mask.to(device), attention_mask.to(device)], dim=1)
    _generate_defaults(model, generate_kwargs)
    out = model.generate(
        input_ids=full_ids,
        attention_mask=full_mask,
        cache=to_transformers(kv, model),
        **generate_kwargs,
    )
    return out[:, full_ids.shape[1] :]


def generate_from_ids(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    **generate_kwargs,
) -> torch.Tensor:
    """Generate from `input_ids` [B, L] alone (no injected prefix; pad on the left): the new tokens [B, N].

    Defaults as `generate_with_cache`: greedy unless `do_sample` is passed, pad id from the model's configs.
    Extra keyword arguments (sampling settings, other tokenizer outputs) go to transformers' generate.
    """
    device = _device(model)
    input_ids = input_ids.to(device)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    _generate_defaults(model, generate_kwargs)
    out = model.generate(input_ids=input_ids, attention_mask=attention_mask.to(device), **generate_kwargs)
    return out[:, input_ids.shape[1] :]


def _generate_defaults(model: nn.Module, generate_kwargs: dict) -> None:
    """Greedy unless asked otherwise; the pad id from the model's configs unless given (looked up only then)."""
    generate_kwargs.setdefault("do_sample", False)
    if "pad_token_id" not in generate_kwargs:
        generate_kwargs["pad_token_id"] = pad_token_id(model)


def stop_token_ids(model: nn.Module) -> set[int]:
    """The ids that end `model`'s generation (its generation config's eos id or ids)."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    return set(eos if isinstance(eos, list) else [eos]) - {None}


def pad_token_id(model: nn.Module) -> int:
    """The id to pad `model`'s inputs with: its generation config's pad id, else its eos id, else the config's
    pad id, else 0 (padded positions are masked, so any id works; these keep decoded text clean)."""
    gen = getattr(model, "generation_config", None)
    for value in (
        getattr(gen, "pad_token_id", None),
        getattr(gen, "eos_token_id", None),
        model.config.pad_token_id,
    ):
        if isinstance(value, list):
            value = value[0] if value else None
        if value is not None:
            return int(value)
    return 0
