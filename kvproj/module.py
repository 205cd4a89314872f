"""The LightningModule: a projector trained through the frozen target. Only projector parameters are
optimized and checkpointed; the frozen models are a `FrozenPair` (kvproj/pair.py) the CLI hands to both this module
and the datamodule.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import lightning as L
import torch
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from kvproj.adapters.attention import key_norms as target_key_norms
from kvproj.adapters.heads import logits_from_hidden
from kvproj.cache import KVCache, forward_with_cache
from kvproj.losses import KL_TOKENS, KLTokens, answer_cross_entropy, kl_to_oracle, reconstruction, scored_positions
from kvproj.pair import FrozenPair
from kvproj.projectors import LinearConfig, ProjectorConfig
from kvproj.transfer import CacheTransfer


class KVProjectorModule(L.LightningModule):
    """Train a per-layer projector from the source's KV cache into the target's.

    Args:
        pair: The frozen models (the CLI builds them from the `pair:` section; not part of this section).
        projector: The projector architecture and its settings, one config class per architecture:
            LinearConfig, LowRankConfig, C2CConfig, IdentityConfig (kvproj.projectors), e.g.
            `{class_path: LowRankConfig, init_args: {rank: 64}}`; all share `layer_map` and `target_key_norm`.
        mode: "replace" or "fuse" (fuse needs data.protocol "shared").
        answer_weight: Weight of the answer/continuation cross-entropy through the frozen target.
        kl_weight: Weight of KL(target reading the prefix as text || target with the projected cache).
        kl_tokens: Where the KL is scored: "continuation" (every continuation token after the first: question and
            answer, or the rest of a text) or "answer" (the answer tokens only, as evaluation scores it; with a
            262k vocabulary the logits at every continuation token dominate the step time).
        reconstruction_weight: Weight of the normalised MSE to the target's own cache of the same text.
        lr: Peak learning rate (AdamW).
        weight_decay: AdamW weight decay.
        warmup_steps: Linear warmup steps (from 0 at step 0 to `lr` at this step), then cosine decay to
            `min_lr_ratio * lr` at the last step (transformers' get_cosine_with_min_lr_schedule_with_warmup).
        min_lr_ratio: Cosine decay floor, as a fraction of `lr` (0 to 1).
        ridge_init: Start a linear projector from per-layer ridge regression on aligned cache pairs.
        ridge_batches: Batches of cache pairs for the ridge fit.
        ridge_lambda: Ridge penalty, relative to the mean feature variance.
    """

    flops_per_batch: int | None = None  # read by Lightning's ThroughputMonitor: FLOPs are not counted

    def __init__(
        self,
        pair: FrozenPair | None = None,
        projector: ProjectorConfig = LinearConfig(),
        mode: str = "replace",
        answer_weight: float = 1.0,
        kl_weight: float = 0.0,
        kl_tokens: KLTokens = "continuation",
        reconstruction_weight: float = 0.0,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 50,
        min_lr_ratio: float = 0.1,
        ridge_init: bool = False,
        ridge_batches: int = 8,
        ridge_lambda: float = 1e-2,
    ) -> None:
        super().__init__()
        if pair is None:
            raise ValueError("KVProjectorModule needs the frozen model pair (the CLI builds it from `pair:`)")
        for name, w in (
            ("answer_weight", answer_weight),
            ("kl_weight", kl_weight),
            ("reconstruction_weight", reconstruction_weight),
        ):
            if w < 0:
                raise ValueError(f"model.{name}: must be >= 0, got {w}")
        if kl_tokens not in KL_TOKENS:
            raise ValueError(f"model.kl_tokens: got {kl_tokens!r}; valid: {', '.join(KL_TOKENS)}")
        if answer_weight + kl_weight + reconstruction_weight <= 0:
            raise ValueError("model: at least one of answer_weight, kl_weight, reconstruction_weight must be > 0")
        if warmup_steps < 0:
            raise ValueError(f"model.warmup_steps: must be >= 0, got {warmup_steps}")
        if not 0 <= min_lr_ratio <= 1:
            raise ValueError(f"model.min_lr_ratio: must be between 0 and 1, got {min_lr_ratio}")
        if not isinstance(projector, ProjectorConfig):
            raise ValueError(
                f"model.projector: got {projector!r}; give a projector config: LinearConfig(), LowRankConfig(rank=64), "
                "C2CConfig(hidden=512) or IdentityConfig() from kvproj.projectors (YAML: {class_path: LowRankConfig, "
                "init_args: {rank: 64}})"
            )
        self.save_hyperparameters(ignore=["pair"])
        if isinstance(self.hparams.get("projector"), ProjectorConfig):
            # built in Python, not by the CLI: record it as the CLI does (class_path + init_args), JSON-friendly
            cls = type(projector)
            self.hparams["projector"] = {
                "class_path": f"{cls.__module__}.{cls.__qualname__}",
                "init_args": dataclasses.asdict(projector),
            }
        self.pair = pair  # not an nn.Module: frozen weights stay out of state_dict and checkpoints
        proj = projector.build(pair.source.geometry, pair.target.geometry, mode)
        self.transfer = CacheTransfer(proj, target_key_norms(pair.target.model))

    @property
    def projector(self):
        return self.transfer.projector

    # ------------------------------------------------------------------ the pieces
    def target_cache(self, batch: dict[str, Any]) -> KVCache:
        """The target's own cache of the prefix (the oracle), made here once per batch when something needs it
        (the datamodule leaves it out)."""
        if batch.get("target_cache") is None:
            batch["target_cache"] = self.pair.target_cache(batch)
        return batch["target_cache"]

    @torch.no_grad()
    def oracle_hidden(self, batch: dict[str, Any]) -> torch.Tensor:
        """The target's continuation hidden states reading the context as text, once per batch (the KL loss
        and the validation loss_text share it)."""
        if batch.get("oracle_hidden") is None:
            batch["oracle_hidden"] = self.continuation_hidden(self.target_cache(batch), batch)
        return batch["oracle_hidden"]

    def reconstruction(self, batch: dict[str, Any], projected: KVCache):
        """`kvproj.losses.reconstruction` of `projected` against the target's own cache at aligned prefix
        positions: (loss, per-layer key cosines, per-layer value cosines); once per batch and projection (the
        loss and the validation cosines share it)."""
        cached = batch.get("reconstruction")
        if cached is None or cached[0] is not projected:
            valid = batch["target_prefix_mask"].bool() & (batch["align_index"] >= 0)
            cached = batch["reconstruction"] = (
                projected,
                reconstruction(projected, self.target_cache(batch), valid),
            )
        return cached[1]

    def project(self, batch: dict[str, Any]) -> KVCache:
        return self.transfer(
            batch["source_cache"],
            batch["align_index"],
            batch["target_prefix_mask"],
            fallback=batch.get("target_head"),
            target_base=self.target_cache(batch) if self.hparams.mode == "fuse" else None,
        )

    def continuation_hidden(self, prefix: KVCache, batch: dict[str, Any]) -> torch.Tensor:
        return forward_with_cache(
            self.pair.target.model,
            prefix,
            batch["continuation_ids"],
            batch["continuation_mask"],
            return_hidden=True,
        )

    def head_only(self, batch: dict[str, Any]) -> KVCache | None:
        """The target's prefix with no context at all (only its own head): the floor."""
        return self.pair.head_only(batch["continuation_ids"].shape[0])

    def losses(self, batch: dict[str, Any]) -> tuple[dict[str, torch.Tensor], KVCache, torch.Tensor]:
        hp = self.hparams
        target = self.pair.target.model
        projected = self.project(batch)
        hidden = self.continuation_hidden(projected, batch)
        out: dict[str, torch.Tensor] = {}
        total = hidden.new_zeros((), dtype=torch.float32)
        if hp.answer_weight > 0:
            out["answer_ce"] = answer_cross_entropy(target, hidden, batch["labels"])
            total = total + hp.answer_weight * out["answer_ce"]
        if hp.kl_weight > 0:
            if hp.kl_tokens == "answer":
                mask, _ = scored_positions(batch["labels"])  # the positions that predict answer tokens
            else:
                mask = batch["continuation_mask"][:, 1:].bool()  # every continuation token after the first
            student = logits_from_hidden(target, hidden[:, :-1][mask])
            with torch.no_grad():
                oracle = logits_from_hidden(target, self.oracle_hidden(batch)[:, :-1][mask])
            rows = torch.arange(mask.shape[0], device=mask.device)[:, None].expand_as(mask)[mask]
            out["kl"] = kl_to_oracle(student, oracle, rows, mask.shape[0])
            total = total + hp.kl_weight * out["kl"]
        if hp.reconstruction_weight > 0:
            out["reconstruction"], _, _ = self.reconstruction(batch, projected)
            total = total + hp.reconstruction_weight * out["reconstruction"]
        out["loss"] = total
        return out, projected, hidden

    # ------------------------------------------------------------------ Lightning hooks
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        max_steps = self.trainer.max_steps if self.trainer.max_steps and self.trainer.max_steps > 0 else None
        self.projector.set_progress(self.global_step / max_steps if max_steps else 0.0, step=self.global_step)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        out, _, _ = self.losses(batch)
        bs = batch["continuation_ids"].shape[0]
        for name, value in out.items():
            self.log(f"train/{name}", value, prog_bar=name == "loss", batch_size=bs)
        if not torch.isfinite(out["loss"]):
            from kvproj.callbacks.checkpointing import divergence_advice

            raise FloatingPointError(
                f"train/loss is {out['loss'].item()} at step {self.global_step}: "
                f"{divergence_advice(self.hparams.lr, self.trainer.precision)}; the last good checkpoint is kept"
            )
        return out["loss"]

    def on_train_batch_end(self, outputs: Any, batch: dict[str, Any], batch_idx: int) -> None:
        # the clock started before the frozen models made this batch's caches (datamodule.on_after_batch_transfer);
        # tokens/s: kvproj.callbacks.progress.TokenThroughput (Lightning's ThroughputMonitor)
        seconds = time.perf_counter() - batch["step_started"]
        self.log("train/step_seconds", seconds, batch_size=1)

    @torch.no_grad()
    def _eval_step(self, batch: dict[str, Any], stage: str) -> None:
        """Loss with the projected cache against the floor (no context) and the oracle (context as text)."""
        target = self.pair.target.model
        out, projected, _ = self.losses(batch)
        bs = batch["continuation_ids"].shape[0]
        labels = batch["labels"]
        self.log(f"{stage}/loss", out.get("answer_ce", out["loss"]), prog_bar=True, batch_size=bs)
        self.log(
            f"{stage}/loss_text", answer_cross_entropy(target, self.oracle_hidden(batch), labels), batch_size=bs
        )
        head = self.head_only(batch)
        if head is not None:
            alone = self.continuation_hidden(head, batch)
            self.log(f"{stage}/loss_no_context", answer_cross_entropy(target, alone, labels), batch_size=bs)
        _, cos_k, cos_v = self.reconstruction(batch, projected)
        self.log(f"{stage}/cos_keys_mean", sum(cos_k) / len(cos_k), batch_size=bs)
        self.log(f"{stage}/cos_values_mean", sum(cos_v) / len(cos_v), batch_size=bs)
        for t, (ck, cv) in enumerate(zip(cos_k, cos_v)):
            self.log(f"layers/{stage}_cos_keys/{t:02d}", ck, batch_size=bs)
            self.log(f"layers/{stage}_cos_values/{t:02d}", cv, batch_size=bs)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    @torch.no_grad()
    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, str]]:
        """Greedy answers of the target with the projected cache (what `kvproj predict` writes)."""
        from kvproj.cache import generate_with_cache

        projected = self.project(batch)
        new = generate_with_cache(
            self.pair.target.model, projected, batch["question_ids"], batch["question_mask"], max_new_tokens=16
        )
        texts = self.pair.target.tokenizer.batch_decode(new, skip_special_tokens=True)
        return [{"id": i, "answer": a, "generated": t} for i, a, t in zip(batch["ids"], batch["answers"], texts)]

    def _gap_closed(self, stage: str) -> None:
        metrics = self.trainer.callback_metrics
        keys = (f"{stage}/loss_no_context", f"{stage}/loss_text", f"{stage}/loss")
        if set(keys) <= metrics.keys():
            floor, oracle, got = (metrics[k].item() for k in keys)
            if abs(floor - oracle) > 1e-6:
                self.log(f"{stage}/gap_closed_nll", (floor - got) / (floor - oracle))

    def on_validation_epoch_end(self) -> None:
        self._gap_closed("val")
        for name, value in self.projector.layer_diagnostics().items():
            self.log(f"layers/{name}", value)

    def on_test_epoch_end(self) -> None:
        self._gap_closed("test")

    def configure_optimizers(self):
        hp = self.hparams
        params = [p for p in self.projector.parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"model.projector {self.projector.architecture!r} has no trainable parameters")
        optimizer = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        scheduler = get_cosine_with_min_lr_schedule_with_warmup(
            optimizer, num_warmup_steps=hp.warmup_steps, num_training_steps=total, min_lr_rate=hp.min_lr_ratio
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_fit_start(self) -> None:
        # loops (global_step) are restored after on_fit_start: a resumed run is recognised by its ckpt_path
        if self.hparams.ridge_init and self.trainer.ckpt_path is None:
            from kvproj.ridge import ridge_init

            ridge_init(self, self.trainer.datamodule)

    # checkpoints identify what they belong to, so a foreign one is refused with a clear message
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["kvproj"] = {
            "source": self.pair.source.spec.to_dict(),
            "target": self.pair.target.spec.to_dict(),
            "source_geometry": self.pair.source.geometry.to_dict(),
            "target_geometry": self.pair.target.geometry.to_dict(),
            "projector": self.projector.architecture,
            "projector_init_args": self.projector.init_args,
        }
