"""`kvproj evaluate`: check every cheap input, then load an exported projector and the models its folder names,
run every condition, write results.json and generations.jsonl (never over results it was not told to replace)."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Literal, get_args

from kvproj.atomic import atomic_write
from kvproj.callbacks.progress import loop_progress
from kvproj.eval.facts import CONDITIONS, Condition, EvalSettings, FactsEvaluator
from kvproj.eval.generations import FILENAME as GENERATIONS_FILE
from kvproj.eval.generations import write_generations
from kvproj.pair import load_transfer, read_transfer

log = logging.getLogger(__name__)
Task = Literal["facts", "lm"]
Split = Literal["test", "test_in_distribution", "val"]
TASKS: tuple[str, ...] = get_args(Task)
SPLITS: tuple[str, ...] = get_args(Split)
LM_CONDITIONS = ("target_alone", "target_text", "projected", "shuffled_source")


PASSAGES_PREFIX = "passages:"
PASSAGES_EVAL_SIZE = 200  # examples in passages:val / passages:test unless --limit says otherwise


def load_examples(
    task: str,
    eval_file: str | None,
    split: str,
    facts_options: dict | None,
    limit: int | None,
    passages_options: dict | None = None,
    lm_context_fraction: float = 0.5,
):
    """The examples to evaluate. The options are those `check_inputs` accepted (task, split, limit); this checks
    what needs the eval file itself."""
    from kvproj.data import facts as facts_data

    if eval_file and eval_file.startswith(PASSAGES_PREFIX) and task == "facts":
        from kvproj.data.passages import PassagesConfig, passage_example

        which = eval_file[len(PASSAGES_PREFIX) :]
        if which not in ("val", "test"):
            raise ValueError(f"--eval_file {eval_file}: valid passage sets are passages:val and passages:test")
        n = limit or PASSAGES_EVAL_SIZE
        # the genres this projector's run held out (the defaults for folders that do not record them)
        cfg = PassagesConfig(**(passages_options or {}))
        return [passage_example(cfg, which, i) for i in range(n)]
    if eval_file:
        bundled = facts_data.BUNDLED_EVAL_FILES
        path = facts_data.bundled_eval_path(eval_file) if eval_file in bundled else Path(eval_file)
        if not path.is_file() and not (task == "lm" and path.is_dir()):
            sets = ", ".join(bundled)
            valid = (
                ""
                if task == "lm"
                else f"; give a JSONL file of {{context, question, answer}}, a bundled set ({sets}) or generated "
                f"passages of held-out genres ({PASSAGES_PREFIX}val, {PASSAGES_PREFIX}test)"
            )
            raise FileNotFoundError(f"--eval_file {eval_file}: no such file{valid}")
        if task == "lm":
            from kvproj.data.text import iter_local_texts, lm_example

            # the context / continuation cut the run trained with (data.lm_context_fraction)
            examples = [
                lm_example(t, lm_context_fraction, f"lm-{i}") for i, t in enumerate(iter_local_texts(path))
            ]
        else:
            examples = facts_data.read_jsonl(path)
    else:
        cfg = facts_data.FactsConfig(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in (facts_options or {}).items()}
        )
        examples = [e.to_dict() for e in facts_data.generate_splits(cfg)[split]]
    if limit is not None:
        examples = examples[:limit]
    if not examples:
        raise ValueError(f"no examples to evaluate (eval_file={eval_file!r}, split={split!r})")
    return examples


def build_evaluator(projector_dir: str | Path, device: str | None, settings: EvalSettings) -> FactsEvaluator:
    trained = load_transfer(projector_dir, device=device)
    untrained = trained.untrained(settings.seed) if "untrained" in settings.conditions else None
    return FactsEvaluator(trained.pair, trained.codec, trained.transfer, untrained, settings)


def print_summary(results: dict[str, Any], console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title=f"{results['task']} task, n={results['n']}: {results['source']} -> {results['target']}")
    for col in (
        "condition",
        "exact match [95% CI]",
        "answer first",
        "F1",
        "answer NLL",
        "KL to oracle",
        "latency ms",
    ):
        table.add_column(col, justify="left" if col == "condition" else "right")

    def fmt(v, digits=3):
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"

    for name, c in results["conditions"].items():
        lo, hi = c["ci95"]["exact_match"] or [None, None]
        table.add_row(
            name, f"{fmt(c['exact_match'])} [{fmt(lo, 2)}, {fmt(hi, 2)}]", fmt(c["answer_first"]),
            fmt(c["f1"]), fmt(c["answer_nll"]),
            fmt(c["kl_to_oracle"]), fmt(c["latency_ms"], 1),
        )  # fmt: skip
    console.print(table)
    gap = results["gap_closed"]
    console.print(f"gap closed: exact match {fmt(gap['exact_match'])}, answer NLL {fmt(gap['answer_nll'])}")


def check_inputs(
    task: str,
    eval_file: str | None,
    split: str,
    limit: int | None,
    batch_size: int,
    max_new_tokens: int,
    conditions: tuple[str, ...],
    output: str,
    overwrite: bool,
) -> tuple[str, ...]:
    """Check the options that need no file or model; returns the conditions to run (the lm task keeps those that
    score likelihoods). Raises ValueError / FileExistsError / PermissionError naming the option as typed."""
    if task not in TASKS:
        raise ValueError(f"--task: got {task!r}; valid: {', '.join(TASKS)}")
    if split not in SPLITS:
        raise ValueError(f"--split: got {split!r}; valid: {', '.join(SPLITS)}")
    if task == "lm" and not eval_file:
        raise ValueError("--task lm needs --eval_file (a .txt with one text per line, or .jsonl with 'text')")
    for flag, value, minimum in (("--batch_size", batch_size, 1), ("--max_new_tokens", max_new_tokens, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{flag}: must be a whole number >= {minimum}, got {value!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"--limit: must be a whole number >= 1 (or left out for every example), got {limit!r}")
    conditions = tuple(conditions)
    unknown = [c for c in conditions if c not in CONDITIONS]
    if not conditions or unknown:
        raise ValueError(
            f"--conditions: got {list(conditions)}{f' (unknown: {unknown})' if unknown else ''}; give one or more "
            f"of {', '.join(CONDITIONS)}"
        )
    if len(set(conditions)) != len(conditions):
        raise ValueError(f"--conditions: got {list(conditions)}, which names a condition twice")
    if task == "lm":
        conditions = tuple(c for c in conditions if c in LM_CONDITIONS)
        if not conditions:
            raise ValueError(
                f"--conditions: none of them applies to --task lm, which scores only {', '.join(LM_CONDITIONS)}"
            )
    check_output(Path(output), overwrite)
    return conditions


def check_output(out: Path, overwrite: bool) -> None:
    """`--output` names a file whose folder is (or can be made) writable, and holds no results unless
    `--overwrite`. Creates nothing."""
    generations = out.with_name(GENERATIONS_FILE)
    if out.name == generations.name:
        raise ValueError(f"--output {out}: {GENERATIONS_FILE} is written beside results; name the results file "
                         "otherwise, e.g. results.json")  # fmt: skip
    if out.is_dir():
        raise ValueError(f"--output {out}: is a folder; give a file path such as {out / 'results.json'}")
    if not overwrite and (out.exists() or generations.exists()):
        raise FileExistsError(
            f"--output {out}: results already exist there ({out.name} or {GENERATIONS_FILE}); "
            "pass --overwrite to replace them, or choose another --output"
        )
    folder = out.parent.absolute()
    while not folder.exists():  # the nearest folder that exists must let us create the rest
        folder = folder.parent
    if not folder.is_dir():
        raise ValueError(f"--output {out}: {folder} is a file, so no folder can be made there")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"--output {out}: the folder {folder} is not writable; choose another --output")


def evaluate(
    projector: str,
    task: Task = "facts",
    eval_file: str | None = None,
    split: Split = "test",
    limit: int | None = None,
    seed: int = 0,
    output: str = "results.json",
    batch_size: int = 16,
    max_new_tokens: int = 16,
    device: str | None = None,
    conditions: tuple[Condition, ...] = CONDITIONS,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Score what the target generates with a projected cache, against baselines and controls; writes
    results.json and generations.jsonl beside it.

    Every cheap input is checked first (options, the projector folder's config, the eval file, the output path);
    only then are the two models that the projector folder names loaded (they are logged before loading).

    Args:
        projector: Exported projector folder (checkpoints/<run>/projector). Its projector_config.json chooses the
            source and target models that are loaded.
        task: "facts": generate answers (exact match, F1, answer NLL); "lm": perplexity of each text's second half
            given its first half (needs eval_file).
        eval_file: JSONL of {"id"?, "context", "question", "answer"} ("narrative" / "genres": the bundled files;
            "passages:val" / "passages:test": 200 multi-genre passages of the genres the run held out from
            training, data.passages); for the lm
            task a .txt with one text per line or a .jsonl with "text". Default: the facts split of the run.
        split: Facts split when no eval_file is given.
        limit: Evaluate only the first N examples.
        seed: Seeds the shuffled control, the untrained projector and the bootstrap.
        output: Results file; generations.jsonl is written beside it.
        batch_size: Examples per batch.
        max_new_tokens: Greedy tokens generated per answer.
        device: Override the models' device (cpu, cuda, cuda:N, auto).
        conditions: Conditions to run (the lm task keeps target_alone, target_text, projected, shuffled_source).
        overwrite: Replace existing results at output.

    Returns:
        The results written to output.

    Raises:
        ValueError: an option out of range; EvalFileError (names file:line); ProjectorFolderError (damaged
            folder, weights that do not fit their config); ProjectorMismatchError (models of another geometry).
        FileNotFoundError: no such projector folder or eval file.
        FileExistsError: results exist at output and overwrite is not set.
    """
    conditions = check_inputs(
        task, eval_file, split, limit, batch_size, max_new_tokens, conditions, output, overwrite
    )
    config, _ = read_transfer(projector, device)  # also refuses "cuda" where there is none, before loading
    data = config.get("data", {})
    examples = load_examples(
        task,
        eval_file,
        split,
        data.get("facts"),
        limit,
        data.get("passages"),
        data.get("lm_context_fraction", 0.5),
    )
    settings = EvalSettings(batch_size=batch_size, max_new_tokens=max_new_tokens, seed=seed, conditions=conditions)
    evaluator = build_evaluator(projector, device, settings)
    out = Path(output)
    generations = out.with_name(GENERATIONS_FILE)
    with loop_progress(len(examples), "evaluated", "examples") as advance:
        results, rows = evaluator.run(examples, progress=advance, generate=task == "facts")
    if task == "lm":  # likelihood only: perplexity of the continuation given each prefix
        for c in results["conditions"].values():
            c["exact_match"] = c["answer_first"] = c["f1"] = None
            c["ci95"]["exact_match"] = c["ci95"]["answer_first"] = c["ci95"]["f1"] = None
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
    write_generations(generations, rows)
    print_summary(results)
    log.info("wrote %s and %s", out, generations)
    return results
