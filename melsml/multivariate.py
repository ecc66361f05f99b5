"""Several outcomes at once: the multivariate MELS model and its results.

``MELS.from_formula(["english ~ prior", "maths ~ prior"], data, "school",
ws_formula="~ prior")`` builds a :class:`MultivariateMELS`: one mean and one
WS log-variance function per outcome, a within-student residual correlation
matrix R, and the schools' location and scale effects of every outcome
jointly normal with an unstructured covariance.  See
:mod:`melsml.mvlikelihood` for how the likelihood is integrated.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from .exceptions import MELSInputError
from .inference import LikelihoodResults, StandardisedFit, delta_table
from .likelihood import check_threads
from .mvdesign import MultiDesign, build_multi_design
from .mvlikelihood import MultiEvaluation, MultiObjective
from .mvparams import MultiLayout
from .optimize import maximize, warn_fit

logger = logging.getLogger(__name__)

#: Gauss-Hermite points per scale dimension of the product rule, by the number
#: of outcomes (11, 7 x 7, 5 x 5 x 5 nodes per school; 5 beyond)
DEFAULT_POINTS = {1: 11, 2: 7, 3: 5}
#: the sparse grid's level (exact for total degree 2 level - 1) and the most
#: outcomes it takes
SPARSE_LEVEL = 4
MAX_OUTCOMES = 8


class MultivariateMELS:
    """A MELS model of several outcomes (see :mod:`melsml.multivariate`).

    Parameters
    ----------
    design : MultiDesign
    n_points : int, optional
        Gauss-Hermite points per scale dimension of the product rule (default 7
        for two outcomes, 5 for three or more).
    integration : {"auto", "product", "sparse"}
        See :meth:`from_formula`.
    """

    def __init__(
        self,
        design: MultiDesign,
        n_points: int | None = None,
        cov_structure: str = "unstructured",
        residual_corr: bool = True,
        random_scale: bool = True,
        integration: str = "auto",
    ):
        m = design.n_outcomes
        if m > MAX_OUTCOMES:
            raise MELSInputError(f"{m} outcomes: at most {MAX_OUTCOMES} are available")
        if integration not in ("auto", "product", "sparse"):
            raise MELSInputError(
                f"integration must be 'auto', 'product' or 'sparse' with several outcomes, "
                f"got {integration!r}"
            )
        if integration == "auto":
            integration = "product" if m <= 3 else "sparse"
        self.integration = integration
        if n_points is None:
            n_points = DEFAULT_POINTS.get(m, 5)
        if not isinstance(n_points, (int, np.integer)) or n_points < 5:
            raise MELSInputError(f"n_points must be an integer of at least 5, got {n_points!r}")
        self.design = design
        self.n_points = int(n_points)
        self.layout = MultiLayout(
            outcomes=design.outcomes,
            mean_names=design.mean_names,
            ws_names=design.ws_names,
            cov_structure=cov_structure,
            residual_corr=bool(residual_corr),
            random_scale=bool(random_scale),
        )

    @classmethod
    def from_formula(
        cls,
        formulas: list[str],
        data: pd.DataFrame,
        groups: str,
        *,
        ws_formula: str | list[str] = "~ 1",
        n_points: int | None = None,
        cov_structure: str = "unstructured",
        residual_corr: bool = True,
        random_scale: bool = True,
        integration: str = "auto",
    ) -> MultivariateMELS:
        """Build the model from one formula per outcome on wide data (one row
        per student; a missing outcome leaves the student in with the others).

        ``ws_formula`` is one WS formula for every outcome or one per outcome.
        ``cov_structure``: "unstructured" (default), "independent" (no
        covariance between different outcomes' school effects),
        "no-location-scale" (none between location and scale effects) or
        "uncorrelated-scales" (none between different outcomes' scale effects;
        every other covariance free).
        ``residual_corr=False`` fixes the within-student correlations at 0;
        ``random_scale=False`` leaves out the scale effects (the multivariate
        random-intercept model with per-outcome WS functions).
        ``integration``: "product" (the product Gauss-Hermite rule, ``n_points``
        per scale dimension; the default for up to 3 outcomes) or "sparse" (a
        Smolyak sparse grid exact for total degree 7: 201 nodes for 4
        outcomes, 341 for 5; the default beyond 3 outcomes).
        """
        design = build_multi_design(list(formulas), data, groups, ws_formula)
        return cls(design, n_points, cov_structure, residual_corr, random_scale, integration)

    def nesting_names(self) -> set:
        """Parameter names on a footing common to every covariance structure: the
        mean, WS and residual parameters, and ``cov(a,b)`` for each covariance
        of the school effects the structure leaves free (for model comparisons)."""
        lay = self.layout
        names = {n for n in lay.index if n[0] != "random"}
        # Sigma at generic values of the free entries: its structural zeros show
        theta = np.zeros(lay.k_params)
        free = lay.slices["random"]
        theta[free] = np.random.default_rng(0).uniform(0.5, 1.0, free.stop - free.start)
        L = lay.unpack(theta)["L"]
        sigma = L @ L.T
        lab = lay.labels
        rows, cols = np.tril_indices(2 * lay.m)
        names |= {
            ("random", f"cov({lab[a]},{lab[b]})")
            for a, b in zip(rows, cols, strict=True)
            if abs(sigma[a, b]) > 1e-12
        }
        return names

    def label(self) -> str:
        """A short description for model comparisons."""
        f = self.design.formulas
        parts = [", ".join(a for a, _ in f)]
        ws = {b for _, b in f}
        parts.append("WS " + (next(iter(ws)) if len(ws) == 1 else ", ".join(b for _, b in f)))
        parts.append(f"{self.layout.cov_structure} school effects")
        if not self.layout.random_scale:
            parts.append("no random scale")
        if not self.layout.residual_corr:
            parts.append("uncorrelated residuals")
        return "; ".join(parts)

    def objective(self, n_threads: int | None = None) -> MultiObjective:
        """The log-likelihood and score (``n_threads``: see :meth:`fit`)."""
        level = SPARSE_LEVEL if self.integration == "sparse" else 0
        threads = 0 if n_threads is None else check_threads(n_threads)
        return MultiObjective(self.design, self.layout, self.n_points, level, threads)

    def loglike(self, params) -> float:
        return self.objective().loglike(np.asarray(params, dtype=float))

    def start_params(self) -> pd.Series:
        """Moment start values: per outcome, OLS for the mean, a regression of
        the log squared residuals for the WS function (plus 1.27, minus E log
        chi2(1)), the between-school variance of the residuals for the location
        effect and 0.3 for the scale effect's SD; the correlation of the
        students' standardised residuals; no cross-outcome covariance."""
        d, lay = self.design, self.layout
        m = d.n_outcomes
        beta, tau, L = [], [], np.zeros((2 * m, 2 * m))
        resid = np.full((d.n_obs, m), np.nan)
        gi = d.group_index
        for k in range(m):
            rows = d.observed[:, k]
            y, x, w = d.y_filled[rows, k], d.x_mean[k][rows], d.x_ws[k][rows]
            b = np.linalg.lstsq(x, y, rcond=None)[0]
            r = y - x @ b
            counts = np.bincount(gi[rows], minlength=d.n_groups)
            means = np.bincount(gi[rows], weights=r, minlength=d.n_groups) / np.maximum(counts, 1)
            within = r - means[gi[rows]]
            var_w = float(np.mean(within**2))
            var_b = float(np.var(means[counts > 0])) - var_w / max(float(np.mean(counts)), 1.0)
            t = np.linalg.lstsq(w, np.log(within**2 + 1e-8 * var_w), rcond=None)[0]
            if "Intercept" in d.ws_names[k]:
                t[d.ws_names[k].index("Intercept")] += 1.27
            beta.append(b)
            tau.append(t)
            L[k, k] = np.sqrt(max(var_b, 0.05 * var_w))
            L[m + k, m + k] = 0.3 if lay.random_scale else 0.0
            resid[rows, k] = within / np.sqrt(var_w)
        R = pd.DataFrame(resid).corr().to_numpy()
        R = np.where(np.isfinite(R), R, 0.0)
        np.fill_diagonal(R, 1.0)
        factor = lay.factor_of(L @ L.T) if lay.order[0] != 0 else L
        theta = np.concatenate(beta + tau + [lay.raw_correlation(R), factor[lay.l_entries]])
        return pd.Series(theta, index=lay.index, name="start")

    def fit(self, start_params=None, maxiter: int = 500, tol: float = 1e-12,
            cov_type: str = "observed", n_threads: int | None = None,
            ) -> MultivariateResults:  # fmt: skip
        """Maximum-likelihood fit (BFGS with the analytic score, then Newton
        steps; standard errors from forward differences of the score).

        ``n_threads``: threads of the compiled passes over the students
        (default: all cores; results do not depend on the number)."""
        if cov_type not in ("observed", "robust"):
            raise MELSInputError(
                f"unknown cov_type {cov_type!r}; allowed values: 'observed', 'robust'"
            )
        theta0 = (
            self.start_params().to_numpy()
            if start_params is None
            else np.asarray(start_params, dtype=float)
        )
        if theta0.shape != (self.layout.k_params,):
            raise MELSInputError(
                f"start_params needs {self.layout.k_params} values, got {theta0.size}"
            )
        obj = self.objective(n_threads)
        theta, hess, info = maximize(obj, theta0, maxiter=maxiter, tol=tol, forward_hessian=True)
        warn_fit(info)
        final = obj.evaluate(theta)
        std = StandardisedFit(obj, theta, hess, np.eye(theta.size))
        return MultivariateResults(self, theta, info, final, cov_type, std)


class MultivariateResults(LikelihoodResults):
    """Results of a multivariate MELS fit: the statsmodels surface, the
    residual correlations, the school effects' covariance and the schools'
    empirical Bayes effects per outcome."""

    def __init__(self, model, theta_raw, info, evaluation: MultiEvaluation, cov_type, std):
        self._set_estimates(model, theta_raw, info, evaluation, cov_type, std)
        self.nobs = model.design.n_obs

    @property
    def _index(self) -> pd.MultiIndex:
        return self.model.layout.index

    @property
    def _p(self) -> dict:
        return self.model.layout.unpack(self._theta)

    @property
    def residual_corr(self) -> pd.DataFrame:
        """Within-student correlation of the outcomes' residuals (R)."""
        o = list(self.model.design.outcomes)
        return pd.DataFrame(self._p["R"], index=o, columns=o)

    @property
    def cov_re(self) -> pd.DataFrame:
        """Covariance of the school effects, labelled location:outcome, scale:outcome."""
        L = self._p["L"]
        lab = list(self.model.layout.labels)
        return pd.DataFrame(L @ L.T, index=lab, columns=lab)

    @property
    def corr_re(self) -> pd.DataFrame:
        """Correlations of the school effects."""
        c = self.cov_re
        sd = np.sqrt(np.diag(c.to_numpy()))
        with np.errstate(invalid="ignore", divide="ignore"):
            return c / np.outer(sd, sd)

    def random_params(self, alpha: float = 0.05) -> pd.DataFrame:
        """The natural parameters with delta-method standard errors and Wald
        intervals: ``var(a)``, ``cov(a,b)`` and ``corr(a,b)`` of the school
        effects (labels location:outcome, scale:outcome; the cross-outcome
        correlations of school means and of school variances among them), the
        within-student residual correlations ``residual_corr(a,b)``, and each
        outcome's ``var_e(outcome)``, the residual variance exp(wbar' tau) at
        the outcome's mean WS covariates for a school with v = 0."""
        lay, d = self.model.layout, self.model.design
        lab = lay.labels
        n = len(lab)
        pairs = [(a, b) for a in range(n) for b in range(a)]
        free = self.model.nesting_names()
        pairs = [(a, b) for a, b in pairs if ("random", f"cov({lab[a]},{lab[b]})") in free]
        variances = [a for a in range(n) if ("random", f"cov({lab[a]},{lab[a]})") in free]
        corr_pairs = [(a, b) for a in range(lay.m) for b in range(a)] if lay.n_corr else []
        wbar = [d.x_ws[k][d.observed[:, k]].mean(axis=0) for k in range(lay.m)]
        names = [f"var({lab[a]})" for a in variances]
        names += [f"cov({lab[a]},{lab[b]})" for a, b in pairs]
        names += [f"corr({lab[a]},{lab[b]})" for a, b in pairs]
        names += [f"residual_corr({lay.outcomes[b]},{lay.outcomes[a]})" for a, b in corr_pairs]
        names += [f"var_e({o})" for o in lay.outcomes]

        def fun(theta):
            p = lay.unpack(theta)
            sigma = p["L"] @ p["L"].T
            sd = np.sqrt(np.diag(sigma))
            out = [sigma[a, a] for a in variances]
            out += [sigma[a, b] for a, b in pairs]
            out += [sigma[a, b] / (sd[a] * sd[b]) for a, b in pairs]
            out += [p["R"][a, b] for a, b in corr_pairs]
            out += [np.exp(wbar[k] @ p["tau"][k]) for k in range(lay.m)]
            return np.array(out)

        cov = self.cov_params().to_numpy()
        return delta_table(fun, self._theta, cov, names, alpha, "parameter")

    def school_effects(self, alpha: float = 0.05) -> pd.DataFrame:
        """Each school's mean and variance of adjusted achievement, per outcome.

        Columns, for each outcome o: ``mean[o]`` (the posterior mean of the
        school's location effect u_o), ``variance[o]`` (of the school's
        residual variance exp(wbar_o' tau_o + v_o) at the outcome's mean WS
        covariates), each with ``_sd``, ``_lower``, ``_upper`` (equal-tailed
        1 - alpha posterior interval), ``_rank`` (1 = highest mean, lowest
        variance) and ``_separated`` (the interval excludes 0, resp. the
        variance at v = 0); and ``n``, the school's students.  The posterior
        is tabulated on a grid over the scale effects with the location
        effects normal at each point.
        """
        from .measures import grid_quantiles, measure_columns, mixture_quantiles

        d, lay = self.model.design, self.model.layout
        grid = self.model.objective().posterior_grid(self._theta)
        w, mu, pinv, v = grid["w"], grid["mu"], grid["pinv"], grid["v"]
        probs = (alpha / 2, 1 - alpha / 2)
        p = self._p
        cols: dict[str, np.ndarray] = {"n": d.group_sizes}
        for k, o in enumerate(lay.outcomes):
            m_k, s_k = mu[..., k], np.sqrt(np.maximum(pinv[..., k, k], 0.0) + 1e-300)
            mean = np.sum(w * m_k, axis=1)
            sd = np.sqrt(np.maximum(np.sum(w * (m_k**2 + s_k**2), axis=1) - mean**2, 0.0))
            lo, hi = mixture_quantiles(
                w, m_k, s_k, probs, mean - 10 * sd - 1e-8, mean + 10 * sd + 1e-8
            )
            cols.update(measure_columns(f"mean[{o}]", mean, sd, lo, hi, 0.0))
            rows = d.observed[:, k]
            shift = float(d.x_ws[k][rows].mean(axis=0) @ p["tau"][k])
            e = np.exp(shift + v[..., k])
            vm = np.sum(w * e, axis=1)
            vsd = np.sqrt(np.maximum(np.sum(w * e**2, axis=1) - vm**2, 0.0))
            vlo, vhi = grid_quantiles(e, w, probs)
            cols.update(measure_columns(f"variance[{o}]", vm, vsd, vlo, vhi, np.exp(shift)))
        return pd.DataFrame(cols, index=pd.Index(d.group_labels, name=d.groups))

    def summary(self) -> str:
        """The estimates, the residual correlations and the school effects'
        correlations as text."""
        d = self.model.design
        lines = [
            "Multivariate mixed-effects location scale model (maximum likelihood)",
            f"outcomes: {', '.join(d.outcomes)}; groups: {d.groups} ({d.n_groups}); "
            f"students: {d.n_obs}; observed values: {d.n_values}",
            f"log-likelihood: {self.llf:.4f}   AIC: {self.aic:.2f}   BIC: {self.bic:.2f}   "
            f"converged: {self.converged}",
        ]
        tidy = self.tidy().round(4)
        for o in d.outcomes:
            for block, what in (("beta", "mean function"), ("tau", "WS log-variance function")):
                part = tidy.loc[block]
                part = part[part.index.str.startswith(f"{o}:")]
                part.index = [t.split(":", 1)[1] for t in part.index]
                lines += ["", f"{o}: {what}", part.to_string()]
        rest = tidy.loc[[b for b in ("residual", "random") if b in tidy.index.levels[0]]]
        lines += [
            "",
            "Residual correlation factor and school effects' Cholesky factor:",
            rest.to_string(),
            "",
            "Residual correlations (within students):",
            self.residual_corr.round(3).to_string(),
            "",
            "Correlations of the school effects:",
            self.corr_re.round(3).to_string(),
        ]
        return "\n".join(lines)
