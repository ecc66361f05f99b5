"""Posterior of the random effects with several location effects (random slopes).

Given omega_j the location effects u_j are normal (``melsml._quad_ref``, the
exact-location block comment), so the posterior of (u_j, omega_j) is
tabulated on a grid of omega (241 points over +-9 posterior SDs around the
posterior mean) with a normal for u_j at each point.  This is exact to grid
accuracy whichever integration fitted the model, since both integrate the
same model.  Vectorised over groups and grid points.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ._quad_ref import LOG2PI, exact_location_terms, split_chol
from .random_effects import _grid_quantiles, grid_weights

if TYPE_CHECKING:  # pragma: no cover
    from .results import MELSResults

_GRID = np.linspace(-9.0, 9.0, 241)


def posterior_grid(res: MELSResults) -> dict[str, np.ndarray]:
    """Grid posterior of each group's effects.

    Returns
    -------
    dict with ``w`` (n_groups, G) grid weights summing to 1, ``om`` (n_groups, G)
    omega at the grid points, ``m`` (n_groups, G, q) and ``Pt`` (n_groups, G, q, q)
    the normal posterior of u given omega, ``zbar`` (n_groups, q) the group
    means of the random-effect covariates, ``n`` the group sizes.
    """
    d, lay = res.model.design, res.model.layout
    theta = res.fit_state.theta
    p = lay.unpack(theta)
    chol = lay.chol_matrix(theta)
    q = lay.q
    r0 = d.y - d.x_mean @ p["beta"]
    eta_ws = d.x_ws @ p["tau"]
    inv_d = np.exp(-eta_ws)
    Z = d.x_re
    starts = d.group_ptr[:-1]
    n = d.group_sizes.astype(float)
    lam = np.add.reduceat(Z[:, :, None] * Z[:, None, :] * inv_d[:, None, None], starts, axis=0)
    b0 = np.add.reduceat(Z * (r0 * inv_d)[:, None], starts, axis=0)
    a_sum = np.add.reduceat(r0 * r0 * inv_d, starts)
    sumlogd = np.add.reduceat(eta_ws, starts)
    zbar = np.add.reduceat(Z, starts, axis=0) / n[:, None]
    A, lo, lw = split_chol(chol, q)
    scale = chol.shape[0] > q
    if scale:
        V, _, g, R = exact_location_terms(A, lo, lw)
        ev = res.fit_state.evaluation
        center = ev.ex[:, q]
        sd = np.sqrt(np.maximum(ev.exx[:, q, q] - center**2, 1e-12))
        om = center[:, None] + sd[:, None] * _GRID[None, :]
    else:
        V, g, R = None, np.zeros(q), A
        om = np.zeros((d.n_groups, 1))
    k = np.exp(-om)
    lamg = lam @ g
    rb0 = b0 @ R
    rlg = lamg @ R
    G = np.einsum("ba,jbc,cd->jad", R, lam, R)
    gb0 = b0 @ g
    glg = lamg @ g
    b = b0[:, None, :] - om[..., None] * lamg[:, None, :]
    h = rb0[:, None, :] - om[..., None] * rlg[:, None, :]
    M = np.eye(q) + k[..., None, None] * G[:, None, :, :]
    Mi = np.linalg.inv(M)
    logdet = np.linalg.slogdet(M)[1]
    c = a_sum[:, None] - 2 * om * gb0[:, None] + om**2 * glg[:, None]
    hmh = np.einsum("jgi,jgik,jgk->jg", h, Mi, h)
    logw = -0.5 * (
        n[:, None] * LOG2PI + sumlogd[:, None] + n[:, None] * om + logdet + k * c - k * k * hmh
    )
    if scale:
        logw = logw - 0.5 * om**2 / V
    w = grid_weights(logw)
    Pt = np.einsum("ab,jgbc,dc->jgad", R, Mi, R)
    m = g * om[..., None] + k[..., None] * np.einsum("jgab,jgb->jga", Pt, b)
    return dict(w=w, om=om, m=m, Pt=Pt, zbar=zbar, n=n)


def moments(grid: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Posterior means and covariance of (u, omega) per group from the grid."""
    w, om, m, Pt = grid["w"], grid["om"], grid["m"], grid["Pt"]
    mu = np.einsum("jg,jga->ja", w, m)
    second = np.einsum("jg,jgab->jab", w, Pt + m[..., :, None] * m[..., None, :])
    cov_u = second - mu[:, :, None] * mu[:, None, :]
    mo = np.sum(w * om, axis=1)
    var_o = np.sum(w * om**2, axis=1) - mo**2
    cov_uo = np.einsum("jg,jga->ja", w, m * om[..., None]) - mu * mo[:, None]
    return dict(mu=mu, cov_u=cov_u, omega_mean=mo, omega_var=np.maximum(var_o, 0.0), cov_uo=cov_uo)


