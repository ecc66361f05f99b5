"""Model options, validated in one place."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from .exceptions import MELSInputError

Association = Literal["none", "linear", "quadratic"]
Integration = Literal["auto", "exact-location", "aghq"]


def _check_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise MELSInputError(
            f"unknown {name} {value!r}; allowed values: {', '.join(repr(a) for a in allowed)}"
        )


@dataclass(frozen=True)
class ModelOptions:
    """How the model is specified and integrated.

    Parameters
    ----------
    random_scale : bool
        Include the random scale effect omega_j (False: heteroscedastic or
        traditional random-intercept model, closed-form likelihood).
    association : {"none", "linear", "quadratic"}
        How omega_j depends on the standardised location effect theta1:
        ``omega = tau_l theta1 [+ tau_q theta1^2] + sigma_omega theta2``.
    integration : {"auto", "exact-location", "aghq"}
        "exact-location" integrates the location effects in closed form and
        only the scale effects by adaptive quadrature (not available with the
        quadratic association); "aghq" integrates all random effects by
        adaptive Gauss-Hermite quadrature; "auto" takes the first where valid.
        :func:`melsml.plan.plan` decides.
    n_points : int
        Quadrature points per dimension (default 11, as MixWILD).
    """

    random_scale: bool = True
    association: Association = "linear"
    integration: Integration = "auto"
    n_points: int = 11

    def __post_init__(self) -> None:
        if not isinstance(self.random_scale, bool):
            raise MELSInputError(f"random_scale must be True or False, got {self.random_scale!r}")
        _check_choice("association", self.association, get_args(Association))
        _check_choice("integration", self.integration, get_args(Integration))
        if (
            isinstance(self.n_points, bool)
            or not isinstance(self.n_points, int)
            or not (1 <= self.n_points <= 101)
        ):
            raise MELSInputError(
                f"n_points must be an integer from 1 to 101, got {self.n_points!r}"
            )
        if self.association == "quadratic" and self.integration == "exact-location":
            raise MELSInputError(
                "integration='exact-location' needs association 'none' or 'linear'; "
                "use integration='aghq' (or 'auto') with association='quadratic'"
            )
