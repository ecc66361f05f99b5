"""Design of a model with several outcomes: one row per student, one mean and
one WS design per outcome, and which outcomes each student has."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .exceptions import MELSInputError, MissingDataWarning
from .formula import _parse, _required, build_design

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MultiDesign:
    """Design matrices of a multivariate MELS model, rows sorted by group.

    Attributes
    ----------
    outcomes : names of the M outcomes
    groups : the groups column
    y_filled : (n, M) outcomes, 0 where missing
    observed : (n, M) bool, which outcomes each student has
    x_mean, x_ws : per outcome, (n, p_m) and (n, w_m) designs
    mean_names, ws_names : per outcome, the designs' column names
    group_ptr : (n_groups + 1,) row offsets of the groups
    group_labels : (n_groups,) group identifiers
    row_index : the data frame index of each sorted row
    pattern : (n,) each student's pattern of observed outcomes (row of ``patterns``)
    patterns : (P, M) bool, the observed patterns
    formulas : the formulas as given
    """

    outcomes: tuple[str, ...]
    groups: str
    y_filled: np.ndarray
    observed: np.ndarray
    x_mean: tuple[np.ndarray, ...]
    x_ws: tuple[np.ndarray, ...]
    mean_names: tuple[tuple[str, ...], ...]
    ws_names: tuple[tuple[str, ...], ...]
    group_ptr: np.ndarray
    group_labels: np.ndarray
    row_index: pd.Index
    pattern: np.ndarray
    patterns: np.ndarray
    formulas: tuple[tuple[str, str], ...]

    @property
    def outcome(self) -> str:
        """The outcomes, comma-separated (what model comparisons match on)."""
        return ", ".join(self.outcomes)

    @property
    def y(self) -> np.ndarray:
        """The observed values, student by student."""
        return self.y_filled[self.observed]

    @property
    def n_outcomes(self) -> int:
        return len(self.outcomes)

    @property
    def n_groups(self) -> int:
        return len(self.group_ptr) - 1

    @property
    def n_obs(self) -> int:
        """Students (rows)."""
        return self.y_filled.shape[0]

    @property
    def n_values(self) -> int:
        """Observed outcome values."""
        return int(self.observed.sum())

    @property
    def group_sizes(self) -> np.ndarray:
        return np.diff(self.group_ptr)

    @property
    def group_index(self) -> np.ndarray:
        return np.repeat(np.arange(self.n_groups), self.group_sizes)


def build_multi_design(
    formulas: list[str], data: pd.DataFrame, groups: str, ws_formula: str | list[str] = "~ 1"
) -> MultiDesign:
    """The design of ``formulas`` (one per outcome, outcome on the left) on wide
    data (one row per student).

    Rows with a missing covariate or group are dropped (counted in a
    :class:`MissingDataWarning`); a missing outcome leaves the student in with
    the outcomes he has; students with none are dropped.
    """
    if not isinstance(data, pd.DataFrame):
        raise MELSInputError(f"data must be a pandas DataFrame, got {type(data).__name__}")
    if len(formulas) < 2:
        raise MELSInputError("several outcomes need at least two formulas")
    ws = [ws_formula] * len(formulas) if isinstance(ws_formula, str) else list(ws_formula)
    if len(ws) != len(formulas):
        raise MELSInputError(
            f"ws_formula: give one formula, or one per outcome ({len(formulas)}), got {len(ws)}"
        )
    if not isinstance(groups, str) or groups not in data.columns:
        raise MELSInputError(f"groups column {groups!r} is not in the data")
    outcomes, covariates = [], [groups]
    for f, w in zip(formulas, ws, strict=True):
        parsed = _parse(f, "formula", needs_lhs=True)
        lhs = sorted(str(v) for v in parsed.lhs.required_variables)
        if len(lhs) != 1:
            raise MELSInputError(f"formula={f!r} must have one outcome column on the left")
        outcomes.append(lhs[0])
        rhs = _parse(str(parsed.rhs), "formula", needs_lhs=False)
        names = _required(rhs, data, "formula", f) + _required(
            _parse(w, "ws_formula", needs_lhs=False), data, "ws_formula", w
        )
        for c in names:
            if c not in covariates:
                covariates.append(c)
    if len(set(outcomes)) != len(outcomes):
        raise MELSInputError(f"each outcome needs its own formula; got {outcomes}")
    for o in outcomes:
        if o not in data.columns:
            raise MELSInputError(f"outcome column {o!r} is not in the data")
        if not pd.api.types.is_numeric_dtype(data[o]):
            raise MELSInputError(f"outcome column {o!r} must be numeric")
        if data[o].notna().sum() == 0:
            raise MELSInputError(f"outcome {o!r} has no observed values")
    covariates = [c for c in covariates if c not in outcomes]
    frame = data.loc[:, covariates + outcomes]
    keep = frame[covariates].notna().all(axis=1) & frame[outcomes].notna().any(axis=1)
    n_dropped = int((~keep).sum())
    if n_dropped:
        warnings.warn(
            f"dropped {n_dropped} of {len(frame)} rows with a missing covariate or group, "
            "or with no outcome",
            MissingDataWarning,
            stacklevel=3,
        )
        logger.info("dropped %d rows", n_dropped)
        frame = frame.loc[keep]
    observed_raw = frame[outcomes].notna().to_numpy()
    for k, o in enumerate(outcomes):
        if not observed_raw[:, k].any():
            raise MELSInputError(f"outcome {o!r} has no observed values in the rows kept")
    filled = frame.copy()
    filled[outcomes] = filled[outcomes].fillna(0.0)
    designs = [
        build_design(f, filled, groups, ws_formula=w) for f, w in zip(formulas, ws, strict=True)
    ]
    first = designs[0]
    order = first.row_position
    observed = observed_raw[order]
    y = np.column_stack([d.y for d in designs])
    codes = observed @ (1 << np.arange(len(outcomes)))
    uniq, pattern = np.unique(codes, return_inverse=True)
    patterns = ((uniq[:, None] >> np.arange(len(outcomes))) & 1).astype(bool)
    return MultiDesign(
        outcomes=tuple(outcomes),
        groups=groups,
        y_filled=np.where(observed, y, 0.0),
        observed=observed,
        x_mean=tuple(np.ascontiguousarray(d.x_mean) for d in designs),
        x_ws=tuple(np.ascontiguousarray(d.x_ws) for d in designs),
        mean_names=tuple(d.mean_names for d in designs),
        ws_names=tuple(d.ws_names for d in designs),
        group_ptr=first.group_ptr,
        group_labels=first.group_labels,
        row_index=first.row_index,
        pattern=pattern,
        patterns=patterns,
        formulas=tuple(zip(formulas, ws, strict=True)),
    )


def long_to_wide(
    formula: str, data: pd.DataFrame, groups: str, outcome: str, unit: str | None
) -> tuple[list[str], pd.DataFrame]:
    """Long data (one row per student and outcome) as wide data, and one formula
    per outcome: ``formula``'s left side holds the scores, ``outcome`` names
    the outcome of each row and ``unit`` the student.  Covariates and groups
    must be the same on every row of a student.  The outcomes are ordered as a
    categorical column's categories, else sorted."""
    if not isinstance(data, pd.DataFrame):
        raise MELSInputError(f"data must be a pandas DataFrame, got {type(data).__name__}")
    for name, col in (("outcome", outcome), ("unit", unit), ("groups", groups)):
        if col is None:
            raise MELSInputError(
                f"long data (outcome={outcome!r}) need {name}=..., the column that identifies "
                "each row's " + {"unit": "student", "groups": "group", "outcome": "outcome"}[name]
            )
        if col not in data.columns:
            raise MELSInputError(f"{name} column {col!r} is not in the data")
    if "~" not in formula:
        raise MELSInputError(f"formula={formula!r} needs an outcome on the left, e.g. 'y ~ x'")
    lhs, rhs = (part.strip() for part in formula.split("~", 1))
    if lhs not in data.columns:
        raise MELSInputError(f"outcome column {lhs!r} is not in the data")
    if data.duplicated([unit, outcome]).any():
        raise MELSInputError(f"some {unit!r} has two rows for the same {outcome!r}")
    col = data[outcome]
    # a categorical column's order, else sorted
    found = (
        col.cat.categories
        if isinstance(col.dtype, pd.CategoricalDtype)
        else sorted(pd.unique(col.dropna()))
    )
    levels = [str(v) for v in found]
    if len(levels) < 2:
        raise MELSInputError(f"outcome column {outcome!r} has fewer than two outcomes")
    clash = [v for v in levels if v in data.columns]
    if clash:
        raise MELSInputError(f"outcome names {clash} are also columns of the data: rename them")
    others = [c for c in data.columns if c not in (lhs, outcome, unit)]
    by_unit = data.groupby(unit, sort=False)
    varies = [c for c in others if (by_unit[c].nunique(dropna=False) > 1).any()]
    if varies:
        raise MELSInputError(
            f"column(s) {', '.join(varies)} differ between rows of the same {unit!r}: long "
            "data for several outcomes need student-level covariates"
        )
    wide = by_unit[others].first()
    scores = data.assign(**{outcome: data[outcome].astype(str)}).pivot(
        index=unit, columns=outcome, values=lhs
    )
    wide = wide.join(scores[levels]).reset_index()
    return [f"`{v}` ~ {rhs}" for v in levels], wide
