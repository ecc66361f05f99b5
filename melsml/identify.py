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
    name, groups = d.outcome, d.groups
    if d.n_groups < 2:
        raise MELSInputError(
            f"the data have a single group ({groups}={d.group_labels[0]}): the "
            "between-group variance needs two or more groups"
        )
    sizes = d.group_sizes
    if sizes.max() < 2:
        raise MELSInputError(
            f"no group ({groups}) has two or more rows: the between- and within-group "
            "variances cannot be told apart"
        )
    if np.all(y == y[0]):
        raise MELSInputError(
            f"the outcome {name!r} is constant (every value {y[0]:g}): there is no "
            "variance to model"
        )
    starts = d.group_ptr[:-1]
    first = np.repeat(y[starts], sizes)
    if np.all(y == first):
        raise MELSInputError(
            f"the outcome {name!r} does not vary within any group ({groups}): the "
            "within-group variance is 0 and the likelihood has no maximum"
        )
    beta = np.linalg.lstsq(d.x_mean, y, rcond=None)[0]
    resid = y - d.x_mean @ beta
    if np.sum(resid**2) <= 1e-20 * max(np.sum((y - y.mean()) ** 2), 1e-300):
        raise MELSInputError(
            f"formula={d.formulas.get('formula')!r} fits the outcome {name!r} exactly: "
            "the residual variance is 0 and the likelihood has no maximum"
        )
