"""Brute-force integral of the multivariate MELS likelihood: a test oracle.

Plain Gauss-Hermite over all 2M standardised school effects theta (x = L
theta), every student's observed outcomes multivariate normal with covariance
D^(1/2) R D^(1/2); no sums, no exact integration, no adaptation.  Accurate for
small groups and small random-effect variances only.
"""

from __future__ import annotations

from itertools import product

import numpy as np
from scipy.special import logsumexp


def multivariate_loglik_brute(y, observed, mean, logvar, group, R, L, n_points: int = 12):
    """Per-group log-likelihood.  ``y``, ``observed``, ``mean``, ``logvar``:
    (n, M) (outcome, which are observed, x'beta, w'tau); ``L``: (2M, 2M)."""
    m = y.shape[1]
    x, lw = np.polynomial.hermite.hermgauss(n_points)
    x, lw = np.sqrt(2.0) * x, np.log(lw / np.sqrt(np.pi))
    grid = np.array(list(product(range(n_points), repeat=2 * m)))
    theta = x[grid]  # (Q, 2M)
    logw = lw[grid].sum(axis=1)
    eff = theta @ L.T  # (Q, 2M): u then v
    out = []
    for g in np.unique(group):
        total = np.zeros(len(theta))
        for i in np.flatnonzero(group == g):
            o = np.flatnonzero(observed[i])
            r = y[i, o][None, :] - mean[i, o][None, :] - eff[:, o]  # (Q, k)
            sd = np.exp(0.5 * (logvar[i, o][None, :] + eff[:, m + o]))
            cov = sd[:, :, None] * R[np.ix_(o, o)][None] * sd[:, None, :]
            _, logdet = np.linalg.slogdet(cov)
            quad = np.einsum("qa,qa->q", r, np.linalg.solve(cov, r[..., None])[..., 0])
            total += -0.5 * (len(o) * np.log(2 * np.pi) + logdet + quad)
        out.append(logsumexp(total + logw))
    return np.array(out)


def sums_numpy(r0, e, rinv_pattern, pattern, group_ptr):
    """NumPy twin of ``melsml._mv.mv_sums``: (lam0, b0, a0) per school."""
    G = e[:, :, None] * e[:, None, :] * rinv_pattern[pattern]
    starts = group_ptr[:-1]
    return (
        np.add.reduceat(G, starts, axis=0),
        np.add.reduceat(G * r0[:, None, :], starts, axis=0),
        np.add.reduceat(G * r0[:, :, None] * r0[:, None, :], starts, axis=0),
    )


def unit_scores_numpy(r0, e, rinv_pattern, pattern, group_ptr, k0, k1, k2):
    """NumPy twin of ``melsml._mv.mv_unit_scores``: (g_mu, g_ws, ss)."""
    gi = np.repeat(np.arange(len(group_ptr) - 1), np.diff(group_ptr))
    G = e[:, :, None] * e[:, None, :] * rinv_pattern[pattern]
    K0, K1, K2 = k0[gi], k1[gi], k2[gi]
    g_mu = np.einsum("iml,iml->im", G, K0 * r0[:, None, :] - K1)
    er = (
        K0 * r0[:, :, None] * r0[:, None, :]
        - r0[:, :, None] * K1
        - r0[:, None, :] * np.swapaxes(K1, 1, 2)
        + K2
    )
    obs = e > 0
    g_ws = np.where(obs, -0.5 + 0.5 * np.einsum("iml,iml->im", G, er), 0.0)
    sse = e[:, :, None] * e[:, None, :] * er
    n_pat = rinv_pattern.shape[0]
    ss = np.stack(
        [
            np.add.reduceat(
                np.where((pattern == k)[:, None, None], sse, 0.0), group_ptr[:-1], axis=0
            )
            for k in range(n_pat)
        ],
        axis=1,
    )
    return g_mu, g_ws, ss
