"""Run the tutorial's and the validation page's code; write figures and tables.

Called by ``conf.py`` at every documentation build, so that every number and
figure in the docs comes from the code they show.  Output: ``docs/_generated``.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf

from melsml import MELS, compare, mixwild, plots, simulate_london
from melsml.valueadded import (
    dfe_value_added,
    example_pupils_path,
    mixedlm_va,
    progress8,
    synthetic_progress8_pupils,
)

HERE = Path(__file__).parent
OUT = HERE / "_generated"
ROOT = HERE.parent


def md_table(frame: pd.DataFrame, floatfmt: str = "{:.4g}") -> str:
    """A pandas frame as a Markdown table (index included)."""
    frame = frame.reset_index()

    def fmt(v):
        if isinstance(v, (float, np.floating)):
            return "" if np.isnan(v) else floatfmt.format(v)
        return str(v)

    head = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join(["---"] * frame.shape[1]) + "|"
    body = ["| " + " | ".join(fmt(v) for v in row) + " |" for row in frame.itertuples(False)]
    return "\n".join([head, rule, *body]) + "\n"


def write(name: str, text: str) -> None:
    (OUT / name).write_text(text)


def tutorial() -> None:
    data = simulate_london(7, seed=2024)
    write(
        "data.md",
        f"{len(data):,} students in {data['school'].nunique()} schools "
        f"({data.groupby('school').size().min()} to "
        f"{data.groupby('school').size().max()} students each)\n",
    )
    student = "prior + female + fsm + eal + sen + age + ethnicity"
    specs = {
        "1": dict(formula="y ~ prior", random_scale=False),
        "2": dict(formula="y ~ prior"),
        "3": dict(formula="y ~ prior", ws_formula="~ prior"),
        "4": dict(formula="y ~ prior", re_formula="~ 1 + prior", random_scale=False),
        "5": dict(formula="y ~ prior", re_formula="~ 1 + prior"),
        "6": dict(formula="y ~ prior", re_formula="~ 1 + prior", ws_formula="~ prior"),
        "7": dict(formula=f"y ~ {student}", ws_formula=f"~ {student}"),
        "8": dict(formula=f"y ~ {student} + school_type", ws_formula=f"~ {student} + school_type"),
    }
    fits, times = {}, {}
    for name, spec in specs.items():
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fits[name] = MELS.from_formula(data=data, groups="school", **spec).fit()
        times[name] = time.perf_counter() - t
    table = pd.DataFrame(
        {
            "model": [f"model {k}" for k in fits],
            "parameters": [r.k_params for r in fits.values()],
            "log-likelihood": [r.llf for r in fits.values()],
            "AIC": [r.aic for r in fits.values()],
            "BIC": [r.bic for r in fits.values()],
            "fit time (s)": [round(times[k], 2) for k in fits],
        }
    ).set_index("model")
    write("models.md", md_table(table, "{:.6g}"))
    tests = [
        ("1", "2"),
        ("2", "3"),
        ("1", "4"),
        ("4", "5"),
        ("5", "6"),
        ("3", "6"),
        ("3", "7"),
        ("7", "8"),
    ]
    rows = []
    for a, b in tests:
        c = compare(fits[a], fits[b], names=[f"model {a}", f"model {b}"]).iloc[1]
        rows.append(
            {
                "test": f"model {a} vs {b}",
                "LR statistic": c["lr_stat"],
                "df": c["df"],
                "p-value": c["p_value"],
                "reference distribution": c["test"].split(": ")[-1],
            }
        )
    write("lrtests.md", md_table(pd.DataFrame(rows).set_index("test"), "{:.4g}"))
    write("summary3.md", "```text\n" + fits["3"].summary().as_text() + "\n```\n")
    rp = fits["3"].random_params()
    write("random3.md", md_table(rp, "{:.4f}"))

    eff3 = fits["3"].school_effects()
    sep = (
        f"Of the {len(eff3)} schools, {int(eff3['mean_separated'].sum())} "
        f"({100 * eff3['mean_separated'].mean():.0f}%) are separated from the average on "
        f"their school means and {int(eff3['variance_separated'].sum())} "
        f"({100 * eff3['variance_separated'].mean():.0f}%) on their school variances; "
        f"the correlation between school means and school variances is "
        f"{np.corrcoef(eff3['mean'], eff3['variance'])[0, 1]:.2f}.\n"
    )
    write("separation3.md", sep)
    plots.caterpillar_pair(eff3).savefig(OUT / "caterpillar.png", dpi=100)
    plots.mean_variance_scatter(eff3).savefig(OUT / "scatter.png", dpi=100)
    plots.rank_scatter(
        eff3, fits["7"].school_effects(), measure="variance", labels=("model 3", "model 7")
    ).savefig(OUT / "ranks_7_3.png", dpi=100)

    v6 = fits["6"].school_effects(reference_var=1.0)
    v6_0 = fits["6"].school_effects(reference_var=0.0)
    share = ((v6["variance"] - v6_0["variance"]) / v6["variance"]).describe()
    write(
        "slopes6.md",
        f"For a reference distribution of students with prior-score variance 1, the random "
        f"slope contributes a median {100 * share['50%']:.1f}% (at most "
        f"{100 * share['max']:.1f}%) of a school's variance in model 6.\n",
    )
    scale_slopes()
    three_level()
    censored()
    ordinal()
    subjects()
    school8 = fits["8"].params[
        [("tau", t) for t in fits["8"].params["tau"].index if t.startswith("school_type")]
    ]
    write(
        "school8.md",
        md_table(school8.to_frame("estimate").join(fits["8"].bse.rename("std. error")), "{:.4f}"),
    )


def scale_slopes() -> None:
    """The tutorial's random scale slope section."""
    data = simulate_london(3, seed=2024, scale_slope=True)
    m3 = MELS.from_formula("y ~ prior", data, "school", ws_formula="~ prior").fit()
    slope = MELS.from_formula(
        "y ~ prior", data, "school", ws_formula="~ prior", ws_re_formula="~ 1 + prior"
    ).fit()
    table = compare(m3, slope, names=["model 3", "+ scale slope"])
    write(
        "scaleslope_lr.md",
        md_table(table[["k", "llf", "aic", "bic", "lr_stat", "df", "p_value", "test"]], "{:.4g}"),
    )
    write("scaleslope_cov.md", md_table(slope.cov_re, "{:.4f}"))
    rp = slope.random_params()
    write("scaleslope_random.md", md_table(rp, "{:.4f}"))
    plots.variance_function(slope, "prior", n_schools=6).savefig(
        OUT / "variance_function.png", dpi=100
    )


