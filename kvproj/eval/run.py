"""`kvproj evaluate`: load an exported projector and its models, run every condition, write results.json and
generations.jsonl (never over results it was not told to replace)."""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path
from typing import Any

from kvproj.atomic import atomic_write
from kvproj.eval.facts import CONDITIONS, EvalSettings, FactsEvaluator
from kvproj.pair import load_transfer

log = logging.getLogger(__name__)
TASKS = ("facts", "lm")
SPLITS = ("test", "test_in_distribution", "val")


def load_examples(task: str, eval_file: str | None, split: str, facts_options: dict | None, limit: int | None):
    from kvproj.data import facts as facts_data

    if eval_file:
        path = facts_data.narrative_eval_path() if eval_file == "narrative" else Path(eval_file)
        if task == "lm":
            from kvproj.data.text import iter_local_texts

            examples = [_lm_example(i, t) for i, t in enumerate(iter_local_texts(path))]
        else:
            examples = facts_data.read_jsonl(path)
    else:
        if task == "lm":
            raise ValueError("--task lm needs --eval_file (a .txt with one text per line, or .jsonl with 'text')")
        if split not in SPLITS:
            raise ValueError(f"--split: got {split!r}; valid: {', '.join(SPLITS)}")
        cfg = facts_data.FactsConfig(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in (facts_options or {}).items()}
        )
        examples = [e.to_dict() for e in facts_data.generate_splits(cfg)[split]]
    if limit is not None:
        if limit < 1:
            raise ValueError(f"--limit: must be >= 1, got {limit}")
        examples = examples[:limit]
    if not examples:
        raise ValueError(f"no examples to evaluate (eval_file={eval_file!r}, split={split!r})")
    return examples


def _lm_example(i: int, text: str) -> dict[str, Any]:
    cut = text.rfind(" ", 0, len(text) // 2)
    cut = cut if cut > 0 else len(text) // 2
    return {"id": f"lm-{i}", "context": text[:cut], "question": "", "answer": text[cut:].lstrip()}


def build_evaluator(
    projector_dir: str | Path, device: str | None, settings: EvalSettings
) -> tuple[FactsEvaluator, dict[str, Any]]:
    trained = load_transfer(projector_dir, device=device)
    untrained = trained.untrained(settings.seed) if "untrained" in settings.conditions else None
    evaluator = FactsEvaluator(trained.pair, trained.codec, trained.transfer, untrained, settings)
    return evaluator, trained.config


def print_summary(results: dict[str, Any], console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title=f"{results['task']} task, n={results['n']}: {results['source']} -> {results['target']}")
    for col in ("condition", "exact match [95% CI]", "F1", "answer NLL", "KL to oracle", "latency ms"):
        table.add_column(col, justify="left" if col == "condition" else "right")

    def fmt(v, digits=3):
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"

    for name, c in results["conditions"].items():
        lo, hi = c["ci95"]["exact_match"] or [None, None]
        table.add_row(
            name, f"{fmt(c['exact_match'])} [{fmt(lo, 2)}, {fmt(hi, 2)}]", fmt(c["f1"]), fmt(c["answer_nll"]),
            fmt(c["kl_to_oracle"]), fmt(c["latency_ms"], 1),
        )  # fmt: skip
    console.print(table)
    gap = results["gap_closed"]
    console.print(f"gap closed: exact match {fmt(gap['exact_match'])}, answer NLL {fmt(gap['answer_nll'])}")


def evaluate(
    projector: str,
    task: str = "facts",
    eval_file: str | None = None,
    split: str = "test",
    limit: int | None = None,
    seed: int = 0,
    output: str = "results.json",
    batch_size: int = 16,
    max_new_tokens: int = 16,
    device: str | None = None,
    conditions: tuple[str, ...] = CONDITIONS,
    overwrite: bool = False,
) -> dict[str, Any]:
    if task not in TASKS:
        raise ValueError(f"--task: got {task!r}; valid: {', '.join(TASKS)}")
    out = Path(output)
    generations = out.with_name("generations.jsonl")
    if not overwrite and (out.exists() or generations.exists()):
        raise FileExistsError(
            f"--output {out}: results already exist there ({out.name} or generations.jsonl); "
            "pass --overwrite to replace them, or choose another --output"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    if task == "lm":
        conditions = tuple(
            c for c in conditions if c in ("target_alone", "target_text", "projected", "shuffled_source")
        )
    settings = EvalSettings(batch_size=batch_size, max_new_tokens=max_new_tokens, seed=seed, conditions=conditions)
    evaluator, config = build_evaluator(projector, device, settings)
    examples = load_examples(task, eval_file, split, config.get("data", {}).get("facts"), limit)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("evaluating"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True
    ) as bar:
        job = bar.add_task("eval", total=len(examples))
        results, rows = evaluator.run(examples, progress=lambda n: bar.advance(job, n), generate=task == "facts")
    if task == "lm":  # likelihood only: perplexity of the continuation given each prefix
        for c in results["conditions"].values():
            c["exact_match"] = c["f1"] = None
            c["ci95"]["exact_match"] = c["ci95"]["f1"] = None
            c["perplexity"] = math.exp(c["answer_nll"]) if c["answer_nll"] is not None else None
        results["gap_closed"]["exact_match"] = None
    results = {
        "task": task,
        "n": results["n"],
        "source": config["source"]["spec"]["name"],
        "target": config["target"]["spec"]["name"],
        "projector": {
            "path": str(Path(projector).resolve()),
            "architecture": config["architecture"],
            "global_step": config.get("global_step"),
        },  # fmt: skip
        "eval_set": eval_file or f"facts:{split}",
        "seed": seed,
        "conditions": results["conditions"],
        "gap_closed": results["gap_closed"],
    }
    atomic_write(out, json.dumps(results, indent=2) + "\n")
    atomic_write(generations, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print_summary(results)
    log.info("wrote %s and %s", out, generations)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kvproj evaluate", description="Score what the target generates with a projected cache, against "
        "baselines and controls; writes results.json and generations.jsonl beside it."
    )  # fmt: skip
    parser.add_argument(
        "--projector", required=True, help="exported projector folder (checkpoints/<run>/projector)"
    )
    parser.add_argument("--task", default="facts", choices=TASKS)
    parser.add_argument(
        "--eval_file", help="JSONL of {id?, context, question, answer}; 'narrative' = the bundled file"
    )
    parser.add_argument("--split", default="test", help=f"facts split when no eval file: {', '.join(SPLITS)}")
    parser.add_argument("--limit", type=int, help="evaluate the first N examples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="results.json")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_new_tokens", type=int, default=16)
    parser.add_argument("--device", help="override the models' device (cpu, cuda, auto)")
    parser.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=CONDITIONS)
    parser.add_argument("--overwrite", action="store_true", help="replace existing results at --output")
    args = parser.parse_args(argv)
    try:
        evaluate(**{k: v for k, v in vars(args).items()} | {"conditions": tuple(args.conditions)})
    except (ValueError, FileExistsError, FileNotFoundError) as err:
        logging.getLogger("kvproj").error("%s", err)
        return 2
    return 0
