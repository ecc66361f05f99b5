"""The statsmodels surface shared by every fitted model: estimates, standard
errors, tests, intervals and information criteria from the parameter vector,
its covariance and the log-likelihood."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats

CovType = Literal["observed", "robust"]


@dataclass(frozen=True)
class StandardisedFit:
    """The fit in standardised units (see :mod:`melsml.scaling`).

    ``objective`` and ``theta`` (the optimiser's vector), the Hessian of the
    log-likelihood there, and ``jacobian``: theta = offset + jacobian @ theta*.
    """

    objective: object
    theta: np.ndarray
    hessian: np.ndarray
    jacobian: np.ndarray


def _inverse_information(hessian: np.ndarray) -> np.ndarray:
    """(-H)^-1, NaN where it does not exist (a warning says why at the fit)."""
    try:
        return np.linalg.inv(-hessian)
    except np.linalg.LinAlgError:
        return np.full_like(hessian, np.nan)


def delta_method(fun, theta: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Values of ``fun(theta)`` and their delta-method covariance.

    The Jacobian is taken by central differences (step 1e-6 relative).
    """
    theta = np.asarray(theta, dtype=float)
    val = np.asarray(fun(theta), dtype=float)
    jac = np.empty((val.size, theta.size))
    for i in range(theta.size):
        h = 1e-6 * (1.0 + abs(theta[i]))
        tp, tm = theta.copy(), theta.copy()
        tp[i] += h
        tm[i] -= h
        jac[:, i] = (np.asarray(fun(tp)) - np.asarray(fun(tm))) / (2 * h)
    return val, jac @ cov @ jac.T


def tidy_table(res, alpha: float = 0.05) -> pd.DataFrame:
    """One row per parameter of any results with ``params``, ``bse``,
    ``tvalues``, ``pvalues`` and ``conf_int``: estimate, SE, z, p and CI."""
    ci = res.conf_int(alpha)
    return pd.DataFrame(
        {
            "estimate": res.params,
            "std_error": res.bse,
            "z": res.tvalues,
            "p_value": res.pvalues,
            "lower": ci["lower"],
            "upper": ci["upper"],
        }
    )


def delta_table(fun, theta, cov, names, alpha: float, index_name: str) -> pd.DataFrame:
    """Values of ``fun(theta)`` with delta-method SEs and Wald intervals, one row
    per name."""
    val, vcov = delta_method(fun, theta, cov)
    se = np.sqrt(np.clip(np.diag(vcov), 0, None))
    q = stats.norm.ppf(1 - alpha / 2)
    return pd.DataFrame(
        {"estimate": val, "std_error": se, "lower": val - q * se, "upper": val + q * se},
        index=pd.Index(names, name=index_name),
    )


class LikelihoodResults:
    """Base of the results classes.

    Subclasses set ``_theta`` (reported parameters), ``_cov_observed``,
    ``_std`` (the standardised fit), ``_flip`` (the sign changes from the
    optimiser's vector to the reported one), ``cov_type``, ``llf``, ``nobs``
    and ``k_params``, and provide ``_index``.
    """

    _theta: np.ndarray
    _cov_observed: np.ndarray
    cov_type: CovType
    llf: float
    nobs: int
    k_params: int

    def _set_estimates(self, model, theta_raw, info, evaluation, cov_type, standardised) -> None:
        """The attributes every results class sets from a fit: reported (canonical)
        parameters and their covariance from the standardised fit's Hessian."""
        layout = model.layout
        self.model = model
        self.fit_info = info
        self._evaluation = evaluation
        self._std = standardised
        self._theta_raw = np.asarray(theta_raw, dtype=float)
        self._theta = layout.canonical(theta_raw)
        self._flip = layout.sign_flip(theta_raw)
        jac = standardised.jacobian
        cov = jac @ _inverse_information(standardised.hessian) @ jac.T
        self._cov_observed = cov * np.outer(self._flip, self._flip)
        self.cov_type = cov_type
        self.llf = float(evaluation.llf)
        self.k_params = layout.k_params
        self.converged = bool(info.converged)

    # --- the statsmodels surface ------------------------------------------------
    @property
    def _index(self) -> pd.MultiIndex:
        """The (block, term) index of the parameters."""
        raise NotImplementedError

    @property
    def params(self) -> pd.Series:
        return pd.Series(self._theta.copy(), index=self._index, name="params")

    @cached_property
    def _cov_robust(self) -> np.ndarray:
        std = self._std
        from .optimize import score_outer

        meat = score_outer(std.objective, std.theta)
        bread = _inverse_information(std.hessian)
        cov = std.jacobian @ (bread @ meat @ bread) @ std.jacobian.T
        return cov * np.outer(self._flip, self._flip)

    def cov_params(self, cov_type: CovType | None = None) -> pd.DataFrame:
        """Covariance of the estimates.

        Parameters
        ----------
        cov_type : {"observed", "robust"}, optional
            Inverse observed information, or the sandwich ``H^-1 B H^-1`` with
            ``B`` the outer product of the per-group scores (robust to
            misspecification of the variance functions).  Default: the
            results' ``cov_type``.
        """
        kind = cov_type or self.cov_type
        if kind not in ("observed", "robust"):
            raise ValueError(f"unknown cov_type {kind!r}; allowed: 'observed', 'robust'")
        cov = self._cov_observed if kind == "observed" else self._cov_robust
        idx = self._index
        return pd.DataFrame(cov, index=idx, columns=idx)

    @property
    def bse(self) -> pd.Series:
        var = np.diag(self.cov_params().to_numpy())
        # a negative variance comes from an information matrix that is not positive
        # definite, which the fit has already said (BoundaryWarning): NaN, quietly
        se = np.sqrt(np.where(var >= 0, var, np.nan))
        return pd.Series(se, index=self._index, name="bse")

    @property
    def tvalues(self) -> pd.Series:
        return (self.params / self.bse).rename("z")

    @property
    def pvalues(self) -> pd.Series:
        return pd.Series(
            2 * stats.norm.sf(np.abs(self.tvalues.to_numpy())),
            index=self._index,
            name="pvalues",
        )

    def conf_int(self, alpha: float = 0.05) -> pd.DataFrame:
        """Wald confidence intervals, columns ``lower`` and ``upper``."""
        if not 0 < alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
        q = stats.norm.ppf(1 - alpha / 2)
        return pd.DataFrame(
            {"lower": self.params - q * self.bse, "upper": self.params + q * self.bse}
        )

    @property
    def deviance(self) -> float:
        return -2.0 * self.llf

    @property
    def aic(self) -> float:
        return self.deviance + 2.0 * self.k_params

    @property
    def bic(self) -> float:
        return self.deviance + self.k_params * np.log(self.nobs)

    @property
    def df_model(self) -> int:
        return self.k_params

    def tidy(self, alpha: float = 0.05) -> pd.DataFrame:
        """One row per parameter: estimate, SE, z, p and CI (what summaries print)."""
        return tidy_table(self, alpha)
