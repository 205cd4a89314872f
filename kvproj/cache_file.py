"""A KVCache on disk: safetensors tensors + JSON metadata, so that another process (or machine) with the same
model can continue from it without re-reading the prompt.

File layout (one `.safetensors` file): tensors `keys.{i}`, `values.{i}` ([B, H_kv, T, D] per layer),
`attention_mask`, `positions` ([B, T]) and, when given, `input_ids` ([B, T]: the tokens the cache was made from);
metadata key `kvproj` holds JSON: format version, kvproj version, the model spec, the cache geometry, a hash of the
tokenizer, the dtype it was stored in. `load_cache` refuses a file made by a model of another geometry or another
tokenizer, with a message naming what differs. No transformers cache object is involved (kvproj/cache.py makes
and injects caches).
"""

from __future__ import annotations

import hashlib
import json
import logging
import weakref
from pathlib import Path
from typing import Any

import torch

import kvproj
from kvproj.atomic import atomic_write
from kvproj.cache import CacheGeometry, KVCache

log = logging.getLogger(__name__)

FORMAT = "kvproj-cache/1"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class CacheFileError(ValueError):
    """A cache file that cannot be read, or that was made by a model this one cannot continue from."""


_HASHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def tokenizer_hash(tokenizer: Any) -> str:
    """sha256 of the tokenizer's vocabulary (token -> id) and special tokens: equal hashes read text alike.
    Computed once per tokenizer object (about 0.1 s for a 50k vocabulary), unless tokens were added since."""
    size = len(tokenizer)
    known = _HASHES.get(tokenizer)
    if known is not None and known[0] == size:
        return known[1]
    vocab = sorted(tokenizer.get_vocab().items())
    special = sorted((str(k), str(v)) for k, v in (tokenizer.special_tokens_map or {}).items())
    payload = json.dumps({"vocab": vocab, "special": special}, ensure_ascii=False)
    digest = hashlib.sha256(payload.encode()).hexdigest()
    _HASHES[tokenizer] = (size, digest)
    return digest


