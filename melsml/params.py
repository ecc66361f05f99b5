"""The one parameter layout of a MELS model, built from its random-effects structure.

========  ==============================================================
block     meaning
========  ==============================================================
beta      mean function coefficients (MixWILD BETA)
thresholds  ordinal outcomes only: the first threshold, then the logs of the
          increments (see :mod:`melsml.ordinal`)
alpha     between-group log-variance coefficients, log sigma_u^2 = s'alpha
          (MixWILD ALPHA; MIXREGLS calls them delta); only with a single
          random intercept
tau       within-group log-variance coefficients, log sigma_e^2 = w'tau
          (MixWILD TAU; MIXREGLS calls them alpha)
random    the free entries of the Cholesky factor L of the covariance of
          (u, v), location first (see :mod:`melsml.structure`)
========  ==============================================================

Every entry of the vector is unconstrained.  The random block is named in
MixWILD's terms where MixWILD has the model (a random intercept with a BS
function and one random scale intercept): ``tau_l`` = L[1, 0] ("Loc Eff"),
``sigma_omega`` = L[1, 1] ("Std Dev") and, with the quadratic association,
``tau_q``, so that ``omega = tau_l theta1 + tau_q theta1^2 + sigma_omega
theta2``.  Otherwise the entries are named ``L(row,col)`` with the labels of
:attr:`melsml.structure.RandomStructure.labels`.  Each column of L may change
sign without changing the likelihood; reported factors have a non-negative
diagonal.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd

from .exceptions import MELSInputError
from .structure import RandomStructure

BLOCKS = ("beta", "thresholds", "alpha", "tau", "random")
#: MixWILD's names of the random block, in its order
MIXWILD_RANDOM = ("tau_l", "tau_q", "sigma_omega")


def as_param_vector(params, index: pd.MultiIndex, name: str = "params") -> np.ndarray:
    """A parameter vector in ``index`` order from a Series (matched by name) or an
    array, with an error that names what is missing or wrong."""
    if isinstance(params, pd.Series):
        try:
            params = params.reindex(index)
        except Exception as exc:  # pragma: no cover - defensive
            raise MELSInputError(f"{name} does not match the model's parameters") from exc
        if params.isna().any():
            missing = [f"{b}:{t}" for (b, t) in params.index[params.isna()]]
            raise MELSInputError(f"{name} lacks values for {', '.join(missing)}")
    arr = np.asarray(params, dtype=float)
    if arr.shape != (len(index),):
        raise MELSInputError(f"{name} must have {len(index)} values, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise MELSInputError(f"{name} has non-finite values")
    return arr


class BlockLayout:
    """Sizes, slices and the (block, term) index of a flat vector of named blocks,
    from ``block_names()``: (block, names of its entries) in order."""

    def block_names(self) -> list[tuple[str, tuple[str, ...]]]:  # pragma: no cover
        raise NotImplementedError

    # the layouts are frozen: their sizes and slices are worked out once (they are
    # read at every likelihood evaluation)
    @cached_property
    def sizes(self) -> dict[str, int]:
        return {b: len(names) for b, names in self.block_names()}

    @cached_property
    def k_params(self) -> int:
        return sum(self.sizes.values())

    @cached_property
    def slices(self) -> dict[str, slice]:
        out, start = {}, 0
        for b, k in self.sizes.items():
            out[b] = slice(start, start + k)
            start += k
        return out

    @property
    def index(self) -> pd.MultiIndex:
        """(block, term) index of the flat vector."""
        tuples = [(b, t) for b, names in self.block_names() for t in names]
        return pd.MultiIndex.from_tuples(tuples, names=["block", "term"])


@dataclass(frozen=True)
class ParamLayout(BlockLayout):
    """Names and positions of the parameter blocks in the flat vector.

    Attributes
    ----------
    beta, alpha, tau, random : tuple of str
        Names of each block's entries.
    structure : RandomStructure
    targets : tuple
        What each entry of the random block is: an entry ``(row, col)`` of L,
        or ``"tau_q"``.
    """

    beta: tuple[str, ...]
    alpha: tuple[str, ...]
    tau: tuple[str, ...]
    random: tuple[str, ...]
    structure: RandomStructure
    targets: tuple = ()
    thresholds: tuple[str, ...] = ()

    @classmethod
    def from_structure(
        cls, mean_names, bs_names, ws_names, structure: RandomStructure, thresholds=()
    ) -> ParamLayout:
        """The layout for given term names and random-effects structure."""
        entries = list(structure.free_entries)
        if structure.mixwild_view:
            by_entry = {(1, 0): "tau_l", (1, 1): "sigma_omega"}
            targets: list = list(entries)
            names = [by_entry[e] for e in entries]
            if structure.association == "quadratic":
                pos = 1 if names and names[0] == "tau_l" else 0
                names.insert(pos, "tau_q")
                targets.insert(pos, "tau_q")
        else:
            if structure.association == "quadratic":
                raise ValueError("the quadratic association needs q = s = 1")
            labels = structure.labels
            names = [f"L({labels[i]},{labels[j]})" for i, j in entries]
            targets = list(entries)
        alpha = tuple(bs_names) if structure.bs else ()
        return cls(
            tuple(mean_names),
            alpha,
            tuple(ws_names),
            tuple(names),
            structure,
            tuple(targets),
            tuple(thresholds),
        )

    # --- sizes and names ------------------------------------------------------------
    @property
    def q(self) -> int:
        return self.structure.q

    @property
    def s(self) -> int:
        return self.structure.s

    @property
    def mixwild_view(self) -> bool:
        """The random block carries MixWILD's names (tau_l, tau_q, sigma_omega)."""
        return self.structure.mixwild_view

    def block_names(self) -> list[tuple[str, tuple[str, ...]]]:
        return [(b, getattr(self, b)) for b in BLOCKS]

    @property
    def chol_entries(self) -> tuple[tuple[int, int], ...]:
        """The entries of L in the random block, in order."""
        return tuple(t for t in self.targets if t != "tau_q")

    def position(self, name: str) -> int | None:
        """Position of a random-block parameter in the flat vector, or None."""
        if name not in self.random:
            return None
        return self.slices["random"].start + self.random.index(name)

    # --- values ---------------------------------------------------------------------
    def unpack(self, theta: np.ndarray) -> dict[str, np.ndarray | float]:
        """Split the flat vector into blocks, with ``L`` (the full factor) and
        ``tau_q``; in MixWILD's view also ``tau_l`` and ``sigma_omega`` (0 when
        absent)."""
        theta = np.asarray(theta, dtype=float)
        if theta.shape != (self.k_params,):
            raise ValueError(f"expected {self.k_params} parameters, got shape {theta.shape}")
        sl = self.slices
        out: dict[str, np.ndarray | float] = {
            b: theta[sl[b]] for b in ("beta", "thresholds", "alpha", "tau")
        }
        out["L"] = self.chol_matrix(theta)
        pos = self.position("tau_q")
        out["tau_q"] = float(theta[pos]) if pos is not None else 0.0
        if self.mixwild_view:
            L = out["L"]
            out["tau_l"] = float(L[1, 0]) if self.s else 0.0
            out["sigma_omega"] = float(L[1, 1]) if self.s else 0.0
        return out

    def chol_matrix(self, theta: np.ndarray) -> np.ndarray:
        """The (q + s) x (q + s) lower-triangular factor L (L[0, 0] = 1 with a BS
        function)."""
        d = self.structure.dim
        mat = np.zeros((d, d))
        if self.structure.bs:
            mat[0, 0] = 1.0
        keep, rows, cols = self._chol_entries
        mat[rows, cols] = np.asarray(theta, dtype=float)[self.slices["random"]][keep]
        return mat

    @cached_property
    def _chol_entries(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Positions in the random block of the entries of L, and their rows and
        columns."""
        keep = [c for c, t in enumerate(self.targets) if t != "tau_q"]
        rows = [self.targets[c][0] for c in keep]
        cols = [self.targets[c][1] for c in keep]
        return np.array(keep, dtype=int), np.array(rows, dtype=int), np.array(cols, dtype=int)

    def chol_gradient(self, dL: np.ndarray, d_tau_q=None) -> np.ndarray:
        """Gradient in the random block from a gradient in the entries of L.

        ``dL`` has shape (..., d, d); the result (..., k_random)."""
        dL = np.asarray(dL)
        keep, rows, cols = self._chol_entries
        out = np.zeros((*dL.shape[:-2], len(self.targets)))
        out[..., keep] = dL[..., rows, cols]
        if len(keep) < len(self.targets) and d_tau_q is not None:
            out[..., self.targets.index("tau_q")] = d_tau_q
        return out

    @property
    def boundary_positions(self) -> tuple[int, ...]:
        """Parameters whose value 0 is a boundary: the free diagonal entries of L."""
        start = self.slices["random"].start
        return tuple(start + c for c, t in enumerate(self.targets) if t != "tau_q" and t[0] == t[1])

    def canonical(self, theta: np.ndarray) -> np.ndarray:
        """Reported parameters: a Cholesky factor with a non-negative diagonal (the
        likelihood is symmetric under flipping a column of L)."""
        return np.asarray(theta, dtype=float) * self.sign_flip(theta)

    def sign_flip(self, theta_raw: np.ndarray) -> np.ndarray:
        """Diagonal of the Jacobian from the optimiser's to the reported vector."""
        flip = np.ones(self.k_params)
        theta_raw = np.asarray(theta_raw, dtype=float)
        start = self.slices["random"].start
        diag = {
            t[1]: theta_raw[start + c]
            for c, t in enumerate(self.targets)
            if t != "tau_q" and t[0] == t[1]
        }
        for c, t in enumerate(self.targets):
            if t != "tau_q" and diag.get(t[1], 1.0) < 0:
                flip[start + c] = -1.0
        return flip
