"""The DfE 2003 median-line method: every worked example, table row and exclusion rule."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pandas as pd
import pytest

from melsml.valueadded import dfe_value_added, round_half_up
from melsml.valueadded import tables as T
from melsml.valueadded.dfe import (
    DfEInputError,
    capped_point_score,
    ks3_input,
    median_line_value,
    score_result,
)


def rows(pupil, school, ks3, results, **extra):
    """Long-format records of one pupil: ks3 = (english, maths, science)."""
    base = dict(
        pupil=pupil,
        school=school,
        ks3_english=ks3[0],
        ks3_maths=ks3[1],
        ks3_science=ks3[2],
        **extra,
    )
    if not results:
        return [dict(base, qualification=None, grade=None)]
    return [dict(base, qualification=q, grade=g) for q, g in results]


# ------------------------------------------------------------------ the annex's examples
def test_capped_score_worked_example_is_54_50():
    """3 Bs, 3 Cs, a short-course A* and a full intermediate GNVQ with distinction."""
    results = (
        [("gcse", "B")] * 3
        + [("gcse", "C")] * 3
        + [("gcse_short", "A*")]
        + [("gnvq_full_intermediate", "distinction")]
    )
    records = []
    for q, g in results:
        n, per, _ = score_result(1, q, g)
        records += [per] * n
    assert len(records) == 21
    assert sorted(records, reverse=True)[16:] == [Fraction(5, 2)] * 5  # five C records dropped
    assert capped_point_score(records) == Fraction(109, 2)  # 54.50


def test_ks3_average_worked_example_is_29():
    aps, status = ks3_input(1, {"english": "4", "maths": "4", "science": "5"}, True)
    assert aps == 29 and status == "included"


def test_school_b_worked_example():
    """School B: pupils A-D give +2, 0, -2, +3; total +3; VA +0.75, shown as 100.8."""
    # KS3 APS 29, 33, 33, 43 and capped scores 30, 36, 34, 56 from GCSE grades
    data = pd.DataFrame(
        rows("A", "B", ("5", "4", "4"), [("gcse", "C")] * 6)
        + rows("B", "B", ("5", "5", "5"), [("gcse", "B")] * 6)
        + rows("C", "B", ("5", "5", "5"), [("gcse", "B")] * 4 + [("gcse", "C")] * 2)
        + rows("D", "B", ("7", "7", "6"), [("gcse", "A*")] * 7)
    )
    res = dfe_value_added(data, median_line="A")
    p = res.pupils.set_index("pupil")
    assert p.loc[["A", "B", "C", "D"], "ks3_aps"].tolist() == [29, 33, 33, 43]
    assert p.loc[["A", "B", "C", "D"], "capped_score"].tolist() == [30, 36, 34, 56]
    assert p.loc[["A", "B", "C", "D"], "median"].tolist() == [28, 36, 36, 53]
    assert p.loc[["A", "B", "C", "D"], "value_added"].tolist() == [2, 0, -2, 3]
    school = res.schools.loc["B"]
    assert school["mean_value_added"] == 0.75
    assert school["va_score"] == 100.75
    assert school["va_published"] == 100.8


def test_half_up_rounding_not_bankers():
    assert round_half_up(Fraction(403, 4), 1) == 100.8
    assert round_half_up(8.15, 1) == 8.2  # round(8.15, 1) == 8.1 in Python
    assert round_half_up(Fraction(163, 20), 1) == 8.2
    assert round_half_up(Fraction(-3, 4), 1) == -0.8
    assert round_half_up(Fraction(201, 2), 0) == 101.0


def test_coverage_60_percent_and_suppression_below_50():
    included = [rows(i, "S", ("5", "5", "5"), [("gcse", "C")] * 8) for i in range(6)]
    excluded = [rows(10 + i, "S", (None, None, None), [("gcse", "C")]) for i in range(4)]
    data = pd.DataFrame([r for p in included + excluded for r in p])
    s = dfe_value_added(data).schools.loc["S"]
    assert s["cohort"] == 10 and s["included"] == 6
    assert s["coverage"] == 60.0 and s["coverage_shown"] == 60
    assert not s["suppressed"] and np.isfinite(s["va_published"])
    more = [rows(20 + i, "S", (None, None, None), []) for i in range(3)]
    data2 = pd.concat([data, pd.DataFrame([r for p in more for r in p])])
    s2 = dfe_value_added(data2).schools.loc["S"]
    assert s2["coverage"] == pytest.approx(600 / 13)
    assert s2["suppressed"] and np.isnan(s2["va_published"])
    assert np.isfinite(s2["va_score"])


def test_average_equivalents_example_is_8_15_shown_8_2():
    taken = [
        [("gcse", "C")] * 8,
        [("gcse", "C")] * 9,
        [("gcse", "C")] * 10,
        [("gcse", "C")] * 5 + [("gcse_short", "C")] * 2,
        [("gcse", "C")] * 6 + [("gcse_short", "C")] * 4,
        [("gcse", "C")] * 4 + [("gcse_short", "C")] + [("gnvq_full_foundation", "pass")],
        [("gnvq_full_intermediate", "pass")] * 2,
        [("gnvq_part_one_foundation", "merit")] + [("gnvq_full_foundation", "merit")] * 2,
        [("gcse", "C"), ("gcse_short", "C")] + [("gnvq_full_intermediate", "merit")] * 2,
        [("gcse_short", "D")] * 4
        + [("gnvq_part_one_intermediate", "pass"), ("gnvq_language_unit_foundation", "pass")],
    ]
    data = pd.DataFrame(
        [r for i, res in enumerate(taken) for r in rows(i, "S", ("5", "5", "5"), res)]
    )
    out = dfe_value_added(data)
    eq = out.pupils.set_index("pupil")["n_equivalents"].tolist()
    assert eq == [8, 9, 10, 6, 8, 8.5, 8, 10, 9.5, 4.5]
    assert out.schools.loc["S", "avg_equivalents"] == 8.2


def test_stability_70_percent():
    data = pd.DataFrame(
        [
            r
            for i in range(10)
            for r in rows(i, "S", ("5", "5", "5"), [("gcse", "C")], same_school=i < 7)
        ]
    )
    assert dfe_value_added(data).schools.loc["S", "stability"] == 70


# ------------------------------------------------------------------ every table row
@pytest.mark.parametrize("grade,points", list(T.GCSE_POINTS.items()))
def test_gcse_points(grade, points):
    n, per, passed = score_result(1, "gcse", grade)
    assert n == 2 and per * n == points
    n, per, _ = score_result(1, "GCSE short", grade.lower())
    assert n == 1 and per == points / 2
    assert passed == (grade not in ("U", "X"))


@pytest.mark.parametrize("qual,grades", list(T.GNVQ_POINTS.items()))
def test_gnvq_points_and_records(qual, grades):
    kind = qual.split("_")[1]
    expected_records = {"full": 8, "part": 4, "language": 1}[kind]
    for grade, points in grades.items():
        n, per, passed = score_result(1, qual, grade)
        assert n == expected_records and n * per == points and passed
        n2, per2, _ = score_result(1, qual, grade[0].upper())
        assert (n2, per2) == (n, per)


def test_gnvq_table_values():
    assert T.GNVQ_POINTS["gnvq_full_intermediate"] == {"distinction": 30, "merit": 24, "pass": 20}
    assert T.GNVQ_POINTS["gnvq_full_foundation"] == {"distinction": 16, "merit": 12, "pass": 6}
    assert T.GNVQ_POINTS["gnvq_part_one_intermediate"] == {
        "distinction": 15,
        "merit": 12,
        "pass": 10,
    }
    assert T.GNVQ_POINTS["gnvq_part_one_foundation"] == {"distinction": 8, "merit": 6, "pass": 3}
    assert T.GNVQ_POINTS["gnvq_language_unit_intermediate"] == {"pass": Fraction(7, 2)}
    assert T.GNVQ_POINTS["gnvq_language_unit_foundation"] == {"pass": 2}


@pytest.mark.parametrize(
    "code,eng,other",
    [
        ("E", 57, 57),
        ("8", 51, 51),
        ("7", 45, 45),
        ("6", 39, 39),
        ("5", 33, 33),
        ("4", 27, 27),
        ("3", 21, 21),
        ("N", 21, 15),
        ("B", 21, 15),
    ],
)
def test_ks3_points_rows(code, eng, other):
    aps, _ = ks3_input(1, {"english": code, "maths": None, "science": None}, True)
    assert aps == eng
    aps, _ = ks3_input(1, {"english": None, "maths": code, "science": code}, True)
    assert aps == other


def test_compensatory_2_is_maths_and_science_only():
    assert ks3_input(1, {"english": "5", "maths": "2", "science": "2"}, True)[0] == 21
    with pytest.raises(DfEInputError, match="pupil 7: KS3 english outcome '2'"):
        ks3_input(7, {"english": "2", "maths": "5", "science": "5"}, True)


TABLE_A_ROWS = [
    (0, 4),
    (15, 4),
    (18, 4),
    (19, 7),
    (21, 9),
    (23, 14),
    (24, 14),
    (25, 18),
    (27, 23),
    (29, 28),
    (30, 28),
    (31, 32),
    (33, 36),
    (35, 40),
    (36, 40),
    (37, 43),
    (39, 46),
    (41, 46 + 4),
    (42, 50),
    (43, 53),
    (45, 57),
    (47, 59.5),
    (48, 59.5),
    (49, 61),
    (51, 63),
    (57, 63),
]
TABLE_B_ROWS = [
    (0, 0),
    (18, 0),
    (19, 0),
    (21, 0),
    (23, 2),
    (24, 2),
    (25, 5),
    (27, 5),
    (29, 8),
    (30, 8),
    (31, 13),
    (57, 13),
]


@pytest.mark.parametrize("aps,median", TABLE_A_ROWS)
def test_table_a_bands(aps, median):
    assert median_line_value(Fraction(aps), T.MEDIAN_TABLE_A) == Fraction(median)


@pytest.mark.parametrize("aps,median", TABLE_B_ROWS)
def test_table_b_bands(aps, median):
    assert median_line_value(Fraction(aps), T.MEDIAN_TABLE_B) == Fraction(median)


def test_every_attainable_ks3_score_falls_in_a_listed_band():
    """Averages of 1-3 KS3 points: all fall on a value the annex's bands list."""
    import itertools

    pts = [15, 21, 27, 33, 39, 45, 51, 57]
    attainable = {
        Fraction(sum(c), k)
        for k in (1, 2, 3)
        for c in itertools.combinations_with_replacement(pts, k)
    }
    listed = (
        set(range(0, 19))
        | {19, 21, 23, 24, 25, 27, 29, 30, 31, 33, 35, 36, 37, 39, 41, 42, 43, 45, 47, 48, 49}
        | set(range(51, 58))
    )
    assert all(a.denominator == 1 and int(a) in listed for a in attainable)


