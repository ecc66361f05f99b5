"""Reading every supported file format, and the command line around it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from melsml import MELSInputError, simulate_london
from melsml.cli import main
from melsml.io import file_sha256, read_table


@pytest.fixture(scope="module")
def data():
    d = simulate_london(3, seed=6, n_schools=20, n_students=1500)
    return d[["school", "prior", "y"]].reset_index(drop=True)


WRITERS = {
    ".csv": lambda d, p: d.to_csv(p, index=False),
    ".tsv": lambda d, p: d.to_csv(p, index=False, sep="\t"),
    ".txt": lambda d, p: d.to_csv(p, index=False, sep=";"),
    ".dta": lambda d, p: d.to_stata(p, write_index=False),
    ".parquet": lambda d, p: d.to_parquet(p, index=False),
    ".xlsx": lambda d, p: d.to_excel(p, index=False),
    ".sav": lambda d, p: __import__("pyreadstat").write_sav(d, str(p)),
}


@pytest.mark.parametrize("suffix", list(WRITERS))
def test_every_format_reads_back(data, tmp_path, suffix):
    path = tmp_path / f"students{suffix}"
    WRITERS[suffix](data, path)
    back = read_table(path)
    assert list(back.columns) == ["school", "prior", "y"]
    np.testing.assert_allclose(back["y"].to_numpy(dtype=float), data["y"], rtol=1e-9)


@pytest.mark.parametrize("suffix", list(WRITERS))
def test_only_the_columns_asked_for_are_kept(data, tmp_path, suffix):
    path = tmp_path / f"students{suffix}"
    WRITERS[suffix](data.assign(extra=1.5), path)
    back = read_table(path, columns={"y", "school", "not_there"})
    assert list(back.columns) == ["school", "y"]


def test_the_command_line_reads_only_the_columns_it_uses(data, tmp_path, capsys, monkeypatch):
    import melsml.cli as cli

    path = tmp_path / "wide.csv"
    data.assign(note="free text, with commas", other=2.0).to_csv(path, index=False)
    seen = {}
    real = cli.read_table

    def spy(*args, **kwargs):
        frame = real(*args, **kwargs)
        seen["columns"] = list(frame.columns)
        return frame

    monkeypatch.setattr(cli, "read_table", spy)
    args = ["fit", str(path), "--formula", "y ~ prior", "--groups", "school", "--ws", "~ prior"]
    assert main(args) == 0
    assert sorted(seen["columns"]) == ["prior", "school", "y"]


def test_sep_overrides_and_unknown_suffix_is_named(data, tmp_path):
    path = tmp_path / "students.csv"
    data.to_csv(path, index=False, sep="|")
    assert list(read_table(path, sep="|").columns) == ["school", "prior", "y"]
    with pytest.raises(MELSInputError, match="known suffixes: .csv"):
        read_table(tmp_path / "x.json") if (tmp_path / "x.json").write_text("{}") else None
    with pytest.raises(MELSInputError, match="not found"):
        read_table(tmp_path / "nope.csv")


def test_fit_writes_summary_and_provenance(data, tmp_path, capsys):
    path = tmp_path / "students.tsv"
    data.to_csv(path, index=False, sep="\t")
    out = tmp_path / "out"
    args = ["fit", str(path), "--formula", "y ~ prior", "--groups", "school", "--out", str(out)]
    assert main(args) == 0
    summary = (out / "summary.txt").read_text()
    assert "MELS: mixed-effects location scale model" in summary
    record = json.loads((out / "fit.json").read_text())
    assert record["data_sha256"] == file_sha256(path)
    assert record["rows_used"] == len(data) and record["rows_dropped"] == 0
    assert record["dependencies"]["numpy"] and record["python"] and record["timestamp"]
    assert "command_line" in record


def test_a_missing_column_lists_the_columns_found(data, tmp_path, capsys):
    path = tmp_path / "students.csv"
    data.to_csv(path, index=False)
    assert main(["fit", str(path), "--formula", "y ~ nosuch", "--groups", "school"]) == 1
    err = capsys.readouterr().err
    assert "nosuch" in err and "the data have: school, prior, y" in err


def test_every_option_has_help():
    from melsml.cli import build_parser

    parser = build_parser()
    stack = [parser]
    while stack:
        p = stack.pop()
        for action in p._actions:
            if action.choices and isinstance(action.choices, dict):
                stack.extend(action.choices.values())
            elif action.dest not in ("help", "version", "command", "method"):
                assert action.help, (p.prog, action.dest)


def test_piping_into_a_closed_reader_ends_quietly(data, tmp_path):
    """Like `melsml fit ... | head -n 1`: the reader closes the pipe before melsml
    has written; melsml ends without a traceback or a 'Broken pipe' error."""
    import subprocess
    import sys

    path = tmp_path / "students.csv"
    data.to_csv(path, index=False)
    cmd = [sys.executable, "-m", "melsml.cli", "fit", str(path), "--formula", "y ~ prior",
           "--groups", "school"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader goes away at once
    _, err = proc.communicate(timeout=120)
    err = err.decode()
    assert "Broken pipe" not in err and "BrokenPipeError" not in err and "Traceback" not in err
