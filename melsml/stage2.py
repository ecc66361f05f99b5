"""Second-stage models: a group-level (or unit-level) outcome regressed on each
group's random location and scale effects (MixWILD's stage 2).

The effects are not observed: each replication draws every group's effects
from their empirical Bayes posterior, fits the stage-2 model by maximum
likelihood (:mod:`melsml.stage2_fit`) and the replications are combined by
Rubin's rules.  The effects the stage-2 formula may name:

- ``theta1``: the standardised location effect (u = sigma_u theta1);
- ``theta2``: the standardised scale effect independent of the location,
  omega = tau_l theta1 + sigma_omega theta2 (with a random scale);
- ``u``: the location effect, sigma_u theta1 (sigma_u averaged over the
  group's units when the BS function has covariates);
- ``omega``: the random scale effect (with a random scale).

Draws: ``"posterior"`` from the exact posterior (the tabulated posterior of
the scale effect, with the location effect normal given it);
``"normal"`` from the normal with the posterior's means and covariance;
``"mixwild"`` as MixWILD draws them: the posterior means plus z'L, with L
the lower Cholesky factor of the posterior covariance, so that the draws
have covariance L'L instead of LL'.  A data frame of draws may be given
instead (the groups column, ``draw``, and the effects).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import stats

from .exceptions import MELSInputError, MissingDataWarning
from .formula import _expression_names, _formula_names, _parse
from .inference import tidy_table
from .posterior import posterior_grid
from .random_effects import _posterior_mixwild, group_sd_u
from .stage2_fit import (
    FAMILIES,
    Replication,
    fit_nominal_multilevel,
    fit_one,
    fit_ordinal_multilevel,
    fit_poisson_multilevel,
)

if TYPE_CHECKING:  # pragma: no cover
    from .likelihood import FitState
    from .results import MELSResults

logger = logging.getLogger(__name__)

EFFECTS = ("theta1", "theta2", "u", "omega")
DRAWS = ("posterior", "normal", "mixwild")
COMBINE = ("rubin", "mixwild")


# ----------------------------------------------------------------------- draws
def _scale_params(state: FitState) -> tuple[float, float, bool]:
    """tau_l, sigma_omega and whether the model has a random scale."""
    p = state.params()
    has_scale = state.layout.s > 0
    tl = float(p["tau_l"]) if has_scale and "tau_l" in p else 0.0
    sw = abs(float(p["sigma_omega"])) if has_scale and "sigma_omega" in p else 0.0
    return tl, sw, has_scale


def _normal_draws(
    state: FitState, n_draws: int, rng: np.random.Generator, transposed: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """(theta1, theta2) draws (n_groups, n_draws) from the normal with the
    posterior's means and covariance; ``transposed``: MixWILD's m + z'L."""
    post = _posterior_mixwild(state, 0.05, 0.0)
    j = post["theta1_mean"].shape[0]
    m1, s1 = post["theta1_mean"], post["theta1_sd"]
    z1 = rng.standard_normal((j, n_draws))
    if "theta2_mean" not in post:
        return m1[:, None] + s1[:, None] * z1, None
    z2 = rng.standard_normal((j, n_draws))
    l11 = s1
    with np.errstate(invalid="ignore", divide="ignore"):
        l21 = np.where(l11 > 0, post["cov_theta12"] / l11, 0.0)
    l22 = np.sqrt(np.maximum(post["theta2_sd"] ** 2 - l21**2, 0.0))
    if transposed:
        # the row vector z'L: theta1 = m1 + z1 L11 + z2 L21, theta2 = m2 + z2 L22
        t1 = m1[:, None] + l11[:, None] * z1 + l21[:, None] * z2
        t2 = post["theta2_mean"][:, None] + l22[:, None] * z2
    else:
        t1 = m1[:, None] + l11[:, None] * z1
        t2 = post["theta2_mean"][:, None] + l21[:, None] * z1 + l22[:, None] * z2
    return t1, t2


