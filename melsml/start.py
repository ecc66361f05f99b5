"""Cheap moment-based starting values.

OLS for beta; the variance of group-mean residuals for alpha; a regression of
log squared within-group residuals for tau; the spread of log group variances
(and their covariance with group means) for the random scale.
"""

from __future__ import annotations

import numpy as np

from .formula import DesignMatrices
from .params import ParamLayout

#: E[log chi^2_1]: the bias of log squared residuals as estimates of log variance
_LOG_CHI2_BIAS = -1.2703628454614782


def _ols(x: np.ndarray, y: np.ndarray | None = None, *, constant: float = 0.0) -> np.ndarray:
    """Least squares of ``y`` (or of ``constant`` in every row) on ``x`` by the
    normal equations (the designs are standardised and of full rank), falling
    back to an SVD solve."""
    xty = x.sum(axis=0) * constant if y is None else x.T @ y
    try:
        return np.linalg.solve(x.T @ x, xty)
    except np.linalg.LinAlgError:
        target = np.full(x.shape[0], constant) if y is None else y
        return np.linalg.lstsq(x, target, rcond=None)[0]


def start_values(design: DesignMatrices, layout: ParamLayout, link: str = "probit") -> np.ndarray:
    """Moment-based starting values in the layout's order (``link``: ordinal outcomes)."""
    if design.categories is not None:
        return _ordinal_start(design, layout, link)
    d = design
    counts = d.group_sizes
    beta = _ols(d.x_mean, d.y)
    resid = d.y - d.x_mean @ beta
    sizes = counts.astype(float)
    gmean = np.add.reduceat(resid, d.group_ptr[:-1]) / sizes
    var_resid = float(np.var(resid))
    within = resid  # in place: the residuals are not needed again
    within -= np.repeat(gmean, counts)
    n_multi = int(counts[counts > 1].sum())
    dof = max(d.n_obs - d.n_groups, 1)
    sq = within * within
    s2_within = float(sq.sum() / dof) if n_multi else var_resid
    s2_between = float(np.var(gmean) - np.mean(s2_within / sizes))
    s2_between = max(s2_between, 0.05 * var_resid, 1e-8)

    alpha = _ols(d.x_bs, constant=np.log(s2_between))
    if n_multi > d.x_ws.shape[1]:
        # log of each squared within-group residual, scaled by n/(n-1); rows of
        # groups of one carry no within-group information
        with np.errstate(divide="ignore", invalid="ignore"):
            target = sq * np.repeat(sizes / (sizes - 1.0), counts)
        target += 1e-12 * s2_within
        np.log(target, out=target)
        target -= _LOG_CHI2_BIAS
        if n_multi < d.n_obs:
            multi = np.repeat(counts > 1, counts)
            tau = _ols(d.x_ws[multi], target[multi])
        else:
            tau = _ols(d.x_ws, target)
    else:
        target = None
        tau = _ols(d.x_ws, constant=np.log(s2_within))

    if not layout.structure.bs:
        alpha = np.zeros(0)
    theta = np.concatenate([beta, alpha, tau, np.zeros(len(layout.random))])
    var_omega, tau_l = 0.1, 0.0
    big = sizes > 2
    if big.sum() >= 3:
        scaled_w = np.matmul(d.x_ws, tau, out=target)
        np.negative(scaled_w, out=scaled_w)
        np.exp(scaled_w, out=scaled_w)  # in place: the target is not needed again
        scaled_w *= sq
        s2_g = np.add.reduceat(scaled_w, d.group_ptr[:-1])[big] / (sizes[big] - 1.0)
        log_s2 = np.log(s2_g + 1e-12)
        var_omega = float(np.var(log_s2) - np.mean(2.0 / (sizes[big] - 1.0)))
        var_omega = max(var_omega, 0.01)
        cov = float(np.cov(gmean[big], log_s2)[0, 1])
        bound = 0.7 * np.sqrt(var_omega)
        tau_l = float(np.clip(cov / np.sqrt(s2_between), -bound, bound))
    if layout.structure.association == "none":
        tau_l = 0.0
    sigma_omega = float(np.sqrt(max(var_omega - tau_l**2, 0.01)))
    theta[layout.slices["random"]] = _random_start(
        d, layout, np.sqrt(s2_between), tau_l, sigma_omega
    )
    return theta


def _random_start(
    design: DesignMatrices, layout: ParamLayout, sd_between: float, tau_l: float, sigma_omega: float
) -> list[float]:
    """Diagonal start for the Cholesky factor of cov(u, v).

    The random intercept takes the between-group SD; each random location
    slope a third of it per unit SD of its covariate; the random scale
    intercept loads on the location intercept by tau_l and has its own SD
    sigma_omega; each random scale slope a third of sigma_omega per unit SD of
    its covariate.
    """
    st = layout.structure
    q = st.q
    # the SDs of slope columns only (intercepts need none)
    slopes = any(t != "Intercept" for t in (*st.location, *st.scale))
    sd_z = design.x_re.std(axis=0) if slopes else np.ones(q)
    sd_h = design.x_scale.std(axis=0) if slopes else np.ones(st.s)
    values = []
    for t in layout.targets:
        if t == "tau_q":
            values.append(0.0)
            continue
        i, j = t
        if i >= q:
            term = st.scale[i - q]
            if i == j:
                values.append(
                    sigma_omega
                    if term == "Intercept"
                    else sigma_omega / (3.0 * max(float(sd_h[i - q]), 1e-8))
                )
            elif j < q and term == "Intercept" and st.location[j] == "Intercept":
                values.append(tau_l)
            else:
                values.append(0.0)
        elif i == j:
            term = st.location[i]
            values.append(
                sd_between
                if term == "Intercept"
                else sd_between / (3.0 * max(float(sd_z[i]), 1e-8))
            )
        else:
            values.append(0.0)
    return values


def _ordinal_start(design: DesignMatrices, layout: ParamLayout, link: str) -> np.ndarray:
    """Ordinal outcomes: thresholds at the quantiles of the cumulative proportions;
    beta by least squares on each category's mid-quantile score; a random
    intercept of SD 0.5 and a random scale of SD 0.3 on the latent scale."""
    from .ordinal import start_thresholds, thresholds

    codes = design.y.astype(int)
    n_cat = design.categories.size
    raw = start_thresholds(codes, n_cat, link)
    gamma = np.concatenate([[-3.0], thresholds(raw), [3.0]])
    mid = 0.5 * (gamma[:-1] + gamma[1:])
    latent = mid[codes]
    x = design.x_mean
    beta = _ols(x - x.mean(axis=0), latent - latent.mean()) if x.shape[1] else np.zeros(0)
    theta = np.zeros(layout.k_params)
    sl = layout.slices
    theta[sl["beta"]] = beta
    theta[sl["thresholds"]] = raw
    if layout.alpha:
        alpha = np.zeros(len(layout.alpha))
        if "Intercept" in layout.alpha:
            alpha[layout.alpha.index("Intercept")] = np.log(0.25)
        theta[sl["alpha"]] = alpha
    theta[sl["random"]] = _random_start(design, layout, 0.5, 0.0, 0.3)
    return theta
