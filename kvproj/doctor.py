"""`kvproj doctor`: what this machine has, and measured proof that cache read/inject/RoPE are exact here.

For each installed zoo model and a tiny model of every supported family: the geometry, the largest logit
difference between one full forward and (kvproj-built prefix cache -> injected -> suffix), and the error of
undoing then re-applying RoPE on the cached keys.
"""

from __future__ import annotations

import importlib.metadata
import json as _json
import platform
import sys
import time
from typing import Any, Literal

import torch

from kvproj.cache import forward_with_cache, read_cache
from kvproj.models import TINY_FAMILIES, LoadedModel, ModelSpec, load_model
from kvproj.rope import apply_rope, undo_rope

TOLERANCE = {"float32": 1e-4, "bfloat16": 5e-2, "float16": 1e-2}
# bitsandbytes kernels pick code paths by matrix shape, so a prefix+suffix split can round differently from one
# full forward (seen: 1.8e-3 on a tiny 4-bit Gemma-3 at one split, 0 at others); a cache bug gives errors ~1.
QUANTIZED_TOLERANCE = 1e-2
PROBE_TEXT = (
    "Marta Oyelaran was born in Valparaiso in 1931. She studied glassmaking in Murano and later opened a studio "
    "in Oslo, where she trained apprentices from eleven countries. Her brother Tomas"
)
_PACKAGES = (
    "torch",
    "transformers",
    "lightning",
    "bitsandbytes",
    "accelerate",
    "datasets",
    "torchmetrics",
    "gguf",
)


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("kvproj", *_PACKAGES):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def devices() -> dict[str, Any]:
    info: dict[str, Any] = {"cpu_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["bf16_supported"] = torch.cuda.is_bf16_supported()
    info["mps"] = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    return info


def probe_ids(loaded: LoadedModel, length: int = 24) -> torch.Tensor:
    """Token ids of a fixed English text (real tokenizer) or random bytes (tiny models): [2, length]."""
    if loaded.source_kind == "tiny":
        return torch.randint(0, 256, (2, length), generator=torch.Generator().manual_seed(0))
    ids = loaded.tokenizer(PROBE_TEXT, add_special_tokens=False, return_tensors="pt").input_ids[:, :length]
    return torch.cat([ids, ids.flip(1)], dim=0)


@torch.no_grad()
def check_model(loaded: LoadedModel, prefix: int = 15) -> dict[str, Any]:
    """Measure injection and RoPE round-trip errors on one model."""
    model = loaded.model
    ids = probe_ids(loaded).to(loaded.device)
    suffix = ids.shape[1] - prefix
    t0 = time.perf_counter()
    full = model(ids, logits_to_keep=suffix).logits.float()
    kv = read_cache(model, ids[:, :prefix], geometry=loaded.geometry)
    injected = forward_with_cache(model, kv, ids[:, prefix:]).float()
    injection_err = (injected - full).abs().max().item()
    rope_err = 0.0
    for layer, spec in enumerate(loaded.geometry.rope):
        k = kv.keys[layer].float()
        back = apply_rope(undo_rope(k, kv.positions, spec), kv.positions, spec)
        rope_err = max(rope_err, (back - k).abs().max().item())
    g = loaded.geometry
    tol = QUANTIZED_TOLERANCE if loaded.spec.quantization else TOLERANCE[loaded.spec.dtype]
    return {
        "name": loaded.spec.name,
        "family": g.family,
        "layers": g.num_layers,
        "kv_heads": g.num_kv_heads,
        "head_dim": g.head_dim,
        "rotary_dims": sorted({s.rotary_dim for s in g.rope if s is not None}),
        "sliding_windows": sorted({w for w in g.sliding_windows if w is not None}),
        "dtype": loaded.spec.dtype,
        "quantization": loaded.spec.quantization,
        "injection_max_abs_err": injection_err,
        "rope_roundtrip_max_abs_err": rope_err,
        "tolerance": tol,
        "ok": injection_err <= tol and rope_err <= tol,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def run(
    include_zoo: bool = True, dtype: str = "float32", device: str = "cpu", quantization: str | None = None
) -> dict[str, Any]:
    from kvproj import zoo

    report: dict[str, Any] = {"versions": versions(), "devices": devices(), "zoo": [], "models": []}
    names = []
    if include_zoo:
        for row in zoo.list_rows():
            report["zoo"].append({k: row[k] for k in ("name", "installed", "converted")})
            if row["converted"]:
                names.append(row["name"])
    names += [f"tiny:{family}" for family in sorted(TINY_FAMILIES)]
    for name in names:
        try:
            loaded = load_model(ModelSpec(name, dtype=dtype, device=device, quantization=quantization))
            report["models"].append(check_model(loaded))
        except Exception as err:  # a broken model is a failed check, not a crash of the whole report
            report["models"].append({"name": name, "ok": False, "error": f"{type(err).__name__}: {err}"})
        finally:
            loaded = None
    report["ok"] = all(m["ok"] for m in report["models"])
    return report


def print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    v = report["versions"]
    console.print("[bold]versions[/]: " + ", ".join(f"{k} {val}" for k, val in v.items()))
    console.print(f"[bold]devices[/]: {report['devices']}")
    if report["zoo"]:
        console.print(
            "[bold]zoo[/]: "
            + ", ".join(
                f"{z['name']} ({'converted' if z['converted'] else 'not installed'})" for z in report["zoo"]
            )
        )
    table = Table(title="cache checks: max |logit diff| full forward vs injected prefix; RoPE undo+redo")
    for col in ("model", "family", "L x Hkv x D", "inject err", "rope err", "ok"):
        table.add_column(col, no_wrap=col != "model")
    for m in report["models"]:
        if "error" in m:
            table.add_row(m["name"], "", "", "", "", f"[red]FAIL[/] {m['error'][:200]}")
            continue
        table.add_row(
            m["name"], m["family"], f"{m['layers']}x{m['kv_heads']}x{m['head_dim']}",
            f"{m['injection_max_abs_err']:.1e}", f"{m['rope_roundtrip_max_abs_err']:.1e}",
            "[green]ok[/]" if m["ok"] else f"[red]FAIL[/] (tol {m['tolerance']:.0e})",
        )  # fmt: skip
    console.print(table)
    console.print("[green]all checks passed[/]" if report["ok"] else "[red]some checks failed[/]")


def doctor(
    json: bool = False,
    zoo: bool = True,
    dtype: Literal["float32", "bfloat16", "float16"] = "float32",
    device: str = "cpu",
    quantization: Literal["8bit", "4bit"] | None = None,
) -> int:
    """Versions, devices, and measured proof that cache read/inject/RoPE are exact here: for every installed zoo
    model and a tiny model of each family, the largest logit difference between one full forward and an injected
    prefix cache, and the RoPE undo+redo error.

    Args:
        json: Print one JSON object instead of tables.
        zoo: Check the installed zoo models too (false: tiny models only).
        dtype: Dtype to load and check the models in.
        device: cpu, cuda, cuda:N or auto.
        quantization: Load with bitsandbytes (8bit or 4bit; needs a GPU).

    Returns:
        The exit status: 0 if every check passed, 1 if one failed.
    """
    report = run(include_zoo=zoo, dtype=dtype, device=device, quantization=quantization)
    if json:
        sys.stdout.write(_json.dumps(report, indent=2) + "\n")
    else:
        print_report(report)
    return 0 if report["ok"] else 1