def _posterior_draws(
    state: FitState, n_draws: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray | None]:
    """(theta1, omega) draws (n_groups, n_draws) from the tabulated posterior.

    A grid point is drawn by its weight; with one scale effect on an evenly
    spaced grid (a continuous outcome) the scale effect is then spread
    uniformly over the point's cell, the location effect's normal
    interpolated linearly to it; the location effect is drawn from its
    normal given the scale effect.
    """
    grid = posterior_grid(state)
    j, n_p = grid.w.shape
    cw = np.cumsum(grid.w, axis=1)
    cw /= cw[:, -1:]
    u1 = rng.random((j, n_draws))
    idx = np.empty((j, n_draws), dtype=np.intp)
    for g in range(j):
        idx[g] = np.minimum(np.searchsorted(cw[g], u1[g], side="right"), n_p - 1)
    rows = np.arange(j)[:, None]
    mu = grid.mu[..., 0][rows, idx]
    var = grid.pinv[..., 0, 0][rows, idx]
    omega = None
    if state.layout.s:
        omega = grid.v[..., 0][rows, idx]
        if state.layout.s == 1 and not state.design.interval_outcome and n_p > 1:
            off = rng.random((j, n_draws)) - 0.5
            nb = np.clip(idx + np.where(off > 0, 1, -1), 0, n_p - 1)
            frac = np.abs(off)
            step = grid.v[:, 1, 0] - grid.v[:, 0, 0]
            omega = omega + off * step[:, None]
            mu = mu + frac * (grid.mu[..., 0][rows, nb] - mu)
            var = var + frac * (grid.pinv[..., 0, 0][rows, nb] - var)
    theta1 = mu + np.sqrt(np.maximum(var, 0.0)) * rng.standard_normal((j, n_draws))
    return theta1, omega


def effect_draws(
    res: MELSResults, n_draws: int = 500, seed=None, method: str = "posterior"
) -> pd.DataFrame:
    """Draws of every group's random effects from their posterior.

    Parameters
    ----------
    res : a fit with a random intercept and at most a random scale intercept
    n_draws : draws per group
    seed : seed of numpy's random generator
    method : {"posterior", "normal", "mixwild"} (see :mod:`melsml.stage2`)

    Returns
    -------
    DataFrame with the groups column, ``draw`` (0..n_draws-1) and the
    effects ``theta1``, ``u`` and, with a random scale, ``theta2``, ``omega``;
    one row per group and draw, draws of a group together.
    """
    state = _check_model(res)
    if method not in DRAWS:
        raise MELSInputError(f"unknown draws {method!r}; allowed values: {DRAWS}")
    n_draws = _check_count(n_draws)
    rng = np.random.default_rng(seed)
    tl, sw, has_scale = _scale_params(state)
    if method == "posterior":
        theta1, omega = _posterior_draws(state, n_draws, rng)
        theta2 = None if omega is None or sw == 0 else (omega - tl * theta1) / sw
    else:
        theta1, theta2 = _normal_draws(state, n_draws, rng, method == "mixwild")
        omega = None if theta2 is None else tl * theta1 + sw * theta2
    d = state.design
    out = {
        d.groups: np.repeat(d.group_labels, n_draws),
        "draw": np.tile(np.arange(n_draws), d.n_groups),
        "theta1": theta1.ravel(),
        "u": (group_sd_u(state)[:, None] * theta1).ravel(),
    }
    if has_scale:
        out["omega"] = omega.ravel()
        if theta2 is not None:
            out["theta2"] = theta2.ravel()
    return pd.DataFrame(out)


def _check_count(n_draws) -> int:
    if isinstance(n_draws, bool) or not isinstance(n_draws, (int, np.integer)) or n_draws < 1:
        raise MELSInputError(f"n_draws must be a positive integer, got {n_draws!r}")
    return int(n_draws)


def _check_model(res: MELSResults) -> FitState:
    state = res.fit_state
    st = state.layout.structure
    if not state.layout.mixwild_view:
        raise MELSInputError(
            "stage 2 needs a random intercept and at most a random scale intercept "
            "(MixWILD's models); this model has random effects "
            f"{', '.join(st.labels)}"
        )
    if st.association == "quadratic":
        raise MELSInputError(
            "stage 2 needs the linear or no association: with the quadratic "
            "association the scale effect has no theta2 part independent of theta1"
        )
    return state


