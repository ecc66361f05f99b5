"""School profiles: a self-contained HTML page per school (and an index), and an
Excel workbook with one sheet per table.

A profile shows the school's mean and variance of adjusted achievement with
their intervals and ranks (with rank intervals when given), its results under
each method of the report (MELS, MixedLM, the DfE median line), its variance
flag, and the caterpillar plots of all schools with this school marked.  The
plots are drawn once; each page embeds them (PNG, base64) with the school's
point marked by an SVG overlay, so a page needs no other file.
"""

from __future__ import annotations

import base64
import html
import io
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..exceptions import MELSInputError
from .report import SchoolReport

_DPI = 80
_STYLE = """
body { font-family: sans-serif; margin: 2em; max-width: 60em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: right; }
th { background: #eee; } td.name { text-align: left; }
.plot { position: relative; display: inline-block; margin-right: 1em; }
.plot svg { position: absolute; left: 0; top: 0; }
.note { color: #844; }
"""


def _slug(label) -> str:
    """A file name for a school label."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", str(label)) or "school"


def _caterpillar(
    table: pd.DataFrame, measure: str, title: str, reference
) -> tuple[str, dict, tuple]:
    """:func:`melsml.plots.caterpillar` of ``measure`` as base64 PNG, each
    school's point in pixels from the top left, and the image size."""
    import matplotlib.pyplot as plt

    from .. import plots

    frame = table[[measure, f"{measure}_lower", f"{measure}_upper"]].dropna()
    fig = plots.caterpillar(frame, measure, reference=reference, title=title)
    fig.set_size_inches(5.5, 3.6)
    fig.set_dpi(_DPI)
    fig.tight_layout()
    fig.canvas.draw()
    width, height = fig.canvas.get_width_height()
    ax = fig.axes[0]
    # the caterpillar's points (its first line), schools in the order it sorts them
    pix = ax.transData.transform(ax.lines[0].get_xydata())
    order = np.argsort(frame[measure].to_numpy(), kind="stable")
    labels = frame.index.to_numpy()[order]
    points = {
        lab: (float(px), float(height - py)) for lab, (px, py) in zip(labels, pix, strict=True)
    }
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii"), points, (width, height)


def _plot_html(image: str, points: dict, size: tuple, school, label: str) -> str:
    width, height = size
    marker = ""
    if school in points:
        px, py = points[school]
        marker = (
            f'<circle cx="{px:.1f}" cy="{py:.1f}" r="6" fill="none" stroke="red" '
            f'stroke-width="2"><title>{html.escape(str(school))}</title></circle>'
        )
    return (
        f'<div class="plot"><img alt="{html.escape(label)}" width="{width}" height="{height}" '
        f'src="data:image/png;base64,{image}"/>'
        f'<svg width="{width}" height="{height}" aria-label="this school">{marker}</svg></div>'
    )


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "&ndash;"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)) or (isinstance(v, float) and float(v).is_integer()
                                            and abs(v) >= 1):  # fmt: skip
        return f"{int(v)}"
    return f"{v:.4g}"


def _measure_rows(row: pd.Series, ranks: pd.Series | None) -> list[list[str]]:
    """[method, measure, estimate, interval, rank, rank interval, separated]."""
    out = []
    for method, prefix, measures in (
        ("MELS", "mels_", ("mean", "variance")),
        ("MixedLM", "mixedlm_", ("mean",)),
        ("Progress 8", "", ("p8",)),
    ):
        for m in measures:
            key = prefix + m
            if key not in row.index or pd.isna(row.get(key)):
                continue
            rank_iv = "&ndash;"
            if ranks is not None and prefix == "mels_" and f"{m}_rank_lower" in ranks.index:
                rank_iv = f"{int(ranks[f'{m}_rank_lower'])} to {int(ranks[f'{m}_rank_upper'])}"
            out.append([
                method, m, _fmt(row[key]),
                f"{_fmt(row[key + '_lower'])} to {_fmt(row[key + '_upper'])}",
                _fmt(row.get(key + "_rank")), rank_iv, _fmt(bool(row.get(key + "_separated"))),
            ])  # fmt: skip
    if "dfe_va" in row.index and not pd.isna(row.get("dfe_va")):
        out.append(["DfE 2003 median line", "value added (100-based)", _fmt(row["dfe_va"]),
                    "&ndash;", _fmt(row.get("dfe_rank")), "&ndash;", "&ndash;"])  # fmt: skip
    return out