def three_level() -> None:
    """The tutorial's sections on districts and on cohort stability."""
    from melsml.simulate import simulate_three_level

    data = simulate_three_level(60, 12, 60, seed=7)
    data["school_id"] = data["district"] + "/" + data["school"].astype(str)
    m3 = MELS.from_formula("y ~ prior", data, "school_id", ws_formula="~ prior").fit()
    district = MELS.from_formula(
        "y ~ prior", data, ["district", "school"], ws_formula="~ prior"
    ).fit()
    write(
        "district_data.md",
        f"{len(data):,} students in {data['school_id'].nunique()} schools in "
        f"{data['district'].nunique()} districts\n",
    )
    write("district_summary.md", "```text\n" + district.summary().as_text() + "\n```\n")
    table = compare(m3, district, names=["model 3", "+ districts"])
    write(
        "district_lr.md",
        md_table(table[["k", "llf", "aic", "bic", "lr_stat", "df", "p_value", "test"]], "{:.4g}"),
    )
    cov = district.cov_re
    write(
        "district_cov.md",
        "".join(f"**{lev}**\n\n" + md_table(frame, "{:.4f}") + "\n" for lev, frame in cov.items()),
    )
    write("district_stability.md", md_table(district.stability(), "{:.3f}"))
    cols = ["district", "school", "n_obs", "mean", "mean_sd", "mean_own", "variance",
            "variance_lower", "variance_upper"]  # fmt: skip
    write("district_schools.md", md_table(district.school_effects()[cols].head(5), "{:.3f}"))
    write("district_districts.md", md_table(district.group_effects("district").head(5), "{:.3f}"))

    cohorts = simulate_three_level(120, 5, 30, levels=("school", "cohort"), seed=8)
    stab = MELS.from_formula("y ~ prior", cohorts, ["school", "cohort"], ws_formula="~ prior").fit()
    write(
        "cohort_data.md",
        f"{len(cohorts):,} students in {cohorts.groupby(['school', 'cohort']).ngroups} "
        f"cohorts of {cohorts['school'].nunique()} schools\n",
    )
    write("cohort_stability.md", md_table(stab.stability(), "{:.3f}"))
    write("cohort_random.md", md_table(stab.random_params(), "{:.4f}"))


