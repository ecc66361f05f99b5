"""MELS: the model class.  Orchestration only: formula -> design -> objective
-> optimise -> results."""

from __future__ import annotations

import logging
import warnings
from dataclasses import replace
from functools import cached_property

import numpy as np
import pandas as pd

from .censoring import apply_censoring
from .config import COARSE_POINTS, Association, Integration, ModelOptions
from .exceptions import BoundaryWarning, MELSInputError
from .formula import DesignMatrices, build_design, collapse_duplicates
from .identify import check_identifiable
from .levels import IdScope
from .likelihood import MELSObjective, check_threads
from .multivariate import MultivariateMELS
from .mvdesign import long_to_wide
from .optimize import maximize, warn_fit
from .ordinal import apply_ordinal, threshold_names
from .params import ParamLayout, as_param_vector
from .plan import IntegrationPlan, plan_for_design
from .results import CovType, MELSResults, StandardisedFit
from .scaling import Scaling
from .start import start_values
from .structure import RandomStructure
from .threelevel import ThreeLevelMELS

__all__ = ["MELS"]

logger = logging.getLogger(__name__)


class MELS:
    """Mixed-effects location scale model with a random intercept.

    ::

        y_ij = x_ij' beta + sigma_u,ij theta1_j + e_ij
        log sigma_u,ij^2 = s_ij' alpha              (between-group variance function)
        e_ij ~ N(0, exp(w_ij' tau + omega_j))         (within-group variance function)
        omega_j = tau_l theta1_j [+ tau_q theta1_j^2] + sigma_omega theta2_j

    with theta1_j, theta2_j independent standard normal.

    Parameters
    ----------
    design : DesignMatrices
        Usually built by :meth:`from_formula`.
    random_scale, association, integration, n_points
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
        check_identifiable(design)

    @classmethod
    def from_formula(
        cls,
        formula: str,
        data: pd.DataFrame,
        groups: str | list[str],
        *,
        bs_formula: str = "~ 1",
        ws_formula: str = "~ 1",
        re_formula: str = "~ 1",
        ws_re_formula: str = "~ 1",
        group_weights: str | None = None,
        weights: str | None = None,
        weight_type: str = "frequency",
        weight_scaling: str = "size",
        random_scale: bool = True,
        association: Association = "linear",
        integration: Integration = "auto",
        n_points: int | None = None,
        random_bs: bool = False,
        ids: IdScope = "auto",
        censoring=None,
        family: str = "gaussian",
        link: str = "probit",
        cov_structure: str = "unstructured",
        residual_corr: bool = True,
        outcome: str | None = None,
        unit: str | None = None,
    ) -> MELS | ThreeLevelMELS | MultivariateMELS:
        """Specify a MELS model with formulas.

        Parameters
        ----------
        formula : str or list of str
            Mean function, e.g. ``"y ~ prior + fsm"`` (formulaic syntax).  A
            list, one formula per outcome on wide data
            (``["english ~ prior", "maths ~ prior"]``), specifies a model of
            several outcomes (returns a
            :class:`~melsml.multivariate.MultivariateMELS`; ``ws_formula`` may
            then be a list too).
        data : pandas.DataFrame
        groups : str or [str, str]
            Column identifying the groups (schools); or two columns, outermost
            first (``["district", "school"]``, ``["school", "cohort"]``), for a
            three-level model (returns a
            :class:`~melsml.threelevel.ThreeLevelMELS`).
        bs_formula : str
            Between-group (location) log-variance function, default ``"~ 1"``.
        ws_formula : str
            Within-group (residual) log-variance function, default ``"~ 1"``.
        re_formula : str
            Random location effects, default ``"~ 1"`` (random intercept);
            ``"~ 1 + prior"`` adds a random slope on ``prior`` with an
            unstructured covariance (then ``bs_formula`` must be ``"~ 1"``).
        ws_re_formula : str
            Random scale effects in the within-group log-variance, default
            ``"~ 1"`` (a random scale intercept, omega_j); ``"~ 1 + prior"``
            adds a random scale slope on ``prior``.  All random effects,
            location and scale, have one unstructured covariance.
        group_weights : str, optional
            Column of group (school) weights, constant within each group.
        weights : str, optional
            Column of unit (student) weights.
        weight_scaling : {"size", "effective", "none"}
            Scaling of sampling unit weights within groups (see
            :class:`melsml.config.ModelOptions`).
        weight_type : {"frequency", "sampling"}
            Frequency weights (a school of weight w counts as w identical
            schools) or sampling weights (the weighted pseudo-likelihood of
            Pfeffermann et al. 1998, with sandwich standard errors by default).
        random_scale : bool or list of str
            Include the random scale effect (default True).  In a three-level
            model, the levels with a random scale effect (True: both).
        association : {"none", "linear", "quadratic"}
            Location-scale association (default "linear").
        integration : {"auto", "exact-location", "aghq"}
            With several outcomes: {"auto", "product", "sparse"} (see
            :meth:`melsml.multivariate.MultivariateMELS.from_formula`).
        n_points : int, optional
            Quadrature points per dimension (default: 11 for one scale effect,
            fewer per dimension for more; see :class:`melsml.config.ModelOptions`).
            In a three-level model, an int or a pair (outer per dimension,
            inner); default outside 7 for the location effect alone, 5 per
            dimension with a scale effect, 7 per dimension with ``random_bs``;
            11 inside.
        family : {"gaussian", "ordinal"}
            ``"ordinal"``: an ordinal outcome (integer category codes), the
            mixed-effects ordinal location scale model of
            :mod:`melsml.ordinal`: thresholds replace the mean's intercept and
            the WS intercept is fixed at 0.
        link : {"probit", "logit"}
            Ordinal outcomes: the latent residual's distribution.
        cov_structure : {"unstructured", "independent", "no-location-scale", "uncorrelated-scales"}
            Several outcomes: the covariance of the school effects (see
            :meth:`melsml.multivariate.MultivariateMELS.from_formula`).
        residual_corr : bool
            Several outcomes: estimate the within-student residual correlations
            (default) or fix them at 0.
        outcome, unit : str, optional
            Several outcomes in long data (one row per student and outcome):
            ``outcome`` names each row's outcome (English, maths) and ``unit``
            the student; ``formula``'s left side holds the scores.  The model
            is the one the wide data and a list of formulas give.
        censoring : (lower, upper), optional
            A censored (Tobit) outcome with floor and ceiling effects: each
            limit is a number, a column of per-row limits (missing: no limit)
            or None.  Rows at or below the lower limit (at or above the upper)
            count as "at or below" ("at or above") it; the model is that of
            the latent outcome, integrated by adaptive quadrature over all
            random effects (see :mod:`melsml.censoring`).
        random_bs : bool
            Three-level models: a random effect of the outer level in the
            inner level's log-variance function (log var(u_jk) = s'alpha + a_k),
            correlated with the outer level's other effects.
        ids : {"auto", "unique", "within"}
            Three-level models: whether inner ids are unique ("unique": an id
            under two parents is an error) or labels within their parent
            ("within": cohort "2019" in every school); see
            :func:`melsml.levels.nest_ids`.

        Notes
        -----
        Rows with a missing value in any used column are dropped with a
        :class:`~melsml.exceptions.MissingDataWarning` giving the count.
        """
        if outcome is not None:
            if isinstance(formula, (list, tuple)) or not isinstance(groups, str):
                raise MELSInputError(
                    "long data (outcome=...) take one formula and one groups column"
                )
            formula, data = long_to_wide(formula, data, groups, outcome, unit)
            return cls._multivariate(formula, data, groups, locals())
        if unit is not None:
            raise MELSInputError("unit applies to long data with several outcomes (outcome=...)")
        if isinstance(formula, (list, tuple)):
            return cls._multivariate(formula, data, groups, locals())
        if cov_structure != "unstructured" or residual_corr is not True:
            raise MELSInputError(
                "cov_structure and residual_corr apply to several outcomes (a list of formulas)"
            )
        if not isinstance(groups, str) and len(groups) != 1:
            return cls._three_level(formula, data, groups, locals())
        if not isinstance(groups, str):
            groups = groups[0]
        ModelOptions(
            random_scale=random_scale,
            association=association,
            integration=integration,
            n_points=n_points,
            weight_type=weight_type,
            weight_scaling=weight_scaling,
            family=family,
            link=link,
        )  # fail fast on options
        if family == "ordinal" and censoring is not None:
            raise MELSInputError("censoring applies to Gaussian outcomes, not family='ordinal'")
        design = build_design(
            formula,
            data,
            groups,
            bs_formula=bs_formula,
            ws_formula=ws_formula,
            re_formula=re_formula,
            ws_re_formula=ws_re_formula,
            group_weights=group_weights,
            weights=weights,
        )
        design = apply_censoring(design, data, censoring)
        if family == "ordinal":
            design = apply_ordinal(design)
        return cls(
            design,
            family=family,
            link=link,
            random_scale=random_scale,
            association=association,
            integration=integration,
            n_points=n_points,
            weight_type=weight_type,
            weight_scaling=weight_scaling,
        )

    @staticmethod
    def _multivariate(formulas, data, groups, given: dict) -> MultivariateMELS:
        """Several outcomes; options the multivariate model does not have are refused."""
        defaults = {
            "bs_formula": "~ 1", "re_formula": "~ 1", "ws_re_formula": "~ 1",
            "group_weights": None, "weights": None,
            "association": "linear", "random_bs": False,
            "censoring": None, "family": "gaussian",
        }  # fmt: skip
        keys = ("cov_structure", "residual_corr", "random_scale", "integration")
        extra = {k: given[k] for k in keys}
        for name, default in defaults.items():
            if given[name] != default:
                raise MELSInputError(
                    f"{name}={given[name]!r} is not available with several outcomes "
                    "(one random location and one random scale effect per outcome)"
                )
        if not isinstance(groups, str):
            if len(groups) != 1:
                raise MELSInputError("several outcomes take one groups column")
            groups = groups[0]
        return MultivariateMELS.from_formula(
            list(formulas), data, groups, ws_formula=given["ws_formula"],
            n_points=given["n_points"], **extra,
        )  # fmt: skip

    @staticmethod
    def _three_level(formula, data, groups, given: dict) -> ThreeLevelMELS:
        """The three-level model, refusing the options it does not have."""
        defaults = {
            "re_formula": "~ 1",
            "ws_re_formula": "~ 1",
            "group_weights": None,
            "weights": None,
            "integration": "auto",
            "censoring": None,
            "family": "gaussian",
        }
        for name, default in defaults.items():
            if given[name] != default:
                raise MELSInputError(
                    f"{name}={given[name]!r} is not yet available in three-level models"
                )
        return ThreeLevelMELS.from_formula(
            formula,
            data,
            groups,
            bs_formula=given["bs_formula"],
            ws_formula=given["ws_formula"],
            random_scale=given["random_scale"],
            random_bs=given["random_bs"],
            association=given["association"],
            n_points=given["n_points"],
            ids=given["ids"],
        )

    @classmethod
    def from_mixwild(cls, def_path) -> MELS:
        """Specify the model of a MixWILD stage-1 definition file (and read its data).

        Settings melsml does not use (ridge, convergence, iteration limits) are
        accepted and listed in :attr:`notes`; settings it cannot honour raise
        an error that names them.  See :mod:`melsml.mixwild`.
        """
        from . import mixwild

        spec = mixwild.read_def(def_path)
        data = mixwild.read_data(spec)
        model = cls.from_formula(data=data, **spec.model_kwargs())
        model.notes = spec.notes
        for note in spec.notes:
            logger.info("MixWILD setting %s", note)
        return model

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

    def fit(
        self,
        start_params=None,
        *,
        cov_type: CovType | None = None,
        maxiter: int = 500,
        tol: float = 1e-12,
        n_threads: int | None = None,
    ) -> MELSResults:
        """Fit by maximum likelihood.

        Parameters
        ----------
        start_params : Series or array, optional
            Starting values; default :meth:`start_params`.  A random-effect SD
            (sigma_omega or a diagonal of L) given as exactly 0 is a stationary
            point the optimiser cannot leave; it starts at half its default
            start value instead (logged).
        cov_type : {"observed", "robust"}, optional
            Standard errors from the inverse observed information (the default)
            or the sandwich estimator (the default with sampling weights).
        maxiter : int
            Maximum quasi-Newton iterations.
        tol : float
            Convergence tolerance on the Newton decrement g'(-H)^-1 g.
        n_threads : int, optional
            Threads of the kernel's loop over groups.  Default: all cores
            (OpenMP's default, which honours ``OMP_NUM_THREADS``) where each
            node visits the group's units (censored or ordinal outcomes,
            random scale slopes) or there are many nodes, else one (a school's
            node costs a few operations there, less than waking threads).
            Results are the same, bit for bit, whatever the number.

        Returns
        -------
        MELSResults
        """
        if n_threads is not None:
            check_threads(n_threads)
        if cov_type is None:
            weighted = self.design.row_weights is not None
            sampling = weighted and self.options.weight_type == "sampling"
            cov_type = "robust" if sampling else "observed"
        if cov_type not in ("observed", "robust"):
            raise MELSInputError(
                f"unknown cov_type {cov_type!r}; allowed values: 'observed', 'robust'"
            )
        # the fit runs in standardised units (see melsml.scaling): the same
        # problem, steps and convergence tests whatever the data's units
        scaling = Scaling.of(self.design)
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
        boundary = self.layout.boundary_positions
        if start_params is None:
            theta0 = start_values(std_design, self.layout, self.options.link)
        else:
            theta0 = scaling.from_original(
                self._as_vector(start_params, "start_params"), self.layout
            )
            theta0 = self._off_the_boundary(theta0, boundary, std_design)
        coarse = None
        expensive = std_design.interval_outcome
        if expensive and std_obj.plan.n_points > COARSE_POINTS:
            coarse = MELSObjective(
                collapsed or std_design,
                self.layout,
                replace(self.options, n_points=COARSE_POINTS),
                n_threads,
            )
        theta_std, hess_std, info = maximize(
            std_obj,
            theta0,
            maxiter=maxiter,
            tol=tol,
            boundary_params=boundary,
            coarse=coarse,
            forward_hessian=expensive,
        )
        offset, jac = scaling.affine(self.layout)
        theta = offset + jac @ theta_std
        # the standardised effects (and so the node placement) are the same in
        # both units: start the last placement search from the fit's
        final = self.objective(n_threads).evaluate(theta, centers=std_obj.centers)
        warn_fit(info)
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
                    stacklevel=2,
                )
        return MELSResults(
            self,
            theta,
            info,
            final,
            cov_type=cov_type,
            standardised=StandardisedFit(std_obj, theta_std, hess_std, jac),
        )
