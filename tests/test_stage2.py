"""Stage 2: the replications, their combination, MixWILD's references, bad input."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from melsml import MELS, MELSInputError, MissingDataWarning, simulate_london
from melsml import stage2 as stage2_module
from melsml.mixwild import read_stage2_output
from melsml.stage2 import combine, effect_draws

REF = Path(__file__).parent / "data" / "mixwild"
FORMULA = "theta1 + theta2 + theta1:theta2"
# the columns of MixWILD's replication files, in melsml's order
NORMAL_COLS = ["Intercept", "Locat_1", "Scale_1", "Locat_1xScale_1", "Residual"]
ORDINAL_COLS = ["Locat_1", "Scale_1", "Locat_1xScale_1", "Threshold_1", "Threshold_2"]


@pytest.fixture(scope="module")
def sbm():
    """Stage 1 (sbm_mels) and the persons' stage-2 outcomes."""
    data = pd.read_csv(REF / "sbm_mels" / "sbm.csv")
    data = data[data["LGA"] != -99]
    res = MELS.from_formula("LGA ~ Day", data, "ID", bs_formula="~ Day", ws_formula="~ Day").fit()
    persons = data.groupby("ID", as_index=False)["HSG"].first()
    # HSG_Ord as the reference README derives it
    persons["HSG_Ord"] = np.select([persons.HSG <= 4.4, persons.HSG <= 4.8], [1, 2], 3)
    return res, persons


@pytest.fixture(scope="module")
def mixwild_draws():
    """MixWILD's own 500 x 72 draws, as a melsml draws frame."""
    raw = pd.read_csv(REF / "sbm_stage2_normal" / "stage2_draws.csv.gz")
    return raw.assign(draw=raw["rep"] - 1).drop(columns="rep")


