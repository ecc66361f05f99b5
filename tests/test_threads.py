"""Threads: every kind of fit is the same, bit for bit, on 1, 2 and 4 threads."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from melsml import MELS, simulate_london
from melsml.exceptions import MELSInputError
from melsml.simulate import simulate_subjects


@pytest.fixture(scope="module")
def data():
    df = simulate_london(3, seed=5, n_schools=60, n_students=4000)
    df["grade"] = 1 + np.searchsorted([-1.0, 0.0, 1.0], df["y"] / df["y"].std())
    return df


SPECS = {
    "model 3 (exact location)": dict(formula="y ~ prior", ws_formula="~ prior"),
    "random scale slope (unit-level nodes)": dict(
        formula="y ~ prior", ws_formula="~ prior", ws_re_formula="~ 1 + prior"
    ),
    "censored (full quadrature)": dict(
        formula="y ~ prior", ws_formula="~ prior", censoring=(None, 0.8)
    ),
    "ordinal": dict(formula="grade ~ prior", family="ordinal", ws_formula="~ prior"),
}


def assert_same_on_any_thread_count(model) -> None:
    """Fits on 1, 2 and 4 threads: the same llf, estimates and SEs, bit for bit."""
    fits = []
    for n in (1, 2, 4):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fits.append(model.fit(n_threads=n))
    for res in fits[1:]:
        assert res.llf == fits[0].llf
        assert np.array_equal(res.params.to_numpy(), fits[0].params.to_numpy())
        assert np.array_equal(res.bse.to_numpy(), fits[0].bse.to_numpy())


@pytest.mark.parametrize("name", list(SPECS))
def test_fits_do_not_depend_on_the_thread_count(data, name):
    spec = dict(SPECS[name])
    formula = spec.pop("formula")
    model = MELS.from_formula(formula, data, "school", **spec)
    assert_same_on_any_thread_count(model)


def test_several_outcomes_do_not_depend_on_the_thread_count():
    df = simulate_subjects(n_schools=40, n_students=3000, seed=2)
    model = MELS.from_formula(["english ~ prior", "maths ~ prior"], df, "school")
    fits = [model.fit(n_threads=n) for n in (1, 2, 4)]
    for res in fits[1:]:
        assert res.llf == fits[0].llf
        assert np.array_equal(res.params.to_numpy(), fits[0].params.to_numpy())


def test_school_effects_do_not_depend_on_the_thread_count(data):
    from melsml import _quad

    res = MELS.from_formula("y ~ prior", data, "school", ws_formula="~ prior").fit()
    state = res.fit_state
    from melsml.likelihood import MELSObjective

    inputs = MELSObjective(state.design, state.layout, state.options).kernel_inputs(state.theta)
    j = state.design.n_groups
    points = np.ascontiguousarray(np.tile(np.linspace(-3, 3, 7)[None, :, None], (j, 1, 1)))
    out = []
    for n in (1, 2, 4):
        logpsi, mu = np.empty((j, 7)), np.empty((j, 7, 1))
        pinv, v = np.empty((j, 7, 1, 1)), np.empty((j, 7, 1))
        _quad.engine_points(**inputs, points=points, logpsi=logpsi, mu=mu, pinv=pinv, v=v,
                            n_threads=n)  # fmt: skip
        out.append((logpsi, mu, pinv, v))
    for got in out[1:]:
        for a, b in zip(got, out[0], strict=True):
            assert np.array_equal(a, b)


def test_bad_thread_counts(data):
    model = MELS.from_formula("y ~ prior", data, "school")
    for bad in (0, -1, 1.5, "2", True):
        with pytest.raises(MELSInputError, match="n_threads"):
            model.fit(n_threads=bad)


@pytest.mark.parametrize(
    "spec", ["model 3 (exact location)", "random scale slope (unit-level nodes)"]
)
def test_large_data_fits_do_not_depend_on_the_thread_count(data, monkeypatch, spec):
    """From THREADED_ROWS units the kernel forms the linear predictors and each
    group's X'g in its parallel loop: still the same bit for bit."""
    from melsml import likelihood

    monkeypatch.setattr(likelihood, "THREADED_ROWS", 100)
    kw = dict(SPECS[spec])
    formula = kw.pop("formula")
    model = MELS.from_formula(formula, data, "school", **kw)
    assert model.objective()._fused
    assert_same_on_any_thread_count(model)
