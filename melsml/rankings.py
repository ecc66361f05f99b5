"""Honest uncertainty for school rankings: rank intervals, comparative
intervals, and flags for unusual school variances controlled for
multiplicity.

All three read the posterior of each school's effects at the fit's estimates
(a random intercept and at most a random scale intercept, the article's
models):

- :func:`rank_intervals` draws every school's mean and variance from their
  exact posterior, ranks every draw, and reports the rank quantiles;
- :func:`comparative_intervals` gives each school the interval for pairwise
  comparisons (Goldstein & Healy, 1995): two schools differ at about the 5%
  level when their intervals do not overlap, which the usual 95% intervals,
  1.96 SE wide, do not mean;
- :func:`variance_flags` flags schools whose variance is unusually high or
  low by the Benjamini-Hochberg procedure on their posterior tail
  probabilities.

When the random scale is at its boundary (sigma_omega = 0) school variances
differ only through tau_l times the school mean effects: they are then not
separate findings, no school is flagged, and the tables say so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import stats

from .exceptions import MELSInputError
from .measures import BOUNDARY_NOTE
from .posterior import posterior_grid
from .random_effects import _posterior_mixwild, _reference_rows, scale_at_boundary
from .stage2 import _check_model, effect_draws

if TYPE_CHECKING:  # pragma: no cover
    from .results import MELSResults


def _variance_shift(res: MELSResults, ws_reference) -> float:
    """log of the reference variance exp(wbar' tau) (the WS function at the
    reference covariates, sample means by default)."""
    wbar, _ = _reference_rows(res, ws_reference, {})
    return float(wbar @ res.fit_state.params()["tau"])


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise MELSInputError(f"alpha must be in (0, 1), got {alpha!r}")


def rank_intervals(
    res: MELSResults,
    n_draws: int = 1000,
    seed=None,
    alpha: float = 0.05,
    ws_reference=None,
    effects: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Each school's rank with an interval, for its mean and its variance.

    Every school's location effect u_j and variance exp(wbar'tau + omega_j)
    are drawn ``n_draws`` times from their exact posterior
    (:func:`melsml.stage2.effect_draws`); each draw is ranked (1 = the
    highest mean, the lowest variance); the interval is the equal-tailed
    ``1 - alpha`` quantile range of a school's ranks.  ``effects``: the
    results' ``school_effects(ws_reference=ws_reference)`` when already at
    hand (their ranks are the published ones; computed when not given).

    Returns
    -------
    DataFrame indexed by school with ``mean_rank`` (the rank of the posterior
    mean), ``mean_rank_median``, ``mean_rank_lower``, ``mean_rank_upper``,
    and the same for ``variance`` (with a random scale); ``attrs`` hold
    ``alpha``, ``n_draws`` and, at the boundary, ``note``.
    """
    _check_alpha(alpha)
    state = _check_model(res)
    draws = effect_draws(res, n_draws, seed, "posterior")
    groups = state.design.groups
    labels = state.design.group_labels
    n_groups = labels.size
    n_draws = int(draws["draw"].max()) + 1
    probs = [alpha / 2, 0.5, 1 - alpha / 2]
    # the published ranks: of the exact posterior means (school_effects)
    published = res.school_effects(ws_reference=ws_reference) if effects is None else effects
    cols: dict[str, np.ndarray] = {}
    measures = {"mean": draws["u"].to_numpy().reshape(n_groups, n_draws)}
    if "omega" in draws:
        shift = _variance_shift(res, ws_reference)
        measures["variance"] = np.exp(shift + draws["omega"].to_numpy().reshape(n_groups, n_draws))
    for name, values in measures.items():
        # rank within each draw (column): 1 = the best school
        ascending = name == "variance"
        order = np.argsort(values if ascending else -values, axis=0, kind="stable")
        draw_ranks = np.empty_like(order)
        np.put_along_axis(draw_ranks, order, np.arange(1, n_groups + 1)[:, None], axis=0)
        lo, med, hi = np.quantile(draw_ranks, probs, axis=1, method="inverted_cdf")
        cols[f"{name}_rank"] = published[f"{name}_rank"].to_numpy()
        cols[f"{name}_rank_median"] = med.astype(int)
        cols[f"{name}_rank_lower"] = lo.astype(int)
        cols[f"{name}_rank_upper"] = hi.astype(int)
    out = pd.DataFrame(cols, index=pd.Index(labels, name=groups))
    out.attrs.update(alpha=alpha, n_draws=n_draws)
    if "variance" in measures and scale_at_boundary(res.fit_state):
        out.attrs["note"] = BOUNDARY_NOTE
    return out


