"""Power by simulation: a brute-force loop, the Wald formula, errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import stats

from melsml import MELS, MELSInputError, simulate
from melsml.power import design_data, power

PARAMS = {
    "beta": {"Intercept": 0.0, "x": 0.65},
    "alpha": {"Intercept": np.log(0.09)},
    "tau": {"Intercept": np.log(0.5), "x": -0.12},
    "random": {"tau_l": -0.12, "sigma_omega": 0.3},
}


def test_power_equals_a_brute_force_simulation_loop():
    """The same seeds by hand: simulate, fit with and without the random scale,
    the likelihood-ratio test against the 50:50 mixture of chi-square(1) and
    chi-square(2), and the median school-variance interval width."""
    n_schools, n_students, n_sims = 20, 15, 6
    got = power(PARAMS, n_schools, n_students, n_sims=n_sims, seed=11)
    seeds = np.random.SeedSequence(11).spawn(n_sims)
    reject, widths, rmses = [], [], []
    for s in seeds:
        rng = np.random.default_rng(s)
        data = design_data(n_schools, n_students, ["x"], rng)
        data, truth = simulate(data, "school", PARAMS, formula="y ~ x", ws_formula="~ x",
                               seed=rng, return_effects=True)  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            full = MELS.from_formula("y ~ x", data, "school", ws_formula="~ x").fit()
            null = MELS.from_formula("y ~ x", data, "school", ws_formula="~ x",
                                     random_scale=False).fit()  # fmt: skip
        lr = max(2 * (full.llf - null.llf), 0.0)
        p = 0.5 * stats.chi2.sf(lr, 1) + 0.5 * stats.chi2.sf(lr, 2)
        reject.append(p < 0.05)
        eff = full.school_effects()
        widths.append(np.median(eff["variance_upper"] - eff["variance_lower"]))
        true_log = (np.log(0.5) - 0.12 * data["x"].mean()) + truth.loc[eff.index, "omega"]
        rmses.append(np.sqrt(np.mean((np.log(eff["variance"]) - true_log) ** 2)))
    row = got.iloc[0]
    assert row["power"] == pytest.approx(np.mean(reject))
    assert row["variance_interval_width"] == pytest.approx(np.mean(widths), rel=1e-10)
    assert row["log_variance_rmse"] == pytest.approx(np.mean(rmses), rel=1e-10)
    assert row["n_sims"] == n_sims and row["failed"] == 0


def test_wald_power_agrees_with_the_normal_formula():
    """tau[x], a within-school covariate of the log variance: its SE is about
    sqrt(2 / N), so the Wald test's power is about Phi(|tau| / SE - 1.96)."""
    n_schools, n_students, n_sims = 30, 20, 60
    got = power(PARAMS, n_schools, n_students, test="tau[x]", n_sims=n_sims, seed=3)
    se = np.sqrt(2.0 / (n_schools * n_students))
    z = stats.norm.ppf(0.975)
    expect = stats.norm.cdf(0.12 / se - z) + stats.norm.cdf(-0.12 / se - z)
    row = got.iloc[0]
    assert abs(row["power"] - expect) < 3 * np.sqrt(expect * (1 - expect) / n_sims)
    assert row["power_se"] == pytest.approx(np.sqrt(row["power"] * (1 - row["power"]) / n_sims))


def test_more_students_estimate_school_variances_better_and_designs_are_crossed():
    got = power(PARAMS, [15, 40], [10, 80], n_sims=4, seed=5, test="tau[x]")
    assert list(zip(got["n_schools"], got["n_students"], strict=True)) == [
        (15, 10), (15, 80), (40, 10), (40, 80)
    ]  # fmt: skip
    rmse = got.set_index(["n_schools", "n_students"])["log_variance_rmse"]
    assert rmse[(40, 80)] < rmse[(40, 10)] and rmse[(15, 80)] < rmse[(15, 10)]


def test_power_input_errors():
    with pytest.raises(MELSInputError, match="n_schools must be integers"):
        power(PARAMS, [1], 10)
    with pytest.raises(MELSInputError, match="test must be"):
        power(PARAMS, 10, 10, test="sigma")
    with pytest.raises(MELSInputError, match="n_sims must be"):
        power(PARAMS, 10, 10, n_sims=0)
