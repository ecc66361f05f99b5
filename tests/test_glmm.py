"""Random-intercept Poisson regression by adaptive quadrature, against lme4."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import special

from melsml.glmm import PoissonRandomIntercept

DATA = Path(__file__).parent / "data" / "stage2"


@pytest.fixture(scope="module")
def case():
    d = pd.read_csv(DATA / "poisson_ri.csv")
    x = np.column_stack([np.ones(len(d)), d["x"]])
    return d, PoissonRandomIntercept(d["y"].to_numpy(), x, d["g"].to_numpy() - 1, 11)


def test_poisson_random_intercept_equals_lme4(case):
    """lme4::glmer(nAGQ = 11) on the same data (tests/data/stage2/poisson_ri.R):
    estimates and SEs to 1e-6.  lme4's log-likelihood with nAGQ > 1 leaves out
    the saturated model's terms: ours = lme4's - sum log y! + sum (y log y - y)."""
    d, model = case
    fit = model.fit()
    ref = pd.read_csv(DATA / "poisson_ri_lme4.csv").set_index("name")
    np.testing.assert_allclose(fit.params[:2], ref.loc[["(Intercept)", "x"], "estimate"],
                               atol=1e-6)  # fmt: skip
    assert fit.params[2] == pytest.approx(ref.loc["sigma", "estimate"], abs=1e-6)
    np.testing.assert_allclose(np.sqrt(np.diag(fit.cov))[:2],
                               ref.loc[["(Intercept)", "x"], "std_error"], rtol=1e-5)  # fmt: skip
    y = d["y"].to_numpy(float)
    saturated = np.sum(special.xlogy(y, y) - y) - np.sum(special.gammaln(y + 1))
    assert fit.llf == pytest.approx(ref.loc["logLik", "estimate"] + saturated, abs=1e-6)
    assert fit.converged


def test_score_is_the_gradient_of_the_quadrature_likelihood(case):
    """Away from the maximum the score (Fisher's identity on the nodes) matches
    central differences of the log-likelihood."""
    _, model = case
    theta = np.array([0.1, 0.4, 0.7])
    _, score = model.evaluate(theta)
    num = np.empty(3)
    for i in range(3):
        e = np.zeros(3)
        e[i] = 1e-6
        num[i] = (model.evaluate(theta + e, False)[0] - model.evaluate(theta - e, False)[0]) / 2e-6
    np.testing.assert_allclose(score, num, rtol=1e-5)


def test_brute_force_integral_on_a_small_case():
    """Two small groups: the quadrature log-likelihood converges to a dense
    numerical integral over the random intercept (11 points: within 1e-5)."""
    from scipy import integrate, stats

    y = np.array([0, 2, 1, 5, 3, 4.0])
    x = np.column_stack([np.ones(6), [0.1, -0.3, 0.5, 1.0, 0.2, -0.4]])
    g = np.array([0, 0, 0, 1, 1, 1])
    theta = np.array([0.2, 0.3, 0.8])
    ll11, _ = PoissonRandomIntercept(y, x, g, 11).evaluate(theta)
    ll, _ = PoissonRandomIntercept(y, x, g, 41).evaluate(theta)
    total = 0.0
    for j in (0, 1):
        rows = g == j

        def f(b, rows=rows):
            mu = np.exp(x[rows] @ theta[:2] + theta[2] * b)
            return np.prod(stats.poisson.pmf(y[rows], mu)) * stats.norm.pdf(b)

        total += np.log(integrate.quad(f, -12, 12, epsabs=1e-14)[0])
    assert ll == pytest.approx(total, abs=1e-10)
    assert ll11 == pytest.approx(total, abs=1e-5)


def test_counts_must_be_counts():
    from melsml import MELSInputError

    with pytest.raises(MELSInputError, match="counts"):
        PoissonRandomIntercept(np.array([1.5, 2.0]), np.ones((2, 1)), np.array([0, 1]))
