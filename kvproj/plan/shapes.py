"""What `plan` knows about a run before loading anything: each frozen model's tensors (built on the meta device from
its config, so no memory is used and the shapes are exact), the projector's parameters, and the sequence lengths of
the run's batches (its own data, tokenized with the models' tokenizers where they are available offline).
"""

from __future__ import annotations

import functools
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from kvproj.models import DTYPES, QUANTIZATIONS, TINY_PREFIX, ModelSpec

HERE = Path(__file__).resolve().parent
CHARS_PER_TOKEN = 4.0  # English BPE text, used only when a tokenizer is not available offline
ENCODE_SECONDS = 0.002  # host seconds per example to tokenize + align when the tokenizers are not here to time
NF4_BLOCK = 64  # bitsandbytes 4-bit: one float32 absmax per 64 weights (bnb_4bit_use_double_quant false)


@functools.cache
def architectures() -> dict[str, Any]:
    with open(HERE / "architectures.yaml") as f:
        return yaml.safe_load(f)


def _hub_entry(name: str) -> dict[str, Any] | None:
    models = architectures()["models"]
    if name in models:
        return models[name]
    for entry in models.values():
        if name in entry.get("aliases", []):
            return entry
    return None


@dataclass
class Tensor:
    """One parameter or buffer of a frozen model."""

    name: str
    shape: tuple[int, ...]
    kind: str  # "linear" (bitsandbytes quantizes it), "param" (kept in the model dtype), "buffer"
    dtype: torch.dtype  # of a buffer; parameters take the spec's dtype

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass
class ModelShape:
    """A frozen model's sizes and tensors, from its config alone."""

    name: str
    origin: str  # where the numbers came from
    family: str
    num_layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    has_key_norm: bool
    tensors: list[Tensor] = field(repr=False)

    @property
    def parameters(self) -> int:
        return sum(t.numel for t in self.tensors if t.kind != "buffer")

    @property
    def matmul_parameters(self) -> int:
        """Parameters a token multiplies through (every linear layer but the output head; embeddings are looked
        up): 2 x this x tokens = the FLOPs of a forward pass without attention and logits."""
        return sum(t.numel for t in self.tensors if t.kind == "linear")

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim

    def weight_bytes(self, dtype: str, quantization: str | None) -> int:
        """Bytes the loaded weights take: every parameter in `dtype`, except with bitsandbytes the weights of the
        linear layers (not the output head): 8-bit = int8 + one float32 scale per output row; 4-bit nf4 = half a
        byte + one float32 absmax per 64 weights. Buffers (rotary frequencies) keep their own dtype."""
        size = DTYPES[dtype].itemsize
        total = 0
        for t in self.tensors:
            if t.kind == "buffer":
                total += t.numel * t.dtype.itemsize
            elif t.kind == "linear" and quantization == "8bit" and len(t.shape) == 2:
                total += t.numel + t.shape[0] * 4
            elif t.kind == "linear" and quantization == "4bit" and len(t.shape) == 2:
                total += (t.numel + 1) // 2 + math.ceil(t.numel / NF4_BLOCK) * 4
            else:
                total += t.numel * size
        return total

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "from": self.origin,
            "family": self.family,
            "parameters": self.parameters,
            "layers": self.num_layers,
            "hidden": self.hidden,
            "intermediate": self.intermediate,
            "heads": self.heads,
            "kv_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "vocab": self.vocab,
        }


