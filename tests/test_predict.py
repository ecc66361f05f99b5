"""Predictions, fitted values and residuals against hand computations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from melsml import MELS, MELSInputError, simulate_london


@pytest.fixture(scope="module")
def fit():
    data = simulate_london(3, seed=8, n_schools=50, n_students=4000)
    res = MELS.from_formula("y ~ center(prior)", data, "school", ws_formula="~ prior").fit()
    return res, data


def test_mean_predictions_by_hand(fit):
    res, data = fit
    p = res.params
    re = res.random_effects()
    new = pd.DataFrame({"prior": [-1.0, 0.5, 2.0], "school": [data["school"].iloc[0], 3, -7]})
    centred = new["prior"] - data["prior"].mean()  # center() keeps the fitted data's mean
    pop = p[("beta", "Intercept")] + p[("beta", "center(prior)")] * centred
    np.testing.assert_allclose(res.predict(new, conditional=False), pop, rtol=1e-12)
    u = re["u_mean"].reindex(new["school"]).fillna(0.0).to_numpy()  # unseen school: u = 0
    np.testing.assert_allclose(res.predict(new), pop + u, rtol=1e-9, atol=1e-12)


def test_variance_predictions_by_hand(fit):
    res, data = fit
    p = res.params
    new = pd.DataFrame({"prior": [0.7, 0.7], "school": [data["school"].iloc[0], -1]})
    base = np.exp(p[("tau", "Intercept")] + p[("tau", "prior")] * 0.7)
    var_omega = p[("random", "tau_l")] ** 2 + p[("random", "sigma_omega")] ** 2
    pop = res.predict(new, kind="variance", conditional=False)
    np.testing.assert_allclose(pop, base * np.exp(0.5 * var_omega), rtol=1e-12)
    # the school's: the posterior mean of exp(w'tau + omega_j), as school_effects
    se = res.school_effects(ws_reference={"prior": 0.7})
    cond = res.predict(new, kind="variance")
    assert cond.iloc[0] == pytest.approx(se.loc[new["school"].iloc[0], "variance"], rel=1e-9)
    assert cond.iloc[1] == pytest.approx(pop.iloc[1])
    sd = res.predict(new, kind="sd")
    np.testing.assert_allclose(sd, np.sqrt(cond), rtol=1e-12)


def test_residual_identities(fit):
    res, data = fit
    y = data.loc[res.model.design.row_index, "y"]
    np.testing.assert_allclose(res.fittedvalues + res.resid, y, rtol=1e-12)
    np.testing.assert_allclose(res.resid / res.predict(kind="sd"), res.resid_pearson)
    assert res.fittedvalues.index.equals(res.model.design.row_index)
    # the fitted data through predict(exog=data) give the same
    again = res.predict(data)
    np.testing.assert_allclose(again.loc[res.fittedvalues.index], res.fittedvalues, rtol=1e-10)
    assert 0.9 < res.resid_pearson.std() < 1.1


def test_predict_errors_name_what_is_wrong(fit):
    res, data = fit
    with pytest.raises(MELSInputError, match="columns missing from exog: prior"):
        res.predict(pd.DataFrame({"school": [1]}))
    with pytest.raises(MELSInputError, match="groups column 'school'"):
        res.predict(pd.DataFrame({"prior": [0.0]}))
    with pytest.raises(MELSInputError, match="unknown kind"):
        res.predict(kind="median")


def test_scale_slope_variance_predictions_vary_with_the_covariate():
    data = simulate_london(3, seed=4, n_schools=60, n_students=6000, scale_slope=True)
    res = MELS.from_formula(
        "y ~ prior", data, "school", ws_formula="~ prior", ws_re_formula="~ 1 + prior"
    ).fit()
    school = data["school"].iloc[0]
    new = pd.DataFrame({"prior": [-1.0, 1.0], "school": [school, school]})
    se = res.school_effects(at={"prior": [-1, 1]})
    pred = res.predict(new, kind="variance")
    assert pred.iloc[0] == pytest.approx(se.loc[school, "variance[prior=-1]"], rel=1e-9)
    assert pred.iloc[1] == pytest.approx(se.loc[school, "variance[prior=1]"], rel=1e-9)
