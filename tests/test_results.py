"""The results surface: params, bse, intervals, criteria, natural parameters."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from test_model import fit_case


@pytest.fixture(scope="module")
def res():
    return fit_case("small")


def test_statsmodels_attribute_names(res):
    idx = res.params.index
    assert list(idx.names) == ["block", "term"]
    assert list(idx) == [
        ("beta", "Intercept"),
        ("beta", "x"),
        ("alpha", "Intercept"),
        ("tau", "Intercept"),
        ("tau", "x"),
        ("random", "tau_l"),
        ("random", "sigma_omega"),
    ]
    assert res.params[("random", "sigma_omega")] > 0
    np.testing.assert_allclose(res.bse, np.sqrt(np.diag(res.cov_params())))
    np.testing.assert_allclose(res.tvalues, res.params / res.bse)
    np.testing.assert_allclose(res.pvalues, 2 * stats.norm.sf(np.abs(res.tvalues)))
    ci = res.conf_int(0.1)
    np.testing.assert_allclose(ci["upper"] - res.params, 1.6448536 * res.bse, rtol=1e-6)
    assert res.nobs == 2400 and res.n_groups == 60 and res.k_params == 7
    assert res.aic == pytest.approx(-2 * res.llf + 14)
    assert res.bic == pytest.approx(-2 * res.llf + 7 * np.log(2400))
    assert res.converged
    assert res.fit_info.n_evals > 0 and res.fit_info.newton_decrement < 1e-12


def test_params_do_not_change_when_the_returned_series_is_modified(res):
    p = res.params
    p.iloc[0] = 99.0
    assert res.params.iloc[0] != 99.0


def test_natural_random_parameters_and_delta_method(res):
    rp = res.random_params()
    assert list(rp.index) == ["var_u", "var_e", "var_omega", "cov_u_omega", "corr_u_omega"]
    a0 = res.params[("alpha", "Intercept")]
    tl, sw = res.params[("random", "tau_l")], res.params[("random", "sigma_omega")]
    assert rp.loc["var_u", "estimate"] == pytest.approx(np.exp(a0))
    assert rp.loc["var_omega", "estimate"] == pytest.approx(tl**2 + sw**2)
    assert rp.loc["corr_u_omega", "estimate"] == pytest.approx(tl / np.hypot(tl, sw))
    # analytic delta method for var_u = exp(alpha0)
    se_a0 = res.bse[("alpha", "Intercept")]
    assert rp.loc["var_u", "std_error"] == pytest.approx(np.exp(a0) * se_a0, rel=1e-6)


def test_summary_shows_data_integration_and_every_block(res):
    text = str(res.summary())
    for needle in [
        "Observations:            2400",
        "Groups:                  60",
        "40 / 40.0 / 40",
        "exact over the location effects",
        "Converged:",
        "Log-likelihood:",
        "Deviance:",
        "AIC:",
        "BIC:",
        "BETA (mean function)",
        "ALPHA (between-group",
        "TAU (within-group",
        "sigma_omega",
        "tau_l",
        "corr_u_omega",
        "[0.025",
    ]:
        assert needle in text, needle
    assert f"{res.llf:.4f}" in text
    assert "<table>" in res.summary().as_html()


def test_tidy_has_one_row_per_parameter(res):
    tidy = res.tidy()
    assert list(tidy.columns) == ["estimate", "std_error", "z", "p_value", "lower", "upper"]
    pd.testing.assert_index_equal(tidy.index, res.params.index)


def test_robust_cov_requested_after_fit(res):
    rob = res.cov_params("robust")
    assert rob.shape == (7, 7)
    assert np.all(np.linalg.eigvalsh(rob.to_numpy()) > 0)
    with pytest.raises(ValueError, match="cov_type"):
        res.cov_params("bootstrap")


def test_params_is_a_copy_not_a_view_of_the_fit():
    from melsml import MELS, simulate_london

    data = simulate_london(3, seed=5, n_schools=40, n_students=3000)
    res = MELS.from_formula("y ~ prior", data, "school", ws_formula="~ prior").fit()
    before = res.params.copy()
    p = res.params
    p.iloc[:] = 99.0
    pd_testing = __import__("pandas").testing
    pd_testing.assert_series_equal(res.params, before)
    assert res.fit_state.theta[0] == before.iloc[0]


def _small_fit():
    from melsml import MELS, simulate_london

    data = simulate_london(3, seed=5, n_schools=40, n_students=3000)
    return MELS.from_formula("y ~ prior", data, "school", ws_formula="~ prior").fit()


def test_wald_and_t_tests_equal_the_z_tests_where_they_coincide():
    import numpy as np
    import pytest

    res = _small_fit()
    z = res.tvalues[("tau", "prior")]
    w = res.wald_test("tau[prior] = 0")
    assert w.statistic == pytest.approx(z**2, rel=1e-12)
    assert w.pvalue == pytest.approx(res.pvalues[("tau", "prior")], rel=1e-9)
    assert res.wald_test(("tau", "prior")).statistic == pytest.approx(z**2, rel=1e-12)
    t = res.t_test("beta[prior] = 0.6")
    assert t.sd[0] == pytest.approx(res.bse[("beta", "prior")])
    assert t.statistic[0] == pytest.approx(
        (res.params[("beta", "prior")] - 0.6) / res.bse[("beta", "prior")]
    )
    R = np.zeros((2, res.k_params))
    R[0, 1], R[1, 4] = 1, 1
    joint = res.wald_test(R)
    assert joint.df_denom == 2 and joint.statistic > 0
    from melsml import MELSInputError

    with pytest.raises(MELSInputError, match="res.param_names"):
        res.wald_test("nosuch = 0")


def test_save_load_round_trip(tmp_path):
    import numpy as np

    from melsml import MELSResults

    res = _small_fit()
    res.save(tmp_path / "fit.pkl")
    back = MELSResults.load(tmp_path / "fit.pkl")
    np.testing.assert_array_equal(back.params, res.params)
    np.testing.assert_array_equal(back.bse, res.bse)
    assert back.summary().as_text() == res.summary().as_text()
    np.testing.assert_allclose(back.school_effects()["variance"], res.school_effects()["variance"])


def test_summary_prints_itself_at_the_prompt_and_in_latex():
    res = _small_fit()
    s = res.summary()
    assert repr(s) == s.as_text() == str(s)
    latex = s.as_latex()
    assert "\\begin{tabular}" in latex and "sigma\\_omega" in latex
    assert repr(res.model).startswith("<MELS 'y ~ prior', groups='school', ws_formula='~ prior'")


def test_remove_data_keeps_the_estimates_and_says_what_needs_the_data(tmp_path):
    import numpy as np
    import pytest

    from melsml import MELSInputError, MELSResults

    res = _small_fit()
    text, bse, robust = res.summary().as_text(), res.bse.copy(), res.cov_params("robust")
    big = tmp_path / "big.pkl"
    res.save(big)
    res.remove_data()
    small = tmp_path / "small.pkl"
    res.save(small)
    assert small.stat().st_size < big.stat().st_size / 3
    back = MELSResults.load(small)
    assert back.summary().as_text() == text
    np.testing.assert_array_equal(back.bse, bse)
    np.testing.assert_array_equal(back.cov_params("robust"), robust)
    assert back.wald_test("tau[prior] = 0").statistic > 0
    with pytest.raises(MELSInputError, match="remove_data"):
        back.school_effects()
    with pytest.raises(MELSInputError, match="remove_data"):
        back.predict()
