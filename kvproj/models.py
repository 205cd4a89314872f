"""Model specs and loading: hub id, local folder, GGUF file, offline zoo name, or a tiny config for tests.

Every loaded model is frozen (eval mode, no gradients). A name is never silently swapped for a different model:
offline, a hub id is served only from a local copy of that same model.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kvproj.cache import CacheGeometry, geometry_of

log = logging.getLogger(__name__)

TINY_PREFIX = "tiny:"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
QUANTIZATIONS = (None, "8bit", "4bit")

# Small geometries that still exercise what differs between families: GQA, partial rotary (GPT-NeoX, Phi-3),
# no rotary (GPT-2), sliding windows shorter than test prompts (Mistral, Gemma 2/3), per-layer rotary bases and
# key norms (Gemma 3), explicit head_dim (Gemma). Vocabulary = the byte tokenizer below.
_TINY_COMMON = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, max_position_embeddings=1024)
TINY_FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", dict(num_hidden_layers=3, num_key_value_heads=2, rope_theta=10000.0)),
    "qwen2": ("Qwen2Config", dict(num_hidden_layers=2, num_key_value_heads=2, rope_theta=1_000_000.0)),
    "mistral": ("MistralConfig", dict(num_hidden_layers=2, num_key_value_heads=2, sliding_window=8)),
    "gemma2": (
        "Gemma2Config",
        dict(num_hidden_layers=4, num_key_value_heads=2, head_dim=32, sliding_window=8, query_pre_attn_scalar=32),
    ),
    "gemma3_text": (
        "Gemma3TextConfig",
        dict(
            num_hidden_layers=4,
            num_key_value_heads=1,
            head_dim=32,
            sliding_window=8,
            query_pre_attn_scalar=32,
            layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
        ),
    ),
    "gpt_neox": ("GPTNeoXConfig", dict(num_hidden_layers=2, rotary_pct=0.25)),
    "gpt2": ("GPT2Config", dict(n_layer=2, n_embd=64, n_head=4, n_positions=1024)),
    "phi3": ("Phi3Config", dict(num_hidden_layers=2, num_key_value_heads=2, partial_rotary_factor=0.5)),
}


# `tiny:` models are for tests and smoke runs: overrides that would allocate a real model's size (or a typo that asks
# for terabytes) are refused before anything is built.
TINY_MAX_PARAMETERS = 50_000_000
TINY_MAX_SIZE = 65_536
TINY_SIZE_KEYS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "max_position_embeddings",
    "n_embd",
    "n_inner",
    "n_layer",
    "n_head",
    "n_positions",
)
_GPT2_DEFAULTS = dict(n_embd=768, n_layer=12, n_head=12, n_positions=1024, n_inner=None)


class ModelNotFoundError(ValueError):
    """A model name that is neither a zoo entry, a local path, a tiny config nor a reachable hub id."""


@dataclass
class ModelSpec:
    """Where a frozen model comes from and how to load it.

    Args:
        name: A Hugging Face hub id ("Qwen/Qwen2.5-0.5B"), a local folder, a `.gguf` file, an offline zoo name
            (`python -m kvproj zoo list`), or `tiny:<family>` (a small random model for tests; families: llama,
            qwen2, mistral, gemma2, gemma3_text, gpt_neox, gpt2, phi3).
        dtype: float32, bfloat16 or float16.
        device: "cpu", "cuda", "cuda:N" or "auto" (cuda when available).
        quantization: None, "8bit" or "4bit" (bitsandbytes; needs a device bitsandbytes supports).
        tiny: Config overrides for a `tiny:` model, e.g. {"num_hidden_layers": 3}.
        seed: Seed for a `tiny:` model's random weights.
    """

    name: str
    dtype: str = "float32"
    device: str = "cpu"
    quantization: str | None = None
    tiny: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"model name must be a non-empty string, got {self.name!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"model dtype: got {self.dtype!r}, valid: {', '.join(DTYPES)}")
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(f"model quantization: got {self.quantization!r}, valid: None, '8bit', '4bit'")
        if self.tiny and not self.name.startswith(TINY_PREFIX):
            raise ValueError(f"model tiny overrides are only for 'tiny:<family>' names, got name {self.name!r}")
        if self.name.startswith(TINY_PREFIX) and self.name[len(TINY_PREFIX) :] in TINY_FAMILIES:
            check_tiny_size(self.name[len(TINY_PREFIX) :], self.tiny)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dtype": self.dtype,
            "device": self.device,
            "quantization": self.quantization,
            "tiny": dict(self.tiny),
            "seed": self.seed,
        }


@dataclass
class LoadedModel:
    spec: ModelSpec
    model: nn.Module
    tokenizer: Any
    geometry: CacheGeometry
    source_kind: str  # "tiny", "zoo", "local", "gguf", "hub"

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"model device: got {device!r} but CUDA is not available here; use 'cpu' or 'auto'")
    return dev


def byte_tokenizer():
    """A real byte-level tokenizer (256 byte tokens + <bos>/<eos>/<pad>) for tiny models: offline, exact offsets."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    for special in ("<bos>", "<eos>", "<pad>"):
        vocab[special] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", padding_side="left"
    )


