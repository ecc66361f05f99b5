"""Predictions from a fitted MELS model: means, residual variances and SDs.

For unit i of group j, with the random effects (u_j, v_j):

* mean: x_ij' beta + z_ij' u_j; the conditional (school-specific) prediction
  uses the posterior mean of u_j, the population prediction u_j = 0;
* residual variance: exp(w_ij' tau + h_ij' v_j); the conditional prediction
  is its posterior mean E[exp(w'tau + h'v_j) | y_j], the population
  prediction its mean over schools, exp(w'tau + h' Sigma_vv h / 2);
* SD: the square root of the predicted variance.

New data are encoded with the formulas' stored specifications, so stateful
transforms (``center``, ``scale``, ``poly``, ``bs``, categorical levels)
reuse the fitted data's state.  Rows of unseen groups get the population
prediction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from .exceptions import MELSInputError
from .formula import encode_rows
from .posterior import posterior_grid

if TYPE_CHECKING:  # pragma: no cover
    from .results import MELSResults

Kind = Literal["mean", "variance", "sd"]


def predict(
    res: MELSResults,
    exog: pd.DataFrame | None = None,
    *,
    kind: Kind = "mean",
    conditional: bool = True,
) -> pd.Series:
    """Predicted means, residual variances or SDs (see the module docstring).

    Parameters
    ----------
    res : MELSResults
    exog : DataFrame, optional
        New data with the formulas' columns (and the groups column for
        conditional predictions); default: the fitted rows.
    kind : {"mean", "variance", "sd"}
    conditional : bool
        School-specific (posterior) predictions, or population ones.

    Returns
    -------
    Series indexed like ``exog`` (or the fitted data's rows).
    """
    if kind not in ("mean", "variance", "sd"):
        raise MELSInputError(f"unknown kind {kind!r}; allowed values: 'mean', 'variance', 'sd'")
    state = res.fit_state
    d, lay = state.design, state.layout
    p = state.params()
    if exog is None:
        rows = dict(x_mean=d.x_mean, x_bs=d.x_bs, x_ws=d.x_ws, x_re=d.x_re, x_scale=d.x_scale)
        gidx = d.group_index
        index = d.row_index
    else:
        if not isinstance(exog, pd.DataFrame):
            raise MELSInputError(f"exog must be a pandas DataFrame, got {type(exog).__name__}")
        rows = encode_rows(d, exog)
        index = exog.index
        if conditional:
            if d.groups not in exog:
                raise MELSInputError(
                    f"conditional predictions need the groups column {d.groups!r} in exog "
                    "(or use conditional=False)"
                )
            lookup = pd.Series(np.arange(d.n_groups), index=pd.Index(d.group_labels))
            gidx = exog[d.groups].map(lookup).to_numpy()
            gidx = np.where(pd.isna(gidx), -1, gidx).astype(int)
        else:
            gidx = np.full(len(exog), -1)
    if not conditional:
        gidx = np.full(len(index), -1)
    seen = gidx >= 0
    st = lay.structure
    if kind == "mean":
        out = rows["x_mean"] @ p["beta"]
        if seen.any():
            grid = posterior_grid(state)
            eu = np.einsum("jp,jpa->ja", grid.w, grid.mu)  # posterior means of u
            z = np.exp(0.5 * rows["x_bs"] @ p["alpha"])[:, None] if st.bs else rows["x_re"]
            out = out + np.where(seen, np.sum(z * eu[np.maximum(gidx, 0)], axis=1), 0.0)
        return pd.Series(out, index=index, name="predicted_mean")
    eta = rows["x_ws"] @ p["tau"]
    h = rows["x_scale"][:, : st.s]
    var = np.exp(eta)
    if st.s:
        L = p["L"]
        sigma = L @ L.T
        svv = sigma[st.q :, st.q :]
        if st.association == "quadratic":
            raise MELSInputError(
                "variance predictions are not available with the quadratic association"
            )
        pop = np.exp(0.5 * np.einsum("ia,ab,ib->i", h, svv, h))
        factor = pop
        if seen.any():
            grid = posterior_grid(state)
            factor = pop.copy()
            # E[exp(h_i'v_j) | y_j] on group j's grid, one group at a time
            order = np.argsort(gidx, kind="stable")
            groups, starts = np.unique(gidx[order], return_index=True)
            bounds = np.append(starts, len(order))
            for g, a, b in zip(groups, bounds[:-1], bounds[1:], strict=True):
                if g < 0:
                    continue
                idx = order[a:b]
                factor[idx] = grid.w[g] @ np.exp(grid.v[g] @ h[idx].T)
        var = var * factor
    if kind == "sd":
        return pd.Series(np.sqrt(var), index=index, name="predicted_sd")
    return pd.Series(var, index=index, name="predicted_variance")
