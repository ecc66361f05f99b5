"""Model comparison: likelihood-ratio tests with the boundary mixture."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from test_model import fit_case

import melsml
from melsml.summary import _lr_pvalue


@pytest.fixture(scope="module")
def fits():
    return [
        fit_case("small", random_scale=False, ws_formula="~ 1"),
        fit_case("small", random_scale=False),
        fit_case("small"),
        fit_case("small", association="none"),
    ]


def test_compare_table_and_lr_tests(fits):
    m1, m2, m3, _ = fits
    table = melsml.compare(m1, m2, m3, names=["homosc", "hetero", "mels"])
    assert list(table.index) == ["homosc", "hetero", "mels"]
    assert table.loc["hetero", "lr_stat"] == pytest.approx(2 * (m2.llf - m1.llf))
    assert table.loc["hetero", "df"] == 1
    assert table.loc["hetero", "p_value"] == pytest.approx(stats.chi2.sf(2 * (m2.llf - m1.llf), 1))
    assert "mixture" in table.loc["mels", "test"]
    stat = 2 * (m3.llf - m2.llf)
    expected = 0.5 * stats.chi2.sf(stat, 1) + 0.5 * stats.chi2.sf(stat, 2)
    assert table.loc["mels", "p_value"] == pytest.approx(expected)
    assert table.loc["mels", "aic"] == pytest.approx(m3.aic)


def test_boundary_mixture_p_values():
    assert _lr_pvalue(2.71, 1, True) == pytest.approx(0.5 * stats.chi2.sf(2.71, 1))
    assert _lr_pvalue(0.0, 1, True) == pytest.approx(1.0)
    assert _lr_pvalue(5.0, 2, True) == pytest.approx(
        0.5 * stats.chi2.sf(5.0, 1) + 0.5 * stats.chi2.sf(5.0, 2)
    )
    assert _lr_pvalue(-1e-9, 3, False) == pytest.approx(1.0)


def test_non_nested_models_get_no_test(fits):
    _, m2, _, none = fits
    scale_only = fit_case("small", ws_formula="~ 1")  # random scale, no WS covariate
    table = melsml.compare(scale_only, m2)  # m2: WS covariate, no random scale
    assert np.isnan(table.iloc[1]["lr_stat"])
    assert "not nested" in table.iloc[1]["test"]
    nested = melsml.compare(m2, none)  # adds sigma_omega only: df 1 mixture
    assert nested.iloc[1]["df"] == 1
    assert nested.iloc[1]["p_value"] == pytest.approx(
        0.5 * stats.chi2.sf(nested.iloc[1]["lr_stat"], 1)
    )
    with pytest.raises(ValueError):
        melsml.compare(m2, none, names=["a"])


def test_random_intercept_models_nest_in_random_slope_models():
    from melsml import MELS, simulate_london

    data = simulate_london(5, seed=8, n_schools=60, n_students=5000)
    m1 = MELS.from_formula("y ~ prior", data, "school", random_scale=False).fit()
    m4 = MELS.from_formula(
        "y ~ prior", data, "school", re_formula="~ 1 + prior", random_scale=False
    ).fit()
    m5 = MELS.from_formula("y ~ prior", data, "school", re_formula="~ 1 + prior").fit()
    table = melsml.compare(m1, m4, m5)
    stat = 2 * (m4.llf - m1.llf)
    assert table.iloc[1]["df"] == 2
    assert table.iloc[1]["p_value"] == pytest.approx(
        0.5 * stats.chi2.sf(stat, 1) + 0.5 * stats.chi2.sf(stat, 2)
    )
    assert "mixture" in table.iloc[2]["test"] and table.iloc[2]["df"] == 3


def test_compare_names_the_parameters_a_test_adds():
    from melsml import MELS, simulate_london

    data = simulate_london(3, seed=1, n_schools=40, n_students=3000)
    m1 = MELS.from_formula("y ~ prior", data, "school", random_scale=False).fit()
    m3 = MELS.from_formula("y ~ prior", data, "school", ws_formula="~ prior").fit()
    row = melsml.compare(m1, m3, names=["m1", "m3"]).loc["m3"]
    assert row["added"] == "random[sigma_omega], random[tau_l], tau[prior]"
    assert "chi2(2) and chi2(3)" in row["test"]


def test_compare_labels_models_by_their_formulas_by_default():
    from melsml import MELS, simulate_london

    data = simulate_london(3, seed=1, n_schools=40, n_students=3000)
    m1 = MELS.from_formula("y ~ prior", data, "school", random_scale=False).fit()
    m3 = MELS.from_formula("y ~ prior", data, "school", ws_formula="~ prior").fit()
    table = melsml.compare(m1, m3)
    assert list(table.index) == [
        "y ~ prior; WS ~ 1; no random scale",
        "y ~ prior; WS ~ prior",
    ]
    assert table.iloc[1]["test"].startswith("vs y ~ prior; WS ~ 1; no random scale")
    twice = melsml.compare(m1, m1)
    assert list(twice.index)[0].startswith("1: ")
