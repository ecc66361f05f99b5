"""Empirical Bayes predictions: MixWILD's EB file, MixedLM's BLUPs, school effects."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from conftest import DATA, load_case
from test_model import fit_case

from melsml import MELS, MELSInputError, simulate_london


@pytest.fixture(scope="module")
def small_fit():
    return fit_case("small")


def read_ebvar(name):
    eb = np.loadtxt(DATA / name / "ebvar.dat")
    cols = ["theta1_mean", "theta2_mean", "var1", "cov12", "var2"]
    return pd.DataFrame(eb[:, 1:], index=eb[:, 0].astype(int), columns=cols)


@pytest.mark.parametrize("name,tol", [("small", 2e-5), ("sbm_mels", 2e-5), ("riesby", 2e-2)])
def test_posterior_moments_match_mixwild_eb_file(name, tol):
    res = small_fit_cache(name)
    re = res.random_effects()
    eb = read_ebvar(name).loc[re.index]
    np.testing.assert_allclose(re["theta1_mean"], eb["theta1_mean"], atol=tol)
    np.testing.assert_allclose(re["theta2_mean"], eb["theta2_mean"], atol=tol)
    np.testing.assert_allclose(re["theta1_sd"] ** 2, eb["var1"], atol=tol)
    np.testing.assert_allclose(re["cov_theta12"], eb["cov12"], atol=tol)
    np.testing.assert_allclose(re["theta2_sd"] ** 2, eb["var2"], atol=tol)


_FITS: dict = {}


def small_fit_cache(name):
    if name not in _FITS:
        _FITS[name] = fit_case(name)
    return _FITS[name]


def test_closed_form_effects_equal_mixedlm_blups():
    data = simulate_london(3, seed=21, n_schools=50, n_students=3000)
    res = MELS.from_formula("y ~ prior", data, "school", random_scale=False).fit()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sm = smf.mixedlm("y ~ prior", data, groups=data["school"]).fit(
            reml=False, method="bfgs", gtol=1e-10
        )
    blup = pd.Series({k: v.iloc[0] for k, v in sm.random_effects.items()})
    re = res.random_effects()
    np.testing.assert_allclose(re["u_mean"], blup.loc[re.index], atol=1e-5)
    se = res.school_effects()
    np.testing.assert_allclose(se["mean"], blup.loc[se.index], atol=1e-5)
    # posterior (comparative) SDs: sqrt(var_u * (1 - reliability))
    var_u, var_e = float(sm.cov_re.iloc[0, 0]), sm.scale
    n = data.groupby("school").size().loc[se.index]
    post_sd = np.sqrt(1.0 / (1.0 / var_u + n / var_e))
    np.testing.assert_allclose(se["mean_sd"], post_sd, rtol=1e-4)
    assert not se["variance_separated"].any()


def test_school_effects_table(small_fit):
    se = small_fit.school_effects()
    assert len(se) == 60
    expected = [
        "n",
        "mean",
        "mean_sd",
        "mean_lower",
        "mean_upper",
        "mean_rank",
        "mean_separated",
        "variance",
        "variance_sd",
        "variance_lower",
        "variance_upper",
        "variance_rank",
        "variance_separated",
    ]
    assert list(se.columns) == expected
    assert (se["mean_lower"] < se["mean"]).all() and (se["mean"] < se["mean_upper"]).all()
    assert (se["variance_lower"] < se["variance"]).all()
    assert (se["variance"] < se["variance_upper"]).all()
    assert sorted(se["mean_rank"]) == list(range(1, 61))
    assert se.loc[se["mean"].idxmax(), "mean_rank"] == 1  # 1 = best: the highest mean
    assert se.loc[se["variance"].idxmin(), "variance_rank"] == 1  # and the lowest variance
    assert "highest" in se.attrs["rank_order"]["mean"]
    ref = se.attrs["variance_reference"]
    wbar = small_fit.model.design.x_ws.mean(axis=0)
    assert ref == pytest.approx(np.exp(wbar @ small_fit.params["tau"].to_numpy()))
    sep = (se["variance_lower"] > ref) | (se["variance_upper"] < ref)
    assert (se["variance_separated"] == sep).all()


def test_school_variance_is_a_posterior_expectation_not_a_plug_in(small_fit):
    se = small_fit.school_effects()
    re = small_fit.random_effects()
    c = np.log(se.attrs["variance_reference"])
    plug_in = np.exp(c + re["omega_mean"])
    # Jensen: E exp(omega) > exp(E omega); close to the lognormal correction
    assert (se["variance"] > plug_in).all()
    np.testing.assert_allclose(se["variance"], plug_in * np.exp(re["omega_sd"] ** 2 / 2), rtol=2e-3)


def test_interval_coverage_of_true_school_effects():
    """EB intervals cover the simulated schools' true effects at about 95%."""
    data, truth = simulate_london(3, seed=8, n_schools=300, n_students=30000, return_effects=True)
    res = MELS.from_formula("y ~ prior", data, "school", ws_formula="~ prior").fit()
    se = res.school_effects()
    truth = truth.loc[se.index]
    cover_mean = ((se["mean_lower"] <= truth["u"]) & (truth["u"] <= se["mean_upper"])).mean()
    true_var = np.exp(np.log(se.attrs["variance_reference"]) + truth["omega"])
    cover_var = ((se["variance_lower"] <= true_var) & (true_var <= se["variance_upper"])).mean()
    assert 0.9 < cover_mean < 0.99
    assert 0.9 < cover_var < 0.99


