"""The three-level model's parameter layout and log-likelihood objective.

========  ==============================================================
block     meaning
========  ==============================================================
beta      mean function coefficients
alpha     school (inner level) log-variance function, log var(u_jk) = s'alpha
tau       within-school (residual) log-variance function, log var(e) = w'tau
<inner>   the inner level's random scale, named as MixWILD names it:
          v_jk = tau_l theta1 + sigma_omega theta2 (empty without one)
<outer>   free entries of the Cholesky factor L3 of the covariance of the
          outer level's effects (location, [scale], [bs]), named
          ``L(row,col)``
========  ==============================================================

The blocks of the levels are named after the levels (``"district"``,
``"school"``).  The compiled kernel is :mod:`melsml._nested`; this module
forms each school's sums, calls it, and applies the chain rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import _nested
from .formula import DesignMatrices
from .params import BlockLayout
from .quadrature import gauss_hermite

#: the outer level's effects, in the kernel's order
OUTER_EFFECTS = ("location", "scale", "bs")


@dataclass(frozen=True)
class NestedLayout(BlockLayout):
    """Names and positions of the three-level model's parameters.

    Attributes
    ----------
    beta, alpha, tau : term names of the mean, BS and WS functions
    levels : (outer, inner) level names (also the names of their blocks)
    inner : names of the inner level's entries: ("tau_l", "sigma_omega"),
        ("sigma_omega",) (association "none") or ()
    outer_effects : which of OUTER_EFFECTS the outer level has
    """

    beta: tuple[str, ...]
    alpha: tuple[str, ...]
    tau: tuple[str, ...]
    levels: tuple[str, str]
    inner: tuple[str, ...]
    outer_effects: tuple[str, ...]

    @property
    def d3(self) -> int:
        return len(self.outer_effects)

    @property
    def outer_entries(self) -> tuple[tuple[int, int], ...]:
        return tuple((i, j) for i in range(self.d3) for j in range(i + 1))

    @property
    def outer(self) -> tuple[str, ...]:
        e = self.outer_effects
        return tuple(f"L({e[i]},{e[j]})" for i, j in self.outer_entries)

    def block_names(self) -> list[tuple[str, tuple[str, ...]]]:
        return [
            ("beta", self.beta),
            ("alpha", self.alpha),
            ("tau", self.tau),
            (self.levels[1], self.inner),
            (self.levels[0], self.outer),
        ]

    @property
    def boundary_positions(self) -> tuple[int, ...]:
        """Positions of the SDs (diagonals of L3, sigma_omega): 0 is a boundary."""
        sl = self.slices
        out = [
            sl[self.levels[0]].start + c for c, (i, j) in enumerate(self.outer_entries) if i == j
        ]
        if "sigma_omega" in self.inner:
            out.append(sl[self.levels[1]].start + self.inner.index("sigma_omega"))
        return tuple(sorted(out))

    def unpack(self, theta: np.ndarray) -> dict:
        """Blocks of ``theta``: beta, alpha, tau, tau_l, sigma_omega and L3 (d3 x d3)."""
        theta = np.asarray(theta, dtype=float)
        sl = self.slices
        inner = dict(zip(self.inner, theta[sl[self.levels[1]]], strict=True))
        chol = np.zeros((self.d3, self.d3))
        for c, (i, j) in enumerate(self.outer_entries):
            chol[i, j] = theta[sl[self.levels[0]]][c]
        return {
            "beta": theta[sl["beta"]],
            "alpha": theta[sl["alpha"]],
            "tau": theta[sl["tau"]],
            "tau_l": inner.get("tau_l", 0.0),
            "sigma_omega": inner.get("sigma_omega", 0.0),
            "L3": chol,
        }

    def kernel_map(self, chol: np.ndarray) -> np.ndarray:
        """The kernel's M (3 x d3): b3 = (u3, v3, a3) = M theta3."""
        out = np.zeros((3, self.d3))
        for i, eff in enumerate(self.outer_effects):
            out[OUTER_EFFECTS.index(eff)] = chol[i]
        return out

    def canonical(self, theta: np.ndarray) -> np.ndarray:
        """Reported signs: non-negative diagonal of L3 and sigma_omega (each column of
        L3, and the sign of theta2, can flip without changing the likelihood)."""
        return np.asarray(theta, dtype=float) * self.sign_flip(theta)

    def sign_flip(self, theta: np.ndarray) -> np.ndarray:
        """The +-1 factors :meth:`canonical` applies."""
        theta = np.asarray(theta, dtype=float)
        flip = np.ones(theta.size)
        sl = self.slices
        start = sl[self.levels[0]].start
        for col in range(self.d3):
            diag = self.outer_entries.index((col, col))
            if theta[start + diag] < 0:
                for c, (_, j) in enumerate(self.outer_entries):
                    if j == col:
                        flip[start + c] = -1.0
        if "sigma_omega" in self.inner:
            pos = sl[self.levels[1]].start + self.inner.index("sigma_omega")
            if theta[pos] < 0:
                flip[pos] = -1.0
        return flip