def _config_for(spec: ModelSpec):
    """(transformers config, where it came from) for any model name, offline."""
    import transformers
    from transformers import AutoConfig

    from kvproj import zoo
    from kvproj.models import tiny_config

    name = spec.name
    if name.startswith(TINY_PREFIX):
        return tiny_config(name[len(TINY_PREFIX) :], spec.tiny), "tiny config (kvproj/models.py)"
    if name in zoo.ZOO:
        folder = zoo.converted_dir(name)
        if (folder / "config.json").is_file():
            return AutoConfig.from_pretrained(folder), f"zoo config ({folder / 'config.json'})"
        entry = architectures()["zoo"][name]
        entry = _hub_entry(entry) if isinstance(entry, str) else entry
        origin = "kvproj/plan/architectures.yaml (zoo model not installed)"
    else:
        path = Path(os.path.expanduser(name))
        if path.is_dir() and (path / "config.json").is_file():
            return AutoConfig.from_pretrained(path), f"local config ({path / 'config.json'})"
        if path.is_file() and path.suffix == ".gguf":
            return AutoConfig.from_pretrained(path.parent, gguf_file=path.name), f"GGUF header ({path})"
        entry = _hub_entry(name)
        origin = "kvproj/plan/architectures.yaml"
        if entry is None:
            try:  # a hub model already in the local Hugging Face cache
                return AutoConfig.from_pretrained(name, local_files_only=True), "local Hugging Face cache"
            except (OSError, ValueError):
                pass
            known = sorted(architectures()["models"])
            raise ValueError(
                f"model name {name!r}: plan needs its architecture, but it is not a zoo name ({', '.join(zoo.ZOO)}), "
                f"a local folder or .gguf file, a tiny:<family> name, nor a hub model in "
                f"kvproj/plan/architectures.yaml ({', '.join(known)}); add its config numbers there"
            )
    kwargs = dict(entry["config"])
    model_type = kwargs.pop("model_type")
    config_class = transformers.CONFIG_MAPPING[model_type]
    return config_class(**kwargs), origin


def model_shape(spec: ModelSpec) -> ModelShape:
    """The tensors of `spec`'s model, built on the meta device (exact shapes, no memory) from its config."""
    from torch import nn
    from transformers import AutoModelForCausalLM

    from kvproj.cache import text_sizes

    config, origin = _config_for(spec)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=DTYPES[spec.dtype])
    text = model.config.get_text_config(decoder=True)
    sizes = text_sizes(text)
    head = model.get_output_embeddings()
    tensors: list[Tensor] = []
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if id(p) in seen:  # tied weights are one tensor
                continue
            seen.add(id(p))
            quantizable = isinstance(module, nn.Linear) and module is not head and pname == "weight"
            tensors.append(
                Tensor(f"{module_name}.{pname}", tuple(p.shape), "linear" if quantizable else "param", p.dtype)
            )
        for bname, b in module.named_buffers(recurse=False):
            if b is not None and id(b) not in seen:
                seen.add(id(b))
                tensors.append(Tensor(f"{module_name}.{bname}", tuple(b.shape), "buffer", b.dtype))
    from kvproj.adapters.attention import key_norms

    try:
        has_key_norm = any(n is not None for n in key_norms(model))
    except Exception:  # an architecture the adapters do not know: no key norm assumed
        has_key_norm = False
    return ModelShape(
        name=spec.name,
        origin=origin,
        family=text.model_type,
        num_layers=sizes["num_layers"],
        hidden=text.hidden_size if hasattr(text, "hidden_size") else text.n_embd,
        intermediate=getattr(text, "intermediate_size", None)
        or getattr(text, "n_inner", None)
        or 4 * text.hidden_size,
        heads=sizes["num_attention_heads"],
        kv_heads=sizes["num_kv_heads"],
        head_dim=sizes["head_dim"],
        vocab=text.vocab_size,
        tied=bool(getattr(text, "tie_word_embeddings", False)),
        has_key_norm=has_key_norm,
        tensors=tensors,
    )


def check_quantization(spec: ModelSpec) -> None:
    if spec.quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization: got {spec.quantization!r}; valid: None, 8bit, 4bit")


