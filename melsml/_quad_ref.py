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


# ---------------------------------------------------------------------------------------------
# Several random location effects (random slopes): x = (u, omega) = L theta, theta ~ N(0, I)
#
#   L = [[A, 0], [lo', lw]]   A: q x q lower triangular, lo: (q,), lw: scalar
#   y_i = mu_i + z_i' u + e_i,   e_i ~ N(0, d_i exp(omega))
#
# Exact location (mode 1): omega ~ N(0, V), V = lo'lo + lw^2; u | omega ~ N(g omega, S) with
# a = A lo, g = a / V, S = A A' - a a' / V = R R',  R = A (I - c lo lo'),
# c = (1 - |lw| / sqrt(V)) / lo'lo.  Given omega, with kappa = exp(-omega), b = b0 - lam g omega,
# h = R'b, M = I + kappa R' lam R:
#   -2 log f(y | omega) = n log 2pi + sum log d + n omega + log det M
#                         + kappa c(omega) - kappa^2 h' M^-1 h,
#   c(omega) = A_sum - 2 omega g'b0 + omega^2 g' lam g.
# The posterior of u given omega is N(m, Pt) with Pt = R M^-1 R', m = g omega + kappa Pt b.
# ---------------------------------------------------------------------------------------------


def multi_stats(r0, eta_ws, Z):
    """Sufficient statistics of one group with q random location effects."""
    inv_d = np.exp(-eta_ws)
    lam = (Z * inv_d[:, None]).T @ Z
    b0 = Z.T @ (r0 * inv_d)
    return dict(
        n=float(r0.size),
        sumlogd=float(eta_ws.sum()),
        lam=lam,
        b0=b0,
        A=float(np.sum(r0 * r0 * inv_d)),
    )


def split_chol(L, q):
    """Blocks (A, lo, lw) of the lower-triangular factor of cov(u, omega)."""
    L = np.asarray(L, dtype=float)
    if L.shape == (q, q):
        return L, np.zeros(q), 0.0
    return L[:q, :q], L[q, :q].copy(), float(L[q, q])


def exact_location_terms(A, lo, lw):
    """V, g, R of the exact-location path (see the block comment above)."""
    V = float(lo @ lo + lw * lw)
    a = A @ lo
    g = a / V
    t = float(lo @ lo)
    c = (1.0 - abs(lw) / np.sqrt(V)) / t if t > 0 else 0.0
    R = A @ (np.eye(len(lo)) - c * np.outer(lo, lo))
    return V, a, g, R


def multi_given_omega(om, st, g, R):
    """log f(y | omega) and the Gaussian posterior of u given omega."""
    q = len(st["b0"])
    k = np.exp(-om)
    lam = st["lam"]
    b = st["b0"] - lam @ g * om
    M = np.eye(q) + k * R.T @ lam @ R
    Mi = np.linalg.inv(M)
    h = R.T @ b
    c = st["A"] - 2 * om * g @ st["b0"] + om * om * g @ lam @ g
    logf = -0.5 * (
        st["n"] * LOG2PI
        + st["sumlogd"]
        + st["n"] * om
        + np.linalg.slogdet(M)[1]
        + k * c
        - k * k * h @ Mi @ h
    )
    Pt = R @ Mi @ R.T
    m = g * om + k * Pt @ b
    return logf, m, Pt, b, k


def multi_h1(om, st, V, g, R):
    """Log integrand over omega, with d/domega (analytic) and d2 (difference of d1)."""

    def value_d1(w):
        logf, m, Pt, b, k = multi_given_omega(w, st, g, R)
        # d log f / d omega = -1/2 (n - k tr(Pt lam)) + k g'(I - k lam Pt) b
        #                     + 1/2 (k c - 2 k^2 b'Pt b + k^3 b'Pt lam Pt b)
        lam = st["lam"]
        c = st["A"] - 2 * w * g @ st["b0"] + w * w * g @ lam @ g
        d1 = (
            -0.5 * (st["n"] - k * np.trace(Pt @ lam))
            + k * g @ (b - k * lam @ Pt @ b)
            + 0.5 * (k * c - 2 * k * k * b @ Pt @ b + k**3 * b @ Pt @ lam @ Pt @ b)
        )
        return (logf - 0.5 * w * w / V - 0.5 * np.log(2 * np.pi * V), d1 - w / V)

    h, d1 = value_d1(om)
    e = 1e-4 * (1.0 + abs(om))
    d2 = (value_d1(om + e)[1] - value_d1(om - e)[1]) / (2 * e)
    return h, d1, d2


