"""Peak memory and step time of a kvproj training run, from its config alone.

Memory (bytes) is a sum of named terms, each the size of tensors kvproj's training step keeps alive at its peak (the
backward pass through the frozen target): the frozen weights by dtype / quantization, the source cache, the
projected cache and what the projector saves for its backward, the target's keys and values and the activations it
saves for the backward, the logits at the scored positions, the projector's parameters, gradients and AdamW state.
The parameter, gradient, optimizer and cache terms are exact (tests/test_plan.py compares them with the tensors
torch allocates on tiny models); the activation terms count what PyTorch's autograd saves for each operation of a
decoder layer, which depends on kernels: they are checked against measured peaks (docs/planning.md).

Time: FLOPs and memory traffic per step at a stated efficiency of the GPU's peak rates, plus a cost per kernel
launch; `--measure` replaces the efficiency by the one measured here.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kvproj.models import DTYPES, ModelSpec
from kvproj.plan.shapes import (
    HERE,
    Lengths,
    ModelShape,
    ProjectorShape,
    model_shape,
    projector_shape,
    sequence_lengths,
)

GIB = 2**30
MIXED = {"bf16-mixed": "bfloat16", "16-mixed": "float16", "bf16": "bfloat16", "16": "float16"}
TRUE = {"bf16-true": "bfloat16", "16-true": "float16", "32-true": "float32", "32": "float32", "64-true": "float32"}


@functools.cache
def hardware() -> dict[str, Any]:
    with open(HERE / "hardware.yaml") as f:
        return yaml.safe_load(f)


def gpu_names() -> list[str]:
    return list(hardware()["gpus"])


def check_gpus(names: list[str]) -> None:
    valid = gpu_names()
    for name in names:
        if name not in valid:
            raise ValueError(f"--gpu {name!r}: unknown GPU; valid: {', '.join(valid)} (kvproj/plan/hardware.yaml)")


# ------------------------------------------------------------------------------------------------ the run
@dataclass
class RunSettings:
    """What plan reads from a training config (the same defaults `python -m kvproj fit` applies)."""

    config: str
    name: str
    source: ModelSpec
    target: ModelSpec
    chat_template: bool
    question_template: str
    projector: Any  # a ProjectorConfig
    mode: str
    answer_weight: float
    kl_weight: float
    kl_tokens: str  # "continuation" or "answer": where the KL's logits are computed
    reconstruction_weight: float
    precision: str
    data: dict[str, Any]
    max_steps: int
    val_check_interval: int | None
    limit_val_batches: int | float
    checkpoint_every_n_steps: int
    checkpoint_every_minutes: float | None
    accumulate_grad_batches: int = 1
    gradient_checkpointing: bool = False  # a what-if: kvproj does not enable it yet

    @property
    def batch_size(self) -> int:
        return int(self.data.get("batch_size", 16))

    @property
    def max_context_tokens(self) -> int:
        return int(self.data.get("max_context_tokens", 256))

    def replace(self, **changes: Any) -> RunSettings:
        """A copy with `changes`; `source.X` / `target.X` / `data.X` change one field there."""
        out = copy.deepcopy(self)
        for key, value in changes.items():
            if "." in key:
                side, attr = key.split(".", 1)
                if side == "data":
                    out.data[attr] = value
                else:
                    setattr(out, side, dataclasses.replace(getattr(out, side), **{attr: value}))
            else:
                setattr(out, key, value)
        return out


def read_settings(path: str | Path) -> RunSettings:
    """Read a kvproj training config (YAML) with fit's defaults; a bad section names the setting."""
    from kvproj.losses import KL_TOKENS
    from kvproj.pair import DEFAULT_QUESTION_TEMPLATE
    from kvproj.projectors import ARCHITECTURES, LinearConfig

    path = Path(path)
    with open(path) as f:
        cfg = yaml.safe_load(f) or {}
    pair = cfg.get("pair") or {}
    specs = {}
    for side, default in (("source", "smollm2-135m-instruct"), ("target", "gemma3-270m")):
        raw = pair.get(side) or {"name": default}
        try:
            specs[side] = ModelSpec(**raw)
        except TypeError as err:
            raise ValueError(f"{path}: pair.{side}: {err}") from err
    model = cfg.get("model") or {}
    proj = model.get("projector") or {}
    if isinstance(proj, dict) and proj.get("class_path"):
        cls_name = proj["class_path"].rsplit(".", 1)[-1]
        by_class = {c.__name__: c for c in ARCHITECTURES.values()}
        if cls_name not in by_class:
            raise ValueError(
                f"{path}: model.projector.class_path {proj['class_path']!r}: unknown; valid: {', '.join(sorted(by_class))}"
            )
        projector = by_class[cls_name](**(proj.get("init_args") or {}))
    else:
        projector = LinearConfig()
    kl_tokens = model.get("kl_tokens", "continuation")
    if kl_tokens not in KL_TOKENS:
        raise ValueError(f"{path}: model.kl_tokens: got {kl_tokens!r}; valid: {', '.join(KL_TOKENS)}")
    trainer = cfg.get("trainer") or {}
    run = cfg.get("run") or {}
    return RunSettings(
        config=str(path),
        name=run.get("name", path.stem),
        source=specs["source"],
        target=specs["target"],
        chat_template=bool(pair.get("chat_template", False)),
        question_template=pair.get("question_template", DEFAULT_QUESTION_TEMPLATE),
        projector=projector,
        mode=model.get("mode", "replace"),
        answer_weight=float(model.get("answer_weight", 1.0)),
        kl_weight=float(model.get("kl_weight", 0.0)),
        kl_tokens=kl_tokens,
        reconstruction_weight=float(model.get("reconstruction_weight", 0.0)),
        precision=str(trainer.get("precision", "32-true")),
        data=dict(cfg.get("data") or {}),
        max_steps=int(trainer.get("max_steps", 1000)),
        val_check_interval=trainer.get("val_check_interval"),
        limit_val_batches=trainer.get("limit_val_batches", 1.0),
        checkpoint_every_n_steps=int(run.get("checkpoint_every_n_steps", 100)),
        checkpoint_every_minutes=run.get("checkpoint_every_minutes"),
        accumulate_grad_batches=int(trainer.get("accumulate_grad_batches", 1)),
    )


