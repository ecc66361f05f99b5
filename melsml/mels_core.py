"""The MELS model of a design and its fit: design -> objective -> optimise ->
results, with the stages that depend on where the data are as methods."""

from __future__ import annotations

import logging
import warnings
from dataclasses import replace
from functools import cached_property

import numpy as np
import pandas as pd

from .config import COARSE_POINTS, Association, Integration, ModelOptions
from .exceptions import BoundaryWarning, MELSInputError
from .formula import DesignMatrices, collapse_duplicates
from .identify import check_identifiable
from .likelihood import MELSObjective, check_threads
from .optimize import maximize, warn_fit
from .ordinal import threshold_names
from .params import ParamLayout, as_param_vector
from .plan import IntegrationPlan, plan_for_design
from .results import MELSResults, StandardisedFit
from .scaling import Scaling
from .start import start_values
from .structure import RandomStructure

__all__ = ["MELSCore"]

logger = logging.getLogger(__name__)


class MELSCore:
    """A MELS model of a design: its options, random-effect structure and
    parameter layout, and the fit.  :class:`~melsml.MELS` adds the
    constructors (formulas, MixWILD files) and the choice of backend; the Dask
    backend's model shares the rest (see :mod:`melsml.distributed_model`).

    Parameters
    ----------
    design : DesignMatrices
    random_scale, association, integration, n_points, weight_type, weight_scaling, family, link
        See :class:`melsml.config.ModelOptions`.
    """

    def __init__(
        self,
        design: DesignMatrices,
        *,
        random_scale: bool = True,
        association: Association = "linear",
        integration: Integration = "auto",
        n_points: int | None = None,
        weight_type: str = "frequency",
        weight_scaling: str = "size",
        family: str = "gaussian",
        link: str = "probit",
    ):
        self.design = design
        self.options = ModelOptions(
            random_scale=random_scale,
            association=association,
            integration=integration,
            n_points=n_points,
            weight_type=weight_type,
            weight_scaling=weight_scaling,
            family=family,
            link=link,
        )
        if (design.categories is not None) != (family == "ordinal"):
            raise MELSInputError(
                "family='ordinal' needs a design made by melsml.ordinal.apply_ordinal "
                "(use MELS.from_formula)"
            )
        if not design.random_intercept_only and self.options.association == "quadratic":
            raise MELSInputError(
                "association='quadratic' needs a single random intercept (re_formula='~ 1')"
            )
        scale = tuple(design.scale_names) if self.options.random_scale else ()
        if not self.options.random_scale and design.scale_names != ("Intercept",):
            raise MELSInputError(
                f"ws_re_formula={design.formulas.get('ws_re_formula')!r} gives random scale "
                "effects, but random_scale=False"
            )
        if self.options.association == "quadratic" and scale != ("Intercept",):
            raise MELSInputError(
                "association='quadratic' needs a single random scale intercept "
                "(ws_re_formula='~ 1')"
            )
        self.structure = RandomStructure(
            location=tuple(design.re_names),
            scale=scale,
            bs=design.random_intercept_only,
            association=self.options.association,
        )
        self.layout = ParamLayout.from_structure(
            design.mean_names,
            design.bs_names,
            design.ws_names,
            self.structure,
            thresholds=threshold_names(design.categories) if design.categories is not None else (),
        )
        self.notes: tuple[str, ...] = ()
        #: notes the summary prints (e.g. that the covariates were standardised)
        self.summary_notes: list[str] = []
        #: a model read from a MixWILD definition file: the file, its stage-2 data
        self.mixwild_spec = None
        self.stage2_data: pd.DataFrame | None = None
        self._check_identifiable()

    def _check_identifiable(self) -> None:
        check_identifiable(self.design)

    def __repr__(self) -> str:
        d = self.design
        parts = [repr(d.formulas["formula"]), f"groups={d.groups!r}"]
        for opt in ("bs_formula", "ws_formula", "re_formula", "ws_re_formula"):
            if d.formulas.get(opt, "~ 1") != "~ 1":
                parts.append(f"{opt}={d.formulas[opt]!r}")
        if not self.options.random_scale:
            parts.append("random_scale=False")
        if self.options.association != "linear":
            parts.append(f"association={self.options.association!r}")
        return (
            f"<MELS {', '.join(parts)}: {d.n_obs} obs in {d.n_groups} groups, "
            f"{self.layout.k_params} parameters; {self.plan.describe()}>"
        )

    # lme4-style access to the pipeline's stages ------------------------------------
    def objective(self, n_threads: int | None = None) -> MELSObjective:
        """The log-likelihood as a function of the flat parameter vector
        (``n_threads``: see :meth:`fit`)."""
        return MELSObjective(self.design, self.layout, self.options, n_threads)

    @cached_property
    def plan(self) -> IntegrationPlan:
        """How the likelihood is integrated (see :func:`melsml.plan.plan`)."""
        return plan_for_design(self.structure, self.options, self.design)[0]

    @property
    def param_names(self) -> pd.MultiIndex:
        return self.layout.index

    def start_params(self) -> pd.Series:
        """Moment-based starting values."""
        return pd.Series(
            start_values(self.design, self.layout, self.options.link), index=self.layout.index
        )

    def loglike(self, params) -> float:
        """Log-likelihood at ``params`` (Series in :attr:`param_names` order or array)."""
        return self.objective().loglike(self._as_vector(params, "params"))

    def _as_vector(self, params, name: str) -> np.ndarray:
        return as_param_vector(params, self.layout.index, name)

    def _off_the_boundary(self, theta0: np.ndarray, boundary, design) -> np.ndarray:
        """A start with an SD (a diagonal of L) exactly 0 sits on a stationary point
        of the likelihood (it is even in that SD), which the optimiser cannot leave:
        move it to half the default start, and say so."""
        zero = [pos for pos in boundary if theta0[pos] == 0.0]
        if not zero:
            return theta0
        default = start_values(design, self.layout, self.options.link)
        theta0 = theta0.copy()
        for pos in zero:
            theta0[pos] = 0.5 * default[pos] if default[pos] != 0 else 0.1
            logger.info(
                "start value of %s moved from 0 (a stationary point) to %.4g",
                self.layout.index[pos][1],
                theta0[pos],
            )
        return theta0

    def _fit(self, start_params, cov_type, maxiter, tol, n_threads) -> MELSResults:
        if n_threads is not None:
            check_threads(n_threads)
        if cov_type is None:
            d = self.design
            weighted = (
                d.group_weights is not None
                or d.unit_weights is not None
                or d.unit_weights_column is not None
            )
            sampling = weighted and self.options.weight_type == "sampling"
            cov_type = "robust" if sampling else "observed"
        if cov_type not in ("observed", "robust"):
            raise MELSInputError(
                f"unknown cov_type {cov_type!r}; allowed values: 'observed', 'robust'"
            )
        # the fit runs in standardised units (see melsml.scaling): the same
        # problem, steps and convergence tests whatever the data's units
        scaling = self._scaling()
        std_obj, coarse, std_sample = self._std_objectives(scaling, n_threads)
        boundary = self.layout.boundary_positions
        if start_params is None:
            theta0 = start_values(std_sample, self.layout, self.options.link)
        else:
            theta0 = scaling.from_original(
                self._as_vector(start_params, "start_params"), self.layout
            )
            theta0 = self._off_the_boundary(theta0, boundary, std_sample)
        theta_std, hess_std, info, std_ev = maximize(
            std_obj,
            theta0,
            maxiter=maxiter,
            tol=tol,
            boundary_params=boundary,
            coarse=coarse,
            # where the Hessian has no closed form (melsml.hessian), from forward
            # differences of the score: k evaluations instead of 2k, with an
            # O(h) = 1e-5 relative error in the standard errors
            # (tests/test_optimize.py holds them to central ones)
            forward_hessian=True,
            return_evaluation=True,
        )
        offset, jac = scaling.affine(self.layout)
        theta = offset + jac @ theta_std
        final = self._final_evaluation(theta, std_obj, n_threads, std_ev, scaling)
        warn_fit(info, stacklevel=4)
        for pos in boundary:
            if abs(theta_std[pos]) < 1e-3:
                name = self.layout.index[pos][1]
                what = (
                    "a random scale"
                    if name in ("sigma_omega", "L(omega,omega)")
                    else "this random effect's variance (beyond its covariances)"
                )
                warnings.warn(
                    f"{name} = {abs(theta[pos]):.2e} is at (or near) its boundary 0: "
                    f"there is little evidence of {what}; test it with "
                    "melsml.compare(), which uses the 50:50 chi-square mixture",
                    BoundaryWarning,
                    stacklevel=3,
                )
        return self._results_class(
            self,
            theta,
            info,
            final,
            cov_type=cov_type,
            standardised=StandardisedFit(std_obj, theta_std, hess_std, jac),
        )

    # the stages of a fit that depend on where the data are -----------------------
    _results_class = MELSResults

    def _scaling(self) -> Scaling:
        return Scaling.of(self.design)

    def _std_objectives(self, scaling: Scaling, n_threads):
        """The objective in standardised units, a cheaper one for a coarse first
        phase (or None), and the standardised design the start comes from."""
        std_design = scaling.design(self.design)
        # a censored or ordinal outcome visits every unit at every node: identical
        # units of a group are merged into one with a frequency weight
        collapsed = collapse_duplicates(std_design) if std_design.interval_outcome else None
        if collapsed is not None:
            logger.info(
                "collapsed %d rows into %d with frequency weights", std_design.n_obs,
                collapsed.n_obs,
            )  # fmt: skip
        std_obj = MELSObjective(collapsed or std_design, self.layout, self.options, n_threads)
        coarse = None
        if std_design.interval_outcome and std_obj.plan.n_points > COARSE_POINTS:
            coarse = MELSObjective(
                collapsed or std_design,
                self.layout,
                replace(self.options, n_points=COARSE_POINTS),
                n_threads,
            )
        return std_obj, coarse, std_design

    def _final_evaluation(self, theta: np.ndarray, std_obj, n_threads, std_ev, scaling):
        """The evaluation at the estimates in the data's units.  The results read
        its log-likelihood and node placement only.  The standardised effects
        (and so the node placement) are the same in both units, and the
        log-likelihood differs by the change of units of the outcome, so it is
        carried over from the fit's last evaluation; with interval units
        (probabilities) it is computed afresh, from the fit's placement."""
        if not self.design.interval_outcome and isinstance(std_obj, MELSObjective):
            return std_obj.rescaled(std_ev, theta, scaling.log_jacobian_per_obs)
        return self.objective(n_threads).evaluate(theta, centers=std_obj.centers, score=False)