def censored() -> None:
    """The tutorial's section on floor and ceiling effects."""
    data = simulate_london(3, seed=1)
    ceiling = float(data["y"].quantile(0.9))
    capped = data.assign(y=np.minimum(data["y"], ceiling))
    tobit = MELS.from_formula(
        "y ~ prior", data, "school", ws_formula="~ prior", censoring=(None, ceiling)
    ).fit()
    gauss = MELS.from_formula("y ~ prior", capped, "school", ws_formula="~ prior").fit()
    from melsml.simulate import LONDON_TRUE

    truth = pd.Series(
        {(b, k): v for b, block in LONDON_TRUE.items() for k, v in block.items()}
    ).reindex(tobit.params.index)
    table = pd.DataFrame(
        {
            "true": truth,
            "Gaussian (capped scores)": gauss.params,
            "z": (gauss.params - truth) / gauss.bse,
            "Tobit": tobit.params,
            "z ": (tobit.params - truth) / tobit.bse,
        }
    )
    table.index = pd.Index([f"{b}: {t}" for b, t in table.index], name="parameter")
    write("tobit_ceiling.md", f"ceiling {ceiling:.3f}: 10% of {len(data):,} scores\n")
    write("tobit_params.md", md_table(table, "{:.3f}"))
    full = MELS.from_formula("y ~ prior", data, "school", ws_formula="~ prior").fit()
    v_full = full.school_effects()["variance"]
    corr = {
        "Tobit": np.corrcoef(tobit.school_effects()["variance"], v_full)[0, 1],
        "Gaussian (capped scores)": np.corrcoef(gauss.school_effects()["variance"], v_full)[0, 1],
    }
    write(
        "tobit_eb.md",
        "Correlation of the school variances with those from the uncensored scores: "
        + ", ".join(f"{k} {v:.3f}" for k, v in corr.items())
        + ".\n",
    )


def subjects() -> None:
    """The tutorial's section on several outcomes."""
    from melsml.simulate import simulate_subjects

    data = simulate_subjects(n_schools=150, n_students=15000, seed=11)
    formulas = ["english ~ prior", "maths ~ prior"]
    t = time.perf_counter()
    res = MELS.from_formula(formulas, data, "school", ws_formula="~ prior").fit()
    took = time.perf_counter() - t
    write(
        "subjects_data.md",
        f"{len(data):,} students in {data['school'].nunique()} schools; "
        f"{int(data['english'].isna().sum())} English and {int(data['maths'].isna().sum())} "
        f"maths scores missing; the fit with standard errors took {took:.1f} s.\n",
    )
    write("subjects_summary.md", "```text\n" + res.summary() + "\n```\n")
    rows = []
    for question, kw in (
        ("are the subjects related at all?",
         dict(cov_structure="independent", residual_corr=False)),
        ("are the school variances correlated across subjects?",
         dict(cov_structure="uncorrelated-scales")),
        ("are school means and variances related?",
         dict(cov_structure="no-location-scale")),
    ):  # fmt: skip
        small = MELS.from_formula(formulas, data, "school", ws_formula="~ prior", **kw).fit()
        c = compare(small, res).iloc[1]
        rows.append({"question": question, "LR": c["lr_stat"], "df": c["df"],
                     "p": c["p_value"]})  # fmt: skip
    write("subjects_lr.md", md_table(pd.DataFrame(rows).set_index("question"), "{:.4g}"))
    eff = res.school_effects()
    shown = ["n", "mean[english]", "mean[maths]", "variance[english]", "variance[maths]",
             "variance[maths]_lower", "variance[maths]_upper"]  # fmt: skip
    write("subjects_effects.md", md_table(eff[shown].head(5), "{:.3f}"))
    r = np.corrcoef(eff["variance[english]"], eff["variance[maths]"])[0, 1]
    write(
        "subjects_corr.md",
        f"The model puts the correlation of a school's English and maths variances "
        f"(scale effects) at {res.corr_re.loc['scale:english', 'scale:maths']:.2f} and that "
        f"of its means at {res.corr_re.loc['location:english', 'location:maths']:.2f}; the "
        f"schools' predicted variances correlate {r:.2f} (shrinkage pulls them together).\n",
    )
    plots.outcome_scatter(eff, "variance", ("english", "maths")).savefig(
        OUT / "subjects_variances.png", dpi=100
    )


