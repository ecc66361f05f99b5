"""Censored (Tobit) outcomes: identities, brute-force integrals, scores,
recovery under a ceiling, and bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from reference.censored_ref import censored_loglik_brute, censored_posterior_brute

from melsml import MELS, simulate_london
from melsml.censoring import censoring_counts
from melsml.exceptions import MELSInputError
from melsml.simulate import LONDON_TRUE


@pytest.fixture(scope="module")
def small():
    rng = np.random.default_rng(5)
    n_groups, size = 30, 8
    df = pd.DataFrame(
        {
            "g": np.repeat(np.arange(n_groups), size),
            "x": rng.normal(size=n_groups * size),
            "s": rng.normal(size=n_groups * size),
        }
    )
    u = np.repeat(rng.normal(scale=0.5, size=n_groups), size)
    v = np.repeat(rng.normal(scale=0.8, size=n_groups), size)
    sd = np.exp(0.25 * df.x + 0.5 * v)
    df["y"] = 0.3 + 0.8 * df.x + u + rng.normal(scale=sd, size=len(df))
    df["lo"] = np.where(rng.random(len(df)) < 0.7, -0.5, np.nan)
    df["hi"] = 1.2
    return df


def _brute(model, theta, df, n_points=60):
    d = model.design
    p = model.layout.unpack(theta)
    return censored_loglik_brute(
        d.y, d.x_mean @ p["beta"], d.x_ws @ p["tau"], np.exp(0.5 * d.x_bs @ p["alpha"]),
        d.censoring, np.repeat(np.arange(d.n_groups), d.group_sizes),
        p["tau_l"], p["sigma_omega"], n_points,
    )  # fmt: skip


def test_limits_outside_the_data_give_the_gaussian_model(small):
    gauss = MELS.from_formula("y ~ x", small, "g", ws_formula="~ x")
    far = MELS.from_formula(
        "y ~ x", small.assign(hi2=50.0), "g", ws_formula="~ x", censoring=(-50, "hi2")
    )
    theta = gauss.start_params()
    assert far.plan == gauss.plan
    assert far.loglike(theta) == pytest.approx(gauss.loglike(theta), rel=1e-10)


def test_rows_are_marked_at_the_limits(small):
    m = MELS.from_formula("y ~ x", small, "g", censoring=("lo", "hi"))
    lo, hi = censoring_counts(m.design)
    y = small.y.to_numpy()
    assert lo == int(((y <= small.lo) & small.lo.notna()).sum())
    assert hi == int((y >= 1.2).sum())
    d = m.design
    assert np.all(d.y[d.censoring < 0] == 1.2)
    assert m.plan.method == "aghq" and m.plan.dim == 2


@pytest.mark.parametrize("random_scale", [True, False])
def test_loglik_equals_brute_force_integral(small, random_scale):
    m = MELS.from_formula("y ~ x", small, "g", bs_formula="~ s", ws_formula="~ x",
                          censoring=("lo", "hi"), random_scale=random_scale,
                          n_points=15)  # fmt: skip
    theta = np.array(
        [0.3, 0.8, np.log(0.25), 0.2, 0.1, 0.4] + ([-0.2, 0.3] if random_scale else [])
    )
    ll = m.objective().evaluate(theta, score=False).ll_groups
    assert ll == pytest.approx(_brute(m, theta, small), abs=1e-6)


# The score is the quadrature's estimate of the exact score; it matches the
# differences of the approximate log-likelihood as the rule grows.  Groups of 8
# with a random scale: 2.5e-4 relative with 11 points per dimension, 5e-5 with
# 15, 2e-6 with 21 (measured); 21 points make the check sharp.
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(bs_formula="~ s", ws_formula="~ x"),
        dict(ws_formula="~ x", ws_re_formula="~ 1 + x"),  # scale design varies by unit
        dict(re_formula="~ 1 + x", ws_formula="~ x"),
    ],
)
def test_score_matches_finite_differences(small, kwargs):
    m = MELS.from_formula("y ~ x", small, "g", censoring=("lo", "hi"), n_points=21, **kwargs)
    obj = m.objective()
    theta = m.start_params().to_numpy() + 0.05
    score = obj.evaluate(theta).score
    fd = np.array([(obj.loglike(theta + h) - obj.loglike(theta - h)) / 2e-6
                   for h in 1e-6 * np.eye(theta.size)])  # fmt: skip
    assert score == pytest.approx(fd, rel=1e-4, abs=1e-4)


def test_frequency_weights_count_censored_rows(small):
    dup = pd.concat([small, small.iloc[::3]]).sort_index(kind="stable")
    w = pd.Series(1.0, index=small.index)
    w.iloc[::3] = 2.0
    kw = dict(ws_formula="~ x", censoring=("lo", "hi"))
    weighted = MELS.from_formula("y ~ x", small.assign(w=w), "g", weights="w", **kw)
    twice = MELS.from_formula("y ~ x", dup, "g", **kw)
    theta = weighted.start_params()
    assert weighted.loglike(theta) == pytest.approx(twice.loglike(theta), rel=1e-9)


def test_tobit_recovers_the_variance_function_under_a_ceiling():
    """London-sized data, 10% of scores at a ceiling: the Tobit fit recovers the
    truth within 3 SE; the Gaussian fit to the same data is visibly biased."""
    data = simulate_london(3, seed=1)
    ceiling = float(data.y.quantile(0.9))
    tobit = MELS.from_formula("y ~ prior", data, "school", ws_formula="~ prior",
                              censoring=(None, ceiling)).fit()  # fmt: skip
    capped = data.assign(y=np.minimum(data.y, ceiling))
    gauss = MELS.from_formula("y ~ prior", capped, "school", ws_formula="~ prior").fit()
    truth = pd.Series(
        {(b, t): v for b, block in LONDON_TRUE.items() for t, v in block.items()}
    ).reindex(tobit.params.index)
    z = (tobit.params - truth) / tobit.bse
    assert (z.abs() < 3).all(), z
    z_gauss = (gauss.params - truth) / gauss.bse
    assert abs(z_gauss[("tau", "prior")]) > 10
    assert "10.0%" in str(tobit.summary())
    # the school variances of the latent scores: the Tobit predictions track those of
    # the uncensored data better than the Gaussian fit to the capped scores does
    full = MELS.from_formula("y ~ prior", data, "school", ws_formula="~ prior").fit()
    v_full = full.school_effects()["variance"]
    r_tobit = np.corrcoef(tobit.school_effects()["variance"], v_full)[0, 1]
    r_gauss = np.corrcoef(gauss.school_effects()["variance"], v_full)[0, 1]
    assert r_tobit > 0.98 and r_tobit > r_gauss


def test_eb_means_equal_a_brute_force_posterior(small):
    """Both tabulations of the posterior, MixWILD's 2-D view (random_effects)
    and the grid over all effects (what random slopes and conditional
    predictions use), give the brute-force posterior means of model 3."""
    from melsml.posterior import moments, posterior_grid

    m = MELS.from_formula(
        "y ~ x", small, "g", ws_formula="~ x", censoring=("lo", "hi"), n_points=21
    )
    res = m.fit()
    d = m.design
    p = m.layout.unpack(res._theta_raw)
    m1, mo = censored_posterior_brute(
        d.y, d.x_mean @ p["beta"], d.x_ws @ p["tau"], np.exp(0.5 * d.x_bs @ p["alpha"]),
        d.censoring, np.repeat(np.arange(d.n_groups), d.group_sizes),
        p["tau_l"], p["sigma_omega"],
    )  # fmt: skip
    eb = res.random_effects()  # theta1 and omega do not depend on the sign of theta2
    assert eb["theta1_mean"].to_numpy() == pytest.approx(m1, abs=1e-4)
    assert eb["omega_mean"].to_numpy() == pytest.approx(mo, abs=1e-4)
    mean, _ = moments(posterior_grid(res.fit_state))
    assert mean[:, 0] == pytest.approx(m1, abs=1e-4)
    assert mean[:, 1] == pytest.approx(mo, abs=1e-4)


def test_random_slope_predictions(small):
    """With a random slope: EB means and covariances equal those on a dense
    uniform grid (61^3 points over +-12 placement SDs; these small, mostly
    censored groups have posterior tails that far out), and conditional
    predictions add the EB location effects."""
    from itertools import product

    m = MELS.from_formula("y ~ x", small, "g", ws_formula="~ x", re_formula="~ 1 + x",
                          censoring=("lo", "hi"), n_points=11)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = m.fit()
    theta = res.fit_state.theta
    obj = m.objective()
    cen = obj.evaluate(theta, score=False).centers
    t = np.array(list(product(np.linspace(-12, 12, 61), repeat=3)))
    points = cen[:, None, :3] + np.einsum("jab,pb->jpa", cen[:, 3:].reshape(-1, 3, 3), t)
    logpsi, x = obj.full_points(theta, points)
    w = np.exp(logpsi - logpsi.max(axis=1, keepdims=True))
    w /= w.sum(axis=1, keepdims=True)
    mean = np.einsum("jp,jpa->ja", w, x)
    cov01 = np.einsum("jp,jp,jp->j", w, x[..., 0], x[..., 1]) - mean[:, 0] * mean[:, 1]
    eb = res.random_effects()
    assert eb["u_mean[Intercept]"].to_numpy() == pytest.approx(mean[:, 0], abs=2e-5)
    assert eb["u_mean[x]"].to_numpy() == pytest.approx(mean[:, 1], abs=2e-5)
    assert eb["omega_mean"].to_numpy() == pytest.approx(mean[:, 2], abs=2e-5)
    assert eb["cov[Intercept,x]"].to_numpy() == pytest.approx(cov01, abs=2e-5)
    pred = res.predict(small, conditional=True)
    g = m.design.group_index
    fixed = res.predict(small, conditional=False)
    u0, u1 = eb["u_mean[Intercept]"].to_numpy()[g], eb["u_mean[x]"].to_numpy()[g]
    want = fixed + u0 + small["x"] * u1
    assert pred.to_numpy() == pytest.approx(want.to_numpy(), abs=1e-12)
    se = res.school_effects()
    assert se["variance_lower"].lt(se["variance"]).all()
    assert se["variance"].lt(se["variance_upper"]).all()


def test_bad_input(small):
    with pytest.raises(MELSInputError, match="lower limit must be below the upper"):
        MELS.from_formula("y ~ x", small, "g", censoring=(2.0, 1.0))
    with pytest.raises(MELSInputError, match="column 'nope' is not in the data"):
        MELS.from_formula("y ~ x", small, "g", censoring=("nope", None))
    with pytest.raises(MELSInputError, match="pair"):
        MELS.from_formula("y ~ x", small, "g", censoring=3.0)
    with pytest.raises(MELSInputError, match="not numeric"):
        MELS.from_formula("y ~ x", small.assign(c="a"), "g", censoring=("c", None))
    with pytest.raises(MELSInputError, match="exact-location"):
        MELS.from_formula("y ~ x", small, "g", censoring=("lo", "hi"),
                          integration="exact-location").objective()  # fmt: skip


def test_mixwild_refuses_censored_and_three_level_models(small, tmp_path):
    from melsml import mixwild
    from melsml.simulate import simulate_three_level

    m = MELS.from_formula("y ~ x", small, "g", censoring=("lo", "hi"))
    with pytest.raises(MELSInputError, match="censored"):
        mixwild.write(m, folder=tmp_path)
    three = MELS.from_formula("y ~ prior", simulate_three_level(5, 3, 5, seed=1),
                              ["district", "school"])  # fmt: skip
    with pytest.raises(MELSInputError, match="three-level"):
        mixwild.write(three, folder=tmp_path)
