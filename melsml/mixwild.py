"""Interchange with MixWILD (stage 1: continuous outcomes, MIXREGLS / MIXREGMLS; ordinal
outcomes, its ordinal engine MIXORS).

* :func:`read_def` parses a stage-1 definition file into a :class:`MixWILDSpec`;
* :func:`read_data` reads its whitespace-delimited data file (missing-value
  code, MixWILD's grouping of consecutive rows);
* :meth:`melsml.MELS.from_mixwild` fits it (this module does not import the model);
* :func:`write` writes a data and definition file that MixWILD runs for a
  melsml model;
* :func:`read_output` / :func:`read_est` read MixWILD's report and estimates,
  and :func:`compare` sets them beside a melsml fit.

The definition file (as MixWILD's ``readdef_both`` reads it): two title
lines, the data file, the output prefix, 28 settings (NVAR P R S PNINT RNINT
SNINT PV RV SV CONV NQ AQUAD MAXIT YMISS NCENT NCOV RIDGEIN DISCARD0 MLS CHOL
NREPS CUTOFF NORS MYSEED STAGE2 MULTI2ND SEPFILE), the id and outcome
columns, the column lists of the mean (P), BS (R) and WS (S) functions, the
lists of variables split into group means and deviations (PV, RV, SV), then
the labels in the same order.  With MLS = 1 the R columns are random location
effects (random slopes) instead of BS variance covariates.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from .exceptions import MELSInputError, MELSWarning, MissingDataWarning
from .mixwild_ordinal import compare_ordinal, compare_row, is_ordinal_report
from .mixwild_stage2 import (
    STAGE2_FAMILIES,
    Stage2Spec,
    block_lines,
    counts_from_formula,
    read_block,
    read_numbers,
)

SETTING_NAMES = (
    "NVAR",
    "P",
    "R",
    "S",
    "PNINT",
    "RNINT",
    "SNINT",
    "PV",
    "RV",
    "SV",
    "CONV",
    "NQ",
    "AQUAD",
    "MAXIT",
    "YMISS",
    "NCENT",
    "NCOV",
    "RIDGEIN",
    "DISCARD0",
    "MLS",
    "CHOL",
    "NREPS",
    "CUTOFF",
    "NORS",
    "MYSEED",
    "STAGE2",
    "MULTI2ND",
    "SEPFILE",
)
#: settings melsml accepts but does not use (its own optimiser and adaptive quadrature)
_NOTED = {
    "CONV": "convergence criterion (melsml converges on the Newton decrement)",
    "AQUAD": "adaptive quadrature switch (melsml always adapts)",
    "MAXIT": "iteration limit",
    "RIDGEIN": "initial ridge (melsml's optimiser needs none)",
    "CHOL": "Cholesky reporting of the random effects",
    "CUTOFF": "stage-2 cutoff",
}
ID_COLUMN = "id"
#: what a fit of a definition file with NCENT = 1 says in its summary
NCENT_NOTE = (
    "NCENT = 1: covariates standardised over the records (mean 0, SD 1), as MixWILD "
    "does; estimates are per SD of each covariate"
)


class MixWILDWarning(MELSWarning):
    """Something in a MixWILD file that melsml reads but treats differently."""


class MixWILDFormatError(MELSInputError):
    """A malformed MixWILD file (names the line)."""


@dataclass(frozen=True)
class MixWILDSpec:
    """A parsed definition file and the melsml model it describes."""

    path: Path
    title: tuple[str, str]
    data_file: Path
    prefix: str
    settings: dict[str, float]
    id_col: int
    y_col: int
    mean_cols: tuple[int, ...]
    bs_cols: tuple[int, ...]
    ws_cols: tuple[int, ...]
    split_cols: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]
    y_label: str
    mean_labels: tuple[str, ...]
    bs_labels: tuple[str, ...]
    ws_labels: tuple[str, ...]
    split_labels: tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]
    notes: tuple[str, ...] = field(default_factory=tuple)
    #: the ordinal engine (MIXORS): the categories and the link, else None
    categories: tuple[float, ...] | None = None
    link: str | None = None
    #: the stage-2 model (STAGE2 != 0), else None
    stage2: Stage2Spec | None = None

    def _setting(self, name: str) -> int:
        return int(self.settings[name])

    @property
    def multiple_location(self) -> bool:
        return self._setting("MLS") == 1

    def _terms(self, labels, split, which: str, no_intercept: bool) -> str:
        terms = ["0"] if no_intercept else ["1"]
        terms += [_q(lab) for lab in labels]
        for lab in split:
            terms += [_q(f"{lab}_WS")] if which == "mls" else [_q(f"{lab}_BS"), _q(f"{lab}_WS")]
        return " + ".join(terms)

    @property
    def covariate_labels(self) -> list[str]:
        """The data frame's columns the mean, BS/location and WS functions use
        (split variables as their ``_BS`` and ``_WS`` parts), each once."""
        labels = [*self.mean_labels, *self.bs_labels, *self.ws_labels]
        for labs in self.split_labels:
            for lab in labs:
                labels += [f"{lab}_BS", f"{lab}_WS"]
        return list(dict.fromkeys(labels))

    def standardise(self, frame: pd.DataFrame) -> pd.DataFrame:
        """NCENT = 1: every covariate column standardised over the records, as
        MixWILD does (mean 0, SD 1 with divisor n - 1; a constant column is
        left as it is).  A copy; the frame itself without NCENT."""
        if self._setting("NCENT") != 1:
            return frame
        out = frame.copy()
        for lab in self.covariate_labels:
            x = out[lab].to_numpy(dtype=float)
            sd = x.std(ddof=1) if x.size > 1 else 0.0
            if sd > 0:
                out[lab] = (x - x.mean()) / sd
        return out

    def model_kwargs(self) -> dict:
        """Arguments of :meth:`melsml.MELS.from_formula` for this model."""
        pv, rv, sv = self.split_labels
        formula = f"{_q(self.y_label)} ~ " + self._terms(
            self.mean_labels, pv, "x", self._setting("PNINT") == 1
        )
        ws = "~ " + self._terms(self.ws_labels, sv, "w", self._setting("SNINT") == 1)
        kw = dict(
            formula=formula,
            groups=ID_COLUMN,
            ws_formula=ws,
            n_points=self._setting("NQ"),
            random_scale=self._setting("NORS") != 1,
        )
        if self.categories is not None:
            kw.update(family="ordinal", link=self.link)
        u_terms = "~ " + self._terms(
            self.bs_labels,
            rv,
            "mls" if self.multiple_location else "u",
            self._setting("RNINT") == 1,
        )
        if self.multiple_location:
            kw["re_formula"] = u_terms
            kw["association"] = "linear"
        else:
            kw["bs_formula"] = u_terms
            kw["association"] = {0: "none", 1: "linear", 2: "quadratic"}[
                min(max(self._setting("NCOV"), 0), 2)
            ]
        return kw


def _q(label: str) -> str:
    """A label as a formula term (backticks unless a plain identifier)."""
    return label if label.isidentifier() else f"`{label}`"


def _lines(path: Path) -> list[tuple[int, str]]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise MELSInputError(f"cannot read definition file {str(path)!r}: {exc}") from None
    return [(i + 1, ln) for i, ln in enumerate(text.splitlines())]


def read_def(path) -> MixWILDSpec:
    """Parse a MixWILD stage-1 definition file for a continuous outcome.

    Raises
    ------
    MixWILDFormatError
        With the line number: too few numbers, a column index beyond the data
        (NVAR), a label count that does not match, or settings melsml cannot
        honour (a stage-2 block, a separate stage-2 file, standardisation).
    """
    path = Path(path)
    lines = _lines(path)
    pos = 0

    def take(what: str) -> tuple[int, str]:
        nonlocal pos
        while pos < len(lines) and lines[pos][1].strip() == "":
            pos += 1
        if pos >= len(lines):
            raise MixWILDFormatError(f"{path.name}: ends before the {what}")
        item = lines[pos]
        pos += 1
        return item

    def ints(what: str, count: int) -> tuple[int, ...]:
        if count <= 0:
            return ()
        no, text = take(what)
        parts = text.split()
        if len(parts) < count:
            raise MixWILDFormatError(
                f"{path.name}, line {no}: the {what} needs {count} numbers, found {len(parts)}"
            )
        try:
            vals = tuple(int(float(p)) for p in parts[:count])
        except ValueError:
            raise MixWILDFormatError(
                f"{path.name}, line {no}: the {what} must be column numbers: {text.strip()!r}"
            ) from None
        for v in vals:
            if not 1 <= v <= nvar:
                raise MixWILDFormatError(
                    f"{path.name}, line {no}: column {v} in the {what} is outside the data's "
                    f"{nvar} columns (NVAR)"
                )
        return vals

    def labels(what: str, count: int) -> tuple[str, ...]:
        if count <= 0:
            return ()
        no, text = take(what)
        parts = text.split()
        if len(parts) != count:
            raise MixWILDFormatError(
                f"{path.name}, line {no}: {count} label(s) expected for the {what}, found "
                f"{len(parts)}: {text.strip()!r}"
            )
        return tuple(parts)

    title = (lines[0][1].strip() if lines else "", lines[1][1].strip() if len(lines) > 1 else "")
    pos = 2
    _, data_name = take("data file name")
    _, prefix = take("output prefix")
    no, text = take("settings line")
    parts = text.split()
    if len(parts) == len(ORDINAL_SETTING_NAMES):
        # the ordinal engine's layout: 24 settings, then CHOL and IADD
        try:
            nvar = int(float(parts[0]))
        except ValueError:
            raise MixWILDFormatError(f"{path.name}, line {no}: NVAR must be a number") from None
        return _read_ordinal_def(path, title, data_name, prefix, no, parts, take, ints, labels)
    if len(parts) < len(SETTING_NAMES):
        raise MixWILDFormatError(
            f"{path.name}, line {no}: the settings line needs {len(SETTING_NAMES)} numbers "
            f"({' '.join(SETTING_NAMES)}), found {len(parts)}"
        )
    try:
        settings = {k: float(v) for k, v in zip(SETTING_NAMES, parts, strict=False)}
    except ValueError:
        raise MixWILDFormatError(f"{path.name}, line {no}: the settings must be numbers") from None
    nvar = int(settings["NVAR"])
    notes = _check_settings(path, no, settings)
    spec = _read_model_lines(
        path, title, data_name, prefix, settings, notes, take, ints, labels, ordinal=False
    )
    spec = _with_stage2(spec, take, labels, nvar)
    if int(settings["R"]) == 0 and int(settings["RNINT"]) == 1:
        raise MixWILDFormatError(
            f"{path.name}: R = 0 with RNINT = 1 leaves no random location "
            "effect, which melsml does not fit"
        )
    return spec


#: the ordinal engine's (MIXORS) settings line
ORDINAL_SETTING_NAMES = (
    "NVAR", "MAXJ", "P", "R", "S", "PV", "RV", "SV", "RNINT", "CONV", "NQ", "AQUAD",
    "MAXIT", "YMISS", "RIDGEIN", "NFN", "NORS", "MYSEED", "STAGE2", "MULTI2ND", "NREPS",
    "SEPFILE", "MLS", "NCOV",
)  # fmt: skip
_ORDINAL_LINKS = {0: "probit", 1: "logit"}


def _read_ordinal_def(path, title, data_name, prefix, no, parts, take, ints, labels):
    """The ordinal engine's definition: 24 settings, CHOL IADD, the columns, the
    category codes and the labels.  Its model has no mean or WS intercept (the
    thresholds and the latent scale's unit take their places)."""
    try:
        st = {k: float(v) for k, v in zip(ORDINAL_SETTING_NAMES, parts, strict=True)}
    except ValueError:
        raise MixWILDFormatError(f"{path.name}, line {no}: the settings must be numbers") from None
    bad = []
    if int(st["NFN"]) not in _ORDINAL_LINKS:
        bad.append(f"NFN = {int(st['NFN'])} (melsml has the probit (0) and logit (1) links)")
    if int(st["MLS"]) == 1:
        bad.append("MLS = 1 (several random location effects) with an ordinal outcome")
    if bad:
        raise MixWILDFormatError(f"{path.name}, line {no}: melsml cannot honour " + "; ".join(bad))
    take("CHOL and IADD line")
    # the continuous engine's names, for the rest of this module
    st.update(PNINT=1, SNINT=1, DISCARD0=0, NCENT=0)
    notes = [f"{k} = {st[k]:g}: {why}; not used" for k, why in _NOTED.items() if k in st]
    notes.append(
        "the ordinal engine's WS function and random scale are on the log-SD scale; "
        "melsml's tau, tau_l and sigma_omega (log-variance scale) are twice MixWILD's"
    )
    spec = _read_model_lines(
        path, title, data_name, prefix, st, notes, take, ints, labels, ordinal=True
    )
    return _with_stage2(spec, take, labels, int(st["NVAR"]))


def _with_stage2(spec: MixWILDSpec, take, labels, nvar: int) -> MixWILDSpec:
    """The spec with its stage-2 block, when STAGE2 is not 0."""
    st = spec.settings
    if int(st["STAGE2"]) == 0:
        return spec
    block = read_block(spec.path, take, labels, st, nvar)
    note = (
        f"stage 2 ({block.family}{', multilevel' if block.multilevel else ''}): "
        f"{block.formula()}; {block.n_draws} draws (MixWILD's seed {block.seed} "
        "drives its own generator: melsml's draws differ)"
    )
    return replace(spec, stage2=block, notes=(*spec.notes, note))


def _read_model_lines(
    path, title, data_name, prefix, settings, notes, take, ints, labels, *, ordinal: bool
) -> MixWILDSpec:
    """The lines after the settings, as both engines write them: the id and outcome
    columns, the P, R, S and PV/RV/SV column lists, (ordinal engine: the MAXJ
    category codes), then the labels in the same order."""
    p, r, s = (int(settings[k]) for k in ("P", "R", "S"))
    pv, rv, sv = (int(settings[k]) for k in ("PV", "RV", "SV"))
    id_col, y_col = ints("id and outcome columns", 2)
    mean_cols = ints("mean function columns (P)", p)
    bs_cols = ints("BS/location columns (R)", r)
    ws_cols = ints("WS function columns (S)", s)
    split_cols = (
        ints("split mean columns (PV)", pv),
        ints("split BS columns (RV)", rv),
        ints("split WS columns (SV)", sv),
    )
    cats = link = None
    if ordinal:
        maxj = int(settings["MAXJ"])
        cno, ctext = take("category codes")
        try:
            cats = tuple(float(v) for v in ctext.split())
        except ValueError:
            raise MixWILDFormatError(
                f"{path.name}, line {cno}: category codes must be numbers"
            ) from None
        if len(cats) != maxj:
            raise MixWILDFormatError(
                f"{path.name}, line {cno}: MAXJ = {maxj} category codes expected, found {len(cats)}"
            )
        link = _ORDINAL_LINKS[int(settings["NFN"])]
    return MixWILDSpec(
        path=path,
        title=title,
        data_file=(path.parent / data_name.strip()),
        prefix=prefix.strip(),
        settings=settings,
        id_col=id_col,
        y_col=y_col,
        mean_cols=mean_cols,
        bs_cols=bs_cols,
        ws_cols=ws_cols,
        split_cols=split_cols,
        y_label=labels("outcome label", 1)[0],
        mean_labels=labels("mean function labels", p),
        bs_labels=labels("BS/location labels", r),
        ws_labels=labels("WS function labels", s),
        split_labels=(
            labels("split mean labels", pv),
            labels("split BS labels", rv),
            labels("split WS labels", sv),
        ),
        notes=tuple(notes),
        categories=cats,
        link=link,
    )


def _check_settings(path: Path, line: int, st: dict[str, float]) -> list[str]:
    bad = []
    if int(st["MLS"]) == 1 and int(st["RV"]) > 0:
        bad.append("RV with MLS = 1")
    if bad:
        raise MixWILDFormatError(
            f"{path.name}, line {line}: melsml cannot honour " + "; ".join(bad)
        )
    notes = [f"{k} = {st[k]:g}: {why}; not used" for k, why in _NOTED.items()]
    if int(st["NCENT"]) == 1:
        notes.append(NCENT_NOTE)
    if int(st["MLS"]) == 1 and int(st["NCOV"]) != 1:
        notes.append("MLS = 1: MixWILD always frees the location-scale association; so does melsml")
    return notes


def read_data(spec: MixWILDSpec) -> pd.DataFrame:
    """Read the definition's data file into a data frame with labelled columns.

    Rows with the missing-value code (YMISS, when not 0) in a used column are
    dropped with a :class:`~melsml.exceptions.MissingDataWarning`.  Groups
    are runs of consecutive rows with the same id, as MixWILD reads them; the
    ``id`` column holds the id (or, when an id recurs in separate runs, a run
    number, with a warning).  Split variables (PV, RV, SV) become
    ``<label>_BS`` (group mean) and ``<label>_WS`` (deviation) columns.
    """
    path = spec.data_file
    nvar = int(spec.settings["NVAR"])
    raw = read_numbers(path, nvar, "data file", MixWILDFormatError)
    used = [
        spec.id_col,
        spec.y_col,
        *spec.mean_cols,
        *spec.bs_cols,
        *spec.ws_cols,
        *[c for grp in spec.split_cols for c in grp],
    ]
    s2 = spec.stage2
    if s2 is not None and s2.sep_file is None:
        # MixWILD drops a record whose stage-2 variable is missing in stage 1 too
        used += list(s2.columns.values())
    ymiss = spec.settings["YMISS"]
    if ymiss != 0:
        keep = ~np.isclose(raw[:, [c - 1 for c in used]], ymiss, rtol=0, atol=1e-12).any(axis=1)
        dropped = int((~keep).sum())
        if dropped:
            warnings.warn(
                f"dropped {dropped} of {len(raw)} rows with the missing-value code {ymiss:g}",
                MissingDataWarning,
                stacklevel=2,
            )
        raw = raw[keep]
    ids = raw[:, spec.id_col - 1].astype(np.int64)
    run = np.concatenate([[0], np.cumsum(ids[1:] != ids[:-1])])
    if run[-1] + 1 != len(np.unique(ids)):
        warnings.warn(
            "an id recurs in separate runs of rows; like MixWILD, melsml treats each "
            "run as its own group (the id column holds run numbers)",
            MixWILDWarning,
            stacklevel=2,
        )
        group = run + 1
    else:
        group = ids
    frame = pd.DataFrame({ID_COLUMN: group})
    cols: dict[str, int] = {spec.y_label: spec.y_col}
    for labs, cs in (
        (spec.mean_labels, spec.mean_cols),
        (spec.bs_labels, spec.bs_cols),
        (spec.ws_labels, spec.ws_cols),
    ):
        for lab, c in zip(labs, cs, strict=True):
            if cols.get(lab, c) != c:
                raise MixWILDFormatError(
                    f"{spec.path.name}: label {lab!r} names columns {cols[lab]} and {c}"
                )
            cols[lab] = c
    if s2 is not None and s2.sep_file is None:
        for lab, c in s2.columns.items():
            if cols.get(lab, c) != c:
                raise MixWILDFormatError(
                    f"{spec.path.name}: stage-2 label {lab!r} names columns {cols[lab]} and {c}"
                )
            cols[lab] = c
    for lab, c in cols.items():
        frame[lab] = raw[:, c - 1]
    for labs, cs in zip(spec.split_labels, spec.split_cols, strict=True):
        for lab, c in zip(labs, cs, strict=True):
            v = pd.Series(raw[:, c - 1])
            mean = v.groupby(run).transform("mean").to_numpy()
            frame[f"{lab}_BS"] = mean
            frame[f"{lab}_WS"] = v.to_numpy() - mean
    if int(spec.settings["DISCARD0"]) == 1:
        y = frame[spec.y_label]
        constant = y.groupby(run).transform(lambda s: s.nunique() == 1).to_numpy(bool)
        if constant.any():
            warnings.warn(
                f"DISCARD0: removed {len(np.unique(run[constant]))} group(s) whose "
                "responses do not vary",
                MixWILDWarning,
                stacklevel=2,
            )
            frame = frame.loc[~constant].reset_index(drop=True)
    return frame


# ------------------------------------------------------------------ writing
def _label(name: str) -> str:
    lab = re.sub(r"[^A-Za-z0-9_]", "_", name).strip("_") or "v"
    return lab[:16]


def write(
    model,
    data: pd.DataFrame | None = None,
    folder=".",
    *,
    prefix: str = "melsml",
    title: str = "written by melsml",
    stage2=None,
) -> tuple[Path, Path]:
    """Write a MixWILD data file (sorted by group) and a definition file for ``model``.

    The data file holds the model's design columns (so categorical terms and
    transformations are already expanded), without intercepts.  Group ids
    that are not integers are written as 1..J, with the mapping in
    ``<prefix>_groups.csv``.

    Parameters
    ----------
    model : MELS
    data : DataFrame, optional
        Unused (the model holds its design); accepted for symmetry with
        :func:`read_data`.
    folder : path
    prefix : str
        File names ``<prefix>.dat``, ``<prefix>.def``; MixWILD's output prefix.
    stage2 : Stage2Results, optional
        A stage-2 fit of this model (:meth:`melsml.MELSResults.stage2`) whose
        formula MixWILD can express: written as the stage-2 block, with its
        data in ``<prefix>_stage2.dat`` (SEPFILE = 1), its draws as NREPS and
        its seed as MYSEED.

    Returns
    -------
    (def_path, dat_path)
    """
    d, opt = getattr(model, "design", None), getattr(model, "options", None)
    if opt is None:
        raise MELSInputError(
            "MixWILD's stage 1 has two levels: a three-level model cannot be written"
        )
    if d.censored:
        raise MELSInputError(
            "MixWILD has no censored (Tobit) outcome: a model with censoring cannot be "
            "written as a MixWILD definition file"
        )
    if opt.random_scale and d.scale_names != ("Intercept",):
        raise MELSInputError(
            f"ws_re_formula={d.formulas.get('ws_re_formula')!r}: MixWILD's stage 1 has one "
            "random scale effect and no random scale slopes, so this model cannot be "
            "written as a MixWILD definition file"
        )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    labels_ = d.group_labels
    try:
        gid = np.asarray(labels_, dtype=np.int64)
        if not np.array_equal(gid, np.asarray(labels_, dtype=float)):
            raise ValueError
    except (ValueError, TypeError):
        gid = np.arange(1, d.n_groups + 1)
        pd.DataFrame({"id": gid, d.groups: labels_}).to_csv(
            folder / f"{prefix}_groups.csv", index=False
        )
    slopes = not d.random_intercept_only
    ordinal = d.categories is not None
    if ordinal and slopes:
        raise MELSInputError(
            "MixWILD's ordinal engine has no random location slopes: this model cannot be "
            "written as a MixWILD definition file"
        )
    loc_names, loc_x = (d.re_names, d.x_re) if slopes else (d.bs_names, d.x_bs)
    blocks = [(d.mean_names, d.x_mean), (loc_names, loc_x), (d.ws_names, d.x_ws)]
    y = d.categories[d.y.astype(int)] if ordinal else d.y
    cols = [np.repeat(gid, d.group_sizes).astype(float), y]
    col_idx, labs, nint = [], [], []
    where: dict[str, int] = {}  # a term used by several functions is written once
    given: dict[str, str] = {}

    def label_of(name: str) -> str:
        if name not in given:
            lab, k = _label(name), 1
            while lab in given.values():
                k += 1
                lab = _label(name)[: 16 - len(str(k))] + str(k)
            given[name] = lab
        return given[name]

    for names, x in blocks:
        keep = [k for k, n in enumerate(names) if n != "Intercept"]
        nint.append(0 if "Intercept" in names else 1)
        idx = []
        for k in keep:
            if names[k] not in where:
                cols.append(x[:, k])
                where[names[k]] = len(cols)
            idx.append(where[names[k]])
        col_idx.append(idx)
        labs.append([label_of(names[k]) for k in keep])
    arr = np.column_stack(cols)
    dat = folder / f"{prefix}.dat"
    np.savetxt(dat, arr, fmt="%.10g")
    ncov = {"none": 0, "linear": 1, "quadratic": 2}[opt.association]
    nvar = arr.shape[1]
    settings = [
        nvar,
        len(col_idx[0]),
        len(col_idx[1]),
        len(col_idx[2]),
        nint[0],
        nint[1],
        nint[2],
        0,
        0,
        0,
        "0.00001",
        model.plan.n_points,
        1,
        200,
        0,
        0,
        ncov,
        "0.1",
        0,
        1 if slopes else 0,
        0,
        500,
        0,
        0 if opt.random_scale else 1,
        12345,
        0,
        0,
        0,
    ]
    s2_code, s2_lines = 0, []
    if stage2 is not None:
        s2_code, s2_lines = _stage2_block(stage2, d, gid, folder, prefix, opt.random_scale)
        s2_multi = int(bool(stage2.multilevel))
        s2_seed = int(stage2.seed) if stage2.seed is not None else 12345
        settings[21] = stage2.n_draws
        settings[24:28] = [s2_seed, s2_code, s2_multi, 1]
    cats_line = []
    if ordinal:
        # the ordinal engine's settings (see ORDINAL_SETTING_NAMES); its mean and WS
        # functions have no intercept, and the WS function is on the log-SD scale
        settings = [
            nvar, d.categories.size, len(col_idx[0]), len(col_idx[1]), len(col_idx[2]),
            0, 0, 0, nint[1], "0.00001", model.plan.n_points, 1, 200, 0, "0.1",
            {"probit": 0, "logit": 1}[opt.link], 0 if opt.random_scale else 1, 12345,
            0, 0, 500, 0, 0, ncov,
        ]  # fmt: skip
        if stage2 is not None:
            settings[17:22] = [s2_seed, s2_code, s2_multi, stage2.n_draws, 1]
        cats_line = [" ".join(f"{c:g}" for c in d.categories)]
    lines = [
        title[:72],
        f"{d.groups}: {d.formulas['formula']}"[:72],
        dat.name,
        prefix,
        " ".join(str(v) for v in settings),
        *(["0 -1"] if ordinal else []),
        "1 2",
    ]
    lines += [" ".join(map(str, c)) for c in col_idx if c]
    lines += cats_line
    lines.append(_label(d.outcome))
    lines += [" ".join(lab) for lab in labs if lab]
    lines += s2_lines
    def_path = folder / f"{prefix}.def"
    def_path.write_text("\n".join(lines) + "\n")
    return def_path, dat


def _stage2_block(s2, d, gid, folder: Path, prefix: str, random_scale: bool):
    """STAGE2's code and the block's lines for a stage-2 fit; writes its data."""
    codes = {v: k for k, v in STAGE2_FAMILIES.items()}
    if not isinstance(s2.draws, str) or s2.data is None:
        raise MELSInputError("stage2 must be a stage-2 fit (MELSResults.stage2) of this model")
    counts, covs, outcome = counts_from_formula(s2.formula)
    if not random_scale and (counts[2] >= 0 or counts[3] >= 0):
        raise MELSInputError("without a random scale MixWILD's stage 2 has no theta2 terms")
    frame = s2.data
    to_gid = dict(zip(d.group_labels.tolist(), gid.tolist(), strict=True))
    labels = list(dict.fromkeys(c for cs in covs for c in cs))
    cols = [frame[d.groups].map(to_gid).to_numpy(float), frame[outcome].to_numpy(float)]
    cols += [frame[c].to_numpy(float) for c in labels]
    dat = folder / f"{prefix}_stage2.dat"
    np.savetxt(dat, np.column_stack(cols), fmt="%.10g")
    where = {c: k + 3 for k, c in enumerate(labels)}
    cats = None
    if s2.family in ("ordinal", "nominal"):
        cats = tuple(float(v) for v in np.unique(frame[outcome].to_numpy(float)))
    spec = Stage2Spec(
        family=s2.family,
        multilevel=bool(s2.multilevel),
        n_draws=s2.n_draws,
        seed=int(s2.seed) if s2.seed is not None else 12345,
        counts=counts,
        categories=cats,
        sep_file=dat,
        sep_nvar=len(cols),
        sep_id_col=1,
        y_col=2,
        cols=tuple(tuple(where[c] for c in cs) for cs in covs),
        y_label=_label(outcome),
        labels=tuple(tuple(_label(c) for c in cs) for cs in covs),
    )
    return codes[s2.family], block_lines(spec, not random_scale)


# ------------------------------------------------------------------ reading output
_BLOCKS = {
    "Model without Scale Parameters": "no scale",
    "Model WITH Scale Parameters": "scale",
    "Model WITH RANDOM Scale": "random scale",
}
_SECTIONS = (
    ("BETA", "beta"),
    ("ALPHA", "alpha"),
    ("TAU", "tau"),
    ("Random scale standard deviation", "random"),
    ("Random location (mean) effect", "random"),
    # multiple-location mode (MLS = 1): the covariance of (u, omega) itself
    ("Random (location) Effect Variances and Covariances", "location_cov"),
    ("Random Scale Variance and Covariance", "scale_cov"),
)
_RANDOM_NAMES = {"Std Dev": "sigma_omega", "Loc Eff": "tau_l", "Loc  Eff": "tau_l"}
_ROW = re.compile(
    r"^(\S.*?)\s+(-?\d[\d.]*(?:[eEdD][+-]?\d+)?)\s+(-?\d[\d.]*(?:[eEdD][+-]?\d+)?)"
    r"\s+(-?\d[\d.]*(?:[eEdD][+-]?\d+)?)\s+(-?\d[\d.]*(?:[eEdD][+-]?\d+)?)\s*$"
)


def read_output(path) -> pd.DataFrame:
    """Read MixWILD's stage-1 report (``*_stage1.out``) into a table.

    Returns
    -------
    DataFrame with columns ``model`` ("no scale", "scale", "random scale"),
    ``block``, ``term`` (MixWILD's label), ``estimate``, ``std_error``,
    ``z``, ``p_value``; ``attrs["llf"]`` maps each model to its
    log-likelihood and ``attrs["style"]`` says which report it is:
    ``"MIXREGLS"`` (blocks beta, alpha, tau, random with ``tau_l`` and
    ``sigma_omega``) or ``"MLS"``, MixWILD's multiple-location mode (blocks
    beta, tau, ``location_cov``: the packed lower triangle of cov(u), and
    ``scale_cov``: cov(omega, u_k) then var(omega)).
    """
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise MELSInputError(f"cannot read {str(path)!r}: {exc}") from None
    rows, llf = [], {}
    model = block = None
    for line in lines:
        s = line.strip()
        if s in _BLOCKS:
            model, block = _BLOCKS[s], None
            continue
        if model is None:
            continue
        if s.startswith("Log Likelihood") and model not in llf:
            llf[model] = float(s.split("=")[1])
            continue
        if s.startswith(("BS variance ratios", "WS variance ratios")):
            model = None
            continue
        for head, name in _SECTIONS:
            if s.startswith(head):
                block = name
                break
        else:
            m = _ROW.match(s)
            if m and block is not None:
                term = m.group(1).strip()
                if block == "random":
                    term = _RANDOM_NAMES.get(term, term)
                est, se, z, p = (float(m.group(k).replace("D", "E")) for k in range(2, 6))
                rows.append(
                    dict(
                        model=model,
                        block=block,
                        term=term,
                        estimate=est,
                        std_error=se,
                        z=z,
                        p_value=p,
                    )
                )
    if not rows:
        raise MixWILDFormatError(f"{path.name}: no MixWILD estimates found")
    out = pd.DataFrame(rows)
    out.attrs["llf"] = llf
    out.attrs["style"] = "MLS" if (out["block"] == "location_cov").any() else "MIXREGLS"
    return out


#: MixWILD's stage-2 labels (cut at 16 characters) -> melsml's stage-2 names
_STAGE2_NAMES = {
    "Locat_1": "theta1",
    "Scale_1": "theta2",
    "Locat_1*Scale": "theta1:theta2",
    "Residual.Varianc": "residual variance",
}


def is_stage2_report(path) -> bool:
    """Whether ``path`` is a MixWILD stage-2 report (it has "Final Results")."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as exc:
        raise MELSInputError(f"cannot read {str(path)!r}: {exc}") from None
    return any(ln.strip() == "Final Results" for ln in text.splitlines())


def read_stage2_output(path) -> pd.DataFrame:
    """Read the "Final Results" of MixWILD's stage-2 report (``*_stage2.out``).

    Returns
    -------
    DataFrame indexed by ``term`` (MixWILD's label; ``name``: melsml's stage-2
    name where there is one, with thresholds ``threshold k`` by their upper
    category) with ``estimate``, ``std_error``, ``z``, ``p_value``;
    ``attrs["llf"]`` is the average log-likelihood and ``attrs["llf_sd"]``
    its SD over the replications.
    """
    path = Path(path)
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        raise MELSInputError(f"cannot read {str(path)!r}: {exc}") from None
    start = next((i for i, ln in enumerate(lines) if ln.strip() == "Final Results"), None)
    if start is None:
        raise MixWILDFormatError(f"{path.name}: no 'Final Results' section (a stage-2 report?)")
    llf = llf_sd = np.nan
    rows = []
    for line in lines[start:]:
        s = line.strip()
        if s.startswith("Average Log Likelihood"):
            m = re.search(r"=\s*(\S+)\s*\(sd=\s*([^)]+)\)", s)
            if m:
                llf, llf_sd = float(m.group(1)), float(m.group(2))
            continue
        # the label is a 16-character field (a stray control byte may follow it)
        label = "".join(ch for ch in line[:16] if ch.isprintable()).strip()
        numbers = line[16:].split()
        if not label or len(numbers) != 4 or label.startswith("-"):
            continue
        try:
            est, se, z, p = (float(v) for v in numbers)
        except ValueError:
            continue
        name = _STAGE2_NAMES.get(label)
        if name is None and label.startswith("Threshold"):
            name = "threshold " + label.split()[-1]
        rows.append(
            dict(term=label, name=name or label, estimate=est, std_error=se, z=z, p_value=p)
        )
    if not rows:
        raise MixWILDFormatError(f"{path.name}: no stage-2 estimates after 'Final Results'")
    out = pd.DataFrame(rows).set_index("term")
    out.attrs["llf"], out.attrs["llf_sd"] = llf, llf_sd
    return out


def stage2(res, *, draws: str = "mixwild", n_draws: int | None = None, seed=None, progress=None):
    """Fit the stage-2 model of the definition file ``res`` was fitted from.

    Parameters
    ----------
    res : the fit of a model made by :meth:`melsml.MELS.from_mixwild` from a
        definition file with a stage-2 block
    draws : as :meth:`melsml.MELSResults.stage2`; the default, ``"mixwild"``,
        draws and combines as MixWILD does, so that its report compares like
        with like
    n_draws, seed : default NREPS and MYSEED (MixWILD's generator differs from
        numpy's: the draws are not MixWILD's)
    progress : called as ``progress(done, total)`` after each replication

    Returns
    -------
    :class:`melsml.stage2.Stage2Results`
    """
    spec = getattr(res.model, "mixwild_spec", None)
    if spec is None or spec.stage2 is None:
        raise MELSInputError(
            "this model was not read from a MixWILD definition file with a stage-2 block"
        )
    s2 = spec.stage2
    return res.stage2(
        s2.formula(),
        res.model.stage2_data,
        family=s2.family,
        n_draws=n_draws or max(s2.n_draws, 1),
        seed=s2.seed if seed is None else seed,
        draws=draws,
        multilevel=s2.multilevel and len(res.model.stage2_data) > res.model.design.n_groups,
        progress=progress,
    )


def compare_stage2(s2, output) -> pd.DataFrame:
    """A stage-2 fit's estimates and SEs beside MixWILD's stage-2 report.

    Rows follow MixWILD's report (its thresholds, labelled by their upper
    category, matched to melsml's in order); columns ``melsml``,
    ``mixwild``, ``difference``, ``melsml_se``, ``mixwild_se``, ``se_ratio``,
    with a last row for the mean log-likelihood (and its SD over the
    replications in the SE columns).
    """
    mw = read_stage2_output(output)
    ours = s2.params.copy()
    ours_se = s2.bse.copy()
    thr_ours = [n for n in ours.index if n.startswith("threshold ")]
    thr_mw = [n for n in mw["name"] if n.startswith("threshold ")]
    rename = dict(zip(thr_ours, thr_mw, strict=False))
    ours, ours_se = ours.rename(index=rename), ours_se.rename(index=rename)
    rows = [
        compare_row(
            "stage2",
            row["name"],
            float(ours.get(row["name"], np.nan)),
            float(ours_se.get(row["name"], np.nan)),
            row["estimate"],
            row["std_error"],
        )
        for _, row in mw.iterrows()
    ]
    # the mean log-likelihood, with its SD over the replications as the "SE"
    last = compare_row("stage2", "mean llf", s2.llf, s2.llf_sd, mw.attrs["llf"], np.nan)
    rows.append({**last, "mixwild_se": mw.attrs["llf_sd"], "se_ratio": np.nan})
    return pd.DataFrame(rows).drop(columns="block").set_index("term")


def read_est(path) -> list[dict]:
    """Read MixWILD's ``.EST`` file: per model ``llf``, ``iterations``, ``estimates``, ``se``."""
    path = Path(path)
    blocks: list[dict] = []
    for no, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) == 3 and "." in parts[0] and "." not in parts[1] + parts[2]:
            blocks.append({"llf": -0.5 * float(parts[0]), "iterations": int(parts[1]), "rows": []})
        elif blocks:
            blocks[-1]["rows"].append([float(p) for p in parts])
        else:
            raise MixWILDFormatError(f"{path.name}, line {no}: no block header before it")
    return [
        {
            "llf": b["llf"],
            "iterations": b["iterations"],
            "estimates": np.concatenate(b["rows"][:-1]),
            "se": np.array(b["rows"][-1]),
        }
        for b in blocks
    ]


