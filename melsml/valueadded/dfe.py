"""The DfE 2003 KS3 to GCSE/GNVQ median-line value-added measure.

Implements the 2003 Secondary School Performance Tables technical annex:
points for GCSE, GCSE short course and GNVQ results; the capped score from
each pupil's best 16 records (best 8 GCSE equivalents); the KS3 input (average
of the English, mathematics and science test points over the results that are
not disregarded); the national median lines (Table A mainstream, Table B
special schools) or medians estimated from the data; pupil value added
(capped score minus the median for the pupil's KS3 score); school value added
(100 + the mean, one decimal place, half-up rounding); coverage (no value
published below 50%), the average number of GCSE equivalents taken, and the
stability indicator.  Arithmetic is exact (fractions) so that the published
half-up rounding is never disturbed by binary floating point.

Input: one row per qualification result (pupil-level columns repeated), and a
row with an empty qualification for a pupil with no results.  Columns (names
configurable): ``pupil``, ``school``, ``ks3_english``, ``ks3_maths``,
``ks3_science`` (levels ``3``-``8``, ``E``, ``2`` (compensatory, maths and
science), ``N``, ``B``; disregarded: ``D`` disapplied, ``A`` absent, ``M`` mixed
tier (maths and science), ``L`` lost script; empty: no matched result),
``qualification`` (``gcse``, ``gcse_short``, ``gnvq_full_intermediate``,
``gnvq_full_foundation``, ``gnvq_part_one_intermediate``,
``gnvq_part_one_foundation``, ``gnvq_language_unit_intermediate``,
``gnvq_language_unit_foundation``), ``grade`` (``A*``-``G``, ``U``, ``X``;
``distinction``/``merit``/``pass`` or ``D``/``M``/``P`` for GNVQs), and
optionally ``special`` (the pupil's school is a special school: Table B) and
``same_school`` (took KS3 and GCSE/GNVQ in this school: stability).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, localcontext
from fractions import Fraction
from typing import Literal

import numpy as np
import pandas as pd

from ..exceptions import MELSInputError
from . import tables as T

MedianLine = Literal["A", "B", "auto", "data"]
_GNVQ_GRADES = {
    "D": "distinction",
    "M": "merit",
    "P": "pass",
    "DISTINCTION": "distinction",
    "MERIT": "merit",
    "PASS": "pass",
}
_QUAL_ALIASES = {
    "gcse_short_course": "gcse_short",
    "gcse_(short_course)": "gcse_short",
    "short_course": "gcse_short",
    "gcse_full": "gcse",
}


class DfEInputError(MELSInputError):
    """A pupil record the annex cannot score (names the pupil and the value)."""


def round_half_up(value, ndigits: int = 1) -> float:
    """Round with the "normal" convention (halves away from zero), exactly.

    ``round_half_up(Fraction(403, 4)) == 100.8`` and ``round_half_up(8.15) == 8.2``
    (Python's ``round`` gives 8.1 for the float 8.15).
    """
    if isinstance(value, Fraction):
        with localcontext() as ctx:
            ctx.prec = 60
            dec = Decimal(value.numerator) / Decimal(value.denominator)
    else:
        dec = Decimal(repr(float(value)))
    return float(dec.quantize(Decimal(1).scaleb(-ndigits), rounding=ROUND_HALF_UP))


def _norm_qual(q: str) -> str:
    key = str(q).strip().lower().replace(" ", "_").replace("-", "_")
    return _QUAL_ALIASES.get(key, key)


def score_result(pupil, qualification: str, grade: str) -> tuple[int, Fraction, bool]:
    """(records, points per record, graded A*-G or a GNVQ pass) of one result."""
    qual = _norm_qual(qualification)
    g = str(grade).strip().upper()
    if qual not in T.RECORDS:
        raise DfEInputError(
            f"pupil {pupil!r}: unknown qualification {qualification!r}; known: "
            + ", ".join(T.RECORDS)
        )
    if qual in ("gcse", "gcse_short"):
        table = T.GCSE_POINTS if qual == "gcse" else T.GCSE_SHORT_POINTS
        if g not in table:
            raise DfEInputError(f"pupil {pupil!r}: unknown {qual} grade {grade!r}")
        points = table[g]
        passed = g not in ("U", "X")
    else:
        name = _GNVQ_GRADES.get(g)
        if name is None or name not in T.GNVQ_POINTS[qual]:
            allowed = ", ".join(T.GNVQ_POINTS[qual])
            raise DfEInputError(
                f"pupil {pupil!r}: grade {grade!r} does not exist for {qual} (allowed: {allowed})"
            )
        points = T.GNVQ_POINTS[qual][name]
        passed = True
    records = T.RECORDS[qual]
    return records, points / records, passed


def capped_point_score(record_points: list[Fraction]) -> Fraction:
    """Sum of the best 16 records (best 8 GCSE equivalents)."""
    return sum(sorted(record_points, reverse=True)[: T.CAP_RECORDS], Fraction(0))


def ks3_points(pupil, subject: str, outcome) -> int | None:
    """Points of one KS3 outcome, None if disregarded (or missing); errors name the pupil."""
    if outcome is None or (isinstance(outcome, float) and np.isnan(outcome)):
        return None
    code = str(outcome).strip().upper()
    if code.endswith(".0"):
        code = code[:-2]
    code = T.KS3_ALIASES.get(code, code)
    if code in T.KS3_DISREGARDED:
        if subject not in T.KS3_DISREGARDED[code]:
            raise DfEInputError(
                f"pupil {pupil!r}: KS3 {subject} outcome {outcome!r} does not exist for {subject}"
            )
        return None
    if code not in T.KS3_POINTS or T.KS3_POINTS[code][subject] is None:
        raise DfEInputError(
            f"pupil {pupil!r}: KS3 {subject} outcome {outcome!r} is not a KS3 level or code"
        )
    return T.KS3_POINTS[code][subject]


def ks3_input(pupil, outcomes: dict[str, object], has_a_to_g: bool) -> tuple[Fraction | None, str]:
    """The KS3 average point score and why the pupil is or is not included."""
    pts = {s: ks3_points(pupil, s, outcomes.get(s)) for s in T.KS3_SUBJECTS}
    valid = [p for p in pts.values() if p is not None]
    if valid:
        return Fraction(sum(valid), len(valid)), "included"
    codes = {
        s: str(outcomes.get(s)).strip().upper()
        for s in T.KS3_SUBJECTS
        if pts[s] is None and not pd.isna(outcomes.get(s))
    }
    codes = {s: T.KS3_ALIASES.get(c, c) for s, c in codes.items()}
    if not codes:
        return None, "excluded: no matched KS3 results"
    if len(codes) == 3 and "D" in codes.values():
        if has_a_to_g:
            return Fraction(0), "included: disapplied, input 0"
        return None, "excluded: disapplied without an A*-G result"
    return None, "excluded: all KS3 results disregarded"


def median_line_value(aps: Fraction, table) -> Fraction:
    """The national median capped score of a KS3 average point score."""
    for upper, median in table:
        if aps <= upper:
            return median
    raise AssertionError("unreachable: the last band is open")  # pragma: no cover


def band_label(aps: Fraction, table) -> str:
    labels = T.BAND_LABELS_A if table is T.MEDIAN_TABLE_A else T.BAND_LABELS_B
    for (upper, _), label in zip(table, labels, strict=True):
        if aps <= upper:
            return label
    raise AssertionError("unreachable")  # pragma: no cover


@dataclass(frozen=True)
class DfEResult:
    """Pupil- and school-level results of the median-line method."""

    pupils: pd.DataFrame
    schools: pd.DataFrame
    median_line: str


def _pupil_table(data: pd.DataFrame, cols: dict[str, str]) -> pd.DataFrame:
    rows = []
    qual_col, grade_col = cols["qualification"], cols["grade"]
    for pupil, grp in data.groupby(cols["pupil"], sort=False):
        first = grp.iloc[0]
        school = first[cols["school"]]
        if grp[cols["school"]].nunique() > 1:
            raise DfEInputError(f"pupil {pupil!r} appears in more than one school")
        records: list[Fraction] = []
        equivalents = Fraction(0)
        a_to_g = False
        for q, g in zip(grp[qual_col], grp[grade_col], strict=True):
            if pd.isna(q) or str(q).strip() == "":
                continue
            n_rec, per, passed = score_result(pupil, q, g)
            records += [per] * n_rec
            equivalents += Fraction(n_rec, 2)
            a_to_g |= passed
        outcomes = {s: first[cols[f"ks3_{s}"]] for s in T.KS3_SUBJECTS}
        aps, status = ks3_input(pupil, outcomes, a_to_g)
        rows.append(
            {
                "pupil": pupil,
                "school": school,
                "ks3_aps": aps,
                "status": status,
                "included": status.startswith("included"),
                "capped_score": capped_point_score(records),
                "n_equivalents": equivalents,
                "special": bool(first[cols["special"]]) if cols["special"] in grp else False,
                "same_school": (
                    bool(first[cols["same_school"]]) if cols["same_school"] in grp else None
                ),
            }
        )
    return pd.DataFrame(rows)


def dfe_value_added(
    data: pd.DataFrame,
    *,
    median_line: MedianLine = "auto",
    pupil: str = "pupil",
    school: str = "school",
    ks3_english: str = "ks3_english",
    ks3_maths: str = "ks3_maths",
    ks3_science: str = "ks3_science",
    qualification: str = "qualification",
    grade: str = "grade",
    special: str = "special",
    same_school: str = "same_school",
) -> DfEResult:
    """KS3 to GCSE/GNVQ value added by the DfE 2003 median-line method.

    Parameters
    ----------
    data : DataFrame
        One row per qualification result (see the module docstring); every
        pupil in it is in the school's cohort (the denominator of coverage).
    median_line : {"auto", "A", "B", "data"}
        Table A (mainstream), Table B (special schools), "auto" (Table B for
        pupils whose ``special`` column is true, else A), or "data": the
        median capped score of all included pupils with the same KS3 average
        point score in ``data``.
    pupil, school, ks3_english, ks3_maths, ks3_science, qualification, grade,
    special, same_school : str
        Column names.

    Returns
    -------
    DfEResult
        ``pupils``: KS3 APS, band, capped score, median, value added, status
        (why included or excluded), GCSE equivalents taken.  ``schools``:
        cohort, included, coverage (%), mean pupil VA, VA score (100 + mean),
        published VA (one decimal, half-up; NaN below 50% coverage), average
        capped point score (over the cohort), average GCSE equivalents taken
        (over the included, one decimal), stability (%).
    """
    if median_line not in ("A", "B", "auto", "data"):
        raise MELSInputError(
            f"unknown median_line {median_line!r}; allowed values: 'A', 'B', 'auto', 'data'"
        )
    cols = dict(
        pupil=pupil,
        school=school,
        ks3_english=ks3_english,
        ks3_maths=ks3_maths,
        ks3_science=ks3_science,
        qualification=qualification,
        grade=grade,
        special=special,
        same_school=same_school,
    )
    required = [c for k, c in cols.items() if k not in ("special", "same_school")]
    missing = [c for c in required if c not in data.columns]
    if missing:
        raise MELSInputError(f"pupil records lack column(s): {', '.join(missing)}")
    pupils = _pupil_table(data, cols)
    inc = pupils["included"]
    if median_line == "data":
        aps = pupils.loc[inc, "ks3_aps"]
        medians = {
            k: _exact_median(list(g)) for k, g in pupils.loc[inc, "capped_score"].groupby(aps)
        }
        pupils["median"] = [
            medians[a] if ok else None for a, ok in zip(pupils["ks3_aps"], inc, strict=True)
        ]
        pupils["band"] = [
            str(a) if ok else None for a, ok in zip(pupils["ks3_aps"], inc, strict=True)
        ]
    else:

        def table_of(is_special):
            if median_line == "A" or (median_line == "auto" and not is_special):
                return T.MEDIAN_TABLE_A
            return T.MEDIAN_TABLE_B

        pupils["median"] = [
            median_line_value(a, table_of(s)) if ok else None
            for a, s, ok in zip(pupils["ks3_aps"], pupils["special"], inc, strict=True)
        ]
        pupils["band"] = [
            band_label(a, table_of(s)) if ok else None
            for a, s, ok in zip(pupils["ks3_aps"], pupils["special"], inc, strict=True)
        ]
    pupils["value_added"] = [
        c - m if ok else None
        for c, m, ok in zip(pupils["capped_score"], pupils["median"], inc, strict=True)
    ]
    schools = pupils.groupby("school", sort=True).apply(_school_row, include_groups=False)
    for c in ("ks3_aps", "capped_score", "median", "value_added", "n_equivalents"):
        pupils[c] = [float(v) if v is not None else np.nan for v in pupils[c]]
    line = {
        "A": "Table A (mainstream)",
        "B": "Table B (special)",
        "auto": "Table A, or Table B for special schools",
        "data": "medians from the data",
    }
    return DfEResult(pupils=pupils, schools=schools, median_line=line[median_line])


def _exact_median(values: list[Fraction]) -> Fraction:
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def _school_row(g: pd.DataFrame) -> pd.Series:
    cohort = len(g)
    inc = g[g["included"]]
    n_inc = len(inc)
    coverage = Fraction(100 * n_inc, cohort)
    if n_inc:
        mean_va = sum(inc["value_added"], Fraction(0)) / n_inc
        score = 100 + mean_va
        equiv = sum(inc["n_equivalents"], Fraction(0)) / n_inc
    else:
        mean_va = score = equiv = None
    stable = inc["same_school"].dropna()
    stability = Fraction(100 * int(stable.sum()), n_inc) if n_inc and len(stable) == n_inc else None
    return pd.Series(
        {
            "cohort": cohort,
            "included": n_inc,
            "coverage": float(coverage),
            "coverage_shown": round_half_up(coverage, 0),
            "mean_value_added": float(mean_va) if mean_va is not None else np.nan,
            "va_score": float(score) if score is not None else np.nan,
            "va_published": (
                round_half_up(score, 1) if score is not None and coverage >= 50 else np.nan
            ),
            "suppressed": bool(coverage < 50),
            "avg_capped_score": float(sum(g["capped_score"], Fraction(0)) / cohort),
            "avg_equivalents": round_half_up(equiv, 1) if equiv is not None else np.nan,
            "stability": round_half_up(stability, 0) if stability is not None else np.nan,
        }
    )