# ------------------------------------------------------------------- the data
def _prepare(
    data: pd.DataFrame,
    groups: str,
    outcome: str,
    columns: list[str],
    multilevel: bool,
    labels: np.ndarray,
) -> pd.DataFrame:
    """The stage-2 rows: the columns used, complete, of groups the stage-1 fit
    has; one row per group unless ``multilevel``."""
    if not isinstance(data, pd.DataFrame):
        raise MELSInputError(f"data must be a pandas DataFrame, got {type(data).__name__}")
    if groups not in data.columns:
        raise MELSInputError(
            f"the stage-2 data need the stage-1 groups column {groups!r}; "
            f"columns: {list(data.columns)}"
        )
    frame = data[[groups, *columns]]
    complete = frame.notna().all(axis=1)
    if not complete.all():
        n_bad = int((~complete).sum())
        warnings.warn(
            f"stage 2: dropped {n_bad} of {len(frame)} rows with missing values in "
            f"{[c for c in [groups, *columns] if frame[c].isna().any()]}",
            MissingDataWarning,
            stacklevel=4,
        )
        frame = frame[complete]
    known = pd.Index(labels)
    found = known.get_indexer(frame[groups])
    if (found < 0).any():
        missing = frame[groups][found < 0].unique()
        if (found >= 0).sum() == 0:
            raise MELSInputError(
                f"no stage-2 row belongs to a group of the stage-1 fit (e.g. {groups} = "
                f"{missing[0]!r})"
            )
        warnings.warn(
            f"stage 2: dropped the rows of {missing.size} groups the stage-1 fit does not "
            f"have (e.g. {groups} = {missing[0]!r})",
            MissingDataWarning,
            stacklevel=4,
        )
        frame = frame[found >= 0]
    if not multilevel:
        varies = frame.groupby(groups, sort=False)[columns].nunique() > 1
        for col in columns:
            if varies[col].any():
                example = varies.index[varies[col].to_numpy()][0]
                what = "outcome" if col == outcome else "variable"
                raise MELSInputError(
                    f"the stage-2 {what} {col!r} varies within group {example!r}: give "
                    "one row per group, or multilevel=True for a unit-level stage 2"
                )
        frame = frame.drop_duplicates(subset=[groups])
    return frame.reset_index(drop=True)


# ------------------------------------------------------------------ combining
def combine(
    params: np.ndarray, covs: np.ndarray, rule: str = "rubin"
) -> tuple[np.ndarray, np.ndarray]:
    """Combine R replications' estimates (R, k) and covariances (R, k, k).

    ``"rubin"``: the mean estimate and T = W + (1 + 1/R) B, W the mean
    within-replication covariance and B the between-replication covariance
    (divisor R - 1).  ``"mixwild"``: MixWILD's sum_r V_r / (R - 1) +
    sum_r (b_r - mean)(b_r - mean)' / (R - 1).  One replication: its own.
    """
    if rule not in COMBINE:
        raise MELSInputError(f"unknown combine {rule!r}; allowed values: {COMBINE}")
    params, covs = np.asarray(params, float), np.asarray(covs, float)
    r = params.shape[0]
    mean = params.mean(axis=0)
    dev = params - mean
    if r == 1:
        return mean, covs[0].copy()
    between = dev.T @ dev / (r - 1)
    if rule == "rubin":
        return mean, covs.mean(axis=0) + (1.0 + 1.0 / r) * between
    return mean, covs.sum(axis=0) / (r - 1) + between


# -------------------------------------------------------------------- results
@dataclass(frozen=True)
class Stage2Summary:
    """A stage-2 fit's summary: ``print()`` it, or :meth:`as_text`."""

    info: list[tuple[str, str]]
    table: pd.DataFrame
    alpha: float

    def as_text(self) -> str:
        nw = max(24, max(len(str(t)) for t in self.table.index) + 2)
        width = 62 + nw
        lo, hi = f"[{self.alpha / 2:.3f}", f"{1 - self.alpha / 2:.3f}]"
        key_w = max(len(k) for k, _ in self.info) + 2
        lines = ["Stage 2: outcome on the groups' random effects (multiple draws)".center(width)]
        lines += ["=" * width, *(f"{k + ':':<{key_w}}{v}" for k, v in self.info), "-" * width]
        lines.append(
            f"{'':<{nw}}{'estimate':>10}{'std.err':>10}{'z':>9}{'P>|z|':>9}{lo:>12}{hi:>12}"
        )
        for term, row in self.table.iterrows():
            lines.append(
                f"{term:<{nw}}{row.estimate:>10.5f}{row.std_error:>10.5f}{row.z:>9.3f}"
                f"{row.p_value:>9.4f}{row.lower:>12.5f}{row.upper:>12.5f}"
            )
        lines.append("=" * width)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.as_text()

    __repr__ = __str__


