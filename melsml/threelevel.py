"""Three-level location scale models: students in schools in districts, or
cohorts in schools.  Orchestration only: ids -> design -> objective ->
optimise -> results (:mod:`melsml.threelevel_results`).

::

    y_ijk = x'beta + u_k + z_ijk c_k theta1_jk + e_ijk,   z = exp(s'alpha / 2)
    log var(e_ijk) = w'tau + v_k + v_jk,   v_jk = tau_l theta1_jk + sigma_omega theta2_jk
    (u_k, v_k, a_k) = L3 theta3_k,         c_k = exp(a_k / 2)

The outer level (district) has a random location effect u_k and, as chosen,
a random scale effect v_k and a random effect a_k in the inner level's
(school's) log-variance function; the inner level has the two-level model's
random location effect (its SD from the BS function) and random scale.
"""

from __future__ import annotations

import logging
import warnings
from functools import cached_property

import numpy as np
import pandas as pd

from . import _quad
from .config import Association
from .exceptions import BoundaryWarning, MELSInputError
from .formula import DesignMatrices, build_design
from .inference import CovType, StandardisedFit
from .levels import CODE_COLUMN, IdScope, Nesting, nest_ids
from .nested import NestedLayout, NestedObjective
from .optimize import maximize, warn_fit
from .params import ParamLayout, as_param_vector
from .scaling import Scaling
from .start import start_values
from .structure import RandomStructure
from .threelevel_results import ThreeLevelResults

__all__ = ["ThreeLevelMELS"]

logger = logging.getLogger(__name__)

ASSOCIATIONS = ("none", "linear")


def _levels_with_scale(random_scale, levels: tuple[str, str]) -> tuple[str, ...]:
    if random_scale is True:
        return levels
    if random_scale is False or random_scale is None:
        return ()
    chosen = (random_scale,) if isinstance(random_scale, str) else tuple(random_scale)
    unknown = [lev for lev in chosen if lev not in levels]
    if unknown:
        raise MELSInputError(
            f"random_scale names {unknown[0]!r}, which is not a level; the levels are "
            f"{levels[0]!r} and {levels[1]!r} (or pass True / False)"
        )
    return tuple(lev for lev in levels if lev in chosen)


def _points(n_points, d3: int) -> tuple[int, int]:
    """(outer per dimension, inner) quadrature points."""
    if n_points is None:
        # measured: with 5 points per dimension the outer rule is accurate to
        # about 1e-8 in the log-likelihood for location and scale effects; an
        # effect in the inner BS function has a skewed posterior and needs more
        return ({1: 7, 2: 5, 3: 7}[d3], 11)
    pair = (n_points, n_points) if np.isscalar(n_points) else tuple(n_points)
    if len(pair) != 2 or not all(isinstance(p, (int, np.integer)) and p >= 3 for p in pair):
        raise MELSInputError(
            f"n_points must be an integer >= 3 or a pair (outer, inner) of them, got {n_points!r}"
        )
    return int(pair[0]), int(pair[1])


