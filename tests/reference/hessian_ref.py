"""Slow NumPy twin of the closed-form Hessian's compiled passes
(:func:`melsml._quad.hessian_sums` and :func:`melsml._quad.hessian_gram`)."""

from __future__ import annotations

import numpy as np


def _design(X, XB, W):
    """The coefficients' design rows (x, xb / 2, s) and each column's slot
    (0 mu, 1 zeta, 2 eta)."""
    D = np.column_stack([X, 0.5 * XB, W])
    slots = np.array([0] * X.shape[1] + [1] * XB.shape[1] + [2] * W.shape[1])
    return D, slots


def hessian_sums_ref(r, a, z, X, XB, W, group_ptr, w=None):
    """(sums (n_groups, 4): N, A, b, l; jac (n_groups, 4, kl))."""
    w = np.ones_like(r) if w is None else w
    starts = group_ptr[:-1]
    az = a * z
    sums = np.column_stack([np.add.reduceat(v, starts) for v in (w, a * r * r, az * r, az * z)])
    # d(A, b, l, S) / d(mu, zeta, eta) per unit
    grad = np.zeros((len(r), 4, 3))
    grad[:, 0, 0], grad[:, 0, 2] = -2.0 * a * r, -a * r * r
    grad[:, 1, 0], grad[:, 1, 1], grad[:, 1, 2] = -az, az * r, -az * r
    grad[:, 2, 1], grad[:, 2, 2] = 2.0 * az * z, -az * z
    grad[:, 3, 2] = w
    D, slots = _design(X, XB, W)
    unit = grad[:, :, slots] * D[:, None, :]
    return sums, np.add.reduceat(unit, starts, axis=0)


def hessian_gram_ref(r, a, z, X, XB, W, group_ptr, gamma):
    """(n_groups, kl, kl): each school's sum of D_i' H_i D_i (full, symmetric)."""
    starts = group_ptr[:-1]
    sizes = np.diff(group_ptr)
    gA, gb, gl = (np.repeat(gamma[:, c], sizes) for c in range(3))
    az = a * z
    h = np.zeros((len(r), 3, 3))
    h[:, 0, 0] = 2.0 * gA * a
    h[:, 0, 1] = h[:, 1, 0] = -gb * az
    h[:, 0, 2] = h[:, 2, 0] = 2.0 * gA * a * r + gb * az
    h[:, 1, 1] = gb * az * r + 4.0 * gl * az * z
    h[:, 1, 2] = h[:, 2, 1] = -gb * az * r - 2.0 * gl * az * z
    h[:, 2, 2] = gA * a * r * r + gb * az * r + gl * az * z
    D, slots = _design(X, XB, W)
    unit = h[:, slots][:, :, slots] * D[:, :, None] * D[:, None, :]
    return np.add.reduceat(unit, starts, axis=0)
