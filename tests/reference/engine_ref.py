"""Slow NumPy twin of the general kernel :func:`melsml._quad.engine_loglik`.

A test oracle only: the library never imports it.  It loops over groups and
quadrature nodes in Python, always sums over units (the kernel uses per-group
sufficient statistics when the scale design is constant within a group), and
must agree with the kernel to rounding error.

Model of group j (units i = 1..n)::

    y_i = mu_i + z_i' u + e_i,   e_i ~ N(0, exp(eta_i + h_i' v))
    (u, v) ~ N(0, Sigma),        u in R^q, v in R^s

The kernel takes the scale-first Cholesky factor of Sigma: ``v = Kvv xi``,
``u = Kuv xi + C zeta`` with xi, zeta independent standard normal.  Given xi
the location effects are Gaussian and integrate out exactly; xi takes s-D
adaptive Gauss-Hermite quadrature.  With ``a_i = exp(-eta_i - h_i'v)``,
``r_i = r0_i - z_i' Kuv xi``, ``Lam = sum a z z'``, ``b = sum a z r``,
``c = sum a r^2`` and ``B = I + C' Lam C``::

    log p(y | xi) = -1/2 [n log 2pi + sum (eta_i + h_i'v) + log det B + c - b'm]
    m = C B^-1 C' b,  P^-1 = C B^-1 C'      (posterior of u - Kuv xi: N(m, P^-1))

The gradient in Sigma is Price's identity, d llf / d Sigma = 1/2 E[s s' + H]
with s, H the gradient and Hessian of log p(y | u, v) in x = (u, v); the
kernel returns the posterior expectation ``Om = E[s s' + H]``.  It needs no
inverse of Sigma, so it holds on the boundary (a zero variance).
"""

from __future__ import annotations

import itertools

import numpy as np

LOG2PI = np.log(2.0 * np.pi)


def node_eval(xi, r0, eta, Z, H, w, Kvv, Kuv, C):
    """Log p(y | xi) and the posterior terms at one node of one group (unit i's
    log-density counts w_i times: the weights multiply a_i and every constant)."""
    q, s = Z.shape[1], H.shape[1]
    v = Kvv @ xi
    gx = Kuv @ xi
    hv = H @ v
    a = w * np.exp(-eta - hv)
    r = r0 - Z @ gx
    lam = (Z * a[:, None]).T @ Z
    b = Z.T @ (a * r)
    c = a @ (r * r)
    B = np.eye(q) + C.T @ lam @ C
    logdet = np.linalg.slogdet(B)[1]
    pinv = C @ np.linalg.solve(B, C.T)
    m = pinv @ b
    logp = -0.5 * (w.sum() * LOG2PI + w @ eta + w @ hv + logdet + c - b @ m)
    ehat = r - Z @ m
    qd = np.einsum("ia,ab,ib->i", Z, pinv, Z)
    rho = a * (ehat**2 + qd)
    su = b - lam @ m
    sv = -0.5 * H.T @ (w - rho)
    N = (Z * (a * ehat)[:, None]).T @ H
    M = [(Z * (a * H[:, k])[:, None]).T @ Z for k in range(s)]
    T = np.array([[np.trace(pinv @ M[k] @ pinv @ M[m2]) for m2 in range(s)] for k in range(s)])
    R = (H * rho[:, None]).T @ H
    om = np.zeros((q + s, q + s))
    om[:q, :q] = np.outer(su, su) + lam @ pinv @ lam - lam
    om[:q, q:] = np.outer(su, sv) + (lam @ pinv - np.eye(q)) @ N
    om[q:, :q] = om[:q, q:].T
    om[q:, q:] = np.outer(sv, sv) + 0.5 * T.reshape(s, s) + N.T @ pinv @ N - 0.5 * R
    return dict(
        logp=logp,
        s=np.concatenate([su, sv]),
        om=om,
        mu=gx + m,
        pinv=pinv,
        v=v,
        a=a,
        ehat=ehat,
        qd=qd,
    )


def full_node_eval(th, r0, eta, Z, H, w, L, tau_q):
    """log p(y | x) at x = L theta (+ tau_q theta0^2 on the first scale effect),
    with its gradient s and Hessian in x."""
    q, s = Z.shape[1], H.shape[1]
    x = L @ th
    if s:
        x[q] += tau_q * th[0] ** 2
    u, v = x[:q], x[q:]
    hv = H @ v
    a = w * np.exp(-eta - hv)
    e = r0 - Z @ u
    logp = -0.5 * (w.sum() * LOG2PI + w @ eta + w @ hv + a @ (e * e))
    su = Z.T @ (a * e)
    sv = -0.5 * H.T @ (w - a * e * e)
    hess = np.zeros((q + s, q + s))
    hess[:q, :q] = -(Z * a[:, None]).T @ Z
    hess[q:, :q] = -(H * (a * e)[:, None]).T @ Z
    hess[:q, q:] = hess[q:, :q].T
    hess[q:, q:] = -0.5 * (H * (a * e * e)[:, None]).T @ H
    return dict(logp=logp, s=np.concatenate([su, sv]), hess=hess, x=x, a=a, e=e)


