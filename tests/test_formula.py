"""Design matrices, the missing-data policy and input errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from melsml import MELS, MELSInputError, MissingDataWarning
from melsml.formula import build_design


@pytest.fixture()
def df():
    rng = np.random.default_rng(0)
    n = 60
    return pd.DataFrame(
        {
            "school": np.repeat(["b", "a", "c"], 20),
            "y": rng.normal(size=n),
            "x": rng.normal(size=n),
            "kind": np.tile(["p", "q", "r"], 20),
        }
    )


def test_rows_are_sorted_by_group_and_offsets_are_right(df):
    d = build_design("y ~ x", df, "school", ws_formula="~ x")
    assert list(d.group_labels) == ["a", "b", "c"]
    np.testing.assert_array_equal(d.group_ptr, [0, 20, 40, 60])
    np.testing.assert_array_equal(d.y[:20], df["y"].to_numpy()[20:40])
    assert d.mean_names == ("Intercept", "x")
    assert d.ws_names == ("Intercept", "x")
    assert d.bs_names == ("Intercept",)
    np.testing.assert_array_equal(d.row_index[:20], np.arange(20, 40))


def test_categorical_terms_follow_the_formula_coding(df):
    d = build_design("y ~ x + kind", df, "school", ws_formula="~ C(kind)")
    assert d.mean_names == ("Intercept", "x", "kind[T.q]", "kind[T.r]")
    assert d.ws_names == ("Intercept", "C(kind)[T.q]", "C(kind)[T.r]")


def test_group_level_covariates_are_allowed_in_variance_functions(df):
    df["big"] = (df["school"] == "c").astype(float)
    d = build_design("y ~ x", df, "school", ws_formula="~ big", bs_formula="~ big")
    assert d.x_ws.shape == (60, 2)


def test_missing_values_are_dropped_with_a_counted_warning(df):
    df.loc[[1, 5], "x"] = np.nan
    df.loc[7, "y"] = np.nan
    df.loc[9, "school"] = None
    with pytest.warns(MissingDataWarning, match=r"dropped 4 of 60 rows.*x: 2"):
        d = build_design("y ~ x", df, "school")
    assert d.n_obs == 56
    assert d.n_dropped == 4


def test_missing_values_in_unused_columns_are_ignored(df, recwarn):
    df["unused"] = np.nan
    d = build_design("y ~ x", df, "school")
    assert d.n_dropped == 0
    assert not [w for w in recwarn if issubclass(w.category, MissingDataWarning)]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(formula="y ~ nope"), r"formula='y ~ nope' uses column\(s\) not in the data: nope"),
        (dict(formula="y ~ x", ws_formula="~ zz"), r"ws_formula.*not in the data: zz"),
        (dict(formula="y ~ x", bs_formula="~ x +"), r"bs_formula='~ x \+' does not parse"),
        (dict(formula="~ x"), r"needs an outcome on the left"),
        (dict(formula="y ~ x", ws_formula="y ~ x"), r"must be one-sided"),
        (dict(formula="kind ~ x"), r"outcome column 'kind' must be numeric"),
        (dict(formula="y ~ x", groups="district"), r"groups column 'district' is not in the data"),
        (dict(formula="y ~ x + x2"), r"rank-deficient"),
    ],
)
def test_bad_input_gets_an_error_naming_the_problem(df, kwargs, match):
    df["x2"] = 2 * df["x"]
    kwargs = {"groups": "school", **kwargs}
    formula = kwargs.pop("formula")
    groups = kwargs.pop("groups")
    with pytest.raises(MELSInputError, match=match):
        MELS.from_formula(formula, df, groups, **kwargs)


def test_infinite_values_are_rejected_by_column(df):
    df.loc[3, "x"] = np.inf
    with pytest.raises(MELSInputError, match="column 'x' has infinite values"):
        build_design("y ~ x", df, "school")


def test_infinite_transformed_terms_are_rejected(df):
    df["z"] = np.abs(df["x"])
    df.loc[0, "z"] = 0.0
    with pytest.raises(MELSInputError, match=r"np.log\(z\).*infinite or NaN"):
        build_design("y ~ np.log(z)", df, "school")


def test_data_must_be_a_data_frame():
    with pytest.raises(MELSInputError, match="DataFrame"):
        build_design("y ~ x", {"y": [1.0]}, "g")


def test_all_rows_missing_is_an_error(df):
    df["y"] = np.nan
    with pytest.warns(MissingDataWarning), pytest.raises(MELSInputError, match="no rows left"):
        build_design("y ~ x", df, "school")


@pytest.mark.parametrize(
    "transform", ["center(prior)", "scale(prior)", "poly(prior, 2)", "bs(prior, df=3)"]
)
@pytest.mark.parametrize(
    "option", ["formula", "bs_formula", "ws_formula", "re_formula", "ws_re_formula"]
)
def test_stateful_transforms_work_in_every_formula(transform, option):
    from melsml import simulate_london
    from melsml.formula import build_design

    data = simulate_london(3, seed=2, n_schools=30, n_students=3000)
    kw = {"formula": "y ~ prior"}
    if option == "formula":
        kw["formula"] = f"y ~ {transform}"
    else:
        kw[option] = f"~ 1 + {transform}" if option != "bs_formula" else f"~ {transform}"
    d = build_design(kw.pop("formula"), data, "school", **kw)
    key = {"formula": "mean_names", "bs_formula": "bs_names", "ws_formula": "ws_names",
           "re_formula": "re_names", "ws_re_formula": "scale_names"}[option]  # fmt: skip
    assert any(transform.split("(")[0] in name for name in getattr(d, key))
    assert d.n_obs == len(data)
