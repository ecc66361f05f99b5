"""Brute-force nested integral of the three-level MELS likelihood: a test oracle.

Plain (non-adaptive) Gauss-Hermite product rules over every random effect,
location included, with no closed forms: slow, and accurate only for small
groups, which is what the tests give it.

Model (see melsml/_nested.pyx): y = r0 + ... with r0 = y - x'beta,
d = exp(w'tau), z = exp(s'alpha / 2)::

    y_i ~ N(x'beta + u3 + z_i c theta1, d_i exp(v3 + tau_l theta1 + sigma_omega theta2))
    (u3, v3, a3) = M theta3,  c = exp(a3 / 2)
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp


def _rule(n: int) -> tuple[np.ndarray, np.ndarray]:
    x, w = np.polynomial.hermite.hermgauss(n)
    return np.sqrt(2.0) * x, np.log(w / np.sqrt(np.pi))


def nested_loglik_brute(
    r0, d, z, school, district, M, tau_l, sigma_omega, n_outer: int = 30, n_inner: int = 40
) -> np.ndarray:
    """Per-district log-likelihood by brute-force quadrature.

    ``school`` and ``district`` are per-unit labels; M is (3, d3)."""
    M = np.asarray(M, dtype=float)
    d3 = M.shape[1]
    x3, lw3 = _rule(n_outer)
    grids = np.meshgrid(*([x3] * d3), indexing="ij")
    th3 = np.stack([g.ravel() for g in grids], axis=1)
    lw_out = sum(np.meshgrid(*([lw3] * d3), indexing="ij")).ravel()
    b3 = th3 @ M.T  # (G3, 3)
    u3, v3, c = b3[:, 0], b3[:, 1], np.exp(0.5 * b3[:, 2])
    x2, lw2 = _rule(n_inner)
    t1, t2 = (g.ravel() for g in np.meshgrid(x2, x2, indexing="ij"))
    lw_in = (lw2[:, None] + lw2[None, :]).ravel()
    v2 = tau_l * t1 + sigma_omega * t2
    out = []
    for k in np.unique(district):
        in_k = district == k
        total = lw_out.copy()
        for j in np.unique(school[in_k]):
            rows = in_k & (school == j)
            r, dd, zz = r0[rows], d[rows], z[rows]
            for a in range(0, th3.shape[0], 400):  # outer nodes in chunks (memory)
                sl = slice(a, a + 400)
                e = (
                    r[None, None, :]
                    - u3[sl, None, None]
                    - c[sl, None, None] * t1[None, :, None] * zz[None, None, :]
                )
                logvar = np.log(dd)[None, None, :] + v3[sl, None, None] + v2[None, :, None]
                lp = -0.5 * (np.log(2 * np.pi) + logvar + e * e * np.exp(-logvar)).sum(axis=2)
                total[sl] += logsumexp(lp + lw_in[None, :], axis=1)
        out.append(logsumexp(total))
    return np.array(out)
