"""Ordinal outcomes: lme4 / ordinal references, brute-force integrals, scores,
recovery with 9 grades, and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from reference.censored_ref import ordinal_loglik_brute

from melsml import MELS, compare, simulate_london
from melsml.exceptions import MELSInputError, MissingDataWarning
from melsml.ordinal import thresholds, thresholds_raw
from melsml.simulate import LONDON_TRUE

DATA = Path(__file__).parent / "data" / "ordinal"


@pytest.fixture(scope="module")
def ordinal_data():
    return pd.read_csv(DATA / "ordinal.csv")


@pytest.fixture(scope="module")
def reference():
    return pd.read_csv(DATA / "reference.csv").set_index(["model", "quantity"])["value"]


@pytest.mark.parametrize("link", ["probit", "logit"])
def test_five_categories_equal_clmm(ordinal_data, reference, link):
    res = MELS.from_formula(f"cat5_{link} ~ x", ordinal_data, "g", family="ordinal",
                            link=link, random_scale=False, n_points=25).fit()  # fmt: skip
    ref = reference[f"clmm_{link}"]
    assert res.llf == pytest.approx(ref["llf"], rel=1e-8)
    gamma = [ref[f"threshold_{j}"] for j in range(1, 5)]
    assert res.thresholds.to_numpy() == pytest.approx(gamma, abs=1e-4)
    assert res.params[("beta", "x")] == pytest.approx(ref["x"], abs=1e-4)
    assert res.random_params().loc["var_u", "estimate"] == pytest.approx(ref["var_u"], rel=1e-3)


@pytest.mark.parametrize("link", ["probit", "logit"])
def test_two_categories_equal_glmer(ordinal_data, reference, link):
    res = MELS.from_formula(f"bin_{link} ~ x", ordinal_data, "g", family="ordinal",
                            link=link, random_scale=False, n_points=25).fit()  # fmt: skip
    ref = reference[f"glmer_{link}"]
    assert res.llf == pytest.approx(ref["llf"], rel=1e-8)
    # binary: the threshold is minus glmer's intercept
    assert -res.thresholds.iloc[0] == pytest.approx(ref["intercept"], abs=1e-4)
    assert res.params[("beta", "x")] == pytest.approx(ref["x"], abs=1e-4)
    assert res.random_params().loc["var_u", "estimate"] == pytest.approx(ref["var_u"], rel=1e-3)


def _small(link):
    rng = np.random.default_rng(3)
    n_groups, size = 12, 6
    df = pd.DataFrame({"g": np.repeat(np.arange(n_groups), size),
                       "x": rng.normal(size=n_groups * size),
                       "s": rng.normal(size=n_groups * size)})  # fmt: skip
    u = np.repeat(rng.normal(scale=0.6, size=n_groups), size)
    e = rng.standard_normal(len(df)) if link == "probit" else rng.logistic(size=len(df))
    df["y"] = 1 + np.searchsorted([-0.8, 0.0, 0.9], 0.7 * df.x + u + e)
    return df


@pytest.mark.parametrize("link", ["probit", "logit"])
@pytest.mark.parametrize("random_scale", [True, False])
def test_loglik_equals_brute_force_integral(link, random_scale):
    df = _small(link)
    m = MELS.from_formula("y ~ x", df, "g", family="ordinal", link=link, bs_formula="~ s",
                          ws_formula="~ x", random_scale=random_scale, n_points=15)  # fmt: skip
    theta = np.r_[0.7, -0.8, np.log(0.8), np.log(0.9), np.log(0.3), 0.2, 0.2,
                  [-0.3, 0.4] if random_scale else []]  # fmt: skip
    ll = m.objective().evaluate(theta, score=False).ll_groups
    d, p = m.design, m.layout.unpack(theta)
    brute = ordinal_loglik_brute(
        d.y, d.x_mean @ p["beta"], thresholds(p["thresholds"]), d.x_ws @ p["tau"],
        np.exp(0.5 * d.x_bs @ p["alpha"]), np.repeat(np.arange(d.n_groups), d.group_sizes),
        p["tau_l"], p["sigma_omega"], link,
    )  # fmt: skip
    assert ll == pytest.approx(brute, abs=1e-6)


@pytest.mark.parametrize("link", ["probit", "logit"])
def test_score_matches_finite_differences(link):
    m = MELS.from_formula("y ~ x", _small(link), "g", family="ordinal", link=link,
                          bs_formula="~ s", ws_formula="~ x", n_points=21)  # fmt: skip
    obj = m.objective()
    theta = m.start_params().to_numpy() + 0.05
    score = obj.evaluate(theta).score
    fd = np.array([(obj.loglike(theta + h) - obj.loglike(theta - h)) / 2e-6
                   for h in 1e-6 * np.eye(theta.size)])  # fmt: skip
    assert score == pytest.approx(fd, rel=1e-4, abs=1e-4)
    groups = obj.score_groups(theta)
    assert groups.sum(axis=0) == pytest.approx(score, rel=1e-10, abs=1e-10)


def _nine_grades_data(**size):
    """Model 3's latent score cut into 9 grades at -2, -1.5, ..., 2 residual SDs."""
    data = simulate_london(3, seed=7, **size)
    sigma0 = np.exp(0.5 * LONDON_TRUE["tau"]["Intercept"])
    data["grade"] = 1 + np.searchsorted(np.linspace(-2.0, 2.0, 8), data["y"] / sigma0)
    return data