def compare(res, output) -> pd.DataFrame:
    """melsml's and MixWILD's estimates, SEs and log-likelihood side by side.

    Parameters
    ----------
    res : MELSResults
        A fit of the same model: a random-intercept model (MixWILD's MIXREGLS
        parametrisation), or for a report of the multiple-location mode
        (MLS = 1) a model with random location effects and a random scale.
    output : path or DataFrame
        MixWILD's stage-1 report (or :func:`read_output` of it); a report of
        its ordinal engine (MIXORS) is compared by
        :func:`melsml.mixwild_ordinal.compare_ordinal`.

    Returns
    -------
    DataFrame indexed by (block, term) with ``melsml``, ``mixwild``,
    ``difference``, ``melsml_se``, ``mixwild_se``, ``se_ratio``; the last row
    is the log-likelihood.  For an MLS = 1 report the covariance rows
    (``location_cov``, ``scale_cov``) are melsml's covariance of (u, omega)
    with delta-method SEs, in MixWILD's order.  Differences are reported,
    not judged: on small groups MixWILD's 11-point quadrature can be off (see
    the validation page).
    """
    if not isinstance(output, pd.DataFrame) and is_ordinal_report(output):
        return compare_ordinal(res, output)
    out = read_output(output) if not isinstance(output, pd.DataFrame) else output
    opt, d = res.model.options, res.model.design
    mls = out.attrs.get("style") == "MLS"
    if not mls and not res.model.layout.mixwild_view:
        raise MELSInputError(
            "this MixWILD report is of a random-intercept (MIXREGLS) model, the melsml fit "
            "has several random location or scale effects"
        )
    which = (
        "random scale"
        if opt.random_scale
        else ("no scale" if d.ws_names == ("Intercept",) else "scale")
    )
    mw = out[out["model"] == which]
    if mw.empty:
        raise MELSInputError(f"the MixWILD report has no {which!r} model")
    rows = []
    for block in ("beta", "tau") if mls else ("beta", "alpha", "tau", "random"):
        ours = res.params[block] if block in res.params.index.get_level_values(0) else None
        theirs = mw[mw["block"] == block]
        if ours is None:
            continue
        if block == "random":
            theirs = theirs.set_index("term").reindex(list(ours.index))
        if len(theirs) != len(ours):
            raise MELSInputError(
                f"{block}: melsml has {len(ours)} parameters, MixWILD "
                f"{len(theirs)}; are these the same model?"
            )
        for (term, val), (_, row) in zip(ours.items(), theirs.iterrows(), strict=True):
            se = res.bse[(block, term)]
            rows.append(compare_row(block, term, val, se, row["estimate"], row["std_error"]))
    if mls:
        rows += _compare_mls(res, mw)
    llf_mw = out.attrs.get("llf", {}).get(which, np.nan)
    rows.append(
        dict(
            block="fit",
            term="log-likelihood",
            melsml=res.llf,
            mixwild=llf_mw,
            difference=res.llf - llf_mw,
        )
    )
    return pd.DataFrame(rows).set_index(["block", "term"])


