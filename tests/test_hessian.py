"""The closed-form Hessian (melsml.hessian): equal to differences of the
analytic score, its compiled passes equal to their NumPy twin, the same on
any thread count and chunking, and used by the fits it covers."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from reference.hessian_ref import hessian_gram_ref, hessian_sums_ref

from melsml import MELS, _quad, hessian, simulate_london
from melsml.optimize import numerical_hessian

SPECS = {
    "model 3": dict(ws_formula="~ prior"),
    "BS covariate": dict(ws_formula="~ prior + fsm", bs_formula="~ fsm"),
    "no BS function": dict(ws_formula="~ prior", re_formula="~ 1"),
    "no association": dict(ws_formula="~ prior", association="none"),
    "frequency weights": dict(ws_formula="~ prior", weights="w", weight_type="frequency"),
    "sampling weights": dict(ws_formula="~ prior", weights="w", weight_type="sampling"),
    "school weights": dict(ws_formula="~ prior", group_weights="gw", weight_type="sampling"),
}


@pytest.fixture(scope="module")
def data():
    d = simulate_london(3, seed=8, n_schools=60, n_students=6000)
    rng = np.random.default_rng(2)
    gw = dict(zip(np.unique(d["school"]), rng.uniform(0.5, 2.0, 60), strict=True))
    return d.assign(w=rng.uniform(0.5, 2.0, len(d)), gw=d["school"].map(gw))


def fitted(data, spec):
    model = MELS.from_formula("y ~ prior + fsm", data, "school", **spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model, model.fit()


@pytest.mark.parametrize("name", list(SPECS))
def test_equals_differences_of_the_score(data, name):
    model, res = fitted(data, SPECS[name])
    assert res.fit_info.hessian == "closed form"
    obj = model.objective()
    rng = np.random.default_rng(4)
    for theta in (res._theta_raw, res._theta_raw + 0.02 * rng.normal(size=res._theta_raw.size)):
        closed = hessian.closed_form_hessian(obj, theta)
        central = numerical_hessian(obj, theta)
        scale = np.sqrt(np.outer(np.abs(np.diag(central)), np.abs(np.diag(central))))
        assert np.max(np.abs(closed - central) / scale) < 1e-6


def test_compiled_passes_equal_their_numpy_twin(data):
    model, res = fitted(data, SPECS["BS covariate"])
    obj = model.objective()
    p = obj.layout.unpack(res._theta_raw)
    units, w = hessian.unit_passes(obj, p, 0, obj.design.n_groups)
    args = {k: units[k] for k in ("r", "a", "z", "X", "XB", "W", "group_ptr")}
    lay = obj.layout
    n_g, kl = obj.design.n_groups, len(lay.beta) + len(lay.alpha) + len(lay.tau)
    sums, jac = np.empty((n_g, 4)), np.empty((n_g, 4, kl))
    _quad.hessian_sums(**units, sums=sums, jac=jac, w=w)
    ref_sums, ref_jac = hessian_sums_ref(**args, w=w)
    np.testing.assert_allclose(sums, ref_sums, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(jac, ref_jac, rtol=1e-12, atol=1e-10)
    gamma = np.random.default_rng(0).normal(size=(n_g, 3))
    gram = np.empty((n_g, kl * kl))
    _quad.hessian_gram(**units, gamma=gamma, out=gram)
    upper = np.triu(gram.reshape(n_g, kl, kl))
    ref = hessian_gram_ref(**args, gamma=gamma)
    np.testing.assert_allclose(upper, np.triu(ref), rtol=1e-11, atol=1e-9)
    with pytest.raises(ValueError, match="shapes"):
        _quad.hessian_gram(**units, gamma=gamma[:3], out=gram)


def test_the_same_on_any_thread_count_and_chunking(data, monkeypatch):
    model, res = fitted(data, SPECS["model 3"])
    theta = res._theta_raw
    runs = [hessian.closed_form_hessian(model.objective(n_threads=t), theta) for t in (1, 2, 4)]
    assert all(np.array_equal(runs[0], h) for h in runs[1:])
    monkeypatch.setattr(hessian, "CHUNK_ROWS", 500)  # about 5 schools per pass
    np.testing.assert_allclose(hessian.closed_form_hessian(model.objective(), theta), runs[0],
                               rtol=1e-12, atol=1e-9)  # fmt: skip


def test_standard_errors_match_those_from_differences(data):
    # the fit's Hessian is taken before its last Newton step (O(step) apart)
    model, res = fitted(data, SPECS["model 3"])
    obj = res._std.objective
    central = numerical_hessian(obj, res._std.theta)
    jac = res._std.jacobian
    cov = jac @ np.linalg.inv(-central) @ jac.T
    np.testing.assert_allclose(res.bse.to_numpy(), np.sqrt(np.diag(cov)), rtol=1e-4)


@pytest.mark.parametrize(
    "spec",
    [
        dict(ws_formula="~ prior", re_formula="~ 1 + prior"),  # two location effects
        dict(ws_formula="~ prior", ws_re_formula="~ 1 + prior"),  # a scale slope
        dict(ws_formula="~ prior", association="quadratic"),  # full quadrature
        dict(random_scale=False),  # no random scale: no nodes
    ],
)  # fmt: skip
def test_other_models_take_differences_of_the_score(data, spec):
    model, res = fitted(data, spec)
    assert hessian.closed_form_hessian(model.objective(), res._theta_raw) is None
    assert res.fit_info.hessian == "differences of the score"
