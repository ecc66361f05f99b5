"""Empirical Bayes posteriors of the groups' random effects, from a frozen fit state.

Given its scale effects v_j the location effects u_j of a group are normal
(the exact-location identity), so the posterior of (u_j, v_j) is tabulated on
a grid over the standardised scale effects xi (v = Kvv xi) around the
posterior mode found by the fit, with a normal for u_j at each point.  The
grid has 241 points over +-9 posterior SDs for one scale effect, 41 x 41 over
+-6 for two and 15^s over +-5 beyond.  Means, SDs, covariances and
equal-tailed intervals of the effects and of nonlinear functions (a school's
variance exp(w'tau + h'v_j)) are posterior expectations on that grid.  The
quadratic association, which has no exact-location identity, is tabulated on
the adaptive quadrature's rotated 2-D grid over (theta1, theta2)
(:func:`grid_2d`; also for censored outcomes).  With more random effects a
censored or ordinal outcome's posterior is tabulated over all effects at once
(a discrete posterior on a product grid around the adaptive placement).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from itertools import product

import numpy as np

from . import _quad
from .likelihood import FitState, MELSObjective
from .measures import grid_quantiles, grid_weights

#: points per dimension and half-width (posterior SDs) of the grid, by s
_GRIDS = {1: (241, 9.0), 2: (41, 6.0)}
_GRID_DEFAULT = (15, 5.0)
# +-12 placement SDs: in small groups with a large random scale the posterior's
# tail in the scale direction reaches well beyond +-7 (measured: posterior means
# off by 1.4e-3 with +-7, 1.5e-5 with +-12, against a dense brute-force grid; the
# step, 0.4, is fine enough: 97 steps instead of 61 change nothing)
_GRID_2D = np.linspace(-12.0, 12.0, 61)
# the grid over all effects (censored and ordinal outcomes): points per
# dimension and reach (placement SDs), by the number of effects, on the axis
# t = a sinh(s / a), s evenly spaced.  With 3 effects, 25 points reaching +-12
# give posterior means within 3e-6 of a uniform 81-point grid over +-16 in small,
# mostly censored groups whose tails reach +-12 (a uniform 25-point grid over
# +-7: off by 1e-3)
_FULL_GRIDS = {1: (121, 16.0), 2: (61, 14.0), 3: (25, 12.0)}
_FULL_GRID_DEFAULT = (13, 10.0)
_SINH_A = 2.0


@dataclass(frozen=True)
class PosteriorGrid:
    """Per-group posterior of (u, v) on a grid over the scale effects.

    Attributes
    ----------
    w : (n_groups, P) grid weights, rows sum to 1
    v : (n_groups, P, s) scale effects at the grid points
    mu, pinv : (n_groups, P, q), (n_groups, P, q, q) normal posterior of u given v
    n : (n_groups,) group sizes
    zbar : (n_groups, q) group means of the location design (with a BS
        function: of sigma_u,ij)
    """

    w: np.ndarray
    v: np.ndarray
    mu: np.ndarray
    pinv: np.ndarray
    n: np.ndarray
    zbar: np.ndarray


def _exact_objective(state: FitState) -> MELSObjective:
    options = state.options
    if state.plan.method == "aghq":
        options = replace(options, integration="exact-location")
    return MELSObjective(state.design, state.layout, options)


def posterior_grid(state: FitState) -> PosteriorGrid:
    """Tabulate each group's posterior at the estimates (any plan but the quadratic)."""
    if state.layout.structure.association == "quadratic":
        raise ValueError("the quadratic association has no exact-location posterior grid")
    if state.design.interval_outcome:
        return _full_grid(state)
    obj = _exact_objective(state)
    inputs = obj.kernel_inputs(state.theta)
    d = state.design
    s, q, j = state.layout.s, state.layout.q, d.n_groups
    if s == 0:
        points = np.zeros((j, 1, 0))
    else:
        if state.plan.method == "exact-location":
            centers = state.evaluation.centers
        else:
            centers = obj.evaluate(state.theta, score=False).centers
        n_pts, half = _GRIDS.get(s, _GRID_DEFAULT)
        axis = np.linspace(-half, half, n_pts)
        t = np.array(list(product(axis, repeat=s)))  # (P, s)
        mode = centers[:, :s]
        scale = centers[:, s:].reshape(j, s, s)
        points = mode[:, None, :] + np.einsum("jab,pb->jpa", scale, t)
    points = np.ascontiguousarray(points)
    n_p = points.shape[1]
    logpsi = np.empty((j, n_p))
    mu, pinv, v = np.empty((j, n_p, q)), np.empty((j, n_p, q, q)), np.empty((j, n_p, s))
    _quad.engine_points(**inputs, points=points, logpsi=logpsi, mu=mu, pinv=pinv, v=v)
    starts = d.group_ptr[:-1]
    n = d.group_sizes.astype(float)
    zbar = np.add.reduceat(inputs["Z"], starts, axis=0) / n[:, None]
    return PosteriorGrid(w=grid_weights(logpsi), v=v, mu=mu, pinv=pinv, n=n, zbar=zbar)


