"""Formulas and data -> design matrices sorted by group.

This is the only module that imports formulaic.  It owns the missing-data
policy: rows with a missing value in any column that a formula or the
``groups`` argument uses are dropped (listwise deletion), with a
:class:`~melsml.exceptions.MissingDataWarning` that counts them; the count is
kept on the design as ``n_dropped``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from .exceptions import MELSInputError, MissingDataWarning

logger = logging.getLogger(__name__)

__all__ = ["DesignMatrices", "build_design", "encode_rows"]


@dataclass(frozen=True)
class DesignMatrices:
    """Everything the likelihood needs, sorted by group.

    Attributes
    ----------
    y : (n_obs,) outcome
    x_mean, x_bs, x_ws : (n_obs, k) designs of the mean, between-group (BS)
        log-variance and within-group (WS) log-variance functions
    mean_names, bs_names, ws_names : term names of the three designs
    x_re, re_names : (n_obs, q) design of the random location effects (a
        column of ones for a random intercept) and its term names
    x_scale, scale_names : (n_obs, s) design of the random scale effects (a
        column of ones for a random scale intercept) and its term names
    group_ptr : (n_groups + 1,) int offsets of each group in the sorted rows
    group_labels : (n_groups,) the group identifiers, in sorted order
    row_index : (n_obs,) the data frame index of each sorted row
    row_position : (n_obs,) the data frame position of each sorted row
    categories : the categories of an ordinal outcome (then y holds their codes
        0..C-1; see :mod:`melsml.ordinal`), else None
    n_dropped : rows dropped for missing values
    censoring : (n_obs,) +1 / -1 where y is censored at a lower / upper limit
        (y is then the limit), 0 elsewhere; None for an uncensored outcome
        (see :mod:`melsml.censoring`)
    """

    y: np.ndarray
    x_mean: np.ndarray
    x_bs: np.ndarray
    x_ws: np.ndarray
    mean_names: tuple[str, ...]
    bs_names: tuple[str, ...]
    ws_names: tuple[str, ...]
    x_re: np.ndarray
    re_names: tuple[str, ...]
    x_scale: np.ndarray
    scale_names: tuple[str, ...]
    group_ptr: np.ndarray
    group_labels: np.ndarray
    row_index: pd.Index
    outcome: str
    groups: str
    formulas: Mapping[str, str]
    n_dropped: int = 0
    group_weights: np.ndarray | None = None
    group_weights_column: str | None = None
    unit_weights: np.ndarray | None = None
    unit_weights_column: str | None = None
    model_specs: Mapping[str, object] = field(default_factory=dict, repr=False)
    censoring: np.ndarray | None = None
    row_position: np.ndarray | None = None
    categories: np.ndarray | None = None

    @property
    def interval_outcome(self) -> bool:
        """Some rows are known only to lie in an interval: a censored or ordinal
        outcome (the location effects are then not Gaussian given the scale)."""
        return self.censored or self.categories is not None

    @property
    def censored(self) -> bool:
        """Whether any row is censored."""
        return self.censoring is not None and bool(np.any(self.censoring))

    @property
    def row_weights(self) -> np.ndarray | None:
        """(n_obs,) each row's weight, the product of its group weight and its own
        weight; None without weights."""
        if self.group_weights is None and self.unit_weights is None:
            return None
        w = np.ones(self.n_obs) if self.unit_weights is None else self.unit_weights
        if self.group_weights is not None:
            w = w * np.repeat(self.group_weights, self.group_sizes)
        return w

    @property
    def n_obs(self) -> int:
        return int(self.group_ptr[-1])

    @property
    def n_groups(self) -> int:
        return int(self.group_ptr.shape[0] - 1)

    @property
    def group_sizes(self) -> np.ndarray:
        return np.diff(self.group_ptr)

    @property
    def random_intercept_only(self) -> bool:
        """A single random location effect, the intercept (MixWILD's model)."""
        return self.re_names == ("Intercept",)

    @property
    def group_index(self) -> np.ndarray:
        """(n_obs,) position of each row's group, 0..n_groups-1."""
        return np.repeat(np.arange(self.n_groups), self.group_sizes)


def _parse(formula: str, option: str, *, needs_lhs: bool):
    import formulaic

    if not isinstance(formula, str) or not formula.strip():
        raise MELSInputError(f"{option} must be a non-empty formula string, got {formula!r}")
    try:
        parsed = formulaic.Formula(formula)
    except Exception as exc:  # formulaic raises several classes of syntax errors
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MELSInputError(f"{option}={formula!r} does not parse: {msg}") from None
    has_lhs = hasattr(parsed, "lhs")
    if needs_lhs and not has_lhs:
        raise MELSInputError(f"{option}={formula!r} needs an outcome on the left, e.g. 'y ~ x'")
    if not needs_lhs and has_lhs:
        raise MELSInputError(
            f"{option}={formula!r} must be one-sided (e.g. '~ x'): the outcome "
            "is given by the mean formula"
        )
    return parsed


def _expression_names(expr: str) -> set[str]:
    """Variable names an expression reads: every name except those called as
    functions or used as modules (``center(x)``, ``np.log(x)`` -> ``x``)."""
    import ast

    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError:
        return set()
    called = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            called.add(id(node.func))
        if isinstance(node, ast.Attribute):
            called.add(id(node.value))
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and id(n) not in called}