def full_psi(th, grp, L, tau_q):
    """Log integrand over theta, its gradient and Hessian."""
    ev = full_node_eval(th, *grp, L, tau_q)
    q = grp[2].shape[1]
    d = th.size
    J = L.copy()
    if d > q:
        J[q, 0] += 2.0 * tau_q * th[0]
    val = ev["logp"] - 0.5 * th @ th - 0.5 * d * LOG2PI
    grad = J.T @ ev["s"] - th
    hess = J.T @ ev["hess"] @ J - np.eye(d)
    if d > q:
        hess[0, 0] += 2.0 * tau_q * ev["s"][q]
    return val, grad, hess


def psi(xi, grp, Kvv, Kuv, C, L=None, tau_q=0.0, full=False):
    """Log integrand over xi (theta if ``full``), its gradient and Hessian."""
    if full:
        return full_psi(xi, grp, L, tau_q)
    ev = node_eval(xi, *grp, Kvv, Kuv, C)
    J = np.vstack([Kuv, Kvv])
    s = xi.size
    val = ev["logp"] - 0.5 * xi @ xi - 0.5 * s * LOG2PI
    grad = J.T @ ev["s"] - xi
    hess = J.T @ (ev["om"] - np.outer(ev["s"], ev["s"])) @ J - np.eye(s)
    return val, grad, hess


def find_mode(xi, grp, *args):
    """Safeguarded Newton ascent (the kernel's steps)."""
    val, g, Hs = psi(xi, grp, *args)
    for _ in range(200):
        try:
            step = np.linalg.solve(
                np.linalg.cholesky(-Hs).T, np.linalg.solve(np.linalg.cholesky(-Hs), g)
            )
        except np.linalg.LinAlgError:
            step = g / (1.0 + np.linalg.norm(g))
        nrm = np.linalg.norm(step)
        if nrm > 5.0:
            step *= 5.0 / nrm
            nrm = 5.0
        t = 1.0
        for _ in range(60):
            new = psi(xi + t * step, grp, *args)
            if new[0] >= val - 1e-13 * (1.0 + abs(val)):
                break
            t *= 0.5
        xi = xi + t * step
        val, g, Hs = new
        if t * nrm < 1e-11 * (1.0 + np.abs(xi).sum()):
            break
    try:
        scale = np.linalg.cholesky(np.linalg.inv(-Hs))
    except np.linalg.LinAlgError:
        scale = np.eye(xi.size)
    return xi, scale