def _full_placement(state: FitState, obj: MELSObjective) -> np.ndarray:
    """Mode and scale of the adaptive placement over all effects: the fit's,
    when its plan placed the nodes over all effects at the reported parameters
    (the placement is in the standardised effects, whose signs follow those of
    the factor's columns), else found anew."""
    dim = state.layout.q + state.layout.s
    cen = state.evaluation.centers
    same = np.array_equal(state.evaluation.theta, state.theta)
    if cen.shape[1] != dim + dim * dim or not same:
        cen = obj.evaluate(state.theta, score=False).centers
    return cen


def _full_grid(state: FitState) -> PosteriorGrid:
    """The posterior over all effects on a product grid around the adaptive
    quadrature's placement (mode + scale z, z on the grid): a discrete
    posterior (``pinv`` zero), for outcomes whose location effects are not
    normal given the scale effects (censored, ordinal)."""
    obj = MELSObjective(state.design, state.layout, state.options)
    d = state.design
    q, s, j = state.layout.q, state.layout.s, d.n_groups
    dim = q + s
    centers = _full_placement(state, obj)
    n_pts, reach = _FULL_GRIDS.get(dim, _FULL_GRID_DEFAULT)
    # t = a sinh(s / a), s evenly spaced: steps of about 0.4 SD near the mode,
    # widening into the tails (which reach +-12 SDs in small groups)
    a = _SINH_A
    s_max = a * np.arcsinh(reach / a)
    s_axis = np.linspace(-s_max, s_max, n_pts)
    axis = a * np.sinh(s_axis / a)
    log_jac = np.log(np.cosh(s_axis / a))
    t = np.array(list(product(axis, repeat=dim)))  # (P, dim)
    lj = np.array(list(product(log_jac, repeat=dim))).sum(axis=1)
    mode = centers[:, :dim]
    scale = centers[:, dim:].reshape(j, dim, dim)
    points = mode[:, None, :] + np.einsum("jab,pb->jpa", scale, t)
    logpsi, x = obj.full_points(state.theta, points)
    logpsi += lj
    z = obj.kernel_inputs(state.theta)["Z"]
    n = d.group_sizes.astype(float)
    zbar = np.add.reduceat(z, d.group_ptr[:-1], axis=0) / n[:, None]
    return PosteriorGrid(
        w=grid_weights(logpsi),
        v=x[..., q:],
        mu=x[..., :q],
        pinv=np.zeros((j, len(t), q, q)),
        n=n,
        zbar=zbar,
    )


