"""The MELS log-likelihood over a design: value, score, per-group scores.

The objective is closed over precomputed contiguous arrays; the compiled
kernel works on the three linear predictors and the chain rule to the
parameter blocks is done here with matrix products.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _quad
from .config import MODE_CLOSED_FORM, ModelOptions
from .formula import DesignMatrices
from .params import ParamLayout
from .quadrature import gauss_hermite


@dataclass(frozen=True)
class Evaluation:
    """One evaluation of the objective at ``theta``."""

    theta: np.ndarray
    llf: float
    score: np.ndarray | None
    ll_groups: np.ndarray
    moments: np.ndarray | None  # (n_groups, 8), see melsml._quad.group_loglik (q = 1)
    centers: np.ndarray  # node placement
    grad_mu: np.ndarray | None
    grad_ws: np.ndarray | None
    grad_bs: np.ndarray | None  # None with several location effects
    grad_random: np.ndarray  # (n_groups, k_random) per-group score of the random block
    posterior: dict | None = None  # several location effects: eu, euu, eom, eom2, euom


class MELSObjective:
    """Log-likelihood of a MELS model as a function of the flat parameter vector.

    Parameters
    ----------
    design : DesignMatrices
    layout : ParamLayout
    options : ModelOptions

    Notes
    -----
    The adaptive node placement of each group is found afresh (by Newton's
    method to 1e-11) at every evaluation, starting from the previous
    evaluation's modes, so the value is a function of ``theta`` alone.  The
    score is the exact gradient of the quadrature formula with the nodes held
    at their placement (Fisher's identity with quadrature weights).
    """

    def __init__(self, design: DesignMatrices, layout: ParamLayout, options: ModelOptions):
        self.design = design
        self.layout = layout
        self.options = options
        self.mode = options.mode
        self.gh_x, self.gh_logw = gauss_hermite(options.n_points)
        n, j = design.n_obs, design.n_groups
        if layout.is_chol:
            dim = layout.q + 1
            self._centers = np.zeros((j, dim + dim * dim))
            self._centers[:, dim] = 1.0
            self._x_re = np.ascontiguousarray(design.x_re)
        else:
            self._centers = np.zeros((j, 5))
            self._centers[:, 2] = 1.0
            self._centers[:, 4] = 1.0
        self._work = np.empty(2 * n)
        self._rand_jac = None if layout.is_chol else layout.random_jacobian()
        # column-major copies: X @ b and X.T @ g are both fast on them
        self._x_mean = np.asfortranarray(design.x_mean)
        self._x_ws = np.asfortranarray(design.x_ws)
        self._x_bs = np.asfortranarray(design.x_bs)
        self.n_evals = 0

    def reset_counter(self) -> None:
        self.n_evals = 0

    def evaluate(
        self,
        theta: np.ndarray,
        *,
        score: bool = True,
        adapt: bool = True,
        centers: np.ndarray | None = None,
    ) -> Evaluation:
        """Evaluate log-likelihood (and score) at ``theta``.

        Parameters
        ----------
        theta : (k_params,) parameters in the layout's order
        score : compute the gradient as well
        adapt : place the quadrature nodes anew (False: keep ``centers``)
        centers : (n_groups, 5) node placement to start from or to keep
        """
        if self.layout.is_chol:
            return self._evaluate_multi(theta, score=score, adapt=adapt, centers=centers)
        d = self.design
        p = self.layout.unpack(theta)
        r0 = np.ascontiguousarray(d.y - self._x_mean @ p["beta"])
        eta_ws = np.ascontiguousarray(self._x_ws @ p["tau"])
        eta_bs = np.ascontiguousarray(self._x_bs @ p["alpha"])
        j, n = d.n_groups, d.n_obs
        ll = np.empty(j)
        mom = np.empty((j, 8))
        grand = np.empty((j, 3))
        cen = self._centers if centers is None else np.array(centers, dtype=float, order="C")
        g_mu, g_ws, g_bs = np.empty(n), np.empty(n), np.empty(n)
        _quad.group_loglik(
            r0,
            eta_ws,
            eta_bs,
            d.group_ptr,
            self.mode,
            p["tau_l"],
            p["tau_q"],
            p["sigma_omega"],
            self.gh_x,
            self.gh_logw,
            ll,
            mom,
            grand,
            cen,
            g_mu,
            g_ws,
            g_bs,
            self._work,
            adapt=adapt,
            compute_grad=score,
        )
        self.n_evals += 1
        llf = float(ll.sum())
        grad = None
        if score:
            grad = np.concatenate(
                [
                    self._x_mean.T @ g_mu,
                    self._x_bs.T @ g_bs,
                    self._x_ws.T @ g_ws,
                    grand.sum(axis=0) @ self._rand_jac,
                ]
            )
        grad_random = grand @ self._rand_jac
        return Evaluation(
            theta=np.array(theta, dtype=float),
            llf=llf,
            score=grad,
            ll_groups=ll,
            moments=mom,
            centers=cen.copy(),
            grad_mu=g_mu if score else None,
            grad_ws=g_ws if score else None,
            grad_bs=g_bs if score else None,
            grad_random=grad_random,
        )

    def _evaluate_multi(self, theta, *, score, adapt, centers) -> Evaluation:
        """Several random location effects: the Cholesky-parametrised kernel."""
        d = self.design
        lay = self.layout
        p = lay.unpack(theta)
        r0 = np.ascontiguousarray(d.y - self._x_mean @ p["beta"])
        eta_ws = np.ascontiguousarray(self._x_ws @ p["tau"])
        chol = np.ascontiguousarray(lay.chol_matrix(theta))
        j, n, q = d.n_groups, d.n_obs, lay.q
        dim = q + 1
        post = dict(
            eu=np.empty((j, q)),
            euu=np.empty((j, q, q)),
            eom=np.empty(j),
            eom2=np.empty(j),
            euom=np.empty((j, q)),
        )
        k0, k1, k2 = np.empty(j), np.empty((j, q)), np.empty((j, q, q))
        ll, dL = np.empty(j), np.empty((j, dim, dim))
        cen = self._centers if centers is None else np.array(centers, dtype=float, order="C")
        g_mu, g_ws = np.empty(n), np.empty(n)
        _quad.group_loglik_multi(
            r0,
            eta_ws,
            self._x_re,
            d.group_ptr,
            self.mode,
            chol,
            self.gh_x,
            self.gh_logw,
            ll,
            post["eu"],
            post["euu"],
            post["eom"],
            post["eom2"],
            post["euom"],
            k0,
            k1,
            k2,
            dL,
            cen,
            g_mu,
            g_ws,
            adapt=adapt,
            compute_grad=score,
        )
        self.n_evals += 1
        rows, cols = zip(*lay.chol_entries, strict=True)
        grad_random = dL[:, list(rows), list(cols)]
        grad = None
        if score:
            grad = np.concatenate(
                [self._x_mean.T @ g_mu, self._x_ws.T @ g_ws, grad_random.sum(axis=0)]
            )
        return Evaluation(
            theta=np.array(theta, dtype=float),
            llf=float(ll.sum()),
            score=grad,
            ll_groups=ll,
            moments=None,
            centers=cen.copy(),
            grad_mu=g_mu if score else None,
            grad_ws=g_ws if score else None,
            grad_bs=None,
            grad_random=grad_random,
            posterior=post,
        )

    # convenience wrappers ---------------------------------------------------------
    def loglike(self, theta: np.ndarray) -> float:
        """Log-likelihood at ``theta``."""
        return self.evaluate(theta, score=False).llf

    def score(self, theta: np.ndarray) -> np.ndarray:
        """Gradient of the log-likelihood at ``theta``."""
        return self.evaluate(theta).score

    def loglike_and_score(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        ev = self.evaluate(theta)
        return ev.llf, ev.score

    def score_groups(self, theta: np.ndarray) -> np.ndarray:
        """(n_groups, k_params) per-group score contributions (they sum to the score)."""
        ev = self.evaluate(theta)
        d = self.design
        starts = d.group_ptr[:-1]
        blocks = [np.add.reduceat(d.x_mean * ev.grad_mu[:, None], starts, axis=0)]
        if ev.grad_bs is not None:
            blocks.append(np.add.reduceat(d.x_bs * ev.grad_bs[:, None], starts, axis=0))
        blocks += [
            np.add.reduceat(d.x_ws * ev.grad_ws[:, None], starts, axis=0),
            ev.grad_random,
        ]
        return np.hstack(blocks)

    @property
    def closed_form(self) -> bool:
        return self.mode == MODE_CLOSED_FORM