# ------------------------------------------------------------------ exclusion rules
def test_all_disregarded_pupils_are_excluded():
    for ks3 in [("A", "A", "A"), ("L", "M", "A"), ("A", "L", "L")]:
        aps, status = ks3_input(
            1, dict(zip(("english", "maths", "science"), ks3, strict=True)), True
        )
        assert aps is None and status == "excluded: all KS3 results disregarded"


def test_disapplied_exception_needs_an_a_to_g_result():
    for ks3 in [("D", "D", "D"), ("D", "A", "M"), ("L", "D", "A")]:
        outcomes = dict(zip(("english", "maths", "science"), ks3, strict=True))
        assert ks3_input(1, outcomes, True) == (0, "included: disapplied, input 0")
        assert ks3_input(1, outcomes, False)[0] is None
    data = pd.DataFrame(
        rows(1, "S", ("D", "D", "D"), [("gcse", "G")])
        + rows(2, "S", ("D", "D", "D"), [("gcse", "U")])
    )
    p = dfe_value_added(data).pupils.set_index("pupil")
    assert p.loc[1, "included"] and p.loc[1, "ks3_aps"] == 0 and p.loc[1, "median"] == 4
    assert not p.loc[2, "included"]


def test_partly_disregarded_results_average_the_rest():
    assert ks3_input(1, {"english": "A", "maths": "4", "science": "5"}, True)[0] == 30
    assert ks3_input(1, {"english": "D", "maths": "M", "science": "6"}, True)[0] == 39


