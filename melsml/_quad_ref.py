"""Slow pure-NumPy twin of the compiled kernel :mod:`melsml._quad`.

This module is the readable specification of the kernel and its test oracle.
It loops over groups in Python and must give the same numbers as the kernel to
rounding error.

Model for group j (units i = 1..n), theta1, theta2 ~ N(0, 1) independent::

    y_i = mu_i + s_i theta1 + e_i,   e_i ~ N(0, d_i exp(omega))
    omega = tau_l theta1 + tau_q theta1^2 + sigma_omega theta2
    d_i = exp(eta_ws_i),  s_i = exp(eta_bs_i / 2),  r0_i = y_i - mu_i

Sufficient statistics (one pass over the units)::

    lam = sum s_i^2 / d_i,  b0 = sum s_i r0_i / d_i,  A = sum r0_i^2 / d_i,
    W = A - b0^2 / lam   (weighted within-group residual sum of squares)

Exact location (mode 1, tau_q = 0): with V = tau_l^2 + sigma_omega^2,
g = tau_l / V, S = sigma_omega^2 / V, theta1 | omega ~ N(g omega, S) and
omega ~ N(0, V).  Integrating theta1 out gives, with E = e^omega + S lam and
b = b0 - lam g omega::

    -2 log f(y | omega) = n log 2 pi + sum log d_i + F(omega)
    F(omega) = (n - 1) omega + log E + e^-omega W + b^2 / (lam E)

(the within-group part with n - 1 degrees of freedom, plus the group-mean part
with variance E / lam).  ``brute_log_f_given_omega`` checks this identity
against the n-variate normal density.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import multivariate_normal

LOG2PI = np.log(2.0 * np.pi)
SQRT2 = np.sqrt(2.0)


def group_stats(r0, eta_ws, eta_bs):
    """Sufficient statistics (n, sum log d, lam, b0, A, W) of one group."""
    inv_d = np.exp(-eta_ws)
    s = np.exp(0.5 * eta_bs)
    lam = np.sum(s * s * inv_d)
    b0 = np.sum(s * r0 * inv_d)
    A = np.sum(r0 * r0 * inv_d)
    W = max(A - b0 * b0 / lam, 0.0)
    return dict(n=float(r0.size), sumlogd=float(np.sum(eta_ws)), lam=lam, b0=b0, A=A, W=W)


def brute_log_f_given_omega(r0, eta_ws, eta_bs, omega, g, S):
    """log f(y | omega) from the full n x n marginal covariance (test oracle)."""
    d = np.exp(eta_ws)
    s = np.exp(0.5 * eta_bs)
    mean = s * g * omega
    cov = np.exp(omega) * np.diag(d) + S * np.outer(s, s)
    return multivariate_normal(mean=mean, cov=cov).logpdf(r0)


def h1(om, st, V, g, S):
    """Log integrand over omega for the exact-location path, with d/d omega and d2."""
    n, lam, W = st["n"], st["lam"], st["W"]
    eo = np.exp(om)
    k = 1.0 / eo
    E = eo + S * lam
    b = st["b0"] - lam * g * om
    F = (n - 1.0) * om + np.log(E) + k * W + b * b / (lam * E)
    F1 = (n - 1.0) + eo / E - k * W - 2.0 * g * b / E - b * b * eo / (lam * E * E)
    F2 = (
        S * lam * eo / E**2
        + k * W
        + 2.0 * g * g * lam / E
        + 4.0 * g * b * eo / E**2
        - b * b * eo * (E - 2.0 * eo) / (lam * E**3)
    )
    h = -0.5 * (n * LOG2PI + st["sumlogd"] + F) - 0.5 * om * om / V - 0.5 * np.log(2 * np.pi * V)
    return h, -0.5 * F1 - om / V, -0.5 * F2 - 1.0 / V


def h2(u, v, st, tau_l, tau_q, sigma_omega):
    """Log integrand over (theta1, theta2), with gradient and Hessian (general path)."""
    n, lam, W = st["n"], st["lam"], st["W"]
    om = tau_l * u + tau_q * u * u + sigma_omega * v
    k = np.exp(-om)
    dev = st["b0"] - lam * u
    C = W + dev * dev / lam
    C1, C2 = -2.0 * dev, 2.0 * lam
    wu, sw = tau_l + 2.0 * tau_q * u, sigma_omega
    F = n * om + k * C
    Fu = n * wu - k * wu * C + k * C1
    Fv = sw * (n - k * C)
    Fuu = 2 * n * tau_q + k * wu * wu * C - 2 * tau_q * k * C - 2 * k * wu * C1 + k * C2
    Fuv = sw * (k * wu * C - k * C1)
    Fvv = sw * sw * k * C
    h = -0.5 * (n * LOG2PI + st["sumlogd"] + F) - 0.5 * (u * u + v * v) - LOG2PI
    grad = np.array([-0.5 * Fu - u, -0.5 * Fv - v])
    hess = np.array([[-0.5 * Fuu - 1.0, -0.5 * Fuv], [-0.5 * Fuv, -0.5 * Fvv - 1.0]])
    return h, grad, hess


def _newton(fun, x, max_iter=200):
    """Safeguarded Newton ascent (same rules as the kernel)."""
    x = np.atleast_1d(np.asarray(x, dtype=float)).copy()
    h, g, H = fun(x)
    for _ in range(max_iter):
        M = -H
        if M[0, 0] > 0 and np.linalg.det(M) > 0:
            step = np.linalg.solve(M, g)
        elif x.size == 1:
            step = np.sign(g).astype(float)
        else:
            step = g / (1.0 + np.linalg.norm(g))
        nrm = np.linalg.norm(step)
        if nrm > 5.0:
            step *= 5.0 / nrm
        t = 1.0
        for _ in range(60):
            hn, gn, Hn = fun(x + t * step)
            if hn >= h - 1e-13 * (1.0 + abs(h)):
                break
            t *= 0.5
        x = x + t * step
        h, g, H = hn, gn, Hn
        if t * nrm < 1e-11 * (1.0 + np.abs(x).sum()):
            break
    return x, -H


def group_loglik_ref(
    r0,
    eta_ws,
    eta_bs,
    group_ptr,
    mode,
    tau_l,
    tau_q,
    sigma_omega,
    gh_x,
    gh_logw,
    centers=None,
    adapt=True,
):
    """Same outputs as :func:`melsml._quad.group_loglik`, returned as a dict."""
    n_groups = len(group_ptr) - 1
    centers = np.zeros((n_groups, 5)) if centers is None else np.array(centers, dtype=float)
    out = dict(
        ll=np.zeros(n_groups),
        mom=np.zeros((n_groups, 8)),
        grand=np.zeros((n_groups, 3)),
        g_mu=np.zeros(len(r0)),
        g_ws=np.zeros(len(r0)),
        g_bs=np.zeros(len(r0)),
    )
    V = tau_l**2 + sigma_omega**2
    for j in range(n_groups):
        sl = slice(group_ptr[j], group_ptr[j + 1])
        st = group_stats(r0[sl], eta_ws[sl], eta_bs[sl])
        n, lam, b0 = st["n"], st["lam"], st["b0"]
        grad_r = np.zeros(3)
        if mode == 0:
            P = 1.0 / (1.0 + lam)
            th = P * b0
            out["ll"][j] = -0.5 * (
                n * LOG2PI + st["sumlogd"] + np.log1p(lam) + st["A"] - b0 * b0 * P
            )
            mom = [th, th * th + P, 0.0, 0.0, 0.0, 1.0, th, th * th + P]
            centers[j, [0, 2]] = th, np.sqrt(P)
        elif mode == 1:
            g, S = tau_l / V, sigma_omega**2 / V
            if adapt:

                def fun1(x, st=st, g=g, S=S):
                    h, d1, d2 = h1(x[0], st, V, g, S)
                    return h, np.atleast_1d(d1), np.atleast_2d(d2)

                x, M = _newton(fun1, centers[j, 0])
                centers[j, 0] = x[0]
                centers[j, 2] = 1.0 / np.sqrt(M[0, 0]) if M[0, 0] > 0 else np.sqrt(V)
            om = centers[j, 0] + SQRT2 * centers[j, 2] * gh_x
            lw = gh_logw + gh_x**2 + h1(om, st, V, g, S)[0]
            mx = lw.max()
            out["ll"][j] = np.log(SQRT2 * centers[j, 2]) + mx + np.log(np.exp(lw - mx).sum())
            w = np.exp(lw - mx) / np.exp(lw - mx).sum()
            eo = np.exp(om)
            k = 1.0 / eo
            E = eo + S * lam
            b = b0 - lam * g * om
            th = g * om + S * b / E  # E[theta1 | omega, y]
            P = S * eo / E  # var[theta1 | omega, y]
            mom = [
                w @ th,
                w @ (th**2 + P),
                w @ om,
                w @ om**2,
                w @ (om * th),
                w @ k,
                w @ (k * th),
                w @ (k * (th**2 + P)),
            ]
            eS = w @ (lam / E - b * b / E**2)  # E[dF/dS]
            eg = w @ (-2.0 * b * om / E)  # E[dF/dg]
            dS = np.array([-2 * tau_l * sigma_omega**2, 2 * sigma_omega * tau_l**2]) / V**2
            dg = np.array([sigma_omega**2 - tau_l**2, -2 * tau_l * sigma_omega]) / V**2
            dV = np.array([2 * tau_l, 2 * sigma_omega])
            gr = -0.5 * (eS * dS + eg * dg) + (0.5 * mom[3] / V**2 - 0.5 / V) * dV
            grad_r[[0, 2]] = gr
        else:

            def fun(x, st=st):
                return h2(x[0], x[1], st, tau_l, tau_q, sigma_omega)

            if adapt:
                x, M = _newton(fun, centers[j, :2])
                centers[j, :2] = x
                if M[0, 0] > 0 and np.linalg.det(M) > 0:
                    L = np.linalg.cholesky(np.linalg.inv(M))
                    centers[j, 2:] = L[0, 0], L[1, 0], L[1, 1]
                else:
                    centers[j, 2:] = 1.0, 0.0, 1.0
            L = np.array([[centers[j, 2], 0.0], [centers[j, 3], centers[j, 4]]])
            xa, xb = np.meshgrid(gh_x, gh_x, indexing="ij")
            la, lb = np.meshgrid(gh_logw, gh_logw, indexing="ij")
            nodes = centers[j, :2, None] + SQRT2 * L @ np.vstack([xa.ravel(), xb.ravel()])
            u, v = nodes
            hv = np.array([fun(nd)[0] for nd in nodes.T])
            lw = (la + lb + xa**2 + xb**2).ravel() + hv
            mx = lw.max()
            out["ll"][j] = np.log(2 * L[0, 0] * L[1, 1]) + mx + np.log(np.exp(lw - mx).sum())
            w = np.exp(lw - mx) / np.exp(lw - mx).sum()
            om = tau_l * u + tau_q * u * u + sigma_omega * v
            k = np.exp(-om)
            C = st["W"] + (b0 - lam * u) ** 2 / lam
            Hd = -0.5 * n + 0.5 * k * C  # d log f(y | theta) / d omega
            mom = [
                w @ u,
                w @ u**2,
                w @ om,
                w @ om**2,
                w @ (om * u),
                w @ k,
                w @ (k * u),
                w @ (k * u * u),
            ]
            grad_r[:] = [w @ (u * Hd), w @ (u * u * Hd), w @ (v * Hd)]
        out["mom"][j] = mom
        out["grand"][j] = grad_r
        k0, k1, k2 = mom[5], mom[6], mom[7]
        r = r0[sl]
        s = np.exp(0.5 * eta_bs[sl])
        inv_d = np.exp(-eta_ws[sl])
        out["g_mu"][sl] = (k0 * r - k1 * s) * inv_d
        out["g_ws"][sl] = 0.5 * ((k0 * r * r - 2 * k1 * r * s + k2 * s * s) * inv_d - 1.0)
        out["g_bs"][sl] = 0.5 * s * (k1 * r - k2 * s) * inv_d
    out["centers"] = centers
    return out
