"""What the data can identify: checks made before a fit, each with its reason.

A model the data cannot identify is refused with an error that says what is
missing, rather than fitted to an arbitrary or infinite answer:

* fewer than two groups: the between-group variance needs several groups;
* no group with two or more units: between- and within-group variances
  cannot be told apart;
* a constant outcome: there is no variance to model;
* an outcome constant within every group: the within-group variance is 0
  and the log-likelihood unbounded;
* a mean function that fits the outcome exactly: the same.
"""

from __future__ import annotations

import numpy as np

from .exceptions import MELSInputError
from .formula import DesignMatrices


def check_identifiable(design: DesignMatrices) -> None:
    """Raise :class:`~melsml.exceptions.MELSInputError` if the data cannot
    identify a MELS model of this design."""
    d = design
    y = d.y
    first = np.repeat(y[d.group_ptr[:-1]], d.group_sizes)
    exact = False
    if not np.all(y == y[0]):
        beta = np.linalg.lstsq(d.x_mean, y, rcond=None)[0]
        resid = y - d.x_mean @ beta
        exact = np.sum(resid**2) <= 1e-20 * max(np.sum((y - y.mean()) ** 2), 1e-300)
    check_outcome(
        d,
        constant=bool(np.all(y == y[0])),
        value=float(y[0]),
        varies_within=not np.all(y == first),
        exact_fit=bool(exact),
    )


def check_outcome(
    design: DesignMatrices, *, constant: bool, value: float, varies_within: bool, exact_fit: bool
) -> None:
    """The checks, from what they need to know of the outcome: whether it is
    constant (and its value), varies within some group, or is fitted exactly by
    the mean function (sizes and names come from ``design``)."""
    d = design
    name, groups = d.outcome, d.groups
    if d.n_groups < 2:
        raise MELSInputError(
            f"the data have a single group ({groups}={d.group_labels[0]}): the "
            "between-group variance needs two or more groups"
        )
    if d.group_sizes.max() < 2:
        raise MELSInputError(
            f"no group ({groups}) has two or more rows: the between- and within-group "
            "variances cannot be told apart"
        )
    if constant:
        raise MELSInputError(
            f"the outcome {name!r} is constant (every value {value:g}): there is no "
            "variance to model"
        )
    if not varies_within:
        raise MELSInputError(
            f"the outcome {name!r} does not vary within any group ({groups}): the "
            "within-group variance is 0 and the likelihood has no maximum"
        )
    if exact_fit:
        raise MELSInputError(
            f"formula={d.formulas.get('formula')!r} fits the outcome {name!r} exactly: "
            "the residual variance is 0 and the likelihood has no maximum"
        )
