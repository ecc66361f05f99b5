"""Benchmark: model 3 at national scale, on 1 and all threads, with peak memory.

For London-sized (465 schools, about 72,000 students) and England-sized
(3,000 schools, about 540,000 students) data, and with ``--big`` 10 million
rows (40,000 schools), prints for melsml's model 3 fit with standard errors:
the time on each thread count, the evaluations, the time of one evaluation,
the peak memory the fit allocates (tracemalloc: NumPy's arrays included)
against the numeric data it uses, and, except at 10M rows, the ratio to
statsmodels MixedLM fitting the simpler model 1 by ML on the same data.
Run: ``python bench/bench_scale.py [--big]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
import tracemalloc
import warnings

import statsmodels.formula.api as smf

from melsml import MELS, _quad, simulate_london


def run(n_schools: int, n_students: int, mixedlm: bool) -> None:
    data = simulate_london(3, seed=1, n_schools=n_schools, n_students=n_students)
    model = MELS.from_formula("y ~ prior", data, "school", ws_formula="~ prior")
    d = model.design
    numeric = sum(a.nbytes for a in (d.y, d.x_mean, d.x_ws, d.x_bs)) + d.group_ptr.nbytes
    model.fit()  # warm-up
    counts = sorted({1, _quad.openmp_threads()})
    line = f"{len(data):>10,} rows, {d.n_groups:,} schools:"
    res = None
    # the best and the median of a few fits (one at 10M rows): this shared
    # machine's timings vary from run to run
    repeats = 7 if len(data) < 2_000_000 else 1
    for n in counts:
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            res = model.fit(n_threads=n)
            times.append(time.perf_counter() - t)
        best, median = min(times), statistics.median(times)
        shown = f"{best:.3f} s" if repeats == 1 else f"{best:.3f} s (median {median:.3f})"
        line += f"  {n} thread(s) {shown};"
    obj = model.objective()
    theta = res._theta_raw
    obj.evaluate(theta)
    t = time.perf_counter()
    for i in range(5):
        # alternate two points: an evaluation at the previous point is reused
        obj.evaluate(theta + 1e-10 * (i % 2 + 1))
    per = (time.perf_counter() - t) / 5
    tracemalloc.start()
    t = time.perf_counter()
    model.fit()
    fit_t = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    line += (
        f"  default {fit_t:.3f} s, {res.fit_info.n_evals} evaluations of {1e3 * per:.1f} ms; "
        f"peak memory {peak / 2**20:.0f} MB = {peak / numeric:.1f} x the numeric data "
        f"({numeric / 2**20:.0f} MB)"
    )
    if mixedlm:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sm_model = smf.mixedlm("y ~ prior", data, groups=data["school"])
            t = time.perf_counter()
            sm_model.fit(reml=False)
            sm = time.perf_counter() - t
        line += f"; MixedLM model 1 {sm:.2f} s = {sm / fit_t:.0f} x melsml model 3"
    print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--big", action="store_true", help="also 10 million rows")
    args = parser.parse_args()
    run(465, 71000, mixedlm=True)
    run(3000, 540000, mixedlm=True)
    if args.big:
        run(40000, 10_000_000, mixedlm=False)


if __name__ == "__main__":
    main()
