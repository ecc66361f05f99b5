"""Benchmark and docs figure: power to detect the random scale in London-like designs.

Simulates model 3 (y ~ prior, WS ~ prior; the true values of
``melsml.simulate.LONDON_TRUE``: sigma_omega 0.22, tau_l -0.12) for numbers
of schools and students per school, fits the model with and without the
random scale, and tests it (likelihood ratio, 50:50 chi-square mixture).
Prints the power table and the time, and writes the power curve to
``docs/_static/power_curve.png``.  Run: ``python bench/bench_power.py [--sims N]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from melsml import plots  # noqa: E402
from melsml.power import power  # noqa: E402
from melsml.simulate import LONDON_TRUE  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sims", type=int, default=100, help="simulations per design")
    args = parser.parse_args()
    t = time.perf_counter()
    result = power(LONDON_TRUE, [50, 100, 200, 465], [30, 150], n_sims=args.sims, seed=2024,
                   formula="y ~ prior", ws_formula="~ prior")  # fmt: skip
    elapsed = time.perf_counter() - t
    print(result.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"{len(result)} designs x {args.sims} simulations: {elapsed:.1f} s")
    out = Path(__file__).resolve().parent.parent / "docs" / "_static" / "power_curve.png"
    plots.power_curve(result).savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
