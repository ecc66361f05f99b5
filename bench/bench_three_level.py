"""Benchmark: the three-level model on an England-like structure.

150 districts, about 3,000 schools and 550,000 students (the size of one KS4
cohort), simulated from the three-level model 3 (district and school random
location and scale effects, prior attainment in the mean and WS functions).
Prints the data size, the time of the fit with standard errors (from the
model specification on; the target is 10 s on a 2-core laptop), the number
of likelihood evaluations, the time of one evaluation (with score) on 1 and
on all threads, and the estimates against the truth in SE units.
Run: ``python bench/bench_three_level.py [--districts 150 --schools 20 --students 183]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
from melsml._quad import openmp_threads

from melsml import MELS
from melsml.simulate import THREE_LEVEL_TRUE, simulate_three_level


def per_eval(model, theta, n_threads, repeats=5):
    obj = model.objective(n_threads=n_threads)
    obj.evaluate(theta)
    t = time.perf_counter()
    for _ in range(repeats):
        obj.evaluate(theta)
    return (time.perf_counter() - t) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--districts", type=int, default=150)
    ap.add_argument("--schools", type=int, default=20, help="mean schools per district")
    ap.add_argument("--students", type=int, default=183, help="mean students per school")
    ap.add_argument("--seed", type=int, default=2024)
    args = ap.parse_args()
    df = simulate_three_level(args.districts, args.schools, args.students, seed=args.seed)
    t = time.perf_counter()
    model = MELS.from_formula("y ~ prior", df, ["district", "school"], ws_formula="~ prior")
    res = model.fit()
    elapsed = time.perf_counter() - t
    info = res.fit_info
    print(
        f"data: {res.nobs} students, {res.n_groups['school']} schools, "
        f"{res.n_groups['district']} districts; {model.describe_integration()}"
    )
    print(
        f"fit with SEs: {elapsed:.2f} s (target 10 s), {info.n_evals} evaluations, "
        f"{info.n_iter} iterations, converged={res.converged}, llf={res.llf:.3f}"
    )
    theta = res._theta_raw
    threads = openmp_threads()
    one = per_eval(model, theta, 1)
    alln = per_eval(model, theta, threads)
    print(
        f"one evaluation (llf + score): {1e3 * one:.1f} ms on 1 thread, "
        f"{1e3 * alln:.1f} ms on {threads} threads"
    )
    truth = pd.Series(
        {(b, t): v for b, block in THREE_LEVEL_TRUE.items() for t, v in block.items()}
    ).reindex(res.params.index)
    table = pd.DataFrame(
        {
            "true": truth,
            "estimate": res.params,
            "se": res.bse,
            "z": (res.params - truth) / res.bse,
        }  # fmt: skip
    )
    print(table.to_string(float_format=lambda v: f"{v:.4f}"))
    print(f"max |z| = {np.abs(table['z']).max():.2f}")


if __name__ == "__main__":
    main()
