"""Plots: they draw the right things and save to PNG and PDF."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from melsml import MELS, MELSInputError, plots, simulate_london  # noqa: E402


@pytest.fixture(scope="module")
def effects():
    data = simulate_london(3, seed=3, n_schools=40, n_students=3000)
    res = MELS.from_formula("y ~ prior", data, "school", ws_formula="~ prior").fit()
    return res.school_effects()


def test_caterpillar_is_ranked_with_intervals_and_average(effects, tmp_path):
    fig = plots.caterpillar(effects, "variance")
    ax = fig.axes[0]
    points = ax.lines[0].get_ydata()
    assert np.all(np.diff(points) >= 0) and len(points) == 40
    assert any(line.get_linestyle() == "--" for line in ax.lines)
    n_sep = int(effects["variance_separated"].sum())
    assert f"{n_sep} of 40" in ax.get_title()
    fig.savefig(tmp_path / "c.png")
    fig.savefig(tmp_path / "c.pdf")
    assert (tmp_path / "c.png").stat().st_size > 1000 and (tmp_path / "c.pdf").exists()


def test_pair_scatter_and_ranks(effects, tmp_path):
    assert len(plots.caterpillar_pair(effects).axes) == 2
    sc = plots.mean_variance_scatter(effects)
    assert "r = " in sc.axes[0].get_title()
    rk = plots.rank_scatter(effects, effects, labels=("a", "b"))
    assert "Spearman 1.000" in rk.axes[0].get_title()
    rk.savefig(tmp_path / "r.png")


def test_plot_input_errors(effects):
    with pytest.raises(MELSInputError, match="lacks column"):
        plots.caterpillar(effects[["mean"]], "mean")
    with pytest.raises(MELSInputError, match="no school in common"):
        plots.rank_scatter(effects.iloc[:5], effects.iloc[5:10])


def test_rank_intervals_plot_and_the_boundary_title(effects, tmp_path):
    from melsml.rankings import rank_intervals

    data = simulate_london(3, seed=3, n_schools=40, n_students=3000)
    res = MELS.from_formula("y ~ prior", data, "school", ws_formula="~ prior").fit()
    ranks = rank_intervals(res, n_draws=200, seed=1)
    fig = plots.rank_intervals(ranks, "variance")
    ax = fig.axes[0]
    assert np.all(np.diff(ax.lines[0].get_ydata()) >= 0)  # in rank order
    assert "95% intervals" in ax.get_title() and "not separate" not in ax.get_title()
    fig.savefig(tmp_path / "ri.png")
    flat = effects.copy()
    flat.attrs["variance_note"] = "sigma_omega is at its boundary 0"
    assert "not separate findings" in plots.caterpillar(flat, "variance").axes[0].get_title()


def test_power_curve(tmp_path):
    import pandas as pd

    result = pd.DataFrame({"n_schools": [50, 100, 50, 100], "n_students": [30, 30, 150, 150],
                           "power": [0.2, 0.4, 0.5, 0.9], "power_se": [0.04] * 4})  # fmt: skip
    result.attrs.update(test="random_scale", alpha=0.05)
    fig = plots.power_curve(result)
    ax = fig.axes[0]
    assert "random_scale" in ax.get_title()
    assert len(ax.get_legend().get_texts()) == 2
    fig.savefig(tmp_path / "p.png")
