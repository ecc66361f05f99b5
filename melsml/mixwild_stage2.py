"""The stage-2 block of a MixWILD definition file: read, turned into a melsml
stage-2 formula and data, written.

The block (after the stage-1 labels, when STAGE2 is not 0): the counts
``pfixed ptheta pomega pto`` (two with NORS = 1; -1 leaves the effect out, 0
keeps it with no interactions); for an ordinal or nominal outcome the number
of categories and their codes; with SEPFILE = 1 the stage-2 data file, then
its NVAR and id column; the outcome column; the fixed, location-, scale- and
location-x-scale-interaction columns; then the labels in the same order.

The regressors MixWILD builds: an intercept, the fixed covariates, the
location effect (``Locat_1`` = theta1) alone and times each of its
covariates, the scale effect (``Scale_1`` = theta2) alone and times each of
its covariates, and their product alone and times each of its covariates.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .exceptions import MELSInputError

#: MixWILD's STAGE2 codes
STAGE2_FAMILIES = {1: "gaussian", 2: "ordinal", 3: "poisson", 4: "nominal"}


class Stage2FormatError(MELSInputError):
    """A malformed stage-2 block (names the line)."""


@dataclass(frozen=True)
class Stage2Spec:
    """A definition file's stage-2 model."""

    family: str
    multilevel: bool
    n_draws: int
    seed: int
    counts: tuple[int, int, int, int]  # pfixed, ptheta, pomega, pto (-1: left out)
    categories: tuple[float, ...] | None
    sep_file: Path | None
    sep_nvar: int | None
    sep_id_col: int | None
    y_col: int
    cols: tuple[tuple[int, ...], ...]  # fixed, theta, omega, to
    y_label: str
    labels: tuple[tuple[str, ...], ...]

    def formula(self) -> str:
        """The melsml stage-2 formula of MixWILD's regressors."""
        fixed, theta, omega, to = self.labels
        _, ptheta, pomega, pto = self.counts
        terms = ["1", *fixed]
        if ptheta >= 0:
            terms += ["theta1", *(f"theta1:{c}" for c in theta)]
        if pomega >= 0:
            terms += ["theta2", *(f"theta2:{c}" for c in omega)]
        if pto >= 0:
            terms += ["theta1:theta2", *(f"theta1:theta2:{c}" for c in to)]
        return f"{self.y_label} ~ " + " + ".join(terms)

    @property
    def columns(self) -> dict[str, int]:
        """Label -> column number of every stage-2 variable (outcome first)."""
        out = {self.y_label: self.y_col}
        for labs, cs in zip(self.labels, self.cols, strict=True):
            out.update(zip(labs, cs, strict=True))
        return out

    def data(self, stage1: pd.DataFrame, id_col: str, ymiss: float) -> pd.DataFrame:
        """The stage-2 data: from the separate file, or from the stage-1 rows
        ``stage1`` (which hold the stage-2 columns); without MULTI2ND (or with an
        outcome constant within groups) one row per group, each variable's mean
        over the group's rows, as MixWILD takes it.  Rows with the
        missing-value code are dropped."""
        labels = list(self.columns)
        if self.sep_file is not None:
            raw = read_numbers(
                self.sep_file, self.sep_nvar, "the stage-2 data file", Stage2FormatError
            )
            frame = pd.DataFrame({id_col: raw[:, self.sep_id_col - 1].astype(np.int64)})
            for lab, c in self.columns.items():
                frame[lab] = raw[:, c - 1]
        else:
            frame = stage1[[id_col, *labels]].copy()
        if ymiss != 0:
            bad = np.isclose(frame[labels].to_numpy(), ymiss, rtol=0, atol=1e-12)
            frame = frame.loc[~bad.any(axis=1)]
        varies = frame.groupby(id_col)[self.y_label].nunique().gt(1).any()
        if self.multilevel and varies:
            return frame.reset_index(drop=True)
        return frame.groupby(id_col, as_index=False, sort=False).mean()


_EFFECTS = {"theta1", "theta2"}


def counts_from_formula(formula: str) -> tuple[tuple[int, ...], tuple[tuple[str, ...], ...], str]:
    """MixWILD's stage-2 counts (pfixed, ptheta, pomega, pto), the covariates of
    each list and the outcome, for a melsml stage-2 formula of MixWILD's form
    (an intercept, fixed covariates, theta1, theta2 and theta1:theta2, each
    alone and times covariates); anything else is a clear error."""
    from .formula import _parse

    parsed = _parse(formula, "formula", needs_lhs=True)
    outcome = str(parsed.lhs).strip()
    lists: dict[frozenset, list[str]] = {
        frozenset(): [],
        frozenset({"theta1"}): [],
        frozenset({"theta2"}): [],
        frozenset({"theta1", "theta2"}): [],
    }
    present: set[frozenset] = set()
    intercept = False
    for term in parsed.rhs:
        names = [str(f) for f in term.factors]
        if names == ["1"]:
            intercept = True
            continue
        effects = frozenset(n for n in names if n in _EFFECTS)
        others = [n for n in names if n not in _EFFECTS]
        if (
            len(others) > 1
            or (not effects and not others)
            or any(n in ("u", "omega") for n in others)
        ):
            raise MELSInputError(
                f"MixWILD's stage 2 cannot express the term {str(term)!r}: it has fixed "
                "covariates and theta1, theta2, theta1:theta2, each alone or times one covariate"
            )
        if others:
            lists[effects].append(others[0])
        else:
            present.add(effects)
    if not intercept:
        raise MELSInputError("MixWILD's stage 2 always has an intercept: keep it in the formula")
    counts = [len(lists[frozenset()])]
    for key in (frozenset({"theta1"}), frozenset({"theta2"}), frozenset({"theta1", "theta2"})):
        if key not in present and lists[key]:
            raise MELSInputError(
                f"MixWILD's stage 2 has {':'.join(sorted(key))} times a covariate only with "
                f"{':'.join(sorted(key))} itself in the formula"
            )
        counts.append(len(lists[key]) if key in present else -1)
    labels = tuple(
        tuple(lists[k])
        for k in (frozenset(), frozenset({"theta1"}), frozenset({"theta2"}),
                  frozenset({"theta1", "theta2"}))
    )  # fmt: skip
    return tuple(counts), labels, outcome