def multi_h_theta(theta, st, L, q):
    """Log integrand over standardised theta (q + 1 dims), gradient and Hessian."""
    x = L @ theta
    u, om = x[:q], x[q]
    k = np.exp(-om)
    lam, b0 = st["lam"], st["b0"]
    C = st["A"] - 2 * u @ b0 + u @ lam @ u
    s = np.append(k * (b0 - lam @ u), -0.5 * st["n"] + 0.5 * k * C)
    H = np.zeros((q + 1, q + 1))
    H[:q, :q] = -k * lam
    H[:q, q] = H[q, :q] = -s[:q]
    H[q, q] = -0.5 * k * C
    h = (
        -0.5 * (st["n"] * LOG2PI + st["sumlogd"] + st["n"] * om + k * C)
        - 0.5 * theta @ theta
        - 0.5 * (q + 1) * LOG2PI
    )
    return h, L.T @ s - theta, L.T @ H @ L - np.eye(q + 1), s


def group_loglik_multi_ref(
    r0, eta_ws, Z, group_ptr, mode, L, gh_x, gh_logw, centers=None, adapt=True
):
    """Twin of :func:`melsml._quad.group_loglik_multi`: per-group log-likelihood,
    posterior moments, gradient in L, and the gradient in the linear predictors."""
    Z = np.asarray(Z, dtype=float)
    q = Z.shape[1]
    A, lo, lw = split_chol(L, q)
    d = q + 1
    n_groups = len(group_ptr) - 1
    centers = np.zeros((n_groups, d + d * d)) if centers is None else np.array(centers, dtype=float)
    out = dict(
        ll=np.zeros(n_groups),
        eu=np.zeros((n_groups, q)),
        euu=np.zeros((n_groups, q, q)),
        eom=np.zeros(n_groups),
        eom2=np.zeros(n_groups),
        euom=np.zeros((n_groups, q)),
        k0=np.zeros(n_groups),
        k1=np.zeros((n_groups, q)),
        k2=np.zeros((n_groups, q, q)),
        dL=np.zeros((n_groups, d, d)),
        g_mu=np.zeros(len(r0)),
        g_ws=np.zeros(len(r0)),
    )
    if mode == 1:
        V, a, g, R = exact_location_terms(A, lo, lw)
    for j in range(n_groups):
        sl = slice(group_ptr[j], group_ptr[j + 1])
        st = multi_stats(r0[sl], eta_ws[sl], Z[sl])
        lam = st["lam"]
        if mode == 0:
            logf, m, Pt, b, k = multi_given_omega(0.0, st, np.zeros(q), A)
            out["ll"][j] = logf
            eu, euu, k0, k1, k2 = m, Pt + np.outer(m, m), 1.0, m, Pt + np.outer(m, m)
            eom = eom2 = 0.0
            euom = np.zeros(q)
            w = b - lam @ Pt @ b
            GS = 0.5 * (np.outer(w, w) - (lam - lam @ Pt @ lam))
            dL = np.zeros((d, d))
            dL[:q, :q] = 2 * GS @ A
            centers[j, :d] = 0.0
        elif mode == 1:
            if adapt:

                def fun1(x, st=st):
                    h, d1, d2 = multi_h1(x[0], st, V, g, R)
                    return h, np.atleast_1d(d1), np.atleast_2d(d2)

                x, Mneg = _newton(fun1, centers[j, 0])
                centers[j, 0] = x[0]
                centers[j, d] = 1.0 / np.sqrt(Mneg[0, 0]) if Mneg[0, 0] > 0 else np.sqrt(V)
            sd = centers[j, d]
            oms = centers[j, 0] + SQRT2 * sd * gh_x
            lw_k = np.array(
                [
                    gh_logw[i] + gh_x[i] ** 2 + multi_h1(oms[i], st, V, g, R)[0]
                    for i in range(len(gh_x))
                ]
            )
            mx = lw_k.max()
            out["ll"][j] = np.log(SQRT2 * sd) + mx + np.log(np.exp(lw_k - mx).sum())
            wts = np.exp(lw_k - mx) / np.exp(lw_k - mx).sum()
            eu, euu, eom, eom2, euom = np.zeros(q), np.zeros((q, q)), 0.0, 0.0, np.zeros(q)
            k0, k1, k2 = 0.0, np.zeros(q), np.zeros((q, q))
            GS, Gg = np.zeros((q, q)), np.zeros(q)
            for wt, om in zip(wts, oms, strict=True):
                _, m, Pt, b, k = multi_given_omega(om, st, g, R)
                mm = Pt + np.outer(m, m)
                eu += wt * m
                euu += wt * mm
                eom += wt * om
                eom2 += wt * om * om
                euom += wt * om * m
                k0 += wt * k
                k1 += wt * k * m
                k2 += wt * k * mm
                w = k * (b - k * lam @ Pt @ b)
                GS += wt * 0.5 * (np.outer(w, w) - (k * lam - k * k * lam @ Pt @ lam))
                Gg += wt * w * om
            xi = (-2 * GS @ a + Gg) / V
            nu = (a @ GS @ a - Gg @ a) / V**2 + eom2 / (2 * V**2) - 1 / (2 * V)
            dL = np.zeros((d, d))
            dL[:q, :q] = 2 * GS @ A + np.outer(xi, lo)
            dL[q, :q] = A.T @ xi + 2 * nu * lo
            dL[q, q] = 2 * nu * lw
        else:

            def fun(t, st=st):
                h, gr, H, _ = multi_h_theta(t, st, L, q)
                return h, gr, H

            if adapt:
                x, Mneg = _newton(fun, centers[j, :d])
                centers[j, :d] = x
                try:
                    Lc = np.linalg.cholesky(np.linalg.inv(Mneg))
                except np.linalg.LinAlgError:
                    Lc = np.eye(d)
                centers[j, d:] = Lc.ravel()
            Lc = centers[j, d:].reshape(d, d)
            grids = np.meshgrid(*([gh_x] * d), indexing="ij")
            wgrids = np.meshgrid(*([gh_logw] * d), indexing="ij")
            X = np.vstack([gr.ravel() for gr in grids])
            base = sum(wg.ravel() for wg in wgrids) + (X**2).sum(axis=0)
            thetas = centers[j, :d, None] + SQRT2 * Lc @ X
            hv = np.array([multi_h_theta(t, st, L, q)[0] for t in thetas.T])
            lw_k = base + hv
            mx = lw_k.max()
            out["ll"][j] = (
                0.5 * d * np.log(2.0)
                + np.log(np.prod(np.diag(Lc)))
                + mx
                + np.log(np.exp(lw_k - mx).sum())
            )
            wts = np.exp(lw_k - mx) / np.exp(lw_k - mx).sum()
            eu, euu, eom, eom2, euom = np.zeros(q), np.zeros((q, q)), 0.0, 0.0, np.zeros(q)
            k0, k1, k2 = 0.0, np.zeros(q), np.zeros((q, q))
            dL = np.zeros((d, d))
            for wt, t in zip(wts, thetas.T, strict=True):
                x = L @ t
                u, om = x[:q], x[q]
                k = np.exp(-om)
                eu += wt * u
                euu += wt * np.outer(u, u)
                eom += wt * om
                eom2 += wt * om * om
                euom += wt * om * u
                k0 += wt * k
                k1 += wt * k * u
                k2 += wt * k * np.outer(u, u)
                s = multi_h_theta(t, st, L, q)[3]
                dL += wt * np.outer(s, t)
            dL = np.tril(dL)
        out["eu"][j], out["euu"][j], out["eom"][j], out["eom2"][j] = eu, euu, eom, eom2
        out["euom"][j], out["k0"][j], out["k1"][j], out["k2"][j] = euom, k0, k1, k2
        out["dL"][j] = np.tril(dL)
        r, z = r0[sl], Z[sl]
        inv_d = np.exp(-eta_ws[sl])
        zk1 = z @ k1
        out["g_mu"][sl] = (k0 * r - zk1) * inv_d
        quad = np.einsum("ij,jk,ik->i", z, k2, z)
        out["g_ws"][sl] = 0.5 * ((k0 * r * r - 2 * r * zk1 + quad) * inv_d - 1.0)
    out["centers"] = centers
    return out
