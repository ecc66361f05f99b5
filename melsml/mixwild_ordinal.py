"""Reports of MixWILD's ordinal engine (MIXORS): read, and set beside a melsml fit.

The report lists the models of the engine's cycles; the last rows (after the
last "Variable ... Estimate" header) are the final model: BETA, ALPHA, TAU,
the thresholds, the association ("Random location effects on WS variance":
``Linear``, ``Quadratic``) and the random scale SD ("Std Dev").  The engine's
WS function and random scale are on the log-SD scale of the latent error, so
melsml's ``tau``, ``tau_l``, ``tau_q`` and ``sigma_omega`` (log-variance
scale) and their SEs are twice MixWILD's; the comparison halves melsml's.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from .exceptions import MELSInputError
from .inference import delta_method
from .ordinal import thresholds

_NUM = r"(-?\d[\d.]*(?:[eEdD][+-]?\d+)?)"
_ROW = re.compile(rf"^\s*(\S.*?)\s+{_NUM}\s+{_NUM}\s+{_NUM}\s+{_NUM}\s*$")
_SECTIONS = (
    ("BETA", "beta"),
    ("ALPHA", "alpha"),
    ("TAU", "tau"),
    ("Thresholds", "thresholds"),
    ("Random location effects on WS variance", "random"),
    ("Random scale standard deviation", "random"),
)
_RANDOM = {"Linear": "tau_l", "Quadratic": "tau_q", "Std Dev": "sigma_omega"}
#: melsml's value is this many times MixWILD's (log-variance against log-SD scale)
_SCALE = {"tau": 2.0, "random": 2.0}


def is_ordinal_report(path) -> bool:
    """Whether ``path`` is a report of MixWILD's ordinal engine."""
    try:
        with open(path, errors="replace") as fh:
            first = fh.readline()
    except OSError as exc:
        raise MELSInputError(f"cannot read {str(path)!r}: {exc}") from None
    return first.strip().startswith("MixorS")


def read_ordinal_output(path) -> pd.DataFrame:
    """The final model of a MIXORS report: ``block``, ``term``, ``estimate``,
    ``std_error`` (MixWILD's scales); ``attrs["llf"]`` its log-likelihood."""
    path = Path(path)
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        raise MELSInputError(f"cannot read {str(path)!r}: {exc}") from None
    heads = [i for i, ln in enumerate(lines) if ln.startswith("Variable") and "Estimate" in ln]
    if not heads:
        raise MELSInputError(f"{path.name}: no estimates in this MIXORS report")
    llfs = [
        float(m.group(1))
        for ln in lines[: heads[-1]]
        if (m := re.match(r"\s*Log Likelihood\s*=\s*(-\S+)", ln))
    ]
    rows, block = [], None
    for line in lines[heads[-1] + 1 :]:
        s = line.strip()
        if s.startswith(("WS variance ratios", "BS variance ratios")):
            break
        for head, name in _SECTIONS:
            if s.startswith(head):
                block = name
                break
        else:
            m = _ROW.match(line)
            if m and block is not None:
                term = m.group(1).strip()
                term = _RANDOM.get(term, term) if block == "random" else term
                rows.append(
                    dict(
                        block=block,
                        term=term,
                        estimate=float(m.group(2).replace("D", "E")),
                        std_error=float(m.group(3).replace("D", "E")),
                    )
                )
    out = pd.DataFrame(rows)
    out.attrs["llf"] = llfs[-1] if llfs else np.nan
    return out


def compare_row(block: str, term: str, ours: float, ours_se: float, theirs: float,
                theirs_se: float) -> dict:  # fmt: skip
    """One row of a comparison table: the two estimates and SEs, their
    difference and the SE ratio."""
    return dict(
        block=block,
        term=term,
        melsml=ours,
        mixwild=theirs,
        difference=ours - theirs,
        melsml_se=ours_se,
        mixwild_se=theirs_se,
        se_ratio=ours_se / theirs_se if theirs_se else np.nan,
    )


def compare_ordinal(res, output) -> pd.DataFrame:
    """A melsml ordinal fit beside a MIXORS report (melsml's log-SD-scale
    parameters halved to MixWILD's scale); columns as :func:`melsml.mixwild.compare`."""
    if res.model.design.categories is None:
        raise MELSInputError("a MIXORS report compares with an ordinal fit (family='ordinal')")
    mw = read_ordinal_output(output)
    rows = []
    for block in ("beta", "alpha", "tau", "thresholds", "random"):
        theirs = mw[mw["block"] == block]
        if block == "thresholds":
            raw = res.params["thresholds"].to_numpy()
            cov = res.cov_params().loc["thresholds", "thresholds"].to_numpy()
            val, vcov = delta_method(thresholds, raw, cov)
            ours = pd.Series(val, index=res.thresholds.index)
            ses = pd.Series(np.sqrt(np.diag(vcov)), index=ours.index)
        elif block in res.params.index.get_level_values(0):
            factor = _SCALE.get(block, 1.0)
            ours = res.params[block] / factor
            ses = res.bse[block] / factor
            if block == "tau":
                # the engine's WS function has no intercept
                ours, ses = (
                    ours.drop("Intercept", errors="ignore"),
                    ses.drop("Intercept", errors="ignore"),
                )
        else:
            continue
        if block == "random":
            theirs = theirs.set_index("term").reindex(list(ours.index)).reset_index()
        if len(theirs) != len(ours):
            raise MELSInputError(
                f"{block}: melsml has {len(ours)} parameters, MixWILD {len(theirs)}; "
                "are these the same model?"
            )
        for (term, val), se, (_, row) in zip(ours.items(), ses, theirs.iterrows(), strict=True):
            rows.append(compare_row(block, term, val, se, row["estimate"], row["std_error"]))
    llf = mw.attrs["llf"]
    rows.append(
        dict(block="fit", term="log-likelihood", melsml=res.llf, mixwild=llf,
             difference=res.llf - llf)
    )  # fmt: skip
    return pd.DataFrame(rows).set_index(["block", "term"])
