"""Random scale slopes: a random slope in the within-group log-variance function.

log sigma2_ij = w_ij' tau + omega_j + omega_prior,j * prior_ij, with
(u_j, omega_j, omega_prior,j) jointly normal.  These tests cross the modules
(formula, structure, likelihood, model, posterior, summary) for this one
capability; the kernel's own tests are in test_quad.py.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import melsml
from melsml import MELS, BoundaryWarning, MELSInputError, mixwild
from melsml.simulate import LONDON_SCALE_SLOPE_TRUE, london_covariates, simulate

SLOPE = dict(ws_formula="~ prior", ws_re_formula="~ 1 + prior")


def small_data(seed=1, n_schools=60, random=None):
    data = london_covariates(n_schools, n_schools * 40, seed=seed)
    params = dict(LONDON_SCALE_SLOPE_TRUE)
    if random is not None:
        params = {**params, "random": random}
    return simulate(
        data, "school", params, formula="y ~ prior", ws_formula="~ prior",
        ws_re_formula="~ 1 + prior", seed=seed,
    )  # fmt: skip


def test_score_matches_finite_differences_with_a_bs_function():
    """The score is the quadrature estimate of the exact score: with 15 points it is
    the derivative of the adaptive log-likelihood to 1e-7 (with the default 7, on
    groups of 40, to about 1e-2: the quadrature error of the rule itself)."""
    data = small_data()
    m = MELS.from_formula("y ~ prior", data, "school", bs_formula="~ fsm", n_points=15, **SLOPE)
    obj = m.objective()
    rng = np.random.default_rng(0)
    theta = m.start_params().to_numpy() + rng.normal(0, 0.05, m.layout.k_params)
    g = obj.score(theta)
    fd = np.empty_like(theta)
    for i in range(theta.size):
        e = np.zeros_like(theta)
        e[i] = 1e-5
        fd[i] = (obj.loglike(theta + e) - obj.loglike(theta - e)) / 2e-5
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-4)


def test_a_zero_slope_row_gives_model_3_exactly():
    """With the scale slope's row of L zero, the scale-slope likelihood is model 3's."""
    data = small_data()
    slope = MELS.from_formula("y ~ prior", data, "school", n_points=11, **SLOPE)
    m3 = MELS.from_formula("y ~ prior", data, "school", ws_formula="~ prior")
    p3 = m3.start_params()
    p3[("random", "tau_l")] = -0.1
    ps = slope.start_params() * 0.0
    for block in ("beta", "alpha", "tau"):
        ps[block] = p3[block].to_numpy()
    ps[("random", "L(omega,Intercept)")] = p3[("random", "tau_l")]
    ps[("random", "L(omega,omega)")] = p3[("random", "sigma_omega")]
    assert slope.loglike(ps) == pytest.approx(m3.loglike(p3), abs=1e-8)


def test_exact_location_and_full_aghq_plans_agree():
    data = small_data(n_schools=40)
    exact = MELS.from_formula("y ~ prior", data, "school", n_points=11, **SLOPE)
    full = MELS.from_formula("y ~ prior", data, "school", integration="aghq", **SLOPE)
    assert (full.plan.method, full.plan.dim, full.plan.n_nodes) == ("aghq", 3, 1331)
    p = exact.start_params()
    assert exact.loglike(p) == pytest.approx(full.loglike(p), abs=1e-6)


def test_ws_re_formula_intercept_is_todays_model(mixwild_cases):
    (data, spec), est = mixwild_cases["small"]
    spec = dict(spec)
    formula, groups = spec.pop("formula"), spec.pop("groups")
    res = MELS.from_formula(formula, data, groups, ws_re_formula="~ 1", **spec).fit()
    assert res.model.layout.mixwild_view
    assert res.llf == pytest.approx(est[2]["llf"], abs=1e-5)


def test_london_recovery_within_three_standard_errors(scale_slope_fit):
    res, _, _ = scale_slope_fit
    assert res.converged
    truth = LONDON_SCALE_SLOPE_TRUE
    for (block, term), value in res.params.items():
        z = (value - truth[block][term]) / res.bse[(block, term)]
        assert abs(z) < 3, (block, term, value, truth[block][term])


def test_plan_and_summary_say_how_it_integrates(scale_slope_fit):
    res, _, _ = scale_slope_fit
    plan = res.model.plan
    assert (plan.method, plan.dim, plan.n_points, plan.n_nodes) == ("exact-location", 2, 7, 49)
    assert plan.unit_level_scale
    text = res.summary().as_text()
    assert "2-D, 7x7 = 49 nodes per group" in text
    assert "L(omega:prior,omega:prior)" in text and "var(omega:prior)" in text


def test_cov_re_is_the_labelled_joint_covariance(scale_slope_fit):
    res, _, _ = scale_slope_fit
    cov = res.cov_re
    labels = ["location:Intercept", "scale:Intercept", "scale:prior"]
    assert list(cov.index) == labels and list(cov.columns) == labels
    L = res.model.layout.chol_matrix(res.params.to_numpy())
    sigma = L @ L.T
    sd_u = np.exp(0.5 * res.params[("alpha", "Intercept")])
    sigma[0, :] *= sd_u
    sigma[:, 0] *= sd_u
    np.testing.assert_allclose(cov.to_numpy(), sigma, rtol=1e-12)
    rp = res.random_params()
    assert rp.loc["var(omega:prior)", "estimate"] == pytest.approx(cov.iloc[2, 2])
    assert rp.loc["corr(omega,omega:prior)", "std_error"] > 0


def test_random_effects_of_every_effect(scale_slope_fit):
    res, _, truth = scale_slope_fit
    re = res.random_effects()
    for col in ("u_mean[Intercept]", "omega_mean", "omega_mean[prior]", "omega_sd[prior]",
                "cov[omega,omega:prior]", "cov[Intercept,omega:prior]"):  # fmt: skip
        assert col in re.columns and np.isfinite(re[col]).all(), col
    # the grid posterior and the likelihood's own quadrature agree
    state = res.fit_state
    ev = res.model.objective().evaluate(state.theta, centers=state.evaluation.centers)
    np.testing.assert_allclose(re["omega_mean[prior]"], ev.ex[:, 2], atol=2e-5)
    np.testing.assert_allclose(re["omega_mean"], ev.ex[:, 1], atol=2e-5)
    # and they track the true school effects
    t = truth.loc[re.index]
    assert stats.pearsonr(re["omega_mean[prior]"], t["omega[prior]"])[0] > 0.6
    assert stats.pearsonr(re["omega_mean"], t["omega"])[0] > 0.8


def test_school_variance_at_given_prior_attainment(scale_slope_fit):
    res, data, truth = scale_slope_fit
    se = res.school_effects(at={"prior": [-1, 0, 1]})
    for x in ("-1", "0", "1"):
        for suffix in ("", "_sd", "_lower", "_upper", "_rank", "_separated"):
            assert f"variance[prior={x}]{suffix}" in se.columns
    refs = se.attrs["at_references"]
    tau = res.params["tau"]
    assert refs["variance[prior=1]"] == pytest.approx(np.exp(tau["Intercept"] + tau["prior"]))
    # at the mean of prior, the at-column is the default school variance
    mean_prior = float(data["prior"].mean())
    se2 = res.school_effects(at={"prior": [mean_prior]})
    np.testing.assert_allclose(se2[f"variance[prior={mean_prior:g}]"], se2["variance"], rtol=1e-6)
    # schools whose variance falls faster with prior have a larger true scale slope
    ratio = np.log(se["variance[prior=1]"] / se["variance[prior=-1]"])
    t = truth.loc[se.index]
    assert stats.spearmanr(ratio, t["omega[prior]"])[0] > 0.6
    assert (se["variance[prior=1]_lower"] < se["variance[prior=1]"]).all()
    # ws_reference moves the random scale slope's covariate with the WS term
    ref = res.school_effects(ws_reference={"prior": 1.0})
    np.testing.assert_allclose(ref["variance"], se["variance[prior=1]"], rtol=1e-12)


def test_at_names_a_known_term():
    data = small_data(n_schools=30)
    res = MELS.from_formula("y ~ prior", data, "school", **SLOPE).fit()
    with pytest.raises(MELSInputError, match="'fsm'.*not a term"):
        res.school_effects(at={"fsm": [0, 1]})


def test_compare_tests_the_added_scale_slope_with_the_chi_bar_square(scale_slope_fit):
    res, data, _ = scale_slope_fit
    m3 = MELS.from_formula("y ~ prior", data, "school", ws_formula="~ prior").fit()
    table = melsml.compare(m3, res, names=["model 3", "scale slope"])
    row = table.loc["scale slope"]
    assert row["df"] == 3
    assert "50:50" in row["test"] and "chi2(2) and chi2(3)" in row["test"]
    stat = 2 * (res.llf - m3.llf)
    expected = 0.5 * stats.chi2.sf(stat, 2) + 0.5 * stats.chi2.sf(stat, 3)
    assert row["p_value"] == pytest.approx(expected)
    assert row["p_value"] < 1e-10


def test_no_slope_variance_in_truth_gives_a_boundary_warning():
    random = {"L(omega,Intercept)": -0.12, "L(omega,omega)": 0.22}
    data = small_data(seed=3, n_schools=80, random=random)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = MELS.from_formula("y ~ prior", data, "school", **SLOPE).fit()
    assert np.isfinite(res.params).all() and np.isfinite(res.llf)
    assert res.converged
    assert abs(res.params[("random", "L(omega:prior,omega:prior)")]) < 1e-3
    boundary = [w for w in caught if issubclass(w.category, BoundaryWarning)]
    assert boundary and "L(omega:prior,omega:prior)" in str(boundary[0].message)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(ws_re_formula="~ 1 + nosuch"), "ws_re_formula.*nosuch"),
        (dict(ws_re_formula="~ 1 + level"), "'level' is constant within every group"),
        (dict(ws_re_formula="~ 1 + prior + x2 + x3"), "cannot identify"),
        (dict(ws_re_formula="~ 1 + prior", random_scale=False), "random_scale=False"),
        (dict(ws_re_formula="~ 1 + prior", association="quadratic"), "quadratic"),
    ],
)
def test_bad_scale_designs_are_named(kwargs, match):
    rng = np.random.default_rng(0)
    n_groups, size = 30, 3
    data = pd.DataFrame(
        {
            "g": np.repeat(np.arange(n_groups), size),
            "y": rng.normal(size=n_groups * size),
            "prior": rng.normal(size=n_groups * size),
            "x2": rng.normal(size=n_groups * size),
            "x3": rng.normal(size=n_groups * size),
            "level": np.repeat(rng.normal(size=n_groups), size),
        }
    )
    with pytest.raises(MELSInputError, match=match):
        MELS.from_formula("y ~ prior", data, "g", **kwargs)


@pytest.mark.slow
def test_coverage_study_of_scale_slope_intervals():
    """Multi-seed study (``pytest -m slow``): 95% Wald intervals of the scale-slope
    model cover the true values in 80-100% of 40 replications of 150 schools."""
    covered = []
    for seed in range(40):
        data = small_data(seed=20_000 + seed, n_schools=150)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = MELS.from_formula("y ~ prior", data, "school", **SLOPE).fit()
        ci = res.conf_int()
        truth = np.array([LONDON_SCALE_SLOPE_TRUE[b][t] for b, t in res.params.index])
        covered.append((ci["lower"].to_numpy() <= truth) & (truth <= ci["upper"].to_numpy()))
    rate = np.mean(covered, axis=0)
    assert np.all(rate >= 0.8), rate


def test_mixwild_cannot_take_a_scale_slope(tmp_path):
    data = small_data(n_schools=20)
    m = MELS.from_formula("y ~ prior", data, "school", **SLOPE)
    with pytest.raises(MELSInputError, match="no random scale slopes"):
        mixwild.write(m, folder=tmp_path)
