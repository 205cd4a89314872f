"""Statistics and probes shared by the mode-batch, confab-detection and archaeology experiments.

Effect sizes (Cohen's d) with percentile-bootstrap CIs, permutation-test p-values and their correction for many
layers (Holm or Benjamini-Hochberg), split-half reliability, rank correlation of per-layer profiles placed by
relative depth, AUROC with a bootstrap CI, effective rank, and cross-validated linear probes (scikit-learn,
grouped folds: a question or a context never sits on both sides of a split). scipy and scikit-learn do the work;
this module only fixes the choices (seeds, folds, percentile CIs) so every experiment makes them the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

CORRECTIONS = ("holm", "bh")


# ------------------------------------------------------------------------------------------------ two groups
def cohens_d(a: Sequence[float], b: Sequence[float]) -> float:
    """(mean a - mean b) / pooled standard deviation; 0 when both groups are constant and equal, +-inf never
    (a zero pooled deviation with different means gives NaN)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    diff = a.mean() - b.mean()
    pooled = math.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2))
    if pooled == 0.0:
        return 0.0 if diff == 0.0 else float("nan")
    return float(diff / pooled)


def effect(
    a: Sequence[float], b: Sequence[float], seed: int, resamples: int = 1000, permutations: int | None = None
) -> dict[str, Any]:
    """Cohen's d of a - b with its percentile-bootstrap 95% CI (`resamples` groups resampled independently, scipy)
    and the two-sided permutation-test p-value of the difference of means (`permutations`, default `resamples`;
    scipy; exact when the permutations are few)."""
    from scipy import stats

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    d = cohens_d(a, b)
    if len(a) < 2 or len(b) < 2:
        return {"d": d, "ci95": None, "p": None, "diff": float(a.mean() - b.mean()), "n": [len(a), len(b)]}
    rng = np.random.default_rng(seed)
    boot = stats.bootstrap(
        (a, b), lambda x, y: cohens_d(x, y), vectorized=False, paired=False, n_resamples=resamples,
        method="percentile", random_state=rng,
    )  # fmt: skip
    lo, hi = boot.confidence_interval
    return {
        "d": d,
        "ci95": [float(lo), float(hi)],
        "p": permutation_p(a, b, seed + 1, permutations or resamples),
        "diff": float(a.mean() - b.mean()),
        "n": [len(a), len(b)],
    }


def permutation_p(a: Sequence[float], b: Sequence[float], seed: int, resamples: int = 1000) -> float:
    """Two-sided permutation-test p-value of mean(a) - mean(b) (labels exchanged between the groups)."""
    from scipy import stats

    res = stats.permutation_test(
        (np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)),
        lambda x, y, axis: np.mean(x, axis=axis) - np.mean(y, axis=axis),
        permutation_type="independent", alternative="two-sided", vectorized=True, n_resamples=resamples,
        random_state=np.random.default_rng(seed),
    )  # fmt: skip
    return float(res.pvalue)


def correct(pvalues: Sequence[float | None], method: str = "holm") -> list[float | None]:
    """p-values adjusted for the number of tests: Holm (family-wise error) or Benjamini-Hochberg (false
    discovery rate, scipy.stats.false_discovery_control). None stays None and is not counted."""
    from scipy import stats

    if method not in CORRECTIONS:
        raise ValueError(f"correction: one of {', '.join(CORRECTIONS)}, got {method!r}")
    present = [i for i, p in enumerate(pvalues) if p is not None]
    out: list[float | None] = [None] * len(pvalues)
    if not present:
        return out
    ps = np.array([pvalues[i] for i in present], dtype=np.float64)
    if method == "bh":
        adjusted = stats.false_discovery_control(ps, method="bh")
    else:
        order = np.argsort(ps, kind="stable")
        m = len(ps)
        adjusted = np.empty(m)
        running = 0.0
        for rank, i in enumerate(order):
            running = max(running, min(1.0, (m - rank) * ps[i]))
            adjusted[i] = running
    for i, p in zip(present, adjusted):
        out[i] = float(p)
    return out


