"""The random-effects structure of a MELS model.

For group j and unit i::

    y_ij = x_ij' beta + z_ij' u_j + e_ij                 mean function
    log sigma2_ij = w_ij' tau + h_ij' v_j                within-group (WS) variance
    (u_j, v_j) ~ N(0, Sigma),  Sigma = L L'              location first, then scale

u_j (q location effects, design z from ``re_formula``) and v_j (s scale
effects, design h from ``ws_re_formula``) have one joint covariance,
parametrised by its lower-triangular Cholesky factor L.  With a single random
intercept (q = 1) the location SD may vary with covariates through the
between-group (BS) variance function, log sigma_u,ij^2 = s_ij' alpha: then the
location effect of unit i is sigma_u,ij theta1 and L[0, 0] is fixed at 1.

``association`` says how the scale effects depend on the location effects:
``"none"`` zeroes the location-scale block of L, ``"linear"`` frees it and
``"quadratic"`` (q = s = 1 only) adds ``tau_q theta1^2`` to the scale effect.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import Association


@dataclass(frozen=True)
class RandomStructure:
    """Which random effects a model has and which entries of L are free.

    Parameters
    ----------
    location : tuple of str
        Terms of the random location effects (q of them).
    scale : tuple of str
        Terms of the random scale effects (s of them); empty without a random
        scale.
    bs : bool
        The location SD comes from the BS variance function (q = 1).
    association : {"none", "linear", "quadratic"}
    """

    location: tuple[str, ...] = ("Intercept",)
    scale: tuple[str, ...] = ("Intercept",)
    bs: bool = True
    association: Association = "linear"

    @property
    def q(self) -> int:
        return len(self.location)

    @property
    def s(self) -> int:
        return len(self.scale)

    @property
    def dim(self) -> int:
        """q + s: the dimension of (u, v)."""
        return self.q + self.s

    @property
    def labels(self) -> tuple[str, ...]:
        """Labels of the rows of L: location terms, then ``omega`` and
        ``omega:<term>`` for the scale effects."""
        scale = tuple("omega" if t == "Intercept" else f"omega:{t}" for t in self.scale)
        return (*self.location, *scale)

    @property
    def cov_labels(self) -> tuple[str, ...]:
        """Labels of the effects in ``cov_re``: ``location:<term>``, ``scale:<term>``."""
        return tuple(f"location:{t}" for t in self.location) + tuple(
            f"scale:{t}" for t in self.scale
        )

    @property
    def mixwild_view(self) -> bool:
        """A random intercept (BS function) and one random scale intercept, or no
        random scale: MixWILD's parametrisation (tau_l, tau_q, sigma_omega)."""
        return self.bs and self.scale in ((), ("Intercept",))

    @property
    def free_entries(self) -> tuple[tuple[int, int], ...]:
        """Free entries (row, column) of L, row by row."""
        q = self.q
        out = []
        for i in range(self.dim):
            for j in range(i + 1):
                if self.bs and i == j == 0:
                    continue
                if i >= q and j < q and self.association == "none":
                    continue
                out.append((i, j))
        return tuple(out)

    @property
    def exact_location(self) -> bool:
        """The location effects enter linearly given the scale effects, so they
        can be integrated exactly (every association but the quadratic)."""
        return self.association != "quadratic"
