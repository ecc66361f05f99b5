"""The compiled kernel against its NumPy twin, brute force and finite differences."""

from __future__ import annotations

import numpy as np
import pytest
from reference.engine_ref import brute_loglik, engine_loglik_ref

from melsml import _quad
from melsml.likelihood import scale_first_factor
from melsml.quadrature import gauss_hermite

SIZES = [1, 2, 4, 7, 15]


def make_case(q, s, *, unit_level=True, sizes=SIZES, seed=0, scale=0.5):
    """Data and a covariance factor for q location and s scale effects."""
    rng = np.random.default_rng(seed)
    ptr = np.concatenate([[0], np.cumsum(sizes)]).astype(np.intp)
    n = int(ptr[-1])
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    Z = np.ascontiguousarray(np.column_stack([np.ones(n), x1, x2])[:, :q])
    if unit_level:
        H = np.column_stack([np.ones(n), x1, x2])[:, :s]
    else:
        H = np.repeat(rng.normal(size=(len(sizes), s)), sizes, axis=0)
        if s:
            H[:, 0] = 1.0
    H = np.ascontiguousarray(H)
    r0 = rng.normal(size=n) * 1.2
    eta = 0.2 * x1 - 0.1
    a = rng.normal(size=(q + s, q + s)) * 0.25 + np.eye(q + s) * scale
    L = np.linalg.cholesky(a @ a.T)
    return r0, eta, Z, H, ptr, L


def h_const(H, ptr):
    first = np.repeat(H[ptr[:-1]], np.diff(ptr), axis=0)
    same = (H == first).all(axis=1) if H.shape[1] else np.ones(len(H), bool)
    return np.logical_and.reduceat(same, ptr[:-1]).astype(np.uint8)


def run(
    r0, eta, Z, H, ptr, L, *, full=False, tau_q=0.0, points=11, centers=None, adapt=True, w=None
):
    q, s = Z.shape[1], H.shape[1]
    d = q + s
    m = d if full else s
    j, n = len(ptr) - 1, len(r0)
    x, lw = gauss_hermite(points)
    out = dict(
        ll=np.empty(j),
        ex=np.empty((j, d)),
        exx=np.empty((j, d, d)),
        dL=np.empty((j, d, d)),
        dtq=np.empty(j),
        g_mu=np.empty(n),
        g_ws=np.empty(n),
        g_z=np.empty((n, q)),
    )
    if centers is None:
        centers = np.zeros((j, m + m * m))
        centers[:, m:] = np.eye(m).ravel()
    out["centers"] = np.array(centers, dtype=float, order="C")
    kvv, kuv, c = scale_first_factor(L @ L.T, q)
    _quad.engine_loglik(
        r0, eta, Z, H, h_const(H, ptr), ptr, kvv, kuv, c, np.ascontiguousarray(L), tau_q,
        full, x, lw, out["ll"], out["ex"], out["exx"], out["dL"], out["dtq"], out["centers"],
        out["g_mu"], out["g_ws"], out["g_z"], adapt=adapt, w=w,
    )  # fmt: skip
    return out


def twin(r0, eta, Z, H, ptr, L, *, full=False, tau_q=0.0, points=11, w=None):
    kvv, kuv, c = scale_first_factor(L @ L.T, Z.shape[1])
    x, lw = gauss_hermite(points)
    return engine_loglik_ref(
        r0, eta, Z, H, ptr, kvv, kuv, c, x, lw, L=L, tau_q=tau_q, full=full, w=w
    )


SHAPES = [(1, 0), (1, 1), (1, 2), (2, 1), (2, 2), (3, 1)]


@pytest.mark.parametrize("q,s", SHAPES)
@pytest.mark.parametrize("unit_level", [True, False])
def test_exact_location_kernel_equals_numpy_twin(q, s, unit_level):
    case = make_case(q, s, unit_level=unit_level, seed=q * 10 + s)
    a, b = run(*case, points=7), twin(*case, points=7)
    for key in ("ll", "ex", "exx", "dL", "centers", "g_mu", "g_ws", "g_z"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-10, atol=1e-10, err_msg=key)


