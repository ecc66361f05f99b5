"""The data-generating process."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from melsml import MELS, MELSInputError, simulate, simulate_london
from melsml.simulate import LONDON_COVARIATE_TRUE, london_covariates


def test_london_shape():
    data = london_covariates(seed=1)
    sizes = data.groupby("school").size()
    assert len(sizes) == 465
    assert sizes.min() == 14 and sizes.max() == 330
    assert 65000 < len(data) < 78000
    assert data["prior"].mean() == pytest.approx(0.0, abs=1e-12)


def test_simulate_is_reproducible_and_accepts_fitted_params():
    data = london_covariates(30, 1500, seed=2)
    params = {
        "beta": {"Intercept": 1.0, "prior": 0.5},
        "alpha": {"Intercept": -1.0},
        "tau": {"Intercept": -0.5},
        "random": {"tau_l": 0.2, "sigma_omega": 0.3},
    }
    a = simulate(data, "school", params, formula="y ~ prior", seed=4)
    b = simulate(data, "school", params, formula="y ~ prior", seed=4)
    pd.testing.assert_frame_equal(a, b)
    res = MELS.from_formula("y ~ prior", a, "school").fit()
    c = simulate(data, "school", res.params, formula="y ~ prior", seed=5)
    assert c["y"].notna().all()


def test_simulated_moments_match_the_model():
    data = london_covariates(400, 40000, seed=3)
    params = {
        "beta": {"Intercept": 0.0, "prior": 0.0},
        "alpha": {"Intercept": np.log(0.2)},
        "tau": {"Intercept": np.log(0.5)},
        "random": {"sigma_omega": 0.3},
    }
    sim, eff = simulate(data, "school", params, formula="y ~ prior", seed=6, return_effects=True)
    assert eff["u"].var() == pytest.approx(0.2, rel=0.2)
    # E var(e) = 0.5 * exp(0.3^2 / 2)
    within = sim.groupby("school")["y"].var().mean()
    assert within == pytest.approx(0.5 * np.exp(0.045), rel=0.05)


def test_missing_parameter_values_are_named():
    data = london_covariates(10, 500, seed=3)
    with pytest.raises(MELSInputError, match="beta value.*prior"):
        simulate(
            data,
            "school",
            {"beta": {"Intercept": 0.0}, "alpha": {"Intercept": 0.0}, "tau": {"Intercept": 0.0}},
            formula="y ~ prior",
        )


def test_model7_process_recovers_covariate_effects():
    data = simulate_london(7, seed=12)
    res = MELS.from_formula(
        "y ~ prior + female + fsm + eal + sen + age + ethnicity",
        data,
        "school",
        ws_formula="~ prior + fsm + sen + female",
    ).fit()
    for (block, term), value in res.params.items():
        truth = LONDON_COVARIATE_TRUE[block][term]
        assert abs(value - truth) < 3 * res.bse[(block, term)], (block, term)


@pytest.mark.slow
def test_coverage_study_of_wald_intervals():
    """Multi-seed study (run with ``pytest -m slow``): 95% Wald intervals of model 3
    cover the true values in 88-99% of 200 replications, for every parameter."""
    from melsml.simulate import LONDON_TRUE

    covered = []
    for seed in range(200):
        data = simulate_london(3, seed=10_000 + seed, n_schools=150, n_students=15000)
        res = MELS.from_formula("y ~ prior", data, "school", ws_formula="~ prior").fit()
        ci = res.conf_int()
        truth = np.array([LONDON_TRUE[b][t] for b, t in res.params.index])
        covered.append((ci["lower"].to_numpy() <= truth) & (truth <= ci["upper"].to_numpy()))
    rate = np.mean(covered, axis=0)
    assert np.all(rate > 0.88) and np.all(rate < 0.99), rate
