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

    @classmethod
    def for_model(cls, mean_names, bs_names, ws_names, options: ModelOptions) -> ParamLayout:
        """Layout for given term names and model options."""
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
        for name in RANDOM_ORDER:
            pos = self.random_position(name)
            out[name] = float(theta[pos]) if pos is not None else 0.0
        return out

    def random_jacobian(self) -> np.ndarray:
        """(3, k_random) map from the kernel's (tau_l, tau_q, sigma_omega) gradient."""
        jac = np.zeros((3, len(self.random)))
        for c, name in enumerate(self.random):
            jac[RANDOM_ORDER.index(name), c] = 1.0
        return jac

    def canonical(self, theta: np.ndarray) -> np.ndarray:
        """Reported parameters: sigma_omega >= 0 (the likelihood is symmetric)."""
        theta = np.array(theta, dtype=float)
        pos = self.random_position("sigma_omega")
        if pos is not None:
            theta[pos] = abs(theta[pos])
        return theta

    def sign_flip(self, theta_raw: np.ndarray) -> np.ndarray:
        """Diagonal of the Jacobian from the optimiser's to the reported vector."""
        flip = np.ones(self.k_params)
        pos = self.random_position("sigma_omega")
        if pos is not None and theta_raw[pos] < 0:
            flip[pos] = -1.0
        return flip