def test_ws_reference_values(small_fit):
    se0 = small_fit.school_effects()
    se1 = small_fit.school_effects(ws_reference={"x": 1.0})
    ratio = se1["variance"] / se0["variance"]
    xbar = small_fit.model.design.x_ws[:, 1].mean()
    np.testing.assert_allclose(ratio, np.exp(small_fit.params[("tau", "x")] * (1 - xbar)))
    with pytest.raises(MELSInputError, match="unknown WS term"):
        small_fit.school_effects(ws_reference={"prior": 1.0})


def test_quadratic_association_predictions_are_available():
    data, spec = load_case("small")
    formula, groups = spec.pop("formula"), spec.pop("groups")
    res = MELS.from_formula(formula, data, groups, association="quadratic", **spec).fit()
    lin = small_fit_cache("small")
    se, se_lin = res.school_effects(), lin.school_effects()
    assert np.corrcoef(se["mean"], se_lin["mean"])[0, 1] > 0.99
    assert np.corrcoef(se["variance"], se_lin["variance"])[0, 1] > 0.95


# ------------------------------------------------------------------ random slopes
@pytest.fixture(scope="module")
def slope_fit():
    data, truth = simulate_london(6, seed=31, n_schools=200, n_students=25000, return_effects=True)
    res = MELS.from_formula(
        "y ~ prior", data, "school", re_formula="~ 1 + prior", ws_formula="~ prior"
    ).fit()
    return res, data, truth


def test_slope_random_effects_match_the_kernel_posterior(slope_fit):
    res, _, _ = slope_fit
    re = res.random_effects()
    state = res.fit_state
    ev = res.model.objective().evaluate(state.theta, centers=state.evaluation.centers)
    np.testing.assert_allclose(re["u_mean[Intercept]"], ev.ex[:, 0], atol=1e-6)
    np.testing.assert_allclose(re["u_mean[prior]"], ev.ex[:, 1], atol=1e-6)
    np.testing.assert_allclose(re["omega_mean"], ev.ex[:, 2], atol=1e-6)
    cov01 = ev.exx[:, 0, 1] - ev.ex[:, 0] * ev.ex[:, 1]
    np.testing.assert_allclose(re["cov[Intercept,prior]"], cov01, atol=1e-6)
    assert {"u_sd[prior]", "omega_sd", "cov[prior,omega]"} <= set(re.columns)


def test_slope_school_means_average_over_own_students(slope_fit):
    res, data, _ = slope_fit
    re = res.random_effects()
    se = res.school_effects()
    xbar = data.groupby("school")["prior"].mean().loc[se.index]
    np.testing.assert_allclose(
        se["mean"], re["u_mean[Intercept]"] + re["u_mean[prior]"] * xbar, atol=1e-6
    )


def test_slope_school_variance_for_a_reference_distribution(slope_fit):
    res, data, _ = slope_fit
    re = res.random_effects()
    v0 = res.school_effects(reference_var=0.0)
    v1 = res.school_effects(reference_var=1.0)
    # E[u1^2 V + exp(c + omega)] = V (var + mean^2 of u1) + E exp(c + omega)
    e_u1sq = re["u_sd[prior]"] ** 2 + re["u_mean[prior]"] ** 2
    np.testing.assert_allclose(v1["variance"] - v0["variance"], e_u1sq, rtol=1e-5, atol=1e-9)
    assert (v1["variance_lower"] < v1["variance"]).all()
    assert (v1["variance"] < v1["variance_upper"]).all()
    default = res.school_effects()
    assert default.attrs["reference_var"][0][0] == pytest.approx(data["prior"].var(), rel=1e-9)
    with pytest.raises(MELSInputError, match="reference_var"):
        res.school_effects(reference_var=[[1.0, 0.0], [0.0, 1.0]])


