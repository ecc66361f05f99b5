"""Data-generating process of the MELS model, for tests, docs and the demo."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from .exceptions import MELSInputError
from .formula import build_design
from .params import MIXWILD_RANDOM
from .structure import RandomStructure

__all__ = [
    "simulate",
    "simulate_london",
    "LONDON_TRUE",
    "LONDON_SLOPE_TRUE",
    "LONDON_COVARIATE_TRUE",
    "LONDON_SCALE_SLOPE_TRUE",
    "simulate_three_level",
    "THREE_LEVEL_TRUE",
    "simulate_subjects",
    "SUBJECTS_TRUE",
]

#: true parameters of :func:`simulate_london` with ``model=3`` (loosely after the
#: article's model 3 for London: a negative location-scale association)
LONDON_TRUE = {
    "beta": {"Intercept": 0.0, "prior": 0.65},
    "alpha": {"Intercept": np.log(0.09)},
    "tau": {"Intercept": np.log(0.50), "prior": -0.12},
    "random": {"tau_l": -0.12, "sigma_omega": 0.22},
}
#: true parameters with ``model=7`` (student characteristics in both functions)
LONDON_COVARIATE_TRUE = {
    "beta": {
        "Intercept": 0.05,
        "prior": 0.62,
        "female": 0.10,
        "fsm": -0.15,
        "eal": 0.12,
        "sen": -0.25,
        "age": -0.02,
        "ethnicity[T.Black]": 0.05,
        "ethnicity[T.Asian]": 0.15,
        "ethnicity[T.Other]": 0.08,
    },
    "alpha": {"Intercept": np.log(0.08)},
    "tau": {"Intercept": np.log(0.46), "prior": -0.12, "fsm": 0.10, "sen": 0.18, "female": -0.05},
    "random": {"tau_l": -0.12, "sigma_omega": 0.22},
}
#: true parameters with ``model=5`` or ``6`` (random slope on prior; model 6 also
#: has prior in the WS function): Cholesky entries of cov(u0, u1, omega)
LONDON_SLOPE_TRUE = {
    "beta": {"Intercept": 0.0, "prior": 0.65},
    "tau": {"Intercept": np.log(0.50), "prior": -0.12},
    "random": {
        "L(Intercept,Intercept)": 0.30,
        "L(prior,Intercept)": 0.03,
        "L(prior,prior)": 0.095,
        "L(omega,Intercept)": -0.12,
        "L(omega,prior)": 0.05,
        "L(omega,omega)": 0.20,
    },
}
#: true parameters of :func:`simulate_london` with ``scale_slope=True``: model 3
#: plus a random scale slope on prior (``ws_re_formula="~ 1 + prior"``), in which
#: schools differ in how steeply the variance of progress falls with prior
#: attainment; Cholesky entries of cov(theta1, omega, omega_prior)
LONDON_SCALE_SLOPE_TRUE = {
    "beta": {"Intercept": 0.0, "prior": 0.65},
    "alpha": {"Intercept": np.log(0.09)},
    "tau": {"Intercept": np.log(0.50), "prior": -0.12},
    "random": {
        "L(omega,Intercept)": -0.12,
        "L(omega,omega)": 0.22,
        "L(omega:prior,Intercept)": 0.02,
        "L(omega:prior,omega)": 0.04,
        "L(omega:prior,omega:prior)": 0.10,
    },
}
_MODEL_FORMULAS = {
    3: ("y ~ prior", "~ 1", "~ prior"),
    5: ("y ~ prior", "~ 1", "~ 1"),
    6: ("y ~ prior", "~ 1", "~ prior"),
    7: (
        "y ~ prior + female + fsm + eal + sen + age + ethnicity",
        "~ 1",
        "~ prior + fsm + sen + female",
    ),
}


def _lookup(params, block: str, names) -> np.ndarray:
    if isinstance(params, pd.Series):
        get = {
            b: params.xs(b, level="block").to_dict()
            for b in params.index.get_level_values("block").unique()
        }
    else:
        get = {b: dict(v) for b, v in params.items()}
    values = get.get(block, {})
    missing = [n for n in names if n not in values]
    if missing:
        raise MELSInputError(f"params lack {block} value(s) for {', '.join(missing)}")
    return np.array([float(values[n]) for n in names])


def simulate(
    data: pd.DataFrame,
    groups: str,
    params: Mapping | pd.Series,
    *,
    formula: str = "y ~ 1",
    bs_formula: str = "~ 1",
    ws_formula: str = "~ 1",
    re_formula: str = "~ 1",
    ws_re_formula: str = "~ 1",
    seed: int | np.random.Generator | None = None,
    return_effects: bool = False,
):
    """Simulate the outcome of a MELS model on given covariates.

    Parameters
    ----------
    data : DataFrame
        Covariates and the groups column (the outcome column, if present, is
        replaced).
    groups : str
        Groups column.
    params : mapping or Series
        ``{"beta": {term: value}, "alpha": {...}, "tau": {...},
        "random": {"tau_l": .., "tau_q": .., "sigma_omega": ..}}`` keyed by the
        formulas' term names, or a fitted ``res.params``.  Absent random
        parameters are 0 (no random scale when all are).  With random slopes
        (``re_formula``) the random block holds the Cholesky entries
        ``L(row,col)`` of cov(u, omega) as in :mod:`melsml.params`; without
        ``L(omega,...)`` entries there is no random scale.  So it does with
        random scale slopes (``ws_re_formula``), whose rows are labelled
        ``omega:<term>``.
    formula, bs_formula, ws_formula, re_formula, ws_re_formula : str
        As in :meth:`melsml.MELS.from_formula`.
    seed : int or Generator, optional
    return_effects : bool
        Also return the groups' true effects (theta1, theta2, u, omega).

    Returns
    -------
    DataFrame (a copy of ``data`` with the outcome), and with
    ``return_effects`` a DataFrame of true effects indexed by group.
    """
    rng = np.random.default_rng(seed)
    outcome = formula.split("~")[0].strip()
    if not outcome.isidentifier():
        raise MELSInputError(f"formula={formula!r} must name the outcome column on the left")
    frame = data.copy()
    frame[outcome] = 0.0
    design = build_design(
        formula,
        frame,
        groups,
        bs_formula=bs_formula,
        ws_formula=ws_formula,
        re_formula=re_formula,
        ws_re_formula=ws_re_formula,
    )
    if design.n_dropped:
        raise MELSInputError("simulate() needs covariates without missing values")
    beta = _lookup(params, "beta", design.mean_names)
    tau = _lookup(params, "tau", design.ws_names)
    if not design.random_intercept_only or design.scale_names != ("Intercept",):
        return _simulate_general(frame, outcome, design, params, beta, tau, rng, return_effects)
    alpha = _lookup(params, "alpha", design.bs_names)
    rand = {}
    for name in MIXWILD_RANDOM:
        try:
            rand[name] = float(_lookup(params, "random", [name])[0])
        except MELSInputError:
            rand[name] = 0.0
    j = design.n_groups
    theta1, theta2 = rng.standard_normal(j), rng.standard_normal(j)
    omega = rand["tau_l"] * theta1 + rand["tau_q"] * theta1**2 + rand["sigma_omega"] * theta2
    gidx = design.group_index
    sd_u = np.exp(0.5 * design.x_bs @ alpha)
    sd_e = np.exp(0.5 * (design.x_ws @ tau + omega[gidx]))
    y = design.x_mean @ beta + sd_u * theta1[gidx] + sd_e * rng.standard_normal(design.n_obs)
    frame.loc[design.row_index, outcome] = y
    if not return_effects:
        return frame
    effects = pd.DataFrame(
        {
            "theta1": theta1,
            "theta2": theta2,
            "u": np.add.reduceat(sd_u, design.group_ptr[:-1]) / design.group_sizes * theta1,
            "omega": omega,
        },
        index=pd.Index(design.group_labels, name=groups),
    )
    return frame, effects


def _simulate_general(frame, outcome, design, params, beta, tau, rng, return_effects):
    """Simulate from the Cholesky entries of the covariance of (u, v): random
    location slopes and/or random scale slopes."""
    bs = design.random_intercept_only
    structure = RandomStructure(location=design.re_names, scale=design.scale_names, bs=bs)
    q, s = structure.q, structure.s
    labels = structure.labels
    random = (
        params.xs("random", level="block").to_dict()
        if isinstance(params, pd.Series)
        else dict(params.get("random", {}))
    )
    chol = np.zeros((q + s, q + s))
    if bs:
        chol[0, 0] = 1.0
    for name, value in random.items():
        inner = name[2:-1].split(",") if name.startswith("L(") and name.endswith(")") else []
        if len(inner) != 2 or inner[0] not in labels or inner[1] not in labels:
            raise MELSInputError(
                f"random parameter {name!r} is not an entry L(row,col) of the factor of "
                f"cov(u, v) with labels {', '.join(labels)}"
            )
        i, j = labels.index(inner[0]), labels.index(inner[1])
        if j > i:
            raise MELSInputError(f"{name!r} is above the diagonal of a lower-triangular factor")
        if bs and i == j == 0:
            raise MELSInputError(
                f"{name!r}: with a random intercept the location SD is exp(alpha / 2)"
            )
        chol[i, j] = float(value)
    j = design.n_groups
    theta = rng.standard_normal((j, q + s))
    x = theta @ chol.T
    u, v = x[:, :q], x[:, q:]
    gidx = design.group_index
    z = (
        np.exp(0.5 * design.x_bs @ _lookup(params, "alpha", design.bs_names))[:, None]
        if bs
        else design.x_re
    )
    sd_e = np.exp(0.5 * (design.x_ws @ tau + np.sum(design.x_scale * v[gidx], axis=1)))
    y = (
        design.x_mean @ beta
        + np.sum(z * u[gidx], axis=1)
        + sd_e * rng.standard_normal(design.n_obs)
    )
    frame.loc[design.row_index, outcome] = y
    if not return_effects:
        return frame
    cols = {f"u[{t}]": u[:, a] for a, t in enumerate(design.re_names)}
    for k, t in enumerate(design.scale_names):
        cols["omega" if t == "Intercept" else f"omega[{t}]"] = v[:, k]
    effects = pd.DataFrame(cols, index=pd.Index(design.group_labels, name=design.groups))
    return frame, effects


def london_covariates(
    n_schools: int = 465, n_students: int = 71000, seed: int | np.random.Generator | None = 2024
) -> pd.DataFrame:
    """Student and school covariates shaped like the article's London data.

    ``n_schools`` schools of 14 to 330 students (about ``n_students`` in all);
    standardised prior score (with school-level sorting), female, fsm, eal,
    sen, age (years from the cohort mean), ethnicity (categorical: White
    (reference), Black, Asian, Other) and school type (categorical: standard
    (reference), academy, grammar).
    """
    rng = np.random.default_rng(seed)
    mean_size = n_students / n_schools
    lo, hi = 14, 330
    frac = (mean_size - lo) / (hi - lo)
    if not 0 < frac < 1:
        raise MELSInputError("n_students / n_schools must lie between 14 and 330")
    a = 2.0
    sizes = lo + np.round((hi - lo) * rng.beta(a, a * (1 - frac) / frac, n_schools)).astype(int)
    if n_schools >= 2:
        sizes[0], sizes[1] = lo, hi
    school = np.repeat(np.arange(1, n_schools + 1), sizes)
    n = sizes.sum()
    school_prior = rng.normal(0, 0.45, n_schools)
    types = ["standard", "academy", "grammar"]
    ethnic = ["White", "Black", "Asian", "Other"]
    stype = rng.choice(types, n_schools, p=[0.55, 0.4, 0.05])
    school_prior[stype == "grammar"] += 1.2
    prior = school_prior[school - 1] + rng.normal(0, np.sqrt(1 - 0.45**2), n)
    prior = (prior - prior.mean()) / prior.std()
    fsm_p = 1 / (1 + np.exp(1.0 + 0.8 * school_prior))
    return pd.DataFrame(
        {
            "school": school,
            "prior": prior,
            "female": rng.binomial(1, 0.5, n),
            "fsm": rng.binomial(1, fsm_p[school - 1]),
            "eal": rng.binomial(1, 0.3, n),
            "sen": rng.binomial(1, 1 / (1 + np.exp(1.8 + 0.9 * prior))),
            "age": rng.uniform(-0.5, 0.5, n),
            "ethnicity": pd.Categorical(
                rng.choice(ethnic, n, p=[0.45, 0.2, 0.2, 0.15]), categories=ethnic
            ),
            "school_type": pd.Categorical(stype[school - 1], categories=types),
        }
    )


def simulate_london(
    model: int = 3,
    *,
    seed: int = 2024,
    n_schools: int = 465,
    n_students: int = 71000,
    return_effects: bool = False,
    scale_slope: bool = False,
):
    """A London-sized simulated data set (465 schools, 14-330 students, ~71,000).

    Parameters
    ----------
    model : {3, 5, 6, 7}
        Data-generating model: the article's model 3 (prior score in the mean
        and WS functions; true values :data:`LONDON_TRUE`), 5 or 6 (random
        slope on prior, with prior in the WS function in model 6;
        :data:`LONDON_SLOPE_TRUE`, whose ``tau["prior"]`` model 5 ignores),
        or model 7 (student characteristics too;
        :data:`LONDON_COVARIATE_TRUE`).  The covariates of model 7 are in the
        data either way.
    seed : int
    return_effects : bool
        Also return the schools' true effects.
    scale_slope : bool
        With ``model=3``: add a random scale slope on prior
        (:data:`LONDON_SCALE_SLOPE_TRUE`; fit it with
        ``ws_re_formula="~ 1 + prior"``).
    """
    if model not in _MODEL_FORMULAS:
        raise MELSInputError(f"unknown model {model!r}; allowed values: 3, 5, 6, 7")
    rng = np.random.default_rng(seed)
    data = london_covariates(n_schools, n_students, rng)
    formula, bs, ws = _MODEL_FORMULAS[model]
    params = {3: LONDON_TRUE, 5: LONDON_SLOPE_TRUE, 6: LONDON_SLOPE_TRUE, 7: LONDON_COVARIATE_TRUE}[
        model
    ]
    re = "~ 1 + prior" if model in (5, 6) else "~ 1"
    ws_re = "~ 1"
    if scale_slope:
        if model != 3:
            raise MELSInputError("scale_slope=True goes with model=3")
        params, ws_re = LONDON_SCALE_SLOPE_TRUE, "~ 1 + prior"
    return simulate(
        data,
        "school",
        params,
        formula=formula,
        bs_formula=bs,
        ws_formula=ws,
        re_formula=re,
        ws_re_formula=ws_re,
        seed=rng,
        return_effects=return_effects,
    )


#: true parameters of :func:`simulate_three_level`: model 3 with districts
#: (district SDs 0.14 in the mean and 0.10 in the log variance, correlation -0.3)
THREE_LEVEL_TRUE = {
    "beta": {"Intercept": 0.0, "prior": 0.65},
    "alpha": {"Intercept": np.log(0.07)},
    "tau": {"Intercept": np.log(0.50), "prior": -0.12},
    "school": {"tau_l": -0.10, "sigma_omega": 0.20},
    "district": {
        "L(location,location)": np.sqrt(0.02),
        "L(scale,location)": -0.03,
        "L(scale,scale)": np.sqrt(0.01 - 0.03**2),
    },
}


def simulate_three_level(
    n_outer: int = 150,
    n_inner: int = 20,
    n_units: int = 180,
    *,
    params: Mapping | None = None,
    levels: tuple[str, str] = ("district", "school"),
    seed: int | None = None,
) -> pd.DataFrame:
    """Students (``prior``, ``y``) in schools in districts, from the three-level model
    with a random intercept and prior attainment in the mean and WS functions.

    The number of inner units per outer unit is 1 + Poisson(n_inner - 1); of
    students per inner unit max(2, Poisson(n_units)).  ``params`` has the
    blocks of :data:`THREE_LEVEL_TRUE` (the level blocks named after
    ``levels``; entries of the outer block may include ``bs`` rows).  Inner
    ids repeat across outer units (labels within their parent).
    """
    outer, inner = levels
    if params is None:
        true = THREE_LEVEL_TRUE
        params = {**true, outer: true["district"], inner: true["school"]}
    rng = np.random.default_rng(seed)
    per_outer = 1 + rng.poisson(max(n_inner - 1, 0), n_outer)
    n_in = int(per_outer.sum())
    sizes = np.maximum(rng.poisson(n_units, n_in), 2)
    effects = ("location", "scale", "bs")
    chol = np.zeros((3, 3))
    for name, value in params[outer].items():
        row, col = name[2:-1].split(",")
        chol[effects.index(row), effects.index(col)] = value
    b3 = rng.standard_normal((n_outer, 3)) @ chol.T
    b3_in = np.repeat(b3, per_outer, axis=0)
    th = rng.standard_normal((n_in, 2))
    sch = params.get(inner, {})
    v2 = sch.get("tau_l", 0.0) * th[:, 0] + sch.get("sigma_omega", 0.0) * th[:, 1]
    sd_u = np.exp(0.5 * (params["alpha"]["Intercept"] + b3_in[:, 2]))
    u = b3_in[:, 0] + sd_u * th[:, 0]
    v = b3_in[:, 1] + v2
    n = int(sizes.sum())
    prior = rng.standard_normal(n)
    beta, tau = params["beta"], params["tau"]
    logvar = tau["Intercept"] + tau["prior"] * prior + np.repeat(v, sizes)
    y = (
        beta["Intercept"]
        + beta["prior"] * prior
        + np.repeat(u, sizes)
        + np.exp(0.5 * logvar) * rng.standard_normal(n)
    )
    outer_id = np.repeat(np.repeat(np.arange(n_outer), per_outer), sizes)
    inner_id = np.repeat(np.concatenate([np.arange(k) for k in per_outer]), sizes)
    return pd.DataFrame(
        {
            outer: [f"{outer[:1].upper()}{k:03d}" for k in outer_id],
            inner: inner_id + 1,
            "prior": prior,
            "y": y,
        }
    )


#: true parameters of :func:`simulate_subjects`: English and maths, model 3 in
#: each, a within-student residual correlation of 0.6, school means correlated
#: 0.7 across subjects and school variances (scale effects) correlated 0.5
SUBJECTS_TRUE = {
    "beta": {
        "english": {"Intercept": 0.0, "prior": 0.60},
        "maths": {"Intercept": 0.0, "prior": 0.70},
    },
    "tau": {
        "english": {"Intercept": np.log(0.50), "prior": -0.12},
        "maths": {"Intercept": np.log(0.40), "prior": -0.20},
    },
    "residual_corr": 0.6,
    # covariance of (u_english, u_maths, v_english, v_maths)
    "cov_re": np.array(
        [
            [0.090, 0.063, -0.0079, -0.0040],
            [0.063, 0.090, -0.0040, -0.0079],
            [-0.0079, -0.0040, 0.0484, 0.0242],
            [-0.0040, -0.0079, 0.0242, 0.0484],
        ]
    ),
}


def simulate_subjects(
    n_schools: int = 465,
    n_students: int = 71000,
    *,
    missing: float = 0.1,
    params: Mapping | None = None,
    seed: int | None = 2024,
) -> pd.DataFrame:
    """English and maths scores of students in London-like schools (wide: one row
    per student), from the multivariate MELS model with the parameters of
    :data:`SUBJECTS_TRUE` (or ``params`` with its keys).  Each score is missing
    at random with probability ``missing`` (never both of a student's).

    Columns: school, prior, english, maths.
    """
    p = SUBJECTS_TRUE if params is None else params
    rng = np.random.default_rng(seed)
    cov = london_covariates(n_schools, n_students, rng)
    g = cov["school"].to_numpy()
    codes, school = np.unique(g, return_inverse=True)
    prior = cov["prior"].to_numpy()
    subjects = list(p["beta"])
    m = len(subjects)
    effects = rng.multivariate_normal(np.zeros(2 * m), p["cov_re"], size=len(codes))[school]
    corr = np.full((m, m), p["residual_corr"])
    np.fill_diagonal(corr, 1.0)
    z = rng.multivariate_normal(np.zeros(m), corr, size=len(g))
    out = {"school": g, "prior": prior}
    for k, s in enumerate(subjects):
        b, t = p["beta"][s], p["tau"][s]
        logvar = t["Intercept"] + t["prior"] * prior + effects[:, m + k]
        out[s] = (
            b["Intercept"] + b["prior"] * prior + effects[:, k] + np.exp(0.5 * logvar) * z[:, k]
        )
    frame = pd.DataFrame(out)
    drop = rng.random((len(g), m)) < missing
    drop[drop.all(axis=1), rng.integers(0, m)] = False
    for k, s in enumerate(subjects):
        frame.loc[drop[:, k], s] = np.nan
    return frame