def _nine_grades(**size):
    """Model 3 with the latent score cut into 9 grades (probit): every parameter
    within 3 SE.  In the ordinal model's units (WS intercept 0) the truth is the
    Gaussian truth divided by the residual SD sigma_0."""
    data = _nine_grades_data(**size)
    sigma0 = np.exp(0.5 * LONDON_TRUE["tau"]["Intercept"])
    cuts = np.linspace(-2.0, 2.0, 8)
    res = MELS.from_formula("grade ~ prior", data, "school", family="ordinal",
                            ws_formula="~ prior").fit()  # fmt: skip
    t = LONDON_TRUE
    truth = {
        ("beta", "prior"): t["beta"]["prior"] / sigma0,
        ("alpha", "Intercept"): t["alpha"]["Intercept"] - t["tau"]["Intercept"],
        ("tau", "prior"): t["tau"]["prior"],
        ("random", "tau_l"): t["random"]["tau_l"],
        ("random", "sigma_omega"): t["random"]["sigma_omega"],
    }
    truth = pd.Series(truth)
    z = (res.params[truth.index] - truth) / res.bse[truth.index]
    assert (z.abs() < 3).all(), z
    se_gamma = res.bse["thresholds"].iloc[0]
    assert res.thresholds.to_numpy() == pytest.approx(cuts, abs=3 * max(se_gamma, 0.02))
    assert "9 categories" in str(res.summary())


def test_nine_grades_recover_the_truth():
    _nine_grades(n_schools=150, n_students=15000)


@pytest.mark.slow
def test_nine_grades_recover_the_truth_london_sized():
    _nine_grades()


def test_random_scale_lr_test(ordinal_data):
    kw = dict(family="ordinal", link="probit")
    m1 = MELS.from_formula("cat5_probit ~ x", ordinal_data, "g", random_scale=False, **kw).fit()
    m2 = MELS.from_formula("cat5_probit ~ x", ordinal_data, "g", **kw).fit()
    row = compare(m1, m2).iloc[-1]
    assert row["df"] == 2 and "mixture" in row["test"]


def test_bad_input(ordinal_data):
    df = ordinal_data
    with pytest.raises(MELSInputError, match="integer category codes"):
        MELS.from_formula("x ~ 1", df, "g", family="ordinal")
    with pytest.raises(MELSInputError, match="single category"):
        MELS.from_formula("one ~ x", df.assign(one=1), "g", family="ordinal")
    with pytest.raises(MELSInputError, match="censoring applies"):
        MELS.from_formula("cat5_probit ~ x", df, "g", family="ordinal", censoring=(1, 5))
    with pytest.raises(MELSInputError, match="link"):
        MELS.from_formula("cat5_probit ~ x", df, "g", family="ordinal", link="cloglog")
    with pytest.raises(MELSInputError, match="family"):
        MELS.from_formula("cat5_probit ~ x", df, "g", family="poisson")


