"""Parameter layout of the multivariate MELS model: one place for the blocks,
their names and the maps from the flat vector to beta, tau, R and L."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .exceptions import MELSInputError
from .params import BlockLayout

#: covariance structures of the school effects
COV_STRUCTURES = ("unstructured", "independent", "no-location-scale", "uncorrelated-scales")


@dataclass(frozen=True)
class MultiLayout(BlockLayout):
    """Blocks ``beta`` and ``tau`` (per outcome, named ``outcome:term``),
    ``residual`` (the residual correlations' factor) and ``random`` (the
    lower-triangular entries of L, Sigma = L L', effects ordered
    location:outcome..., scale:outcome...).

    The residual correlation matrix is R = S A S with A = F F', F unit lower
    triangular with the ``residual`` entries below the diagonal, and S =
    diag(A)^(-1/2): any real entries give a valid correlation matrix.
    """

    outcomes: tuple[str, ...]
    mean_names: tuple[tuple[str, ...], ...]
    ws_names: tuple[tuple[str, ...], ...]
    cov_structure: str = "unstructured"
    residual_corr: bool = True
    random_scale: bool = True

    def __post_init__(self) -> None:
        if self.cov_structure not in COV_STRUCTURES:
            raise MELSInputError(
                f"cov_structure must be one of {', '.join(map(repr, COV_STRUCTURES))}, "
                f"got {self.cov_structure!r}"
            )
        if not self.random_scale and self.cov_structure in (
            "uncorrelated-scales",
            "no-location-scale",
        ):
            raise MELSInputError(f"cov_structure={self.cov_structure!r} needs random scale effects")

    @property
    def m(self) -> int:
        return len(self.outcomes)

    @property
    def labels(self) -> tuple[str, ...]:
        """The random effects: location:outcome..., scale:outcome..."""
        return tuple(f"location:{o}" for o in self.outcomes) + tuple(
            f"scale:{o}" for o in self.outcomes
        )

    @property
    def order(self) -> np.ndarray:
        """The effects in the order of the Cholesky factor's rows (Sigma = P Lp
        Lp' P'): scale effects first for "uncorrelated-scales", else as labelled."""
        m = self.m
        if self.cov_structure == "uncorrelated-scales":
            return np.r_[np.arange(m, 2 * m), np.arange(m)]
        return np.arange(2 * m)

    def factor_of(self, sigma: np.ndarray) -> np.ndarray:
        """The factor Lp (in :attr:`order`) of a positive definite ``sigma``."""
        o = self.order
        return np.linalg.cholesky(sigma[np.ix_(o, o)])

    @property
    def corr_entries(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.residual_corr:
            return np.array([], dtype=int), np.array([], dtype=int)
        return np.tril_indices(self.m, -1)

    @property
    def n_corr(self) -> int:
        return len(self.corr_entries[0])

    @property
    def l_entries(self) -> tuple[np.ndarray, np.ndarray]:
        """The free entries of L.  "independent": only entries between effects of
        the same outcome (Sigma block-diagonal by outcome); "no-location-scale":
        only location-location and scale-scale entries (no covariance between
        location and scale effects)."""
        rows, cols = np.tril_indices(2 * self.m)
        if self.cov_structure == "uncorrelated-scales":
            # the factor of the scale-first ordering with no entries between scale
            # effects: Sigma_vv diagonal, every other covariance free
            keep = (rows >= self.m) | (rows == cols)
        elif self.cov_structure == "independent":
            keep = rows % self.m == cols % self.m
        elif self.cov_structure == "no-location-scale":
            keep = (rows < self.m) == (cols < self.m)
        else:
            keep = np.ones(rows.size, dtype=bool)
        if not self.random_scale:
            keep &= (rows < self.m) & (cols < self.m)
        return rows[keep], cols[keep]

    def block_names(self) -> list[tuple[str, tuple[str, ...]]]:
        o = self.outcomes
        beta = tuple(f"{o[k]}:{t}" for k in range(self.m) for t in self.mean_names[k])
        tau = tuple(f"{o[k]}:{t}" for k in range(self.m) for t in self.ws_names[k])
        rows, cols = self.corr_entries
        resid = tuple(f"F({o[a]},{o[b]})" for a, b in zip(rows, cols, strict=True))
        lab = [self.labels[k] for k in self.order]
        rows, cols = self.l_entries
        rand = tuple(f"L({lab[a]},{lab[b]})" for a, b in zip(rows, cols, strict=True))
        return [("beta", beta), ("tau", tau), ("residual", resid), ("random", rand)]

    def unpack(self, theta: np.ndarray) -> dict:
        """beta and tau (lists per outcome), R (M x M), L (2M x 2M, Sigma = L L'
        in the labels' order; lower triangular unless the order is permuted)."""
        theta = np.asarray(theta, dtype=float)
        sl = self.slices
        beta, tau = [], []
        pos = sl["beta"].start
        for names in self.mean_names:
            beta.append(theta[pos : pos + len(names)])
            pos += len(names)
        pos = sl["tau"].start
        for names in self.ws_names:
            tau.append(theta[pos : pos + len(names)])
            pos += len(names)
        lp = np.zeros((2 * self.m, 2 * self.m))
        lp[self.l_entries] = theta[sl["random"]]
        L = np.empty_like(lp)
        L[self.order] = lp  # Sigma = L L' in the labels' order
        raw = theta[sl["residual"]]
        return dict(beta=beta, tau=tau, R=self.correlation(raw), R_raw=raw, L=L)

    def sign_flip(self, theta_raw: np.ndarray) -> np.ndarray:
        """Diagonal of the Jacobian from the optimiser's to the reported vector:
        the likelihood is symmetric under flipping a column of L, and the
        reported L has a non-negative diagonal."""
        flip = np.ones(self.k_params)
        start = self.slices["random"].start
        rows, cols = self.l_entries
        theta_raw = np.asarray(theta_raw, dtype=float)
        diag = {int(r): theta_raw[start + k] for k, r in enumerate(rows) if r == cols[k]}
        for k, c in enumerate(cols):
            if diag[int(c)] < 0:
                flip[start + k] = -1.0
        return flip

    def canonical(self, theta: np.ndarray) -> np.ndarray:
        """Reported parameters (L with a non-negative diagonal)."""
        return np.asarray(theta, dtype=float) * self.sign_flip(theta)

    def _unit_factor(self, raw: np.ndarray) -> np.ndarray:
        """F: unit lower triangular with the ``residual`` entries below the diagonal."""
        F = np.eye(self.m)
        F[self.corr_entries] = raw
        return F

    def correlation(self, raw: np.ndarray) -> np.ndarray:
        """The residual correlation matrix from the ``residual`` entries."""
        F = self._unit_factor(raw)
        A = F @ F.T
        s = 1.0 / np.sqrt(np.diag(A))
        return s[:, None] * A * s[None, :]

    def corr_jacobian(self, raw: np.ndarray) -> np.ndarray:
        """(n_corr, M, M): d R / d raw_k."""
        F = self._unit_factor(raw)
        dg = np.diag(F @ F.T)
        R = self.correlation(raw)
        out = np.zeros((self.n_corr, self.m, self.m))
        for k, (a, b) in enumerate(zip(*self.corr_entries, strict=True)):
            dF = np.zeros((self.m, self.m))
            dF[a, b] = 1.0
            dA = dF @ F.T + F @ dF.T
            dd = np.diag(dA) / dg
            out[k] = dA / np.sqrt(np.outer(dg, dg)) - 0.5 * R * (dd[:, None] + dd[None, :])
        return out

    def raw_correlation(self, R: np.ndarray) -> np.ndarray:
        """The ``residual`` entries of a correlation matrix R (inverse of
        :meth:`correlation`)."""
        C = np.linalg.cholesky(R)
        F = C / np.diag(C)[:, None]
        return F[self.corr_entries]