# ------------------------------------------------------------------------------------------------ memory
@dataclass
class Estimate:
    settings: RunSettings
    source: ModelShape
    target: ModelShape
    projector: ProjectorShape
    lengths: Lengths
    terms: dict[str, int]  # bytes at the peak, by term
    notes: dict[str, str]  # what each term counts
    flops: float  # per optimizer step
    traffic: float  # bytes moved to and from memory per optimizer step
    kernels: int  # kernel launches per optimizer step
    compute_dtype: str
    tokens_per_step: float
    device: str = "cuda"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.terms.values())


def _bytes(dtype: str) -> int:
    return DTYPES[dtype].itemsize


def compute_dtype(settings: RunSettings) -> str:
    """The dtype the frozen target's matmuls run in: autocast's under mixed precision, else the model's."""
    return MIXED.get(settings.precision, settings.target.dtype)


def activation_dtype(settings: RunSettings, spec: ModelSpec) -> str:
    """Dtype of a frozen model's hidden states and cache: its own dtype (quantized: the compute dtype), lowered
    by autocast under mixed precision."""
    mixed = MIXED.get(settings.precision)
    if mixed and _bytes(mixed) < _bytes(spec.dtype):
        return mixed
    return spec.dtype


def estimate(
    settings: RunSettings, device: str = "cuda", lengths: Lengths | None = None, shapes: tuple | None = None
) -> Estimate:
    """Peak memory, FLOPs and traffic of one optimizer step of `settings` on `device` ("cuda" or "cpu": CPU
    attention without a fused kernel keeps the attention probabilities for the backward)."""
    s = settings
    src, tgt = shapes or (model_shape(s.source), model_shape(s.target))
    proj = projector_shape(s.projector, s.mode, src, tgt)
    if lengths is None:
        lengths = sequence_lengths(s.source, s.target, s.data, s.chat_template, s.question_template)
    L = lengths
    B = s.batch_size
    Ts, Tp, Tc, m = L.source_max, L.prefix_max, L.continuation_max, L.scored_max
    sb = _bytes(activation_dtype(s, s.source))
    tb = _bytes(activation_dtype(s, s.target))
    mixed = MIXED.get(s.precision)
    pb = _bytes(mixed) if mixed else 4  # projector outputs: float32 parameters, autocast lowers matmul outputs
    Lt, Wt, Ws = tgt.num_layers, tgt.kv_width, src.kv_width
    used = len({layer for window in proj.source_layers for layer in window})
    # source features side by side in each target layer's input: a source_window of layers, source_tokens positions
    read = len(proj.source_layers[0]) * proj.source_tokens
    terms: dict[str, int] = {}
    notes: dict[str, str] = {}

    def add(name: str, value: float, note: str) -> None:
        terms[name] = int(value)
        notes[name] = note

    add(
        "source_weights",
        src.weight_bytes(s.source.dtype, s.source.quantization),
        f"{src.parameters:,} parameters, {s.source.dtype}"
        + (f", {s.source.quantization}" if s.source.quantization else ""),
    )
    add(
        "target_weights",
        tgt.weight_bytes(s.target.dtype, s.target.quantization),
        f"{tgt.parameters:,} parameters, {s.target.dtype}"
        + (f", {s.target.quantization}" if s.target.quantization else ""),
    )
    add("projector_parameters", proj.bytes, f"{proj.parameters:,} float32 ({proj.architecture})")
    add("projector_gradients", proj.bytes, "float32, one per parameter")
    add(
        "optimizer_state",
        2 * proj.bytes + 4 * proj.tensors,
        "AdamW exp_avg + exp_avg_sq (float32) + a step scalar per tensor",
    )
    src_cache = 2 * src.num_layers * B * Ts * Ws * sb
    add("source_cache", src_cache, f"keys + values, {src.num_layers} layers x {B} x {Ts} tokens x {Ws}")
    fallback = 2 * Lt * B * Tp * Wt * tb
    add(
        "target_head_cache",
        fallback,
        "the target's own head (BOS) broadcast to the prefix: keys + values, every layer",
    )
    projected = 2 * Lt * B * Tp * Wt * pb
    add("projected_cache", projected, f"keys + values, {Lt} layers x {B} x {Tp} tokens x {Wt}")
    # the projector's saved inputs (to_tokens copies of the gathered source keys/values, per target layer), the
    # projected keys before the target's key norm, and the cast into the target's dtype when it differs
    saved = 2 * Lt * B * Tp * Ws * read * (pb if mixed else sb)
    if proj.architecture == "lowrank":
        saved += 2 * Lt * B * Tp * s.projector.rank * pb
    elif proj.architecture == "c2c":
        saved += 2 * Lt * B * Tp * s.projector.hidden * s.projector.depth * 2 * pb
    elif proj.architecture == "identity":
        saved = Lt * B * Tp * Ws * sb
    if tgt.has_key_norm and s.projector.target_key_norm and s.mode == "replace":
        saved += Lt * B * Tp * Wt * max(pb, 4)
    if pb != tb:
        saved += projected * tb // pb
    add(
        "projector_activations",
        saved,
        "what the projector saves for its backward (inputs, keys before the key norm)",
    )
    add(
        "cache_gradients",
        projected,
        "gradients of the projected cache, all layers (the projector's backward runs last)",
    )
    kv_len = Tp + Tc
    add(
        "target_kv",
        2 * Lt * B * kv_len * Wt * tb,
        f"the target's keys + values of prefix + continuation ({kv_len} tokens), saved by attention",
    )
    n = B * Tc
    h, i, a, d, g = tgt.hidden, tgt.intermediate, tgt.heads, tgt.head_dim, tgt.kv_heads
    norms = 4 if tgt.family.startswith("gemma") else 2
    qk_norm = 1 if tgt.has_key_norm else 0
    per_token = (
        norms * h * 4  # each RMSNorm saves its input in float32
        + a * d * tb * (2 + qk_norm)  # queries (after RoPE; before the query norm) and the attention output
        + g * d * tb * qk_norm  # new keys before the key norm
        + a * 4  # attention logsumexp
        + 3 * i * tb  # MLP: gate (activation input), activation output, up (both multiplied)
    )
    if device == "cpu":  # no fused attention with a mask on CPU: the probabilities are saved
        per_token += a * kv_len * tb
    add(
        "target_activations",
        Lt * n * per_token + n * h * 4,
        f"saved for the backward through {Lt} frozen layers, {B} x {Tc} continuation tokens",
    )
    vocab = tgt.vocab
    add(
        "logits",
        m * vocab * (tb + (4 if tb != 4 else 0) + 4 + 4),
        f"{m} scored positions x {vocab} vocabulary: logits, float32 log-softmax, its gradient",
    )
    if s.kl_weight > 0 or s.reconstruction_weight > 0 or s.mode == "fuse":
        add(
            "target_cache",
            2 * Lt * B * Tp * Wt * tb,
            "the target's own cache of the prefix (KL, reconstruction, fuse)",
        )
        if s.kl_weight > 0:  # the projected and the oracle logits at the KL's positions
            kl_m = m if s.kl_tokens == "answer" else B * max(Tc - 1, 1)
            add(
                "kl_logits",
                kl_m * vocab * (2 * tb + 3 * 4),
                f"KL to the oracle at {kl_m} {s.kl_tokens} positions x {vocab}: both logits, log-softmax, gradient",
            )
    if s.gradient_checkpointing:  # what-if: each target layer keeps its input, one layer is recomputed at a time
        terms["target_activations"] = n * h * tb * Lt + n * per_token
        terms["target_kv"] //= Lt
        notes["target_activations"] += " (gradient checkpointing: layer inputs + one layer)"

    # ---- time: FLOPs, memory traffic, kernel launches per optimizer step (times accumulate_grad_batches)
    rows_s, rows_p = B * L.source_mean, B * L.prefix_mean
    cont = B * L.continuation_mean
    scored = B * L.answer_mean
    flops_src = (
        2 * src.matmul_parameters * rows_s + 4 * src.num_layers * rows_s * L.source_mean * src.heads * src.head_dim
    )
    attn_t = 4 * Lt * cont * (L.prefix_mean + L.continuation_mean) * a * d
    flops_tgt = 2 * (2 * tgt.matmul_parameters * cont) + 3 * attn_t  # forward + backward (input gradients only)
    flops_head = 2 * 2 * h * vocab * scored
    if s.kl_weight > 0:  # the projected logits forward + backward, the oracle's forward, at the KL's positions
        kl_scored = scored if s.kl_tokens == "answer" else B * max(L.continuation_mean - 1, 1)
        flops_head += 4 * 2 * h * vocab * kl_scored
        flops_tgt += 2 * tgt.matmul_parameters * cont  # the oracle reads the continuation after the text
    flops_proj = 3 * 2 * proj.parameters * rows_p
    flops = flops_src + flops_tgt + flops_head + flops_proj
    traffic = (
        terms["source_weights"]
        + 2 * terms["target_weights"]
        + 9 * proj.bytes
        + 2
        * sum(
            terms[k]
            for k in ("projector_activations", "target_kv", "target_activations", "logits", "source_cache")
        )
        + 2 * terms["projected_cache"]
        + 2 * terms.get("kl_logits", 0)
    )
    if "target_cache" in terms:
        flops += 2 * tgt.matmul_parameters * rows_p
        traffic += terms["target_weights"] + terms["target_cache"]
    kernels = 15 * src.num_layers + 45 * Lt + 30 * len(proj.layer_map) + 40
    acc = max(1, s.accumulate_grad_batches)
    tokens = B * (L.source_mean + L.prefix_mean + L.continuation_mean)
    return Estimate(
        s,
        src,
        tgt,
        proj,
        L,
        terms,
        notes,
        flops * acc,
        traffic * acc,
        kernels * acc,
        compute_dtype(s),
        tokens * acc,
        device,
        {"source_layers_read": used},
    )