# ------------------------------------------------------------------------------------------------ profiles
def split_half(
    a: np.ndarray, b: np.ndarray, seed: int, splits: int = 20
) -> dict[str, float | None]:  # a, b: [runs, features]
    """Split-half reliability of a profile of effect sizes: the runs of both groups split at random into halves,
    Cohen's d per feature in each half, Pearson r between the halves' profiles, averaged over `splits` random
    splits; with the Spearman-Brown step-up to the full number of runs."""
    rng = np.random.default_rng(seed)
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 4 or len(b) < 4 or a.shape[1] < 3:
        return {"r": None, "spearman_brown": None, "splits": 0}
    rs = []
    for _ in range(splits):
        pa, pb = rng.permutation(len(a)), rng.permutation(len(b))
        halves = []
        for ia, ib in ((pa[: len(a) // 2], pb[: len(b) // 2]), (pa[len(a) // 2 :], pb[len(b) // 2 :])):
            halves.append([cohens_d(a[ia, j], b[ib, j]) for j in range(a.shape[1])])
        x, y = np.nan_to_num(np.array(halves[0])), np.nan_to_num(np.array(halves[1]))
        if x.std() > 0 and y.std() > 0:
            rs.append(float(np.corrcoef(x, y)[0, 1]))
    if not rs:
        return {"r": None, "spearman_brown": None, "splits": 0}
    r = float(np.mean(rs))
    # the Spearman-Brown step-up to the full number of runs is defined for a positive half-test correlation
    return {"r": r, "spearman_brown": 2 * r / (1 + r) if r > 0 else None, "splits": len(rs)}


def relative_depth(num_layers: int) -> list[float]:
    """Layer i of L placed at i / (L - 1): 0 the first layer, 1 the last."""
    return [i / max(num_layers - 1, 1) for i in range(num_layers)]


def depth_rank_correlation(profile_a: Sequence[float], profile_b: Sequence[float]) -> dict[str, float | None]:
    """Spearman rank correlation of two per-layer profiles of models with different depths: both interpolated
    (linearly, by relative depth) onto the grid of the shallower model's layers."""
    from scipy import stats

    a, b = np.asarray(profile_a, dtype=np.float64), np.asarray(profile_b, dtype=np.float64)
    n = min(len(a), len(b))
    grid = np.array(relative_depth(n))
    ia = np.interp(grid, relative_depth(len(a)), np.nan_to_num(a))
    ib = np.interp(grid, relative_depth(len(b)), np.nan_to_num(b))
    if n < 3 or ia.std() == 0 or ib.std() == 0:
        return {"rho": None, "p": None, "points": n}
    res = stats.spearmanr(ia, ib)
    return {"rho": float(res.statistic), "p": float(res.pvalue), "points": n}


def effective_rank(matrix: np.ndarray) -> float:
    """exp(entropy of the normalised singular values) of a [tokens, features] matrix (Roy & Vetterli, 2007):
    1 for rank one, the number of features for an isotropic cloud."""
    s = np.linalg.svd(np.asarray(matrix, dtype=np.float64), compute_uv=False)
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


# ------------------------------------------------------------------------------------------------ AUROC
def auroc(labels: Sequence[int], scores: Sequence[float], seed: int, resamples: int = 1000) -> dict[str, Any]:
    """Area under the ROC curve (scikit-learn) with a percentile-bootstrap 95% CI over examples (resamples that
    hold one class only are skipped). None where both classes are not present."""
    from sklearn.metrics import roc_auc_score

    y, s = np.asarray(labels, dtype=int), np.asarray(scores, dtype=np.float64)
    if len(set(y.tolist())) < 2:
        return {"auroc": None, "ci95": None, "n": len(y), "positives": int(y.sum())}
    value = float(roc_auc_score(y, s))
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(resamples):
        i = rng.integers(0, len(y), len(y))
        if 0 < y[i].sum() < len(i):
            boots.append(roc_auc_score(y[i], s[i]))
    boots.sort()
    ci = [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))] if boots else None
    return {"auroc": value, "ci95": ci, "n": len(y), "positives": int(y.sum())}


# ------------------------------------------------------------------------------------------------ probes
def folds(groups: Sequence[Any], n_splits: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """GroupKFold splits (scikit-learn): every group wholly in one test fold."""
    from sklearn.model_selection import GroupKFold

    groups = np.asarray([str(g) for g in groups])
    k = min(n_splits, len(set(groups.tolist())))
    if k < 2:
        raise ValueError(f"grouped cross-validation needs 2 or more groups, got {k}")
    return list(GroupKFold(n_splits=k).split(np.zeros(len(groups)), groups=groups))


def probe_predictions(
    x: np.ndarray, y: np.ndarray, splits: list[tuple[np.ndarray, np.ndarray]], *, kind: str = "classify",
    c: float = 1.0, seed: int = 0,
) -> np.ndarray:  # fmt: skip
    """Out-of-fold predictions of a linear probe (standardised features; logistic regression or ridge).

    kind "classify": [n] predicted labels; "score": [n] probability of label 1 (binary); "regress": [n] values.
    A fold whose training part holds one class only predicts that class (score: its frequency)."""
    x = np.asarray(x, dtype=np.float64)
    out = np.zeros(len(y), dtype=np.float64 if kind != "classify" else np.asarray(y).dtype)
    with _one_blas_thread():
        _fit_folds(x, y, splits, kind, c, seed, out)
    return out


def _one_blas_thread():
    """Probes are many small fits: BLAS threads only add overhead (and contend with any other work)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def _fit_folds(x, y, splits, kind: str, c: float, seed: int, out: np.ndarray) -> None:
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    for train, test in splits:
        ytr = y[train]
        if kind == "regress":
            model = make_pipeline(StandardScaler(), Ridge(alpha=1.0 / c))
            out[test] = model.fit(x[train], ytr).predict(x[test])
            continue
        if len(np.unique(ytr)) < 2:
            out[test] = ytr[0] if kind == "classify" else float(ytr[0] == 1)
            continue
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000, random_state=seed))
        model.fit(x[train], ytr)
        if kind == "classify":
            out[test] = model.predict(x[test])
        else:
            classes = list(model.classes_)
            out[test] = model.predict_proba(x[test])[:, classes.index(1)] if 1 in classes else 0.0


def fit_probe(x: np.ndarray, y: np.ndarray, c: float = 1.0, seed: int = 0):
    """A probe (standardised features + logistic regression) fit on all of x, y: for applying elsewhere."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    with _one_blas_thread():
        return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000, random_state=seed)).fit(
            np.asarray(x, dtype=np.float64), y
        )


def r2_with_ci(y: np.ndarray, pred: np.ndarray, seed: int, resamples: int = 1000) -> dict[str, Any]:
    """Out-of-sample R^2 (scikit-learn) with a percentile-bootstrap 95% CI over items."""
    from sklearn.metrics import r2_score

    y, pred = np.asarray(y, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    value = float(r2_score(y, pred))
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(resamples):
        i = rng.integers(0, len(y), len(y))
        if y[i].std() > 0:
            boots.append(r2_score(y[i], pred[i]))
    ci = [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))] if boots else None
    return {"mean": value, "ci95": ci, "n": len(y)}
