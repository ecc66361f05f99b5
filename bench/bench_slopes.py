"""Benchmark: model 6 (random intercept and slope, random scale, prior in the WS
function) on London-sized data, by the exact-location path and the general
(q+1)-dimensional adaptive quadrature path.  Run: ``python bench/bench_slopes.py``.
"""

from __future__ import annotations

import argparse
import statistics
import time

from melsml import MELS, simulate_london


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args()
    data = simulate_london(6, seed=args.seed)
    print(f"data: {len(data)} students in {data['school'].nunique()} schools")
    spec = dict(re_formula="~ 1 + prior", ws_formula="~ prior")
    results = {}
    for integration, repeats in (("exact-location", args.repeats), ("aghq", 2)):
        model = MELS.from_formula("y ~ prior", data, "school", integration=integration, **spec)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            res = model.fit()
            times.append(time.perf_counter() - t)
        results[integration] = res
        nodes = model.plan.n_nodes
        print(
            f"model 6, {integration:>14}: fit + SEs median {statistics.median(times):.3f} s "
            f"over {repeats} runs; {res.fit_info.n_evals} evaluations, {nodes} nodes per "
            f"school, llf {res.llf:.5f}, converged {res.converged}"
        )
    fast, general = results["exact-location"], results["aghq"]
    diff = (fast.params - general.params).abs().max()
    print(
        f"llf difference {abs(fast.llf - general.llf):.2e}; largest estimate difference {diff:.2e}"
    )


if __name__ == "__main__":
    main()