class Stage2Results:
    """A stage-2 model fitted over posterior draws of the random effects.

    Attributes
    ----------
    params, bse : combined estimates and standard errors (Series)
    llf : mean log-likelihood over the replications; ``llf_sd`` its SD
    nobs : stage-2 rows (groups, or units with ``multilevel=True``)
    data : the stage-2 rows used
    n_draws : replications
    replications : (n_draws, k) each replication's estimates
    replication_bse : (n_draws, k) each replication's standard errors
    replication_llf : (n_draws,) each replication's log-likelihood
    """

    def __init__(
        self,
        reps: list[Replication],
        *,
        formula: str,
        family: str,
        draws: str,
        rule: str,
        nobs: int,
        link: str | None,
        multilevel: bool,
        data: pd.DataFrame | None = None,
        seed=None,
    ):
        names = list(reps[0].names)
        est = np.array([r.params for r in reps])
        covs = np.array([r.cov for r in reps])
        mean, cov = combine(est, covs, rule)
        self.params = pd.Series(mean, index=names, name="estimate")
        self._cov = cov
        self.bse = pd.Series(np.sqrt(np.clip(np.diag(cov), 0, None)), index=names)
        lls = np.array([r.llf for r in reps])
        self.llf = float(lls.mean())
        self.llf_sd = float(lls.std(ddof=1)) if lls.size > 1 else 0.0
        self.replications = pd.DataFrame(est, columns=names)
        self.replication_bse = pd.DataFrame(
            np.sqrt(np.clip(np.einsum("rkk->rk", covs), 0, None)), columns=names
        )
        self.replication_llf = pd.Series(lls, name="llf")
        self.nobs = nobs
        self.n_draws = len(reps)
        self.formula, self.family, self.draws, self.combine = formula, family, draws, rule
        self.link = link
        self.multilevel = multilevel
        #: the stage-2 rows used (the groups column and the data's variables)
        self.data = data
        self.seed = seed

    def cov_params(self) -> pd.DataFrame:
        """Combined covariance of the estimates."""
        return pd.DataFrame(self._cov, index=self.params.index, columns=self.params.index)

    @property
    def tvalues(self) -> pd.Series:
        return self.params / self.bse

    @property
    def pvalues(self) -> pd.Series:
        """Two-sided normal p-values."""
        return pd.Series(2 * stats.norm.sf(np.abs(self.tvalues)), index=self.params.index)

    def conf_int(self, alpha: float = 0.05) -> pd.DataFrame:
        """Normal (Wald) intervals with the combined standard errors."""
        q = stats.norm.ppf(1 - alpha / 2)
        return pd.DataFrame(
            {"lower": self.params - q * self.bse, "upper": self.params + q * self.bse}
        )

    def tidy(self, alpha: float = 0.05) -> pd.DataFrame:
        """One row per parameter: estimate, SE, z, p and CI."""
        return tidy_table(self, alpha)

    def summary(self, alpha: float = 0.05) -> Stage2Summary:
        """The fit's settings and the table of :meth:`tidy`."""
        table = self.tidy(alpha)
        family = self.family + (f" ({self.link} link)" if self.family == "ordinal" else "")
        if self.multilevel:
            family += ", random intercept"
        rule = (
            "Rubin's rules: W + (1 + 1/R) B"
            if self.combine == "rubin"
            else "MixWILD's: sum V_r/(R-1) + sum (b_r - b)^2/(R-1)"
        )
        info = [
            ("Formula", self.formula),
            ("Family", family),
            ("Rows", str(self.nobs)),
            ("Draws of the effects", f"{self.n_draws} ({self.draws})"),
            ("Combination", rule),
            ("Mean log-likelihood", f"{self.llf:.4f} (SD over draws {self.llf_sd:.4f})"),
        ]
        return Stage2Summary(info, table, alpha)

    def __repr__(self) -> str:
        return (
            f"<Stage2Results {self.formula!r}, {self.family}, {self.n_draws} draws; "
            f"mean llf {self.llf:.4f}>"
        )


