"""Summary tables and model comparison (likelihood-ratio tests, AIC, BIC)."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import stats

from .censoring import censoring_counts

if TYPE_CHECKING:  # pragma: no cover
    from .results import MELSResults
    from .threelevel_results import ThreeLevelResults

BLOCK_TITLES = {
    "beta": "BETA (mean function)",
    "thresholds": "THRESHOLDS (ordinal outcome: the first, then the logs of the increments)",
    "alpha": "ALPHA (between-group log-variance function)",
    "tau": "TAU (within-group log-variance function)",
    "random": "Random scale (omega = tau_l*theta1 [+ tau_q*theta1^2] + sigma_omega*theta2)",
}
_WIDTH = 86


@dataclass(frozen=True)
class Summary:
    """The data behind a printed summary: ``print()`` it or show it at the prompt;
    render with :meth:`as_text`, :meth:`as_html` or :meth:`as_latex`."""

    info: list[tuple[str, str]]
    params: pd.DataFrame  # tidy(): estimate, std_error, z, p_value, lower, upper
    random: pd.DataFrame  # natural random-effect parameters
    alpha: float
    notes: list[str]
    title: str = "MELS: mixed-effects location scale model (maximum likelihood)"
    block_titles: dict | None = None

    @classmethod
    def from_results(cls, res: MELSResults, alpha: float = 0.05) -> Summary:
        d, opt, fi = res.model.design, res.model.options, res.fit_info
        sizes = d.group_sizes
        assoc = opt.association if opt.random_scale else "-"
        outcome = d.outcome
        if d.categories is not None:
            cats = d.categories
            outcome += (
                f" (ordinal: {cats.size} categories, {cats[0]:g} to {cats[-1]:g}; "
                f"{opt.link} link; WS intercept fixed at 0)"
            )
        info = [
            ("Outcome", outcome),
            ("Groups column", d.groups),
            ("Mean function", d.formulas["formula"]),
            ("BS variance function", "log sigma_u^2 " + d.formulas["bs_formula"])
            if d.random_intercept_only
            else ("Random location effects", d.formulas["re_formula"] + " (unstructured)"),
            ("WS variance function", "log sigma_e^2 " + d.formulas["ws_formula"]),
            ("Random scale", f"{'yes' if opt.random_scale else 'no'} (association: {assoc})"),
            (
                "Observations",
                f"{d.n_obs}" + (f" ({d.n_dropped} dropped: missing values)" if d.n_dropped else ""),
            ),
            *_censoring_rows(d),
            ("Groups", f"{d.n_groups}"),
            ("Group size min/mean/max", f"{sizes.min()} / {sizes.mean():.1f} / {sizes.max()}"),
            ("Integration", res.model.plan.describe()),
            (
                "Converged",
                f"{'yes' if res.converged else 'NO'} ({fi.n_iter} iterations, "
                f"{fi.n_evals} evaluations, max |score| {fi.max_abs_score:.1e})",
            ),
            (
                "Covariance",
                "inverse observed information"
                if res.cov_type == "observed"
                else "robust (sandwich)",
            ),
            ("Log-likelihood", f"{res.llf:.4f}"),
            ("Deviance", f"{res.deviance:.4f}"),
            ("AIC", f"{res.aic:.4f}"),
            ("BIC", f"{res.bic:.4f}"),
        ]
        notes = []
        if not fi.hessian_pd:
            notes.append("The observed information is not positive definite: SEs unreliable.")
        notes += list(res.model.summary_notes)
        if not res.model.layout.mixwild_view:
            notes.append(
                "L is reported with a non-negative diagonal; z tests of its diagonal "
                "entries are on the boundary (use melsml.compare for mixture LR tests)."
            )
        elif opt.random_scale:
            notes.append(
                "sigma_omega is reported >= 0; its z test is on the boundary "
                "(use melsml.compare for the mixture LR test)."
            )
        return cls(
            info=info,
            params=res.tidy(alpha),
            random=res.random_params(alpha),
            alpha=alpha,
            notes=notes,
        )

    @classmethod
    def from_three_level(cls, res: ThreeLevelResults, alpha: float = 0.05) -> Summary:
        m, fi = res.model, res.fit_info
        d = m.design
        outer, inner = m.levels
        sizes = d.group_sizes
        per_outer = np.diff(m.outer_ptr)
        lay = m.layout
        info = [
            ("Outcome", d.outcome),
            ("Levels", f"{inner} in {outer}"),
            ("Mean function", d.formulas["formula"]),
            ("BS variance function", f"log var(u_{inner}) " + d.formulas["bs_formula"]),
            ("WS variance function", "log sigma_e^2 " + d.formulas["ws_formula"]),
            (f"{outer} effects", ", ".join(lay.outer_effects) + " (unstructured)"),
            (f"{inner} random scale", "yes" if lay.inner else "no"),
            (
                "Observations",
                f"{d.n_obs}" + (f" ({d.n_dropped} dropped: missing values)" if d.n_dropped else ""),
            ),
            (f"{outer} units", f"{m.n_outer}"),
            (
                f"{inner} units",
                f"{d.n_groups} (per {outer} min/mean/max {per_outer.min()} / "
                f"{per_outer.mean():.1f} / {per_outer.max()})",
            ),
            (f"{inner} size min/mean/max", f"{sizes.min()} / {sizes.mean():.1f} / {sizes.max()}"),
            ("Integration", m.describe_integration()),
            (
                "Converged",
                f"{'yes' if res.converged else 'NO'} ({fi.n_iter} iterations, "
                f"{fi.n_evals} evaluations, max |score| {fi.max_abs_score:.1e})",
            ),
            ("Log-likelihood", f"{res.llf:.4f}"),
            ("AIC", f"{res.aic:.4f}"),
            ("BIC", f"{res.bic:.4f}"),
        ]
        notes = [
            f"L({outer}) is the Cholesky factor of the covariance of the {outer} effects, "
            "reported with a non-negative diagonal; z tests of SDs are on the boundary "
            "(use melsml.compare for mixture LR tests)."
        ]
        if not fi.hessian_pd:
            notes.append("The observed information is not positive definite: SEs unreliable.")
        return cls(
            info=info,
            params=res.tidy(alpha),
            random=res.random_params(alpha),
            alpha=alpha,
            notes=notes,
            title="Three-level MELS model (maximum likelihood)",
            block_titles={
                outer: f"{outer}: Cholesky factor L of cov({', '.join(lay.outer_effects)})",
                inner: f"{inner}: random scale (v = tau_l*theta1 + sigma_omega*theta2)",
            },
        )

    def as_text(self) -> str:
        terms = list(self.params.index.get_level_values("term")) + list(self.random.index)
        nw = max(24, max(len(str(t)) for t in terms) + 2)
        width = _WIDTH + nw - 24
        lines = [
            self.title.center(width),
            "=" * width,
        ]
        key_w = max(len(k) for k, _ in self.info) + 2
        lines += [f"{k + ':':<{key_w}}{v}" for k, v in self.info]
        lo, hi = f"[{self.alpha / 2:.3f}", f"{1 - self.alpha / 2:.3f}]"
        header = f"{'':<{nw}}{'estimate':>10}{'std.err':>10}{'z':>9}{'P>|z|':>9}{lo:>12}{hi:>12}"
        titles = {**BLOCK_TITLES, **(self.block_titles or {})}
        for block in dict.fromkeys(self.params.index.get_level_values("block")):
            title = titles.get(block, block)
            tab = self.params.xs(block, level="block")
            if block == "random" and any(t.startswith("L(") for t in tab.index):
                title = "Cholesky factor L of cov(u, v) (location first; (u, v) = L theta)"
            lines += ["-" * width, title, header]
            for term, row in tab.iterrows():
                lines.append(
                    f"{term:<{nw}}{row.estimate:>10.5f}{row.std_error:>10.5f}{row.z:>9.3f}"
                    f"{row.p_value:>9.4f}{row.lower:>12.5f}{row.upper:>12.5f}"
                )
        lines += [
            "-" * width,
            "Random-effect parameters, natural scale (delta-method SEs; at mean covariates)",
            f"{'':<{nw}}{'estimate':>10}{'std.err':>10}{lo:>12}{hi:>12}",
        ]
        for name, row in self.random.iterrows():
            lines.append(
                f"{name:<{nw}}{row.estimate:>10.5f}{row.std_error:>10.5f}"
                f"{row.lower:>12.5f}{row.upper:>12.5f}"
            )
        lines.append("=" * width)
        lines += [f"Note: {n}" for n in self.notes]
        return "\n".join(lines)

    def as_html(self) -> str:
        info = "".join(
            f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in self.info
        )
        return (
            f"<table>{info}</table>"
            + self.params.to_html(float_format="%.5f")
            + self.random.to_html(float_format="%.5f")
        )

    def as_latex(self) -> str:
        """The summary as LaTeX tables (booktabs), without extra dependencies."""
        esc = {"_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "^": r"\^{}", "~": r"$\sim$"}

        def tex(s) -> str:
            return "".join(esc.get(ch, ch) for ch in str(s))

        def table(rows, header=None, align=None) -> str:
            ncol = len(rows[0]) if rows else len(header)
            align = align or "l" + "r" * (ncol - 1)
            lines = [f"\\begin{{tabular}}{{{align}}}", "\\toprule"]
            if header is not None:
                lines += [" & ".join(tex(h) for h in header) + " \\\\", "\\midrule"]
            lines += [" & ".join(tex(c) for c in row) + " \\\\" for row in rows]
            return "\n".join([*lines, "\\bottomrule", "\\end{tabular}"]) + "\n"

        def frame(df: pd.DataFrame, index) -> str:
            rows = [
                [name, *(f"{v:.5f}" for v in vals)]
                for name, vals in zip(index, df.to_numpy(), strict=True)
            ]
            return table(rows, ["", *df.columns])

        params_index = [f"{b}: {t}" for b, t in self.params.index]
        return "\n".join(
            [
                table([[k, v] for k, v in self.info], align="ll"),
                frame(self.params, params_index),
                frame(self.random, list(self.random.index)),
            ]
        )

    def __str__(self) -> str:
        return self.as_text()

    def __repr__(self) -> str:
        return self.as_text()

    def _repr_html_(self) -> str:
        return self.as_html()


def _censoring_rows(design) -> list[tuple[str, str]]:
    """The summary's line on censoring (none for an uncensored outcome)."""
    if design.censoring is None:
        return []
    lo, hi = censoring_counts(design)
    n = design.n_obs
    return [
        (
            "Censored",
            f"{lo} at or below the lower limit ({100 * lo / n:.1f}%), "
            f"{hi} at or above the upper limit ({100 * hi / n:.1f}%)",
        )
    ]