# ------------------------------------------------------------------------------------------------ fit and time
def fits(est: Estimate, gpu: str) -> dict[str, Any]:
    """Whether the estimate fits `gpu`: the estimate plus the allocator margin plus the CUDA context, against the
    memory torch sees on that card."""
    hw = hardware()
    spec, a = hw["gpus"][gpu], hw["assumptions"]
    need = est.total * (1 + a["allocator_margin"]) + a["cuda_context_gib"] * GIB
    have = spec["usable_gib"] * GIB
    return {
        "fits": need <= have,
        "need_gib": round(need / GIB, 2),
        "usable_gib": spec["usable_gib"],
        "headroom_gib": round((have - need) / GIB, 2),
    }


def peak_tflops(spec: dict[str, Any], dtype: str) -> float:
    key = {"bfloat16": "bf16_tflops", "float16": "fp16_tflops"}.get(dtype, "fp32_tflops")
    return spec.get(key) or spec["fp32_tflops"]


def step_seconds(est: Estimate, spec: dict[str, Any], efficiency: float | None = None) -> dict[str, float]:
    """Seconds per optimizer step on a device described like a hardware.yaml GPU: the slower of compute (FLOPs at
    `efficiency` of peak) and memory (traffic at the bandwidth efficiency), plus the kernel launches."""
    a = hardware()["assumptions"]
    eff = efficiency if efficiency is not None else a["compute_efficiency"]
    compute = est.flops / (peak_tflops(spec, est.compute_dtype) * 1e12 * eff)
    memory = est.traffic / (spec["bandwidth_gbs"] * 1e9 * a["bandwidth_efficiency"])
    launches = est.kernels * a["kernel_overhead_us"] * 1e-6
    # the DataLoader tokenizes and aligns in the main process (data.num_workers 0): serial with the step
    workers = int(est.settings.data.get("num_workers", 0))
    host = (
        0.0
        if workers
        else est.settings.batch_size * est.lengths.encode_seconds * max(1, est.settings.accumulate_grad_batches)
    )
    return {
        "seconds": max(compute, memory) + launches + host,
        "compute_s": compute,
        "memory_s": memory,
        "launch_s": launches,
        "host_s": host,
        "bound": "compute" if compute >= memory else "memory",
    }


