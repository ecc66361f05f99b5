"""The command line: fit, demo, and one-line errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
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


def test_fit_with_a_random_scale_slope(small_csv, capsys):
    args = ["fit", str(small_csv), "--formula", "y ~ x", "--groups", "group", "--ws", "~ x"]
    assert main([*args, "--ws-re", "~ 1 + x"]) == 0
    out = capsys.readouterr().out
    assert "L(omega:x,omega:x)" in out and "var(omega:x)" in out and "2-D" in out


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
    for name in ("model3_caterpillar.png", "model3_mean_vs_variance.png", "model3_summary.txt"):
        assert (out / name).stat().st_size > 0, name
    assert "<1e-16" in text  # tiny p-values, fixed decimals
    assert "Ranks: 1 = highest school mean" in text


def test_comparison_formatting():
    from melsml.cli import format_comparison

    table = pd.DataFrame(
        {"k": [4, 6], "llf": [-1234.5678, -1200.1], "aic": [1.0, 2.0], "bic": [3.0, 4.0],
         "lr_stat": [float("nan"), 68.9], "df": [float("nan"), 2.0],
         "p_value": [float("nan"), 1e-20], "test": ["", "vs a"]},
        index=["a", "b"],
    )  # fmt: skip
    out = format_comparison(table)
    assert out.loc["a", "llf"] == "-1234.57" and out.loc["b", "p_value"] == "<1e-16"
    assert out.loc["a", "lr_stat"] == "" and out.loc["b", "df"] == "2"


def test_va_dfe_on_the_example_file(tmp_path, capsys):
    from melsml.valueadded import example_pupils_path

    out = tmp_path / "dfe"
    assert main(["va", "dfe", str(example_pupils_path()), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "DfE 2003" in text and "S030" in text and "included: disapplied, input 0" in text
    schools = pd.read_csv(out / "dfe_schools.csv", index_col=0)
    assert schools.loc["S001", "suppressed"] and np.isnan(schools.loc["S001", "va_published"])


def test_va_dfe_bad_code_is_one_line(tmp_path, capsys):
    path = tmp_path / "p.csv"
    pd.DataFrame(
        {
            "pupil": [9],
            "school": ["S"],
            "ks3_english": ["5"],
            "ks3_maths": ["5"],
            "ks3_science": ["5"],
            "qualification": ["gcse"],
            "grade": ["Z"],
        }
    ).to_csv(path, index=False)
    assert main(["va", "dfe", str(path)]) == 1
    err = capsys.readouterr().err
    assert "pupil 9: unknown gcse grade 'Z'" in err and len(err.strip().splitlines()) == 1


def test_report_end_to_end_on_demo_data_and_pupil_records(tmp_path, capsys):
    import matplotlib

    matplotlib.use("Agg")
    from melsml import simulate_london
    from melsml.valueadded import example_pupils_path

    data_path = tmp_path / "london.csv"
    simulate_london(3, seed=5, n_schools=60, n_students=6000).to_csv(data_path, index=False)
    out = tmp_path / "rep"
    assert (
        main(
            [
                "report",
                str(data_path),
                "--formula",
                "y ~ prior",
                "--groups",
                "school",
                "--ws",
                "~ prior",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    for name in (
        "schools.csv",
        "separation.csv",
        "rank_correlations.csv",
        "caterpillar.png",
        "mean_vs_variance.png",
        "ranks_mixedlm_vs_mels.png",
        "mels_summary.txt",
        "rank_intervals.csv",
        "comparative_intervals.csv",
        "variance_flags.csv",
        "rank_intervals_mean.png",
        "rank_intervals_variance.png",
    ):
        assert (out / name).exists(), name
    table = pd.read_csv(out / "schools.csv")
    assert len(table) == 60 and "mels_variance_separated" in table.columns
    assert "flagged at a false discovery rate of 5%" in capsys.readouterr().out
    out2 = tmp_path / "rep2"
    school = str(pd.read_csv(example_pupils_path())["school"].iloc[0])
    args = ["report", "--pupils", str(example_pupils_path()), "--out", str(out2)]
    assert main([*args, "--school", school, "--excel"]) == 0
    assert sorted(p.name for p in (out2 / "profiles").iterdir()) == [
        "index.html", f"school_{school}.html"
    ]  # fmt: skip
    sheets = pd.read_excel(out2 / "report.xlsx", sheet_name=None)
    assert {"schools", "separation", "rank_intervals", "variance_flags"} <= set(sheets)
    assert (out2 / "ranks_dfe_vs_mels.png").exists()
    # the shipped example's random scale is at its boundary: variances are no findings
    printed = capsys.readouterr().out
    assert "so they are not separate findings" in printed
    separation = pd.read_csv(out2 / "separation.csv", index_col=0)
    assert not separation.loc["mels_variance", "separate_findings"]
    assert separation.loc["mels_mean", "separate_findings"]
    assert pd.read_csv(out2 / "variance_flags.csv")["flag"].isna().all()
    assert "dfe" in pd.read_csv(out2 / "rank_correlations.csv", index_col=0).index
    capsys.readouterr()
    assert main(["report", "--out", str(tmp_path / "x")]) == 1
    assert "give a DATA file" in capsys.readouterr().err


def test_fit_three_levels(tmp_path, capsys):
    from melsml.simulate import simulate_three_level

    data = tmp_path / "students.csv"
    simulate_three_level(12, 5, 20, seed=3).to_csv(data, index=False)
    out = tmp_path / "out"
    args = ["fit", str(data), "--formula", "y ~ prior", "--groups", "district,school",
            "--ws", "~ prior", "--random-scale-at", "school", "--robust",
            "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "Three-level MELS" in text and "district: Cholesky factor" in text
    record = json.loads((out / "fit.json").read_text())
    assert record["groups"] == ["district", "school"]
    assert record["random_scale"] == ["school"]
    est = pd.read_csv(out / "estimates.csv")
    assert ((est["block"] == "district") & (est["term"] == "L(location,location)")).any()
    schools = pd.read_csv(out / "school_effects.csv")
    assert {"district", "school", "mean", "variance"} <= set(schools.columns)


def test_fit_censored(tmp_path, capsys):
    from melsml import simulate_london

    data = simulate_london(3, seed=2, n_schools=40, n_students=3000)
    ceiling = float(data["y"].quantile(0.9))
    path = tmp_path / "students.csv"
    data.to_csv(path, index=False)
    assert main(["fit", str(path), "--formula", "y ~ prior", "--groups", "school",
                 "--ws", "~ prior", "--censor", f",{ceiling}"]) == 0  # fmt: skip
    assert "at or above the upper limit (10.0%)" in capsys.readouterr().out
    assert main(["fit", str(path), "--formula", "y ~ prior", "--groups", "school",
                 "--censor", "1"]) != 0  # fmt: skip
    assert "--censor needs" in capsys.readouterr().err


def test_power_command_writes_its_table_and_curve(tmp_path, capsys):
    import matplotlib

    matplotlib.use("Agg")
    out = tmp_path / "pw"
    args = ["power", "--schools", "15", "30", "--students", "10", "--sims", "2", "--out", str(out)]
    assert main(args) == 0
    table = pd.read_csv(out / "power.csv")
    assert list(table["n_schools"]) == [15, 30] and (table["n_sims"] == 2).all()
    assert (out / "power.png").stat().st_size > 1000
    assert "4/4" in capsys.readouterr().err


def test_va_p8_and_report_with_progress8(tmp_path, capsys):
    import matplotlib

    matplotlib.use("Agg")
    from melsml.valueadded import progress8, synthetic_progress8_pupils

    pupils = synthetic_progress8_pupils(n_schools=20, seed=4)
    path = tmp_path / "p8.csv"
    pupils.to_csv(path, index=False)
    out = tmp_path / "p8"
    assert main(["va", "p8", str(path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Progress 8 (estimated Attainment 8: national means from the data)" in printed
    assert "extremely negative scores limited:" in printed
    schools = pd.read_csv(out / "p8_schools.csv", index_col="school")
    elements = {e: f"a8_{e}" for e in ("english", "maths", "ebacc", "open")}
    direct = progress8(pupils, pupil="pupil", elements=elements)
    np.testing.assert_allclose(schools["p8"], direct["p8"].loc[schools.index])
    assert {"p8_english", "p8_open_upper"} <= set(schools.columns)
    assert main(["va", "p8", str(path), "--no-limit", "--out", str(out)]) == 0
    assert "p8_limited" not in pd.read_csv(out / "p8_pupils.csv").columns
    # Progress 8 beside MixedLM and MELS (of Attainment 8 by prior group)
    rep = tmp_path / "rep"
    school = str(pupils["school"].iloc[0])
    assert main(["report", "--p8", str(path), "--out", str(rep), "--school", school]) == 0
    table = pd.read_csv(rep / "schools.csv", index_col="school")
    assert {"p8", "p8_lower", "p8_rank", "mixedlm_mean", "mels_variance"} <= set(table.columns)
    corr = pd.read_csv(rep / "rank_correlations.csv", index_col=0)
    assert corr.loc["p8", "mels_mean"] > 0.9
    assert (rep / "ranks_p8_vs_mels.png").exists()
    page = (rep / "profiles" / f"school_{school}.html").read_text()
    assert "Progress 8" in page
    # a malformed record is named
    bad = pupils.assign(a8=pupils["a8"].astype(object))
    bad.loc[3, "a8"] = "absent"
    bad.to_csv(path, index=False)
    capsys.readouterr()
    assert main(["va", "p8", str(path)]) == 1
    err = capsys.readouterr().err
    assert "pupil 4: Attainment 8 'absent'" in err and len(err.strip().splitlines()) == 1
