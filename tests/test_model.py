"""End-to-end fits: MixWILD reference results and the statsmodels MixedLM identity."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from conftest import load_case

from melsml import MELS, MELSInputError, simulate_london

# the three models MixWILD's stage 1 fits, in the order of its .EST blocks
MIXWILD_MODELS = [
    dict(random_scale=False, ws_formula="~ 1"),
    dict(random_scale=False),
    dict(random_scale=True),
]


def fit_case(name: str, **overrides):
    data, spec = load_case(name)
    spec = {**spec, **overrides}
    rs = spec.pop("random_scale", True)
    return MELS.from_formula(
        spec.pop("formula"), data, spec.pop("groups"), random_scale=rs, **spec
    ).fit()


@pytest.mark.parametrize("name", ["small", "sbm_mels"])
@pytest.mark.parametrize("block", [0, 1, 2])
def test_matches_mixwild_exactly(mixwild_cases, name, block):
    """llf and estimates to MixWILD's printed digits; SEs to 0.1% (observed information)."""
    ref = mixwild_cases[name][1][block]
    res = fit_case(name, **MIXWILD_MODELS[block])
    assert res.converged
    assert res.llf == pytest.approx(ref["llf"], abs=1e-5)
    np.testing.assert_allclose(res.params.to_numpy(), ref["est"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(res.bse.to_numpy(), ref["se"], rtol=1e-3)


def test_riesby_matches_mixwild_within_its_quadrature_error(mixwild_cases):
    """MixWILD's 11-point quadrature is not converged on riesby's small groups
    (tests/data/mixwild/PROVENANCE.md): melsml reaches the converged maximum."""
    ref = mixwild_cases["riesby"][1][2]
    res = fit_case("riesby")
    assert res.llf == pytest.approx(-1122.2946, abs=1e-4)
    assert 0 < res.llf - ref["llf"] < 0.003
    np.testing.assert_allclose(res.params.to_numpy(), ref["est"], rtol=1e-2)
    np.testing.assert_allclose(res.bse.to_numpy(), ref["se"], rtol=0.02)
    assert res.params[("random", "sigma_omega")] == pytest.approx(0.65885, abs=1e-5)


@pytest.mark.parametrize("name", ["riesby", "small"])
def test_riesby_no_scale_models_match_mixwild(mixwild_cases, name):
    for block in (0, 1):
        ref = mixwild_cases[name][1][block]
        res = fit_case(name, **MIXWILD_MODELS[block])
        assert res.llf == pytest.approx(ref["llf"], abs=1e-5)
        np.testing.assert_allclose(res.params.to_numpy(), ref["est"], rtol=1e-4, atol=2e-5)


def mixedlm_fit(data, formula, groups):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return smf.mixedlm(formula, data, groups=data[groups]).fit(
            reml=False, method="bfgs", gtol=1e-10
        )


@pytest.mark.parametrize("source", ["simulated", "riesby"])
def test_model1_equals_statsmodels_mixedlm_ml(source):
    """Random intercept, constant residual variance, no random scale = MixedLM (ML)."""
    if source == "simulated":
        data = simulate_london(3, seed=11, n_schools=120, n_students=12000)
        formula, groups = "y ~ prior", "school"
    else:
        data, spec = load_case("riesby")
        formula, groups = spec["formula"], spec["groups"]
    res = MELS.from_formula(formula, data, groups, random_scale=False).fit()
    sm = mixedlm_fit(data, formula, groups)
    var_u = float(sm.cov_re.iloc[0, 0])
    # the same log-likelihood function: melsml's value at statsmodels' estimates
    sm_as_mels = np.r_[sm.fe_params.to_numpy(), np.log(var_u), np.log(sm.scale)]
    assert res.model.loglike(sm_as_mels) == pytest.approx(sm.llf, rel=1e-10)
    # ... and the same maximum
    assert res.llf == pytest.approx(sm.llf, rel=1e-9)
    assert res.llf >= sm.llf - 1e-10
    beta = res.params["beta"].to_numpy()
    np.testing.assert_allclose(beta, sm.fe_params.to_numpy(), rtol=1e-6, atol=1e-6)
    assert np.exp(res.params[("tau", "Intercept")]) == pytest.approx(sm.scale, rel=1e-6)
    assert np.exp(res.params[("alpha", "Intercept")]) == pytest.approx(var_u, rel=1e-5)
    np.testing.assert_allclose(res.bse["beta"].to_numpy(), sm.bse_fe.to_numpy(), rtol=1e-4)


def test_random_scale_fits_are_invariant_to_row_order_and_group_labels():
    data = simulate_london(3, seed=5, n_schools=40, n_students=2400)
    res_a = MELS.from_formula("y ~ prior", data, "school", ws_formula="~ prior").fit()
    shuffled = data.sample(frac=1.0, random_state=3).reset_index(drop=True)
    shuffled["school"] = "s" + (1000 - shuffled["school"]).astype(str)
    res_b = MELS.from_formula("y ~ prior", shuffled, "school", ws_formula="~ prior").fit()
    assert res_a.llf == pytest.approx(res_b.llf, rel=1e-10, abs=1e-8)
    np.testing.assert_allclose(res_a.params.to_numpy(), res_b.params.to_numpy(), atol=1e-6)


def test_aghq_path_agrees_with_exact_location_path():
    data, spec = load_case("small")
    formula, groups = spec.pop("formula"), spec.pop("groups")
    fast = MELS.from_formula(formula, data, groups, **spec).fit()
    general = MELS.from_formula(formula, data, groups, integration="aghq", **spec).fit()
    # 11 points: the 2-D rule is a little less accurate (as MixWILD's, whose llf it matches)
    assert general.llf == pytest.approx(fast.llf, abs=1e-5)
    np.testing.assert_allclose(general.params.to_numpy(), fast.params.to_numpy(), atol=1e-4)
    np.testing.assert_allclose(general.bse.to_numpy(), fast.bse.to_numpy(), rtol=1e-3)
    # with enough points both are converged, and agree at the same parameters
    ll = [
        MELS.from_formula(formula, data, groups, integration=integ, n_points=21, **spec).loglike(
            fast.params
        )
        for integ in ("exact-location", "aghq")
    ]
    assert ll[0] == pytest.approx(ll[1], abs=1e-6)


def test_quadratic_association_fits_and_nests_linear():
    data, spec = load_case("small")
    formula, groups = spec.pop("formula"), spec.pop("groups")
    lin = MELS.from_formula(formula, data, groups, integration="aghq", **spec).fit()
    quad = MELS.from_formula(formula, data, groups, association="quadratic", **spec).fit()
    assert quad.converged
    assert ("random", "tau_q") in quad.params.index
    assert quad.llf >= lin.llf - 1e-6
    # tau_q = 0 in the quadratic model reproduces the linear model's likelihood
    at_linear = quad.params.copy()
    for name in ("beta", "alpha", "tau"):
        at_linear[name] = lin.params[name].to_numpy()
    at_linear[("random", "tau_l")] = lin.params[("random", "tau_l")]
    at_linear[("random", "sigma_omega")] = lin.params[("random", "sigma_omega")]
    at_linear[("random", "tau_q")] = 0.0
    assert quad.model.loglike(at_linear) == pytest.approx(lin.llf, abs=1e-9)


def test_association_none_fixes_tau_l():
    data, spec = load_case("small")
    formula, groups = spec.pop("formula"), spec.pop("groups")
    res = MELS.from_formula(formula, data, groups, association="none", **spec).fit()
    assert ("random", "tau_l") not in res.params.index
    lin = MELS.from_formula(formula, data, groups, **spec).fit()
    assert res.llf < lin.llf


def test_london_sized_recovery_within_three_se():
    """Model 3 on London-sized simulated data recovers every parameter."""
    from melsml.simulate import LONDON_TRUE

    data = simulate_london(3, seed=2024)
    assert data["school"].nunique() == 465
    assert 65000 < len(data) < 78000
    res = MELS.from_formula("y ~ prior", data, "school", ws_formula="~ prior").fit()
    assert res.converged
    for (block, term), value in res.params.items():
        truth = LONDON_TRUE[block][term]
        assert abs(value - truth) < 3 * res.bse[(block, term)], (block, term, value, truth)


def test_fit_rejects_bad_options_and_start_values():
    data, spec = load_case("small")
    with pytest.raises(MELSInputError, match="association"):
        MELS.from_formula("y ~ x", data, "group", association="cubic")
    with pytest.raises(MELSInputError, match="integration"):
        MELS.from_formula("y ~ x", data, "group", integration="laplace")
    with pytest.raises(MELSInputError, match="exact-location"):
        MELS.from_formula(
            "y ~ x", data, "group", association="quadratic", integration="exact-location"
        )
    with pytest.raises(MELSInputError, match="n_points"):
        MELS.from_formula("y ~ x", data, "group", n_points=0)
    model = MELS.from_formula("y ~ x", data, "group")
    with pytest.raises(MELSInputError, match="start_params"):
        model.fit(start_params=[0.0, 1.0])
    with pytest.raises(MELSInputError, match="cov_type"):
        model.fit(cov_type="hc0")


def test_robust_covariance_is_close_to_observed_under_the_true_model():
    data, spec = load_case("small")
    formula, groups = spec.pop("formula"), spec.pop("groups")
    res = MELS.from_formula(formula, data, groups, **spec).fit(cov_type="robust")
    assert res.cov_type == "robust"
    obs = np.sqrt(np.diag(res.cov_params("observed")))
    np.testing.assert_allclose(res.bse.to_numpy(), obs, rtol=0.35)
    assert not np.allclose(res.bse.to_numpy(), obs)
    pd.testing.assert_index_equal(res.cov_params().index, res.params.index)


# ------------------------------------------------------------------ random slopes
@pytest.mark.parametrize("source", ["simulated", "riesby"])
def test_model4_equals_statsmodels_mixedlm_ml(source):
    """Random intercept and slope, no random scale = MixedLM (ML) with re_formula."""
    if source == "simulated":
        data = simulate_london(5, seed=3, n_schools=100, n_students=10000)
        formula, groups, slope = "y ~ prior", "school", "prior"
    else:
        data, spec = load_case("riesby")
        formula, groups, slope = "hamd ~ week + endog + endweek", "id", "week"
    res = MELS.from_formula(
        formula, data, groups, re_formula=f"~ 1 + {slope}", random_scale=False
    ).fit()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sm = smf.mixedlm(formula, data, groups=data[groups], re_formula=f"~ {slope}").fit(
            reml=False, method="bfgs", gtol=1e-10
        )
    assert res.llf == pytest.approx(sm.llf, rel=1e-9)
    np.testing.assert_allclose(
        res.params["beta"].to_numpy(), sm.fe_params.to_numpy(), rtol=1e-6, atol=1e-6
    )
    chol = res.model.layout.chol_matrix(res.params.to_numpy())
    np.testing.assert_allclose(chol @ chol.T, sm.cov_re.to_numpy(), rtol=1e-5, atol=1e-8)
    assert np.exp(res.params[("tau", "Intercept")]) == pytest.approx(sm.scale, rel=1e-6)
    # the same likelihood function at statsmodels' estimates
    theta = res.params.copy()
    theta["beta"] = sm.fe_params.to_numpy()
    theta[("tau", "Intercept")] = np.log(sm.scale)
    sm_chol = np.linalg.cholesky(sm.cov_re.to_numpy())
    for (i, j), name in zip(res.model.layout.chol_entries, res.model.layout.random, strict=True):
        theta[("random", name)] = sm_chol[i, j]
    assert res.model.loglike(theta) == pytest.approx(sm.llf, rel=1e-10)


@pytest.mark.parametrize("model,ws", [(5, "~ 1"), (6, "~ prior")])
def test_slope_models_fast_and_general_paths_agree(model, ws):
    data = simulate_london(model, seed=4, n_schools=80, n_students=8000)
    kw = dict(re_formula="~ 1 + prior", ws_formula=ws)
    fast = MELS.from_formula("y ~ prior", data, "school", **kw).fit()
    general = MELS.from_formula("y ~ prior", data, "school", integration="aghq", **kw).fit()
    assert fast.converged and general.converged
    assert general.model.loglike(fast.params) == pytest.approx(fast.llf, abs=1e-6)
    np.testing.assert_allclose(general.params.to_numpy(), fast.params.to_numpy(), atol=1e-4)
    np.testing.assert_allclose(general.bse.to_numpy(), fast.bse.to_numpy(), rtol=1e-3)


@pytest.mark.parametrize("model,ws", [(5, "~ 1"), (6, "~ prior")])
def test_london_sized_slope_models_recover_every_parameter(model, ws):
    from melsml.simulate import LONDON_SLOPE_TRUE

    data = simulate_london(model, seed=2024)
    res = MELS.from_formula(
        "y ~ prior", data, "school", re_formula="~ 1 + prior", ws_formula=ws
    ).fit()
    assert res.converged
    for (block, term), value in res.params.items():
        truth = LONDON_SLOPE_TRUE[block][term]
        assert abs(value - truth) < 3 * res.bse[(block, term)], (block, term, value, truth)


def test_groups_smaller_than_the_number_of_random_effects():
    data = simulate_london(6, seed=5, n_schools=60, n_students=3000)
    singles = data.groupby("school").head(1).iloc[:10].copy()
    singles["school"] += 10_000  # ten one-student schools
    data = pd.concat([data, singles], ignore_index=True)
    res = MELS.from_formula(
        "y ~ prior", data, "school", re_formula="~ 1 + prior", ws_formula="~ prior"
    ).fit()
    assert res.converged
    assert (res.model.design.group_sizes == 1).sum() >= 10
    se = res.school_effects()
    assert se.loc[10_001:, "mean_sd"].min() > se.loc[:10_000, "mean_sd"].median()


def test_slope_variance_on_its_boundary_warns_and_does_not_crash():
    from melsml.simulate import london_covariates

    data = london_covariates(80, 6000, seed=2)
    params = {
        "beta": {"Intercept": 0.0, "prior": 0.5},
        "tau": {"Intercept": -0.7},
        "random": {"L(Intercept,Intercept)": 0.3},
    }
    sim = melsml_simulate(data, params)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = MELS.from_formula(
            "y ~ prior", sim, "school", re_formula="~ 1 + prior", random_scale=False
        ).fit()
    assert np.isfinite(res.llf) and res.converged
    assert abs(res.params[("random", "L(prior,prior)")]) < 1e-3  # no slope variance (seed 3)
    assert any("L(prior,prior)" in str(w.message) for w in caught)
    assert "boundary" in res.fit_info.message
    assert np.isfinite(res.random_params()["estimate"]).all()


def melsml_simulate(data, params):
    from melsml import simulate

    return simulate(data, "school", params, formula="y ~ prior", re_formula="~ 1 + prior", seed=3)


def test_slope_options_are_checked():
    data = simulate_london(5, seed=1, n_schools=20, n_students=1000)
    with pytest.raises(MELSInputError, match="quadratic"):
        MELS.from_formula(
            "y ~ prior", data, "school", re_formula="~ 1 + prior", association="quadratic"
        )
    with pytest.raises(MELSInputError, match="bs_formula"):
        MELS.from_formula("y ~ prior", data, "school", re_formula="~ 1 + prior", bs_formula="~ fsm")
    with pytest.raises(MELSInputError, match="re_formula.*not in the data"):
        MELS.from_formula("y ~ prior", data, "school", re_formula="~ 1 + nope")


def test_too_few_quadrature_points_are_refused_with_the_reason():
    data = simulate_london(3, seed=5, n_schools=30, n_students=2000)
    with pytest.raises(MELSInputError, match="from 5 to 101.*score"):
        MELS.from_formula("y ~ prior", data, "school", n_points=4)


def test_a_start_with_no_random_scale_is_allowed():
    """tau_l = sigma_omega = 0: the likelihood is defined (the closed form) and the
    fit moves off it."""
    data = simulate_london(3, seed=5, n_schools=60, n_students=6000)
    m = MELS.from_formula("y ~ prior", data, "school", ws_formula="~ prior")
    start = m.start_params()
    start[("random", "tau_l")] = 0.0
    start[("random", "sigma_omega")] = 0.0
    closed = MELS.from_formula(
        "y ~ prior", data, "school", ws_formula="~ prior", random_scale=False
    )
    assert m.loglike(start) == pytest.approx(
        closed.loglike(start.drop("random", level=0)), rel=1e-12
    )
    assert np.isfinite(m.objective().score(start.to_numpy())).all()
    res = m.fit(start_params=start)
    assert res.converged and res.llf == pytest.approx(m.fit().llf, abs=1e-6)
