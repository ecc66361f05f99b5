"""The one parameter layout of a MELS model.

Parameters are kept in MixWILD's parametrisation, which is unconstrained:

========  ==============================================================
block     meaning
========  ==============================================================
beta      mean function coefficients (MixWILD BETA)
alpha     between-group log-variance coefficients, log sigma_u^2 = s'alpha
          (MixWILD ALPHA; MIXREGLS calls them delta)
tau       within-group log-variance coefficients, log sigma_e^2 = w'tau
          (MixWILD TAU; MIXREGLS calls them alpha)
random    ``tau_l`` (linear location effect on the WS log-variance, "Loc
          Eff"), ``tau_q`` (quadratic), ``sigma_omega`` (random scale SD,
          "Std Dev")
========  ==============================================================

``omega = tau_l theta1 + tau_q theta1^2 + sigma_omega theta2`` with theta1,
theta2 independent N(0, 1).  The likelihood is symmetric in the sign of
sigma_omega, so it is optimised freely and reported as ``abs(sigma_omega)``.

With several random location effects (``re_formula`` other than ``"~ 1"``)
there is no ``alpha`` block: the random block holds the lower-triangular
Cholesky factor L of the covariance of (u, omega), omega last, row by row,
named ``L(row,col)`` with the random-effect terms and ``omega`` as labels
(``L(omega,omega)`` plays the part of sigma_omega).  Each column of L may
change sign without changing the likelihood; reported factors have a
positive diagonal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .config import ModelOptions

RANDOM_ORDER = ("tau_l", "tau_q", "sigma_omega")
BLOCKS = ("beta", "alpha", "tau", "random")


@dataclass(frozen=True)
class ParamLayout:
    """Names and positions of the parameter blocks in the flat vector."""

    beta: tuple[str, ...]
    alpha: tuple[str, ...]
    tau: tuple[str, ...]
    random: tuple[str, ...]
    re_terms: tuple[str, ...] = ("Intercept",)
    chol_entries: tuple[tuple[int, int], ...] = ()

    @property
    def is_chol(self) -> bool:
        """The random block is a Cholesky factor (several location effects)."""
        return self.re_terms != ("Intercept",)

    @property
    def q(self) -> int:
        return len(self.re_terms)

    @classmethod
    def for_model(
        cls, mean_names, bs_names, ws_names, options: ModelOptions, re_names=("Intercept",)
    ) -> ParamLayout:
        """Layout for given term names and model options."""
        re_names = tuple(re_names)
        if re_names != ("Intercept",):
            q = len(re_names)
            labels = (*re_names, "omega")
            entries = [(i, j) for i in range(q) for j in range(i + 1)]
            if options.random_scale:
                if options.association == "linear":
                    entries += [(q, j) for j in range(q)]
                entries.append((q, q))
            names = tuple(f"L({labels[i]},{labels[j]})" for i, j in entries)
            return cls(tuple(mean_names), (), tuple(ws_names), names, re_names, tuple(entries))
        if not options.random_scale:
            random: tuple[str, ...] = ()
        elif options.association == "none":
            random = ("sigma_omega",)
        elif options.association == "linear":
            random = ("tau_l", "sigma_omega")
        else:
            random = ("tau_l", "tau_q", "sigma_omega")
        return cls(tuple(mean_names), tuple(bs_names), tuple(ws_names), random)

    @property
    def sizes(self) -> dict[str, int]:
        return {b: len(getattr(self, b)) for b in BLOCKS}

    @property
    def k_params(self) -> int:
        return sum(self.sizes.values())

    @property
    def slices(self) -> dict[str, slice]:
        out, start = {}, 0
        for b, k in self.sizes.items():
            out[b] = slice(start, start + k)
            start += k
        return out

    @property
    def index(self) -> pd.MultiIndex:
        """(block, term) index of the flat vector."""
        tuples = [(b, t) for b in BLOCKS for t in getattr(self, b)]
        return pd.MultiIndex.from_tuples(tuples, names=["block", "term"])

    def random_position(self, name: str) -> int | None:
        """Position of a random-effect parameter in the flat vector, or None."""
        if name not in self.random:
            return None
        return self.slices["random"].start + self.random.index(name)

    def unpack(self, theta: np.ndarray) -> dict[str, np.ndarray | float]:
        """Split the flat vector into blocks; absent random parameters are 0."""
        theta = np.asarray(theta, dtype=float)
        if theta.shape != (self.k_params,):
            raise ValueError(f"expected {self.k_params} parameters, got shape {theta.shape}")
        sl = self.slices
        out: dict[str, np.ndarray | float] = {b: theta[sl[b]] for b in ("beta", "alpha", "tau")}
        if self.is_chol:
            return out
        for name in RANDOM_ORDER:
            pos = self.random_position(name)
            out[name] = float(theta[pos]) if pos is not None else 0.0
        return out

    @property
    def dim_chol(self) -> int:
        """Size of L: q + 1 with a random scale, q without."""
        return max(max(i, j) for i, j in self.chol_entries) + 1

    def chol_matrix(self, theta: np.ndarray) -> np.ndarray:
        """The lower-triangular factor L from the flat vector (Cholesky layouts)."""
        d = self.dim_chol
        mat = np.zeros((d, d))
        vals = np.asarray(theta, dtype=float)[self.slices["random"]]
        for (i, j), v in zip(self.chol_entries, vals, strict=True):
            mat[i, j] = v
        return mat

    def chol_gradient(self, dL: np.ndarray) -> np.ndarray:
        """Gradient in the random block from a gradient in the entries of L."""
        return np.array([dL[i, j] for i, j in self.chol_entries])

    @property
    def boundary_positions(self) -> tuple[int, ...]:
        """Parameters whose value 0 is a boundary: SDs and Cholesky diagonals."""
        start = self.slices["random"].start
        if self.is_chol:
            return tuple(start + c for c, (i, j) in enumerate(self.chol_entries) if i == j)
        pos = self.random_position("sigma_omega")
        return () if pos is None else (pos,)

    def random_jacobian(self) -> np.ndarray:
        """(3, k_random) map from the kernel's (tau_l, tau_q, sigma_omega) gradient."""
        jac = np.zeros((3, len(self.random)))
        for c, name in enumerate(self.random):
            jac[RANDOM_ORDER.index(name), c] = 1.0
        return jac

    def canonical(self, theta: np.ndarray) -> np.ndarray:
        """Reported parameters: sigma_omega >= 0, or a Cholesky factor with a
        non-negative diagonal (the likelihood is symmetric under these flips)."""
        return np.asarray(theta, dtype=float) * self.sign_flip(theta)

    def sign_flip(self, theta_raw: np.ndarray) -> np.ndarray:
        """Diagonal of the Jacobian from the optimiser's to the reported vector."""
        flip = np.ones(self.k_params)
        theta_raw = np.asarray(theta_raw, dtype=float)
        if self.is_chol:
            start = self.slices["random"].start
            diag = {j: theta_raw[start + c] for c, (i, j) in enumerate(self.chol_entries) if i == j}
            for c, (_, j) in enumerate(self.chol_entries):
                if diag.get(j, 1.0) < 0:
                    flip[start + c] = -1.0
            return flip
        pos = self.random_position("sigma_omega")
        if pos is not None and theta_raw[pos] < 0:
            flip[pos] = -1.0
        return flip
