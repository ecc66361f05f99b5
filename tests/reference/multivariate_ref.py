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