@pytest.mark.parametrize("q,s", [(1, 1), (1, 2), (2, 1)])
@pytest.mark.parametrize("unit_level", [True, False])
def test_full_kernel_equals_numpy_twin(q, s, unit_level):
    case = make_case(q, s, unit_level=unit_level, seed=5)
    tau_q = 0.15 if (q, s) == (1, 1) else 0.0
    a = run(*case, full=True, tau_q=tau_q, points=5)
    b = twin(*case, full=True, tau_q=tau_q, points=5)
    for key in ("ll", "ex", "exx", "dL", "dtq", "centers", "g_mu", "g_ws", "g_z"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-10, atol=1e-10, err_msg=key)


@pytest.mark.parametrize("q,s", [(1, 1), (1, 2), (2, 1)])
def test_exact_location_equals_brute_force_over_all_effects(q, s):
    """No exact-location shortcut in the oracle: a plain product rule over (u, v)."""
    r0, eta, Z, H, ptr, L = make_case(q, s, sizes=[1, 3, 5], seed=11, scale=0.35)
    out = run(r0, eta, Z, H, ptr, L, points=21)
    sigma = L @ L.T
    for j in range(len(ptr) - 1):
        sl = slice(ptr[j], ptr[j + 1])
        brute = brute_loglik(r0[sl], eta[sl], Z[sl], H[sl], sigma, n_points=60)
        assert out["ll"][j] == pytest.approx(brute, abs=1e-6)


@pytest.mark.parametrize("q,s", [(1, 1), (1, 2), (2, 1)])
def test_full_and_exact_location_plans_agree(q, s):
    """(With groups of 1 or 2 units and four effects the full rule needs far more
    than 21 points per dimension: the exact-location plan is the accurate one.)"""
    case = make_case(q, s, seed=3)
    exact = run(*case, points=21)
    full = run(*case, full=True, points=21)
    np.testing.assert_allclose(full["ll"], exact["ll"], atol=1e-6)
    np.testing.assert_allclose(full["ex"], exact["ex"], atol=1e-5)


def _fd(fun, x, h=1e-6):
    x = np.array(x, dtype=float)
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[i] = h
        g[i] = (fun(x + e) - fun(x - e)) / (2 * h)
    return g


@pytest.mark.parametrize("q,s", [(1, 1), (1, 2), (2, 1), (2, 2)])
@pytest.mark.parametrize("unit_level", [True, False])
def test_exact_location_score_matches_finite_differences(q, s, unit_level):
    """The score (Price's identity on the quadrature) is the derivative of the
    adaptive log-likelihood to quadrature accuracy."""
    r0, eta, Z, H, ptr, L = make_case(q, s, unit_level=unit_level, seed=7)
    out = run(r0, eta, Z, H, ptr, L, points=21)

    def ll_L(lv):
        return run(r0, eta, Z, H, ptr, np.tril(lv), points=21)["ll"].sum()

    fd = np.tril(_fd(ll_L, L))
    np.testing.assert_allclose(out["dL"].sum(axis=0), fd, atol=1e-6)
    for key, arg in (("g_mu", "r0"), ("g_ws", "eta")):
        i = 5

        def ll_unit(t, key=key, arg=arg, i=i):
            rr, ee = r0.copy(), eta.copy()
            if arg == "r0":
                rr[i] -= t[0]  # the mean moves opposite to the residual
            else:
                ee[i] += t[0]
            return run(rr, ee, Z, H, ptr, L, points=21)["ll"].sum()

        assert out[key][i] == pytest.approx(_fd(ll_unit, [0.0])[0], abs=1e-6)

    def ll_z(t):
        zz = Z.copy()
        zz[9, q - 1] += t[0]
        return run(r0, eta, zz, H, ptr, L, points=21)["ll"].sum()

    assert out["g_z"][9, q - 1] == pytest.approx(_fd(ll_z, [0.0])[0], abs=1e-6)


