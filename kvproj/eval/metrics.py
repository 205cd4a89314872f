"""Answer metrics (exact match, token F1), bootstrap confidence intervals and the gap-closed arithmetic."""

from __future__ import annotations

import math
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

BOOTSTRAP_RESAMPLES = 1000  # what `kvproj evaluate` resamples for every 95% interval

_ARTICLES = re.compile(r"\b(a|an|the)\b")


def _is_punct(ch: str) -> bool:
    """ASCII punctuation, any Unicode punctuation (curly quotes, dashes, ellipsis, guillemets) and currency signs, so
    "£133.50" scores as "133.50" and "word—word" as two words."""
    if ch in string.punctuation:
        return True
    category = unicodedata.category(ch)
    return category.startswith("P") or category == "Sc"


# a minus sign that starts a number: "-2", "−2", "(-4.5" and "at -2" keep it; "3-5", "AB-12" and "well-known" do not
_MINUS = re.compile(r"(?<![\w.])[-\u2212](?=\d)")


def normalize(text: str) -> str:
    """Lowercase, fold compatibility forms (NFKC), turn punctuation and currency signs into spaces (except a minus
    sign that starts a number: "-2" and "2" are different answers), drop articles, collapse whitespace."""
    text = unicodedata.normalize("NFKC", text).lower()
    signs = {m.start() for m in _MINUS.finditer(text)}
    text = "".join("-" if i in signs else " " if _is_punct(ch) else ch for i, ch in enumerate(text))
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def first_line(generated: str) -> str:
    """The answer part of a generation: up to the first newline (models often continue with new questions)."""
    stripped = generated.strip()
    return stripped.split("\n", 1)[0].strip() if stripped else ""


def exact_match(generated: str, answer: str) -> float:
    """1.0 if the normalized answer appears as a whole-word span in the normalized first line, else 0.0."""
    gold, got = normalize(answer), normalize(first_line(generated))
    if not gold:
        return 0.0
    return 1.0 if f" {gold} " in f" {got} " else 0.0


def answer_first(generated: str, answer: str) -> float:
    """A stricter exact match: 1.0 if the normalized first line STARTS with the normalized answer (whole words).
    `exact_match` also credits an answer anywhere in the first line, so a line that lists several candidates
    ("13 degrees, 32 degrees, 37 degrees" for "32") counts there and not here."""
    gold, got = normalize(answer), normalize(first_line(generated))
    return 1.0 if gold and f"{got} ".startswith(f"{gold} ") else 0.0


def near_miss(generated: str, answer: str, prefix: int = 4) -> bool:
    """A miss that names the entity but not exactly: the normalized first line holds the first `prefix` characters
    of an answer word of at least that length ("Hamish Dunlebya" for "Hamish Dunleavy", "Tessalville" for
    "Tessaluna"; "412 pounds" for "412 kilograms" does not count: no answer word of 4+ characters in it). True
    for exact matches too; count it on misses."""
    got = normalize(first_line(generated))
    stems = [w[:prefix] for w in normalize(answer).split() if len(w) >= prefix]
    return any(stem in got for stem in stems)


def listed(generated: str, items: int = 3) -> bool:
    """The first line is a list of at least `items` comma-separated parts ("Caspian Fairfield, Ludo Fairfield,
    Colum ..."): a target that enumerates candidates, which `exact_match` credits when any of them is the answer
    and `answer_first` only when the first is."""
    return first_line(generated).count(",") >= items - 1


def overrun(generated: str, answer: str) -> bool:
    """A miss that writes the whole answer but runs its last word on: the normalized first line holds the
    normalized answer from a word start, followed by more of the same word ("Oriel Tamsworthsmith" for "Oriel
    Tamsworth", "191111" for "1911", "477" for "47"). False for exact matches."""
    gold, got = normalize(answer), normalize(first_line(generated))
    if not gold or exact_match(generated, answer):
        return False
    return re.search(r"(?:^| )" + re.escape(gold) + r"\S", got) is not None


def token_f1(generated: str, answer: str) -> float:
    """SQuAD-style token F1 between the first line of the generation and the answer."""
    got, gold = normalize(first_line(generated)).split(), normalize(answer).split()
    if not got or not gold:
        return float(got == gold)
    common = sum((Counter(got) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(got), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def bootstrap_ci(values: Sequence[float], *, seed: int = 0, resamples: int = 1000, level: float = 0.95):
    """Percentile bootstrap CI of the mean: [low, high], NaN/None values dropped.

    Vectorised: `resamples` resamples of n values each, drawn with replacement by `numpy.random.default_rng(seed)`
    (so the same values and seed give the same interval, in any process), in blocks of at most ~4M indices to bound
    memory. The bounds are the means at ranks floor((1 -/+ level) / 2 * resamples) of the sorted resample means.
    """
    vals = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
    if vals.size == 0:
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    n = vals.size
    block = max(1, min(resamples, 4_000_000 // n))
    means = np.concatenate(
        [
            vals[rng.integers(0, n, size=(min(block, resamples - i), n))].mean(axis=1)
            for i in range(0, resamples, block)
        ]
    )
    means.sort()
    lo = means[int((1 - level) / 2 * resamples)]
    hi = means[min(int((1 + level) / 2 * resamples), resamples - 1)]
    return [float(lo), float(hi)]


def gap_closed(projected: float, floor: float, oracle: float) -> float | None:
    """(projected - floor) / (oracle - floor); None when the oracle is no better than the floor."""
    if any(v is None or math.isnan(v) for v in (projected, floor, oracle)) or abs(oracle - floor) < 1e-12:
        return None
    return (projected - floor) / (oracle - floor)


TEXT_METRICS = ("exact_match", "answer_first", "f1")


def text_scores(generated: Sequence[str], answers: Sequence[str]) -> dict[str, list[float]]:
    """Per example, the metrics read from the generated text alone: exact match, answer first, token F1."""
    pairs = list(zip(generated, answers, strict=True))
    return {
        "exact_match": [exact_match(g, a) for g, a in pairs],
        "answer_first": [answer_first(g, a) for g, a in pairs],
        "f1": [token_f1(g, a) for g, a in pairs],
    }


def summarize(per_metric: dict[str, Sequence[float | None]], *, seed: int, resamples: int) -> dict[str, Any]:
    """One condition's entry in results.json: each metric's mean over the examples that have it (None where none
    has), and under "ci95" its bootstrap interval (`bootstrap_ci` with `seed`)."""
    entry: dict[str, Any] = {}
    ci95: dict[str, Any] = {}
    for key, values in per_metric.items():
        present = [v for v in values if v is not None]
        entry[key] = mean(present) if present else None
        ci95[key] = bootstrap_ci(present, seed=seed, resamples=resamples) if present else None
    entry["ci95"] = ci95
    return entry


def condition_seed(seed: int, index: int) -> int:
    """The bootstrap seed of the index-th condition of a run (so conditions do not share resamples)."""
    return seed + 7919 * index


def gap_closed_of(conditions: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """Gap closed in exact match and answer NLL, from the projected, target_alone and target_text entries (None
    for both when one of them was not run)."""
    gap: dict[str, float | None] = {"exact_match": None, "answer_nll": None}
    if {"projected", "target_alone", "target_text"} <= conditions.keys():
        for key in gap:
            gap[key] = gap_closed(
                conditions["projected"][key], conditions["target_alone"][key], conditions["target_text"][key]
            )
    return gap