def _formula_names(parsed) -> set[str]:
    """Columns a parsed formula uses, including the arguments of stateful
    transforms (center, scale, poly, bs, ...), which formulaic's
    ``required_variables`` leaves out."""
    names = {str(v) for v in parsed.required_variables}
    sides = [parsed.lhs, parsed.rhs] if hasattr(parsed, "lhs") else [parsed]
    for side in sides:
        for term in side:
            for factor in term.factors:
                if getattr(factor.eval_method, "name", "") == "PYTHON":
                    names |= _expression_names(str(factor))
    return names


def _required(parsed, data: pd.DataFrame, option: str, formula: str) -> list[str]:
    found = _formula_names(parsed)
    # names that are not columns may be functions or constants of the formula's
    # namespace (np, pi, ...): only names formulaic requires must be columns
    required = {str(v) for v in parsed.required_variables}
    names = sorted(v for v in found if v in data.columns or v in required)
    missing = [v for v in names if v not in data.columns]
    if missing:
        # a file read for some columns only: name every column it has
        have = [str(c) for c in data.attrs.get("file_columns", data.columns)]
        shown = ", ".join(have[:30]) + (f", ... ({len(have)} in all)" if len(have) > 30 else "")
        raise MELSInputError(
            f"{option}={formula!r} uses column(s) not in the data: {', '.join(missing)}; "
            f"the data have: {shown}"
        )
    return names


def _matrix(formula: str, data: pd.DataFrame, option: str):
    import formulaic

    try:
        mm = formulaic.model_matrix(formula, data, na_action="raise")
    except Exception as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MELSInputError(f"{option}={formula!r} could not be evaluated: {msg}") from None
    return mm


def _check_design(
    mat: np.ndarray, names: tuple[str, ...], option: str, formula: str, rank: bool = True
) -> None:
    if mat.shape[1] == 0:
        raise MELSInputError(f"{option}={formula!r} has no terms (not even an intercept)")
    bad = ~np.isfinite(mat).all(axis=0)
    if bad.any():
        cols = ", ".join(n for n, b in zip(names, bad, strict=True) if b)
        raise MELSInputError(f"{option}={formula!r}: term(s) {cols} have infinite or NaN values")
    if rank:
        check_rank(mat.T @ mat, names, option, formula)


def check_rank(gram: np.ndarray, names: tuple[str, ...], option: str, formula: str) -> None:
    """A design of full column rank, judged on its Gram matrix X'X (which parts
    of the data can add up), or a clear error."""
    k = gram.shape[0]
    scale = np.sqrt(np.maximum(np.diag(gram), 1e-300))
    eig = np.linalg.eigvalsh(gram / np.outer(scale, scale))
    rank = int(np.sum(eig > max(k, 1) * 1e-10 * max(eig.max(initial=0.0), 1.0)))
    if rank < k:
        raise MELSInputError(
            f"{option}={formula!r} gives a rank-deficient design ({rank} of {k} "
            f"columns independent; terms: {', '.join(names)}): drop collinear terms"
        )


