"""School profiles (HTML, checked in headless Chromium) and the Excel workbook."""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser

import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg")

from melsml import MELS, MELSInputError, simulate_london  # noqa: E402
from melsml.rankings import rank_intervals, variance_flags  # noqa: E402
from melsml.valueadded import compare_schools, mixedlm_va  # noqa: E402
from melsml.valueadded.profiles import report_workbook, school_profiles  # noqa: E402


@pytest.fixture(scope="module")
def report():
    data = simulate_london(3, seed=5, n_schools=30, n_students=3000)
    res = MELS.from_formula("y ~ prior", data, "school", ws_formula="~ prior").fit()
    rep = compare_schools(
        mels=res.school_effects(), mixedlm=mixedlm_va("y ~ prior", data, "school")
    )
    return rep, rank_intervals(res, 200, seed=1), variance_flags(res)


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.circles, self.open = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "circle":
            self.circles.append(dict(attrs))


def test_a_page_per_school_with_its_numbers_and_its_point_marked(report, tmp_path):
    rep, ranks, flags = report
    paths = school_profiles(rep, tmp_path, ranks=ranks, flags=flags)
    assert paths[0].name == "index.html" and len(paths) == 31
    table = rep.table
    lowest = table["mels_mean"].idxmin()
    highest = table["mels_mean"].idxmax()
    xs = {}
    for school in (lowest, highest):
        text = (tmp_path / f"school_{school}.html").read_text()
        parser = _Collect()
        parser.feed(text)
        assert parser.tags.count("img") == 2 and "table" in parser.tags
        assert f"{table.loc[school, 'mels_mean']:.4g}" in text
        lo, hi = ranks.loc[school, "mean_rank_lower"], ranks.loc[school, "mean_rank_upper"]
        assert f"{lo} to {hi}" in text
        xs[school] = float(parser.circles[0]["cx"])  # the means' caterpillar comes first
    # the lowest school mean sits at the left end of the caterpillar, the highest at the right
    assert xs[lowest] < xs[highest]
    index = (tmp_path / "index.html").read_text()
    assert index.count('href="school_') == 30


def test_profiles_render_in_headless_chromium(report, tmp_path):
    """A real browser draws the page: the embedded plots and the red marker."""
    browser = shutil.which("chromium")
    if browser is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    rep, ranks, flags = report
    page = school_profiles(rep, tmp_path, schools=[rep.table.index[0]], ranks=ranks)[1]
    shot = tmp_path / "shot.png"
    subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1000,900",
         f"--screenshot={shot}", page.as_uri()],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    img = matplotlib.image.imread(shot)[..., :3]
    red = (img[..., 0] > 0.8) & (img[..., 1] < 0.25) & (img[..., 2] < 0.25)
    dark = img.sum(axis=-1) < 0.5
    assert red.sum() > 20  # the marker circles
    assert dark.sum() > 2000  # text, axes and points drawn


def test_profile_errors_and_the_workbook(report, tmp_path):
    rep, _, _ = report
    with pytest.raises(MELSInputError, match="no school 'nope'"):
        school_profiles(rep, tmp_path, schools=["nope"])
    path = report_workbook({"schools": rep.table, "separation": rep.separation},
                           tmp_path / "r.xlsx")  # fmt: skip
    sheets = pd.read_excel(path, sheet_name=None, index_col=0)
    assert set(sheets) == {"schools", "separation"}
    np.testing.assert_allclose(sheets["schools"]["mels_mean"], rep.table["mels_mean"])