def _lr_pvalue(stat: float, df: int, boundary: bool) -> float:
    """p-value of a likelihood-ratio statistic; ``boundary`` uses the 50:50 mixture
    of chi-square(df - 1) and chi-square(df) (one variance tested on its boundary)."""
    stat = max(stat, 0.0)
    if not boundary:
        return float(stats.chi2.sf(stat, df))
    lower = (1.0 if stat <= 0 else 0.0) if df == 1 else float(stats.chi2.sf(stat, df - 1))
    return 0.5 * lower + 0.5 * float(stats.chi2.sf(stat, df))


_MIXWILD_AS_CHOLESKY = {
    ("random", "tau_l"): ("random", "L(omega,Intercept)"),
    ("random", "sigma_omega"): ("random", "L(omega,omega)"),
}


def _nesting_names(res: MELSResults, other: MELSResults) -> set:
    """Parameter names on a common footing with ``other``'s.

    MixWILD's tau_l and sigma_omega are the entries L(omega,Intercept) and
    L(omega,omega) of the Cholesky layout; and against a model without a BS
    function (random slopes), a random intercept with a constant BS variance
    is the one-effect case: L(Intercept,Intercept) = exp(alpha0 / 2)."""
    if hasattr(res.model, "nesting_names"):
        return res.model.nesting_names()
    index = res.params.index
    levels = getattr(res.model, "levels", None)
    if levels is not None:
        # a three-level model: its inner level's block is the two-level random block
        index = [("random" if b == levels[1] else b, t) for b, t in index]
    names = {_MIXWILD_AS_CHOLESKY.get(n, n) for n in index}
    structure, other_structure = (getattr(r.model, "structure", None) for r in (res, other))
    if (
        structure is not None
        and other_structure is not None
        and res.model.design.bs_names == ("Intercept",)
        and structure.bs
        and not other_structure.bs
    ):
        names = {
            ("random", "L(Intercept,Intercept)") if n == ("alpha", "Intercept") else n
            for n in names
        }
    return names


