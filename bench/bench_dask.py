"""Benchmark: model 3 on a Dask LocalCluster against the same fit in memory.

Simulates ``--rows`` students (default 10 million, 40,000 schools), writes
them as a folder of parquet files in random row order (every school spread
over the files), and prints:

* in memory: reading the folder with pandas, the model's design, and the fit
  with standard errors (all threads);
* on a LocalCluster of ``--workers`` worker processes (one thread each):
  ``MELS.from_formula`` on ``dask.dataframe.read_parquet`` (the shuffle by
  school and the designs built on the workers), the fit with standard
  errors, its evaluations and time per evaluation, and the ratio to the
  in-memory fit; and the difference in log-likelihood and estimates.

Run: ``python bench/bench_dask.py [--rows 10000000] [--workers 2]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from melsml import MELS, simulate_london

FORMULA = dict(formula="y ~ prior", ws_formula="~ prior")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--files", type=int, default=16)
    args = parser.parse_args()

    import dask.dataframe as dd
    from distributed import Client, LocalCluster

    n_schools = max(100, args.rows // 250)
    data = simulate_london(3, seed=1, n_schools=n_schools, n_students=args.rows)
    data = data[["school", "prior", "y"]].sample(frac=1.0, random_state=0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "pupils"
        folder.mkdir()
        for i, chunk in enumerate(np.array_split(np.arange(len(data)), args.files)):
            data.iloc[chunk].to_parquet(folder / f"part-{i:03d}.parquet")
        del data
        print(f"data: {args.rows:,} rows in {n_schools:,} schools, {args.files} parquet files")

        t = time.perf_counter()
        frame = pd.read_parquet(folder)
        read_t = time.perf_counter() - t
        t = time.perf_counter()
        model = MELS.from_formula(FORMULA["formula"], frame, "school", ws_formula="~ prior")
        design_t = time.perf_counter() - t
        t = time.perf_counter()
        mem = model.fit()
        mem_t = time.perf_counter() - t
        print(
            f"in memory: read {read_t:.2f} s, design {design_t:.2f} s, fit with SEs "
            f"{mem_t:.2f} s ({mem.fit_info.n_evals} evaluations)"
        )
        del model, frame

        with (
            LocalCluster(
                n_workers=args.workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
            ) as cluster,
            Client(cluster),
        ):
            t = time.perf_counter()
            ddf = dd.read_parquet(folder)
            dmodel = MELS.from_formula(FORMULA["formula"], ddf, "school", ws_formula="~ prior")
            build_t = time.perf_counter() - t
            dmodel.fit()  # warm-up: the workers import and compile nothing twice
            t = time.perf_counter()
            res = dmodel.fit()
            fit_t = time.perf_counter() - t
            obj = res._std.objective
            theta = res._std.theta
            obj.evaluate(theta)
            # alternate two points: an evaluation at the previous point is reused
            t = time.perf_counter()
            for i in range(5):
                obj.evaluate(theta + 1e-10 * (i % 2 + 1))
            per = (time.perf_counter() - t) / 5
            t = time.perf_counter()
            se = res.school_effects()
            se_t = time.perf_counter() - t
            print(
                f"Dask LocalCluster, {args.workers} workers x 1 thread, "
                f"{dmodel.data.n_parts} partitions: from_formula (shuffle + designs) "
                f"{build_t:.2f} s; fit with SEs {fit_t:.2f} s = {fit_t / mem_t:.2f} x in memory "
                f"({res.fit_info.n_evals} evaluations of {1e3 * per:.0f} ms); "
                f"school_effects {se_t:.2f} s ({len(se):,} schools)"
            )
            print(
                f"difference from the fit in memory: llf {abs(res.llf - mem.llf):.1e}, "
                f"estimates {np.max(np.abs(res.params - mem.params)):.1e}"
            )


if __name__ == "__main__":
    main()