def test_full_score_is_exact_for_fixed_nodes():
    """With the nodes held fixed in theta, the full integrand's score in L and
    tau_q is the exact derivative of the quadrature formula."""
    r0, eta, Z, H, ptr, L = make_case(1, 1, seed=2)
    ref = run(r0, eta, Z, H, ptr, L, full=True, tau_q=0.1, points=7)
    cen = ref["centers"]

    def ll(lv, tq=0.1):
        return run(
            r0, eta, Z, H, ptr, np.tril(lv), full=True, tau_q=tq, points=7, centers=cen,
            adapt=False,
        )["ll"].sum()  # fmt: skip

    np.testing.assert_allclose(ref["dL"].sum(axis=0), np.tril(_fd(ll, L)), atol=1e-8)
    assert ref["dtq"].sum() == pytest.approx(_fd(lambda t: ll(L, t[0]), [0.1])[0], abs=1e-8)


def test_nodes_placed_off_the_mode_still_integrate():
    """Fixed nodes away from the mode (shifted and widened) give the same integral
    with enough points: the node placement and its Jacobian are right."""
    case = make_case(1, 2, seed=4)
    adapted = run(*case, points=31)
    s = 2
    cen = adapted["centers"].copy()
    cen[:, :s] += 0.3
    cen[:, s:] *= 1.4
    moved = run(*case, points=31, centers=cen, adapt=False)
    np.testing.assert_allclose(moved["ll"], adapted["ll"], atol=1e-5)
    cen[:, s:] *= 3.0  # a badly scaled placement with few points is visibly off
    off = run(*case, points=5, centers=cen, adapt=False)
    assert np.abs(off["ll"] - adapted["ll"]).max() > 1e-4


def test_quadrature_converges_in_the_number_of_points():
    case = make_case(2, 2, seed=8)
    ll = {k: run(*case, points=k)["ll"] for k in (5, 11, 21, 31)}
    assert np.abs(ll[21] - ll[31]).max() < 1e-9
    assert np.abs(ll[11] - ll[31]).max() < np.abs(ll[5] - ll[31]).max()


def test_singular_covariance_is_allowed():
    """tau_l = sigma_omega = 0: the random scale vanishes and the value is the
    closed form; sigma_omega = 0 alone (u and omega perfectly correlated) still
    matches brute force; the score stays finite."""
    r0, eta, Z, H, ptr, _ = make_case(1, 1, sizes=[1, 3, 6], seed=9)
    L0 = np.array([[0.7, 0.0], [0.0, 0.0]])
    out = run(r0, eta, Z, H, ptr, L0)
    closed = run(r0, eta, Z, H[:, :0], ptr, L0[:1, :1])
    np.testing.assert_allclose(out["ll"], closed["ll"], rtol=1e-13)
    assert np.isfinite(out["dL"]).all()
    fd = _fd(lambda t: run(r0, eta, Z, H, ptr, np.array([[0.7, 0], [t[0], 0]]))["ll"].sum(), [0.0])
    assert out["dL"].sum(axis=0)[1, 0] == pytest.approx(fd[0], abs=1e-6)
    L1 = np.array([[0.7, 0.0], [0.3, 0.0]])
    out = run(r0, eta, Z, H, ptr, L1, points=21)
    for j in range(3):
        sl = slice(ptr[j], ptr[j + 1])
        brute = brute_loglik(r0[sl], eta[sl], Z[sl], H[sl], L1 @ L1.T, n_points=60)
        assert out["ll"][j] == pytest.approx(brute, abs=1e-6)


def test_engine_points_reproduce_the_integrand():
    """The EB grid function evaluates the same integrand as the likelihood."""
    r0, eta, Z, H, ptr, L = make_case(2, 2, seed=12)
    out = run(r0, eta, Z, H, ptr, L)
    kvv, kuv, c = scale_first_factor(L @ L.T, 2)
    j = len(ptr) - 1
    pts = np.ascontiguousarray(out["centers"][:, None, :2])  # the modes
    logpsi, mu = np.empty((j, 1)), np.empty((j, 1, 2))
    _quad.engine_points(
        r0, eta, Z, H, h_const(H, ptr), ptr, kvv, kuv, c, pts, logpsi, mu,
        np.empty((j, 1, 2, 2)), np.empty((j, 1, 2)),
    )  # fmt: skip
    # at the mode, the log integrand is the Laplace approximation's height
    lap = logpsi[:, 0] + np.log(np.abs(np.linalg.det(out["centers"][:, 2:].reshape(j, 2, 2))))
    lap += np.log(2 * np.pi)
    np.testing.assert_allclose(lap, out["ll"], atol=0.05)


