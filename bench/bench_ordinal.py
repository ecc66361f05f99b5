"""Benchmark: the ordinal location scale model with 9 grades on London-sized data.

Model 3's latent scores (72,000 students, 465 schools) cut into 9 grades; the
ordinal model 3 (probit; prior attainment in the mean and WS functions,
random location and scale effects) is fitted by adaptive quadrature over
both effects.  Prints the fit time with standard errors (the target is 10 s),
the evaluations and the time of one evaluation, for 11 (the default) and 7
points per dimension, and the log-likelihood difference between them; then
the time of the school effects (empirical Bayes) of model 3 and of the model
with a random scale slope on prior attainment (three random effects).
Run: ``python bench/bench_ordinal.py``.
"""

from __future__ import annotations

import time
import warnings

import numpy as np

from melsml import MELS, simulate_london
from melsml.simulate import LONDON_TRUE


def main() -> None:
    data = simulate_london(3, seed=7)
    sigma0 = np.exp(0.5 * LONDON_TRUE["tau"]["Intercept"])
    data["grade"] = 1 + np.searchsorted(np.linspace(-2.0, 2.0, 8), data["y"] / sigma0)
    llf = {}
    for points in (11, 7):
        t = time.perf_counter()
        model = MELS.from_formula("grade ~ prior", data, "school", family="ordinal",
                                  ws_formula="~ prior", n_points=points)  # fmt: skip
        res = model.fit()
        elapsed = time.perf_counter() - t
        obj = model.objective()
        obj.evaluate(res._theta_raw)
        t = time.perf_counter()
        obj.evaluate(res._theta_raw + 1e-10)  # a new point: the last one's is reused
        per = time.perf_counter() - t
        llf[points] = res.llf
        print(
            f"{points} points per dimension: fit with SEs {elapsed:.1f} s (target 10 s), "
            f"{res.fit_info.n_evals} evaluations, {1e3 * per:.0f} ms per evaluation, "
            f"llf {res.llf:.6f}"
        )
    print(f"{len(data)} students, 9 grades; llf(11) - llf(7) = {llf[11] - llf[7]:.2e}")
    for label, extra in (("model 3", {}), ("random scale slope", {"ws_re_formula": "~ 1 + prior"})):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a boundary warning does not matter here
            t = time.perf_counter()
            res = MELS.from_formula("grade ~ prior", data, "school", family="ordinal",
                                    ws_formula="~ prior", **extra).fit()  # fmt: skip
            fit = time.perf_counter() - t
            t = time.perf_counter()
            res.school_effects()
        print(f"{label}: fit with SEs {fit:.1f} s, school effects {time.perf_counter() - t:.1f} s")


if __name__ == "__main__":
    main()
