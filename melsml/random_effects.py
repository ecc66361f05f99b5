"""Empirical Bayes predictions of the groups' random effects (MODELS.md 4.4).

At the estimates, the posterior of each group's effects is computed with the
same integrand as the likelihood:

* exact-location path and closed form: the posterior of omega_j is tabulated
  on a fine grid (241 points over +-9 posterior SDs around its mode), and
  theta1_j given omega_j is normal, so the posterior of theta1_j is a normal
  mixture.  Posterior means, SDs and equal-tailed intervals (also of
  nonlinear functions such as exp(wbar'tau + omega_j)) are then exact to grid
  accuracy.
* quadratic association: the posterior of (theta1, theta2) is tabulated on
  the adaptive quadrature's rotated grid (57 x 57 points over +-7 posterior
  SDs around the mode); means, SDs, equal-tailed intervals and E exp(.) are
  taken from it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import stats
from scipy.special import ndtr

from ._quad_ref import h1
from .exceptions import MELSInputError

if TYPE_CHECKING:  # pragma: no cover
    from .results import MELSResults

MODE_CLOSED_FORM, MODE_AGHQ = "closed form", "aghq"
_GRID = np.linspace(-9.0, 9.0, 241)

#: the columns each school measure contributes to a school table
MEASURE_SUFFIXES = ("", "_sd", "_lower", "_upper", "_rank", "_separated")


def measure_columns(name: str, est, sd, lower, upper, reference: float) -> dict:
    """The columns of one school measure: estimate, SD, interval, ascending rank
    (1 = lowest) and whether the interval excludes ``reference``."""
    est, lower, upper = (np.asarray(v, dtype=float) for v in (est, lower, upper))
    return {
        name: est,
        f"{name}_sd": np.asarray(sd, dtype=float),
        f"{name}_lower": lower,
        f"{name}_upper": upper,
        f"{name}_rank": pd.Series(est).rank(method="min").astype(int).to_numpy(),
        f"{name}_separated": (lower > reference) | (upper < reference),
    }


def _group_stats(res: MELSResults) -> dict[str, np.ndarray]:
    d = res.model.design
    p = res.model.layout.unpack(res.fit_state.theta)
    r0 = d.y - d.x_mean @ p["beta"]
    eta_ws = d.x_ws @ p["tau"]
    s = np.exp(0.5 * d.x_bs @ p["alpha"])
    inv_d = np.exp(-eta_ws)
    starts = d.group_ptr[:-1]

    def red(v):
        return np.add.reduceat(v, starts)

    lam, b0, A = red(s * s * inv_d), red(s * r0 * inv_d), red(r0 * r0 * inv_d)
    n = d.group_sizes.astype(float)
    return dict(
        n=n,
        sumlogd=red(eta_ws),
        lam=lam,
        b0=b0,
        A=A,
        W=np.maximum(A - b0 * b0 / lam, 0.0),
        s_mean=red(s) / n,
    )


def _mixture_quantiles(weights, means, sds, probs, lo, hi, n_iter=60):
    """Quantiles of per-row normal mixtures by vectorised bisection."""
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


def grid_weights(logd: np.ndarray) -> np.ndarray:
    """Normalised posterior weights (rows sum to 1) from log densities on a grid."""
    w = np.exp(logd - logd.max(axis=1, keepdims=True))
    return w / w.sum(axis=1, keepdims=True)


def _omega_summaries(w, om, ws_shift: float, probs) -> dict[str, np.ndarray]:
    """Posterior mean and SD of omega, and mean, SD and equal-tailed interval of the
    school variance exp(ws_shift + omega), from grid weights ``w`` at ``om``."""
    mo = np.sum(w * om, axis=1)
    vo = np.sum(w * om**2, axis=1) - mo**2
    order = np.argsort(om, axis=1)
    olo, ohi = _grid_quantiles(
        np.take_along_axis(om, order, axis=1), np.take_along_axis(w, order, axis=1), probs
    )
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


def _grid_quantiles(values, weights, probs):
    """Quantiles of per-row discrete distributions on increasing grids."""
    cum = np.cumsum(weights, axis=1) - 0.5 * weights
    return [np.array([np.interp(q, c, v) for c, v in zip(cum, values, strict=True)]) for q in probs]


def _posterior(res: MELSResults, alpha: float, ws_shift: float) -> dict[str, np.ndarray]:
    """Posterior summaries of theta1, omega, and exp(ws_shift + omega) per group."""
    st = _group_stats(res)
    p = res.model.layout.unpack(res.fit_state.theta)
    mode = res.model.plan.method
    probs = (alpha / 2, 1 - alpha / 2)
    tl, tq, sw = p["tau_l"], p["tau_q"], abs(p["sigma_omega"])
    out: dict[str, np.ndarray] = {}
    if mode == MODE_CLOSED_FORM:
        P = 1.0 / (1.0 + st["lam"])
        m = P * st["b0"]
        sd = np.sqrt(P)
        z = stats.norm.ppf(probs)
        out.update(
            theta1_mean=m, theta1_sd=sd, theta1_lower=m + z[0] * sd, theta1_upper=m + z[1] * sd
        )
        zero = np.zeros_like(m)
        out.update(omega_mean=zero, omega_sd=zero, cov_theta1_omega=zero)
        v = np.full_like(m, np.exp(ws_shift))
        out.update(var_mean=v, var_sd=zero, var_lower=v, var_upper=v)
    elif mode == MODE_AGHQ and tq != 0:
        out.update(_posterior_2d(res, st, probs, ws_shift))
    else:
        V = tl**2 + sw**2
        g, S = tl / V, sw**2 / V
        ev = res.fit_state.evaluation
        if mode == MODE_AGHQ:
            # fitted by the general path, same model: centre the omega grid on the
            # posterior mean and SD of omega
            center = ev.ex[:, [1]]
            scale = np.sqrt(np.maximum(ev.exx[:, 1, 1][:, None] - center**2, 1e-12))
        else:
            center, scale = np.sqrt(V) * ev.centers[:, [0]], np.sqrt(V) * ev.centers[:, [1]]
        om = center + scale * _GRID[None, :]
        stc = {k: v[:, None] for k, v in st.items()}
        w = grid_weights(h1(om, stc, V, g, S)[0])
        eo = np.exp(om)
        E = eo + S * stc["lam"]
        b = stc["b0"] - stc["lam"] * g * om
        th = g * om + S * b / E
        P = S * eo / E
        m1 = np.sum(w * th, axis=1)
        v1 = np.sum(w * (th**2 + P), axis=1) - m1**2
        sd1 = np.sqrt(np.maximum(v1, 0))
        lo1, hi1 = _mixture_quantiles(
            w, th, np.sqrt(P + 1e-300), probs, m1 - 10 * sd1 - 1e-8, m1 + 10 * sd1 + 1e-8
        )
        summ = _omega_summaries(w, om, ws_shift, probs)
        out.update(
            theta1_mean=m1,
            theta1_sd=sd1,
            theta1_lower=lo1,
            theta1_upper=hi1,
            cov_theta1_omega=np.sum(w * om * th, axis=1) - m1 * summ["omega_mean"],
            **summ,
        )
    out["s_mean"] = st["s_mean"]
    out["n"] = st["n"]
    if sw > 0 and mode != MODE_CLOSED_FORM and tq == 0:
        # MixWILD's standardised theta2 = (omega - tau_l theta1) / sigma_omega
        m1, v1 = out["theta1_mean"], out["theta1_sd"] ** 2
        c = out["cov_theta1_omega"]
        out["theta2_mean"] = (out["omega_mean"] - tl * m1) / sw
        v2 = (out["omega_sd"] ** 2 - 2 * tl * c + tl**2 * v1) / sw**2
        out["theta2_sd"] = np.sqrt(np.maximum(v2, 0))
        out["cov_theta12"] = (c - tl * v1) / sw
    return out


_GRID_2D = np.linspace(-7.0, 7.0, 57)


def _posterior_2d(res: MELSResults, st, probs, ws_shift: float) -> dict[str, np.ndarray]:
    """Posterior summaries on a rotated 2-D grid over (theta1, theta2): the general
    path (quadratic association).  The grid is the adaptive quadrature's placement
    (mode + L z) with z on +-7 in 57 steps per axis."""
    p = res.model.layout.unpack(res.fit_state.theta)
    tl, tq, sw = p["tau_l"], p["tau_q"], p["sigma_omega"]
    cen = res.fit_state.evaluation.centers
    z1, z2 = np.meshgrid(_GRID_2D, _GRID_2D, indexing="ij")
    z1, z2 = z1.ravel()[None, :], z2.ravel()[None, :]
    # centers: mode (theta1, theta2), then the 2 x 2 scale row by row
    u = cen[:, [0]] + cen[:, [2]] * z1
    v = cen[:, [1]] + cen[:, [4]] * z1 + cen[:, [5]] * z2
    om = tl * u + tq * u * u + sw * v
    lam, b0 = st["lam"][:, None], st["b0"][:, None]
    C = st["W"][:, None] + (b0 - lam * u) ** 2 / lam
    w = grid_weights(-0.5 * (st["n"][:, None] * om + np.exp(-om) * C) - 0.5 * (u * u + v * v))
    m1 = np.sum(w * u, axis=1)
    v1 = np.sum(w * u * u, axis=1) - m1**2
    # theta1 depends on z1 only: its marginal is the grid summed over z2
    n1 = len(_GRID_2D)
    w1 = w.reshape(len(w), n1, n1).sum(axis=2)
    u1 = u.reshape(len(u), n1, n1)[:, :, 0]
    lo1, hi1 = _grid_quantiles(u1, w1, probs)
    summ = _omega_summaries(w, om, ws_shift, probs)
    return dict(
        theta1_mean=m1,
        theta1_sd=np.sqrt(np.maximum(v1, 0)),
        theta1_lower=lo1,
        theta1_upper=hi1,
        cov_theta1_omega=np.sum(w * u * om, axis=1) - m1 * summ["omega_mean"],
        **summ,
    )


def random_effects(res: MELSResults) -> pd.DataFrame:
    """Empirical Bayes posterior summaries of each group's random effects.

    Columns: ``n`` (group size), ``u_mean``, ``u_sd`` (the location effect
    sigma_u theta1, with sigma_u averaged over the group's units),
    ``omega_mean``, ``omega_sd`` (the random scale effect), ``corr_u_omega``
    (posterior correlation) and the standardised effects
    ``theta1_mean``, ``theta1_sd``, ``theta2_mean``, ``theta2_sd``,
    ``cov_theta12`` as in MixWILD's EB file (theta2 only for the linear or no
    association).  Indexed by group identifier.
    """
    if not res.model.layout.mixwild_view:
        return _random_effects_multi(res)
    post = _posterior(res, 0.05, 0.0)
    d = res.model.design
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
    return pd.DataFrame(cols, index=pd.Index(d.group_labels, name=d.groups))


def _ws_shift(res: MELSResults, ws_reference) -> float:
    names = res.model.design.ws_names
    wbar = res.reference_values("ws").copy()
    if ws_reference is not None:
        ref = dict(ws_reference)
        unknown = [k for k in ref if k not in names]
        if unknown:
            raise MELSInputError(
                f"ws_reference names unknown WS term(s) {', '.join(map(str, unknown))}; "
                f"WS terms are: {', '.join(names)}"
            )
        for k, v in ref.items():
            wbar[names.index(k)] = float(v)
    tau = res.model.layout.unpack(res.fit_state.theta)["tau"]
    return float(wbar @ tau)


def school_effects(
    res: MELSResults, alpha: float = 0.05, ws_reference=None, reference_var=None
) -> pd.DataFrame:
    """School means and variances of student adjusted achievement.

    Parameters
    ----------
    res : MELSResults
    alpha : float
        1 - coverage of the equal-tailed posterior intervals (default 95%).
    ws_reference : mapping, optional
        Values of WS design terms (by term name) at which the school variance
        exp(wbar'tau + omega_j) is evaluated; terms not given take their sample
        means (the default for all).
    reference_var : float or (s, s) array, optional
        Random-slope models only: the variance (or covariance matrix) of the
        random-slope covariates in the reference distribution of students;
        the school variance is then ``u_s' V u_s + exp(wbar'tau + omega_j)``.
        Default: their sample (co)variance over all students.

    Returns
    -------
    DataFrame indexed by school, with columns ``n``; ``mean``, ``mean_sd``,
    ``mean_lower``, ``mean_upper``, ``mean_rank``, ``mean_separated``;
    ``variance``, ``variance_sd``, ``variance_lower``, ``variance_upper``,
    ``variance_rank``, ``variance_separated``.

    Notes
    -----
    ``mean`` is the posterior mean of the school effect u_j; ``variance`` the
    posterior mean (not the plug-in) of exp(wbar'tau + omega_j).  Ranks are
    ascending (1 = lowest), as in a caterpillar plot.  A school is
    *separated* when its interval excludes the overall average: 0 for the
    mean and exp(wbar'tau) (the variance of a school with omega_j = 0) for the
    variance; both are stored in ``DataFrame.attrs``.
    """
    if not 0 < alpha < 1:
        raise MELSInputError(f"alpha must be in (0, 1), got {alpha!r}")
    shift = _ws_shift(res, ws_reference)
    if not res.model.layout.mixwild_view:
        return _school_effects_multi(res, alpha, shift, reference_var)
    if reference_var is not None:
        raise MELSInputError("reference_var applies to random-slope models (re_formula)")
    post = _posterior(res, alpha, shift)
    s = post["s_mean"]
    mean = s * post["theta1_mean"]
    lo, hi = s * post["theta1_lower"], s * post["theta1_upper"]
    ref_var = float(np.exp(shift))
    out = _effects_frame(
        res,
        {
            "n": post["n"].astype(int),
            **measure_columns("mean", mean, s * post["theta1_sd"], lo, hi, 0.0),
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
    if res.model.plan.method == MODE_CLOSED_FORM:
        out["variance_separated"] = False
    out.attrs.update(mean_reference=0.0, variance_reference=ref_var, alpha=alpha)
    return out


def _effects_frame(res: MELSResults, cols: dict) -> pd.DataFrame:
    d = res.model.design
    return pd.DataFrame(cols, index=pd.Index(d.group_labels, name=d.groups))


def _random_effects_multi(res: MELSResults) -> pd.DataFrame:
    """Posterior means, SDs and covariances of (u, omega) with random slopes."""
    from .posterior_multi import moments, posterior_grid

    grid = posterior_grid(res)
    mom = moments(grid)
    terms = res.model.structure.location
    cols: dict[str, np.ndarray] = {"n": grid["n"].astype(int)}
    for a, t in enumerate(terms):
        cols[f"u_mean[{t}]"] = mom["mu"][:, a]
        cols[f"u_sd[{t}]"] = np.sqrt(np.maximum(mom["cov_u"][:, a, a], 0))
    scale = res.model.options.random_scale
    if scale:
        cols["omega_mean"] = mom["omega_mean"]
        cols["omega_sd"] = np.sqrt(mom["omega_var"])
    for a in range(len(terms)):
        for b in range(a):
            cols[f"cov[{terms[b]},{terms[a]}]"] = mom["cov_u"][:, a, b]
        if scale:
            cols[f"cov[{terms[a]},omega]"] = mom["cov_uo"][:, a]
    return _effects_frame(res, cols)


def _school_effects_multi(
    res: MELSResults, alpha: float, shift: float, reference_var
) -> pd.DataFrame:
    """School means over their own students and variances for a reference
    distribution of students, with random slopes."""
    from .posterior_multi import posterior_grid, variance_quantity

    grid = posterior_grid(res)
    terms = res.model.structure.location
    slopes = [a for a, t in enumerate(terms) if t != "Intercept"]
    probs = (alpha / 2, 1 - alpha / 2)
    z = grid["zbar"]
    means = np.einsum("ja,jga->jg", z, grid["m"])
    sds = np.sqrt(np.maximum(np.einsum("ja,jgab,jb->jg", z, grid["Pt"], z), 0) + 1e-300)
    w = grid["w"]
    mean = np.sum(w * means, axis=1)
    mean_sd = np.sqrt(np.maximum(np.sum(w * (sds**2 + means**2), axis=1) - mean**2, 0))
    lo, hi = _mixture_quantiles(
        w, means, sds, probs, mean - 10 * mean_sd - 1e-8, mean + 10 * mean_sd + 1e-8
    )
    x_s = res.model.design.x_re[:, slopes]
    if reference_var is None:
        sigma_ref = np.atleast_2d(np.cov(x_s, rowvar=False)) if slopes else np.zeros((0, 0))
    else:
        sigma_ref = np.atleast_2d(np.asarray(reference_var, dtype=float))
        if sigma_ref.shape != (len(slopes), len(slopes)) or not np.isfinite(sigma_ref).all():
            raise MELSInputError(
                f"reference_var must be a finite {len(slopes)} x {len(slopes)} (co)variance "
                f"of the random-slope covariates ({', '.join(terms[a] for a in slopes)}), "
                f"got {reference_var!r}"
            )
        if np.any(np.linalg.eigvalsh(sigma_ref) < 0):
            raise MELSInputError("reference_var must be positive semi-definite")
    vmean, vsd, (vlo, vhi) = variance_quantity(grid, slopes, sigma_ref, shift, probs)
    ref_var = float(np.exp(shift))
    out = _effects_frame(
        res,
        {
            "n": grid["n"].astype(int),
            **measure_columns("mean", mean, mean_sd, lo, hi, 0.0),
            **measure_columns("variance", vmean, vsd, vlo, vhi, ref_var),
        },
    )
    out.attrs.update(
        mean_reference=0.0,
        variance_reference=ref_var,
        alpha=alpha,
        reference_var=sigma_ref.tolist(),
    )
    return out