def build_design(
    formula: str,
    data: pd.DataFrame,
    groups: str,
    *,
    bs_formula: str = "~ 1",
    ws_formula: str = "~ 1",
    re_formula: str = "~ 1",
    ws_re_formula: str = "~ 1",
    group_weights: str | None = None,
    weights: str | None = None,
    checks: bool = True,
) -> DesignMatrices:
    """Build the three design matrices of a MELS model from formulas.

    Parameters
    ----------
    formula : str
        Mean function with the outcome on the left, e.g. ``"y ~ prior + fsm"``.
    data : pandas.DataFrame
    groups : str
        Column that identifies the groups (schools).
    bs_formula, ws_formula : str
        One-sided formulas of the between-group and within-group log-variance
        functions.
    re_formula : str
        One-sided formula of the random location effects (``"~ 1"``: random
        intercept; ``"~ 1 + prior"``: random intercept and slope).
    ws_re_formula : str
        One-sided formula of the random scale effects in the within-group
        log-variance (``"~ 1"``: a random scale intercept; ``"~ 1 + prior"``
        adds a random scale slope on ``prior``).
    checks : bool
        Check that each design has full rank and that random scale slopes are
        identified (False for one part of data whose parts are checked
        together).

    Returns
    -------
    DesignMatrices
        Rows sorted by group (stable, so the order within a group is kept).

    Raises
    ------
    MELSInputError
        Unknown columns, unparsable formulas, a non-numeric outcome,
        infinite values, or a rank-deficient design.
    """
    if not isinstance(data, pd.DataFrame):
        raise MELSInputError(f"data must be a pandas DataFrame, got {type(data).__name__}")
    if data.columns.duplicated().any():
        dup = sorted({str(c) for c in data.columns[data.columns.duplicated()]})
        raise MELSInputError(
            f"data has duplicated column name(s) {', '.join(map(repr, dup))}: rename them"
        )
    if len(data) == 0:
        raise MELSInputError("data has no rows")
    if not isinstance(groups, str) or groups not in data.columns:
        raise MELSInputError(f"groups column {groups!r} is not in the data")
    specs = {
        "formula": formula,
        "bs_formula": bs_formula,
        "ws_formula": ws_formula,
        "re_formula": re_formula,
        "ws_re_formula": ws_re_formula,
    }
    parsed = {opt: _parse(f, opt, needs_lhs=(opt == "formula")) for opt, f in specs.items()}
    used: list[str] = [groups]
    if group_weights is not None:
        if not isinstance(group_weights, str) or group_weights not in data.columns:
            raise MELSInputError(
                f"group_weights must name a column of the data, got {group_weights!r}"
            )
        if not pd.api.types.is_numeric_dtype(data[group_weights]):
            raise MELSInputError(f"group_weights column {group_weights!r} must be numeric")
        used.append(group_weights)
    if weights is not None:
        if not isinstance(weights, str) or weights not in data.columns:
            raise MELSInputError(f"weights must name a column of the data, got {weights!r}")
        if not pd.api.types.is_numeric_dtype(data[weights]):
            raise MELSInputError(f"weights column {weights!r} must be numeric")
        if weights not in used:
            used.append(weights)
    for opt, p in parsed.items():
        for v in _required(p, data, opt, specs[opt]):
            if v not in used:
                used.append(v)
    lhs_vars = sorted(str(v) for v in parsed["formula"].lhs.required_variables)
    if len(lhs_vars) != 1:
        raise MELSInputError(f"formula={formula!r} must have one outcome column on the left")
    outcome = lhs_vars[0]
    if not pd.api.types.is_numeric_dtype(data[outcome]) or pd.api.types.is_bool_dtype(
        data[outcome]
    ):
        raise MELSInputError(
            f"outcome column {outcome!r} must be numeric, got dtype {data[outcome].dtype}"
        )

    frame = data.loc[:, used]
    keep = frame.notna().all(axis=1).to_numpy()
    position = np.flatnonzero(keep)
    n_dropped = int((~keep).sum())
    if n_dropped:
        per_col = {c: int(frame[c].isna().sum()) for c in used if frame[c].isna().any()}
        detail = ", ".join(f"{c}: {k}" for c, k in per_col.items())
        warnings.warn(
            f"dropped {n_dropped} of {len(frame)} rows with missing values ({detail})",
            MissingDataWarning,
            stacklevel=3,
        )
        logger.info("dropped %d rows with missing values", n_dropped)
        frame = frame.loc[keep]
    if len(frame) == 0:
        raise MELSInputError("no rows left after dropping rows with missing values")
    for c in used:
        col = frame[c]
        if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
            if not np.isfinite(col.to_numpy(dtype=float)).all():
                raise MELSInputError(f"column {c!r} has infinite values")

    # groups in sorted label order; a stable sort keeps each group's rows in data order
    codes, labels = pd.factorize(frame[groups], sort=True)
    order = np.argsort(codes, kind="stable")
    frame = frame.iloc[order]
    position = position[order]
    codes = codes[order]
    counts = np.bincount(codes, minlength=len(labels))
    group_ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.intp)

    mm = _matrix(formula, frame, "formula")
    y = np.ascontiguousarray(np.asarray(mm.lhs, dtype=float)[:, 0])
    mats = {"formula": mm.rhs}
    for opt in ("bs_formula", "ws_formula", "re_formula", "ws_re_formula"):
        mats[opt] = _matrix(specs[opt], frame, opt)
    arrays, names = {}, {}
    for opt, mat in mats.items():
        # the fixed-effect designs column-major, the layout the likelihood reads
        # (X @ b and X.T @ g by columns): no copy of them at any evaluation
        as_layout = (
            np.ascontiguousarray if opt in ("re_formula", "ws_re_formula") else np.asfortranarray
        )
        arr = as_layout(np.asarray(mat, dtype=float))
        nm = tuple(str(c) for c in mat.model_spec.column_names)
        _check_design(arr, nm, opt, specs[opt], rank=checks)
        arrays[opt], names[opt] = arr, nm
    if names["re_formula"] != ("Intercept",) and names["bs_formula"] != ("Intercept",):
        raise MELSInputError(
            f"bs_formula={bs_formula!r} needs a single random intercept: with "
            f"re_formula={re_formula!r} the random effects have an unstructured covariance "
            "(use bs_formula='~ 1')"
        )
    if checks:
        scale_names = names["ws_re_formula"]
        varies, ok = scale_design_facts(arrays["ws_re_formula"], scale_names, group_ptr)
        check_scale_facts(varies, ok, scale_names, ws_re_formula)
    gw = None
    if group_weights is not None:
        w = frame[group_weights].to_numpy(dtype=float)
        first = w[group_ptr[:-1]]
        if not np.all(w == np.repeat(first, np.diff(group_ptr))):
            raise MELSInputError(
                f"group_weights column {group_weights!r} must be constant within each "
                f"group ({groups})"
            )
        if not (np.isfinite(first).all() and (first > 0).all()):
            raise MELSInputError(
                f"group_weights column {group_weights!r} must be positive and finite"
            )
        gw = first
    uw = None
    if weights is not None:
        uw = np.ascontiguousarray(frame[weights].to_numpy(dtype=float))
        if not (np.isfinite(uw).all() and (uw > 0).all()):
            raise MELSInputError(f"weights column {weights!r} must be positive and finite")
    return DesignMatrices(
        y=y,
        x_mean=arrays["formula"],
        x_bs=arrays["bs_formula"],
        x_ws=arrays["ws_formula"],
        mean_names=names["formula"],
        bs_names=names["bs_formula"],
        ws_names=names["ws_formula"],
        x_re=arrays["re_formula"],
        re_names=names["re_formula"],
        x_scale=arrays["ws_re_formula"],
        scale_names=names["ws_re_formula"],
        group_ptr=group_ptr,
        group_labels=np.asarray(labels),
        row_index=frame.index,
        row_position=position,
        outcome=outcome,
        groups=groups,
        formulas=specs,
        n_dropped=n_dropped,
        group_weights=gw,
        group_weights_column=group_weights,
        unit_weights=uw,
        unit_weights_column=weights,
        model_specs={opt: m.model_spec for opt, m in mats.items()},
    )


