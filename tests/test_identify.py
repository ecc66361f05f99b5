"""Bad input and data that cannot identify the model: each case and its error."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from melsml import MELS, MELSInputError, compare, simulate_london


def frame(n_groups=20, size=5, seed=0):
    rng = np.random.default_rng(seed)
    n = n_groups * size
    x = rng.normal(size=n)
    g = np.repeat(np.arange(n_groups), size)
    y = 0.5 * x + rng.normal(size=n_groups)[g] * 0.5 + rng.normal(size=n)
    return pd.DataFrame({"g": g, "x": x, "y": y})


def case(name):
    d = frame()
    if name == "single group":
        return d.assign(g=0), {}
    if name == "groups of one":
        return frame(100, 1), {}
    if name == "groups of one, no random scale":
        return frame(100, 1), {"random_scale": False}
    if name == "constant outcome":
        return d.assign(y=3.0), {}
    if name == "outcome constant within groups":
        return d.assign(y=d["g"] * 1.5), {}
    if name == "exact fit":
        return d.assign(y=2.0 * d["x"] + 1.0), {"random_scale": False}
    if name == "no rows":
        return d.iloc[:0], {}
    if name == "duplicated columns":
        out = d.copy()
        out.columns = ["g", "x", "x"]
        return out, {}
    raise KeyError(name)


CASES = {
    "single group": r"single group \(g=0\).*two or more groups",
    "groups of one": r"no group \(g\) has two or more rows.*cannot be told apart",
    "groups of one, no random scale": r"no group \(g\) has two or more rows",
    "constant outcome": r"outcome 'y' is constant \(every value 3\)",
    "outcome constant within groups": r"'y' does not vary within any group \(g\)",
    "exact fit": r"formula='y ~ x' fits the outcome 'y' exactly",
    "no rows": r"data has no rows",
    "duplicated columns": r"duplicated column name\(s\) 'x'",
}


@pytest.mark.parametrize("name", list(CASES))
def test_each_case_gets_its_error(name):
    data, kwargs = case(name)
    with pytest.raises(MELSInputError, match=CASES[name]):
        MELS.from_formula("y ~ x", data, "g", **kwargs)


def test_an_empty_csv_is_named_by_the_cli(tmp_path, capsys):
    from melsml.cli import main

    path = tmp_path / "empty.csv"
    path.write_text("g,x,y\n")
    assert main(["fit", str(path), "--formula", "y ~ x", "--groups", "g"]) != 0
    assert "data has no rows" in capsys.readouterr().err


def test_compare_refuses_an_lr_test_across_different_observations():
    data = simulate_london(3, seed=3, n_schools=40, n_students=3000)
    a = MELS.from_formula("y ~ prior", data, "school", random_scale=False).fit()
    b = MELS.from_formula("y ~ prior", data.iloc[100:], "school").fit()
    table = compare(a, b)
    assert np.isnan(table["p_value"].iloc[1])
    assert "different observations" in table["test"].iloc[1]
    assert "not comparable" in table.attrs["note"]


def test_a_singular_information_matrix_is_said_once_in_melsmls_words():
    """A negative variance from an indefinite information matrix gives NaN standard
    errors without numpy's RuntimeWarning (the fit's BoundaryWarning says why)."""
    data = frame(30, 6, seed=1)
    res = MELS.from_formula("y ~ x", data, "g").fit()
    res._cov_observed = res._cov_observed.copy()
    res._cov_observed[0, 0] = -1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        se = res.bse
        text = res.summary().as_text()
    assert np.isnan(se.iloc[0]) and np.isfinite(se.iloc[1:]).all()
    assert "nan" in text