# ------------------------------------------------------------------------------------------------ the projector
@dataclass
class ProjectorShape:
    architecture: str
    parameters: int
    tensors: int  # parameter tensors (AdamW keeps one float32 `step` scalar per tensor)
    layer_map: list[int]
    mode: str
    source_layers: list[list[int]]  # per target layer, the source layers it reads (one, or a source_window)
    source_tokens: int = 1  # source positions each target position reads, per source layer

    @property
    def bytes(self) -> int:
        return self.parameters * 4  # float32: Lightning keeps trainable parameters in float32 at every precision


def projector_shape(config: Any, mode: str, source: ModelShape, target: ModelShape) -> ProjectorShape:
    """Build the projector on the meta device (no memory) for the two models' cache sizes and count it."""
    from kvproj.cache import CacheGeometry

    def geometry(m: ModelShape) -> CacheGeometry:
        n = m.num_layers
        return CacheGeometry(
            m.family, n, m.kv_heads, m.head_dim, ("full_attention",) * n, (None,) * n, (None,) * n
        )

    with torch.device("meta"):
        projector = config.build(geometry(source), geometry(target), mode)
    params = [p for p in projector.parameters() if p.requires_grad]
    return ProjectorShape(
        projector.architecture, sum(p.numel() for p in params), len(params), list(projector.layer_map), mode,
        [list(x) for x in projector.source_layers], projector.source_tokens,
    )  # fmt: skip


# ------------------------------------------------------------------------------------------------ sequence lengths
@dataclass
class Lengths:
    """Token counts of the run's batches. `*_max`: the longest padded batch seen (memory is set by the longest
    batch); `*_mean`: mean real tokens per example (time and tokens/s)."""

    source_max: int
    prefix_max: int
    continuation_max: int
    scored_max: int  # scored positions (answer tokens) in the largest batch: logits are computed there only
    source_mean: float
    prefix_mean: float
    continuation_mean: float
    answer_mean: float
    exact: bool  # tokenized with the models' own tokenizers (else characters / CHARS_PER_TOKEN)
    encode_seconds: float  # host seconds to tokenize and align one example here (measured; estimated if not exact)
    examples: int
    how: str

    def scaled(self, context_tokens: int) -> Lengths:
        """The same batches with the context cut at `context_tokens` (data.max_context_tokens)."""
        f = min(1.0, context_tokens / max(self.prefix_max, 1))
        return Lengths(
            max(1, round(self.source_max * f)),
            max(1, round(self.prefix_max * f)),
            self.continuation_max,
            self.scored_max,
            self.source_mean * f,
            self.prefix_mean * f,
            self.continuation_mean,
            self.answer_mean,
            self.exact,
            self.encode_seconds,
            self.examples,
            self.how + f"; context scaled to {context_tokens} tokens",
        )


