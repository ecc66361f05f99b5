"""The three-level model: exact identities, brute-force integrals, scores,
MixedLM and lme4 references, recovery, and bad input."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from reference.nested_ref import nested_loglik_brute

from melsml import MELS, compare
from melsml.exceptions import BoundaryWarning, MELSInputError
from melsml.simulate import THREE_LEVEL_TRUE, simulate_three_level
from melsml.threelevel import ThreeLevelMELS

PASTES = Path(__file__).parent / "data" / "pastes"


@pytest.fixture(scope="module")
def small():
    return simulate_three_level(30, 6, 25, seed=11)


@pytest.fixture(scope="module")
def fit_small(small):
    m = MELS.from_formula("y ~ prior", small, ["district", "school"], ws_formula="~ prior")
    return m.fit()


def _mixedlm_nested(data, formula, outer, inner):
    """statsmodels' ML fit with an outer random intercept and a nested variance
    component for the inner groups."""
    data = data.assign(_inner=data[outer].astype(str) + "/" + data[inner].astype(str))
    md = smf.mixedlm(formula, data, groups=outer, re_formula="1",
                     vc_formula={"inner": "0 + C(_inner)"})  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return md.fit(reml=False)


def test_random_intercepts_equal_mixedlm_on_simulated_data():
    df = simulate_three_level(25, 5, 12, seed=4)
    res = MELS.from_formula("y ~ prior", df, ["district", "school"], random_scale=False).fit()
    ref = _mixedlm_nested(df, "y ~ prior", "district", "school")
    assert res.llf == pytest.approx(ref.llf, rel=1e-6)
    assert res.params["beta"].to_numpy() == pytest.approx(ref.fe_params.to_numpy(), abs=1e-5)
    cov = res.cov_re
    assert cov["district"].iloc[0, 0] == pytest.approx(ref.cov_re.iloc[0, 0], rel=1e-3)
    assert cov["school"].iloc[0, 0] == pytest.approx(ref.vcomp[0], rel=1e-3)
    assert res.random_params().loc["var_e", "estimate"] == pytest.approx(ref.scale, rel=1e-4)


def test_random_intercepts_on_pastes_equal_mixedlm_and_lme4():
    data = pd.read_csv(PASTES / "pastes.csv")
    ref = pd.read_csv(PASTES / "lme4_reference.csv", header=None, index_col=0)[1]
    res = MELS.from_formula("strength ~ 1", data, ["batch", "cask"], random_scale=False).fit()
    sm = _mixedlm_nested(data, "strength ~ 1", "batch", "cask")
    assert res.llf == pytest.approx(sm.llf, rel=1e-6)
    assert res.llf == pytest.approx(float(ref["llf"]), rel=1e-6)
    assert res.params[("beta", "Intercept")] == pytest.approx(float(ref["intercept"]), rel=1e-6)
    rp = res.random_params()["estimate"]
    assert rp["batch: var(location)"] == pytest.approx(float(ref["var_batch"]), rel=1e-3)
    assert rp["cask: var(location)"] == pytest.approx(float(ref["var_batch:cask"]), rel=1e-3)
    assert rp["var_e"] == pytest.approx(float(ref["var_Residual"]), rel=1e-3)


def _arrays(model: ThreeLevelMELS, theta):
    d, lay = model.design, model.layout
    p = lay.unpack(theta)
    r0 = d.y - d.x_mean @ p["beta"]
    dd = np.exp(d.x_ws @ p["tau"])
    z = np.exp(0.5 * d.x_bs @ p["alpha"])
    school = np.repeat(np.arange(d.n_groups), d.group_sizes)
    district = np.repeat(np.repeat(np.arange(model.n_outer), np.diff(model.outer_ptr)),
                         d.group_sizes)  # fmt: skip
    return r0, dd, z, school, district, lay.kernel_map(p["L3"]), p["tau_l"], p["sigma_omega"]


@pytest.mark.parametrize("random_bs", [False, True])
def test_loglik_equals_brute_force_nested_integral(random_bs):
    df = simulate_three_level(3, 2, 3, seed=5)
    df["x"] = np.random.default_rng(0).normal(size=len(df))
    m = MELS.from_formula("y ~ prior", df, ["district", "school"], bs_formula="~ x",
                          ws_formula="~ prior", random_bs=random_bs, n_points=(9, 15))  # fmt: skip
    theta = np.array([0.1, 0.6, np.log(0.2), 0.3, np.log(0.5), -0.1, -0.2, 0.3,
                      0.3, -0.1, 0.25] + ([0.2, -0.1, 0.2] if random_bs else []))  # fmt: skip
    ll = m.objective().evaluate(theta, score=False).ll_groups
    brute = nested_loglik_brute(*_arrays(m, theta), n_outer=16 if random_bs else 30, n_inner=40)
    assert ll == pytest.approx(brute, abs=1e-6)


@pytest.mark.parametrize("random_bs", [False, True])
def test_score_matches_finite_differences(small, random_bs):
    df = small.assign(x=np.random.default_rng(1).normal(size=len(small)))
    m = MELS.from_formula("y ~ prior", df, ["district", "school"], bs_formula="~ x",
                          ws_formula="~ prior", random_bs=random_bs,
                          n_points=(7, 11))  # fmt: skip
    theta = np.array([0.05, 0.6, np.log(0.07), 0.1, np.log(0.5), -0.1, -0.1, 0.2,
                      0.15, -0.03, 0.1] + ([0.05, 0.02, 0.15] if random_bs else []))  # fmt: skip
    obj = m.objective()
    score = obj.evaluate(theta).score
    fd = np.empty_like(theta)
    for i in range(theta.size):
        h = 1e-5
        tp, tm = theta.copy(), theta.copy()
        tp[i] += h
        tm[i] -= h
        fd[i] = (obj.loglike(tp) - obj.loglike(tm)) / (2 * h)
    assert score == pytest.approx(fd, rel=1e-4, abs=1e-3)


def test_per_district_scores_sum_to_the_score(small):
    m = MELS.from_formula("y ~ prior", small, ["district", "school"], ws_formula="~ prior")
    theta = m._start(m.design)
    ev = m.objective().evaluate(theta, groups=True)
    assert ev.score_groups.shape == (m.n_outer, m.layout.k_params)
    assert ev.score_groups.sum(axis=0) == pytest.approx(ev.score, rel=1e-10, abs=1e-9)


def test_results_do_not_depend_on_the_thread_count(small):
    m = MELS.from_formula("y ~ prior", small, ["district", "school"], ws_formula="~ prior")
    theta = m._start(m.design) + 0.01
    one = m.objective(n_threads=1).evaluate(theta)
    two = m.objective(n_threads=2).evaluate(theta)
    assert one.llf == two.llf
    assert np.array_equal(one.score, two.score)


def test_zero_district_variance_gives_the_two_level_likelihood(small, fit_small):
    """L3 = 0: every district node gives the same inner integrals, so the
    three-level log-likelihood is the two-level one at the same parameters."""
    two = MELS.from_formula("y ~ prior", small.assign(g=small.district + "/" +
                            small.school.astype(str)), "g", ws_formula="~ prior")  # fmt: skip
    p = fit_small.params.copy()
    p["district"] = 0.0
    ll3 = fit_small.model.loglike(p)
    ll2 = two.loglike(np.r_[p["beta"], p["alpha"], p["tau"], p["school"]])
    assert ll3 == pytest.approx(ll2, rel=1e-12, abs=1e-8)


def test_fit_without_district_differences_matches_two_level_fit():
    # data with no district effects; this seed's ML estimate is on the boundary
    params = {**THREE_LEVEL_TRUE, "district": {"L(location,location)": 0.0}}
    df = simulate_three_level(20, 6, 30, params=params, seed=2)
    df["g"] = df.district + "/" + df.school.astype(str)
    with pytest.warns(BoundaryWarning, match="district"):
        res3 = MELS.from_formula("y ~ prior", df, ["district", "school"], ws_formula="~ prior",
                                 random_scale=["school"]).fit()  # fmt: skip
    res2 = MELS.from_formula("y ~ prior", df, "g", ws_formula="~ prior").fit()
    assert res3.llf == pytest.approx(res2.llf, abs=1e-6)
    shared = res2.params.drop("random", level="block").to_numpy()
    assert res3.params.iloc[: shared.size].to_numpy() == pytest.approx(shared, abs=1e-4)
    assert res3.params[("school", "sigma_omega")] == pytest.approx(
        res2.params[("random", "sigma_omega")], abs=1e-4
    )
    table = compare(res2, res3)
    row = table.iloc[-1]
    assert row["lr_stat"] == pytest.approx(0.0, abs=1e-5)
    assert row["df"] == 1 and "mixture of chi2(0) and chi2(1)" in row["test"]
    assert row["added"] == "district[L(location,location)]"
    assert row["p_value"] >= 0.49


def test_results_surface(fit_small):
    res = fit_small
    assert res.converged
    assert set(res.cov_re) == {"district", "school"}
    assert list(res.cov_re["district"].index) == ["location:Intercept", "scale:Intercept"]
    assert res.bse.notna().all()
    assert res.aic == pytest.approx(-2 * res.llf + 2 * res.k_params)
    assert res.n_groups == {"district": 30, "school": res.model.design.n_groups}
    text = str(res.summary())
    assert "district: Cholesky factor" in text and "tau_l" in text
    stab = res.stability()
    assert list(stab.index) == ["location", "scale", "location-scale"]
    cov = res.cov_re
    vu3, vu2 = cov["district"].iloc[0, 0], cov["school"].iloc[0, 0]
    assert stab.loc["location", "estimate"] == pytest.approx(vu3 / (vu3 + vu2))


def test_eb_predictions(fit_small, small):
    res = fit_small
    schools = res.school_effects()
    districts = res.group_effects("district")
    assert len(schools) == res.model.design.n_groups
    assert len(districts) == 30
    # a school's mean includes its district's location effect
    merged = schools.merge(districts[["district", "location"]], on="district")
    assert merged["mean"].to_numpy() == pytest.approx(
        (merged["location"] + merged["mean_own"]).to_numpy(), abs=1e-10
    )
    # EB means track the schools' raw mean residuals
    resid = (
        small.y - res.params[("beta", "Intercept")] - res.params[("beta", "prior")] * small.prior
    )
    raw = resid.groupby([small.district, small.school]).mean().to_numpy()
    assert np.corrcoef(raw, schools["mean"])[0, 1] > 0.9
    assert (schools["mean_sd"] > 0).all()
    assert (schools["variance_lower"] < schools["variance"]).all()


def test_bad_input():
    df = simulate_three_level(5, 3, 5, seed=1)
    df["school_id"] = df.district + "-" + df.school.astype(str)
    bad = df.copy()
    bad.loc[bad.index[0], "district"] = "D004"  # one school listed under two districts
    with pytest.raises(MELSInputError, match="school_id 'D000-1' appears under 2 district"):
        MELS.from_formula("y ~ prior", bad, ["district", "school_id"])
    with pytest.raises(MELSInputError, match="single unit"):
        MELS.from_formula("y ~ prior", df.assign(district="A"), ["district", "school_id"])
    with pytest.raises(MELSInputError, match="every district has a single s"):
        MELS.from_formula("y ~ prior", df.assign(s=df.district), ["district", "s"])
    with pytest.raises(MELSInputError, match="random_scale names 'cohort'"):
        MELS.from_formula("y ~ prior", df, ["district", "school"], random_scale=["cohort"])
    with pytest.raises(MELSInputError, match="weights"):
        MELS.from_formula("y ~ prior", df.assign(w=1.0), ["district", "school"], weights="w")
    with pytest.raises(MELSInputError, match="quadratic"):
        MELS.from_formula("y ~ prior", df, ["district", "school"], association="quadratic")


def test_cohort_labels_within_schools_are_made_unique():
    df = simulate_three_level(8, 4, 10, levels=("school", "cohort"), seed=3)
    m = MELS.from_formula("y ~ prior", df, ["school", "cohort"])
    assert m.design.n_groups == df.groupby(["school", "cohort"]).ngroups
    assert m.n_outer == df.school.nunique()


@pytest.mark.slow
def test_recovery_on_an_england_like_structure():
    """150 districts, ~3,000 schools, ~550,000 students: every parameter within 3 SE."""
    df = simulate_three_level(150, 20, 183, seed=2024)
    res = MELS.from_formula("y ~ prior", df, ["district", "school"], ws_formula="~ prior").fit()
    truth = pd.Series(
        {(b, t): v for b, block in THREE_LEVEL_TRUE.items() for t, v in block.items()}
    )
    z = (res.params - truth.reindex(res.params.index)) / res.bse
    assert (z.abs() < 3).all(), z


def test_rows_with_missing_ids_are_dropped_and_counted():
    from melsml.exceptions import MissingDataWarning

    df = simulate_three_level(10, 4, 10, seed=1)
    df.loc[:4, "school"] = np.nan
    df.loc[10:12, "prior"] = np.nan
    with pytest.warns(MissingDataWarning, match=r"dropped 8 .*district/school: 5, prior: 3"):
        m = MELS.from_formula("y ~ prior", df, ["district", "school"])
    assert m.design.n_obs == len(df) - 8


def test_eb_means_without_random_scales_equal_mixedlm_blups():
    """Without random scales the posterior is Gaussian: the EB means of the
    district effects and the schools' own effects are MixedLM's BLUPs."""
    df = simulate_three_level(25, 5, 12, seed=4)
    res = MELS.from_formula("y ~ prior", df, ["district", "school"], random_scale=False).fit()
    ref = _mixedlm_nested(df, "y ~ prior", "district", "school")
    assert res.llf == pytest.approx(ref.llf, rel=1e-8)
    districts = res.group_effects("district").set_index("district")
    schools = res.school_effects()
    blup = ref.random_effects
    for k, row in districts.iterrows():
        assert row["mean"] == pytest.approx(blup[k].iloc[0], abs=5e-5)
    for _, row in schools.iterrows():
        own = blup[row["district"]][f"inner[C(_inner)[{row['district']}/{row['school']}]]"]
        assert row["mean_own"] == pytest.approx(own, abs=5e-5)
