"""Benchmark: random scale slopes on London-sized data.

Fits (1) model 3 plus a random scale slope on prior (random intercept, random
scale intercept and slope: 3 correlated effects, the scale effects by 2-D
adaptive quadrature with the scale design varying by student) and (2) model 6
plus a scale slope (random intercept and slope on prior in the mean as well:
4 effects).  Prints the fit time with standard errors, the number of
likelihood evaluations and the time of one evaluation, beside model 3 itself.
Run: ``python bench/bench_scale_slopes.py``.
"""

from __future__ import annotations

import argparse
import statistics
import time

from melsml import MELS, simulate_london
from melsml.simulate import LONDON_SLOPE_TRUE, simulate


def timed_fit(model, repeats):
    times, res = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        res = model.fit()
        times.append(time.perf_counter() - t)
    obj = model.objective()
    theta = res._theta_raw
    obj.evaluate(theta)
    t = time.perf_counter()
    for i in range(5):
        # alternate two points: an evaluation at the previous point is reused
        obj.evaluate(theta + 1e-10 * (i % 2 + 1))
    per_eval = (time.perf_counter() - t) / 5
    return res, statistics.median(times), min(times), per_eval


def report(name, model, res, med, best, per_eval, target):
    plan = model.plan
    print(
        f"{name}: fit + SEs median {med:.3f} s (min {best:.3f} s); "
        f"{res.fit_info.n_evals} evaluations of {per_eval * 1e3:.1f} ms; "
        f"{plan.dim}-D {plan.method} with {plan.n_nodes} nodes per school; "
        f"llf {res.llf:.4f}, converged {res.converged}; target <= {target} s -> "
        f"{'OK' if med <= target else 'MISSED'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args()

    data = simulate_london(3, seed=args.seed, scale_slope=True)
    print(f"data: {len(data)} students in {data['school'].nunique()} schools")
    m3 = MELS.from_formula("y ~ prior", data, "school", ws_formula="~ prior")
    report("model 3                 ", m3, *timed_fit(m3, args.repeats), 0.15)
    ms = MELS.from_formula(
        "y ~ prior", data, "school", ws_formula="~ prior", ws_re_formula="~ 1 + prior"
    )
    report("model 3 + scale slope   ", ms, *timed_fit(ms, args.repeats), 3.0)

    # model 6 + a scale slope: random intercept and slope in the mean too
    random = {
        **{k: v for k, v in LONDON_SLOPE_TRUE["random"].items() if "omega" not in k},
        "L(omega,Intercept)": -0.12,
        "L(omega,omega)": 0.20,
        "L(omega:prior,omega)": 0.04,
        "L(omega:prior,omega:prior)": 0.10,
    }
    params = {**LONDON_SLOPE_TRUE, "random": random}
    data6 = simulate(
        data.drop(columns="y"), "school", params, formula="y ~ prior", ws_formula="~ prior",
        re_formula="~ 1 + prior", ws_re_formula="~ 1 + prior", seed=args.seed,
    )  # fmt: skip
    m6 = MELS.from_formula(
        "y ~ prior",
        data6,
        "school",
        ws_formula="~ prior",
        re_formula="~ 1 + prior",
        ws_re_formula="~ 1 + prior",
    )
    report("model 6 + scale slope   ", m6, *timed_fit(m6, max(1, args.repeats - 1)), 10.0)


if __name__ == "__main__":
    main()
