"""Power and sample size for school variance studies, by simulation.

For each design (numbers of schools and students per school) the outcome is
simulated ``n_sims`` times from a MELS model with given parameters, the model
is fitted, and the test of interest is run:

- ``test="random_scale"``: the likelihood-ratio test of the random scale
  (sigma_omega and tau_l) against the model without it, with the 50:50
  chi-square mixture of :func:`melsml.compare`;
- ``test="block[term]"`` (e.g. ``"tau[prior]"``): the Wald z test of that
  parameter in the full model.

The power is the share of simulations that reject at ``alpha``; the
precision of the schools' variances is the median width of their 95%
intervals (at the reference covariates) and the root mean square error of
their estimated log variances against the simulated truth, each averaged
over simulations.  Every
simulation's random numbers come from ``numpy.random.SeedSequence(seed)``,
spawned once per design and simulation, so results repeat exactly.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from itertools import product

import numpy as np
import pandas as pd

from .exceptions import MELSInputError
from .formula import _formula_names, _parse
from .model import MELS
from .simulate import simulate
from .summary import compare

logger = logging.getLogger(__name__)


def _as_list(value, name: str) -> list[int]:
    values = [value] if np.isscalar(value) else list(value)
    if not values or any(
        isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 2 for v in values
    ):
        raise MELSInputError(f"{name} must be integers of at least 2, got {value!r}")
    return [int(v) for v in values]


def _covariate_names(formula: str, bs_formula: str, ws_formula: str) -> list[str]:
    names: set[str] = set()
    for f, opt, lhs in ((formula, "formula", True), (bs_formula, "bs_formula", False),
                        (ws_formula, "ws_formula", False)):  # fmt: skip
        parsed = _parse(f, opt, needs_lhs=lhs)
        names |= _formula_names(parsed.rhs if lhs else parsed)
    return sorted(names)


def design_data(
    n_schools: int, n_students: int, covariates: list[str], rng: np.random.Generator
) -> pd.DataFrame:
    """Schools of ``n_students`` students each, every covariate standard normal."""
    n = n_schools * n_students
    frame = pd.DataFrame({"school": np.repeat(np.arange(1, n_schools + 1), n_students)})
    for name in covariates:
        frame[name] = rng.standard_normal(n)
    return frame


def one_simulation(
    params: Mapping,
    n_schools: int,
    n_students: int,
    rng: np.random.Generator,
    *,
    test: str,
    alpha: float,
    formula: str,
    bs_formula: str,
    ws_formula: str,
    covariates: Callable,
) -> dict:
    """Simulate one data set on ``covariates(n_schools, n_students, rng)``, fit,
    and test: ``{"reject": bool, "p_value": float, "width": median
    school-variance interval width, "rmse": of the schools' log variances}``."""
    data = covariates(n_schools, n_students, rng)
    data, truth = simulate(data, "school", params, formula=formula, bs_formula=bs_formula,
                           ws_formula=ws_formula, seed=rng, return_effects=True)  # fmt: skip
    kw = dict(bs_formula=bs_formula, ws_formula=ws_formula)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # boundary fits are part of the answer
        full = MELS.from_formula(formula, data, "school", **kw).fit()
        if test == "random_scale":
            null = MELS.from_formula(formula, data, "school", random_scale=False, **kw).fit()
            p_value = float(compare(null, full)["p_value"].iloc[1])
        else:
            block, term = test[:-1].split("[", 1)
            p_value = float(full.pvalues[(block, term)])
        effects = full.school_effects()
    width = float(np.median(effects["variance_upper"] - effects["variance_lower"]))
    # the schools' true variances at the reference covariates, exp(wbar' tau + omega_j)
    tau = np.array([params["tau"][n] for n in full.model.design.ws_names], dtype=float)
    true_log = full.reference_values("ws") @ tau + truth.loc[effects.index, "omega"].to_numpy()
    rmse = float(np.sqrt(np.mean((np.log(effects["variance"].to_numpy()) - true_log) ** 2)))
    return {"reject": p_value < alpha, "p_value": p_value, "width": width, "rmse": rmse}


def power(
    params: Mapping,
    n_schools: int | Sequence[int],
    n_students: int | Sequence[int],
    *,
    test: str = "random_scale",
    n_sims: int = 200,
    alpha: float = 0.05,
    seed: int | None = None,
    formula: str = "y ~ x",
    bs_formula: str = "~ 1",
    ws_formula: str = "~ x",
    covariates: Callable | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """Power to detect a random scale or a parameter, and the precision of the
    schools' variances, by simulation.

    Parameters
    ----------
    params : mapping
        The true parameters, as :func:`melsml.simulate` takes them, e.g.
        ``{"beta": {"Intercept": 0, "x": 0.65}, "alpha": {"Intercept": -2.4},
        "tau": {"Intercept": -0.7, "x": -0.12},
        "random": {"tau_l": -0.12, "sigma_omega": 0.22}}``.
    n_schools, n_students : int or sequence of int
        The designs: every combination of a number of schools and a number of
        students per school.
    test : str
        ``"random_scale"`` (likelihood-ratio test, 50:50 chi-square mixture)
        or ``"block[term]"`` (Wald z test, e.g. ``"tau[x]"``).
    n_sims : int
        Simulations per design.
    alpha : float
        The tests' level.
    seed : int, optional
        Seeds every simulation (reproducible results).
    formula, bs_formula, ws_formula : str
        The model, as in :meth:`melsml.MELS.from_formula`; groups are
        ``school``.
    covariates : callable, optional
        ``covariates(n_schools, n_students, rng)`` returning a data frame with
        ``school`` and the covariates; default: every variable of the
        formulas independent standard normal.
    progress : callable, optional
        Called as ``progress(done, total)`` after each simulation.

    Returns
    -------
    DataFrame with one row per design: ``n_schools``, ``n_students``,
    ``n_sims``, ``power``, ``power_se`` (its Monte Carlo SE),
    ``variance_interval_width`` (mean over simulations of the median width of
    the schools' 95% variance intervals), ``log_variance_rmse`` (root mean
    square error of the schools' estimated log variances against the
    simulated truth, averaged over simulations) and ``failed`` (simulations
    whose fit raised an error; left out).  Interval widths shrink when a fit
    puts sigma_omega near 0 (the school variances are then shrunk to the
    average): read them with the RMSE.
    """
    schools = _as_list(n_schools, "n_schools")
    students = _as_list(n_students, "n_students")
    if isinstance(n_sims, bool) or not isinstance(n_sims, (int, np.integer)) or n_sims < 1:
        raise MELSInputError(f"n_sims must be a positive integer, got {n_sims!r}")
    if not 0 < alpha < 1:
        raise MELSInputError(f"alpha must be in (0, 1), got {alpha!r}")
    if test != "random_scale" and not (test.endswith("]") and "[" in test):
        raise MELSInputError(
            f"test must be 'random_scale' or 'block[term]' (e.g. 'tau[x]'), got {test!r}"
        )
    if covariates is None:
        names = _covariate_names(formula, bs_formula, ws_formula)

        def covariates(js, ns, rng):
            return design_data(js, ns, names, rng)

    designs = list(product(schools, students))
    seeds = np.random.SeedSequence(seed).spawn(len(designs) * n_sims)
    total, done, rows = len(seeds), 0, []
    for d, (js, ns) in enumerate(designs):
        results, failed = [], 0
        for s in range(n_sims):
            rng = np.random.default_rng(seeds[d * n_sims + s])
            try:
                results.append(
                    one_simulation(
                        params,
                        js,
                        ns,
                        rng,
                        test=test,
                        alpha=alpha,
                        formula=formula,
                        bs_formula=bs_formula,
                        ws_formula=ws_formula,
                        covariates=covariates,
                    )  # fmt: skip
                )
            except (MELSInputError, FloatingPointError, np.linalg.LinAlgError) as exc:
                failed += 1
                logger.info("power: a simulation failed: %s", exc)
            done += 1
            if progress is not None:
                progress(done, total)
        reject = np.array([r["reject"] for r in results], dtype=float)
        p = float(reject.mean()) if reject.size else np.nan
        rows.append(
            dict(
                n_schools=js,
                n_students=ns,
                n_sims=len(results),
                power=p,
                power_se=float(np.sqrt(p * (1 - p) / reject.size)) if reject.size else np.nan,
                variance_interval_width=float(np.mean([r["width"] for r in results]))
                if results
                else np.nan,
                log_variance_rmse=float(np.mean([r["rmse"] for r in results]))
                if results
                else np.nan,
                failed=failed,
            )
        )
    out = pd.DataFrame(rows)
    out.attrs.update(test=test, alpha=alpha, seed=seed)
    return out
