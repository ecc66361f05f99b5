"""Random-intercept generalised linear models by maximum likelihood, the
intercepts integrated by adaptive Gauss-Hermite quadrature: Poisson
regression (a multilevel count stage 2) and the multinomial logit with
correlated random intercepts (a multilevel nominal stage 2,
:class:`MultinomialRandomIntercept`).

    y_ij | b_j ~ Poisson(exp(x_ij' beta + sigma b_j)),   b_j ~ N(0, 1)

Each group's integral is taken with ``n_points`` Gauss-Hermite nodes centred
at the mode of its integrand and scaled by its curvature there (as lme4's
``glmer(nAGQ=)``).  The score is the quadrature estimate of Fisher's
identity (the posterior expectation of the complete-data score); the
Hessian for the standard errors comes from forward differences of the score.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize, sparse, special

from .exceptions import MELSInputError
from .optimize import numerical_hessian
from .quadrature import gauss_hermite


@dataclass(frozen=True)
class GLMMFit:
    """``params`` (beta..., sigma), ``cov`` (their covariance), ``llf``."""

    params: np.ndarray
    cov: np.ndarray
    llf: float
    converged: bool


class _ScoreMixin:
    """``score`` from ``evaluate``, as :func:`melsml.optimize.numerical_hessian` reads it."""

    def score(self, theta: np.ndarray) -> np.ndarray:
        return self.evaluate(theta)[1]


class PoissonRandomIntercept(_ScoreMixin):
    """The log-likelihood and score of the random-intercept Poisson model.

    Parameters
    ----------
    y : (n,) counts
    x : (n, k) fixed-effect design
    groups : (n,) group codes 0..J-1
    n_points : Gauss-Hermite points per group
    """

    def __init__(self, y: np.ndarray, x: np.ndarray, groups: np.ndarray, n_points: int = 11):
        self.y = np.asarray(y, dtype=float)
        if np.any(self.y < 0) or np.any(self.y != np.round(self.y)):
            raise MELSInputError("a Poisson outcome must hold counts 0, 1, 2, ...")
        self.x = np.asarray(x, dtype=float)
        self.g = np.asarray(groups, dtype=np.intp)
        self.n_groups = int(self.g.max()) + 1
        self.const = -special.gammaln(self.y + 1.0)
        self.z, logw = gauss_hermite(n_points)
        self.logw = logw
        self._mode = np.zeros(self.n_groups)

    def _sum(self, v: np.ndarray) -> np.ndarray:
        return np.bincount(self.g, weights=v, minlength=self.n_groups)

    def _modes(self, xb: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
        """Each group's mode of log f(y_j | b) + log phi(b), and its curvature's SD."""
        b = self._mode.copy()
        ysum = self._sum(self.y)
        for _ in range(100):
            mu = np.exp(xb + sigma * b[self.g])
            musum = self._sum(mu)
            grad = sigma * (ysum - musum) - b
            hess = -(sigma**2) * musum - 1.0
            step = -grad / hess
            b += np.clip(step, -5.0, 5.0)
            if np.max(np.abs(step)) < 1e-10:
                break
        mu = np.exp(xb + sigma * b[self.g])
        sd = 1.0 / np.sqrt(sigma**2 * self._sum(mu) + 1.0)
        self._mode = b
        return b, sd

    def evaluate(self, theta: np.ndarray, score: bool = True) -> tuple[float, np.ndarray | None]:
        """Log-likelihood (and score) at theta = (beta, sigma)."""
        beta, sigma = theta[:-1], float(theta[-1])
        xb = self.x @ beta
        mode, sd = self._modes(xb, sigma)
        # nodes b_jq = mode_j + sqrt(2) sd_j z_q, the rule's weights with exp(z^2)
        b = mode[:, None] + np.sqrt(2.0) * sd[:, None] * self.z[None, :]  # (J, Q)
        eta = xb[:, None] + sigma * b[self.g]  # (n, Q)
        mu = np.exp(eta)
        unit = self.y[:, None] * eta - mu + self.const[:, None]
        logf = np.stack([self._sum(unit[:, q]) for q in range(self.z.size)], axis=1)
        logf += -0.5 * b**2 - 0.5 * np.log(2 * np.pi)
        logterm = logf + self.logw[None, :] + self.z[None, :] ** 2
        top = logterm.max(axis=1, keepdims=True)
        weights = np.exp(logterm - top)
        total = weights.sum(axis=1)
        ll = top[:, 0] + np.log(total) + np.log(np.sqrt(2.0) * sd)
        llf = float(ll.sum())
        if not score:
            return llf, None
        post = weights / total[:, None]  # (J, Q) posterior weights of the nodes
        resid = (self.y[:, None] - mu) * post[self.g]  # (n, Q)
        g_beta = self.x.T @ resid.sum(axis=1)
        g_sigma = float(np.sum(resid * b[self.g]))
        return llf, np.r_[g_beta, g_sigma]

    def fit(self, start: np.ndarray | None = None) -> GLMMFit:
        """Maximise from ``start`` (Newton steps only: a warm start), or from the
        Poisson GLM's estimates and sigma 0.5 (BFGS first)."""
        warm = start is not None
        if start is None:
            start = np.r_[_poisson_glm(self.y, self.x), 0.5]
        fit = _maximise(self, start, self.y.size, warm=warm)
        if fit.params[-1] < 0:  # the likelihood is even in sigma
            flip = np.r_[np.ones(fit.params.size - 1), -1.0]
            fit = GLMMFit(fit.params * flip, fit.cov * np.outer(flip, flip), fit.llf,
                          fit.converged)  # fmt: skip
        return fit