def moments(grid: PosteriorGrid) -> tuple[np.ndarray, np.ndarray]:
    """Posterior means (n_groups, d) and covariances (n_groups, d, d) of x = (u, v)."""
    w, mu, v = grid.w, grid.mu, grid.v
    x = np.concatenate([mu, v], axis=2)
    mean = np.einsum("jp,jpa->ja", w, x)
    second = np.einsum("jp,jpa,jpb->jab", w, x, x)
    q = mu.shape[2]
    second[:, :q, :q] += np.einsum("jp,jpab->jab", w, grid.pinv)
    cov = second - mean[:, :, None] * mean[:, None, :]
    return mean, cov


def variance_quantity(
    grid: PosteriorGrid,
    e: np.ndarray,
    slopes: list[int],
    sigma_ref: np.ndarray,
    probs,
    seed: int = 20240101,
):
    """Posterior mean, SD and quantiles of u_s' Sigma_ref u_s + e.

    ``e`` (n_groups, P) is the within-group part exp(w'tau + h'v) at the grid
    points; u_s are the random location slopes.  Exact mean and SD; quantiles
    exact on the grid without slopes, exact (normal-mixture CDF) with one
    slope, by Monte Carlo (20,000 draws per group, fixed seed) with several.
    """
    from scipy.special import ndtr

    w, m, pt = grid.w, grid.mu, grid.pinv
    ms = m[..., slopes]
    ps = pt[..., slopes, :][..., :, slopes]
    sp = np.einsum("ab,jgbc->jgac", sigma_ref, ps)
    eq = np.trace(sp, axis1=-2, axis2=-1) + np.einsum("jga,ab,jgb->jg", ms, sigma_ref, ms)
    var_q = 2 * np.einsum("jgab,jgba->jg", sp, sp) + 4 * np.einsum(
        "jga,ab,jgbc,cd,jgd->jg", ms, sigma_ref, ps, sigma_ref, ms
    )
    mean = np.sum(w * (eq + e), axis=1)
    second = np.sum(w * (var_q + (eq + e) ** 2), axis=1)
    sd = np.sqrt(np.maximum(second - mean**2, 0.0))
    if not slopes or not np.any(sigma_ref):
        return mean, sd, grid_quantiles(e, w, probs)
    if len(slopes) == 1:
        var1 = float(sigma_ref[0, 0])
        mu1, s1 = ms[..., 0], np.sqrt(ps[..., 0, 0] + 1e-300)

        def cdf(t):
            a = np.maximum(t[:, None] - e, 0.0) / var1
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


def grid_2d(state: FitState) -> dict[str, np.ndarray]:
    """Posterior of (theta1, theta2) on the adaptive quadrature's placement (mode +
    L z, z on +-12 in 61 steps per axis), for the plans where the location effect
    is not normal given omega: the quadratic association and censored outcomes
    (random intercept with a BS function, one random scale effect).

    Returns ``w`` (n_groups, 61^2) weights, ``u`` theta1 and ``om`` omega at
    the grid points, and the marginal of theta1: ``u1``, ``w1`` (n_groups, 61).
    """
    obj = MELSObjective(state.design, state.layout, replace(state.options, integration="aghq"))
    cen = _full_placement(state, obj)
    z1, z2 = np.meshgrid(_GRID_2D, _GRID_2D, indexing="ij")
    z1, z2 = z1.ravel()[None, :], z2.ravel()[None, :]
    # centers: mode (theta1, theta2), then the 2 x 2 scale row by row
    u = cen[:, [0]] + cen[:, [2]] * z1
    v = cen[:, [1]] + cen[:, [4]] * z1 + cen[:, [5]] * z2
    logd, x = obj.full_points(state.theta, np.stack([u, v], axis=2))
    om = x[..., 1]
    w = grid_weights(logd)
    n1 = len(_GRID_2D)
    # theta1 depends on z1 only: its marginal is the grid summed over z2
    w1 = w.reshape(len(w), n1, n1).sum(axis=2)
    u1 = u.reshape(len(u), n1, n1)[:, :, 0]
    return dict(w=w, u=u, om=om, u1=u1, w1=w1)
