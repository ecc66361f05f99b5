"""Rank intervals, comparative intervals and variance flags."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from melsml import MELS, MELSInputError, simulate, simulate_london
from melsml.rankings import (
    BOUNDARY_NOTE,
    comparative_intervals,
    comparative_z,
    rank_intervals,
    variance_flags,
)


@pytest.fixture(scope="module")
def london():
    """Model 3 fitted to London-sized data simulated from it, with the truth."""
    data, truth = simulate_london(3, seed=5, return_effects=True)
    res = MELS.from_formula("y ~ prior", data, "school", ws_formula="~ prior").fit()
    return res, truth


def test_rank_intervals_cover_the_true_ranks(london):
    """The schools' true ranks (of their simulated effects) lie inside their
    95% rank intervals at about the nominal rate."""
    res, truth = london
    ri = rank_intervals(res, n_draws=1000, seed=1)
    true = truth.loc[ri.index]
    mean_rank = true["u"].rank(ascending=False)
    var_rank = true["omega"].rank(ascending=True)  # the variance rises with omega
    inside_mean = (ri["mean_rank_lower"] <= mean_rank) & (mean_rank <= ri["mean_rank_upper"])
    inside_var = (ri["variance_rank_lower"] <= var_rank) & (var_rank <= ri["variance_rank_upper"])
    assert 0.90 <= inside_mean.mean() <= 0.995
    assert 0.90 <= inside_var.mean() <= 0.995
    assert (ri["mean_rank_lower"] <= ri["mean_rank_median"]).all()
    assert (ri["mean_rank_median"] <= ri["mean_rank_upper"]).all()
    np.testing.assert_array_equal(ri["mean_rank"], res.school_effects()["mean_rank"])
    assert "note" not in ri.attrs
    # given the school effects at hand, the same table
    again = rank_intervals(res, n_draws=1000, seed=1, effects=res.school_effects())
    pd.testing.assert_frame_equal(again, ri)


def test_comparative_intervals_are_goldstein_healy(london):
    """1.39 posterior SDs either side (z_0.975 / sqrt 2), around the published
    school means; two equal-SE intervals fail to overlap exactly when the
    difference is significant at 5%."""
    res, _ = london
    assert comparative_z() == pytest.approx(1.386, abs=1e-3)
    ci = comparative_intervals(res)
    eff = res.school_effects()
    np.testing.assert_allclose(ci["mean"], eff["mean"], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(ci["mean_sd"], eff["mean_sd"], rtol=1e-8)
    np.testing.assert_allclose(ci["mean_upper"] - ci["mean"], comparative_z() * ci["mean_sd"])
    se = 1.0
    diff = stats.norm.ppf(0.975) * np.sqrt(2.0) * se  # a difference at the 5% threshold
    assert comparative_z() * se * 2 == pytest.approx(diff)
    assert (ci["variance_lower"] < np.exp(ci["log_variance"])).all()


def test_variance_flags_follow_the_posterior_tail_probabilities(london):
    res, truth = london
    vf = variance_flags(res, fdr=0.05)
    assert vf.attrs["n_flagged"] == (vf["flag"] != "").sum() > 0
    assert vf.attrs["expected_false_flags"] == pytest.approx(0.05 * vf.attrs["n_flagged"])
    high = vf["flag"] == "high"
    assert (vf.loc[high, "p_high"] > 0.5).all()
    # flagged schools' true variances lie on the flagged side of the reference
    true_omega = truth.loc[vf.index, "omega"]
    wrong_side = (high & (true_omega < 0)) | ((vf["flag"] == "low") & (true_omega > 0))
    assert wrong_side.sum() <= max(1, 0.05 * vf.attrs["n_flagged"] * 3)
    with pytest.raises(MELSInputError, match="fdr must be in"):
        variance_flags(res, fdr=1.5)


def _null_data(seed: int) -> pd.DataFrame:
    """100 schools of 40 students, no school variance differences at all."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"school": np.repeat(np.arange(100), 40), "x": rng.standard_normal(4000)})
    params = {
        "beta": {"Intercept": 0.0, "x": 0.5},
        "alpha": {"Intercept": np.log(0.2)},
        "tau": {"Intercept": np.log(0.6), "x": 0.2},
        "random": {"tau_l": 0.0, "sigma_omega": 0.0},
    }
    return simulate(frame, "school", params, formula="y ~ x", ws_formula="~ x", seed=rng)


def test_variance_flags_false_discovery_rate_in_a_null_simulation():
    """With no school variance differences every flag is false: the share of
    data sets with any flag (the FDR here) stays at or under 5%, within
    Monte Carlo error; fits that put sigma_omega on its boundary flag
    nothing and say why."""
    any_flag, notes = [], 0
    for seed in range(30):
        data = _null_data(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = MELS.from_formula("y ~ x", data, "school", ws_formula="~ x").fit()
        vf = variance_flags(res, fdr=0.05)
        any_flag.append(vf.attrs["n_flagged"] > 0)
        if "note" in vf.attrs:
            notes += 1
            assert vf.attrs["note"] == BOUNDARY_NOTE and vf.attrs["n_flagged"] == 0
    # 30 data sets: at most 4 with a flag is consistent with a 5% rate (binomial
    # P(X >= 5 | 30, 0.05) = 0.016)
    assert sum(any_flag) <= 4
    assert stats.binom.sf(sum(any_flag) - 1, 30, 0.05) > 0.01 or sum(any_flag) == 0
    assert notes > 0


def test_rankings_refuse_random_slope_models():
    data = simulate_london(3, seed=3, n_schools=40, n_students=1500)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = MELS.from_formula("y ~ prior", data, "school", re_formula="~ 1 + prior",
                                random_scale=False).fit()  # fmt: skip
    with pytest.raises(MELSInputError, match="random intercept and at most a random scale"):
        rank_intervals(res, n_draws=10)
