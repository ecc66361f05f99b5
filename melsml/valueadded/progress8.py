"""Progress 8: England's secondary school progress measure (from 2016).

Follows the Department for Education's *Secondary accountability measures:
guide for maintained secondary schools, academies and free schools* (February
2020 edition), which defines the measure:

* each pupil's **estimated Attainment 8** is the national mean Attainment 8
  score of the pupils in the same key stage 2 **prior-attainment group**
  (computed here from the data, or taken from a table the user supplies, such
  as the DfE's published national estimates);
* a pupil's **Progress 8 score** is (Attainment 8 - estimated Attainment 8) /
  10, the ten slots of Attainment 8 (English and maths double weighted, three
  EBacc and three open slots); the element scores divide by the element's
  slots: English 2, maths 2, EBacc 3, open 3;
* pupils without key stage 2 prior attainment are in the school's cohort (and
  its Attainment 8 average) but not in its Progress 8 score;
* from 2018, **extremely negative scores** are limited: a pupil's score counts
  in the school average as at least the mean of the pupil's prior-attainment
  group less 3 standard deviations of the group's scores (national figures);
  the limit applies to the overall and the element scores;
* the school's Progress 8 score is the mean of its pupils' (limited) scores,
  with the 95% confidence interval score +/- 1.96 sigma / sqrt(n): sigma the
  national standard deviation of the pupil scores, n the school's pupils in
  the measure.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from ..exceptions import MELSInputError

#: Attainment 8's slots per element: English and maths are double weighted
ELEMENT_SLOTS = {"english": 2, "maths": 2, "ebacc": 3, "open": 3}
#: slots of Attainment 8 (a pupil's Progress 8 score is per slot)
A8_SLOTS = 10
#: the largest point score of one slot (grade 9)
MAX_SLOT_POINTS = 9.0
#: the limit on extremely negative scores (from 2018): standard deviations below the mean
EXTREME_SD = 3.0


class Progress8InputError(MELSInputError):
    """A pupil record Progress 8 cannot use (names the pupil and the value)."""


@dataclass(frozen=True)
class Progress8Result:
    """Pupil- and school-level Progress 8 results.

    Attributes
    ----------
    schools : DataFrame
        One row per school (see :func:`progress8`).
    pupils : DataFrame
        One row per pupil: the estimate, the unadjusted and the counted
        (limited) score of each measure, and whether the limit applied.
    estimates : DataFrame
        Per prior-attainment group: the estimated Attainment 8 (and element
        estimates), the group's pupils and the limits on negative scores.
    national_sd : dict
        The standard deviation of the counted pupil scores of each measure
        (the sigma of the confidence intervals).
    """

    schools: pd.DataFrame
    pupils: pd.DataFrame
    estimates: pd.DataFrame
    national_sd: dict


def _show(value) -> str:
    """A record's value as the user wrote it: numbers plainly, text quoted."""
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return f"{float(value):g}"
    return repr(value)


def _numeric(data: pd.DataFrame, col: str, pupil_ids, upper: float, what: str) -> np.ndarray:
    """A column of point scores, or an error naming the first bad pupil and value."""
    raw = data[col]
    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=float)
    bad = np.isnan(values) & raw.notna().to_numpy()
    bad |= ~np.isnan(values) & ((values < 0) | (values > upper) | ~np.isfinite(values))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise Progress8InputError(
            f"pupil {pupil_ids[i]!r}: {what} {_show(raw.iloc[i])} (column {col!r}) is not a "
            f"point score between 0 and {upper:g}"
        )
    missing = np.isnan(values)
    if missing.any():
        i = int(np.flatnonzero(missing)[0])
        raise Progress8InputError(
            f"pupil {pupil_ids[i]!r}: no {what} (column {col!r}); a pupil with no "
            "qualifications scores 0"
        )
    return values


def _read_estimates(estimates, measures: list[str]) -> pd.DataFrame:
    """A user's table of estimates: indexed by prior-attainment group, a column per
    measure ('a8' and the elements used), optionally 'limit_<measure>' columns."""
    if not isinstance(estimates, (pd.DataFrame, pd.Series)):
        raise MELSInputError("estimates must be a DataFrame (or Series) indexed by prior group")
    table = estimates.to_frame("a8") if isinstance(estimates, pd.Series) else estimates.copy()
    lacking = [m for m in measures if m not in table.columns]
    if lacking:
        raise MELSInputError(
            f"the estimates table lacks column(s) {', '.join(lacking)} (one per measure, "
            "indexed by prior-attainment group)"
        )
    if table.index.has_duplicates:
        dup = table.index[table.index.duplicated()][0]
        raise MELSInputError(f"the estimates table lists prior group {dup!r} more than once")
    return table


