"""The same answer in any units: estimates and standard errors transform exactly
when the outcome or a covariate is rescaled or shifted, and every fit converges."""

from __future__ import annotations

import numpy as np
import pytest

from melsml import MELS, simulate_london
from melsml.scaling import Scaling

SPEC = dict(ws_formula="~ prior")


@pytest.fixture(scope="module")
def data():
    return simulate_london(3, seed=21, n_schools=150, n_students=15000)


@pytest.fixture(scope="module")
def base(data):
    res = MELS.from_formula("y ~ prior", data, "school", **SPEC).fit()
    assert res.converged
    return res


def check(res, params, bse):
    assert res.converged, res.fit_info
    np.testing.assert_allclose(res.params.to_numpy(), params, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(res.bse.to_numpy(), bse, rtol=1e-6)


@pytest.mark.parametrize("c", [1e-8, 1e-4, 1e4, 1e8])
def test_outcome_scale(data, base, c):
    d2 = data.assign(y=data["y"] * c)
    res = MELS.from_formula("y ~ prior", d2, "school", **SPEC).fit()
    p, se = base.params.copy(), base.bse.copy()
    p["beta"] = p["beta"].to_numpy() * c
    se["beta"] = se["beta"].to_numpy() * c
    p[("alpha", "Intercept")] += 2 * np.log(c)
    p[("tau", "Intercept")] += 2 * np.log(c)
    check(res, p.to_numpy(), se.to_numpy())
    assert res.llf == pytest.approx(base.llf - res.nobs * np.log(c), rel=1e-9)


@pytest.mark.parametrize("shift", [1e3, 1e6])
def test_outcome_shift(data, base, shift):
    res = MELS.from_formula("y ~ prior", data.assign(y=data["y"] + shift), "school", **SPEC).fit()
    p = base.params.copy()
    p[("beta", "Intercept")] += shift
    check(res, p.to_numpy(), base.bse.to_numpy())


@pytest.mark.parametrize("c", [1e-6, 1e-3, 1e3, 1e6])
def test_covariate_scale(data, base, c):
    res = MELS.from_formula(
        "y ~ prior", data.assign(prior=data["prior"] * c), "school", **SPEC
    ).fit()
    p, se = base.params.copy(), base.bse.copy()
    for block in ("beta", "tau"):
        p[(block, "prior")] /= c
        se[(block, "prior")] /= c
    check(res, p.to_numpy(), se.to_numpy())


@pytest.mark.parametrize("c", [1e-4, 1e4])
def test_covariate_scale_with_random_slopes_and_a_scale_slope(data, c):
    spec = dict(ws_formula="~ prior", re_formula="~ 1 + prior", ws_re_formula="~ 1 + prior")
    sub = data[data["school"] <= 60]
    a = MELS.from_formula("y ~ prior", sub, "school", **spec).fit()
    b = MELS.from_formula("y ~ prior", sub.assign(prior=sub["prior"] * c), "school", **spec).fit()
    assert a.converged and b.converged
    # L rows: location slope scales by 1/c, scale slope by 1/c
    factor = np.ones(a.k_params)
    for i, (block, term) in enumerate(a.params.index):
        if block in ("beta", "tau") and term == "prior":
            factor[i] = 1 / c
        if block == "random" and (term.startswith("L(prior,") or term.startswith("L(omega:prior,")):
            factor[i] = 1 / c
    np.testing.assert_allclose(
        b.params.to_numpy(), a.params.to_numpy() * factor, rtol=1e-6, atol=1e-12
    )
    np.testing.assert_allclose(b.bse.to_numpy(), a.bse.to_numpy() * factor, rtol=1e-6)


def test_the_map_back_is_exact(data):
    m = MELS.from_formula("y ~ prior + fsm", data, "school", bs_formula="~ fsm", **SPEC)
    sc = Scaling.of(m.design)
    std = MELS(sc.design(m.design))
    theta = m.start_params().to_numpy() + 0.05
    theta_std = sc.from_original(theta, m.layout)
    np.testing.assert_allclose(sc.to_original(theta_std, m.layout), theta, atol=1e-14)
    shift = m.design.n_obs * sc.log_jacobian_per_obs
    assert std.loglike(theta_std) - shift == pytest.approx(m.loglike(theta), rel=1e-13)


@pytest.mark.parametrize(
    "weighting",
    [
        {},
        dict(weights="w", weight_type="frequency"),
        dict(weights="w", weight_type="sampling"),
        dict(group_weights="gw", weight_type="sampling"),
    ],
)
def test_the_log_likelihood_carried_over_from_the_fit_is_the_data_units_one(data, weighting):
    # the fit's last (standardised) evaluation, carried over to the data's units,
    # equals an evaluation in the data's units at the estimates
    rng = np.random.default_rng(5)
    gw = rng.uniform(0.5, 2.0, data["school"].nunique())
    d2 = data.assign(
        y=data["y"] * 37.0 + 500.0,
        w=rng.uniform(0.5, 2.0, len(data)),
        gw=data["school"].map(dict(zip(np.unique(data["school"]), gw, strict=True))),
    )
    m = MELS.from_formula("y ~ prior", d2, "school", **SPEC, **weighting)
    res = m.fit()
    state = res.fit_state
    fresh = m.objective().evaluate(state.theta, centers=state.evaluation.centers, score=False)
    assert res.llf == pytest.approx(fresh.llf, rel=1e-12)
    np.testing.assert_allclose(state.evaluation.centers, fresh.centers, atol=1e-8)
