"""The Hessian of the log-likelihood in closed form, for the common model.

For a model with one location effect (a random intercept, its SD from the BS
function or not) and one random scale effect whose design is constant within
each school, fitted by the exact-location plan, each school's likelihood is
a one-dimensional integral over the standardised scale effect xi:

    L_j = int phi(xi) f_j(xi; theta) dxi,

where f_j, the density of the school's outcomes given xi with the location
effect integrated out, depends on the data only through five sums (N = sum
w_i, S = sum w_i eta_i, A = sum a_i r_i^2, b = sum a_i z_i r_i, l = sum a_i
z_i^2, a_i = w_i exp(-eta_i)) and on the random-effect parameters through v =
K xi, g = G xi and t = 1 / C^2 (the scale-first factor of their covariance).
Louis' identity gives the Hessian of log L_j as the posterior mean of the
Hessian of log f_j plus the posterior covariance of its gradient.  The
posterior expectations are taken over the fit's adaptive Gauss-Hermite nodes,
as the score's are (Fisher's identity), so this is the quadrature estimate of
the exact Hessian; it replaces k score evaluations (forward differences) by
two compiled passes over the data (the sums and their first derivatives,
then their second derivatives weighted by each school's posterior means)
and a few operations per school and node.  Other models return None: their
Hessian comes from differences of the score.
"""

from __future__ import annotations

import numpy as np

from . import _quad
from .likelihood import MELSObjective


def supported(obj: MELSObjective) -> bool:
    """The closed form covers this objective's model and plan."""
    st = obj.layout.structure
    d = obj.design
    return (
        obj.plan.method == "exact-location"
        and st.q == 1
        and st.s == 1
        and st.association in ("none", "linear")
        and not obj.layout.thresholds
        and not d.interval_outcome
        and bool(np.all(obj._h_const))
        and bool(np.all(obj._h == 1.0))
    )


def _factor_terms(L: np.ndarray, targets) -> tuple:
    """K, G, t = 1 / C^2 of the scale-first factor and their gradients and
    Hessians in the free entries of L (``targets``), from L = [[a, 0], [c, d]]:
    K = sqrt(c^2 + d^2), G = a c / K, t = K^2 / (a d)^2."""
    a, c, d = L[0, 0], L[1, 0], L[1, 1]
    K = np.hypot(c, d)
    K3, K5 = K**3, K**5
    # gradients and Hessians in (a, c, d)
    gK = np.array([0.0, c / K, d / K])
    hK = np.array([[0.0, 0.0, 0.0], [0.0, d * d / K3, -c * d / K3], [0.0, -c * d / K3, c * c / K3]])
    G = a * c / K
    gG = np.array([c / K, a * d * d / K3, -a * c * d / K3])
    hG = np.array(
        [
            [0.0, d * d / K3, -c * d / K3],
            [d * d / K3, -3.0 * a * c * d * d / K5, a * d * (2.0 * c * c - d * d) / K5],
            [-c * d / K3, a * d * (2.0 * c * c - d * d) / K5, -a * c * (c * c - 2.0 * d * d) / K5],
        ]
    )
    a2d2 = (a * d) ** 2
    t = K * K / a2d2
    gt = np.array([-2.0 * K * K / (a2d2 * a), 2.0 * c / a2d2, -2.0 * c * c / (a2d2 * d)])
    ht = np.array(
        [
            [6.0 * K * K / (a2d2 * a * a), -4.0 * c / (a2d2 * a), 4.0 * c * c / (a2d2 * a * d)],
            [-4.0 * c / (a2d2 * a), 2.0 / a2d2, -4.0 * c / (a2d2 * d)],
            [4.0 * c * c / (a2d2 * a * d), -4.0 * c / (a2d2 * d), 6.0 * c * c / (a2d2 * d * d)],
        ]
    )
    pos = [{(0, 0): 0, (1, 0): 1, (1, 1): 2}[tuple(tg)] for tg in targets]
    sel = np.array(pos, dtype=int)
    return (
        (K, gK[sel], hK[np.ix_(sel, sel)]),
        (G, gG[sel], hG[np.ix_(sel, sel)]),
        (t, gt[sel], ht[np.ix_(sel, sel)]),
    )


