"""The objective: analytic score against finite differences, per-group scores."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from melsml import MELS, simulate_london


@pytest.fixture(scope="module")
def data():
    return simulate_london(7, seed=3, n_schools=30, n_students=1500)


SPECS = {
    "model1": dict(random_scale=False, ws_formula="~ 1"),
    "hetero": dict(random_scale=False, ws_formula="~ prior + fsm", bs_formula="~ fsm"),
    "linear": dict(ws_formula="~ prior + fsm", bs_formula="~ fsm"),
    "none": dict(ws_formula="~ prior", association="none"),
    "aghq": dict(ws_formula="~ prior", integration="aghq"),
    "quadratic": dict(ws_formula="~ prior", association="quadratic"),
    "slopes": dict(ws_formula="~ prior", re_formula="~ 1 + prior"),
    "slopes_none": dict(ws_formula="~ prior", re_formula="~ 1 + prior", association="none"),
    "slopes_aghq": dict(ws_formula="~ prior", re_formula="~ 1 + prior", integration="aghq"),
    "model4": dict(random_scale=False, re_formula="~ 1 + prior + fsm"),
}


def random_points(model, n=3, seed=0):
    rng = np.random.default_rng(seed)
    base = model.start_params().to_numpy()
    return [base + rng.normal(scale=0.08, size=base.size) for _ in range(n)]


@pytest.mark.parametrize("name", list(SPECS))
def test_score_is_the_exact_gradient_with_nodes_held_fixed(data, name):
    """With the quadrature nodes fixed the score is exact: central differences
    agree to ~1e-7 relative."""
    model = MELS.from_formula("y ~ prior + fsm", data, "school", **SPECS[name])
    obj = model.objective()
    for theta in random_points(model):
        ev = obj.evaluate(theta)
        fd = np.empty_like(theta)
        for i in range(theta.size):
            h = 1e-6 * (1 + abs(theta[i]))
            tp, tm = theta.copy(), theta.copy()
            tp[i] += h
            tm[i] -= h
            fd[i] = (
                obj.evaluate(tp, score=False, adapt=False, centers=ev.centers).llf
                - obj.evaluate(tm, score=False, adapt=False, centers=ev.centers).llf
            ) / (2 * h)
        np.testing.assert_allclose(ev.score, fd, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", ["linear", "quadratic"])
def test_score_matches_differences_of_the_adaptive_objective(data, name):
    """With nodes re-placed at every evaluation the difference is the quadrature error."""
    model = MELS.from_formula("y ~ prior + fsm", data, "school", **SPECS[name])
    obj = model.objective()
    theta = random_points(model, 1, seed=5)[0]
    g = obj.score(theta)
    fd = np.array(
        [
            (obj.loglike(theta + h) - obj.loglike(theta - h)) / 2e-6
            for h in np.eye(theta.size) * 1e-6
        ]
    )
    np.testing.assert_allclose(g, fd, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("name", list(SPECS))
def test_group_scores_sum_to_the_score(data, name):
    model = MELS.from_formula("y ~ prior + fsm", data, "school", **SPECS[name])
    obj = model.objective()
    theta = random_points(model, 1)[0]
    by_group = obj.score_groups(theta)
    assert by_group.shape == (model.design.n_groups, theta.size)
    np.testing.assert_allclose(by_group.sum(axis=0), obj.score(theta), rtol=1e-10, atol=1e-9)


def test_loglike_does_not_depend_on_the_warm_start(data):
    model = MELS.from_formula("y ~ prior", data, "school", ws_formula="~ prior")
    theta = model.start_params().to_numpy()
    fresh = model.objective().loglike(theta)
    obj = model.objective()
    obj.loglike(theta + 0.3)  # leaves the modes somewhere else
    assert obj.loglike(theta) == pytest.approx(fresh, rel=1e-13)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_loglike_is_invariant_to_row_order_and_group_relabelling(data, seed):
    rng = np.random.default_rng(seed)
    model = MELS.from_formula("y ~ prior + fsm", data, "school", ws_formula="~ prior")
    theta = model.start_params()
    perm = data.iloc[rng.permutation(len(data))].copy()
    mapping = dict(zip(data["school"].unique(), rng.permutation(1000)[:30], strict=False))
    perm["school"] = perm["school"].map(mapping)
    other = MELS.from_formula("y ~ prior + fsm", perm, "school", ws_formula="~ prior")
    assert other.loglike(theta) == pytest.approx(model.loglike(theta), rel=1e-12)


@pytest.mark.parametrize("name", list(SPECS))
def test_linear_predictors_in_the_kernel_equal_those_formed_first(data, name):
    """The fused path (r0, eta and each group's X'g formed in the kernel's loop,
    taken on large data) equals the NumPy path, with group weights too."""
    df = data.assign(gw=1.0 + (data["school"] % 3))
    model = MELS.from_formula("y ~ prior + fsm", df, "school", group_weights="gw", **SPECS[name])
    for theta in random_points(model, n=2):
        objs = [model.objective(), model.objective()]
        objs[0]._fused, objs[1]._fused = True, False
        fused, plain = (o.evaluate(theta) for o in objs)
        assert fused.llf == pytest.approx(plain.llf, rel=1e-12)
        np.testing.assert_allclose(fused.score, plain.score, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(fused.grad_mu, plain.grad_mu, rtol=1e-9, atol=1e-12)
