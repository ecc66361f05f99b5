"""One maximum-likelihood fit of a second-stage model, by statsmodels.

Each function takes the outcome and the design of one replication and returns
a :class:`Replication`: the estimates, their covariance (inverse observed
information) and the log-likelihood.  Families: ``gaussian`` (linear
regression by ML: the residual variance is SSE / n, as MixWILD's MIXREG
reports it; with groups, a random-intercept linear model by ML), ``ordinal``
(cumulative logit or probit: P(y <= c) = F(gamma_c - x'beta)), ``poisson``
and ``nominal`` (multinomial logit, the first category the reference).  A multilevel ordinal
stage 2 is a random-intercept cumulative model fitted by melsml's own kernel,
a multilevel count stage 2 a random-intercept Poisson model and a multilevel
nominal one a multinomial logit with correlated random intercepts
(:mod:`melsml.glmm`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import special

from .exceptions import MELSInputError
from .glmm import MultinomialRandomIntercept, PoissonRandomIntercept
from .ordinal import thresholds

FAMILIES = ("gaussian", "ordinal", "poisson", "nominal")


@dataclass(frozen=True)
class Replication:
    """One replication's fit: ``params`` (k,), ``cov`` (k, k), ``llf``, ``names``."""

    params: np.ndarray
    cov: np.ndarray
    llf: float
    names: tuple[str, ...]