def read_numbers(path: Path, nvar: int, what: str = "data file", error=MELSInputError):
    """The first ``nvar`` numbers of every non-empty line of a MixWILD data
    file, as an array; ``error`` (a class) names the line that is short or not
    numeric."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise MELSInputError(f"cannot read {what} {str(path)!r}: {exc}") from None
    rows = []
    for no, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < nvar:
            raise error(
                f"{path.name}, line {no}: {len(parts)} values, the definition says NVAR = {nvar}"
            )
        try:
            rows.append([float(v) for v in parts[:nvar]])
        except ValueError:
            raise error(f"{path.name}, line {no}: non-numeric value") from None
    return np.array(rows)


def read_block(path: Path, take, labels, settings: dict[str, float], nvar: int) -> Stage2Spec:
    """Read the stage-2 block with ``take(what) -> (line number, text)`` and
    ``labels(what, count)`` (the label lines' reader of the stage-1 part)."""
    code = int(settings["STAGE2"])
    if code not in STAGE2_FAMILIES:
        raise Stage2FormatError(f"{path.name}: STAGE2 = {code} is not 1, 2, 3 or 4")
    nors = int(settings.get("NORS", 0)) == 1

    def numbers(what: str, count: int | None = None, cast=int) -> tuple:
        no, text = take(what)
        parts = text.split()
        if count is not None and len(parts) < count:
            raise Stage2FormatError(
                f"{path.name}, line {no}: the {what} needs {count} numbers, found {len(parts)}"
            )
        try:
            return tuple(cast(float(p)) for p in parts[: count or len(parts)])
        except ValueError:
            raise Stage2FormatError(
                f"{path.name}, line {no}: the {what} must be numbers: {text.strip()!r}"
            ) from None

    def columns(what: str, count: int, limit: int) -> tuple[int, ...]:
        if count <= 0:
            return ()
        vals = numbers(what, count)
        for v in vals:
            if not 1 <= v <= limit:
                raise Stage2FormatError(
                    f"{path.name}: column {v} in the {what} is outside the data's {limit} columns"
                )
        return vals

    counts = numbers("stage-2 counts (pfixed ptheta [pomega pto])", 2 if nors else 4)
    counts = (*counts, -1, -1) if nors else counts
    family = STAGE2_FAMILIES[code]
    cats = None
    if family in ("ordinal", "nominal"):
        (maxj,) = numbers("number of stage-2 categories", 1)
        cats = numbers("stage-2 category codes", maxj, cast=float)
    sep_file = sep_nvar = sep_id = None
    limit = nvar
    if int(settings["SEPFILE"]) == 1:
        _, name = take("stage-2 data file name")
        sep_file = path.parent / name.strip()
        sep_nvar, sep_id = numbers("stage-2 file's NVAR and id column", 2)
        limit = sep_nvar
    (y_col,) = columns("stage-2 outcome column", 1, limit)
    cols = tuple(
        columns(f"stage-2 {what} columns", n, limit)
        for what, n in zip(("fixed", "location", "scale", "location x scale"), counts, strict=True)
    )
    y_label = labels("stage-2 outcome label", 1)[0]
    labs = tuple(
        labels(f"stage-2 {what} labels", n)
        for what, n in zip(("fixed", "location", "scale", "location x scale"), counts, strict=True)
    )
    return Stage2Spec(
        family=family,
        multilevel=int(settings["MULTI2ND"]) == 1,
        n_draws=int(settings["NREPS"]),
        seed=int(settings["MYSEED"]),
        counts=counts,
        categories=cats,
        sep_file=sep_file,
        sep_nvar=sep_nvar,
        sep_id_col=sep_id,
        y_col=y_col,
        cols=cols,
        y_label=y_label,
        labels=labs,
    )


def block_lines(spec: Stage2Spec, nors: bool) -> list[str]:
    """The stage-2 block's lines, as :func:`read_block` reads them."""
    counts = spec.counts[:2] if nors else spec.counts
    lines = [" ".join(str(c) for c in counts)]
    if spec.categories is not None:
        lines += [str(len(spec.categories)), " ".join(f"{c:g}" for c in spec.categories)]
    if spec.sep_file is not None:
        lines += [spec.sep_file.name, f"{spec.sep_nvar} {spec.sep_id_col}"]
    lines.append(str(spec.y_col))
    lines += [" ".join(str(c) for c in cs) for cs in spec.cols if cs]
    lines.append(spec.y_label)
    lines += [" ".join(labs) for labs in spec.labels if labs]
    return lines