def _node_derivatives(A, b, l, N, v, g, t):  # noqa: E741
    """log f, its gradient (7) and Hessian in y = (A, b, l, S, v, g, t) at every
    node (arrays broadcast over groups x nodes); the Hessian as {(i, j): entry}
    for its non-zero entries with i <= j (log f is linear in A and S)."""
    kap = np.exp(-v)
    P = kap * l + t
    M = kap * b + g * t
    m = M / P
    P2, P3 = P * P, P * P * P
    bgl = b - g * l
    grad = [
        -0.5 * kap,
        kap * m,
        -0.5 * kap / P - 0.5 * kap * m * m,
        np.full_like(kap, -0.5),
        -0.5 * N + 0.5 * kap * A - kap * b * m + 0.5 * kap * l * m * m + 0.5 * kap * l / P,
        kap * t * bgl / P,
        -0.5 * (m - g) ** 2 - 0.5 / P + 0.5 / t,
    ]
    b2, g2, l2, t2 = b * b, g * g, l * l, t * t
    k2, k3 = kap * kap, kap * kap * kap
    h = {
        (0, 4): 0.5 * kap,
        (1, 1): k2 / P,
        (1, 2): -k2 * M / P2,
        (1, 4): -kap * (b * k2 * l + 2.0 * b * kap * t + g * t2) / P2,
        (1, 5): kap * t / P,
        (1, 6): -k2 * bgl / P2,
        (2, 2): k2 * (2.0 * M * M + P) / (2.0 * P3),
        (2, 4): kap
        * (
            b2 * k3 * l
            + 3.0 * b2 * k2 * t
            + 4.0 * b * g * kap * t2
            - g2 * kap * l * t2
            + g2 * t2 * t
            + kap * l * t
            + t2
        )  # fmt: skip
        / (2.0 * P3),
        (2, 5): -kap * t * M / P2,
        (2, 6): kap
        * (
            2.0 * b2 * k2
            - 2.0 * b * g * k2 * l
            + 2.0 * b * g * kap * t
            - 2.0 * g2 * kap * l * t
            + kap * l
            + t
        )  # fmt: skip
        / (2.0 * P3),
        (4, 4): kap
        * (
            -A * P3
            + b2 * k3 * l2
            + 3.0 * b2 * k2 * l * t
            + 4.0 * b2 * kap * t2
            - 2.0 * b * g * kap * l * t2
            + 2.0 * b * g * t2 * t
            + g2 * kap * l2 * t2
            - g2 * l * t2 * t
            - kap * l2 * t
            - l * t2
        )  # fmt: skip
        / (2.0 * P3),
        (4, 5): -kap * t2 * bgl / P2,
        (4, 6): kap
        * (
            2.0 * b2 * kap * t
            - 4.0 * b * g * kap * l * t
            + 2.0 * g2 * kap * l2 * t
            - kap * l2
            - l * t
        )  # fmt: skip
        / (2.0 * P3),
        (5, 5): -kap * l * t / P,
        (5, 6): k2 * l * bgl / P2,
        (6, 6): kap
        * (
            2.0 * b2 * kap * t2
            - 4.0 * b * g * kap * l * t2
            + 2.0 * g2 * kap * l2 * t2
            - k2 * l2 * l
            - 3.0 * kap * l2 * t
            - 2.0 * l * t2
        )  # fmt: skip
        / (2.0 * t2 * P3),
    }
    logf = -0.5 * kap * A - 0.5 * g2 * t + 0.5 * M * m - 0.5 * np.log(P) + 0.5 * np.log(t)
    logf = logf - 0.5 * N * v
    return logf, np.stack(grad, axis=-1), h


