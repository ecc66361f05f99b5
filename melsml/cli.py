"""The ``melsml`` command: ``melsml fit`` and ``melsml demo``.

Errors are one line on stderr with a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import warnings
from pathlib import Path

import pandas as pd

from . import __version__
from .exceptions import MELSInputError
from .io import read_table
from .measures import RANK_ORDER
from .model import MELS
from .results import MELSResults
from .summary import compare

DEMO_MODELS = {
    "model 1": dict(formula="y ~ prior", ws_formula="~ 1", random_scale=False),
    "model 2": dict(formula="y ~ prior", ws_formula="~ 1", random_scale=True),
    "model 3": dict(formula="y ~ prior", ws_formula="~ prior", random_scale=True),
    "model 7": dict(
        formula="y ~ prior + female + fsm + eal + sen + age + ethnicity",
        ws_formula="~ prior + female + fsm + eal + sen + age + ethnicity",
        random_scale=True,
    ),
}


class CLIError(Exception):
    """An error to report as one line."""


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _close(fig) -> None:
    """Release a saved figure (pyplot keeps every figure until closed)."""
    import matplotlib.pyplot as plt

    plt.close(fig)


def _progress_bar(what: str):
    """A text progress bar on stderr: returns ``update(done, total)``."""

    def update(done: int, total: int) -> None:
        width = 30
        filled = int(width * done / max(total, 1))
        end = "\n" if done >= total else ""
        print(
            f"\r{what} [{'#' * filled}{' ' * (width - filled)}] {done}/{total}",
            end=end,
            file=sys.stderr,
            flush=True,
        )

    return update


def _provenance(data_file: str | None) -> dict:
    """Versions, platform, time, command line and the data file's hash."""
    import datetime
    import platform
    from importlib import metadata

    versions = {}
    for pkg in ("numpy", "scipy", "pandas", "statsmodels", "formulaic", "matplotlib"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    record = {
        "melsml_version": __version__,
        "dependencies": versions,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command_line": sys.argv,
    }
    if data_file is not None:
        from .io import file_sha256

        record["data_file"] = str(data_file)
        record["data_sha256"] = file_sha256(data_file)
    return record


def write_outputs(
    res: MELSResults, out: Path, stem: str = "", data_file: str | None = None
) -> list[Path]:
    """Write estimates (CSV), natural random parameters (CSV), school effects
    (CSV), the summary (text) and a JSON record of the fit and its provenance
    (melsml's and its dependencies' versions, Python, time, command line, the
    data file's SHA-256, rows used and dropped) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    pre = f"{stem}_" if stem else ""
    paths = [
        out / f"{pre}estimates.csv",
        out / f"{pre}random_params.csv",
        out / f"{pre}school_effects.csv",
        out / f"{pre}fit.json",
        out / f"{pre}summary.txt",
    ]
    res.tidy().to_csv(paths[0])
    res.random_params().to_csv(paths[1])
    res.school_effects().to_csv(paths[2])
    paths[4].write_text(res.summary().as_text() + "\n")
    d = res.model.design
    record = {
        **_provenance(data_file),
        "rows_used": res.nobs,
        "rows_dropped": d.n_dropped,
        "formulas": dict(d.formulas),
        **_model_record(res.model),
        "nobs": res.nobs,
        "n_groups": res.n_groups,
        "n_dropped": d.n_dropped,
        "llf": res.llf,
        "aic": res.aic,
        "bic": res.bic,
        "converged": res.converged,
        "n_iter": res.fit_info.n_iter,
        "n_evals": res.fit_info.n_evals,
        "params": [
            {"block": b, "term": t, "estimate": float(v), "std_error": float(s)}
            for (b, t), v, s in zip(res.params.index, res.params, res.bse, strict=True)
        ],
    }
    paths[3].write_text(json.dumps(record, indent=2))
    return paths


def _model_record(model) -> dict:
    """The model's grouping, random scale and integration, for fit.json."""
    levels = getattr(model, "levels", None)
    if levels is not None:
        return {
            "groups": list(levels),
            "random_scale": list(model.random_scale),
            "association": model.association,
            "integration": model.describe_integration(),
        }
    return {
        "groups": model.design.groups,
        "random_scale": model.options.random_scale,
        "association": model.options.association,
        "integration": model.plan.describe(),
    }


def format_comparison(table: pd.DataFrame) -> pd.DataFrame:
    """A model comparison for printing: log-likelihoods and information criteria to
    2 decimals, LR statistics to 2, p-values to 3 significant digits (tiny ones as
    "<1e-16")."""
    out = pd.DataFrame(index=table.index)
    out["k"] = table["k"].astype(int)
    for col in ("llf", "aic", "bic", "lr_stat"):
        out[col] = table[col].map(lambda v: "" if pd.isna(v) else f"{v:.2f}")
    out["df"] = table["df"].map(lambda v: "" if pd.isna(v) else f"{int(v)}")
    out["p_value"] = table["p_value"].map(
        lambda v: "" if pd.isna(v) else ("<1e-16" if v < 1e-16 else f"{v:.3g}")
    )
    out["test"] = table["test"]
    return out


def _censor_limits(text: str | None):
    """--censor "LOWER,UPPER" -> (lower, upper): numbers, column names or None."""
    if text is None:
        return None
    parts = text.split(",")
    if len(parts) != 2:
        raise CLIError(f'--censor needs "LOWER,UPPER" (either may be empty), got {text!r}')

    def one(part: str):
        part = part.strip()
        if not part:
            return None
        try:
            return float(part)
        except ValueError:
            return part

    return one(parts[0]), one(parts[1])


def _used_columns(args: argparse.Namespace) -> set[str]:
    """Every name the formulas, groups and limits of a fit mention: the columns
    the fit can use (the others are not read)."""
    texts = [args.formula, args.bs, args.ws, args.re, args.ws_re, args.groups, args.censor or ""]
    return set(re.findall(r"[A-Za-z_][A-Za-z0-9_.]*", " ".join(t for t in texts if t)))


def _cmd_fit(args: argparse.Namespace) -> int:
    data = read_table(args.data, sep=args.sep, columns=_used_columns(args))
    groups = [g.strip() for g in args.groups.split(",")]
    random_scale: bool | list[str] = not args.no_random_scale
    if args.random_scale_at:
        if len(groups) < 2:
            raise CLIError("--random-scale-at is for three-level models (--groups outer,inner)")
        random_scale = [g.strip() for g in args.random_scale_at.split(",")]
    model = MELS.from_formula(
        args.formula,
        data,
        groups[0] if len(groups) == 1 else groups,
        bs_formula=args.bs,
        ws_formula=args.ws,
        re_formula=args.re,
        ws_re_formula=args.ws_re,
        random_scale=random_scale,
        association=args.association,
        integration=args.integration,
        n_points=args.points,
        censoring=_censor_limits(args.censor),
    )
    res = model.fit(cov_type="robust" if args.robust else "observed")
    print(res.summary())
    if args.out:
        paths = write_outputs(res, Path(args.out), data_file=getattr(args, "data", None))
        print(f"\nwrote {', '.join(str(p) for p in paths)}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .simulate import simulate_london

    out = Path(args.out)
    t0 = time.perf_counter()
    _progress(f"simulating London-sized data (model 7 process, seed {args.seed}) ...")
    data = simulate_london(7, seed=args.seed)
    n_schools = data["school"].nunique()
    _progress(f"  {len(data)} students in {n_schools} schools")
    fits = {}
    for i, (name, spec) in enumerate(DEMO_MODELS.items(), 1):
        t = time.perf_counter()
        fits[name] = MELS.from_formula(data=data, groups="school", **spec).fit()
        _progress(
            f"[{i}/{len(DEMO_MODELS)}] fitted {name} in {time.perf_counter() - t:.2f} s "
            f"(llf {fits[name].llf:.2f})"
        )
    table = compare(*fits.values(), names=list(fits))
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print("Model comparison (each model against the one above it)")
        print(format_comparison(table).to_string())
    print()
    print("Model 3 (random intercept + random scale, prior score in the WS function)")
    print(fits["model 3"].summary())
    out.mkdir(parents=True, exist_ok=True)
    data.to_csv(out / "london_simulated.csv", index=False)
    table.to_csv(out / "model_comparison.csv")
    written = write_outputs(fits["model 3"], out, stem="model3")
    effects = fits["model 3"].school_effects()
    from . import plots

    for name, fig in (
        ("model3_caterpillar.png", plots.caterpillar_pair(effects)),
        ("model3_mean_vs_variance.png", plots.mean_variance_scatter(effects)),
    ):
        fig.savefig(out / name, dpi=110)
        _close(fig)
        written.append(out / name)
    print(
        f"\nSchools separated from the average (95% intervals), model 3: "
        f"means {int(effects['mean_separated'].sum())} of {len(effects)}, "
        f"variances {int(effects['variance_separated'].sum())} of {len(effects)}"
    )
    if "variance_note" in effects.attrs:
        print(f"Note: {effects.attrs['variance_note']}.")
    print(f"School predictions written to {out / 'model3_school_effects.csv'}")
    print(f"Ranks: {RANK_ORDER['mean']}; {RANK_ORDER['variance']}")
    print(
        f"All outputs in {out.resolve()} ({len(written) + 2} files); "
        f"total time {time.perf_counter() - t0:.1f} s"
    )
    return 0


def _cmd_va_dfe(args: argparse.Namespace) -> int:
    from .valueadded import dfe_value_added

    res = dfe_value_added(read_table(args.pupils), median_line=args.median_line)
    with pd.option_context(
        "display.width", 120, "display.max_columns", 20, "display.max_rows", 200
    ):
        print(f"DfE 2003 KS3 to GCSE/GNVQ value added ({res.median_line})")
        print(res.schools.to_string(float_format=lambda v: f"{v:.4g}"))
    counts = res.pupils["status"].value_counts()
    print("\npupils: " + "; ".join(f"{k}: {v}" for k, v in counts.items()))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        res.pupils.to_csv(out / "dfe_pupils.csv", index=False)
        res.schools.to_csv(out / "dfe_schools.csv")
        print(f"wrote {out / 'dfe_pupils.csv'}, {out / 'dfe_schools.csv'}")
    return 0


P8_ELEMENTS = ("english", "maths", "ebacc", "open")


def _progress8_of(path: str, args: argparse.Namespace):
    """Progress 8 of a pupil file with the CLI's column options (element columns
    a8_english, a8_maths, a8_ebacc and a8_open are used when present)."""
    from .valueadded import progress8

    pupils = read_table(path)
    pupil = args.pupil if args.pupil in pupils.columns else None
    elements = {e: f"{args.a8}_{e}" for e in P8_ELEMENTS if f"{args.a8}_{e}" in pupils.columns}
    return progress8(
        pupils,
        a8=args.a8,
        prior_group=args.prior_group,
        school=args.school_column,
        pupil=pupil,
        elements=elements,
        limit_negative=not args.no_limit,
        return_pupils=True,
    )


def _cmd_va_p8(args: argparse.Namespace) -> int:
    res = _progress8_of(args.pupils, args)
    shown = ["cohort", "n", "coverage", "a8_mean", "p8", "p8_lower", "p8_upper", "p8_rank"]
    shown += [c for c in res.schools.columns if c == "n_limited"]
    with pd.option_context(
        "display.width", 120, "display.max_columns", 20, "display.max_rows", 400
    ):
        print(f"Progress 8 (estimated Attainment 8: {res.schools.attrs['estimates']})")
        print(res.schools[shown].to_string(float_format=lambda v: f"{v:.2f}"))
    inc = res.pupils["included"]
    print(
        f"\npupils: {len(inc)}; in Progress 8: {int(inc.sum())}; without key stage 2 "
        f"results: {int((~inc).sum())}; national SD of pupil scores "
        f"{res.national_sd['p8']:.3f}"
    )
    if "p8_limited" in res.pupils:
        print(f"extremely negative scores limited: {int(res.pupils['p8_limited'].sum())}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        res.pupils.to_csv(out / "p8_pupils.csv", index=False)
        res.schools.to_csv(out / "p8_schools.csv")
        res.estimates.to_csv(out / "p8_estimates.csv")
        print(f"wrote p8_pupils.csv, p8_schools.csv and p8_estimates.csv to {out}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from . import plots
    from .valueadded import compare_schools, dfe_value_added, mixedlm_va

    dfe = p8 = None
    if args.pupils:
        dfe = dfe_value_added(read_table(args.pupils), median_line=args.median_line)
    if args.p8:
        p8 = _progress8_of(args.p8, args)
    if args.data:
        data = read_table(args.data)
        formula, groups, ws = args.formula, args.groups, args.ws
        if not formula or not groups:
            raise CLIError("--formula and --groups are needed with a DATA file")
    elif dfe is not None:
        # MELS on the pupils' own records: capped score on KS3 average point score
        inc = dfe.pupils[dfe.pupils["included"]]
        data = inc[["school", "ks3_aps", "capped_score"]].copy()
        formula, groups = "capped_score ~ ks3_aps", "school"
        ws = args.ws if args.ws != "~ 1" else "~ ks3_aps"
    elif p8 is not None:
        # MELS on the Progress 8 pupils: Attainment 8 by prior-attainment group
        inc = p8.pupils[p8.pupils["included"]]
        data = pd.DataFrame(
            {"school": inc["school"], "prior_group": inc["prior_group"], "a8": inc["a8_points"]}
        )
        formula, groups, ws = "a8 ~ C(prior_group)", "school", args.ws
    else:
        raise CLIError("give a DATA file, --pupils PUPILS.csv, --p8 PUPILS.csv, or a mix")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _progress(f"fitting MELS: {formula}, WS {ws}, groups {groups} ...")
    res = MELS.from_formula(formula, data, groups, ws_formula=ws, re_formula=args.re).fit()
    _progress("fitting the MixedLM baseline ...")
    base = mixedlm_va(formula, data, groups, re_formula=args.re)
    mels = res.school_effects()
    report = compare_schools(
        mels=mels, mixedlm=base, dfe=dfe, p8=p8.schools if p8 is not None else None
    )
    report.table.to_csv(out / "schools.csv")
    report.separation.to_csv(out / "separation.csv")
    report.rank_correlations.to_csv(out / "rank_correlations.csv")
    (out / "mels_summary.txt").write_text(res.summary().as_text())
    figures = {
        "caterpillar.png": plots.caterpillar_pair(mels),
        "mean_vs_variance.png": plots.mean_variance_scatter(mels),
        "ranks_mixedlm_vs_mels.png": plots.rank_scatter(base, mels, labels=("MixedLM", "MELS")),
    }
    if dfe is not None:
        dfe_ranks = report.table[["dfe_rank"]].dropna().rename(columns={"dfe_rank": "mean_rank"})
        figures["ranks_dfe_vs_mels.png"] = plots.rank_scatter(
            dfe_ranks, mels, labels=("DfE median line", "MELS")
        )
    if p8 is not None:
        p8_ranks = report.table[["p8_rank"]].dropna().rename(columns={"p8_rank": "mean_rank"})
        figures["ranks_p8_vs_mels.png"] = plots.rank_scatter(
            p8_ranks, mels, labels=("Progress 8", "MELS")
        )
    written = ["schools.csv", "separation.csv", "rank_correlations.csv", "mels_summary.txt"]
    uncertainty, more_figures = _rank_uncertainty(res, args.seed, mels)
    figures.update(more_figures)
    for name, table in uncertainty.items():
        table.to_csv(out / f"{name}.csv")
        written.append(f"{name}.csv")
    for name, fig in figures.items():
        fig.savefig(out / name, dpi=120)
        _close(fig)
    print(res.summary())
    print(f"\nRanks: {RANK_ORDER['mean']}; {RANK_ORDER['variance']}")
    print("\nSchools separated from the average (95% intervals)")
    print(report.separation.to_string(float_format=lambda v: f"{v:.1f}"))
    note = mels.attrs.get("variance_note")
    if note:
        print(f"Note: {note}.")
    written += _profiles_and_workbook(args, out, report, uncertainty, note)
    if "variance_flags" in uncertainty:
        flags = uncertainty["variance_flags"]
        print(
            f"\nSchool variances flagged at a false discovery rate of {flags.attrs['fdr']:.0%} "
            f"(Benjamini-Hochberg): {flags.attrs['n_flagged']} of {len(flags)} "
            f"({(flags['flag'] == 'high').sum()} high, {(flags['flag'] == 'low').sum()} low); "
            f"false flags expected at most {flags.attrs['expected_false_flags']:.1f}; "
            f"an unadjusted 5% test would flag {flags.attrs['unadjusted_by_chance']:.1f} by "
            "chance alone"
        )
        if "note" in flags.attrs and not note:
            print(f"Note: {flags.attrs['note']}.")
    print("\nRank correlations (Spearman)")
    print(report.rank_correlations.to_string(float_format=lambda v: f"{v:.3f}"))
    print(f"\nwrote {', '.join(written)} and {len(figures)} PNG plots to {out}")
    return 0


def _profiles_and_workbook(args, out: Path, report, uncertainty: dict, note) -> list[str]:
    """School profiles (``--profiles``, ``--school``) and the Excel workbook
    (``--excel``); the names written."""
    from .valueadded.profiles import report_workbook, school_profiles

    written = []
    if args.profiles or args.school:
        schools = None
        if args.school:
            by_text = {str(s): s for s in report.table.index}
            missing = [s for s in args.school if s not in by_text]
            if missing:
                raise CLIError(f"--school {missing[0]}: no such school in the report")
            schools = [by_text[s] for s in args.school]
        paths = school_profiles(
            report,
            out / "profiles",
            schools=schools,
            ranks=uncertainty.get("rank_intervals"),
            flags=uncertainty.get("variance_flags"),
            notes=[note] if note else None,
        )
        written.append(f"profiles/ ({len(paths) - 1} school pages and index.html)")
    if args.excel:
        sheets = {
            "schools": report.table,
            "separation": report.separation,
            "rank_correlations": report.rank_correlations,
            **uncertainty,
        }
        report_workbook(sheets, out / "report.xlsx")
        written.append("report.xlsx")
    return written


def _rank_uncertainty(res, seed: int, effects) -> tuple[dict, dict]:
    """Rank intervals, comparative intervals and variance flags ({name: table}),
    and the rank-interval plots ({file name: figure}); models beyond MixWILD's
    (random slopes) have none."""
    from . import plots
    from .rankings import comparative_intervals, rank_intervals, variance_flags

    if not res.model.layout.mixwild_view:
        return {}, {}
    _progress("ranking 1000 posterior draws of the schools' effects ...")
    ranks = rank_intervals(res, n_draws=1000, seed=seed, effects=effects)
    tables = {"rank_intervals": ranks, "comparative_intervals": comparative_intervals(res)}
    figures = {"rank_intervals_mean.png": plots.rank_intervals(ranks, "mean")}
    if res.model.layout.s:
        tables["variance_flags"] = variance_flags(res)
        figures["rank_intervals_variance.png"] = plots.rank_intervals(ranks, "variance")
    return tables, figures


def _cmd_power(args: argparse.Namespace) -> int:
    from . import plots
    from .power import power
    from .simulate import LONDON_TRUE

    params = {k: dict(v) for k, v in LONDON_TRUE.items()}
    params["random"].update(sigma_omega=args.sigma_omega, tau_l=args.tau_l)
    params["tau"]["prior"] = args.tau_prior
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _progress(
        f"power of the test of {args.test}: {len(args.schools) * len(args.students)} designs x "
        f"{args.sims} simulations (model 3: y ~ prior, WS ~ prior, sigma_omega "
        f"{args.sigma_omega:g}, tau_l {args.tau_l:g})"
    )
    result = power(params, args.schools, args.students, test=args.test, n_sims=args.sims,
                   alpha=args.alpha, seed=args.seed, formula="y ~ prior", ws_formula="~ prior",
                   progress=_progress_bar("simulations"))  # fmt: skip
    result.to_csv(out / "power.csv", index=False)
    fig = plots.power_curve(result)
    fig.savefig(out / "power.png", dpi=120)
    _close(fig)
    print(result.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"\nwrote power.csv and power.png to {out}")
    return 0


def _cmd_mixwild(args: argparse.Namespace) -> int:
    from . import mixwild

    model = MELS.from_mixwild(args.definition)
    res = model.fit()
    print(res.summary())
    if model.notes:
        print("\nMixWILD settings read but not used by melsml:")
        for note in model.notes:
            print(f"  {note}")
    if args.out:  # before the comparison, which may refuse a model it cannot match
        paths = write_outputs(res, Path(args.out), data_file=getattr(args, "data", None))
        print(f"\nwrote {', '.join(str(p) for p in paths)}")
    s2 = None
    if model.mixwild_spec.stage2 is not None:
        s2 = mixwild.stage2(res, draws=args.draws, progress=_progress_bar("stage 2"))
        print()
        print(s2.summary())
    for report in args.compare or []:
        if mixwild.is_stage2_report(report):
            if s2 is None:
                raise CLIError(f"{report} is a stage-2 report, but the definition has no stage 2")
            table = mixwild.compare_stage2(s2, report)
        else:
            table = mixwild.compare(res, report)
        print(f"\nmelsml against MixWILD ({report})")
        print(table.to_string(float_format=lambda v: f"{v:.6g}"))
    return 0


def _p8_columns(parser: argparse.ArgumentParser) -> None:
    """The Progress 8 pupil file's column options."""
    parser.add_argument("--a8", default="a8", help="Attainment 8 column (default a8)")
    parser.add_argument("--prior-group", default="ks2_group", help="prior-attainment group column")
    parser.add_argument(
        "--school-column", default="school", help="school column of the Progress 8 file"
    )
    parser.add_argument(
        "--pupil", default="pupil", help="pupil identifier column (named in errors)"
    )
    parser.add_argument(
        "--no-limit",
        action="store_true",
        help="do not limit extremely negative pupil scores (the rule from 2018)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="melsml",
        description="Mixed-effects location scale models by exact maximum likelihood.",
    )
    parser.add_argument("--version", action="version", version=f"melsml {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    fit = sub.add_parser("fit", help="fit a MELS model to a data file")
    fit.add_argument(
        "data",
        help="data file with a header row: .csv, .tsv, .txt, .dta, .parquet, .xlsx or .sav",
    )
    fit.add_argument("--sep", help="column separator of a text file (default: by suffix)")
    fit.add_argument("--formula", required=True, help='mean function, e.g. "y ~ x"')
    fit.add_argument(
        "--groups",
        required=True,
        help="column identifying the groups; two columns, outermost first and separated "
        "by a comma (district,school), for a three-level model",
    )
    fit.add_argument(
        "--random-scale-at",
        help="three-level models: the levels with a random scale, comma-separated (default: both)",
    )
    fit.add_argument(
        "--censor",
        help="censored (Tobit) outcome: LOWER,UPPER limits, each a number, a column of "
        'per-row limits or empty for none (e.g. "0,100" or ",100")',
    )
    fit.add_argument("--ws", default="~ 1", help='WS log-variance function (default "~ 1")')
    fit.add_argument("--bs", default="~ 1", help='BS log-variance function (default "~ 1")')
    fit.add_argument(
        "--re", default="~ 1", help='random location effects (default "~ 1"; e.g. "~ 1 + x")'
    )
    fit.add_argument(
        "--ws-re",
        default="~ 1",
        help='random scale effects (default "~ 1"; "~ 1 + x" adds a random scale slope)',
    )
    fit.add_argument("--no-random-scale", action="store_true", help="omit the random scale")
    fit.add_argument(
        "--association",
        default="linear",
        choices=["none", "linear", "quadratic"],
        help="how the random scale depends on the location effect (default linear)",
    )
    fit.add_argument(
        "--integration",
        default="auto",
        choices=["auto", "exact-location", "aghq"],
        help="integration plan (default auto: exact over the location effects)",
    )
    fit.add_argument(
        "--points",
        type=int,
        default=None,
        help="quadrature points per dimension (default 11 in 1-D, 7 in 2-D, 5 beyond)",
    )
    fit.add_argument("--robust", action="store_true", help="sandwich standard errors")
    fit.add_argument(
        "--out",
        help="folder for estimates, school predictions, the summary and fit.json (provenance)",
    )
    fit.set_defaults(func=_cmd_fit)

    va = sub.add_parser("va", help="classical value-added measures")
    va_sub = va.add_subparsers(dest="method", required=True)
    dfe = va_sub.add_parser(
        "dfe",
        help="DfE 2003 median-line value added from pupil records",
        description=(
            "DfE 2003 KS3 to GCSE/GNVQ median-line value added.  The pupil records "
            "file has one row per qualification result (a row with an empty "
            "qualification for a pupil with none) and the required columns: pupil, "
            "school, ks3_english, ks3_maths, ks3_science (levels 3-8, E, 2, N, B; "
            "disregarded D, A, M, L), qualification (gcse, gcse_short, gnvq_...), "
            "grade (A*-G, U, X; distinction/merit/pass for GNVQs); optional: special "
            "(Table B) and same_school (stability)."
        ),
    )
    dfe.add_argument("pupils", help="pupil records file (one row per qualification result)")
    dfe.add_argument(
        "--median-line",
        default="auto",
        choices=["auto", "A", "B", "data"],
        help="national median line (A mainstream, B special), medians from the data, or auto",
    )
    dfe.add_argument("--out", help="folder for dfe_pupils.csv and dfe_schools.csv")
    dfe.set_defaults(func=_cmd_va_dfe)
    p8 = va_sub.add_parser(
        "p8",
        help="Progress 8 from pupil records",
        description=(
            "Progress 8 (DfE secondary accountability measures, February 2020 guide): "
            "estimated Attainment 8 per key stage 2 prior-attainment group (national "
            "means from the file), pupil scores (A8 - estimate) / 10, the 2018 limit on "
            "extremely negative scores, and school scores with 95%% confidence "
            "intervals.  One row per pupil; columns a8, ks2_group (empty: no key "
            "stage 2 results) and school (names configurable); element columns "
            "a8_english, a8_maths, a8_ebacc, a8_open are used when present."
        ),
    )
    p8.add_argument("pupils", help="pupil file (one row per pupil)")
    _p8_columns(p8)
    p8.add_argument("--out", help="folder for p8_pupils.csv, p8_schools.csv, p8_estimates.csv")
    p8.set_defaults(func=_cmd_va_p8)

    rep = sub.add_parser(
        "report", help="school report: MELS, MixedLM, DfE 2003 and Progress 8 side by side"
    )
    rep.add_argument("data", nargs="?", help="pupil-level CSV for MELS and MixedLM")
    rep.add_argument("--pupils", help="pupil records CSV for the DfE measure")
    rep.add_argument("--p8", metavar="PUPILS", help="pupil file for Progress 8 (see va p8)")
    _p8_columns(rep)
    rep.add_argument("--formula", help='mean function, e.g. "y ~ prior"')
    rep.add_argument("--groups", help="schools column")
    rep.add_argument("--ws", default="~ 1", help="WS log-variance function")
    rep.add_argument("--re", default="~ 1", help="random location effects")
    rep.add_argument(
        "--median-line",
        default="auto",
        choices=["auto", "A", "B", "data"],
        help="DfE median line (A mainstream, B special, data, or auto)",
    )
    rep.add_argument("--out", default="melsml-report", help="output folder")
    rep.add_argument(
        "--seed", type=int, default=2024, help="seed of the posterior draws for rank intervals"
    )
    rep.add_argument(
        "--profiles", action="store_true", help="an HTML profile page for every school"
    )
    rep.add_argument(
        "--school", action="append", metavar="ID", help="a profile page for this school (repeat)"
    )
    rep.add_argument("--excel", action="store_true", help="also report.xlsx, a sheet per table")
    rep.set_defaults(func=_cmd_report)

    mw = sub.add_parser("mixwild", help="fit a MixWILD definition file")
    mw.add_argument(
        "definition",
        help="MixWILD .def file (its data file beside it); a stage-2 block is fitted too",
    )
    mw.add_argument(
        "--compare",
        nargs="+",
        metavar="REPORT",
        help="MixWILD's stage-1 and/or stage-2 reports (*_stage1.out, *_stage2.out) to set "
        "beside the fit",
    )
    mw.add_argument(
        "--draws",
        choices=["mixwild", "posterior", "normal"],
        default="mixwild",
        help="stage 2: draw the effects as MixWILD does (default, to compare like with "
        "like), from the exact posterior, or from its normal approximation",
    )
    mw.add_argument("--out", help="folder for estimates and school predictions")
    mw.set_defaults(func=_cmd_mixwild)

    pw = sub.add_parser(
        "power",
        help="power to detect a random scale (or a parameter) by simulation, per design",
    )
    pw.add_argument(
        "--schools", type=int, nargs="+", default=[100, 200, 465], help="numbers of schools"
    )
    pw.add_argument(
        "--students",
        type=int,
        nargs="+",
        default=[30, 150],
        help="numbers of students per school",
    )
    pw.add_argument(
        "--test",
        default="random_scale",
        help="'random_scale' (LR test) or 'block[term]', e.g. 'tau[prior]'",
    )
    pw.add_argument("--sigma-omega", type=float, default=0.22, help="true random-scale SD")
    pw.add_argument("--tau-l", type=float, default=-0.12, help="true location-scale association")
    pw.add_argument("--tau-prior", type=float, default=-0.12, help="true WS slope on prior")
    pw.add_argument("--sims", type=int, default=200, help="simulations per design")
    pw.add_argument("--alpha", type=float, default=0.05, help="the tests' level")
    pw.add_argument("--seed", type=int, default=2024, help="random seed (repeatable results)")
    pw.add_argument("--out", default="melsml-power", help="output folder")
    pw.set_defaults(func=_cmd_power)

    demo = sub.add_parser("demo", help="simulate London-sized data and fit models 1, 2, 3, 7")
    demo.add_argument("--out", default="melsml-demo", help="output folder (default melsml-demo)")
    demo.add_argument("--seed", type=int, default=2024, help="random seed (default 2024)")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            status = args.func(args)
            sys.stdout.flush()
        except BrokenPipeError:
            # the reader (e.g. `| head`) went away: end quietly, as Unix tools do
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return 0
        except (CLIError, MELSInputError, FloatingPointError, OSError) as exc:
            print(f"melsml: error: {exc}", file=sys.stderr)
            status = 1
        except Exception as exc:  # noqa: BLE001 - the CLI never shows a traceback
            print(f"melsml: error: {type(exc).__name__}: {exc}", file=sys.stderr)
            status = 1
    for w in caught:
        print(f"melsml: warning: {w.message}", file=sys.stderr)
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
