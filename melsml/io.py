"""Reading data files by their suffix, for the command line and for users.

================  =============================================================
suffix            reader
================  =============================================================
.csv              comma-separated (``sep`` overrides)
.tsv              tab-separated
.txt, .dat        separator sniffed from the file (``sep`` overrides)
.dta              Stata (pandas)
.parquet          Parquet (needs pyarrow)
.xlsx, .xls       Excel, first sheet (needs openpyxl)
.sav              SPSS (needs pyreadstat)
================  =============================================================
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from .exceptions import MELSInputError

#: suffix -> (description, optional package it needs)
FORMATS = {
    ".csv": ("CSV", None),
    ".tsv": ("tab-separated text", None),
    ".txt": ("delimited text", None),
    ".dat": ("delimited text", None),
    ".dta": ("Stata", None),
    ".parquet": ("Parquet", "pyarrow"),
    ".xlsx": ("Excel", "openpyxl"),
    ".xls": ("Excel", "xlrd"),
    ".sav": ("SPSS", "pyreadstat"),
}


def read_table(path, *, sep: str | None = None, columns=None) -> pd.DataFrame:
    """Read a data file into a DataFrame, choosing the reader by its suffix.

    Parameters
    ----------
    path : str or Path
    sep : str, optional
        Column separator of a text file (default: by suffix, sniffed for
        ``.txt``/``.dat``).
    columns : iterable of str, optional
        Keep only these columns (names not in the file are ignored).  Text
        and parquet files then read only them, which saves memory on wide
        national files.

    Raises
    ------
    MELSInputError
        A missing file, an unknown suffix, a missing optional reader package
        (named), or a file the reader cannot parse.
    """
    path = Path(path)
    if not path.is_file():
        raise MELSInputError(f"data file {str(path)!r} not found")
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise MELSInputError(
            f"cannot tell the format of {path.name!r} from its suffix; known suffixes: "
            f"{', '.join(FORMATS)}"
        )
    what, package = FORMATS[suffix]
    if package is not None:
        try:
            __import__(package)
        except ImportError:
            raise MELSInputError(
                f"reading {what} files ({path.name}) needs the package {package!r}: "
                f"pip install {package}"
            ) from None
    keep = None if columns is None else set(map(str, columns))
    try:
        frame = _read(path, suffix, sep, keep)
    except Exception as exc:  # each reader raises its own classes
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MELSInputError(f"could not read {str(path)!r} as {what}: {msg}") from None
    return frame


def _read(path: Path, suffix: str, sep: str | None, keep: set | None) -> pd.DataFrame:
    """The reader for ``suffix``; with ``keep``, only those columns, and the
    file's column names in ``attrs["file_columns"]`` (for error messages)."""
    if suffix in (".csv", ".tsv", ".txt", ".dat"):
        kw = (
            dict(sep=None, engine="python")
            if sep is None and suffix in (".txt", ".dat")
            else dict(sep=sep or {".csv": ",", ".tsv": "\t"}.get(suffix, ","))
        )
        if keep is None:
            return pd.read_csv(path, **kw)
        names = [str(c) for c in pd.read_csv(path, nrows=0, **kw).columns]
        frame = pd.read_csv(path, usecols=lambda c: str(c) in keep, **kw)
    elif suffix == ".parquet":
        if keep is None:
            return pd.read_parquet(path)
        import pyarrow.parquet as pq

        names = list(pq.read_schema(path).names)
        frame = pd.read_parquet(path, columns=[n for n in names if n in keep])
    else:
        if suffix == ".dta":
            frame = pd.read_stata(path)
        elif suffix in (".xlsx", ".xls"):
            frame = pd.read_excel(path)
        else:
            frame = pd.read_spss(path)
        if keep is None:
            return frame
        names = [str(c) for c in frame.columns]
        frame = frame[[c for c in frame.columns if str(c) in keep]]
    frame.attrs["file_columns"] = names
    return frame


def file_sha256(path) -> str:
    """SHA-256 of a file's bytes (for the provenance record of a fit)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
