"""Warning and error classes raised by melsml."""

from __future__ import annotations


class MELSInputError(ValueError):
    """Bad input: a column, formula or option that cannot be used as given."""


class MELSWarning(UserWarning):
    """Base class of melsml's warnings."""


class MissingDataWarning(MELSWarning):
    """Rows were dropped because a used column had missing values."""


class ConvergenceWarning(MELSWarning):
    """The optimiser stopped without meeting the convergence criteria."""


class BoundaryWarning(MELSWarning):
    """A variance parameter is on (or very near) the boundary of its space,
    or the observed information is not positive definite."""