def tiny_config(family: str, overrides: dict[str, Any] | None = None):
    import transformers

    if family not in TINY_FAMILIES:
        raise ModelNotFoundError(
            f"model name 'tiny:{family}': unknown tiny family; valid: {', '.join('tiny:' + f for f in TINY_FAMILIES)}"
        )
    class_name, kwargs = TINY_FAMILIES[family]
    vocab = 259  # byte_tokenizer(): 256 bytes + 3 specials
    common = dict(_TINY_COMMON) if family != "gpt2" else {}
    args = {**common, **kwargs, "vocab_size": vocab, "bos_token_id": 256, "eos_token_id": 257, "pad_token_id": 258}
    args.update(overrides or {})
    return getattr(transformers, class_name)(**args)


def tiny_parameter_estimate(family: str, overrides: dict[str, Any] | None = None) -> int:
    """About how many parameters `tiny:<family>` with these config overrides would have (embeddings and output
    head counted separately, attention and MLP per layer), computed from the numbers alone: nothing is built."""
    args = {
        **(_GPT2_DEFAULTS if family == "gpt2" else _TINY_COMMON),
        **TINY_FAMILIES[family][1],
        "vocab_size": 259,
    }
    args.update(overrides or {})
    hidden = args.get("hidden_size", args.get("n_embd")) or 0
    layers = args.get("num_hidden_layers", args.get("n_layer")) or 0
    heads = args.get("num_attention_heads", args.get("n_head")) or 1
    kv_heads = args.get("num_key_value_heads") or heads
    head_dim = args.get("head_dim") or hidden // max(heads, 1)
    inner = args.get("intermediate_size", args.get("n_inner")) or 4 * hidden
    positions = args.get("n_positions", 0) if family == "gpt2" else 0  # learned position embeddings
    attention = hidden * head_dim * (2 * heads + 2 * kv_heads)
    mlp = 3 * hidden * inner
    return 2 * args["vocab_size"] * hidden + positions * hidden + layers * (attention + mlp)


def check_tiny_size(family: str, overrides: dict[str, Any]) -> None:
    """Refuse `tiny` overrides that are not positive whole sizes, exceed `TINY_MAX_SIZE` in any one size, or give
    more than `TINY_MAX_PARAMETERS` parameters (estimated, nothing allocated)."""
    for key in TINY_SIZE_KEYS:
        if key not in overrides or (key == "n_inner" and overrides[key] is None):
            continue
        value = overrides[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"model tiny overrides: {key} must be a whole number >= 1, got {value!r}")
        if value > TINY_MAX_SIZE:
            raise ValueError(
                f"model tiny overrides: {key}={value} is above {TINY_MAX_SIZE}, the largest size a 'tiny:' model "
                "takes (tiny models are for tests); name a real model for anything larger"
            )
    estimate = tiny_parameter_estimate(family, overrides)
    if estimate > TINY_MAX_PARAMETERS:
        sizes = {k: overrides[k] for k in TINY_SIZE_KEYS if k in overrides}
        raise ValueError(
            f"model tiny overrides {sizes} give 'tiny:{family}' about {estimate / 1e6:,.0f}M parameters, above the "
            f"limit of {TINY_MAX_PARAMETERS / 1e6:.0f}M for tiny models (they are for tests); make them smaller or "
            "name a real model"
        )