def engine_loglik_ref(
    r0,
    eta,
    Z,
    H,
    group_ptr,
    Kvv,
    Kuv,
    C,
    gh_x,
    gh_logw,
    centers=None,
    L=None,
    tau_q=0.0,
    full=False,
    w=None,
):
    """Per-group log-likelihood, posterior moments, gradients in L and unit gradients.

    Returns a dict with ``ll`` (J,), ``ex`` (J, d), ``exx`` (J, d, d), ``dL``
    (J, d, d), ``dtq`` (J,), ``centers`` (J, m + m*m), ``g_mu``, ``g_ws`` (n,),
    ``g_z`` (n, q); and ``om`` (J, d, d), the Price matrices, when not ``full``.
    """
    q, s = Z.shape[1], H.shape[1]
    d = q + s
    m = d if full else s
    n_groups = len(group_ptr) - 1
    args = (Kvv, Kuv, C, L, tau_q, full)
    w = np.ones(r0.size) if w is None else np.asarray(w, dtype=float)
    out = dict(
        ll=np.empty(n_groups),
        ex=np.empty((n_groups, d)),
        exx=np.empty((n_groups, d, d)),
        om=np.empty((n_groups, d, d)),
        dL=np.empty((n_groups, d, d)),
        dtq=np.zeros(n_groups),
        centers=np.empty((n_groups, m + m * m)),
        g_mu=np.empty(r0.size),
        g_ws=np.empty(r0.size),
        g_z=np.empty_like(Z),
    )
    for j in range(n_groups):
        sl = slice(group_ptr[j], group_ptr[j + 1])
        grp = (r0[sl], eta[sl], Z[sl], H[sl], w[sl])
        if m:
            start = np.zeros(m) if centers is None else centers[j, :m]
            mode, scale = find_mode(start, grp, *args)
        else:
            mode, scale = np.zeros(0), np.zeros((0, 0))
        out["centers"][j, :m] = mode
        out["centers"][j, m:] = scale.ravel()
        nodes, logw = [], []
        for idx in itertools.product(range(gh_x.size), repeat=m):
            t = gh_x[list(idx)]
            xi = mode + np.sqrt(2.0) * scale @ t
            lw = gh_logw[list(idx)].sum() + t @ t + psi(xi, grp, *args)[0]
            nodes.append(xi)
            logw.append(lw)
        logw = np.array(logw)
        mx = logw.max()
        tot = np.exp(logw - mx).sum()
        logdet = np.log(np.diag(scale)).sum() if m else 0.0
        out["ll"][j] = 0.5 * m * np.log(2.0) + logdet + mx + np.log(tot)
        wts = np.exp(logw - mx) / tot
        ex, exx, om = np.zeros(d), np.zeros((d, d)), np.zeros((d, d))
        g_mu, g_ws, g_z = 0.0, 0.0, 0.0
        zs = Z[sl]
        if full:
            dL, dtq = np.zeros((d, d)), 0.0
            for wt, th in zip(wts, nodes, strict=True):
                ev = full_node_eval(th, *grp, L, tau_q)
                x = ev["x"]
                ex += wt * x
                exx += wt * np.outer(x, x)
                dL += wt * np.tril(np.outer(ev["s"], th))
                if s:
                    dtq += wt * ev["s"][q] * th[0] ** 2
                a, e = ev["a"], ev["e"]
                g_mu = g_mu + wt * a * e
                g_ws = g_ws + wt * a * e * e
                g_z = g_z + wt * (a * e)[:, None] * x[None, :q]
            out["ex"][j], out["exx"][j], out["dL"][j], out["dtq"][j] = ex, exx, dL, dtq
            out["om"][j] = np.nan
            out["g_mu"][sl] = g_mu
            out["g_ws"][sl] = 0.5 * (g_ws - w[sl])
            out["g_z"][sl] = g_z
            continue
        for wt, xi in zip(wts, nodes, strict=True):
            ev = node_eval(xi, *grp, Kvv, Kuv, C)
            x = np.concatenate([ev["mu"], ev["v"]])
            second = np.outer(x, x)
            second[:q, :q] += ev["pinv"]
            ex += wt * x
            exx += wt * second
            om += wt * ev["om"]
            a, eh = ev["a"], ev["ehat"]
            g_mu = g_mu + wt * a * eh
            g_ws = g_ws + wt * a * (eh**2 + ev["qd"])
            g_z = g_z + wt * a[:, None] * (eh[:, None] * ev["mu"][None, :] - zs @ ev["pinv"])
        out["ex"][j], out["exx"][j], out["om"][j] = ex, exx, om
        if L is not None:
            out["dL"][j] = np.tril(om @ L)
        out["g_mu"][sl] = g_mu
        out["g_ws"][sl] = 0.5 * (g_ws - w[sl])
        out["g_z"][sl] = g_z
    return out


def brute_loglik(r0, eta, Z, H, sigma, n_points=60):
    """log of the integral over *all* random effects (u, v) of one group.

    A plain (non-adaptive) product Gauss-Hermite rule in the whitened effects
    x = Sigma^(1/2) t, with no exact integration over u; for small groups and
    q + s <= 3 only.
    """
    from numpy.polynomial.hermite import hermgauss

    q = Z.shape[1]
    d = sigma.shape[0]
    w, vec = np.linalg.eigh(sigma)
    root = vec * np.sqrt(np.clip(w, 0.0, None))
    x, wt = hermgauss(n_points)
    t = np.sqrt(2.0) * np.array(list(itertools.product(x, repeat=d)))  # (P, d)
    logw = np.log(np.array(list(itertools.product(wt, repeat=d)))).sum(axis=1)
    eff = t @ root.T
    u, v = eff[:, :q], eff[:, q:]
    logvar = eta[None, :] + v @ H.T  # (P, n)
    res = r0[None, :] - u @ Z.T
    logs = logw - 0.5 * (
        r0.size * LOG2PI + logvar.sum(axis=1) + (res**2 * np.exp(-logvar)).sum(axis=1)
    )
    mx = logs.max()
    return mx + np.log(np.exp(logs - mx).sum()) - 0.5 * d * np.log(np.pi)