def test_slope_school_effect_intervals_cover_the_truth(slope_fit):
    res, data, truth = slope_fit
    se = res.school_effects()
    truth = truth.loc[se.index]
    xbar = data.groupby("school")["prior"].mean().loc[se.index]
    true_mean = truth["u[Intercept]"] + truth["u[prior]"] * xbar
    cover = ((se["mean_lower"] <= true_mean) & (true_mean <= se["mean_upper"])).mean()
    assert 0.9 < cover < 0.99
    v = np.var(data["prior"], ddof=1)
    true_var = truth["u[prior]"] ** 2 * v + se.attrs["variance_reference"] * np.exp(truth["omega"])
    cover_v = ((se["variance_lower"] <= true_var) & (true_var <= se["variance_upper"])).mean()
    assert 0.9 < cover_v < 0.99


def test_two_slopes_use_monte_carlo_intervals():
    data = simulate_london(5, seed=2, n_schools=40, n_students=4000)
    res = MELS.from_formula("y ~ prior + fsm", data, "school", re_formula="~ 1 + prior + fsm").fit()
    se = res.school_effects(reference_var=np.diag([1.0, 0.2]))
    assert (se["variance_lower"] < se["variance"]).all()
    assert (se["variance"] < se["variance_upper"]).all()
    again = res.school_effects(reference_var=np.diag([1.0, 0.2]))
    pd.testing.assert_frame_equal(se, again)  # a fixed seed: reproducible


def test_predictions_do_not_depend_on_row_order_or_group_labels():
    data = simulate_london(3, seed=12, n_schools=30, n_students=2000)
    res = MELS.from_formula("y ~ prior", data, "school", ws_formula="~ prior").fit()
    shuffled = data.sample(frac=1.0, random_state=5).reset_index(drop=True)
    shuffled["school"] = "s" + shuffled["school"].astype(str)
    other = MELS.from_formula("y ~ prior", shuffled, "school", ws_formula="~ prior").fit()
    a = res.school_effects()
    b = other.school_effects()
    b.index = [int(s[1:]) for s in b.index]
    b = b.loc[a.index]
    for col in ("mean", "mean_lower", "variance", "variance_upper"):
        np.testing.assert_allclose(a[col], b[col], rtol=1e-6, atol=1e-8)
    assert (a["mean_rank"] == b["mean_rank"]).all()


def test_quadratic_posterior_grid_matches_the_quadrature_moments():
    data, spec = load_case("small")
    formula, groups = spec.pop("formula"), spec.pop("groups")
    res = MELS.from_formula(formula, data, groups, association="quadratic", **spec).fit()
    re = res.random_effects()
    state = res.fit_state
    ev = res.model.objective().evaluate(state.theta, centers=state.evaluation.centers)
    np.testing.assert_allclose(re["theta1_mean"], ev.ex[:, 0], atol=1e-6)
    np.testing.assert_allclose(re["omega_mean"], ev.ex[:, 1], atol=1e-6)
    np.testing.assert_allclose(re["omega_sd"] ** 2, ev.exx[:, 1, 1] - ev.ex[:, 1] ** 2, atol=1e-6)
    se = res.school_effects()
    assert (se["variance_lower"] < se["variance"]).all()
    assert (se["variance"] < se["variance_upper"]).all()
    # a posterior expectation, above the plug-in at the posterior mean of omega
    plug_in = se.attrs["variance_reference"] * np.exp(re["omega_mean"])
    assert (se["variance"] > plug_in).all()


def test_general_path_fit_gives_the_same_predictions():
    data, spec = load_case("small")
    formula, groups = spec.pop("formula"), spec.pop("groups")
    fast = MELS.from_formula(formula, data, groups, **spec).fit().school_effects()
    general = MELS.from_formula(formula, data, groups, integration="aghq", **spec).fit()
    other = general.school_effects()
    for col in ("mean", "mean_lower", "mean_upper", "variance"):
        np.testing.assert_allclose(other[col], fast[col], atol=2e-4)
    for col in ("variance_lower", "variance_upper"):
        np.testing.assert_allclose(other[col], fast[col], atol=1e-3)
