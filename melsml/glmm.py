"""Random-intercept Poisson regression by maximum likelihood, the intercept
integrated by adaptive Gauss-Hermite quadrature (a multilevel count stage 2).

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
from scipy import optimize, special

from .exceptions import MELSInputError
from .quadrature import gauss_hermite


@dataclass(frozen=True)
class GLMMFit:
    """``params`` (beta..., sigma), ``cov`` (their covariance), ``llf``."""

    params: np.ndarray
    cov: np.ndarray
    llf: float
    converged: bool


class PoissonRandomIntercept:
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
        """Maximise: BFGS from ``start`` (default: Poisson GLM estimates and sigma
        0.5), Newton steps on the forward-difference Hessian of the score."""
        k = self.x.shape[1]
        if start is None:
            start = np.r_[_poisson_glm(self.y, self.x), 0.5]
        n = self.y.size

        def fun(theta):
            if theta[-1] < 0:
                theta = theta.copy()
                theta[-1] = -theta[-1]
            llf, g = self.evaluate(theta)
            return -llf / n, -g / n

        res = optimize.minimize(fun, start, jac=True, method="BFGS", options={"gtol": 1e-8})
        theta = res.x.copy()
        theta[-1] = abs(theta[-1])
        for _ in range(10):
            llf, g = self.evaluate(theta)
            hess = self._hessian(theta, g)
            try:
                step = np.linalg.solve(-hess, g)
            except np.linalg.LinAlgError:
                break
            if float(g @ step) < 1e-14:
                break
            theta = theta + step
        llf, g = self.evaluate(theta)
        hess = self._hessian(theta, g)
        try:
            cov = np.linalg.inv(-hess)
            converged = bool(np.all(np.linalg.eigvalsh(-hess) > 0))
        except np.linalg.LinAlgError:
            cov, converged = np.full((k + 1, k + 1), np.nan), False
        return GLMMFit(theta, 0.5 * (cov + cov.T), llf, converged)

    def _hessian(self, theta: np.ndarray, g0: np.ndarray) -> np.ndarray:
        k = theta.size
        hess = np.empty((k, k))
        for i in range(k):
            h = 1e-5 * (1.0 + abs(theta[i]))
            tp = theta.copy()
            tp[i] += h
            hess[:, i] = (self.evaluate(tp)[1] - g0) / h
        return 0.5 * (hess + hess.T)


def _poisson_glm(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Poisson regression's estimates (statsmodels GLM), a start."""
    import statsmodels.api as sm

    return np.asarray(sm.GLM(y, x, family=sm.families.Poisson()).fit().params)
