"""A MELS model whose data are on a Dask cluster, and its results."""

from __future__ import annotations

from dataclasses import asdict
from functools import cached_property
from types import SimpleNamespace

import numpy as np
import pandas as pd

from .distributed import (
    DistributedData,
    DistributedObjective,
    Part,
    from_dask_frame,
    get_client,
)
from .exceptions import MELSInputError
from .likelihood import FitState
from .measures import rerank
from .mels_core import MELSCore
from .plan import IntegrationPlan, plan
from .random_effects import random_effects, school_effects
from .results import MELSResults
from .scaling import Scaling
from .start import start_values

__all__ = ["DistributedMELS", "DistributedResults"]


class DistributedResults(MELSResults):
    """Results of a fit on a Dask cluster.

    The statsmodels surface, the summary, :meth:`random_params`, tests and
    :meth:`school_effects` and :meth:`random_effects` (computed where the
    groups are, then gathered: one row per group).  Unit-level predictions
    (``predict``, ``fittedvalues``, ``resid``) would bring every row back and
    are not offered: fit in memory for them.
    """

    def __init__(self, model, theta_raw, info, evaluation, cov_type="observed", *, standardised):
        self._set_estimates(model, theta_raw, info, evaluation, cov_type, standardised)
        data: DistributedData = model.data
        if data.design.unit_weights_column or data.design.group_weights is not None:
            frequency = model.options.weight_type == "frequency"
            self.nobs = int(round(data.weight_total)) if frequency else data.n_obs
        else:
            self.nobs = data.n_obs
        self.n_groups = data.design.n_groups
        self.fit_state = None
        self._reference = data.reference()

    def _needs_data(self, what: str) -> None:
        raise MELSInputError(
            f"{what} needs every row, which stays on the Dask cluster: fit in memory "
            "(backend='memory', on a pandas DataFrame) for unit-level predictions; "
            "school_effects() and random_effects() work here"
        )

    def _map(self, fun, **kwargs) -> pd.DataFrame:
        view = dict(
            layout=self.model.layout,
            structure=self.model.structure,
            options=self.model.options,
            theta=self._theta,
            reference=self._reference,
        )
        frames = self._std.objective.map_parts(_on_part, fun=fun, view=view, kwargs=kwargs)
        out = pd.concat(frames).sort_index(kind="stable")
        out.attrs = dict(frames[0].attrs)
        return out

    def random_effects(self) -> pd.DataFrame:
        """Empirical Bayes posterior summaries of each group's random effects,
        computed on the workers (see :func:`melsml.random_effects.random_effects`)."""
        return self._map(random_effects)

    def school_effects(
        self, alpha: float = 0.05, ws_reference=None, reference_var=None, at=None
    ) -> pd.DataFrame:
        """School means and variances with intervals and ranks, computed on the
        workers with the whole data's reference covariates; ranks over all the
        schools (see :func:`melsml.random_effects.school_effects`)."""
        out = self._map(
            school_effects,
            alpha=alpha,
            ws_reference=ws_reference,
            reference_var=reference_var,
            at=at,
        )
        return rerank(out)

    def remove_data(self) -> None:
        raise MELSInputError("the data of a fit on a Dask cluster are on the cluster already")

    def __repr__(self) -> str:
        return super().__repr__().replace("<MELSResults", "<DistributedResults", 1)


class _PartResults:
    """What the school and random-effect tables read of a results object, for one
    part's groups, with the whole data's reference covariates."""

    reference_values = MELSResults.reference_values
    reference_cov = MELSResults.reference_cov

    def __init__(self, part: Part, view: dict):
        self.model = SimpleNamespace(
            design=part.design, structure=view["structure"], layout=view["layout"]
        )
        self._reference = view["reference"]
        self.fit_state = FitState(
            design=part.design,
            layout=view["layout"],
            options=view["options"],
            plan=part.final_plan,
            theta=view["theta"],
            evaluation=part.final,
        )


