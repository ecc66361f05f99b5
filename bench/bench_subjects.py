"""Benchmark: two subjects at once (English and maths) on London-sized data.

The bivariate model 3 (per subject: prior attainment in the mean and WS
functions; a within-student residual correlation; the four school effects
with one unstructured covariance) on 465 schools and about 72,000 students
with 10% of scores missing at random.  Prints the fit time with standard
errors (the target is 5 s), the evaluations, the time of one evaluation, and
the estimates beside the truth (z: distance in standard errors).
Run: ``python bench/bench_subjects.py``.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from melsml import MELS
from melsml.simulate import SUBJECTS_TRUE, simulate_subjects


def truth(res) -> pd.Series:
    """The true parameters in the fit's layout (L: Cholesky factor of cov_re)."""
    lay = res.model.layout
    t = SUBJECTS_TRUE
    vals = []
    for block in ("beta", "tau"):
        for s in lay.outcomes:
            vals += list(t[block][s].values())
    R = np.array([[1.0, t["residual_corr"]], [t["residual_corr"], 1.0]])
    vals += list(lay.raw_correlation(R))
    vals += list(np.linalg.cholesky(t["cov_re"])[lay.l_entries])
    return pd.Series(vals, index=lay.index)


def main() -> None:
    data = simulate_subjects(seed=11)
    t = time.perf_counter()
    model = MELS.from_formula(["english ~ prior", "maths ~ prior"], data, "school",
                              ws_formula="~ prior")  # fmt: skip
    res = model.fit()
    elapsed = time.perf_counter() - t
    obj = model.objective()
    obj.evaluate(res._theta_raw)
    t = time.perf_counter()
    obj.evaluate(res._theta_raw)
    per = time.perf_counter() - t
    print(
        f"{len(data)} students, {data[['english', 'maths']].notna().sum().sum()} scores: "
        f"fit with SEs {elapsed:.2f} s (target 5 s), {res.fit_info.n_evals} evaluations, "
        f"{1e3 * per:.1f} ms per evaluation, converged {res.converged}"
    )
    true = truth(res)
    table = pd.DataFrame({"true": true, "estimate": res.params, "se": res.bse})
    table["z"] = (table["estimate"] - table["true"]) / table["se"]
    print(table.round(4).to_string())
    print("residual correlation:", round(float(res.residual_corr.iloc[0, 1]), 4))
    print(res.corr_re.round(3).to_string())


if __name__ == "__main__":
    main()
