"""Nesting of grouping ids: unique ids, labels within parents, missing ids."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from melsml.exceptions import MELSInputError
from melsml.levels import nest_ids


def _frame(outer, inner):
    return pd.DataFrame({"district": outer, "school": inner})


def test_unique_ids_keep_their_identity_and_sort_by_outer_then_inner():
    df = _frame(["B", "A", "A", "B", "A"], ["s3", "s2", "s1", "s4", "s1"])
    nest = nest_ids(df, ["district", "school"])
    assert list(nest.labels["outer"]) == ["A", "A", "B", "B"]
    assert list(nest.labels["inner"]) == ["s1", "s2", "s3", "s4"]
    assert nest.codes.tolist() == [2.0, 1.0, 0.0, 3.0, 0.0]
    ptr, outer = nest.outer_ptr(np.array([0.0, 1.0, 2.0, 3.0]))
    assert ptr.tolist() == [0, 2, 4] and outer.tolist() == ["A", "B"]


def test_labels_within_parents_are_made_unique():
    df = _frame(["A", "A", "B", "B", "C"], [2019, 2020, 2019, 2020, 2019])
    nest = nest_ids(df, ["district", "school"])
    assert len(nest.labels) == 5
    assert len(set(nest.codes)) == 5


def test_an_id_under_two_parents_is_an_error_when_ids_are_unique():
    df = _frame(["A", "A", "B", "B", "B"], ["s1", "s2", "s3", "s4", "s1"])
    with pytest.raises(MELSInputError, match="school 's1' appears under 2 district"):
        nest_ids(df, ["district", "school"])
    within = nest_ids(df, ["district", "school"], ids="within")
    assert len(within.labels) == 5
    with pytest.raises(MELSInputError, match="school 's1'"):
        nest_ids(df.iloc[[0, 1, 2, 4]], ["district", "school"], ids="unique")


def test_missing_ids_give_missing_codes():
    df = _frame(["A", None, "B", "B"], ["s1", "s2", None, "s4"])
    df.loc[4] = ["A", "s5"]
    nest = nest_ids(df, ["district", "school"])
    assert np.isnan(nest.codes[[1, 2]]).all()
    assert np.isfinite(nest.codes[[0, 3, 4]]).all()


@pytest.mark.parametrize(
    ("groups", "kwargs", "message"),
    [
        (["district"], {}, "two levels"),
        (["district", "nope"], {}, "column 'nope' is not in the data"),
        (["district", "district"], {}, "twice"),
        (["district", "school"], {"ids": "global"}, "unknown ids='global'"),
    ],
)
def test_bad_arguments(groups, kwargs, message):
    df = _frame(["A", "A", "B", "B"], ["s1", "s2", "s3", "s4"])
    with pytest.raises(MELSInputError, match=message):
        nest_ids(df, groups, **kwargs)