def test_unmatched_pupils_are_excluded_but_count_in_the_cohort():
    data = pd.DataFrame(
        rows(1, "S", (None, None, None), [("gcse", "A")]) + rows(2, "S", ("5", "5", "5"), [])
    )
    res = dfe_value_added(data)
    p = res.pupils.set_index("pupil")
    assert p.loc[1, "status"] == "excluded: no matched KS3 results"
    assert p.loc[2, "capped_score"] == 0 and p.loc[2, "value_added"] == -36
    assert res.schools.loc["S", "cohort"] == 2


def test_special_schools_use_table_b_and_data_medians():
    data = pd.DataFrame(
        rows(1, "Sp", ("4", "4", "5"), [("gcse", "E")] * 3, special=True)
        + rows(2, "M", ("4", "4", "5"), [("gcse", "E")] * 3, special=False)
        + rows(3, "M", ("4", "4", "5"), [("gcse", "C")] * 3, special=False)
    )
    p = dfe_value_added(data, median_line="auto").pupils.set_index("pupil")
    assert p.loc[1, "median"] == 8 and p.loc[2, "median"] == 28
    pdata = dfe_value_added(data, median_line="data").pupils.set_index("pupil")
    assert pdata["median"].tolist() == [9, 9, 9]  # median of 9, 9, 15
    assert pdata.loc[3, "value_added"] == 6


