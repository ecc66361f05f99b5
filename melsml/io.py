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


def read_table(path, *, sep: str | None = None) -> pd.DataFrame:
    """Read a data file into a DataFrame, choosing the reader by its suffix.

    Parameters
    ----------
    path : str or Path
    sep : str, optional
        Column separator of a text file (default: by suffix, sniffed for
        ``.txt``/``.dat``).

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
    try:
        if suffix in (".csv", ".tsv", ".txt", ".dat"):
            if sep is None and suffix in (".txt", ".dat"):
                return pd.read_csv(path, sep=None, engine="python")
            default = {".csv": ",", ".tsv": "\t"}.get(suffix, ",")
            return pd.read_csv(path, sep=sep or default)
        if suffix == ".dta":
            return pd.read_stata(path)
        if suffix == ".parquet":
            return pd.read_parquet(path)
        if suffix in (".xlsx", ".xls"):
            return pd.read_excel(path)
        return pd.read_spss(path)
    except Exception as exc:  # each reader raises its own classes
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MELSInputError(f"could not read {str(path)!r} as {what}: {msg}") from None


def file_sha256(path) -> str:
    """SHA-256 of a file's bytes (for the provenance record of a fit)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
