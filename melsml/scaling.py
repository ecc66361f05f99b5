"""Internal standardisation: the same fit in any units.

The fit runs on a standardised copy of the design and the estimates and their
covariance are mapped back exactly.  The outcome is centred (when the mean
function has an intercept) and divided by its SD (when the BS and WS
functions, or the location effects, can absorb its scale).  Each
non-constant column of the mean, BS and WS designs is divided by its SD and,
when its design has an intercept, centred.  The columns of the random-effect
designs (location and scale) other than the intercept are divided by their
root mean square, not centred, so that the Cholesky factor keeps its shape.

In the standardised units the parameters theta* relate to the reported ones
by an affine map ``theta = offset + jacobian @ theta*``
(:meth:`Scaling.to_original`): so estimates, covariances, scores and the
log-likelihood (less N log s_y) transform exactly, and the optimiser, its
difference steps and its convergence tests see the same problem whatever the
data's units.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .formula import DesignMatrices
from .params import ParamLayout


@dataclass(frozen=True)
class ColumnMoments:
    """(Weighted) moments of a design's columns that combine over parts of the
    data: the total weight, the means, the sums of squared deviations (merged
    by Chan et al.'s pairwise update), and whether each column is constant
    (with its value)."""

    weight: float
    mean: np.ndarray
    m2: np.ndarray
    constant: np.ndarray
    first: np.ndarray

    @classmethod
    def of(cls, x: np.ndarray, w: np.ndarray | None = None) -> ColumnMoments:
        k = x.shape[1]
        mean, m2 = np.zeros(k), np.zeros(k)
        constant = np.ones(k, dtype=bool)
        first = x[0].astype(float) if len(x) else np.zeros(k)
        total = float(len(x)) if w is None else float(w.sum())
        for j in range(k):
            col = x[:, j]
            mean[j] = col.mean() if w is None else np.dot(w, col) / total
            if col.size and not (col == col[0]).all():
                constant[j] = False
                dev = (col - mean[j]) ** 2
                m2[j] = dev.sum() if w is None else np.dot(w, dev)
        return cls(total, mean, m2, constant, first)

    def merge(self, other: ColumnMoments) -> ColumnMoments:
        """The moments of both parts together."""
        if other.weight == 0:
            return self
        if self.weight == 0:
            return other
        total = self.weight + other.weight
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.weight / total)
        m2 = self.m2 + other.m2 + delta**2 * (self.weight * other.weight / total)
        constant = self.constant & other.constant & (self.first == other.first)
        m2 = np.where(constant, 0.0, m2)
        return ColumnMoments(total, mean, m2, constant, self.first)

    @property
    def sd(self) -> np.ndarray:
        """The SD of each column, exactly 0 for a constant column."""
        return np.where(self.constant, 0.0, np.sqrt(self.m2 / max(self.weight, 1e-300)))

    @property
    def rms_scale(self) -> np.ndarray:
        """Root mean square of each column; 1 for constant columns."""
        rms = np.sqrt(self.m2 / max(self.weight, 1e-300) + self.mean**2)
        return np.where(~self.constant & (rms > 0), rms, 1.0)


@dataclass(frozen=True)
class _Block:
    """Centres, scales and the constant column of one fixed-effect design."""

    center: np.ndarray
    scale: np.ndarray
    const: int | None  # position of the constant (intercept) column
    const_value: float

    @classmethod
    def of(cls, x: np.ndarray, w: np.ndarray | None = None) -> _Block:
        return cls.from_moments(ColumnMoments.of(x, w))

    @classmethod
    def from_moments(cls, mom: ColumnMoments) -> _Block:
        k = mom.mean.size
        sd = mom.sd
        constant = [j for j in range(k) if sd[j] == 0.0]
        const = constant[0] if constant else None
        center = mom.mean.copy() if const is not None else np.zeros(k)
        scale = np.where(sd > 0, sd, 1.0)
        center[constant] = 0.0
        return cls(center, scale, const, float(mom.first[const]) if const is not None else 1.0)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """(x - center) / scale in one new column-major array (the layout the
        likelihood reads, so that it needs no copy of its own)."""
        out = np.empty(x.shape, order="F")
        np.subtract(x, self.center, out=out)
        out /= self.scale
        return out

    def back(self, coef: np.ndarray, shift: float, factor: float) -> np.ndarray:
        """Coefficients on the original design of the linear predictor
        ``factor * (X* coef) + shift`` (X* the standardised design)."""
        out = factor * coef / self.scale
        if self.const is not None:
            c0 = self.const_value
            out[self.const] = (
                factor * (coef[self.const] - float(np.sum(coef * self.center / self.scale)) / c0)
                + shift / c0
            )
        return out


def _divided(x: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``x / scale`` as a new C-contiguous array, or ``x`` itself when every scale
    is 1 (a random intercept's column of ones is not copied)."""
    if np.all(scale == 1.0) and x.flags.c_contiguous:
        return x
    return np.ascontiguousarray(x / scale)


def design_moments(design: DesignMatrices) -> dict[str, ColumnMoments]:
    """The (row-weighted) column moments of the outcome and of every design block."""
    w = design.row_weights
    blocks = {
        "y": design.y[:, None],
        "mean": design.x_mean,
        "bs": design.x_bs,
        "ws": design.x_ws,
        "re": design.x_re,
        "scale": design.x_scale,
    }
    return {name: ColumnMoments.of(x, w) for name, x in blocks.items()}


@dataclass(frozen=True)
class Scaling:
    """How a design was standardised, and the map of parameters back."""

    y_center: float
    y_scale: float
    mean: _Block
    bs: _Block
    ws: _Block
    re_scale: np.ndarray
    scale_scale: np.ndarray

    @classmethod
    def of(cls, design: DesignMatrices) -> Scaling:
        """Standardisation of ``design``; with weights the moments are weighted,
        so that frequency weights standardise like duplicated rows."""
        return cls.from_moments(design_moments(design), design.re_names)

    @classmethod
    def from_moments(cls, moments: dict[str, ColumnMoments], re_names) -> Scaling:
        """Standardisation from the moments of every block (:func:`design_moments`,
        merged over the parts of the data)."""
        mean, bs, ws = (_Block.from_moments(moments[b]) for b in ("mean", "bs", "ws"))
        y = moments["y"]
        sd = float(y.sd[0])
        y_scale = sd if sd > 0 else 1.0
        # the outcome's scale is absorbed by the intercepts of the variance
        # functions (BS, or the location effects' factor) and of the WS function
        location_absorbs = bs.const is not None or tuple(re_names) != ("Intercept",)
        if ws.const is None or not location_absorbs:
            y_scale = 1.0
        y_center = float(y.mean[0]) if mean.const is not None else 0.0
        return cls(
            y_center, y_scale, mean, bs, ws, moments["re"].rms_scale, moments["scale"].rms_scale
        )

    def design(self, design: DesignMatrices) -> DesignMatrices:
        """The standardised copy of ``design``."""
        return replace(
            design,
            y=np.ascontiguousarray((design.y - self.y_center) / self.y_scale),
            x_mean=self.mean.apply(design.x_mean),
            x_bs=self.bs.apply(design.x_bs),
            x_ws=self.ws.apply(design.x_ws),
            x_re=_divided(design.x_re, self.re_scale),
            x_scale=_divided(design.x_scale, self.scale_scale),
        )

    @property
    def log_jacobian_per_obs(self) -> float:
        """log |dy*/dy|: llf = llf* - n_obs log s_y."""
        return float(np.log(self.y_scale))

    def to_original(self, theta_std: np.ndarray, layout: ParamLayout) -> np.ndarray:
        """Parameters in the data's units from those of the standardised fit."""
        t = np.asarray(theta_std, dtype=float)
        sl = layout.slices
        out = t.copy()
        log_s2 = 2.0 * np.log(self.y_scale)
        out[sl["beta"]] = self.mean.back(t[sl["beta"]], self.y_center, self.y_scale)
        if layout.alpha:
            out[sl["alpha"]] = self.bs.back(t[sl["alpha"]], log_s2, 1.0)
        out[sl["tau"]] = self.ws.back(t[sl["tau"]], log_s2, 1.0)
        start = sl["random"].start
        q = layout.q
        bs = layout.structure.bs
        for c, target in enumerate(layout.targets):
            if target == "tau_q":
                continue
            row = target[0]
            if row < q:
                factor = 1.0 if bs else self.y_scale / self.re_scale[row]
            else:
                factor = 1.0 / self.scale_scale[row - q]
            out[start + c] = t[start + c] * factor
        return out

    def affine(self, layout: ParamLayout) -> tuple[np.ndarray, np.ndarray]:
        """(offset, jacobian) with theta = offset + jacobian @ theta*."""
        k = layout.k_params
        offset = self.to_original(np.zeros(k), layout)
        jac = np.empty((k, k))
        for i in range(k):
            e = np.zeros(k)
            e[i] = 1.0
            jac[:, i] = self.to_original(e, layout) - offset
        return offset, jac

    def from_original(self, theta: np.ndarray, layout: ParamLayout) -> np.ndarray:
        """Parameters of the standardised fit from those in the data's units."""
        offset, jac = self.affine(layout)
        return np.linalg.solve(jac, np.asarray(theta, dtype=float) - offset)
