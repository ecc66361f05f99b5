"""Caterpillar plots, school mean-versus-variance scatter and rank-versus-rank plots.

Needs matplotlib (``pip install melsml[plots]``).  Each function returns the
matplotlib Figure; save it with ``fig.savefig("file.png")`` (or ``.pdf``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .exceptions import MELSInputError


def _plt():
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("melsml's plots need matplotlib: pip install 'melsml[plots]'") from exc
    return plt


def _check(effects: pd.DataFrame, columns) -> None:
    missing = [c for c in columns if c not in effects.columns]
    if missing:
        raise MELSInputError(
            f"the school table lacks column(s) {', '.join(missing)}; pass the output of "
            "res.school_effects() or melsml.valueadded.mixedlm_va()"
        )


def caterpillar(
    effects: pd.DataFrame,
    measure: str = "mean",
    *,
    ax=None,
    reference=None,
    title: str | None = None,
    ylabel: str | None = None,
):
    """Ranked school estimates with their intervals and the average line.

    Parameters
    ----------
    effects : DataFrame
        ``res.school_effects()`` (or a table with ``{measure}``,
        ``{measure}_lower``, ``{measure}_upper``).
    measure : {"mean", "variance"}
    ax : matplotlib Axes, optional
    reference : float, optional
        The average line; default ``effects.attrs["{measure}_reference"]``.
    """
    _check(effects, [measure, f"{measure}_lower", f"{measure}_upper"])
    plt = _plt()
    fig = ax.figure if ax is not None else plt.figure(figsize=(7, 4.5))
    ax = ax if ax is not None else fig.add_subplot()
    order = np.argsort(effects[measure].to_numpy(), kind="stable")
    est = effects[measure].to_numpy()[order]
    lo = effects[f"{measure}_lower"].to_numpy()[order]
    hi = effects[f"{measure}_upper"].to_numpy()[order]
    x = np.arange(1, len(est) + 1)
    ref = effects.attrs.get(f"{measure}_reference", None) if reference is None else reference
    sep = np.zeros(len(est), bool) if ref is None else (lo > ref) | (hi < ref)
    ax.vlines(x[~sep], lo[~sep], hi[~sep], color="0.7", lw=0.8)
    ax.vlines(x[sep], lo[sep], hi[sep], color="tab:blue", lw=0.8)
    ax.plot(x, est, "o", ms=2.0, color="black")
    if ref is not None:
        ax.axhline(ref, color="tab:red", lw=1.0, ls="--", label=f"average ({ref:.3g})")
        ax.legend(loc="upper left", frameon=False)
    ax.set_xlabel("school rank")
    ax.set_ylabel(ylabel or f"school {measure} of adjusted achievement")
    n_sep = int(sep.sum())
    default = f"School {measure}s: {n_sep} of {len(est)} separated from average"
    if measure.startswith("variance") and "variance_note" in effects.attrs:
        default = f"School {measure}s (sigma_omega = 0: not separate findings)"
    ax.set_title(title or default, fontsize=10)
    ax.set_xlim(0, len(est) + 1)
    fig.tight_layout()
    return fig


def rank_intervals(ranks: pd.DataFrame, measure: str = "mean", *, ax=None):
    """Each school's rank with its interval, schools in rank order.

    Parameters
    ----------
    ranks : DataFrame
        :func:`melsml.rankings.rank_intervals` (``{measure}_rank``,
        ``{measure}_rank_lower``, ``{measure}_rank_upper``).
    measure : {"mean", "variance"}
    ax : matplotlib Axes, optional
    """
    cols = [f"{measure}_rank", f"{measure}_rank_lower", f"{measure}_rank_upper"]
    _check(ranks, cols)
    plt = _plt()
    fig = ax.figure if ax is not None else plt.figure(figsize=(7, 4.5))
    ax = ax if ax is not None else fig.add_subplot()
    order = np.argsort(ranks[cols[0]].to_numpy(), kind="stable")
    rank, lo, hi = (ranks[c].to_numpy()[order] for c in cols)
    x = np.arange(1, len(rank) + 1)
    ax.vlines(x, lo, hi, color="0.6", lw=0.8)
    ax.plot(x, rank, "o", ms=2.0, color="black")
    ax.set_xlabel(f"school, by {measure} rank")
    ax.set_ylabel("rank (1 = best) with its interval")
    level = 100 * (1 - ranks.attrs.get("alpha", 0.05))
    title = f"School {measure} ranks with {level:.0f}% intervals"
    if measure == "variance" and "note" in ranks.attrs:
        title += " (sigma_omega = 0: not separate findings)"
    ax.set_title(title, fontsize=10)
    ax.set_xlim(0, len(rank) + 1)
    fig.tight_layout()
    return fig


def power_curve(result: pd.DataFrame, *, ax=None):
    """Power against the number of schools, one line per number of students.

    Parameters
    ----------
    result : DataFrame
        :func:`melsml.power.power`.
    ax : matplotlib Axes, optional
    """
    _check(result, ["n_schools", "n_students", "power", "power_se"])
    plt = _plt()
    fig = ax.figure if ax is not None else plt.figure(figsize=(6, 4.5))
    ax = ax if ax is not None else fig.add_subplot()
    for ns, grp in result.sort_values("n_schools").groupby("n_students"):
        ax.errorbar(grp["n_schools"], grp["power"], yerr=2 * grp["power_se"], marker="o",
                    ms=3, capsize=2, label=f"{ns} students per school")  # fmt: skip
    ax.axhline(0.8, color="0.6", lw=0.8, ls="--")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("schools")
    ax.set_ylabel("power (+-2 Monte Carlo SE)")
    test = result.attrs.get("test", "")
    ax.set_title(f"Power of the test of {test} at {result.attrs.get('alpha', 0.05):g}",
                 fontsize=10)  # fmt: skip
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


def caterpillar_pair(effects: pd.DataFrame):
    """The article's figure: caterpillars of school means (left) and variances (right)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    caterpillar(effects, "mean", ax=axes[0])
    caterpillar(effects, "variance", ax=axes[1])
    fig.tight_layout()
    return fig


