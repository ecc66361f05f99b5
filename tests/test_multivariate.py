"""Several outcomes: separate fits, brute-force integrals, the score, a fit,
and bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from reference.multivariate_ref import multivariate_loglik_brute

from melsml import MELS
from melsml.exceptions import MELSInputError
from melsml.multivariate import MultivariateMELS


def _data(n_groups=30, size=20, seed=1, missing=0.1):
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(n_groups), size)
    x = rng.normal(size=g.size)
    u = rng.normal(0, 0.5, (n_groups, 2))[g]
    v = rng.normal(0, 0.4, (n_groups, 2))[g]
    e = rng.multivariate_normal([0, 0], [[1, 0.6], [0.6, 1]], size=g.size)
    e *= np.exp(0.5 * (0.2 * x[:, None] + v))
    df = pd.DataFrame({"school": g, "prior": x, "eng": 0.5 + 0.7 * x + u[:, 0] + e[:, 0],
                       "mat": 0.8 * x + u[:, 1] + e[:, 1]})  # fmt: skip
    df.loc[rng.random(len(df)) < missing, "mat"] = np.nan
    return df


def _model(df, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the dropped rows of the univariate fits
        return MELS.from_formula(
            ["eng ~ prior", "mat ~ prior"], df, "school", ws_formula="~ prior", **kw
        )


def test_independent_outcomes_equal_separate_fits():
    """With R = I and no cross-outcome covariance the log-likelihood is the sum
    of the univariate models' (the same points per dimension)."""
    df = _data()
    mv = _model(df, n_points=11)
    assert isinstance(mv, MultivariateMELS)
    lay = mv.layout
    theta, llf, L = [], 0.0, np.zeros((4, 4))
    betas, taus = [], []
    for k, o in enumerate(("eng", "mat")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = MELS.from_formula(f"{o} ~ prior", df, "school", ws_formula="~ prior").fit()
        p = res.params
        betas.append(p["beta"].to_numpy())
        taus.append(p["tau"].to_numpy())
        L[k, k] = np.exp(0.5 * p[("alpha", "Intercept")])
        L[2 + k, k] = p[("random", "tau_l")]
        L[2 + k, 2 + k] = p[("random", "sigma_omega")]
        llf += res.llf
    theta = np.concatenate(betas + taus + [[0.0], L[lay.l_entries]])
    assert mv.loglike(theta) == pytest.approx(llf, abs=1e-8)


def _small():
    df = _data(n_groups=6, size=4, seed=3, missing=0.25)
    m = _model(df, n_points=9)
    lay = m.layout
    L = np.array([[0.3, 0, 0, 0], [0.1, 0.25, 0, 0], [-0.05, 0.04, 0.2, 0],
                  [0.03, -0.06, 0.05, 0.22]])  # fmt: skip
    theta = np.concatenate([[0.4, 0.7, 0.1, 0.8], [-0.1, 0.2, 0.05, 0.3], [0.6],
                            L[lay.l_entries]])  # fmt: skip
    return m, theta


def test_loglik_equals_brute_force_integral():
    m, theta = _small()
    d, p = m.design, m.layout.unpack(theta)
    mean = np.column_stack([d.x_mean[k] @ p["beta"][k] for k in range(2)])
    logvar = np.column_stack([d.x_ws[k] @ p["tau"][k] for k in range(2)])
    brute = multivariate_loglik_brute(
        d.y_filled, d.observed, mean, logvar, d.group_index, p["R"], p["L"], n_points=12
    )
    ev = m.objective().evaluate(theta, score=False)
    assert ev.ll_groups == pytest.approx(brute, abs=1e-6)


def test_score_matches_finite_differences():
    """The Fisher-identity score is the quadrature estimate of the exact score:
    with 11 points per dimension it is the derivative of the rule to 1e-4."""
    df = _data(n_groups=12, size=10, seed=2)
    m = _model(df, n_points=11)
    obj = m.objective()
    theta = m.start_params().to_numpy() + 0.03
    ev = obj.evaluate(theta)
    fd = np.array(
        [
            (obj.loglike(theta + h) - obj.loglike(theta - h)) / 2e-6
            for h in 1e-6 * np.eye(theta.size)
        ]
    )
    assert ev.score == pytest.approx(fd, rel=1e-4, abs=1e-4)
    assert ev.score_groups.sum(axis=0) == pytest.approx(ev.score, rel=1e-12, abs=1e-12)


def test_fit_recovers_the_residual_correlation():
    df = _data(n_groups=60, size=30, seed=4)
    res = _model(df).fit()
    assert res.converged
    r = res.residual_corr.loc["eng", "mat"]
    assert abs(r - 0.6) < 0.05
    assert set(res.cov_re.index) == {"location:eng", "location:mat", "scale:eng", "scale:mat"}
    se = res.school_effects()
    assert len(se) == 60 and {"mean[eng]", "variance[mat]_upper"} <= set(se.columns)
    # the grid's posterior means equal the adaptive quadrature's
    ev = res.model.objective().evaluate(res._theta_raw, score=False)
    assert se["mean[eng]"].to_numpy() == pytest.approx(ev.ex[:, 0], abs=1e-6)
    assert (se["variance[mat]_lower"] < se["variance[mat]"]).all()
    assert (se["variance[mat]"] < se["variance[mat]_upper"]).all()
    assert "Residual correlations" in res.summary()
    rp = res.random_params()
    assert rp.loc["residual_corr(eng,mat)", "estimate"] == pytest.approx(r)
    assert rp.loc["corr(scale:mat,scale:eng)", "estimate"] == pytest.approx(
        res.corr_re.loc["scale:mat", "scale:eng"]
    )
    assert (rp["std_error"] > 0).all() and len(rp) == 4 + 6 + 6 + 1 + 2


def test_bad_input():
    df = _data()
    with pytest.raises(MELSInputError, match="no observed values"):
        _model(df.assign(mat=np.nan))
    with pytest.raises(MELSInputError, match="not in the data"):
        MELS.from_formula(["eng ~ prior", "art ~ prior"], df, "school")
    with pytest.raises(MELSInputError, match="own formula"):
        MELS.from_formula(["eng ~ prior", "eng ~ 1"], df, "school")
    with pytest.raises(MELSInputError, match="one per outcome"):
        MELS.from_formula(["eng ~ prior", "mat ~ prior"], df, "school",
                          ws_formula=["~ 1", "~ 1", "~ 1"])  # fmt: skip


def test_kernel_equals_its_numpy_twin():
    from reference.multivariate_ref import sums_numpy, unit_scores_numpy

    from melsml import _mv

    rng = np.random.default_rng(0)
    n, m, j = 200, 3, 9
    group_ptr = np.r_[0, np.sort(rng.choice(np.arange(1, n), j - 1, replace=False)), n]
    e = np.exp(rng.normal(size=(n, m))) * (rng.random((n, m)) < 0.8)
    e[e.sum(axis=1) == 0, 0] = 1.0
    codes = (e > 0) @ (1 << np.arange(m))
    uniq, pattern = np.unique(codes, return_inverse=True)
    a = rng.normal(size=(len(uniq), m, m))
    rinv = a @ np.swapaxes(a, 1, 2)
    r0 = rng.normal(size=(n, m))
    pattern = pattern.astype(np.intp)
    out = [np.empty((j, m, m)) for _ in range(3)]
    _mv.mv_sums(r0, e, rinv, pattern, group_ptr.astype(np.intp), *out)
    for got, want in zip(out, sums_numpy(r0, e, rinv, pattern, group_ptr), strict=True):
        assert got == pytest.approx(want, rel=1e-12, abs=1e-12)
    k = [rng.normal(size=(j, m, m)) for _ in range(3)]
    g_mu, g_ws, ss = np.empty((n, m)), np.empty((n, m)), np.empty((j, len(uniq), m, m))
    _mv.mv_unit_scores(r0, e, rinv, pattern, group_ptr.astype(np.intp), *k, g_mu, g_ws, ss)
    want = unit_scores_numpy(r0, e, rinv, pattern, group_ptr, *k)
    for got, w in zip((g_mu, g_ws, ss), want, strict=True):
        assert got == pytest.approx(w, rel=1e-12, abs=1e-12)


def test_constrained_structures_and_lr_tests():
    """ "independent" with uncorrelated residuals is the sum of separate fits;
    compare() tests the structures against each other."""
    from melsml import compare

    df = _data(n_groups=40, size=25, seed=5)
    full = _model(df).fit()
    none = _model(df, cov_structure="independent", residual_corr=False, n_points=11).fit()
    sep = 0.0
    for o in ("eng", "mat"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sep += MELS.from_formula(f"{o} ~ prior", df, "school", ws_formula="~ prior").fit().llf
    assert none.llf == pytest.approx(sep, abs=1e-6)
    nls = _model(df, cov_structure="no-location-scale").fit()
    cov = nls.cov_re.to_numpy()
    assert np.abs(cov[:2, 2:]).max() < 1e-12
    table = compare(none, full)
    assert table["df"].iloc[1] == full.k_params - none.k_params == 1 + 4
    assert table["lr_stat"].iloc[1] == pytest.approx(2 * (full.llf - none.llf))
    assert "uncorrelated residuals" in table.index[0]
    with pytest.raises(MELSInputError, match="cov_structure"):
        _model(df, cov_structure="diagonal")
    with pytest.raises(MELSInputError, match="several outcomes"):
        MELS.from_formula("eng ~ prior", df, "school", residual_corr=False)


def test_long_data_give_the_wide_model():
    df = _data(n_groups=15, size=12, seed=6).rename_axis("student").reset_index()
    long = df.melt(id_vars=["student", "school", "prior"], value_vars=["eng", "mat"],
                   var_name="subject", value_name="score").dropna(subset=["score"])  # fmt: skip
    wide_model = _model(df.drop(columns="student"))
    shuffled = long.sample(frac=1, random_state=1)
    long_model = MELS.from_formula("score ~ prior", shuffled, "school", outcome="subject",
                                   unit="student", ws_formula="~ prior")  # fmt: skip
    assert long_model.design.outcomes == ("eng", "mat")
    theta = wide_model.start_params().to_numpy()
    assert long_model.loglike(theta) == pytest.approx(wide_model.loglike(theta), abs=1e-9)
    with pytest.raises(MELSInputError, match="unit"):
        MELS.from_formula("score ~ prior", long, "school", outcome="subject")
    bad = long.assign(prior=np.arange(len(long), dtype=float))
    with pytest.raises(MELSInputError, match="student-level covariates"):
        MELS.from_formula("score ~ prior", bad, "school", outcome="subject", unit="student")


def _recovery(**size):
    """Every parameter of the two-subject model within 3 SE of the truth, with
    10% of scores missing at random."""
    from melsml.simulate import SUBJECTS_TRUE, simulate_subjects

    data = simulate_subjects(seed=11, **size)
    res = MELS.from_formula(["english ~ prior", "maths ~ prior"], data, "school",
                            ws_formula="~ prior").fit()  # fmt: skip
    assert res.converged
    lay, t = res.model.layout, SUBJECTS_TRUE
    vals = [v for block in ("beta", "tau") for s in lay.outcomes for v in t[block][s].values()]
    R = np.array([[1.0, t["residual_corr"]], [t["residual_corr"], 1.0]])
    vals += list(lay.raw_correlation(R)) + list(np.linalg.cholesky(t["cov_re"])[lay.l_entries])
    z = (res.params - np.array(vals)) / res.bse
    assert (z.abs() < 3).all(), z


def test_two_subjects_recover_the_truth():
    _recovery(n_schools=150, n_students=15000)


@pytest.mark.slow
def test_two_subjects_recover_the_truth_london_sized():
    _recovery()


def test_uncorrelated_scales():
    """ "uncorrelated-scales": the scale effects' covariance across outcomes is
    0, the rest free; the score is the derivative of the log-likelihood."""
    df = _data(n_groups=40, size=25, seed=7)
    m = _model(df, cov_structure="uncorrelated-scales", n_points=11)
    obj = m.objective()
    theta = m.start_params().to_numpy() + 0.02
    score = obj.evaluate(theta).score
    fd = np.array(
        [
            (obj.loglike(theta + h) - obj.loglike(theta - h)) / 2e-6
            for h in 1e-6 * np.eye(theta.size)
        ]
    )
    assert score == pytest.approx(fd, rel=1e-4, abs=1e-4)
    res = m.fit()
    cov = res.cov_re
    assert cov.loc["scale:eng", "scale:mat"] == pytest.approx(0.0, abs=1e-14)
    assert abs(cov.loc["location:eng", "location:mat"]) > 1e-6
    from melsml import compare

    full = _model(df, n_points=11).fit()
    table = compare(res, full)
    assert table["df"].iloc[1] == 1
    assert table["added"].iloc[1] == "random[cov(scale:mat,scale:eng)]"
    assert full.llf >= res.llf - 1e-6


def test_random_intercepts_equal_nlme():
    """Without random scales: the bivariate random-intercept model with a WS
    function per subject and a within-student correlation equals nlme::lme by
    ML (varIdent x varExp, corSymm, pdSymm; tests/data/multivariate)."""
    from pathlib import Path

    here = Path(__file__).parent / "data" / "multivariate"
    df = pd.read_csv(here / "subjects.csv")
    ref = pd.read_csv(here / "nlme_reference.csv").set_index("quantity")["value"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = MELS.from_formula(["english ~ prior", "maths ~ prior"], df, "school",
                                ws_formula="~ prior", random_scale=False).fit()  # fmt: skip
    assert res.llf == pytest.approx(ref["llf"], abs=1e-7)
    p = res.params
    for block in ("beta", "tau"):
        for s in ("english", "maths"):
            for t in ("Intercept", "prior"):
                want = ref[f"{block}_{s}_{t}"]
                assert p[(block, f"{s}:{t}")] == pytest.approx(want, abs=2e-4)
    assert res.residual_corr.loc["english", "maths"] == pytest.approx(
        ref["residual_corr"], abs=2e-4
    )
    cov = res.cov_re
    assert cov.loc["location:english", "location:english"] == pytest.approx(
        ref["var_u_english"], abs=2e-4
    )
    assert cov.loc["location:english", "location:maths"] == pytest.approx(ref["cov_u"], abs=2e-4)
    assert cov.loc["location:maths", "location:maths"] == pytest.approx(
        ref["var_u_maths"], abs=2e-4
    )
    # the same model as the random-scale model's boundary: its llf at scale effects 0
    full = MELS.from_formula(["english ~ prior", "maths ~ prior"], df, "school",
                             ws_formula="~ prior")  # fmt: skip
    theta = np.concatenate([p[["beta", "tau", "residual"]].to_numpy(), np.zeros(10)])
    L = np.linalg.cholesky(cov.to_numpy()[:2, :2])
    theta[-10:][[0, 1, 2]] = L[np.tril_indices(2)]
    assert full.loglike(theta) == pytest.approx(res.llf, abs=1e-8)


def test_sparse_grid_is_exact_to_degree_seven():
    from math import gamma

    from melsml.quadrature import sparse_hermite

    x, w = sparse_hermite(4, 4)
    assert len(x) == 201 and (w < 0).any()

    def moment(k):  # int t^k exp(-t^2) dt
        return 0.0 if k % 2 else gamma((k + 1) / 2)

    for powers in [
        (0, 0, 0, 0),
        (2, 0, 0, 0),
        (2, 2, 2, 0),
        (4, 2, 0, 0),
        (6, 0, 0, 0),
        (3, 1, 0, 0),
    ]:
        got = np.sum(w * np.prod(x ** np.array(powers), axis=1))
        assert got == pytest.approx(np.prod([moment(k) for k in powers]), rel=1e-10, abs=1e-12)


def test_four_outcomes_take_the_sparse_grid():
    """Beyond three outcomes the default is the sparse grid (201 nodes for four);
    its log-likelihood is within 1e-3 of the 7-point product rule's (2401)."""
    from melsml.mvlikelihood import MultiObjective

    rng = np.random.default_rng(3)
    n_groups, size, m = 25, 20, 4
    g = np.repeat(np.arange(n_groups), size)
    x = rng.normal(size=g.size)
    eff = rng.normal(size=(n_groups, 2 * m))[g] * np.r_[[0.3] * m, [0.3] * m]
    z = rng.multivariate_normal(np.zeros(m), 0.5 + 0.5 * np.eye(m), size=g.size)
    df = pd.DataFrame({"school": g, "prior": x})
    for k in range(m):
        df[f"y{k}"] = 0.6 * x + eff[:, k] + np.exp(0.5 * (-0.5 + eff[:, m + k])) * z[:, k]
    model = MELS.from_formula([f"y{k} ~ prior" for k in range(m)], df, "school")
    assert model.integration == "sparse"
    theta = model.start_params().to_numpy()
    dense = MultiObjective(model.design, model.layout, 7).loglike(theta)
    sparse = model.loglike(theta)
    assert abs(sparse - dense) < 1e-3
