"""Cheap moment-based starting values (MODELS.md 4.3).

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


def start_values(design: DesignMatrices, layout: ParamLayout) -> np.ndarray:
    """Moment-based starting values in the layout's order."""
    d = design
    beta, *_ = np.linalg.lstsq(d.x_mean, d.y, rcond=None)
    resid = d.y - d.x_mean @ beta
    sizes = d.group_sizes.astype(float)
    gidx = d.group_index
    gmean = np.bincount(gidx, weights=resid) / sizes
    within = resid - gmean[gidx]
    multi = sizes[gidx] > 1
    dof = max(d.n_obs - d.n_groups, 1)
    s2_within = float(np.sum(within**2) / dof) if multi.any() else float(np.var(resid))
    s2_between = float(np.var(gmean) - np.mean(s2_within / sizes))
    s2_between = max(s2_between, 0.05 * float(np.var(resid)), 1e-8)

    alpha, *_ = np.linalg.lstsq(d.x_bs, np.full(d.n_obs, np.log(s2_between)), rcond=None)
    if multi.sum() > d.x_ws.shape[1]:
        scaled = within[multi] ** 2 * (sizes[gidx][multi] / (sizes[gidx][multi] - 1.0))
        target = np.log(scaled + 1e-12 * s2_within) - _LOG_CHI2_BIAS
        tau, *_ = np.linalg.lstsq(d.x_ws[multi], target, rcond=None)
    else:
        tau, *_ = np.linalg.lstsq(d.x_ws, np.full(d.n_obs, np.log(s2_within)), rcond=None)

    theta = np.concatenate([beta, alpha, tau, np.zeros(len(layout.random))])
    if layout.random:
        big = sizes > 2
        if big.sum() >= 3:
            scaled_w = within**2 / np.exp(d.x_ws @ tau)
            s2_g = np.bincount(gidx, weights=scaled_w)[big] / (sizes[big] - 1.0)
            log_s2 = np.log(s2_g + 1e-12)
            var_omega = float(np.var(log_s2) - np.mean(2.0 / (sizes[big] - 1.0)))
            var_omega = max(var_omega, 0.01)
            cov = float(np.cov(gmean[big], log_s2)[0, 1])
            bound = 0.7 * np.sqrt(var_omega)
            tau_l = float(np.clip(cov / np.sqrt(s2_between), -bound, bound))
        else:
            var_omega, tau_l = 0.1, 0.0
        values = {"tau_l": tau_l, "tau_q": 0.0}
        if "tau_l" not in layout.random:
            tau_l = 0.0
        values["sigma_omega"] = float(np.sqrt(max(var_omega - tau_l**2, 0.01)))
        sl = layout.slices["random"]
        theta[sl] = [values[name] for name in layout.random]
    return theta