def progress8(
    pupils: pd.DataFrame,
    a8: str = "a8",
    prior_group: str = "ks2_group",
    school: str = "school",
    *,
    pupil: str | None = None,
    elements: dict[str, str] | None = None,
    estimates: pd.DataFrame | pd.Series | None = None,
    limit_negative: bool = True,
    national_sd: dict[str, float] | float | None = None,
    level: float = 0.95,
    return_pupils: bool = False,
) -> pd.DataFrame | Progress8Result:
    """Progress 8 and its confidence interval for every school.

    Parameters
    ----------
    pupils : DataFrame
        One row per pupil in the schools' key stage 4 cohorts.
    a8 : str
        Column of Attainment 8 scores (0-90).
    prior_group : str
        Column of key stage 2 prior-attainment groups (any labels, e.g. the
        DfE's KS2 average point score bands); missing: the pupil has no key
        stage 2 results and is left out of Progress 8 (not of the cohort).
    school : str
        Column of school identifiers.
    pupil : str, optional
        Column of pupil identifiers (named in errors; default the row labels).
    elements : dict, optional
        Element columns, e.g. ``{"english": "a8_eng", "maths": "a8_mat",
        "ebacc": "a8_ebacc", "open": "a8_open"}`` (points with English and maths
        double weighted): adds each element's Progress 8 score.  The elements
        of a pupil must add up to the pupil's Attainment 8.
    estimates : DataFrame or Series, optional
        Estimated Attainment 8 per prior-attainment group (indexed by group;
        a column ``a8`` and one per element used), e.g. the DfE's published
        national estimates; optional ``limit_<measure>`` columns give the
        limits on negative scores.  Default: national means from the data.
    limit_negative : bool
        Apply the 2018 limit on extremely negative pupil scores (default).
    national_sd : float or dict, optional
        The national standard deviation of pupil scores for the confidence
        intervals (a dict: per measure, ``p8`` and the elements).  Default:
        from the data's counted scores.
    level : float
        Confidence level of the intervals (0.95: +/- 1.96 sigma / sqrt(n)).
    return_pupils : bool
        Return a :class:`Progress8Result` with the pupil and estimate tables.

    Returns
    -------
    DataFrame or Progress8Result
        One row per school: ``cohort`` (pupils), ``n`` (pupils in Progress 8),
        ``coverage`` (%), ``a8_mean`` (cohort average Attainment 8), ``p8``,
        ``p8_sd`` (sigma / sqrt(n)), ``p8_lower``, ``p8_upper``, ``p8_rank``
        (1 = highest), ``p8_separated`` (the interval excludes 0),
        ``n_limited`` (pupils whose score was limited), and for each element
        ``p8_<element>`` with its interval.
    """
    if not isinstance(pupils, pd.DataFrame):
        raise MELSInputError("progress8() needs a pandas DataFrame of pupil records")
    elements = dict(elements or {})
    unknown = [e for e in elements if e not in ELEMENT_SLOTS]
    if unknown:
        raise MELSInputError(
            f"unknown Attainment 8 element(s) {', '.join(unknown)}; known: "
            + ", ".join(ELEMENT_SLOTS)
        )
    needed = [a8, prior_group, school, *elements.values()] + ([pupil] if pupil else [])
    missing = [c for c in needed if c not in pupils.columns]
    if missing:
        raise MELSInputError(f"pupil records lack column(s): {', '.join(missing)}")
    if not 0.0 < level < 1.0:
        raise MELSInputError(f"level must lie strictly between 0 and 1, got {level!r}")
    ids = pupils[pupil].tolist() if pupil else pupils.index.tolist()
    if pupil and pupils[pupil].duplicated().any():
        dup = pupils.loc[pupils[pupil].duplicated(), pupil].iloc[0]
        raise Progress8InputError(f"pupil {dup!r} appears more than once")
    if pupils[school].isna().any():
        i = int(np.flatnonzero(pupils[school].isna().to_numpy())[0])
        raise Progress8InputError(f"pupil {ids[i]!r} has no school (column {school!r})")

    scores = {"p8": _numeric(pupils, a8, ids, A8_SLOTS * MAX_SLOT_POINTS, "Attainment 8")}
    slots = {"p8": A8_SLOTS}
    for name, col in elements.items():
        upper = ELEMENT_SLOTS[name] * MAX_SLOT_POINTS
        scores[f"p8_{name}"] = _numeric(pupils, col, ids, upper, f"{name} element")
        slots[f"p8_{name}"] = ELEMENT_SLOTS[name]
    if len(elements) == len(ELEMENT_SLOTS):
        total = sum(scores[f"p8_{e}"] for e in ELEMENT_SLOTS)
        off = np.abs(total - scores["p8"]) > 1e-6 * np.maximum(1.0, scores["p8"])
        if off.any():
            i = int(np.flatnonzero(off)[0])
            raise Progress8InputError(
                f"pupil {ids[i]!r}: the elements add up to {total[i]:g}, not the "
                f"Attainment 8 score {scores['p8'][i]:g}"
            )
    measures = list(scores)
    a8_name = {"p8": "a8", **{f"p8_{e}": e for e in elements}}

    group = pupils[prior_group]
    included = group.notna().to_numpy()
    if not included.any():
        raise MELSInputError(f"no pupil has a prior-attainment group (column {prior_group!r})")
    groups = group[included]

    # estimated Attainment 8 per prior-attainment group
    if estimates is None:
        by_group = groups.to_numpy()
        table = pd.DataFrame(
            {a8_name[m]: pd.Series(scores[m][included]).groupby(by_group).mean() for m in measures}
        )
        source = "national means from the data"
    else:
        table = _read_estimates(estimates, [a8_name[m] for m in measures])
        unmatched = ~groups.isin(table.index).to_numpy()
        if unmatched.any():
            i = int(np.flatnonzero(included)[np.flatnonzero(unmatched)[0]])
            raise Progress8InputError(
                f"pupil {ids[i]!r}: prior-attainment group {_show(group.iloc[i])} is not in "
                "the estimates table"
            )
        source = "the supplied estimates"
    table.index.name = "prior_group"

    out = pd.DataFrame({"pupil": ids, "school": pupils[school].to_numpy(), "included": included})
    out["prior_group"] = group.to_numpy()
    for m in measures:
        est = np.full(len(pupils), np.nan)
        est[included] = table[a8_name[m]].reindex(groups.to_numpy()).to_numpy(dtype=float)
        raw = np.where(included, (scores[m] - est) / slots[m], np.nan)
        out[f"{a8_name[m]}_points"] = scores[m]
        out[f"{a8_name[m]}_estimate"] = est
        out[f"{m}_unadjusted"] = raw
        counted = raw.copy()
        if limit_negative:
            limit_col = f"limit_{m}"
            if limit_col in table.columns:
                limits = table[limit_col]
            else:
                by_group = pd.Series(raw[included]).groupby(groups.to_numpy())
                limits = by_group.mean() - EXTREME_SD * by_group.std(ddof=0)
                table[limit_col] = limits
            low = np.full(len(pupils), -np.inf)
            low[included] = limits.reindex(groups.to_numpy()).fillna(-np.inf).to_numpy()
            counted = np.where(included, np.maximum(raw, low), np.nan)
            out[f"{m}_limited"] = included & (raw < low)
        out[m] = counted
    table["pupils"] = groups.value_counts().reindex(table.index).fillna(0).astype(int)

    # national sigma of the counted scores, per measure
    if national_sd is None:
        sd = {m: float(np.std(out.loc[included, m], ddof=0)) for m in measures}
    elif isinstance(national_sd, dict):
        lacking = [m for m in measures if m not in national_sd]
        if lacking:
            raise MELSInputError(f"national_sd lacks measure(s): {', '.join(lacking)}")
        sd = {m: float(national_sd[m]) for m in measures}
    else:
        sd = {"p8": float(national_sd)}
        if len(measures) > 1:
            raise MELSInputError(
                "with element scores, national_sd must be a dict with one value per measure"
            )
    z = float(stats.norm.ppf(0.5 + level / 2.0))

    grouped = out.groupby("school", sort=True)
    schools = pd.DataFrame(
        {
            "cohort": grouped.size(),
            "n": grouped["included"].sum().astype(int),
            "a8_mean": grouped["a8_points"].mean(),
        }
    )
    schools["coverage"] = 100.0 * schools["n"] / schools["cohort"]
    for m in measures:
        mean = grouped[m].mean()  # over the pupils in the measure (NaN skipped)
        half = sd[m] / np.sqrt(schools["n"].where(schools["n"] > 0))
        schools[m] = mean
        schools[f"{m}_sd"] = half
        schools[f"{m}_lower"] = mean - z * half
        schools[f"{m}_upper"] = mean + z * half
        schools[f"{m}_rank"] = mean.rank(method="min", ascending=False)
        schools[f"{m}_separated"] = (schools[f"{m}_lower"] > 0) | (schools[f"{m}_upper"] < 0)
        if limit_negative:
            schools[f"n_limited{m[2:]}"] = grouped[f"{m}_limited"].sum().astype(int)
    schools.index.name = "school"
    schools.attrs.update(estimates=source, level=level, national_sd=sd)
    if not return_pupils:
        return schools
    return Progress8Result(schools=schools, pupils=out, estimates=table, national_sd=sd)
