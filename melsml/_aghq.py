"""The full-AGHQ plan: (q + s)-dimensional adaptive Gauss-Hermite quadrature over
all random effects, for the quadratic association and as a check on the
exact-location plan.  One random scale effect (s = 1)."""

from __future__ import annotations

import numpy as np

from . import _quad
from .exceptions import MELSInputError

_MODE_AGHQ = 2


def evaluate_aghq(obj, theta, *, score: bool, adapt: bool, centers):
    """Evaluate ``obj`` (a MELSObjective whose plan is "aghq") at ``theta``."""
    from .likelihood import Evaluation

    d, lay = obj.design, obj.layout
    st = lay.structure
    if st.s != 1:
        raise MELSInputError(
            "integration='aghq' is available with one random scale effect; with "
            f"{st.s} (ws_re_formula) use integration='exact-location'"
        )
    p = lay.unpack(theta)
    r0 = np.ascontiguousarray(d.y - obj._x_mean @ p["beta"])
    eta_ws = np.ascontiguousarray(obj._x_ws @ p["tau"])
    j, n, q = d.n_groups, d.n_obs, st.q
    cen = obj._centers if centers is None else np.array(centers, dtype=float, order="C")
    g_mu, g_ws = np.empty(n), np.empty(n)
    ll = np.empty(j)
    if st.bs:
        eta_bs = np.ascontiguousarray(obj._x_bs @ p["alpha"])
        mom, grand, g_bs = np.empty((j, 8)), np.empty((j, 3)), np.empty(n)
        _quad.group_loglik(
            r0, eta_ws, eta_bs, d.group_ptr, _MODE_AGHQ, p["tau_l"], p["tau_q"],
            p["sigma_omega"], obj.gh_x, obj.gh_logw, ll, mom, grand, cen, g_mu, g_ws, g_bs,
            obj._work, adapt=adapt, compute_grad=score,
        )  # fmt: skip
        by_name = {"tau_l": grand[:, 0], "tau_q": grand[:, 1], "sigma_omega": grand[:, 2]}
        grad_random = (
            np.column_stack([by_name[nm] for nm in lay.random]) if lay.random else np.zeros((j, 0))
        )
        ex = np.column_stack([mom[:, 0], mom[:, 2]])
        exx = np.empty((j, 2, 2))
        exx[:, 0, 0], exx[:, 1, 1] = mom[:, 1], mom[:, 3]
        exx[:, 0, 1] = exx[:, 1, 0] = mom[:, 4]
        moments = mom
    else:
        dim = q + 1
        post = dict(
            eu=np.empty((j, q)), euu=np.empty((j, q, q)), eom=np.empty(j),
            eom2=np.empty(j), euom=np.empty((j, q)),
        )  # fmt: skip
        k0, k1, k2 = np.empty(j), np.empty((j, q)), np.empty((j, q, q))
        dL = np.empty((j, dim, dim))
        _quad.group_loglik_multi(
            r0, eta_ws, obj._x_re, d.group_ptr, _MODE_AGHQ, np.ascontiguousarray(p["L"]),
            obj.gh_x, obj.gh_logw, ll, post["eu"], post["euu"], post["eom"], post["eom2"],
            post["euom"], k0, k1, k2, dL, cen, g_mu, g_ws, adapt=adapt, compute_grad=score,
        )  # fmt: skip
        grad_random = lay.chol_gradient(dL)
        g_bs = None
        ex = np.column_stack([post["eu"], post["eom"]])
        exx = np.empty((j, dim, dim))
        exx[:, :q, :q] = post["euu"]
        exx[:, :q, q] = exx[:, q, :q] = post["euom"]
        exx[:, q, q] = post["eom2"]
        moments = None
    obj.n_evals += 1
    grad = None
    if score:
        blocks = [obj._x_mean.T @ g_mu]
        if st.bs:
            blocks.append(obj._x_bs.T @ g_bs)
        blocks += [obj._x_ws.T @ g_ws, grad_random.sum(axis=0)]
        grad = np.concatenate(blocks)
    return Evaluation(
        theta=np.array(theta, dtype=float),
        llf=float(ll.sum()),
        score=grad,
        ll_groups=ll,
        centers=cen.copy(),
        ex=ex,
        exx=exx,
        grad_mu=g_mu if score else None,
        grad_ws=g_ws if score else None,
        grad_bs=g_bs if score else None,
        grad_random=grad_random,
        moments=moments,
    )