#: the groups of one pass are at most about this many units (bounds the memory)
CHUNK_ROWS = 1 << 18


def closed_form_hessian(obj: MELSObjective, theta: np.ndarray) -> np.ndarray | None:
    """The Hessian of ``obj``'s log-likelihood at ``theta`` in closed form, or
    None when its model is not covered (see :func:`supported`) or the scale
    factor is degenerate (C = 0 or K = 0: a variance on its boundary).  The
    schools are taken in chunks of about ``CHUNK_ROWS`` units."""
    if not supported(obj):
        return None
    lay, d = obj.layout, obj.design
    theta = np.asarray(theta, dtype=float)
    p = lay.unpack(theta)
    L = p["L"]
    if abs(L[0, 0] * L[1, 1]) < 1e-8 or np.hypot(L[1, 0], L[1, 1]) < 1e-8:
        return None
    centers = obj.evaluate(theta, score=False).centers
    factor = _factor_terms(L, lay.targets)
    ptr = d.group_ptr
    H = np.zeros((lay.k_params, lay.k_params))
    g0 = 0
    while g0 < d.n_groups:
        g1 = int(np.searchsorted(ptr, ptr[g0] + CHUNK_ROWS, side="right")) - 1
        g1 = min(max(g1, g0 + 1), d.n_groups)
        H += _chunk(obj, p, centers, factor, g0, g1)
        g0 = g1
    return 0.5 * (H + H.T)


def unit_passes(obj: MELSObjective, p: dict, g0: int, g1: int) -> tuple[dict, np.ndarray | None]:
    """The compiled passes' inputs for schools g0 to g1 - 1: keyword arguments
    of :func:`melsml._quad.hessian_sums` and ``hessian_gram`` (the residuals r,
    the weights a = w exp(-eta) and z of their units, and the designs), and
    the units' weights w (None: all 1)."""
    d = obj.design
    st = obj.layout.structure
    rows = slice(int(d.group_ptr[g0]), int(d.group_ptr[g1]))
    r, a = obj.linear_predictors(p, rows)
    np.negative(a, out=a)
    np.exp(a, out=a)
    w = obj._w[rows] if obj._w is not None else None
    if w is not None:
        a *= w
    return dict(
        r=r,
        a=a,
        z=np.ascontiguousarray(obj._z(p, rows)[:, 0]),
        X=np.asfortranarray(obj._x_mean[rows]),
        XB=np.asfortranarray(obj._x_bs[rows]) if st.bs else np.zeros((len(r), 0), order="F"),
        W=np.asfortranarray(obj._x_ws[rows]),
        group_ptr=d.group_ptr[g0 : g1 + 1] - d.group_ptr[g0],
        n_threads=obj.n_threads,
    ), w