def _is_sd(name: tuple[str, str]) -> bool:
    """A parameter whose value 0 is a boundary (an SD or a Cholesky diagonal)."""
    block, term = name
    if block in ("beta", "alpha", "tau"):
        return False
    if term == "sigma_omega":
        return True
    inner = term[2:-1].split(",") if term.startswith("L(") else []
    return len(inner) == 2 and inner[0] == inner[1]


def _model_label(res: MELSResults) -> str:
    """A short description of a fitted model from its formulas and options."""
    if hasattr(res.model, "label"):
        return res.model.label()
    d = res.model.design
    f = d.formulas
    parts = [f["formula"]]
    levels = getattr(res.model, "levels", None)
    if levels is not None:
        lay = res.model.layout
        if f.get("bs_formula", "~ 1") != "~ 1":
            parts.append(f"BS {f['bs_formula']}")
        parts.append(f"WS {f['ws_formula']}")
        parts.append(f"{levels[1]} in {levels[0]} ({levels[0]}: {', '.join(lay.outer_effects)})")
        if not lay.inner:
            parts.append(f"no {levels[1]} random scale")
        return "; ".join(parts)
    opt = res.model.options
    if f.get("bs_formula", "~ 1") != "~ 1":
        parts.append(f"BS {f['bs_formula']}")
    if f.get("re_formula", "~ 1") != "~ 1":
        parts.append(f"RE {f['re_formula']}")
    parts.append(f"WS {f['ws_formula']}")
    if not opt.random_scale:
        parts.append("no random scale")
    else:
        if f.get("ws_re_formula", "~ 1") != "~ 1":
            parts.append(f"scale RE {f['ws_re_formula']}")
        if opt.association != "linear":
            parts.append(f"association {opt.association}")
    return "; ".join(parts)


