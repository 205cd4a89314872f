"""Run the facts task on a fixed validation subset every N steps: scalars and a text table to TensorBoard."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import lightning as L

from kvproj.callbacks.preemption import preempted

log = logging.getLogger(__name__)

# per-condition metrics logged to TensorBoard at each evaluation (None values, e.g. lm tasks, are skipped)
_LOGGED_METRICS = ("exact_match", "answer_first", "f1", "answer_nll")


class FactsEvalCallback(L.Callback):
    """Generation-based evaluation during training (training loss is no guide; what the target says is).

    Args:
        every_n_steps: Evaluate after every N optimizer steps (and at the end of fit).
        limit: Validation examples (held-out entities), the same ones every time.
        conditions: Conditions to run (the floor and oracle are cheap to include and make the gap readable).
        max_new_tokens: Greedy tokens per answer.
        examples_in_table: Example generations per condition written to the TensorBoard text tab.
        eval_files: Held-out sets evaluated as well, each with the same limit and conditions: "narrative" / "genres"
            (the bundled hand-written files), "passages:val" / "passages:test" (the run's held-out passage genres) or
            a JSONL path of {context, question, answer}. Scalars go to eval/<set>/...; each evaluation's
            results JSON to <log dir>/eval/<set>-step<N>.json (a learning curve on prose unlike training).
    """

    def __init__(
        self,
        every_n_steps: int = 200,
        limit: int = 32,
        conditions: tuple[str, ...] = ("target_alone", "target_text", "projected", "shuffled_source"),
        max_new_tokens: int = 12,
        examples_in_table: int = 4,
        eval_files: tuple[str, ...] = (),
    ) -> None:
        if every_n_steps < 1:
            raise ValueError(f"FactsEvalCallback.every_n_steps: must be >= 1, got {every_n_steps}")
        if limit < 1:
            raise ValueError(f"FactsEvalCallback.limit: must be >= 1, got {limit}")
        self.every_n_steps, self.limit = every_n_steps, limit
        self.conditions, self.max_new_tokens = tuple(conditions), max_new_tokens
        self.examples_in_table = examples_in_table
        self.eval_files = tuple(eval_files)
        self._examples: dict[str, list[dict]] = {}
        self._last_step = -1

    def setup(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        # read every held-out set now: a bad name fails before training, not after the first N steps
        from kvproj.eval.run import load_examples

        dm = trainer.datamodule
        for name in self.eval_files:
            if name not in self._examples:
                self._examples[name] = load_examples(
                    "facts",
                    name,
                    "val",
                    None,
                    self.limit,
                    passages_options=dataclasses.asdict(dm.passages_options),
                )

    def _run(self, trainer: L.Trainer, module: L.LightningModule, examples: list[dict]):
        from kvproj.eval.facts import EvalSettings, FactsEvaluator

        dm = trainer.datamodule
        settings = EvalSettings(
            batch_size=dm.val_batch_size, max_new_tokens=self.max_new_tokens, conditions=self.conditions
        )
        was_training = module.training
        module.eval()
        try:
            return FactsEvaluator(dm.pair, dm.eval_codec, module.transfer, None, settings).run(examples)
        finally:
            module.train(was_training)

    def evaluate_files(self, trainer: L.Trainer, module: L.LightningModule) -> dict[str, dict]:
        """The held-out `eval_files` at this step: logged, written as results JSON, returned by set name."""
        from kvproj.atomic import atomic_write

        step, out = trainer.global_step, {}
        folder = Path(trainer.log_dir or trainer.default_root_dir) / "eval"
        for name in self.eval_files:
            results, _ = self._run(trainer, module, self._examples[name])
            tag = name.replace(":", "-").replace("/", "_")
            for condition, c in results["conditions"].items():
                for metric in _LOGGED_METRICS:
                    if c[metric] is not None:
                        module.logger.log_metrics({f"eval/{tag}/{condition}/{metric}": c[metric]}, step=step)
            results = {"eval_set": name, "global_step": step, **results}
            if trainer.is_global_zero:
                atomic_write(folder / f"{tag}-step{step:07d}.json", json.dumps(results, indent=2) + "\n")
            em = {k: round(v["exact_match"], 3) for k, v in results["conditions"].items()}
            log.info("step %d eval on %s (n=%d): exact match %s", step, name, results["n"], em)
            out[name] = results
        return out

    def evaluate(self, trainer: L.Trainer, module: L.LightningModule) -> dict | None:
        dm = trainer.datamodule
        self.evaluate_files(trainer, module)
        examples = dm.val_raw()[: self.limit]
        if not examples or dm.dataset not in ("facts", "passages"):
            self._last_step = trainer.global_step
            return None
        results, rows = self._run(trainer, module, examples)
        step = trainer.global_step
        for name, c in results["conditions"].items():
            for metric in _LOGGED_METRICS:
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
