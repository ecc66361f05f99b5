"""Gauss-Hermite rules for adaptive quadrature."""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=32)
def gauss_hermite(n_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and log weights of the ``n_points`` Gauss-Hermite rule.

    The rule integrates against the weight ``exp(-x**2)``:
    ``int f(x) exp(-x^2) dx ~= sum_k exp(logw_k) f(x_k)``.  Adaptive placement
    at mode ``m`` and scale ``s`` uses nodes ``m + sqrt(2) s x_k`` with weights
    ``sqrt(2) s exp(logw_k + x_k^2)`` against the plain integrand.

    Returns
    -------
    x, logw : ndarray of shape (n_points,), read-only
    """
    if not isinstance(n_points, (int, np.integer)) or n_points < 1:
        raise ValueError(f"n_points must be a positive integer, got {n_points!r}")
    x, w = np.polynomial.hermite.hermgauss(int(n_points))
    x = np.ascontiguousarray(x, dtype=np.float64)
    logw = np.ascontiguousarray(np.log(w), dtype=np.float64)
    x.flags.writeable = False
    logw.flags.writeable = False
    return x, logw
