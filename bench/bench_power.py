"""Benchmark and docs figure: power to detect the random scale, from small to London-sized designs.

Simulates model 3 (y ~ prior, WS ~ prior; the true values of
``melsml.simulate.LONDON_TRUE``: sigma_omega 0.22, tau_l -0.12) for numbers
of schools and students per school, fits the model with and without the
random scale, and tests it (likelihood ratio, 50:50 chi-square mixture).
Prints the power table and the time for small designs (10 to 160 schools of
10 or 30 students), whose power curve it writes to
``docs/_static/power_curve.png``, and for London-sized designs (465 schools
of 30 or 150 students).  Run: ``python bench/bench_power.py [--sims N]``.
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
    for schools, students, figure in (
        ([10, 20, 40, 80, 160], [10, 30], True),
        ([465], [30, 150], False),
    ):
        t = time.perf_counter()
        result = power(LONDON_TRUE, schools, students, n_sims=args.sims, seed=2024,
                       formula="y ~ prior", ws_formula="~ prior")  # fmt: skip
        elapsed = time.perf_counter() - t
        print(result.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        print(f"{len(result)} designs x {args.sims} simulations: {elapsed:.1f} s\n")
        if figure:
            out = Path(__file__).resolve().parent.parent / "docs" / "_static" / "power_curve.png"
            plots.power_curve(result).savefig(out, dpi=110)
            print(f"wrote {out}\n")


if __name__ == "__main__":
    main()
