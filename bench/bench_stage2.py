"""Benchmark: second-stage models over posterior draws of the schools' effects.

Prints, for London-sized data (465 schools, model 3) and 500 draws, the time
of drawing the effects (exact posterior) and of the whole stage 2 for a
linear and an ordinal school-level outcome, and per replication.
Run: ``python bench/bench_stage2.py``.
"""

from __future__ import annotations

import time

import numpy as np

from melsml import MELS, simulate_london
from melsml.stage2 import effect_draws


def main() -> None:
    data = simulate_london(3, seed=1)
    res = MELS.from_formula("y ~ prior", data, "school", ws_formula="~ prior").fit()
    schools = data.groupby("school", as_index=False)[["fsm", "prior"]].mean()
    schools["band"] = np.digitize(schools["prior"], np.quantile(schools["prior"], [0.33, 0.67]))
    n = 500
    for method in ("posterior", "normal"):
        t = time.perf_counter()
        effect_draws(res, n, seed=1, method=method)
        print(f"{n} draws of 465 schools' effects ({method}): {time.perf_counter() - t:.3f} s")
    for family, outcome in (("gaussian", "fsm"), ("ordinal", "band")):
        t = time.perf_counter()
        s2 = res.stage2(f"{outcome} ~ theta1 + theta2 + theta1:theta2", schools,
                        family=family, n_draws=n, seed=1)  # fmt: skip
        el = time.perf_counter() - t
        print(
            f"stage 2, {family}, {n} replications: {el:.2f} s "
            f"({1e3 * el / n:.1f} ms per replication); theta1 {s2.params['theta1']:.4f} "
            f"(SE {s2.bse['theta1']:.4f})"
        )


if __name__ == "__main__":
    main()