def _compare_mls(res, mw: pd.DataFrame) -> list[dict]:
    """Rows for the covariance blocks of a multiple-location (MLS = 1) report:
    melsml's covariance of (u, omega) with delta-method SEs beside MixWILD's."""
    from .inference import delta_method

    st = res.model.structure
    if res.model.options.random_scale and st.scale != ("Intercept",):
        raise MELSInputError("MixWILD's multiple-location mode has one random scale effect")
    if res.model.design.bs_names != ("Intercept",):
        raise MELSInputError(
            "MixWILD's multiple-location mode has no BS variance covariates; the melsml "
            f"fit has bs_formula={res.model.design.formulas.get('bs_formula')!r}"
        )
    q = st.q
    lower = [(i, j) for i in range(q) for j in range(i + 1)]
    scale = [(q, j) for j in range(q)] + [(q, q)] if st.s else []
    sbar = res.reference_values("bs")

    def natural(theta):
        sigma = res._natural_cov(theta, sbar)
        return np.array([sigma[i, j] for i, j in lower + scale])

    val, cov = delta_method(natural, np.asarray(res.fit_state.theta), res.cov_params().to_numpy())
    se = np.sqrt(np.clip(np.diag(cov), 0, None))
    rows = []
    k = 0
    for block, entries in (("location_cov", lower), ("scale_cov", scale)):
        theirs = mw[mw["block"] == block]
        if len(theirs) != len(entries):
            raise MELSInputError(
                f"{block}: melsml has {len(entries)} (co)variances, MixWILD {len(theirs)}; "
                "are these the same model?"
            )
        for _, row in theirs.iterrows():
            rows.append(
                dict(
                    block=block,
                    term=row["term"],
                    melsml=val[k],
                    mixwild=row["estimate"],
                    difference=val[k] - row["estimate"],
                    melsml_se=se[k],
                    mixwild_se=row["std_error"],
                    se_ratio=se[k] / row["std_error"],
                )
            )
            k += 1
    return rows
