"""School measures: estimates, SDs, intervals, ranks and separation.

One place for the columns every school table has, whoever computed the
posterior (MELS, the MixedLM baseline, the report), and for the quantiles of
the posterior distributions they summarise.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import ndtr

#: the columns each school measure contributes to a school table
MEASURE_SUFFIXES = ("", "_sd", "_lower", "_upper", "_rank", "_separated")


#: what rank 1 means for each kind of school measure
RANK_ORDER = {
    "mean": "1 = highest school mean (the most value added)",
    "variance": "1 = lowest school variance (the most consistent progress)",
}


#: a random-scale SD below this is at its boundary 0 (as the fit's warning says)
SCALE_BOUNDARY = 1e-3

#: what school tables say when the random scale SD is at its boundary
BOUNDARY_NOTE = (
    "sigma_omega is at its boundary 0: school variances differ only through tau_l times "
    "the school means, so they are not separate findings"
)


def rank_order(name: str) -> str:
    """``"highest"`` or ``"lowest"``: which estimate gets rank 1 for a measure."""
    return "lowest" if name.startswith("variance") else "highest"


def measure_columns(name: str, est, sd, lower, upper, reference: float) -> dict:
    """The columns of one school measure: estimate, SD, interval, rank and
    whether the interval excludes ``reference``.

    Rank 1 is the best school: the highest mean, the lowest variance
    (:data:`RANK_ORDER`); ties share the better rank."""
    est, lower, upper = (np.asarray(v, dtype=float) for v in (est, lower, upper))
    return {
        name: est,
        f"{name}_sd": np.asarray(sd, dtype=float),
        f"{name}_lower": lower,
        f"{name}_upper": upper,
        f"{name}_rank": ranks(name, est),
        f"{name}_separated": (lower > reference) | (upper < reference),
    }


def ranks(name: str, est) -> np.ndarray:
    """Ranks of a measure's estimates, 1 the best (:func:`rank_order`); ties
    share the better rank."""
    ascending = rank_order(name) == "lowest"
    return pd.Series(np.asarray(est)).rank(method="min", ascending=ascending).astype(int).to_numpy()


def rerank(frame: pd.DataFrame) -> pd.DataFrame:
    """Every ``{name}_rank`` column of a table of school measures ranked anew over
    all its rows (tables computed by parts, then stacked)."""
    out = frame.copy()
    for col in frame.columns:
        name = str(col)
        if name.endswith("_rank") and name[: -len("_rank")] in frame.columns:
            measure = name[: -len("_rank")]
            out[col] = ranks(measure, frame[measure])
    return out


def grid_weights(logd: np.ndarray) -> np.ndarray:
    """Normalised posterior weights (rows sum to 1) from log densities on a grid."""
    w = np.exp(logd - logd.max(axis=1, keepdims=True))
    return w / w.sum(axis=1, keepdims=True)


def grid_quantiles(values: np.ndarray, weights: np.ndarray, probs) -> list[np.ndarray]:
    """Quantiles of per-row discrete distributions (any order of the values)."""
    order = np.argsort(values, axis=1)
    v = np.take_along_axis(values, order, axis=1)
    w = np.take_along_axis(weights, order, axis=1)
    cum = np.cumsum(w, axis=1) - 0.5 * w
    return [np.array([np.interp(q, c, x) for c, x in zip(cum, v, strict=True)]) for q in probs]


def mixture_quantiles(weights, means, sds, probs, lo, hi, n_iter: int = 60) -> list[np.ndarray]:
    """Quantiles of per-row normal mixtures by vectorised bisection in [lo, hi]."""
    out = []
    for q in probs:
        a, b = lo.copy(), hi.copy()
        for _ in range(n_iter):
            mid = 0.5 * (a + b)
            cdf = np.sum(weights * ndtr((mid[:, None] - means) / sds), axis=1)
            below = cdf < q
            a = np.where(below, mid, a)
            b = np.where(below, b, mid)
        out.append(0.5 * (a + b))
    return out


def weighted_summary(values: np.ndarray, weights: np.ndarray, probs) -> tuple:
    """Mean, SD and equal-tailed quantiles of per-row discrete distributions."""
    mean = np.sum(weights * values, axis=1)
    sd = np.sqrt(np.maximum(np.sum(weights * values**2, axis=1) - mean**2, 0.0))
    return mean, sd, grid_quantiles(values, weights, probs)