def _quiet(fun):
    """statsmodels' convergence and domain chatter is judged by the caller."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fun()


def fit_gaussian(y: np.ndarray, x: np.ndarray, names: tuple[str, ...]) -> Replication:
    """Linear regression by ML: beta by least squares, sigma^2 = SSE / n,
    Var(beta) = sigma^2 (X'X)^-1 and Var(sigma^2) = 2 sigma^4 / n."""
    import statsmodels.api as sm

    res = _quiet(lambda: sm.OLS(y, x).fit())
    n = y.shape[0]
    s2 = float(res.ssr / n)
    k = x.shape[1]
    cov = np.zeros((k + 1, k + 1))
    cov[:k, :k] = res.cov_params() * (s2 / res.scale)
    cov[k, k] = 2.0 * s2**2 / n
    return Replication(np.r_[res.params, s2], cov, float(res.llf), (*names, "residual variance"))


def fit_gaussian_multilevel(
    y: np.ndarray, x: np.ndarray, names: tuple[str, ...], groups: np.ndarray
) -> Replication:
    """Random-intercept linear model by ML (statsmodels MixedLM): the fixed
    effects with their covariance, the group variance with MixedLM's standard
    error (``bse_re``), and the residual variance, whose standard error MixedLM
    does not give (NaN; so are the covariances between the blocks)."""
    from statsmodels.regression.mixed_linear_model import MixedLM

    res = _quiet(lambda: MixedLM(y, x, groups).fit(reml=False))
    k = x.shape[1]
    cov = np.full((k + 2, k + 2), np.nan)
    cov[:k, :k] = np.asarray(res.cov_params())[:k, :k]
    cov[k, k] = float(np.asarray(res.bse_re)[0]) ** 2
    params = np.r_[np.asarray(res.fe_params), float(np.asarray(res.cov_re)[0, 0]), res.scale]
    return Replication(params, cov, float(res.llf), (*names, "group variance", "residual variance"))


def _link_parts(link: str, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """F(t), F'(t), F''(t) of the link's distribution (t may hold +-inf)."""
    fin = np.isfinite(t)
    tt = np.where(fin, t, 0.0)
    if link == "logit":
        big = special.expit(tt)
        small = big * (1.0 - big)
        d2 = small * (1.0 - 2.0 * big)
    else:
        big = special.ndtr(tt)
        small = np.exp(-0.5 * tt * tt) / np.sqrt(2.0 * np.pi)
        d2 = -tt * small
    big = np.where(fin, big, (t > 0).astype(float))
    return big, np.where(fin, small, 0.0), np.where(fin, d2, 0.0)


def _ordinal_loglik(theta, codes, x, n_cat, link, derivatives: bool):
    """Log-likelihood of the cumulative model P(y <= c) = F(gamma_c - x'beta) at
    theta = (beta, gamma) and, with ``derivatives``, its gradient and Hessian."""
    k = x.shape[1]
    beta, gamma = theta[:k], theta[k:]
    cuts = np.r_[-np.inf, gamma, np.inf]
    eta = x @ beta
    a, b = cuts[codes + 1] - eta, cuts[codes] - eta
    fa, da, d2a = _link_parts(link, a)
    fb, db, d2b = _link_parts(link, b)
    prob = fa - fb
    if np.any(prob <= 0):
        return -np.inf, None, None
    llf = float(np.log(prob).sum())
    if not derivatives:
        return llf, None, None
    n, m = x.shape[0], n_cat - 1
    # a and b as functions of theta: d a / d theta = (-x, e_c), d b / d theta = (-x, e_{c-1})
    da_dt = np.zeros((n, k + m))
    db_dt = np.zeros((n, k + m))
    da_dt[:, :k] = -x
    db_dt[:, :k] = -x
    rows = np.arange(n)
    upper, lower = codes < m, codes > 0
    da_dt[rows[upper], k + codes[upper]] = 1.0
    db_dt[rows[lower], k + codes[lower] - 1] = 1.0
    ga, gb = da / prob, -db / prob
    grad = da_dt.T @ ga + db_dt.T @ gb
    haa = d2a / prob - ga**2
    hbb = -d2b / prob - gb**2
    hab = -ga * gb
    hess = (
        (da_dt * haa[:, None]).T @ da_dt
        + (db_dt * hbb[:, None]).T @ db_dt
        + (da_dt * hab[:, None]).T @ db_dt
        + (db_dt * hab[:, None]).T @ da_dt
    )
    return llf, grad, hess


def fit_ordinal(y: pd.Categorical, x: np.ndarray, names: tuple[str, ...], link: str) -> Replication:
    """Cumulative logit or probit by ML: P(y <= c) = F(gamma_c - x'beta), the
    model of statsmodels' OrderedModel (the tests hold the two together), by
    Newton-Raphson with the analytic gradient and observed information:
    OrderedModel's numerical derivatives cost about 50 ms a fit, too slow for
    hundreds of replications.  The slopes, then the thresholds gamma_c."""
    codes = np.asarray(y.codes, dtype=np.intp)
    n_cat = len(y.categories)
    k = x.shape[1]
    cum = np.cumsum(np.bincount(codes, minlength=n_cat))[:-1] / codes.size
    cum = np.clip(cum, 1e-3, 1 - 1e-3)
    gamma0 = special.logit(cum) if link == "logit" else special.ndtri(cum)
    theta = np.r_[np.zeros(k), gamma0]
    llf, grad, hess = _ordinal_loglik(theta, codes, x, n_cat, link, True)
    for _ in range(200):
        try:
            step = np.linalg.solve(-hess, grad)
        except np.linalg.LinAlgError:
            step = grad / (1.0 + np.abs(grad).max())
        t = 1.0
        while t > 1e-10:
            new = theta + t * step
            new_llf = _ordinal_loglik(new, codes, x, n_cat, link, False)[0]
            if np.all(np.diff(new[k:]) > 0) and new_llf >= llf - 1e-12 * abs(llf):
                break
            t *= 0.5
        else:
            break
        theta = new
        llf, grad, hess = _ordinal_loglik(theta, codes, x, n_cat, link, True)
        if float(grad @ np.linalg.solve(-hess, grad)) < 1e-20:
            break
    cov = np.linalg.inv(-hess)
    cats = [str(c) for c in y.categories]
    thr = tuple(f"threshold {a}/{b}" for a, b in zip(cats[:-1], cats[1:], strict=True))
    return Replication(theta, 0.5 * (cov + cov.T), llf, names + thr)


def fit_poisson(y: np.ndarray, x: np.ndarray, names: tuple[str, ...]) -> Replication:
    """Poisson regression with the log link by ML (statsmodels GLM)."""
    import statsmodels.api as sm

    res = _quiet(lambda: sm.GLM(y, x, family=sm.families.Poisson()).fit())
    return Replication(np.asarray(res.params), np.asarray(res.cov_params()), float(res.llf), names)


def fit_nominal(y: pd.Categorical, x: np.ndarray, names: tuple[str, ...]) -> Replication:
    """Multinomial logit by ML (statsmodels MNLogit), the first category the
    reference: one coefficient per term and other category, ``term[category]``."""
    import statsmodels.api as sm

    res = _quiet(lambda: sm.MNLogit(np.asarray(y.codes), x).fit(disp=False, maxiter=200))
    cats = [str(c) for c in y.categories]
    # statsmodels orders the parameters category by category
    params = np.asarray(res.params).T.ravel()
    full = [f"{t}[{c}]" for c in cats[1:] for t in names]
    return Replication(params, np.asarray(res.cov_params()), float(res.llf), tuple(full))


def fit_ordinal_multilevel(
    mels_class, formula: str, frame: pd.DataFrame, groups: str, link: str, start=None
) -> tuple[Replication, pd.Series]:
    """A random-intercept cumulative ``link`` model by ML with melsml's own
    kernel (``mels_class``: the stage-1 model's class, :class:`melsml.MELS`):
    the slopes, the thresholds gamma_c and the group variance exp(alpha),
    the last two with delta-method covariances.  Returns the replication and
    melsml's parameters (a start for the next replication)."""
    model = mels_class.from_formula(
        formula, frame, groups, family="ordinal", link=link, random_scale=False
    )
    res = _quiet(lambda: model.fit(start_params=start))
    p = res.params
    beta = p["beta"].to_numpy()
    raw = p["thresholds"].to_numpy()
    alpha = float(p["alpha"].iloc[0])
    k, m = beta.size, raw.size
    jac = np.zeros((k + m + 1, p.size))
    jac[:k, :k] = np.eye(k)
    jac[k : k + m, k : k + m] = _threshold_jacobian(raw)
    jac[k + m, k + m] = np.exp(alpha)
    cov = jac @ res.cov_params().to_numpy() @ jac.T
    names = (
        *p["beta"].index,
        *(f"threshold {c}" for c in p["thresholds"].index),
        "group variance",
    )
    params = np.r_[beta, thresholds(raw), np.exp(alpha)]
    return Replication(params, cov, float(res.llf), tuple(names)), p


def fit_poisson_multilevel(
    y: np.ndarray, x: np.ndarray, names: tuple[str, ...], groups: np.ndarray, start=None
) -> tuple[Replication, np.ndarray]:
    """Random-intercept Poisson regression by ML (:mod:`melsml.glmm`, adaptive
    Gauss-Hermite quadrature, 11 points): the coefficients and the group
    variance sigma^2 (delta-method covariance).  Returns the replication and
    (beta, sigma), a start for the next replication."""
    codes = pd.factorize(groups)[0]
    fit = PoissonRandomIntercept(y, x, codes).fit(start)
    k = x.shape[1]
    sigma = float(fit.params[-1])
    jac = np.eye(k + 1)
    jac[k, k] = 2.0 * sigma
    params = np.r_[fit.params[:k], sigma**2]
    return Replication(
        params, jac @ fit.cov @ jac.T, fit.llf, (*names, "group variance")
    ), fit.params


def fit_nominal_multilevel(
    y: pd.Categorical, x: np.ndarray, names: tuple[str, ...], groups: np.ndarray, start=None
) -> tuple[Replication, np.ndarray]:
    """Multinomial logit with correlated random intercepts by ML
    (:mod:`melsml.glmm`, adaptive Gauss-Hermite quadrature): ``term[category]``
    for every category but the first, then the random intercepts' covariance
    (``var[c]``, ``cov[c,d]``, delta-method covariances).  Returns the
    replication and melsml.glmm's parameters, a start for the next one."""
    codes = pd.factorize(groups)[0]
    model = MultinomialRandomIntercept(np.asarray(y.codes), x, codes)
    fit = model.fit(start)
    k, m = x.shape[1], model.m
    _, chol = model.unpack(fit.params)
    rows, cols = model.tril
    # d vech(L L') / d vech(L): d S_ab / d L_cd = [a = c] L_bd + [b = c] L_ad
    jac_s = np.zeros((rows.size, rows.size))
    for p_, (a, b) in enumerate(zip(rows, cols, strict=True)):
        for q_, (c, d) in enumerate(zip(rows, cols, strict=True)):
            jac_s[p_, q_] = (a == c) * chol[b, d] + (b == c) * chol[a, d]
    jac = np.eye(k * m + rows.size)
    jac[k * m :, k * m :] = jac_s
    sigma = chol @ chol.T
    cats = [str(c) for c in y.categories][1:]
    re_names = [
        f"var[{cats[a]}]" if a == b else f"cov[{cats[b]},{cats[a]}]"
        for a, b in zip(rows, cols, strict=True)
    ]
    full = [f"{t}[{c}]" for c in cats for t in names] + re_names
    params = np.r_[fit.params[: k * m], sigma[rows, cols]]
    return Replication(params, jac @ fit.cov @ jac.T, fit.llf, tuple(full)), fit.params


def _threshold_jacobian(raw: np.ndarray) -> np.ndarray:
    """d gamma / d raw for gamma_1 = raw_1, gamma_c = raw_1 + sum_{1<i<=c} exp(raw_i)."""
    m = raw.size
    jac = np.zeros((m, m))
    jac[:, 0] = 1.0
    for c in range(1, m):
        jac[c:, c] = np.exp(raw[c])
    return jac


def fit_one(
    family: str,
    y,
    x: np.ndarray,
    names: tuple[str, ...],
    *,
    link: str = "logit",
    groups: np.ndarray | None = None,
) -> Replication:
    """Fit one replication of ``family`` (see the module's docstring)."""
    if groups is not None:
        if family != "gaussian":
            raise MELSInputError(
                "fit_one fits a multilevel stage 2 of the gaussian family only; see "
                "fit_ordinal_multilevel and fit_poisson_multilevel"
            )
        return fit_gaussian_multilevel(y, x, names, groups)
    if family == "gaussian":
        return fit_gaussian(y, x, names)
    if family == "ordinal":
        return fit_ordinal(y, x, names, link)
    if family == "poisson":
        return fit_poisson(y, x, names)
    if family == "nominal":
        return fit_nominal(y, x, names)
    raise MELSInputError(f"unknown stage-2 family {family!r}; allowed values: {FAMILIES}")