# ------------------------------------------------------------------- the fit
def stage2(
    res: MELSResults,
    formula: str,
    data: pd.DataFrame,
    *,
    family: str = "gaussian",
    link: str = "logit",
    n_draws: int = 500,
    seed=None,
    draws: str | pd.DataFrame = "posterior",
    combine_rule: str | None = None,
    multilevel: bool = False,
    progress=None,
) -> Stage2Results:
    """Fit a stage-2 model over draws of the random effects; see
    :meth:`melsml.MELSResults.stage2`."""
    if family not in FAMILIES:
        raise MELSInputError(f"unknown stage-2 family {family!r}; allowed values: {FAMILIES}")
    if link not in ("logit", "probit"):
        raise MELSInputError(f"unknown link {link!r}; allowed values: ('logit', 'probit')")
    state = _check_model(res)
    d = state.design
    groups = d.groups
    parsed = _parse(formula, "formula", needs_lhs=True)
    names = _formula_names(parsed)
    lhs = sorted(_formula_names(parsed.lhs))
    used_effects = [e for e in EFFECTS if e in names]
    if isinstance(draws, pd.DataFrame):
        table = draws
        method = "given"
        missing = [c for c in (groups, "draw", *used_effects) if c not in table.columns]
        if missing:
            raise MELSInputError(f"the draws need the columns {missing}")
        extra = [c for c in table.columns if c in names and c not in (groups, "draw")]
        used_effects = list(dict.fromkeys([*used_effects, *extra]))
    else:
        method = draws
        tl, sw, has_scale = _scale_params(state)
        lacking = [e for e in used_effects if e in ("theta2", "omega") and not has_scale]
        if "theta2" in used_effects and has_scale and sw == 0:
            lacking.append("theta2")
        if lacking:
            raise MELSInputError(
                f"the stage-2 formula uses {lacking}, but the stage-1 model has "
                + ("no random scale" if not has_scale else "sigma_omega = 0 (no theta2)")
            )
        table = None
    clash = [e for e in used_effects if e in data.columns]
    if clash:
        raise MELSInputError(
            f"the stage-2 data have columns named like the effects the draws supply: {clash}"
        )
    if len(lhs) != 1 or lhs[0] in used_effects:
        raise MELSInputError(
            f"the stage-2 formula {formula!r} needs one outcome column of the data on the left"
        )
    outcome = lhs[0]
    columns = sorted(n for n in names if n not in used_effects and n != groups)
    if outcome not in columns:
        columns.insert(0, outcome)
    missing_cols = [c for c in columns if c not in data.columns]
    if missing_cols:
        raise MELSInputError(f"the stage-2 data have no column(s) {missing_cols}")
    frame = _prepare(data, groups, outcome, columns, multilevel, d.group_labels)
    if table is None:
        table = effect_draws(res, n_draws, seed, method)
    rule = combine_rule or ("mixwild" if method == "mixwild" else "rubin")
    mels_class = type(res.model) if multilevel and family == "ordinal" else None
    reps = _fit_replications(
        frame,
        table,
        formula,
        parsed,
        outcome,
        family,
        link,
        groups,
        used_effects,
        multilevel,
        progress,
        mels_class,
    )
    return Stage2Results(
        reps,
        formula=formula,
        family=family,
        draws=method,
        rule=rule,
        nobs=len(frame),
        link=link if family == "ordinal" else None,
        multilevel=multilevel,
        data=frame,
        seed=seed,
    )


def _outcome(frame: pd.DataFrame, outcome: str, family: str):
    y = frame[outcome]
    if family in ("ordinal", "nominal"):
        cats = y.cat.categories if isinstance(y.dtype, pd.CategoricalDtype) else np.unique(y)
        if len(cats) < 2:
            raise MELSInputError(f"the stage-2 outcome {outcome!r} has one category")
        return pd.Categorical(y, categories=cats, ordered=True)
    y = pd.to_numeric(y, errors="coerce").to_numpy(dtype=float)
    if family == "poisson" and (np.any(y < 0) or np.any(y != np.round(y))):
        raise MELSInputError(f"the stage-2 outcome {outcome!r} must hold counts 0, 1, 2, ...")
    return y


