"""Re-derive an evaluation's text metrics from the generations it saved, after a change to the metric.

`kvproj evaluate` writes results.json and generations.jsonl beside it; the generations hold every answer the target
wrote, so exact match, answer first and token F1 (and their intervals and the gap closed) can be scored again without
loading a model. Answer NLL, KL and latency come from the models and are kept as written. Imports nothing heavy.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from typing import Any

from kvproj.eval import metrics


class RescoreError(ValueError):
    """The results and the generations do not belong together (conditions, example counts or answers differ)."""


def rescore_results(results: dict[str, Any], rows: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict], int]:
    """Score `rows` (a generations file's rows) with the current metric and rebuild `results` (its results.json)
    around them: per condition the text metrics' means and 95% intervals, with the seeds `kvproj evaluate` used
    (the run's seed, the condition's position), and the gap closed; a text metric the results do not report (one
    added after they were written) is not added. Returns the new results, the rows with
    `correct` rescored, and how many rows' exact match moved; the inputs are not changed. An evaluation of the lm
    task (no text metrics) comes back unchanged.

    Raises:
        RescoreError: a condition in one and not the other, a count that is not the results' n, or rows whose
            answers differ between conditions (not one evaluation's output).
    """
    results = copy.deepcopy(results)
    rows = [dict(r) for r in rows]
    if results.get("task", "facts") != "facts":
        return results, rows, 0
    by_condition: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_condition[row["condition"]].append(row)
    conditions = results["conditions"]
    if set(by_condition) != set(conditions):
        raise RescoreError(f"conditions differ: results {sorted(conditions)}, generations {sorted(by_condition)}")
    answers = None
    moved = 0
    for index, (name, entry) in enumerate(conditions.items()):
        picked = by_condition[name]
        if len(picked) != results["n"]:
            raise RescoreError(f"{name}: {len(picked)} generations for n={results['n']} examples")
        these = [r["answer"] for r in picked]
        if answers is not None and these != answers:
            raise RescoreError(f"{name}: answers differ from the first condition's; not one evaluation's rows")
        answers = these
        text = metrics.text_scores([r["generated"] for r in picked], answers)
        fresh = metrics.summarize(
            text, seed=metrics.condition_seed(results.get("seed", 0), index), resamples=metrics.BOOTSTRAP_RESAMPLES
        )
        for key in (k for k in metrics.TEXT_METRICS if k in entry):  # a metric added since the run stays out
            entry[key] = fresh[key]
            entry["ci95"][key] = fresh["ci95"][key]
        for row, score in zip(picked, text["exact_match"]):
            moved += bool(score) != bool(row["correct"])
            row["correct"] = bool(score)
    results["gap_closed"] = metrics.gap_closed_of(conditions)
    return results, rows, moved
