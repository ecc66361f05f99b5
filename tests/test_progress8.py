"""Progress 8 (melsml.valueadded.progress8): hand-worked cases, the measure's
identities, the 2018 limit on extremely negative scores, and clear errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from melsml.valueadded import progress8, synthetic_progress8_pupils
from melsml.valueadded.progress8 import Progress8InputError

ELEMENTS = {e: f"a8_{e}" for e in ("english", "maths", "ebacc", "open")}


@pytest.fixture(scope="module")
def pupils():
    return synthetic_progress8_pupils(n_schools=25, seed=3)


def small():
    # two prior-attainment groups, two schools, one pupil without KS2 results
    return pd.DataFrame(
        {
            "pupil": ["p1", "p2", "p3", "p4", "p5", "p6", "p7"],
            "school": ["A", "A", "A", "B", "B", "B", "B"],
            "ks2_group": [1, 2, 2, 1, 1, 2, None],
            "a8": [30.0, 52.0, 61.0, 42.0, 36.0, 47.0, 20.0],
        }
    )


def test_a_hand_worked_example():
    res = progress8(small(), pupil="pupil", limit_negative=False, return_pupils=True)
    # estimated A8: group 1 (30 + 42 + 36) / 3 = 36, group 2 (52 + 61 + 47) / 3 = 160 / 3
    est = res.estimates["a8"]
    assert est[1] == pytest.approx(36.0) and est[2] == pytest.approx(160 / 3)
    p = res.pupils.set_index("pupil")
    assert p.loc["p1", "p8"] == pytest.approx((30 - 36) / 10)
    assert p.loc["p3", "p8"] == pytest.approx((61 - 160 / 3) / 10)
    assert np.isnan(p.loc["p7", "p8"]) and not p.loc["p7", "included"]
    s = res.schools
    # school A: (-0.6 + (52 - 53.33)/10 + (61 - 53.33)/10) / 3; B without p7
    a = (-6 + (52 - 160 / 3) + (61 - 160 / 3)) / 30
    b = ((42 - 36) + (36 - 36) + (47 - 160 / 3)) / 30
    assert s.loc["A", "p8"] == pytest.approx(a) and s.loc["B", "p8"] == pytest.approx(b)
    assert s.loc["B", "cohort"] == 4 and s.loc["B", "n"] == 3
    assert s.loc["B", "coverage"] == pytest.approx(75.0)
    # the cohort average Attainment 8 includes the pupil without KS2 results
    assert s.loc["B", "a8_mean"] == pytest.approx((42 + 36 + 47 + 20) / 4)
    # interval: +/- 1.96 sigma / sqrt(n), sigma the SD of the six pupil scores
    sigma = np.std(p["p8"].dropna(), ddof=0)
    assert res.national_sd["p8"] == pytest.approx(sigma)
    half = 1.959963984540054 * sigma / np.sqrt(3)
    assert s.loc["A", "p8_lower"] == pytest.approx(a - half)
    assert s.loc["A", "p8_upper"] == pytest.approx(a + half)
    assert s.loc["A", "p8_rank"] == (1 if a > b else 2)


def test_supplied_estimates_and_sigma_are_used():
    table = pd.DataFrame({"a8": [40.0, 50.0]}, index=[1, 2])
    s = progress8(small(), estimates=table, national_sd=1.2, limit_negative=False)
    a = ((30 - 40) + (52 - 50) + (61 - 50)) / 30
    assert s.loc["A", "p8"] == pytest.approx(a)
    assert s.loc["A", "p8_sd"] == pytest.approx(1.2 / np.sqrt(3))
    assert s.attrs["estimates"] == "the supplied estimates"
    # a Series of estimates is the a8 column
    s2 = progress8(small(), estimates=table["a8"], national_sd=1.2, limit_negative=False)
    pd.testing.assert_frame_equal(s, s2)


def test_national_scores_average_zero_and_elements_add_up(pupils):
    res = progress8(pupils, pupil="pupil", elements=ELEMENTS, limit_negative=False,
                    return_pupils=True)  # fmt: skip
    p = res.pupils[res.pupils["included"]]
    # with national means from the data, every group's (and the nation's) mean is 0
    assert abs(p["p8"].mean()) < 1e-12
    assert p.groupby("prior_group")["p8"].mean().abs().max() < 1e-10
    # ten slots: 10 P8 = 2 English + 2 maths + 3 EBacc + 3 open
    total = 2 * p["p8_english"] + 2 * p["p8_maths"] + 3 * p["p8_ebacc"] + 3 * p["p8_open"]
    np.testing.assert_allclose(10 * p["p8"], total, atol=1e-10)
    # the school score is the mean of its pupils' scores
    s = res.schools
    np.testing.assert_allclose(s["p8"], p.groupby("school")["p8"].mean().loc[s.index])


def test_extremely_negative_scores_are_limited(pupils):
    res = progress8(pupils, pupil="pupil", elements=ELEMENTS, return_pupils=True)
    p = res.pupils[res.pupils["included"]]
    # the limit: the group's mean less 3 SDs of its pupils' scores
    g = p.groupby("prior_group")["p8_unadjusted"]
    limits = g.mean() - 3 * g.std(ddof=0)
    np.testing.assert_allclose(res.estimates["limit_p8"].loc[limits.index], limits)
    lim = limits.reindex(p["prior_group"]).to_numpy()
    np.testing.assert_allclose(p["p8"], np.maximum(p["p8_unadjusted"], lim))
    assert p["p8_limited"].sum() > 0
    assert (p.loc[p["p8_limited"], "p8"] > p.loc[p["p8_limited"], "p8_unadjusted"]).all()
    # pupils with no results at all, expected to score over 40, are limited
    none = (p["a8_points"] == 0) & (p["a8_estimate"] > 40)
    assert none.sum() > 3 and p.loc[none, "p8_limited"].all()
    counts = p.groupby("school")["p8_limited"].sum()
    np.testing.assert_array_equal(res.schools["n_limited"], counts.loc[res.schools.index])
    # the limit raises the school scores of the schools with limited pupils only
    raw = progress8(pupils, pupil="pupil", elements=ELEMENTS, limit_negative=False)
    up = res.schools["p8"] - raw.loc[res.schools.index, "p8"]
    assert (up[res.schools["n_limited"] > 0] > 0).all()
    assert (up[res.schools["n_limited"] == 0] == 0).all()
    # the elements are limited too
    assert p["p8_english_limited"].sum() > 0


def test_interval_and_separation(pupils):
    s = progress8(pupils, level=0.90)
    half = 1.6448536269514722 * s["p8_sd"]
    np.testing.assert_allclose(s["p8_upper"] - s["p8"], half)
    np.testing.assert_allclose(s["p8_sd"], s.attrs["national_sd"]["p8"] / np.sqrt(s["n"]))
    assert (s["p8_separated"] == ((s["p8_lower"] > 0) | (s["p8_upper"] < 0))).all()
    assert s["p8_rank"].min() == 1 and s.loc[s["p8"].idxmax(), "p8_rank"] == 1


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.assign(a8=d["a8"].astype(object).where(d["pupil"] != "p2", "abc")),
         "pupil 'p2': Attainment 8 'abc'"),
        (lambda d: d.assign(a8=d["a8"].where(d["pupil"] != "p3", 95.0)),
         "pupil 'p3': Attainment 8 95 "),
        (lambda d: d.assign(a8=d["a8"].where(d["pupil"] != "p4", -1.0)),
         "pupil 'p4': Attainment 8 -1 "),
        (lambda d: d.assign(a8=d["a8"].where(d["pupil"] != "p5", np.nan)),
         "pupil 'p5': no Attainment 8"),
        (lambda d: d.assign(pupil=["p1", "p1", "p3", "p4", "p5", "p6", "p7"]),
         "pupil 'p1' appears more than once"),
        (lambda d: d.assign(school=d["school"].where(d["pupil"] != "p6", None)),
         "pupil 'p6' has no school"),
    ],
)  # fmt: skip
def test_malformed_records_are_named(change, message):
    with pytest.raises(Progress8InputError, match=message):
        progress8(change(small()), pupil="pupil")


def test_other_bad_input():
    d = small()
    with pytest.raises(Progress8InputError, match="pupil 'p2': prior-attainment group 2 "):
        progress8(d, pupil="pupil", estimates=pd.Series([40.0], index=[1]))
    with pytest.raises(ValueError, match="lack column"):
        progress8(d, a8="attainment8")
    with pytest.raises(ValueError, match="unknown Attainment 8 element"):
        progress8(d, elements={"science": "a8"})
    with pytest.raises(ValueError, match="estimates table lacks column"):
        progress8(d.assign(e=d["a8"] / 5), elements={"english": "e"},
                  estimates=pd.Series([40.0, 50.0], index=[1, 2]))  # fmt: skip
    with pytest.raises(ValueError, match="level"):
        progress8(d, level=95)
    bad = d.assign(e1=[1.0] * 7, e2=[1.0] * 7, e3=[1.0] * 7, e4=[1.0] * 7)
    four = {"english": "e1", "maths": "e2", "ebacc": "e3", "open": "e4"}
    with pytest.raises(Progress8InputError, match="pupil 'p1': the elements add up to 4"):
        progress8(bad, pupil="pupil", elements=four)
    with pytest.raises(Progress8InputError, match="english element 20 "):
        progress8(bad.assign(e1=20.0), pupil="pupil", elements={"english": "e1"})
