"""School reports: DfE median-line VA, Progress 8, MixedLM VA and MELS school means and
variances."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..measures import MEASURE_SUFFIXES
from .dfe import DfEResult


@dataclass(frozen=True)
class SchoolReport:
    """One row per school, and summaries across schools."""

    table: pd.DataFrame
    separation: pd.DataFrame
    rank_correlations: pd.DataFrame


def _columns(measure: str) -> list[str]:
    return [measure + suffix for suffix in MEASURE_SUFFIXES]


def _prefixed(effects: pd.DataFrame, prefix: str, columns) -> pd.DataFrame:
    cols = [c for c in columns if c in effects.columns]
    return effects[cols].add_prefix(prefix)


def compare_schools(
    mels: pd.DataFrame | None = None,
    mixedlm: pd.DataFrame | None = None,
    dfe: DfEResult | pd.DataFrame | None = None,
    p8: pd.DataFrame | None = None,
) -> SchoolReport:
    """Put the measures of each school side by side.

    Parameters
    ----------
    mels : DataFrame, optional
        ``res.school_effects()`` of a MELS fit (school means and variances).
    mixedlm : DataFrame, optional
        :func:`melsml.valueadded.mixedlm_va` output.
    dfe : DfEResult or its ``schools`` table, optional
        :func:`melsml.valueadded.dfe_value_added` output.
    p8 : DataFrame, optional
        :func:`melsml.valueadded.progress8` output (its ``schools`` table).

    Returns
    -------
    SchoolReport
        ``table``: per school ``dfe_va`` (published, 100-based), ``dfe_rank``,
        Progress 8 ``p8`` with its interval, rank and flag, the MixedLM
        ``mixedlm_*`` and MELS ``mels_mean_*``/``mels_variance_*`` estimates,
        intervals, ranks (1 = best: the highest mean, the lowest variance) and
        ``*_separated`` flags;
        ``separation``: per measure the number and share of schools whose
        interval excludes the average; ``rank_correlations``: Spearman
        correlations between the measures' school rankings.
    """
    parts = []
    if dfe is not None:
        schools = dfe.schools if isinstance(dfe, DfEResult) else dfe
        d = pd.DataFrame({"dfe_va": schools["va_published"], "dfe_coverage": schools["coverage"]})
        d["dfe_rank"] = d["dfe_va"].rank(method="min", ascending=False)  # 1 = highest
        parts.append(d)
    if p8 is not None:
        parts.append(p8[[c for c in ["p8_n", *_columns("p8")] if c in p8.columns]])
    if mixedlm is not None:
        parts.append(_prefixed(mixedlm, "mixedlm_", _columns("mean")))
    if mels is not None:
        parts.append(_prefixed(mels, "mels_", ["n", *_columns("mean"), *_columns("variance")]))
    if not parts:
        raise ValueError("compare_schools() needs at least one of mels, mixedlm, dfe, p8")
    table = pd.concat(parts, axis=1, join="outer")
    table.index.name = "school"
    refs = {"mixedlm_mean": 0.0, "mels_mean": 0.0, "p8": 0.0}
    if mels is not None:
        refs["mels_variance"] = float(mels.attrs.get("variance_reference", np.nan))
        if "variance_note" in mels.attrs:
            table.attrs["variance_note"] = mels.attrs["variance_note"]
    table.attrs["references"] = refs
    return SchoolReport(
        table=table,
        separation=separation_summary(table),
        rank_correlations=_rank_correlations(table),
    )


def separation_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Number and percentage of schools separated from the average, per measure;
    ``separate_findings`` is False for the MELS variances when the random scale
    is at its boundary (they then follow the school means through tau_l)."""
    rows = {}
    for col in table.columns:
        if col.endswith("_separated"):
            flags = table[col].dropna().astype(bool)
            rows[col.removesuffix("_separated")] = {
                "schools": len(flags),
                "separated": int(flags.sum()),
                "percent": 100.0 * flags.mean() if len(flags) else np.nan,
                "above": int(
                    (
                        flags
                        & (
                            table.loc[flags.index, col.replace("_separated", "_lower")]
                            > _reference(table, col)
                        )
                    ).sum()
                ),
            }
    out = pd.DataFrame(rows).T
    out["below"] = out["separated"] - out["above"]
    boundary = "variance_note" in table.attrs
    out["separate_findings"] = [not (boundary and "variance" in name) for name in out.index]
    return out


def _reference(table: pd.DataFrame, col: str) -> float:
    ref = table.attrs.get("references", {})
    return ref.get(col.removesuffix("_separated"), 0.0)


def _rank_correlations(table: pd.DataFrame) -> pd.DataFrame:
    ranks = {c.removesuffix("_rank"): table[c] for c in table.columns if c.endswith("_rank")}
    frame = pd.DataFrame(ranks)
    return frame.corr(method="spearman")


def compare(*args, **kwargs):
    """Deprecated name of :func:`compare_schools` (``melsml.compare`` compares
    fitted models)."""
    warnings.warn(
        "melsml.valueadded.compare is now compare_schools (melsml.compare compares fitted models)",
        FutureWarning,
        stacklevel=2,
    )
    return compare_schools(*args, **kwargs)