def mean_variance_scatter(effects: pd.DataFrame, *, ax=None):
    """School means against school variances, with the averages as reference lines."""
    _check(effects, ["mean", "variance"])
    plt = _plt()
    fig = ax.figure if ax is not None else plt.figure(figsize=(6, 5))
    ax = ax if ax is not None else fig.add_subplot()
    ax.scatter(
        effects["mean"], effects["variance"], s=10, alpha=0.7, color="tab:blue", edgecolor="none"
    )
    ax.axvline(effects.attrs.get("mean_reference", 0.0), color="0.4", lw=0.8, ls="--")
    if "variance_reference" in effects.attrs:
        ax.axhline(effects.attrs["variance_reference"], color="0.4", lw=0.8, ls="--")
    r = np.corrcoef(effects["mean"], effects["variance"])[0, 1]
    ax.set_xlabel("school mean of adjusted achievement")
    ax.set_ylabel("school variance of adjusted achievement")
    ax.set_title(f"School means against school variances (r = {r:.2f})", fontsize=10)
    fig.tight_layout()
    return fig


def outcome_scatter(effects: pd.DataFrame, measure: str, outcomes: tuple[str, str], *, ax=None):
    """One school measure under two outcomes (e.g. the school variances of
    English and maths from a model of several outcomes), with each school's
    intervals as error bars."""
    a, b = (f"{measure}[{o}]" for o in outcomes)
    _check(effects, [a, b, f"{a}_lower", f"{a}_upper", f"{b}_lower", f"{b}_upper"])
    plt = _plt()
    fig = ax.figure if ax is not None else plt.figure(figsize=(5.5, 5.5))
    ax = ax if ax is not None else fig.add_subplot()
    x, y = effects[a], effects[b]
    ax.errorbar(
        x, y,
        xerr=[x - effects[f"{a}_lower"], effects[f"{a}_upper"] - x],
        yerr=[y - effects[f"{b}_lower"], effects[f"{b}_upper"] - y],
        fmt="o", ms=3, color="tab:blue", ecolor="0.8", elinewidth=0.6,
    )  # fmt: skip
    r = np.corrcoef(x, y)[0, 1]
    ax.set_xlabel(f"school {measure}: {outcomes[0]}")
    ax.set_ylabel(f"school {measure}: {outcomes[1]}")
    ax.set_title(f"School {measure}s of {outcomes[0]} and {outcomes[1]} (r = {r:.2f})", fontsize=10)
    fig.tight_layout()
    return fig