def run_hours(est: Estimate, seconds: float) -> float:
    """Hours for the configured steps, validation included (a validation batch ~ one training step: three
    forwards through the target instead of a forward and a backward)."""
    s = est.settings
    val_batches = 0.0
    interval = s.val_check_interval
    if isinstance(interval, int) and not isinstance(interval, bool) and interval >= 1:
        per_pass = math.ceil(int(s.data.get("val_examples", 64)) / int(s.data.get("val_batch_size", 16)))
        limit = s.limit_val_batches  # Lightning's: an int is batches, a float a share of the validation set
        batches = min(per_pass, limit) if isinstance(limit, int) else per_pass * float(limit)
        val_batches = (s.max_steps // interval) * batches
    return (s.max_steps + val_batches) * seconds / 3600


def prices(gpu: str) -> list[dict[str, Any]]:
    out = []
    for provider, p in hardware()["providers"].items():
        if gpu not in p["prices"]:
            continue
        price = p["prices"][gpu]
        low, high = (price, price) if not isinstance(price, list) else price
        out.append(
            {"provider": provider, "per_hour": (low + high) / 2, "low": low, "high": high, "date": str(p["date"])}
        )
    return out


def suggestions(settings: RunSettings, gpu: str, device: str = "cuda") -> list[dict[str, Any]]:
    """Settings that change the estimate, each with its new estimate and whether it fits `gpu`."""
    s = settings
    options: list[tuple[str, dict[str, Any]]] = []
    for side in ("target", "source"):
        spec = getattr(s, side)
        for q in ("8bit", "4bit"):
            if spec.quantization != q and (spec.quantization is None or q == "4bit"):
                options.append((f"pair.{side}.quantization: {q}", {f"{side}.quantization": q}))
        if spec.dtype == "float32" and spec.quantization is None:
            options.append((f"pair.{side}.dtype: bfloat16", {f"{side}.dtype": "bfloat16"}))
    options.append(
        (
            "pair.source.quantization + pair.target.quantization: 4bit",
            {"source.quantization": "4bit", "target.quantization": "4bit"},
        )
    )
    b = s.batch_size
    while b > 1:
        b //= 2
        acc = s.accumulate_grad_batches * s.batch_size // b
        options.append(
            (
                f"data.batch_size: {b} + trainer.accumulate_grad_batches: {acc}",
                {"data.batch_size": b, "accumulate_grad_batches": acc},
            )
        )
    c = s.max_context_tokens
    for _ in range(2):
        c //= 2
        options.append((f"data.max_context_tokens: {c}", {"data.max_context_tokens": c, "_context": c}))
    options.append(
        (
            "gradient checkpointing of the frozen target (not a kvproj setting yet)",
            {"gradient_checkpointing": True},
        )
    )
    base_shapes: dict[str, ModelShape] = {}
    lengths = None
    out = []
    for label, change in options:
        context = change.pop("_context", None)
        new = s.replace(**change)
        shapes = tuple(
            base_shapes.setdefault(side, model_shape(getattr(new, side))) for side in ("source", "target")
        )
        if lengths is None:
            lengths = sequence_lengths(s.source, s.target, s.data, s.chat_template, s.question_template)
        lens = lengths
        if new.batch_size != s.batch_size:
            lens = dataclasses.replace(
                lengths, scored_max=max(1, round(lengths.scored_max * new.batch_size / s.batch_size))
            )
        if context is not None:
            lens = lengths.scaled(context)
        est = estimate(new, device, lens, shapes)
        fit = fits(est, gpu)
        out.append({"change": label, "total_gib": round(est.total / GIB, 2), **fit})
    return out