def ordinal() -> None:
    """The tutorial's section on graded outcomes."""
    data = simulate_london(3, seed=7, n_schools=150, n_students=15000)
    from melsml.simulate import LONDON_TRUE

    sigma0 = np.exp(0.5 * LONDON_TRUE["tau"]["Intercept"])
    data["grade"] = 1 + np.searchsorted(np.linspace(-2.0, 2.0, 8), data["y"] / sigma0)
    res = MELS.from_formula(
        "grade ~ prior", data, "school", family="ordinal", ws_formula="~ prior"
    ).fit()
    write("ordinal_summary.md", "```text\n" + res.summary().as_text() + "\n```\n")
    write("ordinal_thresholds.md", md_table(res.thresholds.to_frame(), "{:.3f}"))
    ref = pd.read_csv(ROOT / "tests" / "data" / "ordinal" / "reference.csv")
    ref = ref.set_index(["model", "quantity"])["value"]
    pairs = pd.read_csv(ROOT / "tests" / "data" / "ordinal" / "ordinal.csv")
    rows = []
    for link in ("probit", "logit"):
        for kind, column, program in (("2", "bin", "glmer"), ("5", "cat5", "clmm")):
            fit = MELS.from_formula(
                f"{column}_{link} ~ x", pairs, "g", family="ordinal", link=link,
                random_scale=False, n_points=25,
            ).fit()  # fmt: skip
            rows.append(
                {
                    "categories": kind,
                    "link": link,
                    "R": f"{program} (nAGQ = 25)",
                    "R llf": ref[(f"{program}_{link}", "llf")],
                    "melsml llf": fit.llf,
                    "R var_u": ref[(f"{program}_{link}", "var_u")],
                    "melsml var_u": fit.random_params().loc["var_u", "estimate"],
                }
            )
    write("ordinal_r.md", md_table(pd.DataFrame(rows).set_index("categories"), "{:.8g}"))