def _table_html(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(f"<td{' class=name' if i < 2 else ''}>{c}</td>" for i, c in enumerate(r))
        + "</tr>"  # fmt: skip
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def school_profiles(
    report: SchoolReport,
    folder,
    *,
    schools=None,
    ranks: pd.DataFrame | None = None,
    flags: pd.DataFrame | None = None,
    notes: list[str] | None = None,
    title: str = "School profile",
) -> list[Path]:
    """Write a self-contained HTML profile per school and an index page.

    Parameters
    ----------
    report : SchoolReport
        :func:`melsml.valueadded.compare_schools` (with MELS measures).
    folder : path
        Where the pages go (``index.html``, ``school_<id>.html``).
    schools : list, optional
        The schools to profile (default all).
    ranks : DataFrame, optional
        :func:`melsml.rankings.rank_intervals`: rank intervals on the pages.
    flags : DataFrame, optional
        :func:`melsml.rankings.variance_flags`: each school's variance flag.
    notes : list of str, optional
        Lines every page shows (e.g. that sigma_omega is at its boundary).

    Returns
    -------
    The paths written, the index first.
    """
    table = report.table
    if "mels_mean" not in table.columns:
        raise MELSInputError("school profiles need the MELS measures in the report (mels=...)")
    wanted = list(table.index) if schools is None else list(schools)
    unknown = [s for s in wanted if s not in table.index]
    if unknown:
        raise MELSInputError(f"no school {unknown[0]!r} in the report")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    refs = table.attrs.get("references", {})
    plots = [
        (*_caterpillar(table.rename(columns=lambda c: c.removeprefix("mels_")), m,
                       f"School {m}s (MELS), this school in red", refs.get(f"mels_{m}")), m)
        for m in ("mean", "variance")
        if f"mels_{m}" in table.columns
    ]  # fmt: skip
    note_html = "".join(f'<p class="note">Note: {html.escape(n)}.</p>' for n in notes or [])
    paths = []
    header = ["method", "measure", "estimate", "95% interval", "rank", "rank interval",
              "separated from average"]  # fmt: skip
    for school in wanted:
        row = table.loc[school]
        rk = ranks.loc[school] if ranks is not None and school in ranks.index else None
        flag = ""
        if flags is not None and school in flags.index:
            f = flags.loc[school, "flag"]
            flag = (f"<p>Variance flag (false discovery rate {flags.attrs.get('fdr', 0.05):.0%}): "
                    f"<b>{html.escape(f) if f else 'none'}</b></p>")  # fmt: skip
        n = row.get("mels_n")
        figs = "".join(_plot_html(img, pts, size, school, f"caterpillar of {m}")
                       for img, pts, size, m in plots)  # fmt: skip
        page = (
            f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}: {html.escape(str(school))}</title>"
            f"<style>{_STYLE}</style></head><body>"
            f"<h1>{html.escape(title)}: school {html.escape(str(school))}</h1>"
            f"<p>{_fmt(n)} students. Ranks: 1 = the highest mean (most value added), "
            f"the lowest variance (most consistent progress).</p>"
            f"{_table_html(header, _measure_rows(row, rk))}{flag}{note_html}{figs}"
            f'<p><a href="index.html">All schools</a></p></body></html>'
        )
        path = folder / f"school_{_slug(school)}.html"
        path.write_text(page, encoding="utf-8")
        paths.append(path)
    links = "".join(
        f'<tr><td class=name><a href="school_{_slug(s)}.html">{html.escape(str(s))}</a></td>'
        f"<td>{_fmt(table.loc[s, 'mels_mean'])}</td><td>{_fmt(table.loc[s].get('mels_mean_rank'))}"
        f"</td><td>{_fmt(table.loc[s].get('mels_variance'))}</td>"
        f"<td>{_fmt(table.loc[s].get('mels_variance_rank'))}</td></tr>"
        for s in wanted
    )
    index = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}s</title><style>{_STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}s</h1>{note_html}<table><tr><th>school</th><th>mean</th>"
        f"<th>mean rank</th><th>variance</th><th>variance rank</th></tr>{links}</table>"
        f"</body></html>"
    )
    index_path = folder / "index.html"
    index_path.write_text(index, encoding="utf-8")
    return [index_path, *paths]


def report_workbook(tables: dict[str, pd.DataFrame], path) -> Path:
    """Write ``{sheet name: table}`` to an Excel workbook, one sheet per table
    (needs openpyxl: ``pip install melsml[io]``)."""
    try:
        import openpyxl  # noqa: F401
    except ImportError:  # pragma: no cover - the io extra is installed in the tests
        raise MELSInputError("writing Excel needs openpyxl: pip install 'melsml[io]'") from None
    path = Path(path)
    with pd.ExcelWriter(path, engine="openpyxl") as writer:
        for name, frame in tables.items():
            frame.to_excel(writer, sheet_name=name[:31])
    return path
