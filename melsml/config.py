"""Model options, validated in one place."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from .exceptions import MELSInputError

Association = Literal["none", "linear", "quadratic"]
Integration = Literal["auto", "exact-location", "aghq"]
WeightType = Literal["frequency", "sampling"]
WeightScaling = Literal["size", "effective", "none"]
Family = Literal["gaussian", "ordinal"]
Link = Literal["probit", "logit"]


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
    weight_type : {"frequency", "sampling"}
        How group weights are read: frequency weights (a group of weight w
        counts as w identical groups) or sampling weights (inverse selection
        probabilities: the weighted pseudo-likelihood, with sandwich standard
        errors).  Applies to group and unit weights alike.
    family : {"gaussian", "ordinal"}
        The outcome: Gaussian (possibly censored) or ordinal (see
        :mod:`melsml.ordinal`).
    link : {"probit", "logit"}
        Ordinal outcomes: the latent residual's distribution.
    weight_scaling : {"size", "effective", "none"}
        Sampling unit weights only: how they are scaled within each group
        (Rabe-Hesketh & Skrondal 2006): to sum to the group's size (method 1,
        the default), to its effective size (sum w)^2 / sum w^2 (method 2), or
        not at all.
    n_points : int, optional
        Gauss-Hermite points per dimension of the quadrature, 5 to 101.
        Default (None): 11 (MixWILD's default), except for the exact-location
        plan over several scale effects: 7 per dimension for two, 5 for three
        or more (:func:`default_points`).
        Fewer than 5 are refused: the score is the quadrature's estimate of
        the exact score, not the derivative of the adaptive rule itself, and
        with so few points the two differ enough to stall the fit.
    """

    random_scale: bool = True
    association: Association = "linear"
    integration: Integration = "auto"
    n_points: int | None = None
    weight_type: WeightType = "frequency"
    weight_scaling: WeightScaling = "size"
    family: Family = "gaussian"
    link: Link = "probit"

    def __post_init__(self) -> None:
        if not isinstance(self.random_scale, bool):
            raise MELSInputError(f"random_scale must be True or False, got {self.random_scale!r}")
        _check_choice("association", self.association, get_args(Association))
        _check_choice("integration", self.integration, get_args(Integration))
        _check_choice("weight_type", self.weight_type, get_args(WeightType))
        _check_choice("weight_scaling", self.weight_scaling, get_args(WeightScaling))
        _check_choice("family", self.family, get_args(Family))
        _check_choice("link", self.link, get_args(Link))
        if self.n_points is not None and (
            isinstance(self.n_points, bool)
            or not isinstance(self.n_points, int)
            or not (5 <= self.n_points <= 101)
        ):
            raise MELSInputError(
                f"n_points must be an integer from 5 to 101 (or None for the default), got "
                f"{self.n_points!r}: with fewer points the score, a quadrature estimate of "
                "the exact score, is too far from the derivative of the approximate "
                "log-likelihood for the fit to converge"
            )
        if self.association == "quadratic" and self.integration == "exact-location":
            raise MELSInputError(
                "integration='exact-location' needs association 'none' or 'linear'; "
                "use integration='aghq' (or 'auto') with association='quadratic'"
            )


#: Points per dimension of the cheaper rule that runs the quasi-Newton phase of
#: fits whose every node visits every unit (censored and ordinal outcomes);
#: Newton steps and the Hessian then use the model's own rule.
COARSE_POINTS = 5


def default_points(dim: int, method: str = "exact-location") -> int:
    """Default Gauss-Hermite points per dimension of a ``dim``-D quadrature.

    11 for the full AGHQ plan and for 1-D; for the exact-location plan over
    several scale effects, 7 in 2-D and 5 beyond (49 and 125 nodes): with the
    location effects integrated exactly the scale effects' posterior is close
    to normal and these rules are accurate to about 1e-8 in the
    log-likelihood on school-sized groups."""
    if dim <= 1 or method != "exact-location":
        return 11
    return 7 if dim == 2 else 5
