"""The MELS log-likelihood over a design: value, score, per-group scores.

The objective is closed over precomputed contiguous arrays.  The compiled
kernel works on the linear predictors and the scale-first Cholesky factor of
the covariance of the random effects; the chain rule to the parameter blocks
is done here with matrix products.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _quad  # OMP_WAIT_POLICY: see melsml/__init__.py
from .config import ModelOptions
from .exceptions import MELSInputError
from .formula import DesignMatrices
from .ordinal import LINK_CODES, interval_limits, threshold_scores, thresholds
from .params import ParamLayout
from .plan import IntegrationPlan, plan_for_design
from .quadrature import gauss_hermite


@dataclass(frozen=True)
class Evaluation:
    """One evaluation of the objective at ``theta``.

    Attributes
    ----------
    theta : (k_params,) the parameters evaluated
    llf : float
    score : (k_params,) or None
    ll_groups : (n_groups,) per-group log-likelihood
    centers : (n_groups, m + m*m) node placement: mode and Cholesky scale in the
        standardised scale effects xi (exact-location plan, m = s, v = Kvv xi)
        or in all standardised effects theta (full AGHQ, m = q + s, x = L theta)
    ex, exx : (n_groups, d), (n_groups, d, d), or None
        Posterior means and second moments of (u, v), d = q + s (with a BS
        function, u is the standardised location effect theta1); None in an
        evaluation carried over to other units (:meth:`MELSObjective.rescaled`).
    grad_mu, grad_ws : (n_obs,) gradient in the mean and WS linear predictors
    grad_z : (n_obs, q) gradient in the rows of the location design Z (with a
        BS function, sigma_u,ij), or None
    grad_random : (n_groups, k_random) per-group score of the random block, or None
    grad_thresholds : (n_groups, n_thresholds) per-group score of the thresholds
        (ordinal outcomes), or None
    """

    theta: np.ndarray
    llf: float
    score: np.ndarray | None
    ll_groups: np.ndarray
    centers: np.ndarray
    ex: np.ndarray | None
    exx: np.ndarray | None
    grad_mu: np.ndarray | None
    grad_ws: np.ndarray | None
    grad_z: np.ndarray | None
    grad_random: np.ndarray | None
    grad_thresholds: np.ndarray | None = None


@dataclass(frozen=True)
class FitState:
    """Everything a fit leaves for predictions: frozen, read from nothing else.

    Attributes
    ----------
    design : DesignMatrices
    layout : ParamLayout
    options : ModelOptions
    plan : IntegrationPlan
    theta : (k_params,) the estimates (reported, canonical signs), read-only
    evaluation : Evaluation at the estimates (node placement, posterior moments)
    """

    design: DesignMatrices
    layout: ParamLayout
    options: ModelOptions
    plan: IntegrationPlan
    theta: np.ndarray
    evaluation: Evaluation

    def __post_init__(self) -> None:
        theta = np.array(self.theta, dtype=float)
        theta.flags.writeable = False
        object.__setattr__(self, "theta", theta)

    def params(self) -> dict:
        """The estimates split into blocks (see :meth:`ParamLayout.unpack`)."""
        return self.layout.unpack(self.theta)


#: from this many units up, every plan's kernel runs on all cores by default
THREADED_ROWS = 200_000


def check_threads(n_threads) -> int:
    """``n_threads`` as a positive int, or a clear error."""
    if isinstance(n_threads, bool) or not isinstance(n_threads, (int, np.integer)) or n_threads < 1:
        raise MELSInputError(f"n_threads must be a positive integer, got {n_threads!r}")
    return int(n_threads)


def matvec(x: np.ndarray, b: np.ndarray, blas: bool = False) -> np.ndarray:
    """``x @ b``; unless ``blas``, by numpy's own loops: BLAS's threads, which keep
    spinning after a call, would compete with a threaded kernel for the cores
    (measured: 20% slower evaluations on two cores).  With a one-thread kernel
    BLAS is the faster."""
    return x @ b if blas else np.einsum("ij,j->i", x, b)


def rmatvec(x: np.ndarray, g: np.ndarray, blas: bool = False) -> np.ndarray:
    """``x.T @ g`` (see :func:`matvec`)."""
    return x.T @ g if blas else np.einsum("ij,i->j", x, g)


def unit_weights(design: DesignMatrices, options: ModelOptions) -> np.ndarray | None:
    """The unit weights the kernel uses: as given for frequency weights; for
    sampling weights scaled within each group (``options.weight_scaling``)."""
    w = design.unit_weights
    if w is None:
        return None
    w = np.asarray(w, dtype=float)
    if options.weight_type == "frequency" or options.weight_scaling == "none":
        return np.ascontiguousarray(w)
    starts = design.group_ptr[:-1]
    sizes = design.group_sizes
    total = np.add.reduceat(w, starts)
    if options.weight_scaling == "size":
        target = sizes.astype(float)
    else:  # effective sample size
        target = total**2 / np.add.reduceat(w * w, starts)
    return np.ascontiguousarray(w * np.repeat(target / total, sizes))


def scale_first_factor(sigma: np.ndarray, q: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cholesky factor of the covariance of (v, u): ``v = Kvv xi``, ``u = Kuv xi + C zeta``.

    A pivot that is zero (to rounding) leaves its column zero, so a singular
    covariance (a variance on its boundary) is allowed.

    Returns
    -------
    Kvv : (s, s), Kuv : (q, s), C : (q, q) lower-triangular, C-contiguous
    """
    d = sigma.shape[0]
    perm = list(range(q, d)) + list(range(q))
    sp = sigma[perm][:, perm]
    s = d - q
    # LAPACK's factor when every pivot is clear of zero; else column by column
    try:
        K = np.linalg.cholesky(sp)
        regular = bool(np.all(np.diag(K) ** 2 > 1e-13 * np.maximum(np.abs(np.diag(sp)), 1e-300)))
    except np.linalg.LinAlgError:
        regular = False
    if regular:
        return (
            np.ascontiguousarray(K[:s, :s]),
            np.ascontiguousarray(K[s:, :s]),
            np.ascontiguousarray(K[s:, s:]),
        )
    K = np.zeros((d, d))
    for j in range(d):
        piv = sp[j, j] - K[j, :j] @ K[j, :j]
        if piv <= 1e-13 * max(abs(sp[j, j]), 1e-300):
            continue
        K[j, j] = np.sqrt(piv)
        K[j + 1 :, j] = (sp[j + 1 :, j] - K[j + 1 :, :j] @ K[j, :j]) / K[j, j]
    return (
        np.ascontiguousarray(K[:s, :s]),
        np.ascontiguousarray(K[s:, :s]),
        np.ascontiguousarray(K[s:, s:]),
    )


