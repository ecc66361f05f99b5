"""The traditional value-added model by statsmodels MixedLM (maximum likelihood)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats

from ..exceptions import MELSInputError
from ..formula import build_design
from ..measures import measure_columns


def mixedlm_va(
    formula: str,
    data: pd.DataFrame,
    groups: str,
    *,
    re_formula: str = "~ 1",
    alpha: float = 0.05,
) -> pd.DataFrame:
    """School value added from the traditional random-intercept (or random-slope)
    model, fitted by statsmodels MixedLM with ``reml=False``.

    Parameters
    ----------
    formula : str
        Mean function, e.g. ``"y ~ prior"``.
    data : DataFrame
    groups : str
        Schools column.
    re_formula : str
        ``"~ 1"`` (random intercept, model 1) or e.g. ``"~ 1 + prior"``
        (random slope, model 4).
    alpha : float
        1 - coverage of the intervals.

    Returns
    -------
    DataFrame indexed by school with the columns of the mean part of
    :meth:`melsml.MELSResults.school_effects`: ``n``, ``mean`` (the EB
    school effect; with random slopes averaged over the school's students),
    ``mean_sd`` (comparative SE: the posterior SD given the estimates),
    ``mean_lower``, ``mean_upper``, ``mean_rank`` (1 = highest),
    ``mean_separated``.  The fit is in ``DataFrame.attrs["fit"]``.
    """
    if isinstance(formula, pd.DataFrame) and isinstance(data, str):
        # the order of melsml <= 0.1: (data, formula, groups)
        warnings.warn(
            "mixedlm_va(data, formula, groups) is deprecated: call it as "
            "mixedlm_va(formula, data, groups), like MELS.from_formula",
            FutureWarning,
            stacklevel=2,
        )
        formula, data = data, formula
    import statsmodels.formula.api as smf

    # the same design (and missing-data policy, with its warning) as MELS
    design = build_design(formula, data, groups, re_formula=re_formula)
    frame = data.loc[design.row_index]
    slope_terms = [t for t in design.re_names if t != "Intercept"]
    if "Intercept" not in design.re_names:
        raise MELSInputError("mixedlm_va needs a random intercept in re_formula")
    sm_re = "~ " + " + ".join(slope_terms) if slope_terms else None
    model = smf.mixedlm(formula, frame, groups=frame[groups], re_formula=sm_re)
    fit = None
    # statsmodels' optimisers can stop at a non-finite likelihood (seen with L-BFGS on
    # numpy 2); take the first that gives a finite, converged maximum
    for method in ("bfgs", "lbfgs", "powell"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                trial = model.fit(reml=False, method=method)
            except (np.linalg.LinAlgError, ValueError):
                continue
        if np.isfinite(trial.llf) and trial.converged:
            fit = trial
            break
    if fit is None:
        raise MELSInputError("statsmodels MixedLM did not converge on these data")
    labels = design.group_labels
    zbar = np.add.reduceat(design.x_re, design.group_ptr[:-1], axis=0) / design.group_sizes[:, None]
    re_names = list(fit.cov_re.index)
    mean, sd = np.empty(len(labels)), np.empty(len(labels))
    for k, lab in enumerate(labels):
        eff = fit.random_effects[lab].reindex(re_names).to_numpy()
        cov = fit.random_effects_cov[lab].reindex(index=re_names, columns=re_names).to_numpy()
        mean[k] = zbar[k] @ eff
        sd[k] = np.sqrt(zbar[k] @ cov @ zbar[k])
    z = stats.norm.ppf(1 - alpha / 2)
    lo, hi = mean - z * sd, mean + z * sd
    out = pd.DataFrame(
        {"n": design.group_sizes, **measure_columns("mean", mean, sd, lo, hi, 0.0)},
        index=pd.Index(labels, name=groups),
    )
    out.attrs.update(fit=fit, llf=float(fit.llf), alpha=alpha)
    return out
