"""Benchmark: the censored (Tobit) model 3 on London-sized data.

72,000 students in 465 schools from model 3, with the top 10% of scores set to
a ceiling.  Prints the fit time with standard errors of the Tobit model (full
2-D adaptive quadrature: the location effect is not normal given the scale
effect once scores are censored; the target is 5 s), its evaluations and the
time of one evaluation, beside the Gaussian model 3 fitted to the same capped
scores; and both fits' estimates against the truth in SE units.
Run: ``python bench/bench_censored.py [--share 0.1]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from melsml import MELS, simulate_london
from melsml.simulate import LONDON_TRUE


def per_eval(model, theta, repeats=5):
    obj = model.objective()
    obj.evaluate(theta)
    t = time.perf_counter()
    for i in range(repeats):
        # alternate two points: an evaluation at the previous point is reused
        obj.evaluate(theta + 1e-10 * (i % 2 + 1))
    return (time.perf_counter() - t) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--share", type=float, default=0.1, help="share of scores at the ceiling")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    data = simulate_london(3, seed=args.seed)
    ceiling = float(data["y"].quantile(1 - args.share))
    capped = data.assign(y=np.minimum(data["y"], ceiling))
    rows = {}
    for name, frame, kw in (
        ("Tobit", data, {"censoring": (None, ceiling)}),
        ("Gaussian", capped, {}),
    ):
        t = time.perf_counter()
        model = MELS.from_formula("y ~ prior", frame, "school", ws_formula="~ prior", **kw)
        res = model.fit()
        elapsed = time.perf_counter() - t
        ms = 1e3 * per_eval(model, res._theta_raw)
        print(
            f"{name:8s}: fit with SEs {elapsed:.2f} s, {res.fit_info.n_evals} evaluations, "
            f"{ms:.1f} ms per evaluation; {model.plan.describe()}"
        )
        rows[name] = res
    t = time.perf_counter()
    rows["Tobit"].school_effects()
    print(f"Tobit school effects (EB on the 2-D grid): {time.perf_counter() - t:.2f} s")
    truth = pd.Series(
        {(b, k): v for b, block in LONDON_TRUE.items() for k, v in block.items()}
    ).reindex(rows["Tobit"].params.index)
    table = pd.DataFrame({"true": truth})
    for name, res in rows.items():
        table[name] = res.params
        table[f"z {name}"] = (res.params - truth) / res.bse
    print(f"{100 * args.share:.0f}% of {len(data)} scores at the ceiling {ceiling:.3f}")
    print(table.to_string(float_format=lambda v: f"{v:.4f}"))


if __name__ == "__main__":
    main()
