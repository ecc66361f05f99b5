"""Ordinal outcomes: the mixed-effects ordinal location scale model.

::

    P(y_ij <= c) = F((gamma_c - x_ij' beta - z_ij' u_j) / sigma_ij),
    log sigma_ij^2 = w_ij' tau + h_ij' v_j,

F the standard normal (``link="probit"``) or logistic (``"logit"``)
distribution function (Hedeker, Demirtas & Mermelstein 2009).  The
thresholds gamma_1 < ... < gamma_{C-1} take the place of the mean's
intercept and the WS intercept is fixed at 0 (the latent scale's unit), so
neither function has an intercept.  The thresholds are parametrised to stay
ordered, as statsmodels' OrderedModel does: the first, then the logs of the
increments.  Two categories are the binary model: gamma_1 is minus the usual
intercept.

Each unit is an interval unit of the kernel: its latent outcome lies in
(gamma_{c-1}, gamma_c].
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from scipy import stats

from .exceptions import MELSInputError
from .formula import DesignMatrices

LINKS = ("probit", "logit")
#: the kernel's code of each link
LINK_CODES = {"probit": 0, "logit": 1}


def apply_ordinal(design: DesignMatrices) -> DesignMatrices:
    """The design of an ordinal outcome: categories coded 0..C-1, no intercept in
    the mean and WS functions.

    Raises
    ------
    MELSInputError
        For non-integer codes or a single category.
    """
    y = design.y
    if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
        bad = y[~(y == np.round(y))][:3]
        raise MELSInputError(
            f"an ordinal outcome needs integer category codes; {design.outcome!r} has "
            f"{', '.join(f'{v:g}' for v in bad)}"
        )
    categories = np.unique(y)
    if categories.size < 2:
        raise MELSInputError(
            f"the ordinal outcome {design.outcome!r} has a single category "
            f"({categories[0]:g}): nothing to model"
        )
    codes = np.searchsorted(categories, y).astype(float)

    def drop_intercept(x, names):
        keep = [k for k, n in enumerate(names) if n != "Intercept"]
        return np.ascontiguousarray(x[:, keep]), tuple(names[k] for k in keep)

    x_mean, mean_names = drop_intercept(design.x_mean, design.mean_names)
    x_ws, ws_names = drop_intercept(design.x_ws, design.ws_names)
    return replace(
        design,
        y=np.ascontiguousarray(codes),
        x_mean=x_mean,
        mean_names=mean_names,
        x_ws=x_ws,
        ws_names=ws_names,
        categories=categories,
    )


def threshold_names(categories: np.ndarray) -> tuple[str, ...]:
    """``"1/2"``, ``"2/3"``, ...: the cut between consecutive categories."""
    lab = [f"{c:g}" for c in categories]
    return tuple(f"{a}/{b}" for a, b in zip(lab[:-1], lab[1:], strict=True))


def thresholds(raw: np.ndarray) -> np.ndarray:
    """gamma from the parameters: the first, then log increments."""
    raw = np.asarray(raw, dtype=float)
    if raw.size == 0:
        return raw
    return raw[0] + np.concatenate([[0.0], np.cumsum(np.exp(raw[1:]))])


def thresholds_raw(gamma: np.ndarray) -> np.ndarray:
    """The parameters of increasing thresholds ``gamma``."""
    gamma = np.asarray(gamma, dtype=float)
    return np.concatenate([gamma[:1], np.log(np.diff(gamma))])


def interval_limits(codes: np.ndarray, gamma: np.ndarray, xb: np.ndarray):
    """(lower, upper) limits less x'beta of each unit's latent interval."""
    c = codes.astype(int)
    ext = np.concatenate([[-np.inf], gamma, [np.inf]])
    return ext[c] - xb, ext[c + 1] - xb


def threshold_scores(
    codes: np.ndarray,
    g_lo: np.ndarray,
    g_hi: np.ndarray,
    raw: np.ndarray,
    group: np.ndarray | None = None,
    n_groups: int = 1,
) -> np.ndarray:
    """(n_groups, C-1) each group's score in the threshold parameters, from each
    unit's gradient in the lower and upper limits of its interval (d gamma /
    d raw: 1 for the first, exp(raw_m) for the increments up to gamma_k).

    ``group`` holds each unit's group number (default: one group).  Sums by
    bincount, O(n) without BLAS (whose threads would compete with the kernel's).
    """
    c = codes.astype(np.intp)
    n_thr = raw.size
    g = np.zeros(c.size, dtype=np.intp) if group is None else group
    size = n_groups * (n_thr + 1)
    # gamma_c is unit i's upper limit when c_i = c, its lower limit when c_i = c + 1
    cell = g * (n_thr + 1) + c
    sums = np.bincount(cell, weights=g_hi, minlength=size).reshape(n_groups, n_thr + 1)[:, :n_thr]
    sums += np.bincount(cell, weights=g_lo, minlength=size).reshape(n_groups, n_thr + 1)[:, 1:]
    jac = np.tril(np.ones((n_thr, n_thr))) * np.concatenate([[1.0], np.exp(raw[1:])])
    return sums @ jac


def start_thresholds(codes: np.ndarray, n_categories: int, link: str) -> np.ndarray:
    """Start values: the quantiles of the cumulative proportions, as parameters."""
    cum = np.cumsum(np.bincount(codes.astype(int), minlength=n_categories))[:-1] / codes.size
    cum = np.clip(cum, 1e-4, 1 - 1e-4)
    gamma = stats.norm.ppf(cum) if link == "probit" else stats.logistic.ppf(cum)
    gamma = np.maximum.accumulate(gamma + 1e-3 * np.arange(gamma.size))
    return thresholds_raw(gamma)
