"""MELSResults: the fitted model, with statsmodels' attribute names."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from .exceptions import MELSInputError
from .inference import (
    CovType,
    LikelihoodResults,
    StandardisedFit,
    delta_table,
)
from .likelihood import Evaluation, FitState
from .optimize import FitInfo

if TYPE_CHECKING:  # pragma: no cover
    from .model import MELS
    from .summary import Summary


class MELSResults(LikelihoodResults):
    """Results of :meth:`melsml.MELS.fit`.

    The attributes are computed once and not changed afterwards.  Parameters are
    in MixWILD's parametrisation (see :mod:`melsml.params`), with a
    ``(block, term)`` index: ``res.params[("tau", "Intercept")]``.

    Attributes
    ----------
    params : Series
    bse : Series
        Standard errors from the observed information (or the sandwich with
        ``cov_type="robust"``).
    llf, aic, bic, deviance : float
        ``aic = -2 llf + 2 k`` and ``bic = -2 llf + k log(nobs)`` with nobs the
        number of observations (MixWILD prints ``llf - k`` and
        ``llf - k/2 log(n_groups)`` instead).
    nobs, n_groups, k_params : int
    converged : bool
    fit_info : FitInfo
    """

    def __init__(
        self,
        model: MELS,
        theta_raw: np.ndarray,
        info: FitInfo,
        evaluation: Evaluation,
        cov_type: CovType = "observed",
        *,
        standardised: StandardisedFit,
    ):
        self._set_estimates(model, theta_raw, info, evaluation, cov_type, standardised)
        layout = model.layout
        w = model.design.row_weights
        if w is not None and model.options.weight_type == "frequency":
            # frequency weights count rows: a unit of weight w is w units
            self.nobs = int(round(float(w.sum())))
        else:
            self.nobs = model.design.n_obs
        self.n_groups = model.design.n_groups
        self.fit_state = FitState(
            design=model.design,
            layout=layout,
            options=model.options,
            plan=model.plan,
            theta=self._theta,
            evaluation=evaluation,
        )

    @property
    def _index(self) -> pd.MultiIndex:
        return self.model.layout.index

    @property
    def thresholds(self) -> pd.Series | None:
        """Ordinal outcomes: the thresholds gamma_c on the latent scale (P(y <= c)
        = F((gamma_c - x'beta - z'u) / sigma)), indexed by the cut ``"c/c+1"``;
        None otherwise."""
        names = self.model.layout.thresholds
        if not names:
            return None
        from .ordinal import thresholds

        raw = self.params["thresholds"].to_numpy()
        return pd.Series(thresholds(raw), index=pd.Index(names, name="cut"), name="threshold")

    # --- hypothesis tests -----------------------------------------------------------
    @property
    def param_names(self) -> list[str]:
        """The parameters' names as constraints spell them: ``block[term]``,
        e.g. ``"tau[prior]"``, ``"random[sigma_omega]"``."""
        return [f"{b}[{t}]" for b, t in self.model.layout.index]

    def _constraints(self, r_matrix, q_matrix=None):
        names = self.param_names
        if isinstance(r_matrix, tuple) and len(r_matrix) == 2:
            r_matrix = f"{r_matrix[0]}[{r_matrix[1]}] = 0"
        if isinstance(r_matrix, str) or (
            isinstance(r_matrix, (list, tuple)) and r_matrix and isinstance(r_matrix[0], str)
        ):
            import patsy

            try:
                lc = patsy.DesignInfo(names).linear_constraint(r_matrix)
            except Exception as exc:  # patsy.PatsyError and friends
                raise MELSInputError(
                    f"cannot read the constraint {r_matrix!r}: {str(exc).splitlines()[0]}; "
                    f"parameters are named like {names[0]!r} (see res.param_names)"
                ) from None
            return lc.coefs, lc.constants[:, 0]
        R = np.atleast_2d(np.asarray(r_matrix, dtype=float))
        if R.shape[1] != len(names):
            raise MELSInputError(
                f"r_matrix must have {len(names)} columns (one per parameter), got {R.shape}"
            )
        q = np.zeros(R.shape[0]) if q_matrix is None else np.atleast_1d(q_matrix).astype(float)
        return R, q

    def t_test(self, r_matrix, q_matrix=None):
        """Wald z tests of each linear constraint ``R theta = q`` separately.

        ``r_matrix`` is a string (``"tau[prior] = 0"``; several separated by
        commas), a list of strings, a ``(block, term)`` name, or an array.
        Returns statsmodels' ``ContrastResults`` (normal reference).
        """
        from statsmodels.stats.contrast import ContrastResults

        R, q = self._constraints(r_matrix, q_matrix)
        cov = self.cov_params().to_numpy()
        effect = R @ self.params.to_numpy()
        sd = np.sqrt(np.einsum("ij,jk,ik->i", R, cov, R))
        z = (effect - q) / sd
        return ContrastResults(effect=effect, statistic=z, sd=sd, distribution="norm", alpha=0.05)

    def wald_test(self, r_matrix, q_matrix=None):
        """Joint Wald chi-square test of the linear constraints ``R theta = q``.

        Same constraint forms as :meth:`t_test`.  Returns statsmodels'
        ``ContrastResults`` with ``statistic``, ``df_num`` and ``pvalue``.  For a
        variance on its boundary 0 use :func:`melsml.compare` (mixture LR test).
        """
        from statsmodels.stats.contrast import ContrastResults

        R, q = self._constraints(r_matrix, q_matrix)
        cov = self.cov_params().to_numpy()
        diff = R @ self.params.to_numpy() - q
        stat = float(diff @ np.linalg.solve(R @ cov @ R.T, diff))
        k = R.shape[0]
        # statsmodels' own form for a chi-square Wald test
        return ContrastResults(
            chi2=stat, df_denom=k, statistic=stat, distribution="chi2", distargs=(k,)
        )

    # --- derived parameters -------------------------------------------------------
    def reference_values(self, block: Literal["bs", "ws", "scale"]) -> np.ndarray:
        """Sample means of the BS, WS or random-scale design's columns (the
        reference covariates)."""
        cached = getattr(self, "_reference", None)
        if cached is not None and block in cached:
            return cached[block].copy()
        d = self.model.design
        return {"bs": d.x_bs, "ws": d.x_ws, "scale": d.x_scale}[block].mean(axis=0)

    def reference_cov(self, columns: list[int]) -> np.ndarray:
        """Sample covariance of the random location design's ``columns`` (the
        random-slope covariates' reference distribution)."""
        cached = getattr(self, "_reference", None)
        if cached is not None and "re_cov" in cached:
            return cached["re_cov"][np.ix_(columns, columns)].copy()
        return np.atleast_2d(np.cov(self.model.design.x_re[:, columns], rowvar=False))

    def random_params(self, alpha: float = 0.05) -> pd.DataFrame:
        """Natural random-effect parameters with delta-method standard errors.

        With several random location effects the rows are ``var(term)``,
        ``cov(a,b)`` and ``corr(a,b)`` of (u, omega) and ``var_e``.  With a
        random intercept, rows: ``var_u`` (between-group location variance at the reference BS
        covariates), ``var_e`` (within-group variance exp(wbar'tau) of a school
        with omega = 0, at the reference WS covariates) and, with a random
        scale, ``var_omega`` (variance of the WS log-variance random effect),
        ``cov_u_omega`` and ``corr_u_omega``.  The reference covariates are
        the sample means of the designs' columns.
        """
        layout = self.model.layout
        sbar, wbar = self.reference_values("bs"), self.reference_values("ws")
        if not layout.mixwild_view:
            names, fun = self._chol_natural(sbar, wbar)
        else:
            names = ["var_u", "var_e"]
            if layout.random:
                names += ["var_omega", "cov_u_omega", "corr_u_omega"]

            def fun(theta):
                p = layout.unpack(theta)
                var_u = np.exp(sbar @ p["alpha"])
                out = [var_u, np.exp(wbar @ p["tau"])]
                if layout.random:
                    var_om = p["tau_l"] ** 2 + 2 * p["tau_q"] ** 2 + p["sigma_omega"] ** 2
                    out += [var_om, np.sqrt(var_u) * p["tau_l"], p["tau_l"] / np.sqrt(var_om)]
                return np.array(out)

        cov = self.cov_params().to_numpy()
        return delta_table(fun, self._theta, cov, names, alpha, "parameter")

    def _natural_cov(self, theta, sbar) -> np.ndarray:
        """Covariance of (u, v) at ``theta``; with a BS function the location effect
        is sigma_u theta1 with sigma_u at the reference BS covariates ``sbar``."""
        layout = self.model.layout
        chol = layout.chol_matrix(theta)
        sigma = chol @ chol.T
        if layout.structure.bs:
            scale = np.ones(sigma.shape[0])
            scale[0] = np.exp(0.5 * sbar @ layout.unpack(theta)["alpha"])
            sigma = sigma * np.outer(scale, scale)
        return sigma

    @property
    def cov_re(self) -> pd.DataFrame:
        """Joint covariance of all random effects, labelled ``location:<term>`` and
        ``scale:<term>`` (with a BS function, the location variance is at the
        reference BS covariates)."""
        labels = list(self.model.structure.cov_labels)
        sigma = self._natural_cov(self._theta, self.reference_values("bs"))
        return pd.DataFrame(sigma, index=labels, columns=labels)

    def _chol_natural(self, sbar, wbar):
        """Names and function of the natural parameters of a Cholesky layout:
        variances, then covariances and correlations of (u, v), then var_e."""
        layout = self.model.layout
        labels = list(layout.structure.labels)
        d = len(labels)
        pairs = [(i, j) for i in range(d) for j in range(i)]
        names = [f"var({lab})" for lab in labels]
        names += [f"{kind}({labels[j]},{labels[i]})" for i, j in pairs for kind in ("cov", "corr")]
        names.append("var_e")

        def fun(theta):
            sigma = self._natural_cov(theta, sbar)
            sd = np.sqrt(np.diag(sigma))
            out = list(np.diag(sigma))
            for i, j in pairs:
                out += [sigma[i, j], sigma[i, j] / (sd[i] * sd[j]) if sd[i] * sd[j] > 0 else 0.0]
            out.append(np.exp(wbar @ layout.unpack(theta)["tau"]))
            return np.array(out)

        return names, fun

    # --- predictions --------------------------------------------------------------
    def _needs_data(self, what: str) -> None:
        if getattr(self, "_data_removed", False):
            raise MELSInputError(f"{what} needs the data, which remove_data() removed")

    def remove_data(self) -> None:
        """Drop the data arrays (design, objective, per-unit gradients), keeping
        the estimates, covariances, summary, random_params() and tests; for
        smaller saved results.  Predictions and school effects then need a refit.
        The model object loses its data too."""
        from dataclasses import replace

        self._reference = {b: self.reference_values(b) for b in ("bs", "ws", "scale")}
        _ = self._cov_robust  # computed while the data are there
        d = self.model.design

        def empty(x):
            return None if x is None else np.zeros((0,) + np.shape(x)[1:])

        stripped = replace(
            d,
            y=np.zeros(0),
            x_mean=empty(d.x_mean),
            x_bs=empty(d.x_bs),
            x_ws=empty(d.x_ws),
            x_re=empty(d.x_re),
            x_scale=empty(d.x_scale),
            row_index=pd.Index([]),
            unit_weights=empty(d.unit_weights),
        )
        self.model.design = stripped
        ev = self._evaluation
        ev = replace(ev, grad_mu=None, grad_ws=None, grad_z=None)
        self._evaluation = ev
        self.fit_state = replace(self.fit_state, design=stripped, evaluation=ev)
        self._std = replace(self._std, objective=None)
        self._data_removed = True

    def predict(self, exog=None, *, kind="mean", conditional: bool = True) -> pd.Series:
        """Predicted means, residual variances or SDs, school-specific or population.

        See :func:`melsml.predict.predict`.
        """
        from .predict import predict

        self._needs_data("predict()")
        return predict(self, exog, kind=kind, conditional=conditional)

    @property
    def fittedvalues(self) -> pd.Series:
        """School-specific fitted means x'beta + z'E[u_j | y], in the data's row order."""
        return self.predict().rename("fittedvalues")

    @property
    def resid(self) -> pd.Series:
        """Residuals y - fittedvalues."""
        d = self.model.design
        return (pd.Series(d.y, index=d.row_index) - self.fittedvalues).rename("resid")

    @property
    def resid_pearson(self) -> pd.Series:
        """Standardised residuals: resid / the predicted (school-specific) residual SD."""
        return (self.resid / self.predict(kind="sd")).rename("resid_pearson")

    def random_effects(self) -> pd.DataFrame:
        """Empirical Bayes posterior summaries of each group's random effects.

        See :func:`melsml.random_effects.random_effects`.
        """
        from .random_effects import random_effects

        self._needs_data("random_effects()")
        return random_effects(self)

    def stage2(
        self,
        formula: str,
        data: pd.DataFrame,
        *,
        family: str = "gaussian",
        link: str = "logit",
        n_draws: int = 500,
        seed=None,
        draws="posterior",
        combine: str | None = None,
        multilevel: bool = False,
        progress=None,
    ):
        """Relate a group-level outcome to the groups' random effects (MixWILD's stage 2).

        Each of ``n_draws`` replications draws every group's effects from their
        posterior, fits ``formula`` by maximum likelihood, and the replications
        are combined by Rubin's rules.

        Parameters
        ----------
        formula : str
            ``"outcome ~ terms"``; the terms may use the data's columns and the
            effects ``theta1`` (standardised location effect), ``theta2``
            (standardised scale effect independent of the location: omega =
            tau_l theta1 + sigma_omega theta2), ``u`` (location effect) and
            ``omega`` (random scale effect), e.g.
            ``"bmi ~ theta1 + theta2 + theta1:theta2"``.
        data : DataFrame
            The stage-1 groups column and the stage-2 variables: one row per
            group (rows of a group must agree), or one per unit with
            ``multilevel=True``.  Rows with missing values are dropped (with a
            :class:`~melsml.MissingDataWarning`).
        family : {"gaussian", "ordinal", "poisson", "nominal"}
            Linear regression (residual variance SSE/n), cumulative ``link``
            model, Poisson regression, multinomial logit.
        link : {"logit", "probit"}
            The ordinal family's link.
        n_draws : int
            Replications R.
        seed : int, optional
            Seed of the random draws.
        draws : {"posterior", "normal", "mixwild"} or DataFrame
            ``"posterior"``: the exact posterior; ``"normal"``: the normal with
            the posterior means and covariance; ``"mixwild"``: as MixWILD draws
            (means plus z'L: covariance L'L instead of LL').  Or a frame of
            draws: the groups column, ``draw`` (0..R-1) and the effects.
        combine : {"rubin", "mixwild"}, optional
            Rubin's rules (the default), or MixWILD's rule (the default with
            ``draws="mixwild"``); see :func:`melsml.stage2.combine`.
        multilevel : bool
            A unit-level outcome: a random-intercept model by ML (gaussian:
            statsmodels MixedLM; ordinal: melsml's own kernel; poisson and
            nominal: adaptive quadrature, :mod:`melsml.glmm`).
        progress : callable, optional
            Called as ``progress(done, total)`` after each replication.

        Returns
        -------
        :class:`melsml.stage2.Stage2Results`
        """
        from .stage2 import stage2

        self._needs_data("stage2()")
        return stage2(
            self,
            formula,
            data,
            family=family,
            link=link,
            n_draws=n_draws,
            seed=seed,
            draws=draws,
            combine_rule=combine,
            multilevel=multilevel,
            progress=progress,
        )

    def school_effects(
        self, alpha: float = 0.05, ws_reference=None, reference_var=None, at=None
    ) -> pd.DataFrame:
        """School means and variances of adjusted achievement with intervals and ranks.

        See :func:`melsml.random_effects.school_effects`.
        """
        self._needs_data("school_effects()")
        from .random_effects import school_effects

        return school_effects(
            self, alpha=alpha, ws_reference=ws_reference, reference_var=reference_var, at=at
        )

    # --- saving -------------------------------------------------------------------
    def save(self, path) -> None:
        """Save the fitted results (model, data and estimates) with pickle.

        Load them with :meth:`MELSResults.load`; a pickle is only for trusted files
        and the same melsml version.
        """
        import pickle
        from pathlib import Path

        with Path(path).open("wb") as fh:
            pickle.dump(self, fh, protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def load(cls, path) -> MELSResults:
        """Load results saved by :meth:`save` (trusted files only: pickle)."""
        import pickle
        from pathlib import Path

        with Path(path).open("rb") as fh:
            obj = pickle.load(fh)  # noqa: S301 - documented as trusted files only
        if not isinstance(obj, cls):
            raise MELSInputError(f"{str(path)!r} does not hold saved MELSResults")
        return obj

    # --- printing ---------------------------------------------------------------
    def summary(self, alpha: float = 0.05) -> Summary:
        """A summary object; ``print()`` it, or use ``.as_text()`` / ``.as_html()``."""
        from .summary import Summary

        return Summary.from_results(self, alpha=alpha)

    def __repr__(self) -> str:
        return (
            f"<MELSResults: llf={self.llf:.3f}, {self.k_params} parameters, "
            f"{self.nobs} obs in {self.n_groups} groups, converged={self.converged}>"
        )