def test_mixwild_ordinal_engine_reference():
    """MixWILD's MIXORS engine on the SBM data (7 categories, logit, random scale):
    the same maximum; its log-SD scale is half melsml's log-variance scale."""
    ref_dir = Path(__file__).parent / "data" / "mixwild"
    data = pd.read_csv(ref_dir / "sbm_mels" / "sbm.csv")
    data = data[data["PA_Ord"] != -99]
    est = pd.read_csv(ref_dir / "sbm_ordinal_mixors" / "estimates.EST", sep=r"\s{2,}",
                      header=None, engine="python")[1].to_numpy()  # fmt: skip
    m = MELS.from_formula("PA_Ord ~ Day_C", data, "ID", family="ordinal", link="logit",
                          ws_formula="~ Day_C")  # fmt: skip
    res = m.fit()
    mixwild_llf = -6107.00234 / 2
    assert res.llf == pytest.approx(mixwild_llf, abs=5e-4)
    beta, gamma, alpha, tau, tau_l, sigma_omega = est[1], est[2:8], est[8], *est[9:12]
    assert res.params[("beta", "Day_C")] == pytest.approx(beta, abs=2e-3)
    assert res.thresholds.to_numpy() == pytest.approx(gamma, abs=2e-3)
    assert res.params[("alpha", "Intercept")] == pytest.approx(alpha, abs=2e-3)
    assert res.params[("tau", "Day_C")] == pytest.approx(2 * tau, abs=2e-3)
    assert res.params[("random", "tau_l")] == pytest.approx(2 * tau_l, abs=2e-3)
    assert res.params[("random", "sigma_omega")] == pytest.approx(2 * sigma_omega, abs=2e-3)
    # melsml's likelihood at MixWILD's estimates is MixWILD's, and below melsml's maximum
    p = pd.Series(res.params)
    p[:] = np.r_[beta, thresholds_raw(gamma), alpha, 2 * tau, 2 * tau_l, 2 * sigma_omega]
    at_mixwild = m.loglike(p)
    assert at_mixwild == pytest.approx(mixwild_llf, abs=5e-4)
    assert at_mixwild <= res.llf + 1e-9


def test_mixwild_ordinal_definition_file_is_read():
    ref_dir = Path(__file__).parent / "data" / "mixwild" / "sbm_ordinal_mixors"
    with pytest.warns(MissingDataWarning, match="dropped 2 of 2111"):
        m = MELS.from_mixwild(ref_dir / "model.def")
    assert m.options.family == "ordinal" and m.options.link == "logit"
    assert m.layout.thresholds == ("1/2", "2/3", "3/4", "4/5", "5/6", "6/7")
    assert m.plan.n_points == 11
    assert any("log-SD scale" in note for note in m.notes)
    assert m.fit().llf == pytest.approx(-6107.00234 / 2, abs=5e-4)


def test_ordinal_models_round_trip_through_mixwild_files(tmp_path):
    from melsml import mixwild

    df = _small("logit").assign(y=lambda f: 10 * f["y"])  # codes 10, 20, 30, 40
    m = MELS.from_formula("y ~ x", df, "g", family="ordinal", link="logit",
                          bs_formula="~ s", ws_formula="~ x")  # fmt: skip
    def_path, _ = mixwild.write(m, folder=tmp_path)
    back = MELS.from_mixwild(def_path)
    assert back.options.link == "logit"
    assert list(back.design.categories) == [10, 20, 30, 40]
    theta = m.start_params().to_numpy()
    assert back.loglike(theta) == pytest.approx(m.loglike(theta), rel=1e-10)


