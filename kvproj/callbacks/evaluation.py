"""Run the facts task on a fixed validation subset every N steps: scalars and a text table to TensorBoard."""

from __future__ import annotations

import logging

import lightning as L

from kvproj.callbacks.preemption import preempted

log = logging.getLogger(__name__)


class FactsEvalCallback(L.Callback):
    """Generation-based evaluation during training (training loss is no guide; what the target says is).

    Args:
        every_n_steps: Evaluate after every N optimizer steps (and at the end of fit).
        limit: Validation examples (held-out entities), the same ones every time.
        conditions: Conditions to run (the floor and oracle are cheap to include and make the gap readable).
        max_new_tokens: Greedy tokens per answer.
        examples_in_table: Example generations per condition written to the TensorBoard text tab.
    """

    def __init__(
        self,
        every_n_steps: int = 200,
        limit: int = 32,
        conditions: tuple[str, ...] = ("target_alone", "target_text", "projected", "shuffled_source"),
        max_new_tokens: int = 12,
        examples_in_table: int = 4,
    ) -> None:
        if every_n_steps < 1:
            raise ValueError(f"FactsEvalCallback.every_n_steps: must be >= 1, got {every_n_steps}")
        self.every_n_steps, self.limit = every_n_steps, limit
        self.conditions, self.max_new_tokens = tuple(conditions), max_new_tokens
        self.examples_in_table = examples_in_table
        self._last_step = -1

    def evaluate(self, trainer: L.Trainer, module: L.LightningModule) -> dict | None:
        from kvproj.eval.facts import EvalSettings, FactsEvaluator

        dm = trainer.datamodule
        examples = dm.val_raw()[: self.limit]
        if not examples or dm.dataset not in ("facts", "passages"):
            return None
        settings = EvalSettings(
            batch_size=dm.val_batch_size, max_new_tokens=self.max_new_tokens, conditions=self.conditions
        )
        was_training = module.training
        module.eval()
        try:
            results, rows = FactsEvaluator(dm.pair, dm.codec, module.transfer, None, settings).run(examples)
        finally:
            module.train(was_training)
        step = trainer.global_step
        for name, c in results["conditions"].items():
            for metric in ("exact_match", "f1", "answer_nll"):
                if c[metric] is not None:
                    module.logger.log_metrics({f"eval/{name}/{metric}": c[metric]}, step=step)
        for metric, value in results["gap_closed"].items():
            if value is not None:
                module.logger.log_metrics({f"eval/gap_closed_{metric}": value}, step=step)
        experiment = getattr(module.logger, "experiment", None)
        if experiment is not None and hasattr(experiment, "add_text"):
            lines = ["| condition | question | answer | generated | ok |", "|---|---|---|---|---|"]
            for condition in self.conditions:
                shown = [r for r in rows if r["condition"] == condition][: self.examples_in_table]
                for r in shown:
                    question = r["prompt"].split("Question:")[-1].split("\n")[0].strip()
                    generated = r["generated"].strip().split("\n")[0].replace("|", "/")
                    lines.append(
                        f"| {condition} | {question} | {r['answer']} | {generated} | {'✓' if r['correct'] else ''} |"
                    )
            experiment.add_text("eval/generations", "\n".join(lines), global_step=step)
        em = {k: round(v["exact_match"], 3) for k, v in results["conditions"].items()}
        log.info("step %d facts eval (n=%d, val entities): exact match %s", step, results["n"], em)
        self._last_step = step
        return results

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if preempted(trainer):  # checkpointed and leaving: no eval on the way out
            return
        if trainer.global_step % self.every_n_steps == 0 and trainer.global_step != self._last_step:
            self.evaluate(trainer, module)

    def on_train_end(self, trainer, module) -> None:
        if trainer.global_step != self._last_step and not preempted(trainer):
            self.evaluate(trainer, module)