def _on_part(part: Part, fun, view: dict, kwargs: dict) -> pd.DataFrame | None:
    if part.final is None:
        return None
    return fun(_PartResults(part, view), **kwargs)


class DistributedMELS(MELSCore):
    """A MELS model whose data stay on a Dask cluster.

    Made by :meth:`MELS.from_formula` from a Dask DataFrame, or by
    ``MELS.fit(backend="dask")`` from a model in memory; fits like
    :class:`~melsml.MELS` (same estimates, to the optimiser's tolerance),
    each evaluation running on the workers.

    Attributes
    ----------
    data : DistributedData
        The parts on the cluster and what was summed over them.
    design : DesignMatrices
        Names, formulas, group sizes and labels; no unit-level rows.
    """

    _results_class = DistributedResults

    def __init__(self, data: DistributedData, **options):
        self.data = data
        super().__init__(data.design, **options)
        if self.design.interval_outcome:
            raise MELSInputError(
                "the Dask backend fits Gaussian outcomes; fit a censored or ordinal "
                "outcome in memory"
            )

    def _check_identifiable(self) -> None:
        self.data.check_identifiable()

    @classmethod
    def from_dask(
        cls, formula, ddf, groups, kw: dict, options: dict, client=None, npartitions=None
    ) -> DistributedMELS:
        data = from_dask_frame(formula, ddf, groups, kw, client, npartitions)
        data.warn_missing()
        return cls(data, **options)

    @classmethod
    def from_model(cls, model: MELSCore, client=None) -> DistributedMELS:
        """The model with its design cut into runs of whole groups on the cluster."""
        if model.design.interval_outcome:
            raise MELSInputError(
                "the Dask backend fits Gaussian outcomes; fit a censored or ordinal "
                "outcome in memory"
            )
        data = DistributedData.from_design(model.design, get_client(client))
        return cls(data, **asdict(model.options))

    @cached_property
    def plan(self) -> IntegrationPlan:
        return plan(self.structure, self.options, unit_level_scale=self.data.unit_level_scale)

    def objective(self, n_threads: int | None = None) -> DistributedObjective:
        """The log-likelihood in the data's units, evaluated on the cluster."""
        return DistributedObjective(self.data, self.layout, self.options, None, n_threads)

    def start_params(self) -> pd.Series:
        """Moment-based starting values (from whole groups of every part)."""
        theta = start_values(self.data.sample, self.layout, self.options.link)
        return pd.Series(theta, index=self.layout.index)

    def fit(
        self,
        start_params=None,
        *,
        cov_type=None,
        maxiter: int = 500,
        tol: float = 1e-12,
        n_threads: int | None = None,
        backend: str = "dask",
        client=None,
    ) -> DistributedResults:
        """Fit by maximum likelihood on the cluster (see :meth:`MELS.fit`;
        ``n_threads`` is per evaluation task, default 1: each task holds one of
        its worker's threads)."""
        if backend != "dask":
            raise MELSInputError(
                f"backend={backend!r}: the data of this model are on a Dask cluster "
                "(backend='dask'); to fit in memory, build the model from a pandas DataFrame"
            )
        if client is not None and client is not self.data.client:
            raise MELSInputError("the model's data are on another client's cluster")
        return self._fit(start_params, cov_type, maxiter, tol, n_threads)

    def _scaling(self) -> Scaling:
        return self.data.scaling()

    def _std_objectives(self, scaling: Scaling, n_threads):
        obj = DistributedObjective(self.data, self.layout, self.options, scaling, n_threads)
        return obj, None, scaling.design(self.data.sample)

    def _final_evaluation(self, theta: np.ndarray, std_obj, n_threads, std_ev, scaling):
        return std_obj.final(theta)

    def __repr__(self) -> str:
        return (
            super()
            .__repr__()
            .replace("<MELS ", "<DistributedMELS ", 1)
            .replace(">", f"; {self.data.n_parts} parts on a Dask cluster>", 1)
        )