def validation() -> None:
    ref = ROOT / "tests" / "data" / "mixwild"
    rows = []
    for case in ("small", "sbm_mels", "riesby"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = MELS.from_mixwild(ref / case / "model.def").fit()
        est = mixwild.read_est(ref / case / "estimates.EST")[2]
        rows.append(
            {
                "case": case,
                "observations": res.nobs,
                "groups": res.n_groups,
                "MixWILD llf": est["llf"],
                "melsml llf": res.llf,
                "llf difference": res.llf - est["llf"],
                "max abs. estimate difference": np.max(
                    np.abs(res.params.to_numpy() - est["estimates"])
                ),
                "max abs. SE ratio - 1": np.max(np.abs(res.bse.to_numpy() / est["se"] - 1)),
            }
        )
    write("mixwild.md", md_table(pd.DataFrame(rows).set_index("case"), "{:.6g}"))

    data = simulate_london(3, seed=11, n_schools=120, n_students=12000)
    rows = []
    for name, re_formula in (
        ("model 1 (random intercept)", None),
        ("model 4 (random slope)", "~ prior"),
    ):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sm = smf.mixedlm("y ~ prior", data, groups=data["school"], re_formula=re_formula).fit(
                reml=False, method="bfgs", gtol=1e-10
            )
        res = MELS.from_formula(
            "y ~ prior",
            data,
            "school",
            random_scale=False,
            re_formula="~ 1 + prior" if re_formula else "~ 1",
        ).fit()
        rows.append(
            {
                "model": name,
                "MixedLM llf": sm.llf,
                "melsml llf": res.llf,
                "relative difference": (res.llf - sm.llf) / abs(sm.llf),
                "max abs. beta difference": np.max(
                    np.abs(res.params["beta"].to_numpy() - sm.fe_params.to_numpy())
                ),
            }
        )
    write("mixedlm.md", md_table(pd.DataFrame(rows).set_index("model"), "{:.6g}"))

    pastes = pd.read_csv(ROOT / "tests" / "data" / "pastes" / "pastes.csv")
    lme4 = pd.read_csv(
        ROOT / "tests" / "data" / "pastes" / "lme4_reference.csv", header=None, index_col=0
    )[1]
    three = MELS.from_formula("strength ~ 1", pastes, ["batch", "cask"], random_scale=False).fit()
    nested = pastes.assign(bc=pastes["batch"] + "/" + pastes["cask"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sm = smf.mixedlm(
            "strength ~ 1", nested, groups="batch", re_formula="1", vc_formula={"cask": "0 + C(bc)"}
        ).fit(reml=False)
    rp = three.random_params()["estimate"]
    write(
        "pastes.md",
        md_table(
            pd.DataFrame(
                {
                    "lme4 (R)": [
                        float(lme4["llf"]),
                        float(lme4["var_batch"]),
                        float(lme4["var_batch:cask"]),
                        float(lme4["var_Residual"]),
                    ],
                    "MixedLM": [sm.llf, sm.cov_re.iloc[0, 0], sm.vcomp[0], sm.scale],
                    "melsml": [
                        three.llf,
                        rp["batch: var(location)"],
                        rp["cask: var(location)"],
                        rp["var_e"],
                    ],
                },  # fmt: skip
                index=pd.Index(["llf", "var(batch)", "var(cask)", "var(residual)"], name=""),
            ),
            "{:.8g}",
        ),
    )

    riesby = pd.read_csv(ref / "riesby" / "riesby.csv")
    kw = dict(re_formula="~ 1 + week", ws_formula="~ week + endog")
    fixed = MELS.from_formula("hamd ~ week + endog + endweek", riesby, "id", **kw).fit().params
    rows = []
    for points in (7, 11, 15, 21, 31):
        row = {"points per dimension": points}
        for integration in ("exact-location", "aghq"):
            model = MELS.from_formula(
                "hamd ~ week + endog + endweek",
                riesby,
                "id",
                integration=integration,
                n_points=points,
                **kw,
            )
            row[f"{integration} llf"] = model.loglike(fixed)
        rows.append(row)
    write("paths.md", md_table(pd.DataFrame(rows).set_index("points per dimension"), "{:.6f}"))

    pupils = pd.read_csv(example_pupils_path())
    dfe = dfe_value_added(pupils)
    write(
        "dfe_schools.md",
        md_table(
            dfe.schools.head(6)[
                [
                    "cohort",
                    "included",
                    "coverage",
                    "va_published",
                    "avg_capped_score",
                    "avg_equivalents",
                    "stability",
                ]
            ],
            "{:.4g}",
        ),
    )
    inc = dfe.pupils[dfe.pupils["included"]]
    base = mixedlm_va("capped_score ~ ks3_aps", inc, "school")
    write(
        "dfe_vs_mixedlm.md",
        f"Across the {len(base)} example schools the Spearman correlation between the DfE "
        f"median-line VA and the MixedLM school effect is "
        f"{dfe.schools['va_score'].corr(base['mean'], method='spearman'):.2f}.\n",
    )
    progress_8()


def progress_8() -> None:
    """Progress 8 of the synthetic pupil file, beside MELS of Attainment 8."""
    pupils = synthetic_progress8_pupils()
    elements = {e: f"a8_{e}" for e in ("english", "maths", "ebacc", "open")}
    p8 = progress8(pupils, pupil="pupil", elements=elements, return_pupils=True)
    cols = ["cohort", "n", "a8_mean", "p8", "p8_lower", "p8_upper", "p8_rank", "n_limited"]
    write("p8_schools.md", md_table(p8.schools.head(6)[cols], "{:.3g}"))
    inc = p8.pupils[p8.pupils["included"]]
    data = pd.DataFrame(
        {"school": inc["school"], "group": inc["prior_group"], "a8": inc["a8_points"]}
    )
    res = MELS.from_formula("a8 ~ C(group)", data, "school").fit()
    mels = res.school_effects()
    rho_mean = p8.schools["p8"].corr(mels["mean"], method="spearman")
    rho_var = p8.schools["p8"].corr(mels["variance"], method="spearman")
    limited = int(inc["p8_limited"].sum())
    write(
        "p8_vs_mels.md",
        f"Across the {len(mels)} schools the Spearman correlation between Progress 8 and "
        f"the MELS school mean of Attainment 8 (given the prior-attainment group) is "
        f"{rho_mean:.3f}; with the MELS school variance it is {rho_var:.2f}.  "
        f"{limited} of the {len(inc)} pupils in the measure had their score limited "
        f"(the national SD of pupil scores is {p8.national_sd['p8']:.3f}).\n",
    )


def main() -> None:
    OUT.mkdir(exist_ok=True)
    tutorial()
    validation()


if __name__ == "__main__":
    main()
