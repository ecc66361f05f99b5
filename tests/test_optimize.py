"""Maximisation: convergence diagnostics, the Hessian, failure modes."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from test_model import fit_case

from melsml import MELS, BoundaryWarning, ConvergenceWarning, simulate
from melsml.optimize import maximize, numerical_hessian
from melsml.simulate import london_covariates


def test_numerical_hessian_is_symmetric_and_matches_score_differences():
    res = fit_case("small")
    obj = res.model.objective()
    theta = res.params.to_numpy()
    hess = numerical_hessian(obj, theta)
    np.testing.assert_allclose(hess, hess.T)
    assert np.all(np.linalg.eigvalsh(-hess) > 0)
    # second differences of the log-likelihood agree
    h = 1e-4
    e = np.zeros_like(theta)
    e[0] = h
    fd = (obj.loglike(theta + e) - 2 * obj.loglike(theta) + obj.loglike(theta - e)) / h**2
    assert hess[0, 0] == pytest.approx(fd, rel=1e-4)


def test_standard_errors_from_forward_differences_agree_with_central_ones():
    """The fit takes its Hessian from forward differences of the score (k
    evaluations instead of 2k): the standard errors agree with those from
    central differences at the same estimate."""
    res = fit_case("small")
    std = res._std
    central = numerical_hessian(std.objective, std.theta)
    forward = numerical_hessian(std.objective, std.theta, std.objective.score(std.theta))

    def se(hess):
        return np.sqrt(np.diag(std.jacobian @ np.linalg.inv(-hess) @ std.jacobian.T))

    np.testing.assert_allclose(se(forward), se(central), rtol=1e-4)
    np.testing.assert_allclose(res.bse, se(central), rtol=1e-4)


def test_fit_from_poor_start_values_reaches_the_same_maximum():
    res = fit_case("small")
    start = res.params.copy()
    start[:] = [0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    again = res.model.fit(start_params=start)
    assert again.converged
    assert again.llf == pytest.approx(res.llf, abs=1e-7)


def test_non_finite_start_is_a_clear_error():
    res = fit_case("small")
    obj = res.model.objective()
    bad = res.params.to_numpy().copy()
    bad[3] = -800.0  # exp(800) overflows the WS precision
    with pytest.raises(FloatingPointError, match="not finite at the start values"):
        with np.errstate(all="ignore"):
            maximize(obj, bad)


def test_no_random_scale_in_the_data_warns_about_the_boundary():
    """Data without a random scale: the MLE of sigma_omega is on its boundary 0
    (seed 9), the fit converges there and says so with a BoundaryWarning."""
    data = london_covariates(60, 3000, seed=9)
    params = {
        "beta": {"Intercept": 0.0, "prior": 0.5},
        "alpha": {"Intercept": -1.5},
        "tau": {"Intercept": -0.5},
    }
    sim = simulate(data, "school", params, formula="y ~ prior", seed=9)
    model = MELS.from_formula("y ~ prior", sim, "school", association="none")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = model.fit()
    assert res.params[("random", "sigma_omega")] < 1e-3
    assert res.converged
    assert [w for w in caught if issubclass(w.category, BoundaryWarning)]
    assert not [w for w in caught if issubclass(w.category, ConvergenceWarning)]
    assert "boundary" in res.fit_info.message
