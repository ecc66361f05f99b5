"""The likelihood of the multivariate (several outcomes) MELS model.

Outcomes m = 1..M of student i in school j:

    y_ijm = x_ijm' beta_m + u_jm + e_ijm,   e_ij ~ N(0, D^(1/2) R D^(1/2)),
    D_ij = diag(exp(w_ijm' tau_m + v_jm)),

with R a correlation matrix and the 2M school effects x_j = (u_j, v_j)
normal with covariance Sigma = L L' (location effects first).  A student's
missing outcomes are left out of his residual vector.

Given the scale effects the data are Gaussian and the location effects
integrate exactly.  Because v_jm scales whole rows and columns of each
student's residual precision P_i = K G_i K (K = diag(exp(-v_j / 2)),
G_i[m, l] = exp(-(eta_im + eta_il) / 2) R_o^-1[m, l] for the student's
pattern o of observed outcomes), three M x M sums per school,

    Lam0 = sum_i G_i,   B0[m, l] = sum_i G_i[m, l] r0_il,
    A0[m, l] = sum_i G_i[m, l] r0_im r0_il    (r0 = y - x'beta),

give log p(y_j | v_j) in O(M^3) whatever the school's size.  The scale
effects take M-dimensional adaptive Gauss-Hermite quadrature (product rule)
over their standardised values xi (v = Kvv xi, u = Kuv xi + C zeta), every
school at once.  The score follows from Fisher's identity: posterior
expectations of the complete-data score, formed from a few posterior moments
per school and one pass over the students.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import numpy as np

from . import _mv
from .likelihood import scale_first_factor
from .measures import grid_weights
from .mvdesign import MultiDesign
from .mvparams import MultiLayout
from .quadrature import gauss_hermite, sparse_hermite

LOG2PI = float(np.log(2 * np.pi))


@dataclass
class MultiEvaluation:
    """Log-likelihood (and score) at ``theta``.

    Attributes
    ----------
    llf : float
    score : (k,) or None
    ll_groups : (n_groups,)
    score_groups : (n_groups, k) or None
    ex, exx : (n_groups, 2M), (n_groups, 2M, 2M) posterior moments of (u, v)
    """

    theta: np.ndarray
    llf: float
    score: np.ndarray | None
    ll_groups: np.ndarray
    score_groups: np.ndarray | None
    ex: np.ndarray
    exx: np.ndarray


class MultiObjective:
    """Log-likelihood and score of a multivariate MELS model.

    Parameters
    ----------
    design : MultiDesign
    layout : MultiLayout
    n_points : int
        Gauss-Hermite points per scale dimension.
    """

    def __init__(
        self,
        design: MultiDesign,
        layout: MultiLayout,
        n_points: int,
        sparse_level: int = 0,
        n_threads: int = 0,
    ):
        self.design = design
        self.n_threads = n_threads
        self.layout = layout
        self.n_points = n_points
        m = design.n_outcomes
        if sparse_level and layout.random_scale:
            nodes, weights = sparse_hermite(m, sparse_level)
            self._nodes = nodes
            self._node_sign = np.sign(weights)
            self._node_lw = np.log(np.abs(weights)) + (nodes**2).sum(axis=1)
        else:
            # without random scale effects the integrand over xi is the standard
            # normal density times p(y): the one-point rule is exact
            x, logw = gauss_hermite(n_points if layout.random_scale else 1)
            grid = np.array(list(product(range(len(x)), repeat=m)), dtype=int)
            self._nodes = x[grid]  # (Q, M)
            self._node_lw = (logw[grid] + x[grid] ** 2).sum(axis=1)  # (Q,)
            self._node_sign = np.ones(len(grid))
        self._centers = np.zeros((design.n_groups, m))
        self._scales = np.tile(np.eye(m), (design.n_groups, 1, 1))
        self._pattern = np.ascontiguousarray(design.pattern, dtype=np.intp)
        starts = design.group_ptr[:-1]
        self._nm = np.add.reduceat(design.observed.astype(float), starts, axis=0)
        # students of each school by pattern of observed outcomes
        self._n_pattern = np.add.reduceat(
            (design.pattern[:, None] == np.arange(len(design.patterns))).astype(float),
            starts,
            axis=0,
        )
        self.n_evals = 0

    def reset_counter(self) -> None:
        self.n_evals = 0

    # ---------------------------------------------------------------- the sums
    def _sums(self, p: dict) -> dict:
        d = self.design
        m = d.n_outcomes
        mean = np.column_stack([d.x_mean[k] @ p["beta"][k] for k in range(m)])
        eta = np.column_stack([d.x_ws[k] @ p["tau"][k] for k in range(m)])
        obs = d.observed
        r0 = np.where(obs, d.y_filled - mean, 0.0)
        eta = np.where(obs, eta, 0.0)
        e = np.where(obs, np.exp(-0.5 * eta), 0.0)
        rinv, logdet = _pattern_inverses(p["R"], d.patterns)
        starts = d.group_ptr[:-1]
        n_obs = obs.sum(axis=1)
        unit_const = -0.5 * (eta.sum(axis=1) + logdet[d.pattern] + n_obs * LOG2PI)
        j = d.n_groups
        lam0, b0, a0 = (np.empty((j, m, m)) for _ in range(3))
        r0, e = np.ascontiguousarray(r0), np.ascontiguousarray(e)
        _mv.mv_sums(r0, e, rinv, self._pattern, d.group_ptr, lam0, b0, a0, self.n_threads)
        return dict(
            r0=r0,
            e=e,
            rinv=rinv,
            lam0=lam0,
            b0=b0,
            a0=a0,
            nm=self._nm,
            const=np.add.reduceat(unit_const, starts),
        )

    # ---------------------------------------------------------------- one point
    def _point(self, xi: np.ndarray, S: dict, F: tuple, grad: bool = True) -> dict:
        """The log integrand at ``xi`` (n_groups, M) per group, with the normal
        posterior of u given xi and (``grad``) the gradient in xi."""
        kvv, kuv, c = F
        m = xi.shape[1]
        v = xi @ kvv.T
        g = xi @ kuv.T
        kap = np.exp(-0.5 * v)
        kk = kap[:, :, None] * kap[:, None, :]
        lam = kk * S["lam0"]
        b = kap * (S["b0"] @ kap[:, :, None])[..., 0]
        a = (kk * S["a0"]).sum(axis=(1, 2))
        lam_g = (lam @ g[:, :, None])[..., 0]
        cg = a - 2 * (g * b).sum(axis=1) + (g * lam_g).sum(axis=1)
        bm = np.eye(m) + c.T @ lam @ c
        binv = np.linalg.inv(bm)
        bt = (b - lam_g) @ c
        sol = (binv @ bt[:, :, None])[..., 0]
        logdet = np.linalg.slogdet(bm)[1]
        logp = (
            S["const"]
            - 0.5 * (S["nm"] * v).sum(axis=1)
            - 0.5 * logdet
            - 0.5 * (cg - (bt * sol).sum(axis=1))
        )
        logpsi = logp - 0.5 * (xi * xi).sum(axis=1) - 0.5 * m * LOG2PI
        mu = g + sol @ c.T
        pinv = c @ binv @ c.T
        out = dict(logpsi=logpsi, v=v, kk=kk, mu=mu, pinv=pinv, lam=lam, b=b)
        if grad:
            s_u, s_v = self._node_scores(out, S)
            out["grad"] = s_v @ kvv + s_u @ kuv - xi
        return out

    @staticmethod
    def _node_scores(pt: dict, S: dict) -> tuple[np.ndarray, np.ndarray]:
        """E[d log p(y | u, v) / d u] and E[... / d v] given xi (u normal)."""
        mu, kk = pt["mu"], pt["kk"]
        s_u = pt["b"] - np.einsum("jml,jl->jm", pt["lam"], mu)
        uu = mu[:, :, None] * mu[:, None, :] + pt["pinv"]
        b0 = S["b0"]
        eq = S["a0"] - mu[:, :, None] * b0 - mu[:, None, :] * np.swapaxes(b0, 1, 2)
        eq = eq + uu * S["lam0"]
        s_v = -0.5 * S["nm"] + 0.5 * np.einsum("jml,jml->jm", kk, eq)
        return s_u, s_v

    # ---------------------------------------------------------------- placement
    def _place(self, S: dict, F: tuple) -> None:
        """Mode of each group's log integrand in xi (Newton with step halving,
        Hessian from differences of the analytic gradient) and the Cholesky
        factor of the inverse negative Hessian there."""
        m = self.design.n_outcomes
        xi = self._centers.copy()
        pt = self._point(xi, S, F)
        hess = None
        for _ in range(100):
            hess = self._hessian(xi, pt["grad"], S, F)
            neg = -hess
            ok = np.all(np.linalg.eigvalsh(neg) > 1e-12, axis=1)
            step = np.where(
                ok[:, None],
                np.linalg.solve(np.where(ok[:, None, None], neg, np.eye(m)), pt["grad"][..., None])[
                    ..., 0
                ],
                pt["grad"] / (1.0 + np.linalg.norm(pt["grad"], axis=1, keepdims=True)),
            )
            norm = np.linalg.norm(step, axis=1, keepdims=True)
            step = np.where(norm > 5.0, step * 5.0 / np.maximum(norm, 1e-300), step)
            t = np.ones(len(xi))
            new = self._point(xi + t[:, None] * step, S, F)
            for _ in range(40):
                bad = ~(new["logpsi"] >= pt["logpsi"] - 1e-13 * (1 + np.abs(pt["logpsi"])))
                if not bad.any():
                    break
                t = np.where(bad, 0.5 * t, t)
                new = self._point(xi + t[:, None] * step, S, F)
            xi = xi + t[:, None] * step
            pt = new
            if np.all(t * np.linalg.norm(step, axis=1) < 1e-11 * (1 + np.abs(xi).sum(axis=1))):
                break
        hess = self._hessian(xi, pt["grad"], S, F)
        cov = np.linalg.inv(-hess)
        cov = 0.5 * (cov + np.swapaxes(cov, 1, 2))
        try:
            scale = np.linalg.cholesky(cov)
        except np.linalg.LinAlgError:
            scale = np.tile(np.eye(m), (len(xi), 1, 1))
        self._centers = xi
        self._scales = scale

    def _hessian(self, xi, grad, S, F) -> np.ndarray:
        m = xi.shape[1]
        h = 1e-5 * (1 + np.abs(xi))
        cols = []
        for a in range(m):
            step = np.zeros_like(xi)
            step[:, a] = h[:, a]
            cols.append((self._point(xi + step, S, F)["grad"] - grad) / h[:, [a]])
        hess = np.stack(cols, axis=2)
        return 0.5 * (hess + np.swapaxes(hess, 1, 2))

    # ---------------------------------------------------------------- evaluate
    def _placed(self, theta: np.ndarray) -> tuple[dict, dict, np.ndarray, tuple]:
        """Parameters, school sums, Sigma and its scale-first factor at
        ``theta``, with every school's node placement found."""
        p = self.layout.unpack(theta)
        S = self._sums(p)
        sigma = p["L"] @ p["L"].T
        F = scale_first_factor(sigma, self.design.n_outcomes)
        self._place(S, F)
        return p, S, sigma, F

    def _at_points(self, z: np.ndarray, S: dict, F: tuple) -> dict:
        """The integrand at the placed points centre + scale z of every school
        (z: (P, M) standardised offsets), in one batched call; arrays are
        (n_groups, P, ...)."""
        j, m = self._centers.shape
        pts = self._centers[:, None, :] + np.einsum("jab,pb->jpa", self._scales, z)
        n_p = pts.shape[1]
        rep = {k: np.repeat(S[k], n_p, axis=0) for k in ("lam0", "b0", "a0", "nm", "const")}
        pt = self._point(pts.reshape(j * n_p, m), rep, F, grad=False)
        return {k: v.reshape((j, n_p) + v.shape[1:]) for k, v in pt.items()}

    def evaluate(self, theta: np.ndarray, score: bool = True) -> MultiEvaluation:
        """Log-likelihood (and score) at ``theta``."""
        d = self.design
        m = d.n_outcomes
        p, S, sigma, F = self._placed(theta)
        lwd = 0.5 * m * np.log(2.0) + np.log(np.diagonal(self._scales, axis1=1, axis2=2)).sum(1)
        pt = self._at_points(np.sqrt(2.0) * self._nodes, S, F)
        logw = pt["logpsi"] + self._node_lw
        top = logw.max(axis=1, keepdims=True)
        w = self._node_sign * np.exp(logw - top)  # a sparse grid has negative weights
        tot = w.sum(axis=1)
        if np.any(tot <= 0):
            raise FloatingPointError(
                "the sparse grid's integral is not positive for some school: use the "
                "product rule (integration='product')"
            )
        ll = top[:, 0] + np.log(tot) + lwd
        w /= tot[:, None]
        self.n_evals += 1
        # posterior moments of (u, v) and of kappa_m kappa_l (u_m, u_l)
        mu, pinv = pt["mu"], pt["pinv"]
        x = np.concatenate([mu, pt["v"]], axis=2)
        ex = np.einsum("jq,jqa->ja", w, x)
        exx = np.einsum("jq,jqa,jqb->jab", w, x, x)
        exx[:, :m, :m] += np.einsum("jq,jqab->jab", w, pinv)
        k0 = k1 = k2 = None
        if score:
            kk = w[:, :, None, None] * pt["kk"]
            k0 = kk.sum(axis=1)
            k1 = np.einsum("jqml,jql->jml", kk, mu)
            k2 = np.einsum("jqml,jqm,jql->jml", kk, mu, mu) + np.einsum("jqml,jqml->jml", kk, pinv)
        sg = None
        if score:
            sg = self._score_groups(p, S, sigma, exx, k0, k1, k2)
        return MultiEvaluation(
            theta=np.array(theta, dtype=float),
            llf=float(ll.sum()),
            score=None if sg is None else sg.sum(axis=0),
            ll_groups=ll,
            score_groups=sg,
            ex=ex,
            exx=exx,
        )

    def _score_groups(self, p, S, sigma, exx, k0, k1, k2) -> np.ndarray:
        """(n_groups, k) per-group scores by Fisher's identity."""
        d, lay = self.design, self.layout
        m = d.n_outcomes
        n = d.n_obs
        g_mu, g_ws = np.empty((n, m)), np.empty((n, m))
        ss = np.empty((d.n_groups, len(d.patterns), m, m))
        _mv.mv_unit_scores(S["r0"], S["e"], S["rinv"], self._pattern, d.group_ptr,
                           k0, k1, k2, g_mu, g_ws, ss, self.n_threads)  # fmt: skip
        starts = d.group_ptr[:-1]
        blocks = []
        for k in range(m):
            blocks.append(np.add.reduceat(d.x_mean[k] * g_mu[:, [k]], starts, axis=0))
        for k in range(m):
            blocks.append(np.add.reduceat(d.x_ws[k] * g_ws[:, [k]], starts, axis=0))
        # residual correlations: d l / d R = (R_o^-1 T_o R_o^-1 - n_o R_o^-1) / 2 per pattern
        if lay.n_corr:
            rinv, n_pat = S["rinv"], self._n_pattern
            per_group = 0.5 * (
                np.einsum("kab,jkbc,kcd->jad", rinv, ss, rinv)
                - np.einsum("jk,kab->jab", n_pat, rinv)
            )
            blocks.append(np.einsum("jab,kab->jk", per_group, lay.corr_jacobian(p["R_raw"])))
        # random effects: d l / d Sigma = (Sigma^-1 E[x x'] Sigma^-1 - Sigma^-1) / 2
        sinv = np.zeros_like(sigma)
        if lay.random_scale:
            try:
                sinv = np.linalg.inv(sigma)
            except np.linalg.LinAlgError:  # a variance exactly 0: the generalised inverse
                sinv = np.linalg.pinv(sigma)
        else:  # the scale effects are 0: the location block's inverse
            sinv[:m, :m] = np.linalg.inv(sigma[:m, :m])
        dsig = 0.5 * (np.einsum("ab,jbc,cd->jad", sinv, exx, sinv) - sinv)
        dL = 2 * np.einsum("jab,bc->jac", dsig, p["L"])[:, lay.order, :]
        rows, cols = lay.l_entries
        blocks.append(dL[:, rows, cols])
        return np.hstack(blocks)

    # ---------------------------------------------------------------- EB grid
    def posterior_grid(self, theta: np.ndarray) -> dict[str, np.ndarray]:
        """Each school's posterior on a grid over its standardised scale effects
        around the adaptive placement (mode + scale z; z on +-9 in 241 steps for
        one outcome, +-6 in 41 per axis for two, +-5 in 15 for three), with the
        location effects normal at each point.

        Returns ``w`` (n_groups, P) weights, ``v`` (n_groups, P, M) scale
        effects, ``mu`` and ``pinv`` the normal posterior of u at each point.
        """
        m = self.design.n_outcomes
        _, S, _, F = self._placed(theta)
        n_pts, half = {1: (241, 9.0), 2: (41, 6.0)}.get(m, (15, 5.0))
        axis = np.linspace(-half, half, n_pts)
        pt = self._at_points(np.array(list(product(axis, repeat=m))), S, F)
        return dict(w=grid_weights(pt["logpsi"]), v=pt["v"], mu=pt["mu"], pinv=pt["pinv"])

    # ---------------------------------------------------------------- wrappers
    def loglike(self, theta: np.ndarray) -> float:
        return self.evaluate(theta, score=False).llf

    def score(self, theta: np.ndarray) -> np.ndarray:
        return self.evaluate(theta).score

    def score_groups(self, theta: np.ndarray) -> np.ndarray:
        return self.evaluate(theta).score_groups


def _pattern_inverses(R: np.ndarray, patterns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """R_o^-1 zero-padded to M x M and log det R_o for each observed pattern."""
    n_pat, m = patterns.shape
    rinv = np.zeros((n_pat, m, m))
    logdet = np.zeros(n_pat)
    for k, pat in enumerate(patterns):
        idx = np.flatnonzero(pat)
        if idx.size == 0:
            continue
        sub = R[np.ix_(idx, idx)]
        rinv[k][np.ix_(idx, idx)] = np.linalg.inv(sub)
        logdet[k] = np.linalg.slogdet(sub)[1]
    return rinv, logdet
