"""Model options, validated in one place."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from .exceptions import MELSInputError

Association = Literal["none", "linear", "quadratic"]
Integration = Literal["auto", "exact-location", "aghq"]

#: kernel modes (see melsml._quad)
MODE_CLOSED_FORM, MODE_EXACT_LOCATION, MODE_AGHQ = 0, 1, 2


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
        "exact-location" integrates the location effect in closed form and
        only omega by 1-D adaptive quadrature (MODELS.md 4.2; not available
        with the quadratic association); "aghq" is the general 2-D adaptive
        Gauss-Hermite path (4.1); "auto" takes the first where valid.
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

    @property
    def mode(self) -> int:
        """The kernel mode that this specification uses."""
        if not self.random_scale:
            return MODE_CLOSED_FORM
        if self.association == "quadratic" or self.integration == "aghq":
            return MODE_AGHQ
        return MODE_EXACT_LOCATION

    @property
    def method(self) -> str:
        """A human description of the integration, for summaries."""
        if self.mode == MODE_CLOSED_FORM:
            return "closed form (no random scale)"
        if self.mode == MODE_EXACT_LOCATION:
            return f"exact location + adaptive Gauss-Hermite over omega ({self.n_points} points)"
        return f"adaptive Gauss-Hermite, 2-D rotated ({self.n_points}x{self.n_points} points)"