def test_identical_units_collapse_with_frequency_weights():
    from melsml.formula import collapse_duplicates
    from melsml.likelihood import MELSObjective

    rng = np.random.default_rng(11)
    n_groups, size = 40, 30
    df = pd.DataFrame({"g": np.repeat(np.arange(n_groups), size),
                       "sex": rng.integers(0, 2, n_groups * size),
                       "band": rng.integers(0, 3, n_groups * size)})  # fmt: skip
    u = np.repeat(rng.normal(scale=0.5, size=n_groups), size)
    latent = 0.5 * df.sex - 0.4 * df.band + u + rng.standard_normal(len(df))
    df["grade"] = 1 + np.searchsorted([-1.0, 0.0, 1.0], latent)
    m = MELS.from_formula("grade ~ sex + C(band)", df, "g", family="ordinal",
                          ws_formula="~ sex")  # fmt: skip
    small = collapse_duplicates(m.design)
    assert small is not None and small.n_obs < 0.5 * m.design.n_obs
    assert small.unit_weights.sum() == m.design.n_obs
    theta = m.start_params().to_numpy() + 0.05
    full = m.objective().evaluate(theta)
    merged = MELSObjective(small, m.layout, m.options).evaluate(theta)
    assert merged.llf == pytest.approx(full.llf, rel=1e-12)
    assert merged.score == pytest.approx(full.score, rel=1e-9, abs=1e-9)
    res = m.fit()
    assert res.nobs == len(df) and res.converged
    assert res.llf == pytest.approx(m.loglike(res.params), rel=1e-12)


def test_coarse_start_and_forward_hessian_reach_the_plain_fit():
    """An ordinal fit runs its quasi-Newton phase on the 7-point rule and takes
    the Hessian from forward differences; plain BFGS + Newton on the model's
    own rule with the central-difference Hessian gives the same fit."""
    from melsml.optimize import maximize, numerical_hessian

    df = _nine_grades_data(n_schools=60, n_students=3000)
    m = MELS.from_formula("grade ~ prior", df, "school", family="ordinal", ws_formula="~ prior")
    res = m.fit()
    obj = m.objective()
    theta, hess, info = maximize(obj, m.start_params().to_numpy())
    assert info.converged and res.converged
    assert res.llf == pytest.approx(obj.loglike(theta), abs=1e-8)
    se_plain = np.sqrt(np.diag(np.linalg.inv(-numerical_hessian(obj, theta))))
    assert res.bse.to_numpy() == pytest.approx(se_plain, rel=1e-4)
    assert res.params.to_numpy() == pytest.approx(theta, abs=1e-4 * se_plain.min())


def test_scale_slope_predictions_agree_with_school_variances():
    """Ordinal with a random scale slope: the conditional variance prediction of
    a student with prior -1 in school j is school j's variance at prior = -1,
    and the schools' mean columns do not depend on ``at``."""
    df = _nine_grades_data(n_schools=40, n_students=2000)
    m = MELS.from_formula("grade ~ prior", df, "school", family="ordinal",
                          ws_formula="~ prior", ws_re_formula="~ 1 + prior")  # fmt: skip
    res = m.fit()
    se = res.school_effects(at={"prior": [-1.0]})
    rows = pd.DataFrame({"school": se.index, "prior": -1.0})
    pred = res.predict(rows, kind="variance", conditional=True)
    assert pred.to_numpy() == pytest.approx(se["variance[prior=-1]"].to_numpy(), rel=1e-10)
    plain = res.school_effects()
    assert se["mean"].to_numpy() == pytest.approx(plain["mean"].to_numpy(), rel=1e-12)
    eb = res.random_effects()
    assert {"omega_mean", "omega_mean[prior]", "cov[omega,omega:prior]"} <= set(eb.columns)


def test_model3_school_effects_at_covariates():
    """Model 3 (MixWILD's view): ``at`` takes the grid over all effects, whose
    means equal the 2-D grid's."""
    df = _nine_grades_data(n_schools=40, n_students=2000)
    res = MELS.from_formula("grade ~ prior", df, "school", family="ordinal",
                            ws_formula="~ prior").fit()  # fmt: skip
    a, b = res.school_effects(), res.school_effects(at={"prior": [0.0, 1.0]})
    assert b["mean"].to_numpy() == pytest.approx(a["mean"].to_numpy(), abs=1e-8)
    assert b["variance[prior=0]"].to_numpy() == pytest.approx(a["variance"].to_numpy(), rel=1e-6)