class MELSObjective:
    """Log-likelihood of a MELS model as a function of the flat parameter vector.

    Parameters
    ----------
    design : DesignMatrices
    layout : ParamLayout
    options : ModelOptions

    Notes
    -----
    The adaptive node placement of each group is found afresh (Newton's method
    to 1e-11) at every evaluation, starting from the previous evaluation's
    modes, so the value is a function of ``theta`` alone.  The score is the
    quadrature estimate of the exact score (Price's identity for the
    covariance of the random effects, Fisher's identity for the rest): its
    difference from the derivative of the quadrature formula vanishes as the
    quadrature error does, which is why :class:`~melsml.config.ModelOptions`
    refuses fewer than 5 points per dimension.
    """

    def __init__(
        self,
        design: DesignMatrices,
        layout: ParamLayout,
        options: ModelOptions,
        n_threads: int | None = None,
    ):
        self.design = design
        self.layout = layout
        self.options = options
        st = layout.structure
        j = design.n_groups
        self.plan: IntegrationPlan
        self.plan, self._h, self._h_const = plan_for_design(st, options, design)
        self.gh_x, self.gh_logw = gauss_hermite(self.plan.n_points)
        # threads pay off where each node costs O(n_j) (a unit-level scale design, a
        # censored or ordinal outcome), there are many nodes, or many units (the
        # per-unit passes); a constant-h exact plan on smaller data is faster on
        # one thread
        heavy = (
            self.plan.unit_level_scale
            or self.plan.n_nodes > 50
            or design.interval_outcome
            or design.n_obs > THREADED_ROWS
        )
        self.n_threads = (0 if heavy else 1) if n_threads is None else check_threads(n_threads)
        # BLAS where the plan's kernel runs on one thread, numpy's loops where it is
        # threaded; by the plan, not the thread count, so that results do not
        # depend on the thread count
        self._blas = not heavy
        # threaded plans form r0 and eta in the kernel's parallel loop, and each
        # group's X'g there (faster at 540k rows in an A/B timing); one-thread
        # plans use BLAS (faster at 72k); interval outcomes need r0 before the kernel
        self._fused = heavy and not design.interval_outcome
        self._x_re = None if st.bs else np.ascontiguousarray(design.x_re)
        m = self.plan.dim
        self._centers = np.zeros((j, m + m * m))
        if m:
            self._centers[:, m:] = np.eye(m).ravel()
        # column-major copies: X @ b and X.T @ g are both fast on them
        self._x_mean = np.asfortranarray(design.x_mean)
        self._x_ws = np.asfortranarray(design.x_ws)
        self._x_bs = np.asfortranarray(design.x_bs)
        gw = design.group_weights
        self._gw = None if gw is None else np.asarray(gw, dtype=float)
        self._w = unit_weights(design, options)
        self._gw_unit = None if gw is None else np.repeat(self._gw, design.group_sizes)
        self._bs_constant = design.bs_names == ("Intercept",)
        self._cens = design.censoring if design.censored else None
        self._ones = np.ones(design.n_obs) if design.categories is not None else None
        self._group = (
            np.repeat(np.arange(j), design.group_sizes) if design.categories is not None else None
        )
        self.n_evals = 0
        self._last: tuple[bytes, Evaluation] | None = None

    def reset_counter(self) -> None:
        self.n_evals = 0

    def clear_cache(self) -> None:
        """Forget the kept evaluation (its unit-length arrays), e.g. after a fit."""
        self._last = None

    @property
    def centers(self) -> np.ndarray:
        """A copy of the node placement of the latest evaluation."""
        return self._centers.copy()

    def kernel_inputs(self, theta: np.ndarray) -> dict:
        """The kernel's arrays at ``theta``: r0, eta, Z, H, h_const, the factors and
        the unit weights (the arguments :func:`melsml._quad.engine_points` takes)."""
        return self._inputs(theta)[1]

    def _inputs(self, theta: np.ndarray, fused: bool = False) -> tuple[dict, dict]:
        """The parameters split into blocks, and the kernel's arrays at ``theta``
        (``fused``: r0 and eta left empty, for the kernel to fill)."""
        p = self.layout.unpack(theta)
        L = p["L"]
        kvv, kuv, c = scale_first_factor(L @ L.T, self.layout.q)
        n = self.design.n_obs
        if fused:
            r0, eta = np.empty(n), np.empty(n)
        else:
            r0, eta = self.linear_predictors(p)
        return p, dict(
            r0=r0,
            eta=eta,
            Z=self._z(p),
            H=self._h,
            h_const=self._h_const,
            group_ptr=self.design.group_ptr,
            Kvv=kvv,
            Kuv=kuv,
            C=c,
            w=self._w,
        )

    def _intervals(self, r0: np.ndarray, p: dict) -> dict:
        """The kernel's interval units: every row of an ordinal outcome (between
        its category's thresholds), or the censored rows (their r0 is the limit
        less x'beta: (-inf, r0] at a lower limit, (r0, inf) at an upper one)."""
        d = self.design
        if d.categories is not None:
            lo, hi = interval_limits(
                d.y, thresholds(p["thresholds"]), matvec(self._x_mean, p["beta"], self._blas)
            )
            return dict(
                cens=self._ones,
                iv_lo=np.ascontiguousarray(lo),
                iv_hi=np.ascontiguousarray(hi),
                link=LINK_CODES[self.options.link],
                g_hi=np.zeros(d.n_obs),
            )
        if self._cens is None:
            return {}
        low, high = self._cens > 0, self._cens < 0
        return dict(
            cens=self._cens,
            iv_lo=np.where(high, r0, -np.inf),
            iv_hi=np.where(low, r0, np.inf),
            link=0,
            g_hi=np.zeros(r0.size),
        )

    def linear_predictors(
        self, p: dict, rows: slice = slice(None)
    ) -> tuple[np.ndarray, np.ndarray]:
        """The residual r0 = y - X beta and the WS linear predictor eta = W tau of
        the units ``rows``, at the parameters ``p`` (unpacked)."""
        r0 = matvec(self._x_mean[rows], p["beta"], self._blas)
        np.subtract(self.design.y[rows], r0, out=r0)
        return r0, matvec(self._x_ws[rows], p["tau"], self._blas)

    def _z(self, p, rows: slice = slice(None)) -> np.ndarray:
        """Location design of the units ``rows``: sigma_u,ij from the BS function,
        or the ``re_formula`` design."""
        if not self.layout.structure.bs:
            return self._x_re[rows]
        if self._bs_constant:
            n = self.design.y[rows].shape[0]
            return np.full((n, 1), np.exp(0.5 * p["alpha"][0]))
        return np.exp(0.5 * matvec(self._x_bs[rows], p["alpha"], self._blas))[:, None]

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
        centers : node placement to start from or to keep

        Called again at the same ``theta`` (the optimiser's last point, say)
        with the default placement, the previous evaluation is returned.
        """
        key = np.asarray(theta, dtype=float).tobytes()
        if centers is None and adapt and self._last is not None and self._last[0] == key:
            if self._last[1].score is not None or not score:
                return self._last[1]
        # drop the kept evaluation first: its unit-length arrays would otherwise
        # live beside the new one's (peak memory)
        self._last = None
        ev = self._evaluate(theta, score=score, adapt=adapt, centers=centers)
        self._last = (key, ev) if centers is None and adapt else None
        return ev

    def _evaluate(self, theta, *, score: bool, adapt: bool, centers) -> Evaluation:
        d, lay = self.design, self.layout
        st = lay.structure
        # fused: the kernel forms r0 = y - X beta and eta = W tau group by group,
        # in its parallel loop, and each group's X'g and W'g
        fused = self._fused
        p, inputs = self._inputs(theta, fused)
        q, s = st.q, st.s
        dim = q + s
        z = inputs["Z"]
        j, n = d.n_groups, d.n_obs
        ll = np.empty(j)
        ex, exx, dL = np.empty((j, dim)), np.empty((j, dim, dim)), np.empty((j, dim, dim))
        dtq = np.empty(j)
        cen = self._centers if centers is None else np.array(centers, dtype=float, order="C")
        g_mu, g_ws, g_z = np.empty(n), np.empty(n), np.empty((n, q))
        k_mean = self._x_mean.shape[1]
        if fused:
            xg = np.empty((j, k_mean + self._x_ws.shape[1]))
            intervals = dict(
                y=d.y, X=self._x_mean, beta=p["beta"], W=self._x_ws, tau=p["tau"], xg=xg
            )
        else:
            intervals = self._intervals(inputs["r0"], p)
        _quad.engine_loglik(
            **inputs,
            L=np.ascontiguousarray(p["L"]),
            tau_q=float(p["tau_q"]),
            full=self.plan.method == "aghq",
            gh_x=self.gh_x,
            gh_logw=self.gh_logw,
            ll=ll,
            ex=ex,
            exx=exx,
            dL=dL,
            dtq=dtq,
            centers=cen,
            g_mu=g_mu,
            g_ws=g_ws,
            g_z=g_z,
            adapt=adapt,
            compute_grad=score,
            n_threads=self.n_threads,
            **intervals,
        )
        self.n_evals += 1
        grad_random = lay.chol_gradient(dL, d_tau_q=dtq)
        llf = float(ll.sum())
        g_hi = intervals.get("g_hi")
        if self._gw is not None:
            # group weights: sum_j w_j ll_j, and each group's score times w_j
            llf = float(ll @ self._gw)
            grad_random = grad_random * self._gw[:, None]
            if score:
                g_mu, g_ws = g_mu * self._gw_unit, g_ws * self._gw_unit
                g_z = g_z * self._gw_unit[:, None]
                g_hi = None if g_hi is None else g_hi * self._gw_unit
        grad_thr = None
        if score and lay.thresholds:
            grad_thr = threshold_scores(
                d.y, -g_mu - g_hi, g_hi, p["thresholds"], self._group, d.n_groups
            )
        grad = None
        if score:
            if fused:
                xw = xg if self._gw is None else xg * self._gw[:, None]
                g_beta, g_tau = xw[:, :k_mean].sum(axis=0), xw[:, k_mean:].sum(axis=0)
            else:
                g_beta = rmatvec(self._x_mean, g_mu, self._blas)
                g_tau = rmatvec(self._x_ws, g_ws, self._blas)
            blocks = [g_beta]
            if grad_thr is not None:
                blocks.append(grad_thr.sum(axis=0))
            if st.bs and self._bs_constant:
                # one BS coefficient, sigma_u the same on every row
                blocks.append(np.array([0.5 * z[0, 0] * g_z[:, 0].sum()]))
            elif st.bs:
                blocks.append(rmatvec(self._x_bs, 0.5 * z[:, 0] * g_z[:, 0], self._blas))
            blocks += [g_tau, grad_random.sum(axis=0)]
            grad = np.concatenate(blocks)
        return Evaluation(
            theta=np.array(theta, dtype=float),
            llf=llf,
            score=grad,
            ll_groups=ll,
            centers=cen.copy(),
            ex=ex,
            exx=exx,
            grad_mu=g_mu if score else None,
            grad_ws=g_ws if score else None,
            grad_z=g_z if score else None,
            grad_random=grad_random,
            grad_thresholds=grad_thr,
        )

    def rescaled(self, ev: Evaluation, theta: np.ndarray, log_y_scale: float) -> Evaluation:
        """``ev``, an evaluation of this objective, carried over to the same model
        with the outcome multiplied by ``exp(log_y_scale)`` and parameters ``theta``
        (the same standardised effects, so the same node placement): each unit's
        log-density falls by ``log_y_scale`` (times its weight).  No score, moments
        or gradients: the caller reads the log-likelihood and the placement.
        Outcomes with interval units (probabilities, not densities) are refused."""
        d = self.design
        if d.interval_outcome:
            raise ValueError("rescaled: interval units have no change-of-units term")
        if self._w is None:
            weight = d.group_sizes.astype(float)
        else:
            weight = np.add.reduceat(self._w, d.group_ptr[:-1])
        ll = ev.ll_groups - log_y_scale * weight
        llf = float(ll.sum()) if self._gw is None else float(ll @ self._gw)
        return Evaluation(
            theta=np.array(theta, dtype=float),
            llf=llf,
            score=None,
            ll_groups=ll,
            centers=ev.centers.copy(),
            ex=None,
            exx=None,
            grad_mu=None,
            grad_ws=None,
            grad_z=None,
            grad_random=None,
        )

    def full_points(self, theta: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The full integrand (over all standardised effects) at given points.

        Parameters
        ----------
        theta : (k_params,) parameters
        points : (n_groups, P, q + s) standardised effects per group

        Returns
        -------
        logpsi : (n_groups, P) log p(y | x) + log N(theta; 0, I)
        x : (n_groups, P, q + s) the effects (u, v) at the points
        """
        p, inputs = self._inputs(theta)
        intervals = self._intervals(inputs["r0"], p)
        intervals.pop("g_hi", None)
        del inputs["Kvv"], inputs["Kuv"], inputs["C"]
        points = np.ascontiguousarray(points, dtype=float)
        logpsi = np.empty(points.shape[:2])
        x = np.empty(points.shape)
        _quad.engine_points_full(
            **inputs,
            L=np.ascontiguousarray(p["L"]),
            tau_q=float(p["tau_q"]),
            points=points,
            logpsi=logpsi,
            x=x,
            **intervals,
        )
        return logpsi, x

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
        if ev.grad_thresholds is not None:
            blocks.append(ev.grad_thresholds)
        if self.layout.structure.bs:
            # the gradient in the BS linear predictor: sigma_u,ij g_z,ij / 2
            g_bs = 0.5 * self._z(self.layout.unpack(theta))[:, 0] * ev.grad_z[:, 0]
            blocks.append(np.add.reduceat(d.x_bs * g_bs[:, None], starts, axis=0))
        blocks += [
            np.add.reduceat(d.x_ws * ev.grad_ws[:, None], starts, axis=0),
            ev.grad_random,
        ]
        return np.hstack(blocks)

    @property
    def closed_form(self) -> bool:
        return self.plan.method == "closed form"
