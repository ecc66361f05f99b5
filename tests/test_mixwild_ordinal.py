"""Reports of MixWILD's ordinal engine (MIXORS) beside melsml's ordinal fit."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
from conftest import DATA

from melsml import MELS, MELSInputError, MissingDataWarning, mixwild
from melsml.cli import main
from melsml.mixwild_ordinal import read_ordinal_output

CASE = DATA / "sbm_ordinal_mixors"


def test_the_final_model_is_read_from_the_report():
    out = read_ordinal_output(CASE / "stage1.out")
    assert out.attrs["llf"] == -3053.501
    rows = out.set_index(["block", "term"])
    assert rows.loc[("random", "sigma_omega"), "estimate"] == 0.39288
    assert rows.loc[("random", "tau_l"), "std_error"] == 0.06216
    assert rows.loc[("thresholds", "6"), "estimate"] == 5.23762
    assert list(out["block"]).count("thresholds") == 6


def test_mixors_definition_fitted_and_compared_from_the_command_line(tmp_path, capsys):
    """The .def alone reaches MixWILD's maximum: estimates (on MixWILD's log-SD
    scale) within 2e-3, SEs within 1%, log-likelihood within 5e-4."""
    with pytest.warns(MissingDataWarning, match="dropped 2 of 2111"):
        res = MELS.from_mixwild(CASE / "model.def").fit()
    table = mixwild.compare(res, CASE / "stage1.out")
    est = table.drop(index="fit", level="block")
    assert np.all(np.abs(est["difference"]) < 2e-3)
    assert np.all(np.abs(est["se_ratio"] - 1) < 0.01)
    assert abs(table.loc[("fit", "log-likelihood"), "difference"]) < 5e-4
    for f in ("model.def", "sbm.dat", "stage1.out"):
        shutil.copy(CASE / f, tmp_path / f)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingDataWarning)
        assert main(["mixwild", str(tmp_path / "model.def"), "--compare",
                     str(tmp_path / "stage1.out")]) == 0  # fmt: skip
    assert "thresholds 1/2" in capsys.readouterr().out


def test_a_mixors_report_needs_an_ordinal_fit(mixwild_cases):
    (data, spec), _ = mixwild_cases["small"]
    res = MELS.from_formula(data=data, **spec).fit()
    with pytest.raises(MELSInputError, match="ordinal fit"):
        mixwild.compare(res, CASE / "stage1.out")
