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


def _nominal_case(seed=3, n_groups=80, size=20):
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(n_groups), size)
    x = np.column_stack([np.ones(g.size), rng.standard_normal(g.size)])
    chol = np.array([[0.8, 0.0], [0.4, 0.6]])
    u = rng.standard_normal((n_groups, 2)) @ chol.T
    beta = np.array([[0.2, -0.3], [0.5, 1.0]])  # (k, m)
    eta = np.column_stack([np.zeros(g.size), x @ beta + u[g]])
    p = np.exp(eta - eta.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    y = (rng.random(g.size)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
    return y, x, g, np.r_[beta.T.ravel(), chol[np.tril_indices(2)]]


def test_multinomial_random_intercepts_brute_force_integral():
    """Two small groups, two random intercepts: the quadrature log-likelihood
    converges to a dense 2-D integral (7 points: within 1e-4)."""
    from scipy import integrate, stats

    from melsml.glmm import MultinomialRandomIntercept

    y = np.array([0, 2, 1, 1, 2, 0, 2])
    x = np.column_stack([np.ones(7), [0.1, -0.3, 0.5, 1.0, 0.2, -0.4, 0.7]])
    g = np.array([0, 0, 0, 1, 1, 1, 1])
    theta = np.array([0.2, 0.3, -0.1, 0.5, 0.9, 0.3, 0.6])
    ll7, _ = MultinomialRandomIntercept(y, x, g, 7).evaluate(theta)
    ll, _ = MultinomialRandomIntercept(y, x, g, 25).evaluate(theta)
    beta = theta[:4].reshape(2, 2).T
    chol = np.array([[0.9, 0.0], [0.3, 0.6]])
    total = 0.0
    for j in (0, 1):
        rows = g == j

        def f(z2, z1, rows=rows):
            u = chol @ np.array([z1, z2])
            eta = np.column_stack([np.zeros(rows.sum()), x[rows] @ beta + u])
            logp = eta - np.log(np.exp(eta).sum(axis=1, keepdims=True))
            return (
                np.exp(logp[np.arange(rows.sum()), y[rows]].sum())
                * stats.norm.pdf(z1)
                * stats.norm.pdf(z2)
            )

        total += np.log(integrate.dblquad(f, -9, 9, -9, 9, epsabs=1e-13)[0])
    assert ll == pytest.approx(total, abs=1e-8)
    assert ll7 == pytest.approx(total, abs=1e-4)


def test_multinomial_random_intercepts_score_and_recovery():
    """The score matches differences of the log-likelihood; the fit recovers
    the simulation's parameters within 3 standard errors, and a warm start
    reaches the same maximum."""
    from melsml.glmm import MultinomialRandomIntercept

    y, x, g, truth = _nominal_case()
    model = MultinomialRandomIntercept(y, x, g)
    _, score = model.evaluate(truth)
    num = np.array(
        [(model.evaluate(truth + e, False)[0] - model.evaluate(truth - e, False)[0]) / 2e-6
         for e in np.eye(truth.size) * 1e-6]
    )  # fmt: skip
    # the score is the quadrature estimate of the exact score: 7-point error
    np.testing.assert_allclose(score, num, atol=2e-3 * np.abs(num).max())
    fit = model.fit()
    assert fit.converged
    se = np.sqrt(np.diag(fit.cov))
    assert np.all(np.abs(fit.params - truth) < 3 * se)
    warm = model.fit(fit.params + 0.05)
    assert warm.llf == pytest.approx(fit.llf, abs=1e-7)
