"""Random effects and school measures per group: the tables users read.

The posteriors come from :mod:`melsml.posterior`; everything is computed from
the results' frozen :class:`~melsml.likelihood.FitState`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .exceptions import MELSInputError
from .measures import (
    BOUNDARY_NOTE,
    RANK_ORDER,
    SCALE_BOUNDARY,
    grid_quantiles,
    measure_columns,
    mixture_quantiles,
)
from .posterior import (
    PosteriorGrid,
    grid_2d,
    moments,
    posterior_grid,
    variance_quantity,
)

if TYPE_CHECKING:  # pragma: no cover
    from .likelihood import FitState
    from .results import MELSResults


def _frame(state: FitState, cols: dict) -> pd.DataFrame:
    d = state.design
    return pd.DataFrame(cols, index=pd.Index(d.group_labels, name=d.groups))


# ------------------------------------------------------------------ random effects
def random_effects(res: MELSResults) -> pd.DataFrame:
    """Empirical Bayes posterior summaries of each group's random effects.

    With a random intercept and at most a random scale intercept (MixWILD's
    models) the columns are ``n`` (group size), ``u_mean``, ``u_sd`` (the
    location effect sigma_u theta1, with sigma_u averaged over the group's
    units), ``omega_mean``, ``omega_sd`` (the random scale effect),
    ``corr_u_omega`` (posterior correlation) and the standardised effects
    ``theta1_mean``, ``theta1_sd``, ``theta2_mean``, ``theta2_sd``,
    ``cov_theta12`` as in MixWILD's EB file (theta2 only for the linear or no
    association).

    Otherwise, for every random effect: ``u_mean[term]`` and ``u_sd[term]``
    for the location effects, ``omega_mean`` and ``omega_sd`` for the random
    scale intercept, ``omega_mean[term]`` and ``omega_sd[term]`` for each
    random scale slope, and ``cov[a,b]`` for each pair (labels: location
    terms, ``omega``, ``omega:term``).  Indexed by group identifier.
    """
    state = res.fit_state
    if state.layout.mixwild_view:
        return _random_effects_mixwild(state)
    st = state.layout.structure
    grid = posterior_grid(state)
    mean, cov = moments(grid)
    cols: dict[str, np.ndarray] = {"n": grid.n.astype(int)}
    sd = np.sqrt(np.maximum(np.einsum("jaa->ja", cov), 0.0))
    for a, t in enumerate(st.location):
        cols[f"u_mean[{t}]"] = mean[:, a]
        cols[f"u_sd[{t}]"] = sd[:, a]
    for k, t in enumerate(st.scale):
        key = "" if t == "Intercept" else f"[{t}]"
        cols[f"omega_mean{key}"] = mean[:, st.q + k]
        cols[f"omega_sd{key}"] = sd[:, st.q + k]
    labels = st.labels
    for a in range(st.dim):
        for b in range(a):
            cols[f"cov[{labels[b]},{labels[a]}]"] = cov[:, a, b]
    return _frame(state, cols)


def _random_effects_mixwild(state: FitState) -> pd.DataFrame:
    post = _posterior_mixwild(state, 0.05, 0.0)
    sd1, sdo = post["theta1_sd"], post["omega_sd"]
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.where((sd1 > 0) & (sdo > 0), post["cov_theta1_omega"] / (sd1 * sdo), np.nan)
    cols = {
        "n": post["n"].astype(int),
        "u_mean": post["s_mean"] * post["theta1_mean"],
        "u_sd": post["s_mean"] * sd1,
        "omega_mean": post["omega_mean"],
        "omega_sd": sdo,
        "corr_u_omega": corr,
        "theta1_mean": post["theta1_mean"],
        "theta1_sd": sd1,
    }
    for k in ("theta2_mean", "theta2_sd", "cov_theta12"):
        if k in post:
            cols[k] = post[k]
    return _frame(state, cols)


def _omega_summaries(w, om, ws_shift: float, probs) -> dict[str, np.ndarray]:
    """Posterior mean and SD of omega, and mean, SD and equal-tailed interval of the
    school variance exp(ws_shift + omega), from grid weights ``w`` at ``om``."""
    mo = np.sum(w * om, axis=1)
    vo = np.sum(w * om**2, axis=1) - mo**2
    olo, ohi = grid_quantiles(om, w, probs)
    var = np.exp(ws_shift + om)
    vm = np.sum(w * var, axis=1)
    return dict(
        omega_mean=mo,
        omega_sd=np.sqrt(np.maximum(vo, 0)),
        var_mean=vm,
        var_sd=np.sqrt(np.maximum(np.sum(w * var**2, axis=1) - vm**2, 0)),
        var_lower=np.exp(ws_shift + olo),
        var_upper=np.exp(ws_shift + ohi),
    )


def group_sd_u(state: FitState) -> np.ndarray:
    """sigma_u of each group: exp(x_bs' alpha / 2) averaged over its units."""
    d = state.design
    s_u = np.exp(0.5 * d.x_bs @ state.params()["alpha"])
    return np.add.reduceat(s_u, d.group_ptr[:-1]) / d.group_sizes


def _posterior_mixwild(state: FitState, alpha: float, ws_shift: float) -> dict:
    """Posterior summaries of theta1, omega and exp(ws_shift + omega) per group
    (random intercept with a BS function, at most a random scale intercept)."""
    p = state.params()
    probs = (alpha / 2, 1 - alpha / 2)
    tl, tq, sw = p["tau_l"], p["tau_q"], abs(p["sigma_omega"])
    if tq != 0 or state.design.interval_outcome:
        out = _posterior_2d(state, probs, ws_shift)
        grid = None
    else:
        grid = posterior_grid(state)
        w = grid.w
        th, P = grid.mu[..., 0], grid.pinv[..., 0, 0]
        om = grid.v[..., 0] if state.layout.s else np.zeros_like(th)
        m1 = np.sum(w * th, axis=1)
        sd1 = np.sqrt(np.maximum(np.sum(w * (th**2 + P), axis=1) - m1**2, 0))
        lo1, hi1 = mixture_quantiles(
            w, th, np.sqrt(P + 1e-300), probs, m1 - 10 * sd1 - 1e-8, m1 + 10 * sd1 + 1e-8
        )
        summ = _omega_summaries(w, om, ws_shift, probs)
        out = dict(
            theta1_mean=m1,
            theta1_sd=sd1,
            theta1_lower=lo1,
            theta1_upper=hi1,
            cov_theta1_omega=np.sum(w * om * th, axis=1) - m1 * summ["omega_mean"],
            **summ,
        )
    out["s_mean"] = group_sd_u(state)
    out["n"] = state.design.group_sizes.astype(float)
    if sw > 0 and state.layout.s and tq == 0:
        # MixWILD's standardised theta2 = (omega - tau_l theta1) / sigma_omega
        m1, v1 = out["theta1_mean"], out["theta1_sd"] ** 2
        c = out["cov_theta1_omega"]
        out["theta2_mean"] = (out["omega_mean"] - tl * m1) / sw
        v2 = (out["omega_sd"] ** 2 - 2 * tl * c + tl**2 * v1) / sw**2
        out["theta2_sd"] = np.sqrt(np.maximum(v2, 0))
        out["cov_theta12"] = (c - tl * v1) / sw
    return out


def _posterior_2d(state: FitState, probs, ws_shift: float) -> dict[str, np.ndarray]:
    """Posterior summaries of theta1 and omega for the quadratic association and
    censored outcomes, on
    :func:`melsml.posterior.grid_2d`."""
    g = grid_2d(state)
    w, u, om = g["w"], g["u"], g["om"]
    m1 = np.sum(w * u, axis=1)
    v1 = np.sum(w * u * u, axis=1) - m1**2
    lo1, hi1 = grid_quantiles(g["u1"], g["w1"], probs)
    summ = _omega_summaries(w, om, ws_shift, probs)
    return dict(
        theta1_mean=m1,
        theta1_sd=np.sqrt(np.maximum(v1, 0)),
        theta1_lower=lo1,
        theta1_upper=hi1,
        cov_theta1_omega=np.sum(w * u * om, axis=1) - m1 * summ["omega_mean"],
        **summ,
    )


# ------------------------------------------------------------------ school measures
def _reference_rows(res: MELSResults, ws_reference, at_values: dict) -> tuple:
    """WS and scale design rows at the reference covariates (sample means) with
    the terms in ``ws_reference`` and ``at_values`` replaced."""
    d = res.model.design
    ws_names = d.ws_names
    scale_names = d.scale_names
    wbar = res.reference_values("ws").copy()
    hbar = res.reference_values("scale")
    if ws_reference is not None:
        ref = dict(ws_reference)
        unknown = [k for k in ref if k not in ws_names]
        if unknown:
            raise MELSInputError(
                f"ws_reference names unknown WS term(s) {', '.join(map(str, unknown))}; "
                f"WS terms are: {', '.join(ws_names)}"
            )
        for k, val in ref.items():
            wbar[ws_names.index(k)] = float(val)
            if k in scale_names:  # the same covariate's random scale slope
                hbar[scale_names.index(k)] = float(val)
    for k, val in at_values.items():
        if k in ws_names:
            wbar[ws_names.index(k)] = float(val)
        if k in scale_names:
            hbar[scale_names.index(k)] = float(val)
    return wbar, hbar


def _check_at(res: MELSResults, at) -> dict[str, list[float]]:
    if at is None:
        return {}
    d = res.model.design
    known = set(d.ws_names) | set(d.scale_names)
    try:
        items = {str(k): [float(x) for x in np.atleast_1d(v)] for k, v in dict(at).items()}
    except (TypeError, ValueError) as exc:
        raise MELSInputError(
            f"at must map term names to numbers or lists of numbers, got {at!r}"
        ) from exc
    for k in items:
        if k not in known or k == "Intercept":
            raise MELSInputError(
                f"at names {k!r}, which is not a term of the WS function or of the random "
                f"scale effects; terms are: {', '.join(sorted(known - {'Intercept'}))}"
            )
    return items


def school_effects(
    res: MELSResults, alpha: float = 0.05, ws_reference=None, reference_var=None, at=None
) -> pd.DataFrame:
    """School means and variances of student adjusted achievement.

    Parameters
    ----------
    res : MELSResults
    alpha : float
        1 - coverage of the equal-tailed posterior intervals (default 95%).
    ws_reference : mapping, optional
        Values of WS design terms (by term name) at which the school variance
        exp(wbar'tau + hbar'v_j) is evaluated (a random scale slope on the
        same term takes the same value); terms not given take their sample
        means (the default for all).
    reference_var : float or (k, k) array, optional
        Random-slope models only: the variance (or covariance matrix) of the
        random-slope covariates in the reference distribution of students;
        the school variance is then ``u_s' V u_s + exp(wbar'tau + hbar'v_j)``.
        Default: their sample (co)variance over all students.
    at : mapping, optional
        ``{"term": [values]}``: also the school variance of students whose
        ``term`` (a WS or random-scale term, e.g. prior attainment with a
        random scale slope) takes each value, other terms at the reference;
        one group of columns ``variance[term=value]`` per value.

    Returns
    -------
    DataFrame indexed by school, with columns ``n``; ``mean``, ``mean_sd``,
    ``mean_lower``, ``mean_upper``, ``mean_rank``, ``mean_separated``;
    ``variance``, ``variance_sd``, ``variance_lower``, ``variance_upper``,
    ``variance_rank``, ``variance_separated``; and the ``at`` columns.
    Rank 1 is the best school: the highest mean and the lowest variance
    (``attrs["rank_order"]`` says so).

    Notes
    -----
    ``mean`` is the posterior mean of the school effect (with random slopes,
    averaged over the school's own students); ``variance`` the posterior
    mean (not the plug-in) of the school variance.  A school is *separated* when its
    interval excludes the overall average: 0 for the mean and the variance
    of a school with v_j = 0 for the variance; both are in
    ``DataFrame.attrs``.
    """
    if not 0 < alpha < 1:
        raise MELSInputError(f"alpha must be in (0, 1), got {alpha!r}")
    state = res.fit_state
    at_items = _check_at(res, at)
    tau = state.params()["tau"]
    wbar, hbar = _reference_rows(res, ws_reference, {})
    shift = float(wbar @ tau)
    probs = (alpha / 2, 1 - alpha / 2)
    st = state.layout.structure
    slopes = [a for a, t in enumerate(st.location) if t != "Intercept"]
    if reference_var is not None and not slopes:
        raise MELSInputError("reference_var applies to random-slope models (re_formula)")
    interval = state.design.interval_outcome
    if state.layout.mixwild_view and (st.association == "quadratic" or (interval and not at_items)):
        if at_items:
            raise MELSInputError("at is not available with the quadratic association")
        return _school_effects_2d(state, alpha, shift)
    grid = posterior_grid(state)
    sigma_ref = _reference_var(res, slopes, reference_var)
    cols: dict[str, np.ndarray] = {"n": grid.n.astype(int)}
    cols.update(_school_means(state, grid, probs))

    def variance_columns(name, wrow, hrow):
        sh = float(wrow @ tau)
        e = np.exp(sh + grid.v @ hrow) if st.s else np.full(grid.w.shape, np.exp(sh))
        vmean, vsd, (vlo, vhi) = variance_quantity(grid, e, slopes, sigma_ref, probs)
        ref = float(np.exp(sh))
        out = measure_columns(name, vmean, vsd, vlo, vhi, ref)
        if st.s == 0:
            out[f"{name}_separated"] = np.zeros(len(vmean), dtype=bool)
        return out, ref

    main, ref_var = variance_columns("variance", wbar, hbar)
    cols.update(main)
    at_refs = {}
    for term, values in at_items.items():
        for val in values:
            wrow, hrow = _reference_rows(res, ws_reference, {term: val})
            name = f"variance[{term}={val:g}]"
            extra, at_refs[name] = variance_columns(name, wrow, hrow)
            cols.update(extra)
    out = _frame(state, cols)
    out.attrs.update(
        mean_reference=0.0, variance_reference=ref_var, alpha=alpha, rank_order=RANK_ORDER
    )
    _boundary_note(state, out)
    if slopes:
        out.attrs["reference_var"] = sigma_ref.tolist()
    if at_refs:
        out.attrs["at_references"] = at_refs
    return out


def _reference_var(res: MELSResults, slopes: list[int], reference_var) -> np.ndarray:
    if not slopes:
        return np.zeros((0, 0))
    terms = res.model.structure.location
    if reference_var is None:
        return res.reference_cov(slopes)
    sigma_ref = np.atleast_2d(np.asarray(reference_var, dtype=float))
    if sigma_ref.shape != (len(slopes), len(slopes)) or not np.isfinite(sigma_ref).all():
        raise MELSInputError(
            f"reference_var must be a finite {len(slopes)} x {len(slopes)} (co)variance "
            f"of the random-slope covariates ({', '.join(terms[a] for a in slopes)}), "
            f"got {reference_var!r}"
        )
    if np.any(np.linalg.eigvalsh(sigma_ref) < 0):
        raise MELSInputError("reference_var must be positive semi-definite")
    return sigma_ref


def _school_means(state: FitState, grid: PosteriorGrid, probs) -> dict:
    """The school mean: z-bar' u_j over the school's own students (with a BS
    function, sigma_u-bar theta1_j), with a normal-mixture interval."""
    z = grid.zbar
    means = np.einsum("ja,jga->jg", z, grid.mu)
    sds = np.sqrt(np.maximum(np.einsum("ja,jgab,jb->jg", z, grid.pinv, z), 0) + 1e-300)
    w = grid.w
    mean = np.sum(w * means, axis=1)
    mean_sd = np.sqrt(np.maximum(np.sum(w * (sds**2 + means**2), axis=1) - mean**2, 0))
    lo, hi = mixture_quantiles(
        w, means, sds, probs, mean - 10 * mean_sd - 1e-8, mean + 10 * mean_sd + 1e-8
    )
    return measure_columns("mean", mean, mean_sd, lo, hi, 0.0)


def _school_effects_2d(state: FitState, alpha: float, shift: float) -> pd.DataFrame:
    post = _posterior_mixwild(state, alpha, shift)
    s = post["s_mean"]
    ref_var = float(np.exp(shift))
    out = _frame(
        state,
        {
            "n": post["n"].astype(int),
            **measure_columns(
                "mean",
                s * post["theta1_mean"],
                s * post["theta1_sd"],
                s * post["theta1_lower"],
                s * post["theta1_upper"],
                0.0,
            ),
            **measure_columns(
                "variance",
                post["var_mean"],
                post["var_sd"],
                post["var_lower"],
                post["var_upper"],
                ref_var,
            ),
        },
    )
    out.attrs.update(mean_reference=0.0, variance_reference=ref_var, alpha=alpha)
    _boundary_note(state, out)
    return out


def scale_at_boundary(state: FitState) -> bool:
    """A random scale intercept (MixWILD's models) whose SD is at its boundary 0."""
    return bool(
        state.layout.mixwild_view
        and state.layout.s
        and abs(state.params()["sigma_omega"]) < SCALE_BOUNDARY
    )


def _boundary_note(state: FitState, table: pd.DataFrame) -> None:
    """Say in ``table.attrs`` when the random scale SD is at its boundary 0."""
    if scale_at_boundary(state):
        table.attrs["variance_note"] = BOUNDARY_NOTE
