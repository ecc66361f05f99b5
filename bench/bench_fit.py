"""Benchmark: model 3 on London-sized data versus statsmodels MixedLM (model 1).

Prints the time of melsml's fit (start values -> maximum -> standard errors),
the number of likelihood evaluations, the time of one evaluation, the time
of the Hessian (closed form against forward differences of the score), and
the time of statsmodels MixedLM fitting the simpler random-intercept model by
ML on the same data, with the ratio.  Run: ``python bench/bench_fit.py``.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
import statsmodels.formula.api as smf

from melsml import MELS, simulate_london
from melsml.hessian import closed_form_hessian
from melsml.optimize import numerical_hessian


def timed(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out, times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args()

    data = simulate_london(3, seed=args.seed)
    print(
        f"data: {len(data)} students in {data['school'].nunique()} schools "
        f"(sizes {data.groupby('school').size().min()}-{data.groupby('school').size().max()})"
    )

    t = time.perf_counter()
    model3 = MELS.from_formula("y ~ prior", data, "school", ws_formula="~ prior")
    print(f"melsml design (formulas -> sorted arrays): {time.perf_counter() - t:.3f} s")

    model3.fit()  # warm-up (imports, caches)
    res, times = timed(model3.fit, args.repeats)
    mels_t = statistics.median(times)
    print(
        f"melsml model 3 fit + SEs: median {mels_t:.3f} s, min {min(times):.3f} s "
        f"over {args.repeats} runs; {res.fit_info.n_evals} likelihood evaluations "
        f"({res.fit_info.n_iter} iterations), llf {res.llf:.4f}, converged {res.converged}"
    )

    obj = model3.objective()
    theta = res.params.to_numpy()
    obj.evaluate(theta)
    # alternate two points: an evaluation at the previous point is reused
    points = iter([theta + 1e-10 * (i % 2 + 1) for i in range(60)])
    _, ev_times = timed(lambda: obj.evaluate(next(points)), 50)
    print(
        f"one likelihood + score evaluation: {1e3 * statistics.median(ev_times):.2f} ms "
        f"(N = {model3.design.n_obs})"
    )

    # the Hessian for the standard errors: in closed form, and the forward
    # differences of the score it replaces (k evaluations)
    raw = res._theta_raw
    obj.evaluate(raw)
    _, closed_times = timed(lambda: closed_form_hessian(obj, raw), 20)
    score0 = obj.evaluate(raw).score
    _, fd_times = timed(lambda: numerical_hessian(obj, raw, score0), 5)
    print(
        f"Hessian at the estimate: closed form {1e3 * min(closed_times):.2f} ms, "
        f"forward differences of the score {1e3 * min(fd_times):.2f} ms (best of 20 and 5)"
    )

    sm_model = smf.mixedlm("y ~ prior", data, groups=data["school"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sm_res, sm_times = timed(lambda: sm_model.fit(reml=False), max(3, args.repeats // 2))
    sm_t = statistics.median(sm_times)
    print(f"statsmodels MixedLM model 1 (ML) fit: median {sm_t:.3f} s, llf {sm_res.llf:.4f}")

    model1 = MELS.from_formula("y ~ prior", data, "school", random_scale=False)
    res1, times1 = timed(model1.fit, args.repeats)
    print(
        f"melsml model 1 fit + SEs: median {statistics.median(times1):.3f} s, "
        f"llf {res1.llf:.4f} (MixedLM - melsml: {sm_res.llf - res1.llf:.2e})"
    )
    print(f"ratio MixedLM(model 1) / melsml(model 3): {sm_t / mels_t:.1f}x")
    print(
        f"target: melsml model 3 <= 0.150 s -> {'OK' if mels_t <= 0.15 else 'MISSED'}; "
        f"ratio >= 5 -> {'OK' if sm_t / mels_t >= 5 else 'MISSED'}"
    )
    np.testing.assert_allclose(res1.llf, sm_res.llf, rtol=1e-6)


if __name__ == "__main__":
    main()