def variance_quantity(
    grid, slopes: list[int], sigma_ref: np.ndarray, shift: float, probs, seed: int = 20240101
):
    """Posterior mean, SD and quantiles of u_s' Sigma_ref u_s + exp(shift + omega).

    Exact mean and SD; quantiles exact (normal-mixture CDF) with one slope, by
    Monte Carlo (20,000 draws per group, fixed seed) with several.
    """
    from scipy.special import ndtr

    w, om, m, Pt = grid["w"], grid["om"], grid["m"], grid["Pt"]
    e = np.exp(shift + om)
    ms = m[..., slopes]
    ps = Pt[..., slopes, :][..., :, slopes]
    sp = np.einsum("ab,jgbc->jgac", sigma_ref, ps)
    eq = np.trace(sp, axis1=-2, axis2=-1) + np.einsum("jga,ab,jgb->jg", ms, sigma_ref, ms)
    var_q = 2 * np.einsum("jgab,jgba->jg", sp, sp) + 4 * np.einsum(
        "jga,ab,jgbc,cd,jgd->jg", ms, sigma_ref, ps, sigma_ref, ms
    )
    mean = np.sum(w * (eq + e), axis=1)
    second = np.sum(w * (var_q + (eq + e) ** 2), axis=1)
    sd = np.sqrt(np.maximum(second - mean**2, 0.0))
    if not slopes or not np.any(sigma_ref):
        # no slope part: quantiles of exp(shift + omega) from the omega grid
        return mean, sd, _grid_quantiles(e, w, probs)
    if len(slopes) == 1:
        v = float(sigma_ref[0, 0])
        mu1, s1 = ms[..., 0], np.sqrt(ps[..., 0, 0] + 1e-300)

        def cdf(t):
            a = np.maximum(t[:, None] - e, 0.0) / v
            ra = np.sqrt(a)
            inside = ndtr((ra - mu1) / s1) - ndtr((-ra - mu1) / s1)
            return np.sum(w * np.where(t[:, None] > e, inside, 0.0), axis=1)

        out = []
        for prob in probs:
            lo, hi = np.zeros_like(mean), mean + 20 * sd + 1e-12
            for _ in range(80):
                mid = 0.5 * (lo + hi)
                below = cdf(mid) < prob
                lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
            out.append(0.5 * (lo + hi))
        return mean, sd, out
    rng = np.random.default_rng(seed)
    n_draw = 20_000
    out = [np.empty_like(mean) for _ in probs]
    for j in range(w.shape[0]):
        idx = rng.choice(w.shape[1], size=n_draw, p=w[j])
        chol = np.linalg.cholesky(ps[j][idx] + 1e-12 * np.eye(len(slopes)))
        draws = ms[j][idx] + np.einsum(
            "nab,nb->na", chol, rng.standard_normal((n_draw, len(slopes)))
        )
        t = np.einsum("na,ab,nb->n", draws, sigma_ref, draws) + e[j][idx]
        for k, prob in enumerate(probs):
            out[k][j] = np.quantile(t, prob)
    return mean, sd, out
