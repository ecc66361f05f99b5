"""The compiled kernel against its NumPy twin, brute-force integrals and itself."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import integrate

from melsml import _quad, _quad_ref
from melsml.quadrature import gauss_hermite

SETTINGS = [
    (0, 0.0, 0.0, 0.0),
    (1, 0.3, 0.0, 0.4),
    (1, 0.0, 0.0, 0.5),  # association "none"
    (1, -0.6, 0.0, 0.05),  # sigma_omega near its boundary
    (2, 0.3, 0.0, 0.4),
    (2, 0.3, 0.15, 0.4),  # quadratic association
    (2, -0.2, -0.1, 0.7),
]


def make_groups(sizes, seed=0):
    rng = np.random.default_rng(seed)
    ptr = np.concatenate([[0], np.cumsum(sizes)]).astype(np.intp)
    n = ptr[-1]
    r0 = rng.normal(size=n) * 1.3 + np.repeat(rng.normal(size=len(sizes)), sizes)
    eta_ws = rng.normal(size=n) * 0.3 - 0.4
    eta_bs = rng.normal(size=n) * 0.2 - 0.9
    return r0, eta_ws, eta_bs, ptr


def run_kernel(r0, eta_ws, eta_bs, ptr, mode, tl, tq, sw, q=11, centers=None, adapt=True):
    x, lw = gauss_hermite(q)
    j, n = len(ptr) - 1, len(r0)
    out = dict(
        ll=np.empty(j),
        mom=np.empty((j, 8)),
        grand=np.empty((j, 3)),
        g_mu=np.empty(n),
        g_ws=np.empty(n),
        g_bs=np.empty(n),
    )
    cen = np.zeros((j, 5)) if centers is None else np.array(centers)
    if centers is None:
        cen[:, 2] = cen[:, 4] = 1.0
    _quad.group_loglik(
        r0,
        eta_ws,
        eta_bs,
        ptr,
        mode,
        tl,
        tq,
        sw,
        x,
        lw,
        out["ll"],
        out["mom"],
        out["grand"],
        cen,
        out["g_mu"],
        out["g_ws"],
        out["g_bs"],
        np.empty(2 * n),
        adapt=adapt,
    )
    out["centers"] = cen
    return out


@pytest.mark.parametrize("mode,tl,tq,sw", SETTINGS)
def test_kernel_equals_numpy_twin(mode, tl, tq, sw):
    data = make_groups([1, 2, 1, 5, 40, 3, 1, 17])  # includes groups of size 1
    start = np.zeros((8, 5))
    start[:, 2] = start[:, 4] = 1.0
    got = run_kernel(*data, mode, tl, tq, sw, centers=start)
    x, lw = gauss_hermite(11)
    ref = _quad_ref.group_loglik_ref(*data, mode, tl, tq, sw, x, lw, centers=start)
    for key in ("ll", "mom", "grand", "g_mu", "g_ws", "g_bs", "centers"):
        np.testing.assert_allclose(got[key], ref[key], rtol=1e-11, atol=1e-12, err_msg=key)


def test_exact_location_marginal_equals_multivariate_normal():
    r0, eta_ws, eta_bs, ptr = make_groups([7])
    st = _quad_ref.group_stats(r0, eta_ws, eta_bs)
    for tl, sw, om in [(0.3, 0.4, -0.7), (-0.5, 0.1, 0.4), (0.0, 0.6, 1.1)]:
        V = tl**2 + sw**2
        g, S = tl / V, sw**2 / V
        h = _quad_ref.h1(om, st, V, g, S)[0]
        prior = -0.5 * om**2 / V - 0.5 * np.log(2 * np.pi * V)
        brute = _quad_ref.brute_log_f_given_omega(r0, eta_ws, eta_bs, om, g, S)
        assert h - prior == pytest.approx(brute, rel=1e-12)


def test_h1_derivatives_match_finite_differences():
    r0, eta_ws, eta_bs, _ = make_groups([9])
    st = _quad_ref.group_stats(r0, eta_ws, eta_bs)
    V, g, S = 0.25, 0.3 / 0.25, 0.16 / 0.25
    for om in (-1.0, 0.2, 1.5):
        h, d1, d2 = _quad_ref.h1(om, st, V, g, S)
        e = 1e-5
        hp, hm = _quad_ref.h1(om + e, st, V, g, S), _quad_ref.h1(om - e, st, V, g, S)
        fd1 = (hp[0] - hm[0]) / (2 * e)
        fd2 = (hp[1] - hm[1]) / (2 * e)
        assert d1 == pytest.approx(fd1, rel=1e-7, abs=1e-8)
        assert d2 == pytest.approx(fd2, rel=1e-7, abs=1e-8)


def test_h2_derivatives_match_finite_differences():
    r0, eta_ws, eta_bs, _ = make_groups([6])
    st = _quad_ref.group_stats(r0, eta_ws, eta_bs)
    pars = (0.3, 0.12, 0.5)
    e = 1e-5
    for u, v in [(0.1, -0.4), (-1.2, 0.8)]:
        _, grad, hess = _quad_ref.h2(u, v, st, *pars)
        for k, (du, dv) in enumerate([(e, 0), (0, e)]):
            hp, gp, _ = _quad_ref.h2(u + du, v + dv, st, *pars)
            hm, gm, _ = _quad_ref.h2(u - du, v - dv, st, *pars)
            assert grad[k] == pytest.approx((hp - hm) / (2 * e), rel=1e-7, abs=1e-8)
            np.testing.assert_allclose(hess[:, k], (gp - gm) / (2 * e), rtol=1e-6, atol=1e-7)


def brute_group_loglik(r0, eta_ws, eta_bs, tl, tq, sw):
    """Non-adaptive 2-D integral of prod_i N(y_i) over standard normal (theta1, theta2)."""
    d = np.exp(eta_ws)
    s = np.exp(0.5 * eta_bs)

    def integrand(t2, t1):
        om = tl * t1 + tq * t1 * t1 + sw * t2
        var = d * np.exp(om)
        ll = -0.5 * np.sum(np.log(2 * np.pi * var) + (r0 - s * t1) ** 2 / var)
        return np.exp(ll + 12.0 - 0.5 * (t1 * t1 + t2 * t2)) / (2 * np.pi)

    val, _ = integrate.dblquad(integrand, -9, 9, -9, 9, epsabs=0, epsrel=1e-11)
    return np.log(val) - 12.0


@pytest.mark.parametrize("mode,tl,tq,sw", [s for s in SETTINGS if s[0] > 0 and s[3] > 0.1])
def test_adaptive_quadrature_matches_brute_force(mode, tl, tq, sw):
    r0, eta_ws, eta_bs, ptr = make_groups([1, 3, 6], seed=4)
    got = run_kernel(r0, eta_ws, eta_bs, ptr, mode, tl, tq, sw, q=41)
    for j in range(3):
        sl = slice(ptr[j], ptr[j + 1])
        ref = brute_group_loglik(r0[sl], eta_ws[sl], eta_bs[sl], tl, tq, sw)
        assert got["ll"][j] == pytest.approx(ref, abs=1e-7)


@pytest.mark.parametrize("mode", [1, 2])
def test_near_boundary_small_groups_converge_to_brute_force(mode):
    """sigma_omega -> 0 with tau_l != 0 in a group of 3: the posterior of omega is
    skewed (theta1 ~ omega / tau_l), so Gauss-Hermite converges slowly; a known
    limitation, measured here."""
    r0, eta_ws, eta_bs, ptr = make_groups([3], seed=4)
    ref = brute_group_loglik(r0, eta_ws, eta_bs, -0.6, 0.0, 0.05)
    err = [
        abs(run_kernel(r0, eta_ws, eta_bs, ptr, mode, -0.6, 0.0, 0.05, q=q)["ll"][0] - ref)
        for q in (11, 81)
    ]
    assert err[0] < 1e-2
    assert err[1] < 2e-6
    assert err[1] < err[0]


def test_closed_form_matches_brute_force_with_no_random_scale():
    r0, eta_ws, eta_bs, ptr = make_groups([4], seed=2)
    got = run_kernel(r0, eta_ws, eta_bs, ptr, 0, 0.0, 0.0, 0.0)
    d, s = np.exp(eta_ws), np.exp(0.5 * eta_bs)
    val, _ = integrate.quad(
        lambda t: (
            np.exp(-0.5 * np.sum(np.log(2 * np.pi * d) + (r0 - s * t) ** 2 / d) - 0.5 * t * t)
            / np.sqrt(2 * np.pi)
        ),
        -12,
        12,
        epsabs=0,
        epsrel=1e-12,
    )
    assert got["ll"][0] == pytest.approx(np.log(val), abs=1e-10)


@pytest.mark.parametrize("mode", [1, 2])
def test_quadrature_is_stable_in_the_number_of_points(mode):
    data = make_groups([5, 30, 80, 2], seed=8)
    lls = [run_kernel(*data, mode, 0.3, 0.0, 0.4, q=q)["ll"].sum() for q in (11, 21, 31, 41)]
    assert abs(lls[0] - lls[-1]) < 2e-4
    assert abs(lls[2] - lls[3]) < 1e-7


def test_fast_and_general_paths_agree():
    data = make_groups([1, 4, 25, 60], seed=9)
    fast = run_kernel(*data, 1, -0.35, 0.0, 0.3, q=21)
    gen = run_kernel(*data, 2, -0.35, 0.0, 0.3, q=21)
    np.testing.assert_allclose(fast["ll"], gen["ll"], atol=1e-8)
    np.testing.assert_allclose(fast["mom"], gen["mom"], atol=1e-7)
    # the fast path has no tau_q (column 1)
    np.testing.assert_allclose(fast["grand"][:, [0, 2]], gen["grand"][:, [0, 2]], atol=1e-6)


def test_fixed_nodes_give_the_same_value_when_placed_at_the_mode():
    data = make_groups([3, 12], seed=1)
    adapted = run_kernel(*data, 1, 0.2, 0.0, 0.5)
    fixed = run_kernel(*data, 1, 0.2, 0.0, 0.5, centers=adapted["centers"], adapt=False)
    np.testing.assert_array_equal(adapted["ll"], fixed["ll"])


def test_gauss_hermite_rule():
    x, logw = gauss_hermite(11)
    assert np.exp(logw).sum() == pytest.approx(np.sqrt(np.pi))
    assert np.exp(logw) @ x**2 == pytest.approx(np.sqrt(np.pi) / 2)
    with pytest.raises(ValueError):
        gauss_hermite(0)


# ------------------------------------------------------------ several location effects
def run_multi(r0, eta_ws, Z, ptr, mode, L, q_points=7, centers=None, adapt=True):
    x, lw = gauss_hermite(q_points)
    j, q = len(ptr) - 1, Z.shape[1]
    d = q + 1
    out = dict(
        ll=np.empty(j),
        eu=np.empty((j, q)),
        euu=np.empty((j, q, q)),
        eom=np.empty(j),
        eom2=np.empty(j),
        euom=np.empty((j, q)),
        k0=np.empty(j),
        k1=np.empty((j, q)),
        k2=np.empty((j, q, q)),
        dL=np.empty((j, d, d)),
    )
    cen = np.zeros((j, d + d * d)) if centers is None else np.array(centers)
    g_mu, g_ws = np.empty(len(r0)), np.empty(len(r0))
    _quad.group_loglik_multi(
        r0,
        eta_ws,
        Z,
        ptr,
        mode,
        np.ascontiguousarray(L),
        x,
        lw,
        out["ll"],
        out["eu"],
        out["euu"],
        out["eom"],
        out["eom2"],
        out["euom"],
        out["k0"],
        out["k1"],
        out["k2"],
        out["dL"],
        cen,
        g_mu,
        g_ws,
        adapt=adapt,
    )
    out.update(g_mu=g_mu, g_ws=g_ws, centers=cen)
    return out


def make_slope_groups(sizes, q, seed=0):
    rng = np.random.default_rng(seed)
    ptr = np.concatenate([[0], np.cumsum(sizes)]).astype(np.intp)
    n = ptr[-1]
    Z = np.ascontiguousarray(np.c_[np.ones(n), rng.normal(size=(n, q - 1))])
    r0 = rng.normal(size=n) + 0.4 * Z[:, -1]
    eta_ws = rng.normal(size=n) * 0.3 - 0.4
    return r0, eta_ws, Z, ptr


def random_chol(q, seed=0):
    rng = np.random.default_rng(seed)
    return np.tril(rng.normal(size=(q + 1, q + 1)) * 0.3) + 0.4 * np.eye(q + 1)


@pytest.mark.parametrize("q", [1, 2, 3])
@pytest.mark.parametrize("mode", [0, 1, 2])
def test_multi_kernel_equals_numpy_twin(q, mode):
    r0, eta_ws, Z, ptr = make_slope_groups([1, 2, 6, 25, 1], q)  # groups smaller than q
    L = random_chol(q)
    L = L[:q, :q] if mode == 0 else L
    got = run_multi(r0, eta_ws, Z, ptr, mode, L)
    x, lw = gauss_hermite(7)
    ref = _quad_ref.group_loglik_multi_ref(r0, eta_ws, Z, ptr, mode, L, x, lw)
    for key in ("ll", "eu", "euu", "eom", "eom2", "euom", "k0", "k1", "k2", "dL", "g_mu", "g_ws"):
        np.testing.assert_allclose(got[key], ref[key], rtol=1e-10, atol=1e-11, err_msg=key)


def test_multi_kernel_with_one_effect_equals_the_random_intercept_kernel():
    r0, eta_ws, eta_bs, ptr = make_groups([1, 3, 12, 40], seed=6)
    s = np.ascontiguousarray(np.exp(0.5 * eta_bs)[:, None])
    for mode, (tl, sw) in [(0, (0.0, 0.0)), (1, (0.3, 0.4)), (2, (-0.2, 0.6))]:
        ref = run_kernel(r0, eta_ws, eta_bs, ptr, mode, tl, 0.0, sw, q=11)
        L = np.array([[1.0]]) if mode == 0 else np.array([[1.0, 0.0], [tl, sw]])
        got = run_multi(r0, eta_ws, s, ptr, mode, L, q_points=11)
        np.testing.assert_allclose(got["ll"], ref["ll"], rtol=1e-12)
        np.testing.assert_allclose(got["g_mu"], ref["g_mu"], rtol=1e-9, atol=1e-12)
        if mode:
            np.testing.assert_allclose(got["dL"][:, 1, 0], ref["grand"][:, 0], rtol=1e-8)
            np.testing.assert_allclose(got["dL"][:, 1, 1], ref["grand"][:, 2], rtol=1e-8)


def brute_multi(r0, eta_ws, Z, L):
    """1-D integral over omega of the n-variate normal given omega, with the
    conditional mean and covariance of u taken straight from L L'."""
    q = Z.shape[1]
    sigma = L @ L.T
    V = sigma[q, q]
    g = sigma[:q, q] / V
    S = sigma[:q, :q] - np.outer(sigma[:q, q], sigma[:q, q]) / V
    from scipy.stats import multivariate_normal, norm

    def f(om):
        cov = np.diag(np.exp(eta_ws + om)) + Z @ S @ Z.T
        return np.exp(multivariate_normal(Z @ g * om, cov).logpdf(r0) + 10.0) * norm.pdf(
            om, scale=np.sqrt(V)
        )

    val, _ = integrate.quad(f, -12 * np.sqrt(V), 12 * np.sqrt(V), epsabs=0, epsrel=1e-12, limit=200)
    return np.log(val) - 10.0


