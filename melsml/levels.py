"""Nested grouping levels: students in schools in districts (or cohorts in schools).

The three-level model needs the inner groups (schools) sorted so that each
outer group's (district's) schools are contiguous, and the offsets of each
district's schools.  :func:`nest_ids` checks the nesting and gives each
(district, school) pair one integer code in sorted order; the design is then
built with that code as its group column (see :func:`melsml.formula.build_design`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from .exceptions import MELSInputError

IdScope = Literal["auto", "unique", "within"]
ID_SCOPES = ("auto", "unique", "within")
#: the design's group column for the nested code (not a name users would choose)
CODE_COLUMN = "__melsml_nested_group__"


@dataclass(frozen=True)
class Nesting:
    """How the inner groups nest in the outer groups.

    Attributes
    ----------
    levels : (outer, inner) level names (the data's column names)
    codes : (n_rows,) float code of each row's (outer, inner) pair, NaN where
        either id is missing; codes sort by outer then inner id
    labels : DataFrame indexed by code with columns ``outer`` and ``inner``
    """

    levels: tuple[str, str]
    codes: np.ndarray
    labels: pd.DataFrame

    def outer_ptr(self, group_codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Offsets of each outer group's inner groups, and the outer labels, for
        the inner groups (given by their codes, sorted) that the design kept."""
        outer = self.labels.loc[np.asarray(group_codes), "outer"].to_numpy()
        starts = np.flatnonzero(np.r_[True, outer[1:] != outer[:-1]])
        ptr = np.r_[starts, outer.size].astype(np.intp)
        return ptr, outer[starts]


def _check_column(data: pd.DataFrame, col) -> None:
    if not isinstance(col, str):
        raise MELSInputError(f"groups must name columns of data, got {col!r}")
    if col not in data.columns:
        raise MELSInputError(f"groups: column {col!r} is not in the data")


def nest_ids(data: pd.DataFrame, groups, ids: IdScope = "auto") -> Nesting:
    """Check that ``groups = [outer, inner]`` nest and code the pairs.

    Parameters
    ----------
    data : DataFrame
    groups : [outer, inner] column names, outermost first
    ids : {"auto", "unique", "within"}
        How inner ids are read.  ``"unique"``: an inner id names one group
        whatever its parent, so an id found under two parents is an error
        (a school listed in two districts).  ``"within"``: inner ids are
        labels within their parent (cohort "2019" of every school), made
        unique as (parent, id) pairs.  ``"auto"`` (default): "within" when
        most (outer, inner) pairs have an inner id found under several
        parents (labels reused by design), otherwise "unique".
    """
    if ids not in ID_SCOPES:
        raise MELSInputError(f"unknown ids={ids!r}; allowed values: {', '.join(ID_SCOPES)}")
    if len(groups) != 2:
        raise MELSInputError(
            f"groups must name one level (two-level model) or two levels, outermost "
            f"first (three-level model), got {len(groups)}"
        )
    outer, inner = groups
    for col in (outer, inner):
        _check_column(data, col)
    if outer == inner:
        raise MELSInputError(f"groups names the column {outer!r} twice")
    frame = data[[outer, inner]]
    ok = frame.notna().all(axis=1).to_numpy()
    pairs = frame[ok].drop_duplicates()
    parents = pairs.groupby(inner, sort=False)[outer].nunique()
    shared = parents[parents > 1]
    if ids == "auto":
        in_shared = pairs[inner].isin(shared.index).to_numpy()
        ids = "within" if in_shared.mean() > 0.5 else "unique"
    if ids == "unique" and len(shared):
        first = shared.index[0]
        where = sorted(map(str, pairs.loc[pairs[inner] == first, outer]))
        raise MELSInputError(
            f"{inner} '{first}' appears under {len(where)} {outer} values "
            f"({', '.join(where[:4])}): {inner} must be nested in {outer}"
            f"{f' ({len(shared)} {inner} ids are not)' if len(shared) > 1 else ''}; "
            f"if {inner} ids are labels within each {outer}, pass ids='within'"
        )
    pairs = pairs.sort_values([outer, inner], kind="stable").reset_index(drop=True)
    if pairs[outer].nunique() < 2:
        raise MELSInputError(
            f"the {outer} level has a single unit: its variance cannot be estimated; "
            "fit the two-level model"
        )
    if len(pairs) == pairs[outer].nunique():
        raise MELSInputError(
            f"every {outer} has a single {inner}: the two levels cannot be told apart"
        )
    key = pd.MultiIndex.from_frame(pairs)
    codes = np.full(len(data), np.nan)
    codes[ok] = key.get_indexer(pd.MultiIndex.from_frame(frame[ok]))
    labels = pd.DataFrame(
        {"outer": pairs[outer].to_numpy(), "inner": pairs[inner].to_numpy()},
        index=pd.Index(np.arange(len(pairs), dtype=float), name="code"),
    )
    return Nesting((outer, inner), codes, labels)