def scale_design_facts(h: np.ndarray, names: tuple[str, ...], group_ptr) -> tuple:
    """Whether each random-scale term varies within some group, and how many
    groups (up to 2) can identify all the scale effects."""
    starts = group_ptr[:-1]
    sizes = np.diff(group_ptr)
    varies = np.ones(h.shape[1], dtype=bool)
    if h.shape[1] > 1 or names != ("Intercept",):
        first = np.repeat(h[starts], sizes, axis=0)
        varies = np.abs(h - first).max(axis=0) > 0
    s = h.shape[1]
    ok = 0
    if s > 1:
        for a, b in zip(group_ptr[:-1], group_ptr[1:], strict=True):
            if b - a > s and np.linalg.matrix_rank(h[a:b]) == s:
                ok += 1
                if ok >= 2:
                    break
    return varies, ok


def check_scale_facts(varies, ok: int, names: tuple[str, ...], formula: str) -> None:
    """A random scale slope must vary within groups, and some groups must be able
    to identify all the scale effects."""
    option = "ws_re_formula"
    for name, v in zip(names, varies, strict=True):
        if name != "Intercept" and not v:
            raise MELSInputError(
                f"{option}={formula!r}: term {name!r} is constant within every group, so "
                "a random scale slope on it is confounded with the random scale "
                "intercept; put it in ws_formula (fixed) instead"
            )
    s = len(names)
    if s > 1 and ok < 2:
        raise MELSInputError(
            f"{option}={formula!r} has {s} random scale effects ({', '.join(names)}), but "
            f"fewer than two groups have more than {s} units with distinct values of "
            "these terms: the groups cannot identify them"
        )