def save_cache(
    path: str | Path,
    kv: KVCache,
    model: Any,
    input_ids: torch.Tensor | None = None,
    dtype: str | None = None,
) -> Path:
    """Write `kv` (made by `model`, a `kvproj.models.LoadedModel`) to `path` atomically.

    Args:
        path: The file to write (.safetensors).
        kv: The cache, e.g. from `kvproj.cache.read_cache`.
        model: The loaded model that made it: its spec, geometry and tokenizer go into the metadata.
        input_ids: The tokens the cache was made from ([B, T]); stored so a reader can check or show them.
        dtype: Store the tensors in this dtype (float32, bfloat16, float16); default: as they are.
    """
    from safetensors.torch import save

    if kv.geometry is not None and kv.geometry.mismatches(model.geometry):
        raise CacheFileError(
            f"save_cache: the cache does not fit {model.spec.name}: {kv.geometry.mismatches(model.geometry)}"
        )
    if dtype is not None and dtype not in _DTYPES:
        raise ValueError(f"save_cache: dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    cast = _DTYPES[dtype] if dtype else None
    tensors: dict[str, torch.Tensor] = {}
    for i, (k, v) in enumerate(zip(kv.keys, kv.values)):
        tensors[f"keys.{i}"] = k.detach().to("cpu", cast).contiguous()
        tensors[f"values.{i}"] = v.detach().to("cpu", cast).contiguous()
    tensors["attention_mask"] = kv.attention_mask.detach().to("cpu", torch.long).contiguous()
    tensors["positions"] = kv.positions.detach().to("cpu", torch.long).contiguous()
    if input_ids is not None:
        if tuple(input_ids.shape) != tuple(kv.attention_mask.shape):
            raise ValueError(f"save_cache: input_ids {tuple(input_ids.shape)} do not match the cache "
                             f"{tuple(kv.attention_mask.shape)}")  # fmt: skip
        tensors["input_ids"] = input_ids.detach().to("cpu", torch.long).contiguous()
    meta = {
        "format": FORMAT,
        "kvproj_version": kvproj.__version__,
        "model": model.spec.to_dict(),
        "geometry": model.geometry.to_dict(),
        "tokenizer_sha256": tokenizer_hash(model.tokenizer),
        "tokenizer_class": type(model.tokenizer).__name__,
        "dtype": str(tensors["keys.0"].dtype).removeprefix("torch."),
        "batch_size": kv.batch_size,
        "length": kv.length,
    }
    return atomic_write(path, save(tensors, metadata={"kvproj": json.dumps(meta)}))


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of a cache file (nothing else is read)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"cache file {path}: no such file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["kvproj"])
    except (KeyError, json.JSONDecodeError, OSError, Exception) as err:  # safetensors raises its own error types
        if isinstance(err, FileNotFoundError):
            raise
        raise CacheFileError(f"cache file {path}: not a kvproj cache file ({type(err).__name__}: {err})") from err
    if meta.get("format") != FORMAT:
        raise CacheFileError(f"cache file {path}: format {meta.get('format')!r}, this kvproj reads {FORMAT}")
    return meta


def mismatches(meta: dict[str, Any], model: Any) -> list[str]:
    """What differs between the model that wrote a cache file and `model` (empty: it can continue from it)."""
    stored = CacheGeometry.from_dict(meta["geometry"])
    out = []
    if stored.family != model.geometry.family:
        out.append(f"model family: file {stored.family}, model {model.geometry.family}")
    out += [f"{m.replace('expected', 'file').replace('got', 'model')}" for m in stored.mismatches(model.geometry)]
    if tuple(stored.layer_types) != tuple(model.geometry.layer_types):
        out.append("layer types (sliding / full attention) differ")
    if meta["tokenizer_sha256"] != tokenizer_hash(model.tokenizer):
        out.append(
            f"tokenizer: file {meta['tokenizer_class']} sha256 {meta['tokenizer_sha256'][:12]}, model "
            f"{type(model.tokenizer).__name__} sha256 {tokenizer_hash(model.tokenizer)[:12]}"
        )
    return out


def load_cache(
    path: str | Path, model: Any, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> tuple[KVCache, torch.Tensor | None]:
    """Read a cache file for `model` (a LoadedModel): (KVCache on the model's device, input_ids or None).

    The tensors keep the dtype they were stored in unless `dtype` is given (injection casts to the model's dtype
    anyway). Refused with `CacheFileError` naming every difference when the file was made by a model of another
    geometry (layers, kv heads, head_dim, rotary embedding, family) or another tokenizer; a model of the same
    geometry and tokenizer but another name is accepted with a warning (e.g. a quantized or re-saved copy).
    """
    from safetensors.torch import load_file

    meta = read_metadata(path)
    differ = mismatches(meta, model)
    if differ:
        raise CacheFileError(
            f"cache file {path} was made by {meta['model']['name']!r} and cannot be loaded into "
            f"{model.spec.name!r}: " + "; ".join(differ)
        )
    if meta["model"]["name"] != model.spec.name:
        log.warning("cache file %s was made by %r, loading into %r (same geometry and tokenizer)", path,
                    meta["model"]["name"], model.spec.name)  # fmt: skip
    tensors = load_file(str(path), device="cpu")
    device = device if device is not None else model.device
    n = meta["geometry"]["num_layers"]
    kv = KVCache(
        keys=[tensors[f"keys.{i}"].to(device, dtype) for i in range(n)],
        values=[tensors[f"values.{i}"].to(device, dtype) for i in range(n)],
        attention_mask=tensors["attention_mask"].to(device),
        positions=tensors["positions"].to(device),
        geometry=model.geometry,
    )
    ids = tensors.get("input_ids")
    return kv, ids.to(device) if ids is not None else None


# ---- the `python -m kvproj cache {save,load,info}` commands ----------------------------------------------------


def _read_text(text: str | None, text_file: str | None, setting: str) -> str:
    if (text is None) == (text_file is None):
        raise ValueError(f"{setting}: give exactly one of --text TEXT or --text_file FILE")
    if text_file is not None:
        path = Path(text_file)
        if not path.is_file():
            raise FileNotFoundError(f"--text_file {text_file}: no such file")
        text = path.read_text(encoding="utf-8")
    if not text:
        raise ValueError(f"{setting}: the text is empty; a cache needs at least one token")
    return text


def save_command(
    model: str,
    output: str,
    text: str | None = None,
    text_file: str | None = None,
    dtype: str = "float32",
    device: str = "cpu",
    store_dtype: str | None = None,
    overwrite: bool = False,
) -> None:
    """Read a text with a model and write its KV cache to a file another process can continue from
    (`cache load`). The tokens go into the file too.

    Args:
        model: The model that reads the text (zoo name, hub id, local folder or tiny:<family>).
        output: The cache file to write (.safetensors).
        text: The text to read (or --text_file).
        text_file: A UTF-8 file with the text to read.
        dtype: The model's dtype (float32, bfloat16, float16).
        device: cpu, cuda, cuda:N or auto.
        store_dtype: Store the tensors in this dtype (float32, bfloat16, float16); default: the model's.
        overwrite: Replace an existing output file.
    """
    from kvproj.cache import read_cache
    from kvproj.models import ModelSpec, load_model

    body = _read_text(text, text_file, "cache save")
    out = Path(output)
    if out.exists() and not overwrite:
        raise FileExistsError(f"--output {output} exists; pass --overwrite to replace it")
    if store_dtype is not None and store_dtype not in _DTYPES:
        raise ValueError(f"--store_dtype: got {store_dtype!r}, valid: {', '.join(_DTYPES)}")
    loaded = load_model(ModelSpec(model, dtype=dtype, device=device))
    ids = loaded.tokenizer(body, return_tensors="pt").input_ids.to(loaded.device)
    with torch.no_grad():
        kv = read_cache(loaded.model, ids, geometry=loaded.geometry)
    save_cache(out, kv, loaded, input_ids=ids, dtype=store_dtype)
    size = out.stat().st_size
    log.info("%s: %d tokens, %d layers, %.1f MB (%s)", out, kv.length, kv.num_layers, size / 1e6,
             loaded.geometry.summary())  # fmt: skip


def load_command(
    file: str,
    model: str,
    prompt: str | None = None,
    max_new_tokens: int = 32,
    dtype: str = "float32",
    device: str = "cpu",
    check: bool = False,
) -> int:
    """Load a cache file into a model and continue from it: greedy generation, printed. The model must have the
    geometry and tokenizer of the one that wrote the file (refused otherwise, naming what differs).

    Args:
        file: A cache file written by `cache save` (or `kvproj.cache_file.save_cache`).
        model: The model to continue with.
        prompt: Text that follows the cached text (e.g. a question); default: none (the last cached token is
            read again so that generation starts where the text ended).
        max_new_tokens: Greedy tokens to generate.
        dtype: The model's dtype (float32, bfloat16, float16).
        device: cpu, cuda, cuda:N or auto.
        check: Also let the model re-read the cached text itself and compare: the largest logit difference at
            the first generated position and how many greedy tokens agree (needs the tokens in the file).
    """
    from kvproj.cache import forward_with_cache, generate_from_ids, generate_with_cache, read_cache
    from kvproj.models import ModelSpec, load_model

    if max_new_tokens < 1:
        raise ValueError(f"--max_new_tokens: got {max_new_tokens}, valid: 1 or more")
    read_metadata(file)  # a missing or foreign file fails before any model is loaded
    loaded = load_model(ModelSpec(model, dtype=dtype, device=device))
    kv, ids = load_cache(file, loaded)
    if ids is None and (not prompt or check):
        raise CacheFileError(f"cache file {file} holds no tokens: give --prompt TEXT (and no --check)")
    if prompt:
        follow = loaded.tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
        if follow.shape[1] == 0:
            raise ValueError(f"--prompt {prompt!r}: no tokens")
        follow = follow.to(loaded.device)
    else:  # re-read the last cached token: the cache without it, and the token as the first input
        follow = ids[:, -1:]
        kv = kv.prefix(kv.length - 1)
    with torch.no_grad():
        new = generate_with_cache(loaded.model, kv, follow, max_new_tokens=max_new_tokens)
    print(loaded.tokenizer.decode(new[0], skip_special_tokens=True))
    if check:
        full = torch.cat([ids if prompt else ids[:, :-1], follow], dim=1)
        with torch.no_grad():
            own = generate_from_ids(loaded.model, full, max_new_tokens=max_new_tokens)
            cached = forward_with_cache(loaded.model, kv, follow)[:, -1].float()
            reread = read_cache(loaded.model, full, geometry=loaded.geometry, return_logits=True)[1][:, -1].float()
        n = min(own.shape[1], new.shape[1])
        agree = int((own[0, :n] == new[0, :n]).sum())
        print(f"check: max logit difference {float((cached - reread).abs().max()):.3g} at the first generated "
              f"position; {agree}/{n} greedy tokens agree with the model re-reading the text")  # fmt: skip
    return 0


def info_command(file: str) -> None:
    """Print a cache file's metadata (model, geometry, tokenizer hash, dtype, batch and length) as JSON.

    Args:
        file: A cache file.
    """
    print(json.dumps(read_metadata(file), indent=2))