def _chunk(obj: MELSObjective, p: dict, centers, factor, g0: int, g1: int) -> np.ndarray:
    """The Hessian's sum over schools g0 to g1 - 1."""
    lay = obj.layout
    st = lay.structure
    kx, ks = len(lay.beta), len(lay.tau)
    kb = len(lay.alpha) if st.bs else 0
    k_lin = kx + kb + ks
    n_g = g1 - g0
    units, w = unit_passes(obj, p, g0, g1)
    sums = np.empty((n_g, 4))
    J_data = np.empty((n_g, 4, k_lin))
    _quad.hessian_sums(**units, sums=sums, jac=J_data, w=w)
    N, A, b, l = sums.T  # noqa: E741

    # ---- the nodes of every school and the derivatives of log f there
    (K, gK, hK), (G, gG, hG), (t, gt, ht) = factor
    cen = centers[g0:g1]
    xi = cen[:, :1] + np.sqrt(2.0) * cen[:, 1:2] * obj.gh_x[None, :]
    logf, gy, hy = _node_derivatives(
        A[:, None], b[:, None], l[:, None], N[:, None], K * xi, G * xi, t
    )
    logw = obj.gh_logw[None, :] + obj.gh_x[None, :] ** 2 - 0.5 * xi * xi + logf
    logw -= logw.max(axis=1, keepdims=True)
    pi = np.exp(logw)
    pi /= pi.sum(axis=1, keepdims=True)
    gw = obj._gw[g0:g1] if obj._gw is not None else np.ones(n_g)
    piw = pi * gw[:, None]  # group weights: each school's Hessian times its weight

    # ---- per node, the gradient of log f in theta: in the coefficients through
    # J_data, in the random block through v = K xi, g = G xi and t
    base = np.stack([gK, gG, gt])  # (3, k_re): d(K, G, t) / d(random block)
    k_re = base.shape[1]
    power = (1, 1, 0)  # v and g carry xi, t does not
    g_re = sum(gy[..., 4 + a_, None] * (xi[..., None] if power[a_] else 1.0) * base[a_]
               for a_ in range(3))  # fmt: skip
    g_theta = np.concatenate([gy[..., :4] @ J_data, g_re], axis=-1)
    # covariance of the gradient over the posterior, summed over schools
    mean_g = (pi[:, None, :] @ g_theta)[:, 0, :]
    H = np.einsum("jk,jkp,jkq->pq", piw, g_theta, g_theta, optimize=True)
    H -= (mean_g * gw[:, None]).T @ mean_g
    # posterior mean of the Hessian of log f in theta: the coefficients' block
    # (log f is linear in A and S), the cross block and the random block
    E_dd = np.zeros((n_g, 4, 4))
    for i, j in ((1, 1), (1, 2), (2, 2)):
        E_dd[:, i, j] = E_dd[:, j, i] = np.sum(piw * hy[i, j], axis=1)
    H[:k_lin, :k_lin] += np.einsum("jcp,jcd,jdq->pq", J_data, E_dd, J_data, optimize=True)
    E_dr = np.zeros((n_g, 4, k_re))
    for c in range(3):
        for a_ in range(3):
            entry = hy.get((c, 4 + a_))
            if entry is not None:
                weight = piw * entry * (xi if power[a_] else 1.0)
                E_dr[:, c, :] += np.sum(weight, axis=1)[:, None] * base[a_]
    H_lr = np.einsum("jcp,jcq->pq", J_data, E_dr, optimize=True)
    H[:k_lin, k_lin:] += H_lr
    H[k_lin:, :k_lin] += H_lr.T
    for a_ in range(3):
        for b_ in range(a_, 3):
            scalar = float(np.sum(piw * hy[(4 + a_, 4 + b_)] * xi ** (power[a_] + power[b_])))
            block = scalar * np.outer(base[a_], base[b_])
            H[k_lin:, k_lin:] += block if a_ == b_ else block + block.T
    # the second derivatives of v, g and t in the random block
    Fv = float(np.sum(piw * gy[..., 4] * xi))
    Fg = float(np.sum(piw * gy[..., 5] * xi))
    Ft = float(np.sum(piw * gy[..., 6]))
    H[k_lin:, k_lin:] += Fv * hK + Fg * hG + Ft * ht

    # the second derivatives of A, b and l in (beta, alpha, tau): the sum over
    # units of D_i' (sum_c gamma_c H_i^c) D_i, gamma_c the school's posterior mean
    # of d log f / d c (c = A, b, l) and H_i^c the Hessian of unit i's term of c
    gamma = np.ascontiguousarray((piw[:, None, :] @ gy[..., :3])[:, 0, :])
    gram = np.empty((n_g, k_lin * k_lin))
    _quad.hessian_gram(**units, gamma=gamma, out=gram)
    upper = gram.sum(axis=0).reshape(k_lin, k_lin)
    H[:k_lin, :k_lin] += upper + np.triu(upper, 1).T
    return H