class ThreeLevelMELS:
    """Three-level mixed-effects location scale model (see the module docstring).

    Usually made by :meth:`melsml.MELS.from_formula` with ``groups=[outer, inner]``.
    """

    def __init__(
        self,
        design: DesignMatrices,
        nesting: Nesting,
        *,
        random_scale=True,
        random_bs: bool = False,
        association: Association = "linear",
        n_points=None,
    ):
        outer, inner = nesting.levels
        if association not in ASSOCIATIONS:
            raise MELSInputError(
                f"association={association!r} is not available in three-level models; "
                f"allowed values: {', '.join(ASSOCIATIONS)}"
            )
        if design.row_weights is not None:
            raise MELSInputError("weights are not yet supported in three-level models")
        if "Intercept" not in design.bs_names or "Intercept" not in design.ws_names:
            raise MELSInputError(
                "three-level models need an intercept in bs_formula and ws_formula"
            )
        for lev in nesting.levels:
            if lev in ("beta", "alpha", "tau"):
                raise MELSInputError(f"a level may not be called {lev!r} (a parameter block)")
        self.design = design
        self.nesting = nesting
        self.levels = nesting.levels
        self.random_scale = _levels_with_scale(random_scale, nesting.levels)
        self.random_bs = bool(random_bs)
        self.association = association
        self.outer_ptr, self.outer_labels = nesting.outer_ptr(design.group_labels)
        if self.outer_labels.size < 2:
            raise MELSInputError(
                f"after dropping missing values the {outer} level has a single unit"
            )
        if self.outer_labels.size == design.n_groups:
            raise MELSInputError(
                f"every {outer} has a single {inner} after dropping missing values"
            )
        effects = ("location",)
        if outer in self.random_scale:
            effects += ("scale",)
        if self.random_bs:
            effects += ("bs",)
        inner_names: tuple[str, ...] = ()
        if inner in self.random_scale:
            inner_names = ("tau_l", "sigma_omega") if association == "linear" else ("sigma_omega",)
        self.layout = NestedLayout(
            tuple(design.mean_names),
            tuple(design.bs_names),
            tuple(design.ws_names),
            nesting.levels,
            inner_names,
            effects,
        )
        self.n_points = _points(n_points, self.layout.d3)
        # the inner level's part in the two-level layout (for start values and units)
        self._inner_layout = ParamLayout.from_structure(
            design.mean_names,
            design.bs_names,
            design.ws_names,
            RandomStructure(
                location=("Intercept",),
                scale=("Intercept",) if inner_names else (),
                bs=True,
                association=association if inner_names else "none",
            ),
        )

    @classmethod
    def from_formula(
        cls,
        formula: str,
        data: pd.DataFrame,
        groups,
        *,
        bs_formula: str = "~ 1",
        ws_formula: str = "~ 1",
        random_scale=True,
        random_bs: bool = False,
        association: Association = "linear",
        n_points=None,
        ids: IdScope = "auto",
    ) -> ThreeLevelMELS:
        """Specify a three-level model (see :meth:`melsml.MELS.from_formula`)."""
        nesting = nest_ids(data, list(groups), ids)
        # the pair's column, named so that the missing-data warning reads well
        column = "/".join(nesting.levels)
        if column in data.columns:
            column = CODE_COLUMN
        if column in data.columns:
            raise MELSInputError(f"the data may not have a column named {CODE_COLUMN!r}")
        frame = data.assign(**{column: nesting.codes})
        design = build_design(formula, frame, column, bs_formula=bs_formula, ws_formula=ws_formula)
        return cls(
            design,
            nesting,
            random_scale=random_scale,
            random_bs=random_bs,
            association=association,
            n_points=n_points,
        )

    # --- descriptions ------------------------------------------------------------
    @property
    def n_outer(self) -> int:
        return int(self.outer_labels.size)

    @cached_property
    def inner_labels(self) -> pd.DataFrame:
        """(outer, inner) ids of each inner group, in the design's order."""
        lab = self.nesting.labels.loc[self.design.group_labels]
        return pd.DataFrame(
            {self.levels[0]: lab["outer"].to_numpy(), self.levels[1]: lab["inner"].to_numpy()}
        )

    def describe_integration(self) -> str:
        n_out, n_in = self.n_points
        d3 = self.layout.d3
        outer = (
            f"adaptive Gauss-Hermite over the {self.levels[0]} effects "
            f"({d3}-D, {'x'.join([str(n_out)] * d3)} = {n_out**d3} nodes)"
        )
        if self.layout.inner:
            inner = (
                f"inside, per {self.levels[1]}: exact over the location effect, "
                f"adaptive Gauss-Hermite over the scale effect ({n_in} nodes)"
            )
        else:
            inner = f"inside, per {self.levels[1]}: closed form"
        return f"nested: {outer}; {inner}"

    def __repr__(self) -> str:
        d = self.design
        return (
            f"<ThreeLevelMELS {d.formulas['formula']!r}, groups={list(self.levels)!r}: "
            f"{d.n_obs} obs in {d.n_groups} {self.levels[1]} groups in {self.n_outer} "
            f"{self.levels[0]} groups, {self.layout.k_params} parameters; "
            f"{self.describe_integration()}>"
        )

    @property
    def param_names(self) -> pd.MultiIndex:
        return self.layout.index

    # --- the pipeline ------------------------------------------------------------
    def objective(self, design: DesignMatrices | None = None, n_threads: int | None = None):
        """The log-likelihood as a function of the flat parameter vector."""
        threads = _quad.openmp_threads() if n_threads is None else int(n_threads)
        return NestedObjective(
            self.design if design is None else design,
            self.outer_ptr,
            self.layout,
            self.n_points,
            max(threads, 1),
        )

    def _start(self, design: DesignMatrices) -> np.ndarray:
        """Moment-based start values: the two-level start, its location variance
        split between the levels."""
        two = start_values(design, self._inner_layout)
        sl2 = self._inner_layout.slices
        lay = self.layout
        sl = lay.slices
        theta = np.zeros(lay.k_params)
        theta[sl["beta"]] = two[sl2["beta"]]
        alpha = two[sl2["alpha"]].copy()
        alpha[design.bs_names.index("Intercept")] -= np.log(2.0)
        theta[sl["alpha"]] = alpha
        theta[sl["tau"]] = two[sl2["tau"]]
        theta[sl[self.levels[1]]] = two[sl2["random"]]
        sd_u = float(np.exp(0.5 * alpha[design.bs_names.index("Intercept")]))
        start = sl[self.levels[0]].start
        diag = {"location": sd_u, "scale": 0.2, "bs": 0.2}
        for c, (i, j) in enumerate(lay.outer_entries):
            if i == j:
                theta[start + c] = diag[lay.outer_effects[i]]
        return theta

    def _to_original(self, scaling: Scaling) -> tuple[np.ndarray, np.ndarray]:
        """(offset, jacobian): theta = offset + jacobian @ theta* (standardised fit)."""
        lay, two = self.layout, self._inner_layout
        k, k2 = lay.k_params, two.k_params
        offset2, jac2 = scaling.affine(two)
        offset = np.zeros(k)
        jac = np.eye(k)
        offset[:k2] = offset2
        jac[:k2, :k2] = jac2
        start = lay.slices[self.levels[0]].start
        for c, (i, _) in enumerate(lay.outer_entries):
            if lay.outer_effects[i] == "location":
                jac[start + c, start + c] = scaling.y_scale
        return offset, jac

    def fit(
        self,
        start_params=None,
        *,
        cov_type: CovType = "observed",
        maxiter: int = 500,
        tol: float = 1e-10,
        n_threads: int | None = None,
    ) -> ThreeLevelResults:
        """Fit by maximum likelihood.

        Parameters
        ----------
        start_params : Series or array, optional
            Starting values in :attr:`param_names` order; default moment-based.
        cov_type : {"observed", "robust"}
            Inverse observed information, or the sandwich with the scores of
            the outer groups (districts).
        maxiter, tol
            See :meth:`melsml.MELS.fit`.
        n_threads : int, optional
            Threads of the kernel's loop over outer groups (default: OpenMP's,
            all cores unless ``OMP_NUM_THREADS`` says otherwise).  Results do
            not depend on it.
        """
        if cov_type not in ("observed", "robust"):
            raise MELSInputError(
                f"unknown cov_type {cov_type!r}; allowed values: 'observed', 'robust'"
            )
        scaling = Scaling.of(self.design)
        std_design = scaling.design(self.design)
        std_obj = self.objective(std_design, n_threads)
        offset, jac = self._to_original(scaling)
        boundary = self.layout.boundary_positions
        if start_params is None:
            theta0 = self._start(std_design)
        else:
            theta0 = np.linalg.solve(jac, self._as_vector(start_params, "start_params") - offset)
            default = self._start(std_design)
            for pos in boundary:
                if theta0[pos] == 0.0:
                    theta0[pos] = 0.5 * default[pos]
        theta_std, hess_std, info = maximize(
            std_obj, theta0, maxiter=maxiter, tol=tol, boundary_params=boundary
        )
        theta = offset + jac @ theta_std
        final_obj = self.objective(n_threads=n_threads)
        final_obj.centers = std_obj.centers.copy()
        final = final_obj.evaluate(theta, score=True)
        warn_fit(info)
        for pos in boundary:
            if abs(theta_std[pos]) < 1e-3:
                block, name = self.layout.index[pos]
                warnings.warn(
                    f"{block} {name} = {abs(theta[pos]):.2e} is at (or near) its boundary 0: "
                    f"there is little evidence of this {block}-level variance; test it "
                    "with melsml.compare() against the model without it",
                    BoundaryWarning,
                    stacklevel=2,
                )
        return ThreeLevelResults(
            self,
            theta,
            info,
            final,
            cov_type=cov_type,
            standardised=StandardisedFit(std_obj, theta_std, hess_std, jac),
        )

    def loglike(self, params) -> float:
        """Log-likelihood at ``params`` (Series in :attr:`param_names` order or array)."""
        return self.objective().loglike(self._as_vector(params))

    def _as_vector(self, params, name: str = "params") -> np.ndarray:
        return as_param_vector(params, self.layout.index, name)