def _tokenizer(spec: ModelSpec):
    """The model's tokenizer if it can be had offline and cheaply, else None."""
    from kvproj import zoo
    from kvproj.models import byte_tokenizer

    if spec.name.startswith(TINY_PREFIX):
        return byte_tokenizer()
    from transformers import AutoTokenizer

    path = spec.name
    if spec.name in zoo.ZOO:
        folder = zoo.converted_dir(spec.name)
        if not (folder / "tokenizer_config.json").is_file():
            return None
        path = str(folder)
    elif Path(os.path.expanduser(spec.name)).suffix == ".gguf":
        return None
    try:
        tok = AutoTokenizer.from_pretrained(
            os.path.expanduser(path), local_files_only=True, trust_remote_code=False
        )
    except Exception:  # not available offline: lengths are approximated
        return None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def _examples(data: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """The facts and passages among the first n training examples of the run's stream, drawn as training draws
    them (`kvproj.data.datamodule.stream_source`: the facts / passages / text mix of data.passages.share and
    data.text.share). Text examples are not sampled (a corpus would have to be read): a pure text run gives []."""
    from kvproj.data.datamodule import stream_source, synthetic_example
    from kvproj.data.facts import FactsConfig
    from kvproj.data.passages import PassagesConfig

    dataset = data.get("dataset", "facts")
    facts = FactsConfig(**(data.get("facts") or {}))
    passages = PassagesConfig(**(data.get("passages") or {}))
    text_share = float((data.get("text") or {}).get("share", 0.0))
    kinds = (stream_source(dataset, facts.seed, text_share, passages.share, i) for i in range(n))
    return [synthetic_example(k, i, facts, passages) for i, k in enumerate(kinds) if k in ("facts", "passages")]


def sequence_lengths(
    source: ModelSpec,
    target: ModelSpec,
    data: dict[str, Any],
    chat_template: bool,
    question_template: str,
    batches: int = 8,
) -> Lengths:
    """Lengths of `batches` training batches of the run's own data, encoded exactly as training encodes them
    (kvproj.data.pairs.encode_example) when both tokenizers are available offline; else from characters."""
    from kvproj.data.pairs import SideFormat, context_after, encode_example

    batch = int(data.get("batch_size", 16))
    max_ctx = int(data.get("max_context_tokens", 256))
    answer_template = data.get("answer_template", " {answer}")
    answer_end = data.get("answer_end", "") or ""
    answer_follow = int(data.get("answer_follow", 0) or 0)
    examples = _examples(data, batch * batches)
    if not examples:  # a text corpus: context = a share of each text, up to max_context_tokens
        ctx = max_ctx
        cont = max(
            1, round(ctx * (1 - data.get("lm_context_fraction", 0.5)) / data.get("lm_context_fraction", 0.5))
        )
        return Lengths(
            ctx + 1,
            ctx + 1,
            cont,
            cont * batch,
            ctx + 1,
            ctx + 1,
            cont,
            cont,
            False,
            ENCODE_SECONDS,
            0,
            "dataset text: context = data.max_context_tokens, continuation by lm_context_fraction",
        )
    toks = [_tokenizer(source), _tokenizer(target)]
    rows: list[tuple[int, int, int, int]] = []
    if all(t is not None for t in toks):
        formats = [SideFormat.build(t, chat_template, question_template) for t in toks]
        started = time.perf_counter()
        for e in examples:
            enc = encode_example(
                e,
                toks[0],
                toks[1],
                formats[0],
                formats[1],
                answer_template=answer_template,
                answer_end=answer_end,
                answer_follow=answer_follow,
                max_context_tokens=max_ctx,
            )
            answer = sum(1 for x in enc.labels if x != -100)
            rows.append((len(enc.source_ids), len(enc.target_prefix_ids), len(enc.continuation_ids), answer))
        encode = (time.perf_counter() - started) / len(examples)
        exact, how = True, "tokenized with both models' tokenizers"
    else:
        before, after = question_template.split("{question}")
        for e in examples:
            ctx = min(math.ceil(len(e["context"]) / CHARS_PER_TOKEN), max_ctx)
            end = context_after(e["context"], str(e["answer"]), answer_follow) if answer_follow else answer_end
            answer = math.ceil(len(answer_template.format(answer=e["answer"]) + end) / CHARS_PER_TOKEN)
            question = math.ceil(len(before + e["question"] + after) / CHARS_PER_TOKEN)
            rows.append((ctx + 1, ctx + 1, question + answer, answer))
        encode = ENCODE_SECONDS
        exact, how = False, f"{CHARS_PER_TOKEN:g} characters per token (a tokenizer is not available offline)"
    chunks = [rows[i : i + batch] for i in range(0, len(rows), batch)]
    peak = [max(max(r[k] for r in c) for c in chunks) for k in range(3)] + [
        max(sum(r[3] for r in c) for c in chunks)
    ]
    mean = [sum(r[k] for r in rows) / len(rows) for k in range(4)]
    return Lengths(
        *peak,
        *mean,
        exact,
        encode,
        len(rows),
        how + f", {len(rows)} of the first {batch * batches} training examples",
    )