def load_model(spec: ModelSpec | str) -> LoadedModel:
    """Load a frozen model and its tokenizer from any supported kind of name (see `ModelSpec.name`)."""
    if isinstance(spec, str):
        spec = ModelSpec(spec)
    device = resolve_device(spec.device)
    dtype = DTYPES[spec.dtype]
    if spec.name.startswith(TINY_PREFIX):
        from transformers import AutoModelForCausalLM

        config = tiny_config(spec.name[len(TINY_PREFIX) :], spec.tiny)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.seed)
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        if spec.quantization:
            # quantize through the same from_pretrained path real models take
            import tempfile

            with tempfile.TemporaryDirectory(prefix="kvproj-tiny-") as tmp:
                model.save_pretrained(tmp)
                byte_tokenizer().save_pretrained(tmp)
                model, tokenizer = _from_pretrained(spec, tmp, None, dtype, device)
            return _freeze(LoadedModel(spec, model, tokenizer, geometry_of(model), "tiny"))
        model.to(device)
        return _freeze(LoadedModel(spec, model, byte_tokenizer(), geometry_of(model), "tiny"))

    path, gguf_file, kind = _locate(spec.name)
    model, tokenizer = _from_pretrained(spec, path, gguf_file, dtype, device)
    return _freeze(LoadedModel(spec, model, tokenizer, geometry_of(model), kind))


def load_tokenizer(name: str):
    """The tokenizer of any supported kind of model name, without the model: what alignment diagnostics need
    (`scripts/alignment_stats.py`). A zoo name installs its model on first use, as `load_model` does."""
    if name.startswith(TINY_PREFIX):
        return byte_tokenizer()
    path, gguf_file, _ = _locate(name)
    try:
        return _auto_tokenizer(path, gguf_file)
    except OSError as err:
        raise ModelNotFoundError(
            f"model name {name!r}: its tokenizer could not be loaded (not a zoo name, local folder or .gguf file, "
            f"and the Hugging Face Hub did not serve it). Cause: {str(err).splitlines()[0]}"
        ) from err


def _locate(name: str) -> tuple[str, str | None, str]:
    """(path or hub id, gguf file name or None, kind) for a non-tiny model name."""
    from kvproj import zoo

    if name in zoo.ZOO:
        # Installs (with progress) on first use: the offline default must work on a fresh machine.
        return str(zoo.install(name)), None, "zoo"
    p = Path(os.path.expanduser(name))
    if p.is_file() and p.suffix == ".gguf":
        return str(p.parent), p.name, "gguf"
    if p.is_dir():
        if not (p / "config.json").exists():
            raise ModelNotFoundError(f"model name {name!r}: the folder exists but has no config.json")
        return str(p), None, "local"
    if p.suffix == ".gguf" or name.startswith((".", "/", "~")):
        raise ModelNotFoundError(f"model name {name!r}: no such file or folder")
    return name, None, "hub"


def _auto_tokenizer(path: str, gguf_file: str | None):
    from transformers import AutoTokenizer

    # never run code shipped with a model: a projector folder or config can name any hub id or folder
    return AutoTokenizer.from_pretrained(
        path, trust_remote_code=False, **({"gguf_file": gguf_file} if gguf_file else {})
    )


def _from_pretrained(spec: ModelSpec, path: str, gguf_file: str | None, dtype, device):
    from transformers import AutoModelForCausalLM

    # never run code shipped with a model: a projector folder or config can name any hub id or folder
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": False}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    if spec.quantization:
        from transformers import BitsAndBytesConfig

        if spec.quantization == "8bit":
            kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        else:
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype
            )
        kwargs["device_map"] = {"": device.index or 0} if device.type == "cuda" else {"": "cpu"}
    try:
        tokenizer = _auto_tokenizer(path, gguf_file)
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as err:
        from kvproj import zoo

        raise ModelNotFoundError(
            f"model name {spec.name!r} could not be loaded: it is not an offline zoo name "
            f"({', '.join(zoo.ZOO)}), not a local folder or .gguf file, and the Hugging Face Hub did not serve it "
            f"(offline?). Install a zoo model with `python -m kvproj zoo install NAME`, or download the model "
            f"where the hub is reachable and pass its local folder. Cause: {str(err).splitlines()[0]}"
        ) from err
    if not spec.quantization:
        model.to(device)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return model, tokenizer


def _freeze(loaded: LoadedModel) -> LoadedModel:
    loaded.model.eval()
    loaded.model.requires_grad_(False)
    log.debug("loaded %s (%s): %s", loaded.spec.name, loaded.source_kind, loaded.geometry.summary())
    return loaded