def _default_names(results) -> list[str]:
    """Row labels from the models' formulas, numbered where two coincide."""
    labels = [_model_label(r) for r in results]
    if len(set(labels)) < len(labels):
        labels = [f"{i + 1}: {lab}" for i, lab in enumerate(labels)]
    return labels


def compare(
    *results: MELSResults | ThreeLevelResults, names: list[str] | None = None
) -> pd.DataFrame:
    """Compare fitted models: llf, AIC, BIC and likelihood-ratio tests.

    Models are listed in the order given.  Each model is tested against the
    previous one in the list when the two are nested (same observations and
    the smaller one's parameters a subset of the larger one's; a random
    intercept model with a constant BS variance counts as nested in a random
    slope model).  A test that adds one random effect with its covariances
    (the random scale, a random location slope or a random scale slope:
    df = k + 1 parameters, one of them a variance on its boundary 0) uses
    the chi-bar-square mixture of Self & Liang (1987) and Stram & Lee
    (1994), 50:50 of chi-square(k) and chi-square(k + 1); the ``test``
    column names the mixture.  With several added variances the plain
    chi-square(df) is used, which is conservative.  A three-level model is
    compared with the two-level model of its inner groups (the same
    observations): the added level's effects are the added parameters.

    Parameters
    ----------
    *results : MELSResults
    names : list of str, optional
        Row labels (default: each model's formulas and options, e.g.
        ``"y ~ prior; WS ~ prior; no random scale"``).

    Returns
    -------
    DataFrame with columns k, llf, deviance, aic, bic, lr_stat, df, p_value, test
    (against which model, and the reference distribution) and added (the
    parameters the larger model adds, as ``block[term]``).
    """
    if len(results) < 1:
        raise ValueError("compare() needs at least one fitted model")
    names = names or _default_names(results)
    if len(names) != len(results):
        raise ValueError(f"{len(names)} names for {len(results)} models")
    rows = []
    for i, res in enumerate(results):
        row = dict(
            model=names[i],
            k=res.k_params,
            llf=res.llf,
            deviance=res.deviance,
            aic=res.aic,
            bic=res.bic,
            lr_stat=np.nan,
            df=np.nan,
            p_value=np.nan,
            test="",
            added="",
        )
        if i > 0:
            prev = results[i - 1]
            small, big = (prev, res) if prev.k_params <= res.k_params else (res, prev)
            # the same observations (a three-level model sorts its rows by level)
            same_data = (
                small.nobs == big.nobs
                and small.model.design.outcome == big.model.design.outcome
                and np.array_equal(np.sort(small.model.design.y), np.sort(big.model.design.y))
            )
            small_names, big_names = _nesting_names(small, big), _nesting_names(big, small)
            nested = small_names <= big_names
            if not same_data:
                row["test"] = (
                    f"no LR test against {names[i - 1]}: fitted to different observations "
                    f"(nobs {prev.nobs} and {res.nobs})"
                    if prev.nobs != res.nobs
                    else f"no LR test against {names[i - 1]}: a different outcome"
                )
            elif nested and big.k_params > small.k_params:
                df = big.k_params - small.k_params
                stat = 2.0 * (big.llf - small.llf)
                n_boundary = sum(_is_sd(name) for name in big_names - small_names)
                boundary = n_boundary == 1
                kind = (
                    f"50:50 chi2 mixture of chi2({df - 1}) and chi2({df})"
                    if boundary
                    else "chi2 (conservative: several variances on their boundary)"
                    if n_boundary > 1
                    else "chi2"
                )
                # shown under the larger model's own names
                own = {_MIXWILD_AS_CHOLESKY.get(n, n): n for n in big.params.index}
                added = sorted("{}[{}]".format(*own.get(n, n)) for n in big_names - small_names)
                row.update(
                    lr_stat=stat,
                    df=df,
                    p_value=_lr_pvalue(stat, df, boundary),
                    test=f"vs {names[i - 1]}: {kind}",
                    added=", ".join(added),
                )
            else:
                row["test"] = f"not nested in {names[i - 1]}"
        rows.append(row)
    table = pd.DataFrame(rows).set_index("model")
    if len({r.nobs for r in results}) > 1 or len({r.model.design.outcome for r in results}) > 1:
        table.attrs["note"] = (
            "the models were fitted to different observations: their log-likelihoods, AIC "
            "and BIC are not comparable"
        )
    return table