@pytest.mark.parametrize("mode,points", [(1, 21), (2, 21)])
def test_multi_paths_match_a_brute_force_integral(mode, points):
    r0, eta_ws, Z, ptr = make_slope_groups([2, 5, 9], 2, seed=3)
    L = random_chol(2, seed=4)
    got = run_multi(r0, eta_ws, Z, ptr, mode, L, q_points=points)
    for j in range(3):
        sl = slice(ptr[j], ptr[j + 1])
        assert got["ll"][j] == pytest.approx(brute_multi(r0[sl], eta_ws[sl], Z[sl], L), abs=1e-6)


def test_multi_score_in_L_is_exact_for_fixed_nodes():
    r0, eta_ws, Z, ptr = make_slope_groups([3, 8, 20], 2, seed=5)
    L = random_chol(2, seed=2)
    for mode in (1, 2):
        base = run_multi(r0, eta_ws, Z, ptr, mode, L)
        for i, j in [(0, 0), (1, 0), (1, 1), (2, 0), (2, 1), (2, 2)]:
            E = np.zeros_like(L)
            E[i, j] = 1e-6
            up = run_multi(r0, eta_ws, Z, ptr, mode, L + E, centers=base["centers"], adapt=False)
            dn = run_multi(r0, eta_ws, Z, ptr, mode, L - E, centers=base["centers"], adapt=False)
            fd = (up["ll"].sum() - dn["ll"].sum()) / 2e-6
            assert base["dL"].sum(axis=0)[i, j] == pytest.approx(fd, rel=1e-6, abs=1e-7)