@pytest.mark.parametrize(
    ("case", "outcome", "family", "cols"),
    [
        ("normal", "HSG", "gaussian", NORMAL_COLS),
        ("ordinal", "HSG_Ord", "ordinal", ORDINAL_COLS),
    ],
)
def test_replaying_mixwilds_draws_reproduces_its_stage2(sbm, mixwild_draws, case, outcome,
                                                        family, cols):  # fmt: skip
    """On MixWILD's own draws (the product column as MixWILD formed it) each
    replication's fit equals MIXREG's / mixors' and the combination equals
    MixWILD's report."""
    res, persons = sbm
    s2 = res.stage2(
        f"{outcome} ~ theta1 + theta2 + theta1_theta2", persons, family=family,
        draws=mixwild_draws, combine="mixwild",
    )  # fmt: skip
    reps = pd.read_csv(REF / f"sbm_stage2_{case}" / "stage2_replications.csv")
    est = reps[[f"est_{c}" for c in cols]].to_numpy()
    var = reps[[f"var_{c}" for c in cols]].to_numpy()
    np.testing.assert_allclose(s2.replications.to_numpy(), est, rtol=0, atol=1e-6)
    np.testing.assert_allclose(s2.replication_llf, reps["logL"], rtol=0, atol=1e-6)
    # MIXREG writes 7 significant digits of the variances, mixors 4
    rtol = 1e-6 if family == "gaussian" else 1e-3
    np.testing.assert_allclose(s2.replication_bse.to_numpy() ** 2, var, rtol=rtol)
    report = read_stage2_output(REF / f"sbm_stage2_{case}" / "stage2.out")
    # MixWILD prints 5 decimals; the thresholds are labelled by their upper category
    np.testing.assert_allclose(s2.params.to_numpy(), report["estimate"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(s2.bse.to_numpy(), report["std_error"], rtol=0, atol=1e-5)
    assert s2.llf == pytest.approx(report.attrs["llf"], abs=1e-3)
    assert s2.llf_sd == pytest.approx(report.attrs["llf_sd"], abs=1e-3)


# 4 Monte Carlo SDs of a 500-draw result (the reference README)
MC_TOL = {
    "normal": [0.0015, 0.004, 0.006, 0.007, 0.0013],
    "ordinal": [0.02, 0.026, 0.033, 0.01, 0.009],
}


@pytest.mark.parametrize(
    ("case", "outcome", "family"),
    [("normal", "HSG", "gaussian"), ("ordinal", "HSG_Ord", "ordinal")],
)
def test_own_mixwild_draws_agree_with_mixwild(sbm, case, outcome, family):
    """draws="mixwild": independent draws of MixWILD's kind reproduce its stage 2
    within 4 Monte Carlo SDs, SEs within 5%, mean log-likelihood within 0.3."""
    res, persons = sbm
    s2 = res.stage2(f"{outcome} ~ {FORMULA}", persons, family=family, n_draws=500, seed=7,
                    draws="mixwild")  # fmt: skip
    report = read_stage2_output(REF / f"sbm_stage2_{case}" / "stage2.out")
    assert s2.combine == "mixwild"
    np.testing.assert_array_less(
        np.abs(s2.params.to_numpy() - report["estimate"].to_numpy()), MC_TOL[case]
    )
    np.testing.assert_allclose(s2.bse.to_numpy(), report["std_error"], rtol=0.05)
    assert s2.llf == pytest.approx(report.attrs["llf"], abs=0.3)
    assert list(s2.params.index[:3]) == (
        ["Intercept", "theta1", "theta2"] if family == "gaussian" else ["theta1", "theta2",
                                                                          "theta1:theta2"]
    )  # fmt: skip


def test_zero_posterior_sd_and_one_draw_give_the_regression_on_eb_means(sbm, monkeypatch):
    """R = 1 with the posterior SDs forced to 0: the stage-2 fit is the ML
    regression on the EB means (exact identity)."""
    res, persons = sbm
    real = stage2_module._posterior_mixwild

    def degenerate(state, alpha, shift):
        post = dict(real(state, alpha, shift))
        for k in ("theta1_sd", "theta2_sd", "cov_theta12"):
            post[k] = np.zeros_like(post[k])
        return post

    monkeypatch.setattr(stage2_module, "_posterior_mixwild", degenerate)
    s2 = res.stage2(f"HSG ~ {FORMULA}", persons, n_draws=1, draws="normal", seed=3)
    eb = res.random_effects().loc[persons["ID"]]
    x = sm.add_constant(
        np.column_stack([eb.theta1_mean, eb.theta2_mean, eb.theta1_mean * eb.theta2_mean])
    )
    ols = sm.OLS(persons["HSG"].to_numpy(), x).fit()
    n = len(persons)
    s2_ml = ols.ssr / n
    np.testing.assert_allclose(s2.params.to_numpy(), np.r_[ols.params, s2_ml], rtol=1e-12)
    se_ml = np.sqrt(np.diag(ols.cov_params()) * s2_ml / ols.scale)
    np.testing.assert_allclose(s2.bse.to_numpy()[:4], se_ml, rtol=1e-10)
    assert s2.bse.iloc[4] == pytest.approx(np.sqrt(2 * s2_ml**2 / n), rel=1e-12)
    assert s2.llf == pytest.approx(ols.llf, rel=1e-12) and s2.llf_sd == 0.0


def test_rubins_rules_by_hand():
    """Three replications of two parameters, combined by hand."""
    b = np.array([[1.0, 2.0], [2.0, 4.0], [3.0, 3.0]])
    v = np.array([np.diag([0.1, 0.2]), np.diag([0.3, 0.2]), [[0.2, 0.05], [0.05, 0.2]]])
    mean, cov = combine(b, v, "rubin")
    np.testing.assert_allclose(mean, [2.0, 3.0])
    # W = mean of V; B = [[1, 0.5], [0.5, 1]] (divisor 2); T = W + (4/3) B
    w = np.array([[0.2, 0.05 / 3], [0.05 / 3, 0.2]])
    np.testing.assert_allclose(cov, w + 4 / 3 * np.array([[1.0, 0.5], [0.5, 1.0]]))
    _, cov_mw = combine(b, v, "mixwild")
    # MixWILD: sum V / (R - 1) + sum (b - mean)^2 / (R - 1)
    np.testing.assert_allclose(np.diag(cov_mw), [0.6 / 2 + 1.0, 0.6 / 2 + 1.0])
    one_mean, one_cov = combine(b[:1], v[:1])
    np.testing.assert_allclose(one_mean, b[0])
    np.testing.assert_allclose(one_cov, v[0])


def test_posterior_draws_have_the_eb_moments(sbm):
    """draws="posterior" (exact posterior): per group, the draws' means, SDs and
    covariance of theta1, theta2 match the EB moments within Monte Carlo error."""
    res, _ = sbm
    n = 4000
    draws = effect_draws(res, n, seed=11, method="posterior")
    eb = res.random_effects()
    g = draws.groupby("ID")
    mean1, mean2 = g["theta1"].mean(), g["theta2"].mean()
    sd1, sd2 = g["theta1"].std(), g["theta2"].std()
    se = 4.0 / np.sqrt(n)  # 4 Monte Carlo SEs, in posterior SDs
    assert np.all(np.abs(mean1 - eb.theta1_mean) < se * eb.theta1_sd)
    assert np.all(np.abs(mean2 - eb.theta2_mean) < se * eb.theta2_sd)
    assert np.all(np.abs(sd1 / eb.theta1_sd - 1) < 4.0 / np.sqrt(2 * n))
    assert np.all(np.abs(sd2 / eb.theta2_sd - 1) < 4.0 / np.sqrt(2 * n))
    cov = g[["theta1", "theta2"]].cov().xs("theta1", level=1)["theta2"]
    assert np.all(np.abs(cov - eb.cov_theta12) < 5.0 / np.sqrt(n) * eb.theta1_sd * eb.theta2_sd)
    # omega and u follow from theta1, theta2
    p = res.params["random"]
    np.testing.assert_allclose(
        draws["omega"], p["tau_l"] * draws["theta1"] + p["sigma_omega"] * draws["theta2"]
    )


def test_normal_draws_have_the_posterior_covariance_and_mixwilds_the_transpose(sbm):
    res, _ = sbm
    eb = res.random_effects()
    n = 20000
    for method, sign in (("normal", 1.0), ("mixwild", -1.0)):
        draws = effect_draws(res, n, seed=5, method=method)
        g = draws.groupby("ID")
        cov = g[["theta1", "theta2"]].cov().xs("theta1", level=1)["theta2"]
        # MixWILD's z'L has covariance L'L: var(theta1) = L11^2 + L21^2
        l11 = eb.theta1_sd
        l21 = eb.cov_theta12 / l11
        var1 = g["theta1"].var()
        expect = l11**2 if sign > 0 else l11**2 + l21**2
        assert np.all(np.abs(var1 / expect - 1) < 5 * np.sqrt(2 / n))
        expect_cov = eb.cov_theta12 if sign > 0 else l21 * np.sqrt(eb.theta2_sd**2 - l21**2)
        assert np.all(np.abs(cov - expect_cov) < 5 / np.sqrt(n) * l11 * eb.theta2_sd + 1e-12)


def test_other_families_are_statsmodels_fits_of_the_draw(sbm, mixwild_draws):
    """Poisson, nominal and a multilevel linear stage 2 on one draw are the
    statsmodels fits of that draw."""
    res, persons = sbm
    one = mixwild_draws[mixwild_draws["draw"] == 0]
    t = one.set_index("ID").loc[persons["ID"]]
    x = sm.add_constant(t[["theta1"]].to_numpy())
    counts = persons.assign(k=persons["HSG_Ord"] - 1)
    pois = res.stage2("k ~ theta1", counts, family="poisson", draws=one)
    ref = sm.GLM(counts["k"].to_numpy(), x, family=sm.families.Poisson()).fit()
    np.testing.assert_allclose(pois.params, ref.params, rtol=1e-8)
    np.testing.assert_allclose(pois.bse, ref.bse, rtol=1e-8)
    nom = res.stage2("HSG_Ord ~ theta1", persons, family="nominal", draws=one)
    ref = sm.MNLogit(persons["HSG_Ord"].to_numpy() - 1, x).fit(disp=False)
    np.testing.assert_allclose(nom.params, np.asarray(ref.params).T.ravel(), rtol=1e-6)
    assert list(nom.params.index) == ["Intercept[2]", "theta1[2]", "Intercept[3]", "theta1[3]"]
    # unit-level: each record's positive affect on its person's location effect
    data = pd.read_csv(REF / "sbm_mels" / "sbm.csv")
    data = data[data["LGA"] != -99][["ID", "PA"]]
    ml = res.stage2("PA ~ theta1", data, draws=one, multilevel=True)
    tt = one.set_index("ID").loc[data["ID"]]
    from statsmodels.regression.mixed_linear_model import MixedLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = MixedLM(data["PA"].to_numpy(), sm.add_constant(tt[["theta1"]].to_numpy()),
                      data["ID"].to_numpy()).fit(reml=False)  # fmt: skip
    np.testing.assert_allclose(ml.params.iloc[:2], ref.fe_params, rtol=1e-8)
    assert ml.params["residual variance"] == pytest.approx(ref.scale, rel=1e-8)
    assert np.isnan(ml.bse["residual variance"])


def test_multilevel_ordinal_stage2_is_melsmls_random_intercept_ordinal_fit(sbm, mixwild_draws):
    """One draw, unit-level ordinal outcome: the stage-2 fit is melsml's
    random-intercept cumulative logit fit of that draw (validated against
    ordinal::clmm elsewhere), reported as thresholds and the group variance."""
    res, _ = sbm
    data = pd.read_csv(REF / "sbm_mels" / "sbm.csv")
    data = data[(data["LGA"] != -99) & (data["PA_Ord"] != -99)][["ID", "PA_Ord"]]
    one = mixwild_draws[mixwild_draws["draw"] == 0]
    s2 = res.stage2("PA_Ord ~ theta1", data, family="ordinal", multilevel=True, draws=one)
    work = data.assign(theta1=one.set_index("ID").loc[data["ID"], "theta1"].to_numpy())
    ref = MELS.from_formula("PA_Ord ~ theta1", work, "ID", family="ordinal", link="logit",
                            random_scale=False).fit()  # fmt: skip
    assert s2.llf == pytest.approx(ref.llf, abs=1e-8)
    assert s2.params["theta1"] == pytest.approx(ref.params[("beta", "theta1")], abs=1e-6)
    np.testing.assert_allclose(s2.params.iloc[1:7], ref.thresholds, atol=1e-6)
    alpha, se_alpha = ref.params[("alpha", "Intercept")], ref.bse[("alpha", "Intercept")]
    assert s2.params["group variance"] == pytest.approx(np.exp(alpha), rel=1e-6)
    assert s2.bse["group variance"] == pytest.approx(np.exp(alpha) * se_alpha, rel=1e-5)
    assert s2.bse["theta1"] == pytest.approx(ref.bse[("beta", "theta1")], rel=1e-5)


def test_multilevel_count_stage2_is_the_random_intercept_poisson_fit(sbm, mixwild_draws):
    """One draw, unit-level counts: the stage-2 fit is melsml.glmm's
    random-intercept Poisson fit of that draw (validated against lme4), with
    the group variance sigma^2 and its delta-method SE."""
    from melsml.glmm import PoissonRandomIntercept

    res, _ = sbm
    data = pd.read_csv(REF / "sbm_mels" / "sbm.csv")
    data = data[(data["LGA"] != -99) & (data["PA_Ord"] != -99)][["ID", "PA_Ord"]]
    data["k"] = data["PA_Ord"] - 1
    one = mixwild_draws[mixwild_draws["draw"] == 0]
    s2 = res.stage2("k ~ theta1", data, family="poisson", multilevel=True, draws=one)
    t1 = one.set_index("ID").loc[data["ID"], "theta1"].to_numpy()
    codes = pd.factorize(data["ID"])[0]
    ref = PoissonRandomIntercept(data["k"].to_numpy(), np.column_stack([np.ones(len(t1)), t1]),
                                 codes).fit()  # fmt: skip
    np.testing.assert_allclose(s2.params.iloc[:2], ref.params[:2], atol=1e-6)
    assert s2.params["group variance"] == pytest.approx(ref.params[2] ** 2, rel=1e-6)
    se_sigma = np.sqrt(ref.cov[2, 2])
    assert s2.bse["group variance"] == pytest.approx(2 * ref.params[2] * se_sigma, rel=1e-4)
    assert s2.llf == pytest.approx(ref.llf, abs=1e-6)


def test_multilevel_nominal_stage2_is_the_random_intercepts_multinomial_fit(sbm, mixwild_draws):
    """One draw, a unit-level nominal outcome: the stage-2 fit is melsml.glmm's
    multinomial logit with correlated random intercepts, its covariance
    reported as var/cov entries (delta method from the Cholesky factor)."""
    from melsml.glmm import MultinomialRandomIntercept

    res, _ = sbm
    data = pd.read_csv(REF / "sbm_mels" / "sbm.csv")
    data = data[(data["LGA"] != -99) & (data["PA_Ord"] != -99)][["ID", "PA_Ord"]]
    data["mood"] = np.digitize(data["PA_Ord"], [3, 5])  # 0, 1, 2
    one = mixwild_draws[mixwild_draws["draw"] == 0]
    s2 = res.stage2("mood ~ theta1", data, family="nominal", multilevel=True, draws=one)
    t1 = one.set_index("ID").loc[data["ID"], "theta1"].to_numpy()
    model = MultinomialRandomIntercept(data["mood"].to_numpy(),
                                       np.column_stack([np.ones(len(t1)), t1]),
                                       pd.factorize(data["ID"])[0])  # fmt: skip
    ref = model.fit()
    assert list(s2.params.index) == ["Intercept[1]", "theta1[1]", "Intercept[2]", "theta1[2]",
                                     "var[1]", "cov[1,2]", "var[2]"]  # fmt: skip
    np.testing.assert_allclose(s2.params.iloc[:4], ref.params[:4], atol=1e-6)
    _, chol = model.unpack(ref.params)
    sigma = chol @ chol.T
    np.testing.assert_allclose(s2.params.iloc[4:], [sigma[0, 0], sigma[1, 0], sigma[1, 1]],
                               atol=1e-6)  # fmt: skip
    assert s2.llf == pytest.approx(ref.llf, abs=1e-6)
    # the delta method: var[1] = L11^2, its SE 2 L11 SE(L11)
    assert s2.bse["var[1]"] == pytest.approx(2 * abs(chol[0, 0]) * np.sqrt(ref.cov[4, 4]),
                                             rel=1e-4)  # fmt: skip


def test_ordinal_fit_equals_statsmodels_ordered_model():
    from statsmodels.miscmodels.ordinal_model import OrderedModel

    from melsml.stage2_fit import fit_ordinal

    rng = np.random.default_rng(4)
    x = rng.standard_normal((300, 2))
    latent = x @ [0.8, -0.5] + rng.logistic(size=300)
    y = pd.Categorical(np.digitize(latent, [-1.0, 0.3, 1.5]), ordered=True)
    for link in ("logit", "probit"):
        ours = fit_ordinal(y, x, ("a", "b"), link)
        model = OrderedModel(y, x, distr=link)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = model.fit(method="bfgs", disp=False, gtol=1e-9, maxiter=5000)
        gamma = np.asarray(model.transform_threshold_params(ref.params))[1:-1]
        np.testing.assert_allclose(ours.params, np.r_[ref.params[:2], gamma], atol=1e-5)
        assert ours.llf == pytest.approx(ref.llf, abs=1e-8)
        # statsmodels' SEs of the raw threshold parameters, by the delta method
        np.testing.assert_allclose(np.sqrt(np.diag(ours.cov))[:2], ref.bse[:2], rtol=1e-4)


def test_stage2_bad_input(sbm):
    res, persons = sbm
    with pytest.raises(MELSInputError, match="groups column 'ID'"):
        res.stage2("HSG ~ theta1", persons.drop(columns="ID"))
    data = pd.read_csv(REF / "sbm_mels" / "sbm.csv")
    with pytest.raises(MELSInputError, match="outcome 'PA' varies within group"):
        res.stage2("PA ~ theta1", data)
    with pytest.raises(MELSInputError, match="unknown stage-2 family"):
        res.stage2("HSG ~ theta1", persons, family="gamma")
    with pytest.raises(MELSInputError, match="no column"):
        res.stage2("HSG ~ theta1 + bmi", persons)
    with pytest.raises(MELSInputError, match="n_draws must be a positive integer"):
        res.stage2("HSG ~ theta1", persons, n_draws=0)
    with pytest.raises(MELSInputError, match="columns named like the effects"):
        res.stage2("HSG ~ theta1", persons.assign(theta1=1.0))
    with pytest.raises(MELSInputError, match="unknown draws"):
        res.stage2("HSG ~ theta1", persons, draws="bootstrap")
    with pytest.warns(MissingDataWarning, match="dropped 1 of 72 rows"):
        res.stage2("HSG ~ theta1", persons.assign(HSG=persons.HSG.where(persons.ID != 1)),
                   n_draws=2)  # fmt: skip


def test_stage2_names_effects_the_model_lacks():
    data = simulate_london(3, seed=3, n_schools=40, n_students=1500)
    no_scale = MELS.from_formula("y ~ prior", data, "school", random_scale=False).fit()
    schools = data.groupby("school", as_index=False)["prior"].mean()
    with pytest.raises(MELSInputError, match=r"uses \['theta2'\].*no random scale"):
        no_scale.stage2("prior ~ theta1 + theta2", schools)
    # theta1 alone works without a random scale, with u = sigma_u theta1
    s2 = no_scale.stage2("prior ~ u", schools, n_draws=20, seed=1)
    assert list(s2.params.index) == ["Intercept", "u", "residual variance"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the simulated data have no random slope
        slopes = MELS.from_formula(
            "y ~ prior", data, "school", re_formula="~ 1 + prior", random_scale=False
        ).fit()
    with pytest.raises(MELSInputError, match="random intercept and at most a random scale"):
        slopes.stage2("prior ~ theta1", schools)


def test_each_draws_design_is_formulaics():
    """The per-draw design (the effect-free part built once, times the effects)
    equals formulaic's model matrix of the draw, with a factor and a product."""
    import formulaic

    from melsml.stage2 import _Designs

    rng = np.random.default_rng(2)
    frame = pd.DataFrame({"x": rng.standard_normal(30), "c": rng.choice(list("abc"), 30)})
    values = {"theta1": rng.standard_normal(30), "theta2": rng.standard_normal(30)}
    rhs = "1 + x + theta1 + theta1:c + theta2:x + theta1:theta2"
    fast = _Designs(formulaic.Formula(rhs), frame, ["theta1", "theta2"])
    assert fast.fast
    ref = formulaic.model_matrix(rhs, frame.assign(**values))
    np.testing.assert_allclose(fast.design(values), np.asarray(ref), rtol=1e-14)
    assert fast.names == tuple(ref.columns)
    slow = _Designs(formulaic.Formula("1 + np.exp(theta1)"), frame, ["theta1"])
    assert not slow.fast
    np.testing.assert_allclose(slow.design(values)[:, 1], np.exp(values["theta1"]))
