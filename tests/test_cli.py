"""The command line: fit, demo, and one-line errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pandas as pd
import pytest
from conftest import DATA

from melsml.cli import main


@pytest.fixture()
def small_csv(tmp_path):
    path = tmp_path / "small.csv"
    shutil.copy(DATA / "small" / "small.csv", path)
    return path


def test_fit_prints_summary_and_writes_outputs(small_csv, tmp_path, capsys):
    out = tmp_path / "out"
    status = main(
        [
            "fit",
            str(small_csv),
            "--formula",
            "y ~ x",
            "--groups",
            "group",
            "--ws",
            "~ x",
            "--out",
            str(out),
        ]
    )
    assert status == 0
    text = capsys.readouterr().out
    assert "-2979.90" in text and "sigma_omega" in text
    est = pd.read_csv(out / "estimates.csv")
    assert len(est) == 7
    schools = pd.read_csv(out / "school_effects.csv")
    assert len(schools) == 60 and "variance_upper" in schools.columns
    record = json.loads((out / "fit.json").read_text())
    assert record["converged"] and record["nobs"] == 2400
    assert record["llf"] == pytest.approx(-2979.9025, abs=1e-3)


def test_fit_with_a_random_slope(small_csv, capsys):
    assert (
        main(
            [
                "fit",
                str(small_csv),
                "--formula",
                "y ~ x",
                "--groups",
                "group",
                "--re",
                "~ 1 + x",
                "--ws",
                "~ x",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "L(x,Intercept)" in out and "corr(Intercept,x)" in out


def test_fit_options(small_csv, capsys):
    assert (
        main(
            ["fit", str(small_csv), "--formula", "y ~ x", "--groups", "group", "--no-random-scale"]
        )
        == 0
    )
    assert "Random scale:            no" in capsys.readouterr().out
    assert (
        main(
            [
                "fit",
                str(small_csv),
                "--formula",
                "y ~ x",
                "--groups",
                "group",
                "--association",
                "none",
                "--robust",
            ]
        )
        == 0
    )
    assert "robust (sandwich)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args,message",
    [
        (["--formula", "y ~ nope", "--groups", "group"], "not in the data: nope"),
        (["--formula", "y ~ x", "--groups", "school"], "groups column 'school'"),
        (["--formula", "y ~ x +", "--groups", "group"], "does not parse"),
    ],
)
def test_errors_are_one_line(small_csv, capsys, args, message):
    assert main(["fit", str(small_csv), *args]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("melsml: error:") and message in err
    assert len(err.splitlines()) == 1


def test_missing_file_and_bad_choice(tmp_path, capsys):
    assert main(["fit", str(tmp_path / "nope.csv"), "--formula", "y ~ x", "--groups", "g"]) == 1
    assert "not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["fit", "x.csv", "--formula", "y ~ x", "--groups", "g", "--association", "cubic"])
    assert exc.value.code == 2


def test_console_script_runs_without_traceback(small_csv, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "melsml.cli",
            "fit",
            str(small_csv),
            "--formula",
            "y ~ x",
            "--groups",
            "nowhere",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1


def test_demo_writes_school_predictions(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Model comparison" in text and "model 7" in text and "50:50 chi2 mixture" in text
    schools = pd.read_csv(out / "model3_school_effects.csv")
    assert len(schools) == 465
    assert (out / "model_comparison.csv").exists()
