"""Results of the three-level model: estimates, the levels' covariances, EB
predictions of both levels' effects, and the stability of effects across the
inner units of an outer unit (cohorts of a school)."""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import stats

from .exceptions import MELSInputError
from .inference import CovType, LikelihoodResults, StandardisedFit, delta_table
from .measures import measure_columns
from .nested import NestedEvaluation
from .optimize import FitInfo

if TYPE_CHECKING:  # pragma: no cover
    from .summary import Summary
    from .threelevel import ThreeLevelMELS


class ThreeLevelResults(LikelihoodResults):
    """Results of :meth:`melsml.threelevel.ThreeLevelMELS.fit`.

    Parameters are in blocks ``beta``, ``alpha``, ``tau`` and one per level,
    named after the level (see :mod:`melsml.nested`):
    ``res.params[("district", "L(location,location)")]``.

    Attributes
    ----------
    params, bse, llf, aic, bic, nobs, converged, fit_info
        As for :class:`melsml.MELSResults`; ``n_groups`` is a dict of the
        number of units at each level.
    """

    def __init__(
        self,
        model: ThreeLevelMELS,
        theta_raw: np.ndarray,
        info: FitInfo,
        evaluation: NestedEvaluation,
        cov_type: CovType = "observed",
        *,
        standardised: StandardisedFit,
    ):
        self._set_estimates(model, theta_raw, info, evaluation, cov_type, standardised)
        self.nobs = model.design.n_obs
        self.n_groups = {model.levels[0]: model.n_outer, model.levels[1]: model.design.n_groups}

    @property
    def _index(self) -> pd.MultiIndex:
        return self.model.layout.index

    @property
    def levels(self) -> tuple[str, str]:
        return self.model.levels

    # --- the levels' covariances ---------------------------------------------------
    def _reference(self) -> tuple[np.ndarray, np.ndarray]:
        d = self.model.design
        return d.x_bs.mean(axis=0), d.x_ws.mean(axis=0)

    def _covariances(self, theta: np.ndarray) -> dict[str, np.ndarray]:
        """Covariance of each level's effects at ``theta``: the outer level's
        (location, [scale], [bs]); the inner level's (location, [scale]) with
        the location SD at the reference (mean) BS covariates."""
        lay = self.model.layout
        p = lay.unpack(theta)
        sbar, _ = self._reference()
        sd_u = float(np.exp(0.5 * sbar @ p["alpha"]))
        tl, so = p["tau_l"], p["sigma_omega"]
        if lay.inner:
            inner = np.array([[sd_u**2, sd_u * tl], [sd_u * tl, tl**2 + so**2]])
        else:
            inner = np.array([[sd_u**2]])
        return {self.levels[0]: p["L3"] @ p["L3"].T, self.levels[1]: inner}

    def _labels(self, level: str) -> list[str]:
        lay = self.model.layout
        if level == self.levels[0]:
            return [f"{e}:Intercept" for e in lay.outer_effects]
        return ["location:Intercept", "scale:Intercept"][: 2 if lay.inner else 1]

    @property
    def cov_re(self) -> dict[str, pd.DataFrame]:
        """Level name -> covariance of that level's random effects, labelled
        ``location:Intercept``, ``scale:Intercept`` (and ``bs:Intercept``: the
        outer level's effect in the inner level's log-variance function).  The
        inner level's location variance is at the mean BS covariates."""
        cov = self._covariances(self._theta)
        return {
            lev: pd.DataFrame(cov[lev], index=self._labels(lev), columns=self._labels(lev))
            for lev in self.levels
        }

    def random_params(self, alpha: float = 0.05) -> pd.DataFrame:
        """Variances, covariances and correlations of each level's effects, and
        the residual variance at the mean WS covariates, with delta-method SEs.

        Index: ``"<level>: var(location)"``, ``"<level>: corr(location,scale)"``, ...
        """
        names: list[str] = []
        for lev in self.levels:
            labels = [lab.split(":")[0] for lab in self._labels(lev)]
            names += [f"{lev}: var({lab})" for lab in labels]
            for i in range(len(labels)):
                for j in range(i):
                    names += [f"{lev}: {k}({labels[j]},{labels[i]})" for k in ("cov", "corr")]
        names.append("var_e")
        _, wbar = self._reference()
        lay = self.model.layout

        def fun(theta):
            out = []
            for sigma in self._covariances(theta).values():
                sd = np.sqrt(np.diag(sigma))
                out += list(np.diag(sigma))
                for i in range(len(sd)):
                    for j in range(i):
                        den = sd[i] * sd[j]
                        out += [sigma[i, j], sigma[i, j] / den if den > 0 else 0.0]
            out.append(np.exp(wbar @ lay.unpack(theta)["tau"]))
            return np.array(out)

        cov = self.cov_params().to_numpy()
        return delta_table(fun, self._theta, cov, names, alpha, "parameter")

    def stability(self, alpha: float = 0.05) -> pd.DataFrame:
        """How much of the inner units' effects their outer unit shares.

        For cohorts in schools: the correlation of two cohorts' mean effects in
        the same school (``location``: var(u_school) / (var(u_school) +
        var(u_cohort))), of their variance effects (``scale``, the same for the
        log-variance effects), and of one cohort's mean effect with another's
        variance effect (``location-scale``).  For schools in districts the
        same numbers are the shares of the school effects' variance that lie
        between districts.  Delta-method SEs; the inner level's location
        variance is at the mean BS covariates.
        """
        lay = self.model.layout
        outer, inner = self.levels
        rows = ["location"]
        if "scale" in lay.outer_effects and lay.inner:
            rows += ["scale", "location-scale"]
        elif "scale" in lay.outer_effects or lay.inner:
            rows += ["scale"]

        def fun(theta):
            cov = self._covariances(theta)
            so, si = cov[outer], cov[inner]
            vu3 = so[0, 0]
            vu2 = si[0, 0]
            out = [vu3 / (vu3 + vu2)]
            if len(rows) > 1:
                k = lay.outer_effects.index("scale") if "scale" in lay.outer_effects else None
                vv3 = so[k, k] if k is not None else 0.0
                vv2 = si[1, 1] if si.shape[0] > 1 else 0.0
                out.append(vv3 / (vv3 + vv2) if vv3 + vv2 > 0 else 0.0)
                if len(rows) > 2:
                    out.append(so[0, k] / np.sqrt((vu3 + vu2) * (vv3 + vv2)))
            return np.array(out)

        cov = self.cov_params().to_numpy()
        return delta_table(fun, self._theta, cov, rows, alpha, f"correlation within {outer}")

    # --- EB predictions ---------------------------------------------------------
    @cached_property
    def _outer_posterior(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean, covariance) of each outer unit's effects (location, [scale], [bs])."""
        lay = self.model.layout
        d3 = lay.d3
        chol = lay.unpack(self._theta_raw)["L3"]
        eb = self._evaluation.eb_outer
        mean_t = eb[:, :d3]
        second = eb[:, d3:].reshape(-1, d3, d3)
        var_t = second - mean_t[:, :, None] * mean_t[:, None, :]
        mean = mean_t @ chol.T
        cov = np.einsum("ab,kbc,dc->kad", chol, var_t, chol)
        return mean, cov

    def group_effects(self, level: str | None = None, alpha: float = 0.05) -> pd.DataFrame:
        """EB predictions (posterior means and SDs) of one level's effects.

        Parameters
        ----------
        level : str
            A level name (default: the inner level).  For the outer level:
            ``mean`` (its location effect u_k, with interval, rank and
            separation), ``variance`` (with an outer scale effect: the
            residual variance exp(w'tau + v_k) of a typical inner unit at the
            mean WS covariates) and the posterior means and SDs of its
            effects (``location``, ``scale``, ``bs``).  For the inner level: the total
            effects of each inner unit, its outer unit's part included:
            ``mean`` (u_k + u_jk, the value added), ``variance`` (the posterior
            mean of the residual variance exp(w'tau + v_k + v_jk) at the mean
            WS covariates) with intervals from the normal approximation to the
            posterior of the effects, ranks and separation from the average
            unit; ``mean_own`` and ``scale_own`` are the inner unit's own parts.
        alpha : float
            1 - coverage of the intervals.
        """
        outer, inner = self.levels
        level = inner if level is None else level
        if level not in self.levels:
            raise MELSInputError(f"unknown level {level!r}; the levels are {outer!r}, {inner!r}")
        q = stats.norm.ppf(1 - alpha / 2)
        mean, cov = self._outer_posterior
        lay = self.model.layout
        if level == outer:
            d = self.model.design
            sizes = np.add.reduceat(d.group_sizes, self.model.outer_ptr[:-1])
            out = {
                outer: self.model.outer_labels,
                f"n_{inner}": np.diff(self.model.outer_ptr),
                "n_obs": sizes,
            }
            sds = np.sqrt(np.maximum(np.diagonal(cov, axis1=1, axis2=2), 0.0))
            m_u, s_u = mean[:, 0], sds[:, 0]
            out.update(measure_columns("mean", m_u, s_u, m_u - q * s_u, m_u + q * s_u, 0.0))
            if "scale" in lay.outer_effects:
                # the residual variance of a typical inner unit (v_jk = 0) at the mean
                # WS covariates; lognormal moments from the normal posterior of v_k
                k = lay.outer_effects.index("scale")
                base = float(self._reference()[1] @ lay.unpack(self._theta)["tau"])
                m_v, s_v = mean[:, k], sds[:, k]
                e_var = np.exp(base + m_v + 0.5 * s_v**2)
                out.update(
                    measure_columns(
                        "variance",
                        e_var,
                        e_var * np.sqrt(np.expm1(s_v**2)),
                        np.exp(base + m_v - q * s_v),
                        np.exp(base + m_v + q * s_v),
                        float(np.exp(base)),
                    )
                )
            for i, eff in enumerate(lay.outer_effects):
                out[eff] = mean[:, i]
                out[f"{eff}_sd"] = sds[:, i]
            return pd.DataFrame(out)
        return self._inner_effects(mean, cov, q)

    def _inner_effects(self, mean3, cov3, q: float) -> pd.DataFrame:
        m = self.model
        lay = m.layout
        p = lay.unpack(self._theta)
        sbar, wbar = self._reference()
        zbar = float(np.exp(0.5 * sbar @ p["alpha"]))
        eb = self._evaluation.eb_inner
        district = np.repeat(np.arange(m.n_outer), np.diff(m.outer_ptr))
        eu3 = mean3[district, 0]
        euu3 = cov3[district, 0, 0] + eu3**2
        k = lay.outer_effects.index("scale") if "scale" in lay.outer_effects else None
        ev3 = mean3[district, k] if k is not None else 0.0
        evv3 = cov3[district, k, k] + ev3**2 if k is not None else 0.0
        et, ett, ev2, evv2, etv2, eu3t, ev3v2, eu3v2, ev3t, eexp = eb.T
        mean_u = eu3 + zbar * et
        var_u = euu3 + 2 * zbar * eu3t + zbar**2 * ett - mean_u**2
        mean_v = ev3 + ev2
        var_v = evv3 + 2 * ev3v2 + evv2 - mean_v**2
        base = float(wbar @ p["tau"])
        sd_u = np.sqrt(np.maximum(var_u, 0.0))
        sd_v = np.sqrt(np.maximum(var_v, 0.0))
        var_mean = np.exp(base) * eexp
        var_sd = np.exp(base) * np.sqrt(np.maximum(np.exp(2 * mean_v + 2 * var_v) - eexp**2, 0))
        out = {
            **{c: m.inner_labels[c].to_numpy() for c in m.inner_labels},
            "n_obs": m.design.group_sizes,
        }
        out.update(measure_columns("mean", mean_u, sd_u, mean_u - q * sd_u, mean_u + q * sd_u, 0.0))
        out.update(
            measure_columns(
                "variance",
                var_mean,
                var_sd,
                np.exp(base + mean_v - q * sd_v),
                np.exp(base + mean_v + q * sd_v),
                float(np.exp(base)),
            )
        )
        out["mean_own"] = zbar * et
        out["scale_own"] = ev2
        return pd.DataFrame(out)

    def school_effects(self, alpha: float = 0.05) -> pd.DataFrame:
        """:meth:`group_effects` of the level called "school" (else the inner level)."""
        level = "school" if "school" in self.levels else self.levels[1]
        return self.group_effects(level, alpha)

    # --- printing --------------------------------------------------------------
    def summary(self, alpha: float = 0.05) -> Summary:
        from .summary import Summary

        return Summary.from_three_level(self, alpha)

    def __repr__(self) -> str:
        return (
            f"<ThreeLevelResults llf={self.llf:.4f}, k={self.k_params}, nobs={self.nobs}, "
            f"{self.n_groups}, converged={self.converged}>"
        )
