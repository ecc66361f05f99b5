"""Group (school) weights: frequency weights and sampling weights."""

from __future__ import annotations

import numpy as np
import pytest

from melsml import MELS, MELSInputError, simulate_london

SPEC = dict(ws_formula="~ prior")


def _intercepts(d, **weighting):
    """The mean intercept fitted with sampling weights and without."""
    w = MELS.from_formula("y ~ prior", d, "school", weight_type="sampling", **weighting, **SPEC)
    u = MELS.from_formula("y ~ prior", d, "school", **SPEC)
    return (w.fit().params[("beta", "Intercept")], u.fit().params[("beta", "Intercept")])


@pytest.fixture(scope="module")
def data():
    return simulate_london(3, seed=12, n_schools=60, n_students=5000)


def test_group_weights_of_one_change_nothing(data):
    a = MELS.from_formula("y ~ prior", data, "school", **SPEC).fit()
    b = MELS.from_formula(
        "y ~ prior", data.assign(w=1.0), "school", group_weights="w", **SPEC
    ).fit()
    np.testing.assert_allclose(b.params, a.params, rtol=1e-10)
    np.testing.assert_allclose(b.bse, a.bse, rtol=1e-8)
    assert b.llf == pytest.approx(a.llf, rel=1e-12)


def test_integer_frequency_weights_equal_duplicated_schools(data):
    rng = np.random.default_rng(0)
    schools = data["school"].unique()
    w = dict(zip(schools, rng.integers(1, 4, len(schools)), strict=True))
    weighted = data.assign(w=data["school"].map(w).astype(float))
    copies = []
    for s in schools:
        rows = data[data["school"] == s]
        for k in range(w[s]):
            copies.append(rows.assign(school=f"{s}_{k}"))
    import pandas as pd

    dup = pd.concat(copies, ignore_index=True)
    a = MELS.from_formula("y ~ prior", weighted, "school", group_weights="w", **SPEC).fit()
    b = MELS.from_formula("y ~ prior", dup, "school", **SPEC).fit()
    np.testing.assert_allclose(a.params, b.params, rtol=1e-7, atol=1e-10)
    # the two fits take slightly different paths, and the information matrix is
    # that of the last Newton iterate, not re-differenced at the final step
    np.testing.assert_allclose(a.bse, b.bse, rtol=1e-4)
    assert a.llf == pytest.approx(b.llf, rel=1e-10)
    assert a.nobs == b.nobs and a.bic == pytest.approx(b.bic, rel=1e-10)


def test_sampling_weights_give_sandwich_errors_by_default(data):
    rng = np.random.default_rng(1)
    schools = data["school"].unique()
    w = dict(zip(schools, rng.uniform(0.5, 3.0, len(schools)), strict=True))
    d = data.assign(w=data["school"].map(w))
    res = MELS.from_formula(
        "y ~ prior", d, "school", group_weights="w", weight_type="sampling", **SPEC
    ).fit()
    assert res.cov_type == "robust" and res.converged
    assert res.nobs == len(d)


def test_bad_group_weights_are_named(data):
    with pytest.raises(MELSInputError, match="constant within each group"):
        MELS.from_formula("y ~ prior", data.assign(w=np.arange(len(data)) + 1.0), "school",
                          group_weights="w")  # fmt: skip
    with pytest.raises(MELSInputError, match="positive"):
        MELS.from_formula("y ~ prior", data.assign(w=0.0), "school", group_weights="w")
    with pytest.raises(MELSInputError, match="must name a column"):
        MELS.from_formula("y ~ prior", data, "school", group_weights="nosuch")
    with pytest.raises(MELSInputError, match="weight_type"):
        MELS.from_formula("y ~ prior", data.assign(w=1.0), "school", group_weights="w",
                          weight_type="importance")  # fmt: skip


def test_sampling_weights_correct_informative_sampling_of_schools():
    """Schools with a large random effect are sampled more often: the unweighted
    estimate of the mean intercept is biased upwards, the weighted one is not."""
    rng = np.random.default_rng(5)
    est_w, est_u = [], []
    for rep in range(20):
        data, eff = simulate_london(3, seed=300 + rep, n_schools=300, n_students=30000,
                                    return_effects=True)  # fmt: skip
        p = 1 / (1 + np.exp(-2.0 * eff["u"] / eff["u"].std()))  # P(school sampled)
        keep = eff.index[rng.uniform(size=len(eff)) < p]
        d = data[data["school"].isin(keep)].copy()
        d["w"] = d["school"].map(1 / p)
        w, u = _intercepts(d, group_weights="w")
        est_w.append(w)
        est_u.append(u)
    assert abs(np.mean(est_w)) < 0.03 < np.mean(est_u)


def test_integer_unit_frequency_weights_equal_duplicated_rows(data):
    rng = np.random.default_rng(7)
    w = rng.integers(1, 4, len(data))
    weighted = data.assign(w=w.astype(float))
    dup = data.loc[data.index.repeat(w)].reset_index(drop=True)
    a = MELS.from_formula("y ~ prior", weighted, "school", weights="w", **SPEC).fit()
    b = MELS.from_formula("y ~ prior", dup, "school", **SPEC).fit()
    np.testing.assert_allclose(a.params, b.params, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(a.bse, b.bse, rtol=1e-4)
    assert a.llf == pytest.approx(b.llf, rel=1e-10)
    assert a.nobs == len(dup)


def test_unit_weights_of_one_change_nothing_and_scaling_is_per_group(data):
    a = MELS.from_formula("y ~ prior", data, "school", **SPEC).fit()
    b = MELS.from_formula("y ~ prior", data.assign(w=1.0), "school", weights="w", **SPEC).fit()
    np.testing.assert_allclose(b.params, a.params, rtol=1e-10)
    # sampling weights scaled to the group size: a constant factor within a group
    # changes nothing ("size"), and neither does it with "effective" weights of 1
    c = MELS.from_formula("y ~ prior", data.assign(w=5.0), "school", weights="w",
                          weight_type="sampling", **SPEC).fit()  # fmt: skip
    np.testing.assert_allclose(c.params, a.params, rtol=1e-8)
    from melsml.likelihood import unit_weights

    d = data.assign(w=np.linspace(1, 3, len(data)))
    m = MELS.from_formula(
        "y ~ prior", d, "school", weights="w", weight_type="sampling", weight_scaling="effective"
    )
    w = unit_weights(m.design, m.options)
    starts = m.design.group_ptr[:-1]
    raw = m.design.unit_weights
    eff = np.add.reduceat(raw, starts) ** 2 / np.add.reduceat(raw**2, starts)
    np.testing.assert_allclose(np.add.reduceat(w, starts), eff, rtol=1e-12)


def test_sampling_unit_weights_correct_informative_sampling_of_students():
    """Students with a high outcome are sampled more often: the unweighted mean is
    biased upwards; the pseudo-likelihood with scaled student weights is not."""
    rng = np.random.default_rng(11)
    est_w, est_u = [], []
    for rep in range(10):
        data = simulate_london(3, seed=500 + rep, n_schools=150, n_students=30000)
        z = (data["y"] - data["y"].mean()) / data["y"].std()
        p = 1 / (1 + np.exp(-(0.3 + 1.0 * z)))
        d = data[rng.uniform(size=len(data)) < p].assign(w=1 / p)
        w, u = _intercepts(d, weights="w")
        est_w.append(w)
        est_u.append(u)
    assert abs(np.mean(est_w)) < 0.05 < np.mean(est_u)