def rank_scatter(
    a: pd.DataFrame,
    b: pd.DataFrame,
    measure: str = "mean",
    *,
    labels=("model A", "model B"),
    ax=None,
):
    """Ranks of the schools on one measure under two models (or methods)."""
    col = f"{measure}_rank"
    _check(a, [col])
    _check(b, [col])
    joined = pd.concat([a[col].rename("a"), b[col].rename("b")], axis=1, join="inner")
    if joined.empty:
        raise MELSInputError("the two school tables have no school in common")
    plt = _plt()
    fig = ax.figure if ax is not None else plt.figure(figsize=(5.5, 5.5))
    ax = ax if ax is not None else fig.add_subplot()
    ax.scatter(joined["a"], joined["b"], s=8, alpha=0.7, edgecolor="none")
    n = len(joined)
    ax.plot([1, n], [1, n], color="tab:red", lw=0.8, ls="--")
    rho = joined.corr(method="spearman").iloc[0, 1]
    best = "highest" if not measure.startswith("variance") else "lowest"
    ax.set_xlabel(f"rank of school {measure} (1 = {best}): {labels[0]}")
    ax.set_ylabel(f"rank of school {measure} (1 = {best}): {labels[1]}")
    ax.set_title(f"School {measure} ranks (Spearman {rho:.3f})", fontsize=10)
    ax.set_aspect("equal")
    fig.tight_layout()
    return fig


def variance_function(
    res,
    term: str,
    *,
    values=None,
    schools=None,
    n_schools: int = 6,
    ax=None,
    title: str | None = None,
):
    """Schools' variance of adjusted achievement against a covariate, beside the
    line of a school with no random scale effects.

    Meant for a random scale slope (``ws_re_formula="~ 1 + term"``): each
    school's line is the posterior mean of exp(w(x)'tau + h(x)'v_j) at each
    value x of ``term`` (other terms at their means), from
    ``res.school_effects(at=...)``.

    Parameters
    ----------
    res : MELSResults
    term : str
        A term of the WS function or of the random scale effects.
    values : array-like, optional
        Values of ``term``; default 25 points over its 2nd to 98th percentiles.
    schools : list, optional
        School identifiers to draw; default ``n_schools`` spread over the range
        of the schools' slopes of log variance on ``term``.
    ax : matplotlib Axes, optional
    """
    d = res.model.design
    names = list(d.ws_names) + list(d.scale_names)
    if term not in names or term == "Intercept":
        raise MELSInputError(
            f"term {term!r} is not a term of the WS function or of the random scale effects"
        )
    if values is None:
        col = (d.x_ws[:, list(d.ws_names).index(term)] if term in d.ws_names
               else d.x_scale[:, list(d.scale_names).index(term)])  # fmt: skip
        values = np.linspace(*np.percentile(col, [2, 98]), 25)
    values = np.asarray(values, dtype=float)
    eff = res.school_effects(at={term: values})
    cols = [f"variance[{term}={v:g}]" for v in values]
    curves = eff[cols].to_numpy()
    refs = np.array([eff.attrs["at_references"][c] for c in cols])
    if schools is None:
        slope = np.polyfit(values, np.log(curves).T, 1)[0]
        order = np.argsort(slope)
        pick = order[np.linspace(0, len(order) - 1, min(n_schools, len(order))).astype(int)]
        schools = list(eff.index[pick])
    unknown = [s for s in schools if s not in eff.index]
    if unknown:
        raise MELSInputError(f"unknown school(s): {', '.join(map(str, unknown))}")
    plt = _plt()
    fig = ax.figure if ax is not None else plt.figure(figsize=(7, 4.5))
    ax = ax if ax is not None else fig.add_subplot()
    for s in schools:
        ax.plot(values, eff.loc[s, cols].to_numpy(dtype=float), lw=1.2, label=f"school {s}")
    ax.plot(values, refs, color="black", lw=2.5, ls="--", label="school with v = 0")
    ax.set_xlabel(term)
    ax.set_ylabel("variance of adjusted achievement")
    ax.set_yscale("log")
    ax.legend(fontsize=8, ncol=2)
    ax.set_title(title or f"School variances against {term}")
    fig.tight_layout()
    return fig
