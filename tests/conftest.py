"""Shared fixtures: the MixWILD reference cases in tests/data/mixwild."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

DATA = Path(__file__).parent / "data" / "mixwild"

#: case -> (csv, formula, bs, ws, groups, missing code of the outcome)
CASES = {
    "small": ("small/small.csv", "y ~ x", "~ 1", "~ x", "group", None),
    "riesby": (
        "riesby/riesby.csv",
        "hamd ~ week + endog + endweek",
        "~ endog",
        "~ week + endog",
        "id",
        None,
    ),
    "sbm_mels": ("sbm_mels/sbm.csv", "LGA ~ Day", "~ Day", "~ Day", "ID", -99),
}


def read_est(path: Path) -> list[dict[str, object]]:
    """MixWILD's .EST blocks as {llf, est, se} (via melsml.mixwild.read_est)."""
    from melsml.mixwild import read_est as _read

    return [{"llf": b["llf"], "est": b["estimates"], "se": b["se"]} for b in _read(path)]


def load_case(name: str) -> tuple[pd.DataFrame, dict]:
    csv, formula, bs, ws, groups, missing = CASES[name]
    data = pd.read_csv(DATA / csv)
    outcome = formula.split("~")[0].strip()
    if missing is not None:
        data = data[data[outcome] != missing]
    spec = dict(formula=formula, bs_formula=bs, ws_formula=ws, groups=groups)
    return data, spec


@pytest.fixture(scope="session")
def mixwild_cases():
    return {name: (load_case(name), read_est(DATA / name / "estimates.EST")) for name in CASES}


@pytest.fixture(scope="session")
def scale_slope_fit():
    """Model 3 plus a random scale slope on prior, fitted to London-sized data
    simulated with one (seed 2024): (results, data, true school effects)."""
    from melsml import MELS, simulate_london

    data, effects = simulate_london(3, seed=2024, scale_slope=True, return_effects=True)
    res = MELS.from_formula(
        "y ~ prior", data, "school", ws_formula="~ prior", ws_re_formula="~ 1 + prior"
    ).fit()
    return res, data, effects


@pytest.fixture(autouse=True)
def _close_figures():
    """Each test's matplotlib figures are closed after it (pyplot keeps them)."""
    yield
    import sys

    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")
