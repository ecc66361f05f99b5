"""MixWILD's stage-2 block: read, fitted from the definition alone, compared,
written; and NCENT (standardised covariates)."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import DATA

from melsml import MELS, MELSInputError, MissingDataWarning, mixwild
from melsml.cli import main
from melsml.mixwild_stage2 import counts_from_formula

#: 4 Monte Carlo SDs of a 500-draw result (tests/data/mixwild/PROVENANCE.md)
MC_TOL = {
    "normal": [0.0015, 0.004, 0.006, 0.007, 0.0013],
    "ordinal": [0.02, 0.026, 0.033, 0.01, 0.009],
}


def fit_def(case: str):
    with pytest.warns(MissingDataWarning, match="dropped 62 of 2111"):
        model = MELS.from_mixwild(DATA / f"sbm_stage2_{case}" / "model.def")
    return model, model.fit()


@pytest.mark.parametrize("case", ["normal", "ordinal"])
def test_stage2_definition_fitted_and_compared(case):
    """From the .def alone: stage 1 is sbm_mels, stage 2 (MixWILD's draws and
    combination) agrees with MixWILD's report within 4 Monte Carlo SDs, SEs
    within 5%, the mean log-likelihood within 0.3."""
    model, res = fit_def(case)
    s2spec = model.mixwild_spec.stage2
    assert s2spec.formula().endswith("~ 1 + theta1 + theta2 + theta1:theta2")
    assert s2spec.family == ("gaussian" if case == "normal" else "ordinal")
    assert (s2spec.n_draws, s2spec.seed) == (500, 12345)
    assert len(model.stage2_data) == 72
    assert res.llf == pytest.approx(-2739.266, abs=1e-3)
    s2 = mixwild.stage2(res)
    assert (s2.n_draws, s2.draws, s2.combine) == (500, "mixwild", "mixwild")
    table = mixwild.compare_stage2(s2, DATA / f"sbm_stage2_{case}" / "stage2.out")
    diffs = table["difference"].to_numpy()
    np.testing.assert_array_less(np.abs(diffs[:-1]), MC_TOL[case])
    assert np.all(np.abs(table["se_ratio"].dropna() - 1) < 0.05)
    assert abs(diffs[-1]) < 0.3


def test_cli_runs_both_stages_and_compares_both_reports(tmp_path, capsys):
    for f in ("model.def", "sbm.dat", "stage1.out", "stage2.out"):
        shutil.copy(DATA / "sbm_stage2_normal" / f, tmp_path / f)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingDataWarning)
        code = main(["mixwild", str(tmp_path / "model.def"), "--compare",
                     str(tmp_path / "stage1.out"), str(tmp_path / "stage2.out")])  # fmt: skip
    assert code == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "Stage 2: outcome on the groups' random effects" in out
    assert "stage2.out)" in out and "stage1.out)" in out
    assert "residual variance" in out
    assert "stage 2 [" in captured.err and "500/500" in captured.err


def test_stage2_written_and_read_back(tmp_path):
    """A stage-2 fit written as a definition (block + separate data file) reads
    back to the same stage-2 model: the same fit with the same draws."""
    model, res = fit_def("normal")
    persons = model.stage2_data.assign(
        female=lambda f: (f["id"] % 2).astype(float), age=lambda f: f["id"] % 7 - 3.0
    )
    formula = "HSG ~ 1 + female + theta1 + theta1:age + theta2 + theta1:theta2"
    s2 = res.stage2(formula, persons, n_draws=20, seed=4, draws="normal")
    def_path, _ = mixwild.write(model, folder=tmp_path, stage2=s2)
    spec = mixwild.read_def(def_path)
    assert spec.stage2.counts == (1, 1, 0, 0)
    assert spec.stage2.sep_file.name == "melsml_stage2.dat"
    back = MELS.from_mixwild(def_path)
    assert back.mixwild_spec.stage2.formula() == (
        "HSG ~ 1 + female + theta1 + theta1:age + theta2 + theta1:theta2"
    )
    again = mixwild.stage2(back.fit(), draws="normal")
    assert again.n_draws == 20
    np.testing.assert_allclose(again.params.to_numpy(), s2.params.to_numpy(), rtol=1e-6)
    # an ordinal stage 2 keeps its categories
    ords = res.stage2("HSG_Ord ~ theta1", persons.assign(
        HSG_Ord=np.select([persons.HSG <= 4.4, persons.HSG <= 4.8], [1, 2], 3)
    ), family="ordinal", n_draws=5, seed=1)  # fmt: skip
    def_path, _ = mixwild.write(model, folder=tmp_path / "ord", stage2=ords)
    spec = mixwild.read_def(def_path)
    assert spec.stage2.family == "ordinal" and spec.stage2.categories == (1.0, 2.0, 3.0)


def test_formulas_mixwild_cannot_express_are_named():
    assert counts_from_formula("y ~ theta1") == ((0, 0, -1, -1), ((), (), (), ()), "y")
    with pytest.raises(MELSInputError, match="cannot express the term"):
        counts_from_formula("y ~ theta1 + u")
    with pytest.raises(MELSInputError, match="always has an intercept"):
        counts_from_formula("y ~ 0 + theta1")
    with pytest.raises(MELSInputError, match="only with theta2 itself"):
        counts_from_formula("y ~ theta1 + theta2:x")


def test_ncent_standardises_the_covariates_as_mixwild(tmp_path):
    """NCENT = 1: the covariates standardised over the records (SD divisor
    n - 1): the same maximum, the slope per SD of x, and the summary says so."""
    for f in (DATA / "small").iterdir():
        shutil.copy(f, tmp_path / f.name)
    d = tmp_path / "model.def"
    lines = d.read_text().splitlines()
    lines[4] = "5 1 0 1 0 0 0 0 0 0 0.00001 11 1 200 0 1 1 0.1 0 0 0 500 0 0 12345 0 0 0"
    d.write_text("\n".join(lines) + "\n")
    plain = MELS.from_mixwild(DATA / "small" / "model.def").fit()
    model = MELS.from_mixwild(d)
    res = model.fit()
    x = pd.read_csv(DATA / "small" / "small.csv")["x"]
    assert res.llf == pytest.approx(plain.llf, abs=1e-6)
    assert res.params[("beta", "x")] == pytest.approx(
        plain.params[("beta", "x")] * x.std(ddof=1), rel=1e-5
    )
    assert res.params[("tau", "x")] == pytest.approx(
        plain.params[("tau", "x")] * x.std(ddof=1), rel=1e-5
    )
    assert "NCENT = 1" in str(res.summary())
    assert model.design.x_mean[:, 1].std(ddof=1) == pytest.approx(1.0)
