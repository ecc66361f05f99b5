"""Maximisation of the log-likelihood and convergence diagnostics."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import optimize

from .exceptions import BoundaryWarning, ConvergenceWarning
from .hessian import closed_form_hessian
from .likelihood import MELSObjective

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitInfo:
    """How the maximisation went.

    Attributes
    ----------
    converged : bool
        The Newton decrement ``g' H^-1 g`` at the end is below ``tol`` and the
        observed information is positive definite.
    n_iter : quasi-Newton iterations plus Newton polishing steps
    n_evals : likelihood evaluations, including those for the Hessian
    max_abs_score : largest absolute gradient entry at the estimate
    newton_decrement : g' (-H)^-1 g at the estimate (predicted llf gain x 2)
    hessian_pd : the negative Hessian is positive definite
    message : what the optimiser said
    method : the optimiser
    hessian : how the Hessian was found: "closed form" (the common model:
        one location and one scale effect, see :mod:`melsml.hessian`) or
        "differences of the score"
    """

    converged: bool
    n_iter: int
    n_evals: int
    max_abs_score: float
    newton_decrement: float
    hessian_pd: bool
    message: str
    method: str
    hessian: str = "differences of the score"


def numerical_hessian(
    objective: MELSObjective, theta: np.ndarray, score0: np.ndarray | None = None
) -> np.ndarray:
    """Hessian of the log-likelihood by differences of the analytic score.

    Central differences (2k evaluations); given ``score0``, the score at
    ``theta``, forward differences (k evaluations), for objectives whose
    evaluations are expensive: their error, O(h) = 1e-5 relative, is far below
    what standard errors are reported to.
    """
    theta = np.asarray(theta, dtype=float)
    k = theta.size
    hess = np.empty((k, k))
    for i in range(k):
        h = 1e-5 * (1.0 + abs(theta[i]))
        tp = theta.copy()
        tp[i] += h
        if score0 is None:
            tm = theta.copy()
            tm[i] -= h
            hess[:, i] = (objective.score(tp) - objective.score(tm)) / (2.0 * h)
        else:
            hess[:, i] = (objective.score(tp) - score0) / h
    return 0.5 * (hess + hess.T)


def _is_pd(mat: np.ndarray) -> bool:
    try:
        np.linalg.cholesky(mat)
    except np.linalg.LinAlgError:
        return False
    return True


def score_outer(objective, theta: np.ndarray) -> np.ndarray:
    """(k, k) sum over groups of the outer products of the per-group scores (an
    objective whose groups are spread over a cluster sums them where they are)."""
    outer = getattr(objective, "score_outer", None)
    if outer is not None:
        return outer(theta)
    scores = objective.score_groups(theta)
    return scores.T @ scores


def _bfgs(
    objective: MELSObjective,
    theta0: np.ndarray,
    maxiter: int,
    gtol: float,
    hess_inv0: np.ndarray | None = None,
) -> tuple[np.ndarray, int, str, np.ndarray]:
    """BFGS with the analytic score from ``theta0``, its initial inverse Hessian
    (of -llf / n) ``hess_inv0`` or from the outer product of the per-group
    scores (BHHH).  Returns the maximiser, the iterations, the message and the
    final inverse Hessian."""
    n = objective.design.n_obs
    if hess_inv0 is not None:
        hess_inv0 = 0.5 * (hess_inv0 + hess_inv0.T)
        if not _is_pd(hess_inv0):
            hess_inv0 = None
    if hess_inv0 is None:
        bhhh = score_outer(objective, theta0)
        # a log-likelihood that is not finite leaves non-finite scores
        if not np.all(np.isfinite(bhhh)) and not np.isfinite(
            objective.evaluate(theta0, score=False).llf
        ):
            raise FloatingPointError(
                "the log-likelihood is not finite at the start values; check the data for "
                "extreme values or supply start_params"
            )
        k = theta0.size
        bhhh += 1e-8 * np.trace(bhhh) / k * np.eye(k)
        try:
            hess_inv0 = np.linalg.inv(bhhh) * n
            hess_inv0 = 0.5 * (hess_inv0 + hess_inv0.T)
            if not np.all(np.isfinite(hess_inv0)) or not _is_pd(hess_inv0):
                raise np.linalg.LinAlgError
        except np.linalg.LinAlgError:
            hess_inv0 = np.eye(k)

    def fun(theta):
        ev = objective.evaluate(theta)
        if not np.isfinite(ev.llf):
            return np.inf, np.zeros_like(theta)
        return -ev.llf / n, -ev.score / n

    res = optimize.minimize(
        fun,
        theta0,
        jac=True,
        method="BFGS",
        options={"gtol": gtol, "maxiter": maxiter, "hess_inv0": hess_inv0},
    )
    return res.x, int(res.nit), str(res.message), np.asarray(res.hess_inv)


def maximize(
    objective: MELSObjective,
    theta0: np.ndarray,
    *,
    maxiter: int = 500,
    tol: float = 1e-12,
    gtol: float = 1e-6,
    boundary_params: tuple[int, ...] = (),
    coarse: MELSObjective | None = None,
    forward_hessian: bool = False,
    return_evaluation: bool = False,
) -> tuple:
    """Maximise the log-likelihood from ``theta0``.

    BFGS with the analytic score, its initial inverse Hessian taken from the
    outer product of the per-group scores (BHHH) at the start, then Newton
    steps with the Hessian from differences of the score until the Newton
    decrement is below ``tol``.  ``gtol`` is BFGS's tolerance on the largest
    score entry per observation.  ``boundary_params`` are positions of
    parameters whose value 0 is a boundary of the parameter space (the random
    scale SD): when the fit ends at such a boundary, where the log-likelihood
    is flat to second order, convergence is judged on the other parameters.

    ``coarse``, the same likelihood by a cheaper quadrature rule, runs the
    quasi-Newton phase; BFGS on ``objective``, started from its maximum and
    inverse Hessian, and Newton steps finish (as lme4 starts ``nAGQ > 1``
    fits from the Laplace fit).
    ``forward_hessian`` takes the Hessian from forward differences (k score
    evaluations instead of 2k).

    Returns
    -------
    theta : (k,) the maximiser
    hessian : (k, k) Hessian of the log-likelihood at ``theta``
    info : FitInfo
    evaluation : Evaluation
        The objective's evaluation at ``theta`` (with ``return_evaluation``).
    """
    objective.reset_counter()
    if coarse is not None:
        coarse.reset_counter()
    theta0 = np.asarray(theta0, dtype=float)
    k = theta0.size
    theta, n_iter, message, hess_inv = _bfgs(coarse or objective, theta0, maxiter, gtol)
    if coarse is not None:
        # from the coarse rule's maximum, BFGS on this rule with the coarse
        # phase's inverse Hessian takes a few steps
        theta, more, message, _ = _bfgs(objective, theta, maxiter, gtol, hess_inv)
        n_iter += more
    ev = objective.evaluate(theta)
    how = []

    def hessian_at(theta, ev):
        # in closed form where the model allows (one pass over the data),
        # else from differences of the score (k or 2k evaluations)
        if isinstance(objective, MELSObjective):
            hess = closed_form_hessian(objective, theta)
        else:  # an objective spread over a cluster sums its parts' Hessians
            hook = getattr(objective, "hessian", None)
            hess = hook(theta) if hook is not None else None
        if hess is not None:
            how.append("closed form")
            return hess
        how.append("differences of the score")
        return numerical_hessian(objective, theta, ev.score if forward_hessian else None)

    hess = hessian_at(theta, ev)
    decrement = np.inf
    for _ in range(10):
        info_mat = -hess
        if not _is_pd(info_mat):
            break
        step = np.linalg.solve(info_mat, ev.score)
        decrement = float(ev.score @ step)
        if decrement < tol:
            break
        t = 1.0
        while t > 1e-4:
            ev_new = objective.evaluate(theta + t * step)
            if np.isfinite(ev_new.llf) and ev_new.llf >= ev.llf - 1e-10 * abs(ev.llf):
                break
            t *= 0.5
        else:
            break
        theta, ev = theta + t * step, ev_new
        n_iter += 1
        if decrement > 1e-3 or t < 1.0:
            # not yet in the region where the Hessian is effectively constant
            hess = hessian_at(theta, ev)
    hessian_pd = _is_pd(-hess)
    if hessian_pd:
        decrement = float(ev.score @ np.linalg.solve(-hess, ev.score))
    converged = bool(hessian_pd and decrement < tol)
    at_boundary = [i for i in boundary_params if abs(theta[i]) < 1e-3]
    if at_boundary:
        message += " (ended on the boundary 0 of a variance parameter)"
        if not converged:
            keep = np.setdiff1d(np.arange(k), at_boundary)
            sub = -hess[np.ix_(keep, keep)]
            if _is_pd(sub):
                decrement = float(ev.score[keep] @ np.linalg.solve(sub, ev.score[keep]))
                converged = decrement < tol
    info = FitInfo(
        converged=converged,
        n_iter=n_iter,
        n_evals=objective.n_evals + (coarse.n_evals if coarse is not None else 0),
        max_abs_score=float(np.max(np.abs(ev.score))) if ev.score.size else 0.0,
        newton_decrement=decrement,
        hessian_pd=hessian_pd,
        message=message,
        method="BFGS + Newton",
        hessian=how[-1],
    )
    logger.info("fit: llf=%.6f, %d iterations, %d evaluations", ev.llf, n_iter, objective.n_evals)
    for obj in (objective, coarse):
        # the objective outlives the fit (the results keep it): not its last evaluation
        clear = getattr(obj, "clear_cache", None)
        if clear is not None:
            clear()
    if return_evaluation:
        return theta, hess, info, ev
    return theta, hess, info


def warn_fit(info: FitInfo, stacklevel: int = 3) -> None:
    """Warn when the information is not positive definite or the fit did not
    converge (``stacklevel`` 3: the warning points at the caller of ``fit``)."""
    if not info.hessian_pd:
        warnings.warn(
            "the observed information is not positive definite at the estimate: "
            "standard errors are unreliable (a variance may be on its boundary)",
            BoundaryWarning,
            stacklevel=stacklevel,
        )
    elif not info.converged:
        warnings.warn(
            f"the fit did not converge (Newton decrement {info.newton_decrement:.2e}, "
            f"max |score| {info.max_abs_score:.2e}); {info.message}",
            ConvergenceWarning,
            stacklevel=stacklevel,
        )