def encode_rows(design: DesignMatrices, data: pd.DataFrame) -> dict[str, np.ndarray]:
    """The design rows of new data, encoded with the fitted formulas' stored
    specifications: stateful transforms (centring, scaling, splines, category
    levels) reuse the fitted data's state.

    Returns
    -------
    dict with ``x_mean``, ``x_bs``, ``x_ws``, ``x_re``, ``x_scale`` (n_rows, k)
    """
    out = {}
    for opt, key, names in (
        ("formula", "x_mean", design.mean_names),
        ("bs_formula", "x_bs", design.bs_names),
        ("ws_formula", "x_ws", design.ws_names),
        ("re_formula", "x_re", design.re_names),
        ("ws_re_formula", "x_scale", design.scale_names),
    ):
        spec = design.model_specs[opt]
        try:
            mm = spec.get_model_matrix(data, na_action="raise")
        except Exception as exc:  # formulaic raises several classes
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            missing = [c for c in sorted(map(str, spec.required_variables)) if c not in data]
            hint = f"; columns missing from exog: {', '.join(missing)}" if missing else ""
            raise MELSInputError(
                f"exog cannot be encoded with {opt}={design.formulas[opt]!r}: {msg}{hint}"
            ) from None
        # the model's columns (an ordinal model has no mean or WS intercept)
        cols = list(map(str, mm.columns))
        out[key] = np.asarray(mm, dtype=float)[:, [cols.index(n) for n in names]]
    return out


def take_groups(design: DesignMatrices, groups: slice | np.ndarray) -> DesignMatrices:
    """The design of some of its groups: a slice of group positions (its rows are
    then a slice too) or increasing group positions; rows keep their order."""
    sizes = design.group_sizes
    if isinstance(groups, slice):
        g0, g1, _ = groups.indices(design.n_groups)
        a, b = int(design.group_ptr[g0]), int(design.group_ptr[g1])
        rows: slice | np.ndarray = slice(a, b)
        group_ptr = design.group_ptr[g0 : g1 + 1] - a
    else:
        keep = np.zeros(design.n_groups, dtype=bool)
        keep[groups] = True
        rows = np.repeat(keep, sizes)
        group_ptr = np.concatenate([[0], np.cumsum(sizes[groups])]).astype(np.intp)

    return _with_rows(
        design,
        rows,
        group_ptr=group_ptr,
        group_labels=design.group_labels[groups],
        group_weights=None if design.group_weights is None else design.group_weights[groups],
    )


def _with_rows(design: DesignMatrices, rows, **changes) -> DesignMatrices:
    """The design with only ``rows`` (a slice, mask or positions) of every
    row-wise array, and ``changes`` (the new group offsets, ...)."""

    def take(x):
        return None if x is None else np.ascontiguousarray(x[rows])

    fields = ("y", "x_mean", "x_bs", "x_ws", "x_re", "x_scale", "row_position")
    fields += ("unit_weights", "censoring")
    out = {f: take(getattr(design, f)) for f in fields}
    out["row_index"] = design.row_index[rows]
    return replace(design, **{**out, **changes})


def collapse_duplicates(design: DesignMatrices, min_saving: float = 0.2) -> DesignMatrices | None:
    """The design with identical rows within each group merged into one row with a
    frequency weight (the count), or None when that saves less than ``min_saving``
    of the rows or the design already has weights.

    Rows are identical when the outcome, the censoring and every design column
    agree.  The log-likelihood and score of the collapsed design (frequency
    weights) are those of the original: a large saving for graded outcomes with
    categorical covariates, whose units each cost a pass at every quadrature node.
    """
    if design.unit_weights is not None or design.group_weights is not None:
        return None
    parts = [
        design.group_index[:, None].astype(float),
        design.y[:, None],
        design.x_mean,
        design.x_bs,
        design.x_ws,
        design.x_re,
        design.x_scale,
    ]
    if design.censoring is not None:
        parts.insert(2, design.censoring[:, None])
    key = np.hstack(parts)
    uniq, first, counts = np.unique(key, axis=0, return_index=True, return_counts=True)
    if len(uniq) > (1.0 - min_saving) * design.n_obs:
        return None
    # np.unique sorts by the group index first: each group's rows stay together
    sizes = np.bincount(uniq[:, 0].astype(int), minlength=design.n_groups)
    group_ptr = np.concatenate([[0], np.cumsum(sizes)]).astype(np.intp)

    return _with_rows(
        design,
        first,
        group_ptr=group_ptr,
        unit_weights=np.ascontiguousarray(counts.astype(float)),
    )