def _poisson_glm(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Poisson regression's estimates (statsmodels GLM), a start."""
    import statsmodels.api as sm

    return np.asarray(sm.GLM(y, x, family=sm.families.Poisson()).fit().params)


class MultinomialRandomIntercept(_ScoreMixin):
    """Multinomial logit with correlated random intercepts (a multilevel nominal
    stage 2), the first category the reference:

        log P(y_ij = c) / P(y_ij = 0) = x_ij' beta_c + u_jc,  c = 1..m,
        u_j = L z_j ~ N(0, L L'),  z_j ~ N(0, I_m)

    integrated by adaptive Gauss-Hermite quadrature over z_j (a product rule
    of ``n_points`` per dimension, centred at each group's mode and scaled by
    the Cholesky factor of the inverse curvature there).

    Parameters
    ----------
    codes : (n,) category codes 0..m
    x : (n, k) fixed-effect design
    groups : (n,) group codes 0..J-1
    n_points : Gauss-Hermite points per dimension
    """

    def __init__(self, codes, x, groups, n_points: int = 7):
        self.codes = np.asarray(codes, dtype=np.intp)
        self.x = np.asarray(x, dtype=float)
        self.g = np.asarray(groups, dtype=np.intp)
        self.n_groups = int(self.g.max()) + 1
        self.m = int(self.codes.max())
        if self.m < 1:
            raise MELSInputError("a nominal outcome needs at least two categories")
        self.k = self.x.shape[1]
        m = self.m
        self.onehot = np.zeros((self.codes.size, m))
        rows = np.flatnonzero(self.codes > 0)
        self.onehot[rows, self.codes[rows] - 1] = 1.0
        z, logw = gauss_hermite(n_points)
        grid = np.stack(np.meshgrid(*([z] * m), indexing="ij"), axis=-1).reshape(-1, m)
        lw = np.stack(np.meshgrid(*([logw] * m), indexing="ij"), axis=-1).reshape(-1, m)
        self.t = grid  # (K, m)
        self.logw = lw.sum(axis=1) + (grid**2).sum(axis=1)  # against the plain integrand
        self.tril = np.tril_indices(m)
        self._mode = np.zeros((self.n_groups, m))
        n = self.codes.size
        self._indicator = sparse.csr_matrix(
            (np.ones(n), (self.g, np.arange(n))), shape=(self.n_groups, n)
        )

    @property
    def n_params(self) -> int:
        return self.k * self.m + len(self.tril[0])

    def unpack(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(beta (k, m), L (m, m) lower triangular)."""
        beta = theta[: self.k * self.m].reshape(self.m, self.k).T
        chol = np.zeros((self.m, self.m))
        chol[self.tril] = theta[self.k * self.m :]
        return beta, chol

    def _sum(self, v: np.ndarray) -> np.ndarray:
        """Group sums of the rows of v (n, ...)."""
        flat = self._indicator @ v.reshape(v.shape[0], -1)
        return np.asarray(flat).reshape(self.n_groups, *v.shape[1:])

    @staticmethod
    def _probs(eta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities of categories 1..m and log(1 + sum exp(eta)), stably."""
        top = np.maximum(eta.max(axis=-1, keepdims=True), 0.0)
        ex = np.exp(eta - top)
        denom = np.exp(-top) + ex.sum(axis=-1, keepdims=True)
        return ex / denom, (top + np.log(denom))[..., 0]

    def _modes(self, xb: np.ndarray, chol: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each group's mode of log f(y_j | z) + log N(z; 0, I) and the Cholesky
        factor of the inverse negative curvature there."""
        m = self.m
        z = self._mode.copy()
        eye = np.eye(m)
        for _ in range(100):
            eta = xb + (z @ chol.T)[self.g]
            p, _ = self._probs(eta)
            r = self._sum(self.onehot - p)  # (J, m)
            grad = r @ chol - z
            w = self._sum(p[:, :, None] * (eye - p[:, None, :]))  # (J, m, m)
            info = np.einsum("ab,jac,cd->jbd", chol, w, chol) + eye
            step = np.linalg.solve(info, grad[..., None])[..., 0]
            z += np.clip(step, -5.0, 5.0)
            if np.max(np.abs(step)) < 1e-10:
                break
        eta = xb + (z @ chol.T)[self.g]
        p, _ = self._probs(eta)
        w = self._sum(p[:, :, None] * (eye - p[:, None, :]))
        info = np.einsum("ab,jac,cd->jbd", chol, w, chol) + eye
        self._mode = z
        return z, np.linalg.cholesky(np.linalg.inv(info))

    def evaluate(self, theta: np.ndarray, score: bool = True) -> tuple[float, np.ndarray | None]:
        """Log-likelihood (and score) at theta = (beta_1, ..., beta_m, vech L)."""
        beta, chol = self.unpack(np.asarray(theta, dtype=float))
        xb = self.x @ beta  # (n, m)
        mode, scale = self._modes(xb, chol)
        m = self.m
        # nodes z_jq = mode_j + sqrt(2) C_j t_q
        z = mode[:, None, :] + np.sqrt(2.0) * np.einsum("jab,qb->jqa", scale, self.t)
        u = z @ chol.T  # (J, Q, m)
        # per category, (n, Q) linear predictors: contiguous, for speed
        eta = [xb[:, a : a + 1] + u[:, :, a][self.g] for a in range(m)]
        top = np.maximum.reduce([np.zeros_like(eta[0]), *eta])
        ex = [np.exp(e - top) for e in eta]
        denom = np.exp(-top)
        for e in ex:
            denom += e
        unit = -(top + np.log(denom))  # (n, Q): minus log(1 + sum exp(eta))
        for a in range(m):
            unit += eta[a] * self.onehot[:, a : a + 1]
        logf = self._sum(unit) - 0.5 * (z**2).sum(axis=-1) - 0.5 * m * np.log(2 * np.pi)
        logdet = np.log(np.diagonal(scale, axis1=1, axis2=2)).sum(axis=1)
        logterm = logf + self.logw[None, :]
        best = logterm.max(axis=1, keepdims=True)
        weights = np.exp(logterm - best)
        total = weights.sum(axis=1)
        ll = best[:, 0] + np.log(total) + 0.5 * m * np.log(2.0) + logdet
        llf = float(ll.sum())
        if not score:
            return llf, None
        post = (weights / total[:, None])[self.g]  # (n, Q)
        g_beta = np.empty((m, self.k))
        r_group = np.empty((self.n_groups, z.shape[1], m))
        for a in range(m):
            r = (self.onehot[:, a : a + 1] - ex[a] / denom) * post  # (n, Q)
            g_beta[a] = self.x.T @ r.sum(axis=1)
            r_group[:, :, a] = self._sum(r)
        g_chol = np.einsum("jqa,jqb->ab", r_group, z)
        return llf, np.r_[g_beta.ravel(), g_chol[self.tril]]

    def fit(self, start: np.ndarray | None = None) -> GLMMFit:
        """Maximise from ``start`` (Newton steps only: a warm start), or from zero
        slopes, the marginal log odds as intercepts (if column 0 is constant)
        and L = 0.5 I (BFGS first)."""
        warm = start is not None
        if start is None:
            beta = np.zeros((self.k, self.m))
            if np.allclose(self.x[:, 0], 1.0):
                freq = np.bincount(self.codes, minlength=self.m + 1) + 0.5
                beta[0] = np.log(freq[1:] / freq[0])
            start = np.r_[beta.T.ravel(), (0.5 * np.eye(self.m))[self.tril]]
        return _maximise(self, np.asarray(start, dtype=float), self.codes.size, warm=warm)


def _maximise(model, start: np.ndarray, n: int, warm: bool = False) -> GLMMFit:
    """BFGS with the analytic score (skipped from a ``warm`` start, e.g. the
    previous replication's estimates), then Newton steps on the
    forward-difference Hessian of the score, recomputed until the step is
    small; the covariance is the inverse observed information."""
    theta = np.asarray(start, dtype=float).copy()
    if not warm:

        def fun(th):
            llf, g = model.evaluate(th)
            if not np.isfinite(llf):
                return np.inf, np.zeros_like(th)
            return -llf / n, -g / n

        theta = optimize.minimize(fun, theta, jac=True, method="BFGS", options={"gtol": 1e-8}).x
    llf, g = model.evaluate(theta)
    hess = numerical_hessian(model, theta, g)
    for _ in range(50):
        try:
            step = np.linalg.solve(-hess, g)
        except np.linalg.LinAlgError:
            break
        decrement = float(g @ step)
        if not np.isfinite(decrement) or decrement < 1e-14:
            break
        t = 1.0
        while t > 1e-6:
            new_llf, new_g = model.evaluate(theta + t * step)
            if np.isfinite(new_llf) and new_llf >= llf - 1e-10 * abs(llf):
                break
            t *= 0.5
        else:
            break
        theta, llf, g = theta + t * step, new_llf, new_g
        if decrement > 1e-3 or t < 1.0:
            hess = numerical_hessian(model, theta, g)
    k = theta.size
    try:
        cov = np.linalg.inv(-hess)
        converged = bool(np.all(np.linalg.eigvalsh(-hess) > 0))
    except np.linalg.LinAlgError:
        cov, converged = np.full((k, k), np.nan), False
    return GLMMFit(theta, 0.5 * (cov + cov.T), llf, converged)