def comparative_z(alpha: float = 0.05) -> float:
    """The half-width, in SEs, of intervals for pairwise comparisons: two
    schools with equal SEs differ at level ``alpha`` when intervals of
    z_{1-alpha/2} / sqrt(2) SEs (1.39 at 5%) do not overlap."""
    _check_alpha(alpha)
    return float(stats.norm.ppf(1 - alpha / 2) / np.sqrt(2.0))


def comparative_intervals(res: MELSResults, alpha: float = 0.05, ws_reference=None) -> pd.DataFrame:
    """Intervals for comparing schools with each other (Goldstein & Healy, 1995).

    ``mean_lower``/``mean_upper``: posterior mean of the location effect +-
    :func:`comparative_z` posterior SDs; ``variance_lower``/``variance_upper``:
    exp(wbar'tau + omega) at omega's posterior mean +- the same number of its
    posterior SDs (the log-variance scale, where the posterior is near
    normal).  Non-overlapping intervals mark pairs that differ at about the
    ``alpha`` level; the usual intervals (``school_effects``) answer whether a
    school differs from the average.
    """
    state = _check_model(res)
    z = comparative_z(alpha)
    post = _posterior_mixwild(state, alpha, 0.0)
    s_u = post["s_mean"]
    mean, sd = s_u * post["theta1_mean"], s_u * post["theta1_sd"]
    cols = {
        "mean": mean,
        "mean_sd": sd,
        "mean_lower": mean - z * sd,
        "mean_upper": mean + z * sd,
    }
    if state.layout.s:
        shift = _variance_shift(res, ws_reference)
        om, om_sd = post["omega_mean"], post["omega_sd"]
        cols.update(
            log_variance=shift + om,
            log_variance_sd=om_sd,
            variance_lower=np.exp(shift + om - z * om_sd),
            variance_upper=np.exp(shift + om + z * om_sd),
        )
    d = state.design
    out = pd.DataFrame(cols, index=pd.Index(d.group_labels, name=d.groups))
    out.attrs.update(alpha=alpha, z=z, kind="comparative (Goldstein & Healy)")
    if state.layout.s and scale_at_boundary(res.fit_state):
        out.attrs["note"] = BOUNDARY_NOTE
    return out


def variance_flags(res: MELSResults, fdr: float = 0.05) -> pd.DataFrame:
    """Schools whose variance is unusually high or low, with the false
    discovery rate controlled at ``fdr``.

    Each school's posterior tail probabilities p_high = P(omega_j > 0 | y)
    and p_low = P(omega_j < 0 | y) (omega_j > 0: a variance above the
    reference exp(wbar'tau)) give p_j = 2 min(p_high, p_low); the
    Benjamini-Hochberg procedure at ``fdr`` flags schools (``flag``:
    ``"high"``, ``"low"`` or ``""``).  ``attrs``: the number flagged, the
    number of false flags BH allows in expectation (``fdr`` times it) and
    the number an unadjusted test at the same level would flag by chance
    alone if no school differed (``fdr`` times the schools).  At the boundary
    sigma_omega = 0 no school is flagged (``attrs["note"]``).
    """
    from statsmodels.stats.multitest import multipletests

    if not 0 < fdr < 1:
        raise MELSInputError(f"fdr must be in (0, 1), got {fdr!r}")
    state = _check_model(res)
    if not state.layout.s:
        raise MELSInputError("variance flags need a model with a random scale")
    grid = posterior_grid(state)
    omega = grid.v[..., 0]
    p_high = np.clip(np.sum(grid.w * (omega > 0), axis=1), 0.0, 1.0)
    p_low = 1.0 - p_high
    p = np.clip(2.0 * np.minimum(p_high, p_low), 0.0, 1.0)
    boundary = scale_at_boundary(res.fit_state)
    if boundary:
        reject = np.zeros(p.size, dtype=bool)
    else:
        reject = multipletests(p, alpha=fdr, method="fdr_bh")[0]
    flag = np.where(reject, np.where(p_high > p_low, "high", "low"), "")
    d = state.design
    out = pd.DataFrame(
        {"p_high": p_high, "p_low": p_low, "p_value": p, "flag": flag},
        index=pd.Index(d.group_labels, name=d.groups),
    )
    n_flagged = int(reject.sum())
    out.attrs.update(
        fdr=fdr,
        n_flagged=n_flagged,
        expected_false_flags=fdr * n_flagged,
        unadjusted_by_chance=fdr * p.size,
    )
    if boundary:
        out.attrs["note"] = BOUNDARY_NOTE
    return out