# ------------------------------------------------------------------ bad codes
@pytest.mark.parametrize(
    "qual,grade,match",
    [
        ("gcse", "H", r"pupil 5: unknown gcse grade 'H'"),
        ("gnvq_full_intermediate", "A", r"pupil 5: grade 'A' does not exist"),
        ("gnvq_language_unit_foundation", "merit", r"does not exist for gnvq_language_unit"),
        ("btec", "P", r"pupil 5: unknown qualification 'btec'"),
    ],
)
def test_bad_result_codes_name_the_pupil_and_value(qual, grade, match):
    data = pd.DataFrame(rows(5, "S", ("5", "5", "5"), [(qual, grade)]))
    with pytest.raises(DfEInputError, match=match):
        dfe_value_added(data)


@pytest.mark.parametrize(
    "ks3,match",
    [
        (("9", "5", "5"), r"english outcome '9'"),
        (("M", "5", "5"), r"english outcome 'M' does not exist"),
        (("5", "1", "5"), r"maths outcome '1'"),
    ],
)
def test_bad_ks3_codes_name_the_pupil_and_value(ks3, match):
    data = pd.DataFrame(rows(5, "S", ks3, [("gcse", "C")]))
    with pytest.raises(DfEInputError, match="pupil 5: KS3 " + match.split(" ", 0)[0]):
        dfe_value_added(data)


def test_missing_columns_and_bad_option():
    from melsml import MELSInputError

    with pytest.raises(MELSInputError, match="lack column"):
        dfe_value_added(pd.DataFrame({"pupil": [1]}))
    data = pd.DataFrame(rows(1, "S", ("5", "5", "5"), []))
    with pytest.raises(MELSInputError, match="median_line"):
        dfe_value_added(data, median_line="C")