def test_gauss_hermite_rule():
    x, logw = gauss_hermite(11)
    assert np.exp(logw).sum() == pytest.approx(np.sqrt(np.pi))
    assert np.exp(logw) @ x**2 == pytest.approx(np.sqrt(np.pi) / 2)
    with pytest.raises(ValueError):
        gauss_hermite(0)


def test_threads_give_identical_results():
    """Groups are independent: any number of threads gives the same numbers."""
    r0, eta, Z, H, ptr, L = make_case(1, 2, sizes=[3, 9, 1, 20, 6] * 8, seed=13)
    kvv, kuv, c = scale_first_factor(L @ L.T, 1)
    x, lw = gauss_hermite(7)
    outs = []
    for nt in (1, 2, 3):
        j, n = len(ptr) - 1, len(r0)
        out = [np.empty(j), np.empty((j, 3)), np.empty((j, 3, 3)), np.empty((j, 3, 3)), np.empty(j)]
        cen = np.zeros((j, 6))
        cen[:, 2:] = np.eye(2).ravel()
        g = [np.empty(n), np.empty(n), np.empty((n, 1))]
        _quad.engine_loglik(
            r0, eta, Z, H, h_const(H, ptr), ptr, kvv, kuv, c, L, 0.0, False, x, lw, *out, cen,
            *g, n_threads=nt,
        )  # fmt: skip
        outs.append(out + g + [cen])
    for other in outs[1:]:
        for a, b in zip(outs[0], other, strict=True):
            np.testing.assert_array_equal(a, b)
    assert _quad.openmp_threads() >= 1
    assert isinstance(_quad.built_with_openmp(), bool)


@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("unit_level", [True, False])
def test_unit_weights_kernel_equals_twin(full, unit_level):
    case = make_case(1, 2 if not full else 1, unit_level=unit_level, seed=21)
    w = np.random.default_rng(2).uniform(0.2, 3.0, len(case[0]))
    a = run(*case, full=full, points=5, w=w)
    b = twin(*case, full=full, points=5, w=w)
    for key in ("ll", "ex", "exx", "dL", "g_mu", "g_ws", "g_z"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-10, atol=1e-10, err_msg=key)


@pytest.mark.parametrize("full", [False, True])
def test_integer_unit_weights_equal_duplicated_rows(full):
    r0, eta, Z, H, ptr, L = make_case(2, 1, unit_level=True, seed=22)
    w = np.random.default_rng(3).integers(1, 4, len(r0)).astype(float)
    rep = np.repeat(np.arange(len(r0)), w.astype(int))
    sizes = np.add.reduceat(w, ptr[:-1]).astype(int)
    ptr2 = np.concatenate([[0], np.cumsum(sizes)]).astype(np.intp)
    dup = (r0[rep], eta[rep], np.ascontiguousarray(Z[rep]), np.ascontiguousarray(H[rep]))
    a = run(r0, eta, Z, H, ptr, L, full=full, points=7, w=w)
    b = run(*dup, ptr2, L, full=full, points=7)
    np.testing.assert_allclose(a["ll"], b["ll"], rtol=1e-12)
    np.testing.assert_allclose(a["dL"], b["dL"], rtol=1e-9, atol=1e-12)
    # a weighted unit's gradient is the sum over its copies
    np.testing.assert_allclose(a["g_mu"], np.bincount(rep, b["g_mu"]), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(a["g_ws"], np.bincount(rep, b["g_ws"]), rtol=1e-9, atol=1e-12)