@dataclass(frozen=True)
class NestedEvaluation:
    """One evaluation of the three-level objective.

    Attributes
    ----------
    theta, llf, score : as for the two-level model
    ll_groups : (n_outer,) log-likelihood of each outer group
    score_groups : (n_outer, k_params) per-outer-group score, or None
    centers : (n_outer, d3 + d3^2) outer node placement (mode, Cholesky scale)
    eb_inner : (n_inner, 10) posterior moments of each inner group (see
        :func:`melsml._nested.nested_loglik`)
    eb_outer : (n_outer, d3 + d3^2) posterior E theta3 and E theta3 theta3'
    """

    theta: np.ndarray
    llf: float
    score: np.ndarray | None
    ll_groups: np.ndarray
    score_groups: np.ndarray | None
    centers: np.ndarray
    eb_inner: np.ndarray
    eb_outer: np.ndarray


@dataclass
class NestedObjective:
    """The three-level log-likelihood as a function of the flat parameter vector.

    Parameters
    ----------
    design : DesignMatrices, groups = inner groups sorted so that each outer
        group's are contiguous
    outer_ptr : (n_outer + 1,) offsets of each outer group's inner groups
    layout : NestedLayout
    n_points : (outer per dimension, inner) quadrature points
    n_threads : threads of the kernel's loop over outer groups
    """

    design: DesignMatrices
    outer_ptr: np.ndarray
    layout: NestedLayout
    n_points: tuple[int, int]
    n_threads: int = 1
    n_evals: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        d = self.design
        self.outer_ptr = np.ascontiguousarray(self.outer_ptr, dtype=np.intp)
        self._ptr = np.ascontiguousarray(d.group_ptr, dtype=np.intp)
        # the rows of each outer group, for per-outer-group scores
        self._outer_rows = d.group_ptr[self.outer_ptr]
        d3 = self.layout.d3
        self.centers = np.zeros((self.n_outer, d3 + d3 * d3))
        self.centers[:, d3:] = np.eye(d3).ravel()
        self._modes = np.zeros(d.n_groups)

    @property
    def n_outer(self) -> int:
        return self.outer_ptr.size - 1

    def reset_counter(self) -> None:
        self.n_evals = 0

    def evaluate(self, theta, *, score: bool = True, groups: bool = False) -> NestedEvaluation:
        """Log-likelihood (and score, and per-outer-group scores) at ``theta``."""
        self.n_evals += 1
        theta = np.asarray(theta, dtype=float)
        lay, des = self.layout, self.design
        p = lay.unpack(theta)
        r0 = des.y - des.x_mean @ p["beta"]
        logd = des.x_ws @ p["tau"]
        z = np.exp(0.5 * (des.x_bs @ p["alpha"]))
        stats = np.empty((des.n_groups, 8))
        _nested.school_sums(r0, logd, z, self._ptr, stats)
        if not np.all(np.isfinite(stats)):
            return self._nonfinite(theta)
        mmap = np.ascontiguousarray(lay.kernel_map(p["L3"]))
        n_out, n_in = self.n_points
        gx_o, glw_o = gauss_hermite(n_out)
        gx_i, glw_i = gauss_hermite(n_in)
        k_out, j_in, d3 = self.n_outer, des.n_groups, lay.d3
        ll = np.zeros(k_out)
        g_m = np.zeros((k_out, 3 * d3))
        g_school = np.zeros((k_out, 2))
        umom = np.zeros((j_in, 6))
        eb_in = np.zeros((j_in, 10))
        eb_out = np.zeros((k_out, d3 + d3 * d3))
        centers = self.centers.copy()
        _nested.nested_loglik(
            stats, self.outer_ptr, mmap, float(p["tau_l"]), float(p["sigma_omega"]),
            gx_i, glw_i, gx_o, glw_o, centers, self._modes, True,
            ll, g_m, g_school, umom, eb_in, eb_out, self.n_threads,
        )  # fmt: skip
        llf = float(ll.sum())
        if not np.isfinite(llf):
            return self._nonfinite(theta)
        self.centers = centers
        total = per_outer = None
        if score or groups:
            n = des.n_obs
            g_mu, g_ws, g_bs = np.empty(n), np.empty(n), np.empty(n)
            _nested.unit_gradients(r0, logd, z, self._ptr, umom, g_mu, g_ws, g_bs)
            if groups:
                per_outer = self._score_outer(g_mu, g_ws, g_bs, g_m, g_school)
                total = per_outer.sum(axis=0)
            else:
                total = self._score(g_mu, g_ws, g_bs, g_m.sum(axis=0), g_school.sum(axis=0))
        return NestedEvaluation(theta, llf, total, ll, per_outer, centers, eb_in, eb_out)

    def _nonfinite(self, theta) -> NestedEvaluation:
        k = self.layout.k_params
        empty = np.zeros((0,))
        return NestedEvaluation(
            theta, -np.inf, np.zeros(k), empty, None, self.centers, empty, empty
        )

    def _random_score(self, out: np.ndarray, g_m: np.ndarray, g_school: np.ndarray) -> None:
        """Fill the levels' blocks of ``out`` (..., k_params) from the kernel's
        scores in M (..., 3 d3) and in (tau_l, sigma_omega) (..., 2)."""
        lay = self.layout
        sl = lay.slices
        inner = sl[lay.levels[1]]
        for c, name in enumerate(lay.inner):
            out[..., inner.start + c] = g_school[..., 0 if name == "tau_l" else 1]
        outer = sl[lay.levels[0]]
        for c, (i, j) in enumerate(lay.outer_entries):
            row = OUTER_EFFECTS.index(lay.outer_effects[i])
            out[..., outer.start + c] = g_m[..., row * lay.d3 + j]

    def _score(self, g_mu, g_ws, g_bs, g_m, g_school) -> np.ndarray:
        """The score from the units' gradients (Fisher's identity)."""
        lay, des = self.layout, self.design
        out = np.zeros(lay.k_params)
        sl = lay.slices
        out[sl["beta"]] = g_mu @ des.x_mean
        out[sl["tau"]] = g_ws @ des.x_ws
        out[sl["alpha"]] = g_bs @ des.x_bs
        self._random_score(out, g_m, g_school)
        return out

    def _score_outer(self, g_mu, g_ws, g_bs, g_m, g_school) -> np.ndarray:
        """(n_outer, k_params) score of each outer group."""
        lay, des = self.layout, self.design
        rows = self._outer_rows[:-1]
        out = np.zeros((self.n_outer, lay.k_params))
        sl = lay.slices
        out[:, sl["beta"]] = np.add.reduceat(des.x_mean * g_mu[:, None], rows, axis=0)
        out[:, sl["tau"]] = np.add.reduceat(des.x_ws * g_ws[:, None], rows, axis=0)
        out[:, sl["alpha"]] = np.add.reduceat(des.x_bs * g_bs[:, None], rows, axis=0)
        self._random_score(out, g_m, g_school)
        return out

    # the interface the optimiser uses --------------------------------------------
    def loglike(self, theta) -> float:
        return self.evaluate(theta, score=False).llf

    def score(self, theta) -> np.ndarray:
        return self.evaluate(theta).score

    def score_groups(self, theta) -> np.ndarray:
        return self.evaluate(theta, score=False, groups=True).score_groups
