"""Censored outcomes (floor and ceiling effects): limits -> the design's censoring.

A censored normal (Tobit) model: the latent y* follows the MELS model and the
data show y = y* inside (L, U), and only "at or below L" or "at or above U"
at the limits.  :func:`apply_censoring` marks each row: +1 where y <= L
(then y is set to L), -1 where y >= U (y set to U), 0 elsewhere.  The
likelihood of a marked row is Phi((L - mu) / sigma) or Phi((mu - U) / sigma)
instead of the normal density.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from .exceptions import MELSInputError
from .formula import DesignMatrices


def _limit(spec, data: pd.DataFrame, design: DesignMatrices, side: str) -> np.ndarray:
    """One side's limit per sorted row (NaN: no limit)."""
    n = design.n_obs
    if spec is None:
        return np.full(n, np.nan)
    if isinstance(spec, str):
        if spec not in data.columns:
            raise MELSInputError(f"censoring: the {side} limit column {spec!r} is not in the data")
        col = pd.to_numeric(data[spec], errors="coerce")
        if col.isna().sum() > data[spec].isna().sum():
            raise MELSInputError(f"censoring: the {side} limit column {spec!r} is not numeric")
        return col.to_numpy(dtype=float)[design.row_position]
    try:
        value = float(spec)
    except (TypeError, ValueError):
        raise MELSInputError(
            f"censoring: the {side} limit must be a number, a column name or None, got {spec!r}"
        ) from None
    if np.isnan(value):
        return np.full(n, np.nan)
    return np.full(n, value)


def apply_censoring(design: DesignMatrices, data: pd.DataFrame, censoring) -> DesignMatrices:
    """The design with its rows marked as censored at the limits ``censoring``.

    Parameters
    ----------
    design : DesignMatrices
    data : DataFrame the design was built from (for limit columns)
    censoring : (lower, upper)
        Each a number (the same limit for every row), a column name (a limit
        per row; a missing value means no limit) or None (no limit on that side).

    Returns
    -------
    DesignMatrices with ``censoring`` set (+1 at or below the lower limit, -1 at
    or above the upper limit, 0 observed) and y moved to the limit on the
    censored rows.
    """
    if censoring is None:
        return design
    if isinstance(censoring, (str, bytes)) or not hasattr(censoring, "__len__"):
        raise MELSInputError(
            f"censoring must be a pair (lower, upper), e.g. (0, 100) or ('lo', 'hi'); "
            f"got {censoring!r}"
        )
    if len(censoring) != 2:
        raise MELSInputError(
            f"censoring must be a pair (lower, upper), got {len(censoring)} values"
        )
    lo = _limit(censoring[0], data, design, "lower")
    hi = _limit(censoring[1], data, design, "upper")
    both = ~np.isnan(lo) & ~np.isnan(hi)
    bad = both & (lo >= hi)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise MELSInputError(
            f"censoring: the lower limit must be below the upper limit; row "
            f"{design.row_index[i]!r} has lower {lo[i]:g} and upper {hi[i]:g} "
            f"({int(bad.sum())} rows are the wrong way round)"
        )
    y = design.y.copy()
    with np.errstate(invalid="ignore"):
        low = ~np.isnan(lo) & (y <= lo)
        high = ~np.isnan(hi) & (y >= hi)
    cens = np.zeros(design.n_obs)
    cens[low] = 1.0
    cens[high] = -1.0
    y[low] = lo[low]
    y[high] = hi[high]
    return replace(design, y=np.ascontiguousarray(y), censoring=np.ascontiguousarray(cens))


def censoring_counts(design: DesignMatrices) -> tuple[int, int]:
    """(rows at or below the lower limit, rows at or above the upper limit)."""
    c = design.censoring
    if c is None:
        return 0, 0
    return int((c > 0).sum()), int((c < 0).sum())
