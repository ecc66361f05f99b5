"""MixedLM baseline, the school report, and the shipped example file."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from melsml import MELS, simulate_london
from melsml.valueadded import (
    compare_schools,
    dfe_value_added,
    example_pupils_path,
    mixedlm_va,
    synthetic_pupil_records,
)


@pytest.fixture(scope="module")
def data():
    return simulate_london(3, seed=17, n_schools=60, n_students=5000)


@pytest.fixture(scope="module")
def fits(data):
    res1 = MELS.from_formula("y ~ prior", data, "school", random_scale=False).fit()
    res3 = MELS.from_formula("y ~ prior", data, "school", ws_formula="~ prior").fit()
    return res1, res3


def test_mixedlm_va_equals_melsml_model1(data, fits):
    res1, _ = fits
    base = mixedlm_va("y ~ prior", data, "school")
    ours = res1.school_effects()
    assert base.attrs["llf"] == pytest.approx(res1.llf, rel=1e-7)
    np.testing.assert_allclose(base["mean"], ours["mean"], atol=2e-4)
    np.testing.assert_allclose(base["mean_sd"], ours["mean_sd"], rtol=2e-3)
    assert list(base.columns) == [
        "n",
        "mean",
        "mean_sd",
        "mean_lower",
        "mean_upper",
        "mean_rank",
        "mean_separated",
    ]
    assert (base["mean_rank"] == ours["mean_rank"]).mean() > 0.9


def test_mixedlm_va_random_slope_averages_over_own_students():
    data = simulate_london(5, seed=4, n_schools=50, n_students=5000)
    base = mixedlm_va("y ~ prior", data, "school", re_formula="~ 1 + prior")
    res4 = MELS.from_formula(
        "y ~ prior", data, "school", re_formula="~ 1 + prior", random_scale=False
    ).fit()
    np.testing.assert_allclose(base["mean"], res4.school_effects()["mean"], atol=5e-4)


def test_report_table_separation_and_rank_correlations(data, fits):
    _, res3 = fits
    mels = res3.school_effects()
    base = mixedlm_va("y ~ prior", data, "school")
    rep = compare_schools(mels=mels, mixedlm=base)
    t = rep.table
    assert len(t) == 60
    assert {"mixedlm_mean", "mels_mean", "mels_variance_upper", "mels_variance_separated"} <= set(
        t.columns
    )
    sep = rep.separation
    assert sep.loc["mels_mean", "separated"] == mels["mean_separated"].sum()
    assert sep.loc["mels_variance", "separated"] == mels["variance_separated"].sum()
    above = (mels["variance_lower"] > mels.attrs["variance_reference"]).sum()
    assert sep.loc["mels_variance", "above"] == above
    assert (
        sep.loc["mels_mean", "above"] + sep.loc["mels_mean", "below"]
        == sep.loc["mels_mean", "separated"]
    )
    rc = rep.rank_correlations
    assert rc.loc["mels_mean", "mixedlm_mean"] > 0.95
    assert rc.loc["mels_mean", "mels_mean"] == pytest.approx(1.0)


def test_report_with_dfe_on_the_example_file():
    pupils = pd.read_csv(example_pupils_path())
    dfe = dfe_value_added(pupils)
    inc = dfe.pupils[dfe.pupils["included"]]
    res = MELS.from_formula(
        "capped_score ~ ks3_aps", inc, "school", ws_formula="~ ks3_aps", random_scale=False
    ).fit()
    rep = compare_schools(mels=res.school_effects(), dfe=dfe)
    t = rep.table
    assert t["dfe_va"].isna().sum() == (dfe.schools["coverage"] < 50).sum() >= 1
    assert rep.rank_correlations.loc["dfe", "mels_mean"] > 0.6
    with pytest.raises(ValueError):
        compare_schools()


def test_example_file_is_the_documented_generator():
    shipped = pd.read_csv(example_pupils_path())
    fresh = synthetic_pupil_records()
    assert len(shipped) == len(fresh)
    assert shipped["pupil"].nunique() == fresh["pupil"].nunique()
    pd.testing.assert_series_equal(
        shipped["grade"].fillna(""), fresh["grade"].fillna(""), check_dtype=False
    )


def test_old_names_and_argument_order_still_work_with_a_warning(data):
    with pytest.warns(FutureWarning, match="mixedlm_va\\(formula, data, groups\\)"):
        old = mixedlm_va(data, "y ~ prior", "school")
    new = mixedlm_va("y ~ prior", data, "school")
    pd.testing.assert_frame_equal(old, new)
    from melsml.valueadded import compare

    with pytest.warns(FutureWarning, match="compare_schools"):
        rep = compare(mixedlm=new)
    assert rep is not None
