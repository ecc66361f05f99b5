"""MELS: the model class.  Orchestration only: formula -> design, and the
choice of backend; the fit itself is :class:`~melsml.mels_core.MELSCore`'s."""

from __future__ import annotations

import logging
from dataclasses import fields

import pandas as pd

from .censoring import apply_censoring
from .config import Association, Integration, ModelOptions
from .exceptions import MELSInputError
from .formula import build_design
from .levels import IdScope
from .mels_core import MELSCore
from .multivariate import MultivariateMELS
from .mvdesign import long_to_wide
from .ordinal import apply_ordinal
from .results import CovType, MELSResults
from .threelevel import ThreeLevelMELS

__all__ = ["MELS"]

logger = logging.getLogger(__name__)

#: from_formula's arguments that are model options, and those the design takes
_OPTION_KEYS = tuple(f.name for f in fields(ModelOptions))
_DESIGN_KEYS = (
    "bs_formula", "ws_formula", "re_formula", "ws_re_formula", "group_weights", "weights",
)  # fmt: skip


class MELS(MELSCore):
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
        client=None,
        npartitions: int | None = None,
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
        data : pandas.DataFrame or dask.dataframe.DataFrame
            A Dask DataFrame (e.g. a folder of parquet files larger than
            memory) gives a :class:`~melsml.distributed_model.DistributedMELS`
            whose data stay on the cluster's workers: it is shuffled once so
            that every group lies in one partition, and each worker builds its
            partitions' designs (two-level models of a Gaussian outcome;
            needs ``melsml[dask]`` and a running ``dask.distributed`` client).
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
        client : dask.distributed.Client, optional
            Dask data: the cluster's client (default: the running one).
        npartitions : int, optional
            Dask data: the partitions after the shuffle by group (default: as
            many as ``data`` has).

        Notes
        -----
        Rows with a missing value in any used column are dropped with a
        :class:`~melsml.exceptions.MissingDataWarning` giving the count.
        """
        from .distributed import is_dask_frame

        if is_dask_frame(data):
            return cls._dask(formula, data, groups, locals())
        if client is not None or npartitions is not None:
            raise MELSInputError("client and npartitions apply to Dask data (a Dask DataFrame)")
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
        given = locals()
        options = {k: given[k] for k in _OPTION_KEYS}
        ModelOptions(**options)  # fail fast on options
        if family == "ordinal" and censoring is not None:
            raise MELSInputError("censoring applies to Gaussian outcomes, not family='ordinal'")
        design = build_design(formula, data, groups, **{k: given[k] for k in _DESIGN_KEYS})
        design = apply_censoring(design, data, censoring)
        if family == "ordinal":
            design = apply_ordinal(design)
        return cls(design, **options)

    @staticmethod
    def _dask(formula, data, groups, given: dict) -> MELS:
        from .distributed_model import DistributedMELS

        unsupported = [
            name
            for name, default in (
                ("outcome", None),
                ("unit", None),
                ("censoring", None),
                ("family", "gaussian"),
                ("random_bs", False),
                ("cov_structure", "unstructured"),
                ("residual_corr", True),
            )
            if given[name] != default
        ]
        if isinstance(formula, (list, tuple)) or not isinstance(groups, str) or unsupported:
            what = ", ".join(unsupported) or "several outcomes or levels"
            raise MELSInputError(
                f"Dask data fit two-level models of one Gaussian outcome ({what} given): "
                "compute() the data into pandas for this model"
            )
        options = {k: given[k] for k in _OPTION_KEYS}
        ModelOptions(**options)  # fail fast on options
        kw = {k: given[k] for k in _DESIGN_KEYS}
        return DistributedMELS.from_dask(
            formula, data, groups, kw, options, given["client"], given["npartitions"]
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
        model = cls.from_formula(data=spec.standardise(data), **spec.model_kwargs())
        model.notes = spec.notes
        if int(spec.settings["NCENT"]) == 1:
            model.summary_notes = [mixwild.NCENT_NOTE]
        model.mixwild_spec = spec
        if spec.stage2 is not None:
            model.stage2_data = spec.stage2.data(
                data, mixwild.ID_COLUMN, float(spec.settings["YMISS"])
            )
        for note in spec.notes:
            logger.info("MixWILD setting %s", note)
        return model

    def fit(
        self,
        start_params=None,
        *,
        cov_type: CovType | None = None,
        maxiter: int = 500,
        tol: float = 1e-12,
        n_threads: int | None = None,
        backend: str = "memory",
        client=None,
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
        backend : {"memory", "dask"}
            Where the likelihood is evaluated: here ("memory"), or on a Dask
            cluster ("dask"; needs ``melsml[dask]`` and a running
            ``dask.distributed`` client): the design is cut into runs of whole
            groups that stay on the workers.  A model of a Dask DataFrame
            always fits on the cluster.
        client : dask.distributed.Client, optional
            The cluster's client (default: the running one).

        Returns
        -------
        MELSResults
        """
        if backend not in ("memory", "dask"):
            raise MELSInputError(f"unknown backend {backend!r}; allowed values: 'memory', 'dask'")
        if backend == "dask":
            from .distributed_model import DistributedMELS

            model = DistributedMELS.from_model(self, client)
            return model.fit(
                start_params, cov_type=cov_type, maxiter=maxiter, tol=tol, n_threads=n_threads
            )
        if client is not None:
            raise MELSInputError("client applies to backend='dask'")
        return self._fit(start_params, cov_type, maxiter, tol, n_threads)