class _Designs:
    """The stage-2 design of each draw.  Where every term uses the effects as
    plain factors (``theta1``, ``theta1:theta2``, ``theta1:x``), each column is
    its term's other factors (built once by formulaic, with the effects at 1)
    times the product of the term's effects, so a draw costs a few products;
    otherwise (an effect inside a transform) formulaic builds each draw's."""

    def __init__(self, rhs, frame: pd.DataFrame, effects: list[str]):
        import formulaic

        base = frame.copy()
        for e in effects:
            base[e] = 1.0
        mm = formulaic.model_matrix(rhs, base)
        self.spec = mm.model_spec
        self.names = tuple(str(c) for c in mm.columns)
        self.base = np.asarray(mm, dtype=float)
        self.frame = frame
        self.products: list[tuple[list[int], list[str]]] = []
        self.fast = True
        wanted = set(effects)
        for term, idx in self.spec.term_indices.items():
            factors = [str(f) for f in term.factors]
            plain = [f for f in factors if f in wanted]
            if any(_expression_names(f) & wanted for f in factors if f not in wanted):
                self.fast = False
            if plain:
                self.products.append((list(idx), plain))

    def design(self, values: dict[str, np.ndarray]) -> np.ndarray:
        """The design at the effects ``values`` (one array per effect, per row)."""
        if not self.fast:
            work = self.frame.copy()
            for e, v in values.items():
                work[e] = v
            return np.asarray(self.spec.get_model_matrix(work), dtype=float)
        x = self.base.copy()
        for idx, plain in self.products:
            mult = values[plain[0]].copy()
            for e in plain[1:]:
                mult *= values[e]
            x[:, idx] *= mult[:, None]
        return x


def _fit_replications(
    frame,
    table,
    formula,
    parsed,
    outcome,
    family,
    link,
    groups,
    effects,
    multilevel,
    progress=None,
    mels_class=None,
) -> list[Replication]:
    """Each draw's fit (``formula`` parsed as ``parsed``, its outcome column
    ``outcome``).  ``mels_class`` (a multilevel ordinal stage 2): the model
    class whose ``from_formula`` fits the random-intercept cumulative model."""
    table = table.sort_values(["draw", groups], kind="stable")
    n_draws = int(table["draw"].max()) + 1 if len(table) else 0
    y = _outcome(frame, outcome, family)
    keys = frame[groups]
    designs = None if mels_class is not None else _Designs(parsed.rhs, frame, effects)
    start = None
    reps = []
    by_draw = dict(tuple(table.groupby("draw", sort=True)))
    for r in range(n_draws):
        if r not in by_draw:
            raise MELSInputError(f"the draws have no draw {r} (draws must be 0..R-1)")
        one = by_draw[r].set_index(groups)
        pos = one.index.get_indexer(keys)
        if (pos < 0).any():
            raise MELSInputError(
                f"draw {r} has no effects for {groups} = {keys[pos < 0].iloc[0]!r}"
            )
        values = {e: one[e].to_numpy(dtype=float)[pos] for e in effects}
        if designs is None:
            work = frame.assign(**values)
            rep, start = fit_ordinal_multilevel(mels_class, formula, work, groups, link, start)
        else:
            x, names = designs.design(values), designs.names
            if family == "ordinal" and "Intercept" in names:
                keep = [i for i, n in enumerate(names) if n != "Intercept"]
                x, names = x[:, keep], tuple(names[i] for i in keep)
            groups_arr = keys.to_numpy() if multilevel else None
            if multilevel and family == "poisson":
                rep, start = fit_poisson_multilevel(y, x, names, groups_arr, start)
            elif multilevel and family == "nominal":
                rep, start = fit_nominal_multilevel(y, x, names, groups_arr, start)
            else:
                rep = fit_one(family, y, x, names, link=link, groups=groups_arr)
        reps.append(rep)
        if progress is not None:
            progress(r + 1, n_draws)
    if not reps:
        raise MELSInputError("the draws are empty")
    logger.info("stage 2: %d replications fitted", len(reps))
    return reps
