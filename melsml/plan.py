"""How the likelihood is integrated: the one place that decides.

:func:`plan` looks at the random-effects structure and the options and picks

* ``"closed form"``: no random scale effects (s = 0); the location effects
  integrate exactly and no quadrature is needed;
* ``"exact-location"``: the location effects are Gaussian given the scale
  effects and integrate exactly; the s scale effects take s-dimensional
  adaptive Gauss-Hermite quadrature;
* ``"aghq"``: (q + s)-dimensional adaptive Gauss-Hermite quadrature over all
  random effects (the quadratic association, or on request as a check).

The plan is what the summary prints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from .config import ModelOptions, default_points
from .exceptions import MELSInputError
from .structure import RandomStructure

Method = Literal["closed form", "exact-location", "aghq"]


@dataclass(frozen=True)
class IntegrationPlan:
    """The integration method, its dimension and its nodes.

    Attributes
    ----------
    method : {"closed form", "exact-location", "aghq"}
    dim : int
        Dimension of the quadrature (0 for the closed form).
    n_points : int
        Gauss-Hermite points per dimension.
    unit_level_scale : bool
        The scale design varies within groups, so each node costs O(n_j).
    """

    method: Method
    dim: int
    n_points: int
    unit_level_scale: bool = False

    @property
    def n_nodes(self) -> int:
        """Nodes per group (product rule)."""
        return self.n_points**self.dim if self.dim else 1

    def describe(self) -> str:
        """One line for summaries."""
        if self.method == "closed form":
            return "closed form (no random scale)"
        grid = "x".join([str(self.n_points)] * self.dim)
        what = (
            "exact over the location effects, adaptive Gauss-Hermite over the scale effects"
            if self.method == "exact-location"
            else "adaptive Gauss-Hermite over all random effects"
        )
        return f"{what}: {self.dim}-D, {grid} = {self.n_nodes} nodes per group"


def constant_within_groups(x: np.ndarray, group_ptr: np.ndarray) -> np.ndarray:
    """(n_groups,) uint8: 1 where every row of ``x`` in the group equals its first."""
    starts, sizes = group_ptr[:-1], np.diff(group_ptr)
    if x.shape[1] == 0:
        return np.ones(len(starts), dtype=np.uint8)
    first = np.repeat(x[starts], sizes, axis=0)
    same = (x == first).all(axis=1)
    return np.ascontiguousarray(np.logical_and.reduceat(same, starts).astype(np.uint8))


def plan(
    structure: RandomStructure,
    options: ModelOptions,
    *,
    unit_level_scale: bool = False,
    censored: bool = False,
) -> IntegrationPlan:
    """Choose the integration for a structure and options.

    Parameters
    ----------
    structure : RandomStructure
    options : ModelOptions
        ``integration="exact-location"`` or ``"aghq"`` forces a method;
        ``"auto"`` takes the closed form, else exact location where it holds,
        else full AGHQ.
    unit_level_scale : bool
        Whether the scale design varies within a group (reported only).
    censored : bool
        Some outcomes are censored, or the outcome is ordinal: the location
        effects are not Gaussian given the scale effects, so every random
        effect takes quadrature.
    """
    if censored:
        if options.integration == "exact-location":
            raise MELSInputError(
                "integration='exact-location' does not hold for a censored or ordinal "
                "outcome; "
                "use integration='auto' (full adaptive quadrature)"
            )
        method, dim = "aghq", structure.dim
    elif structure.s == 0:
        method, dim = "closed form", 0
    elif options.integration == "aghq" or not structure.exact_location:
        method, dim = "aghq", structure.dim
    else:
        method, dim = "exact-location", structure.s
    points = options.n_points if options.n_points is not None else default_points(dim, method)
    return IntegrationPlan(method, dim, points, unit_level_scale)


def plan_for_design(
    structure: RandomStructure, options: ModelOptions, design
) -> tuple[IntegrationPlan, np.ndarray, np.ndarray]:
    """The plan for a design, with what the kernel needs to follow it.

    Returns
    -------
    plan : IntegrationPlan
    h : (n_obs, s) the scale design's columns, C-contiguous
    h_const : (n_groups,) uint8, 1 where h is the same on every row of the group
    """
    h = np.ascontiguousarray(design.x_scale[:, : structure.s])
    h_const = constant_within_groups(h, design.group_ptr)
    unit_level = bool(structure.s and not h_const.all())
    censored = bool(getattr(design, "interval_outcome", False))
    return (
        plan(structure, options, unit_level_scale=unit_level, censored=censored),
        h,
        h_const,
    )
