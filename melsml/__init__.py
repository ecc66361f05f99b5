"""melsml: mixed-effects location scale (MELS) models by exact maximum likelihood.

>>> from melsml import MELS
>>> res = MELS.from_formula("y ~ prior", data=df, groups="school",
...                         ws_formula="~ prior").fit()        # doctest: +SKIP
>>> print(res.summary())                                       # doctest: +SKIP
"""

import os

# OpenMP worker threads that spin after a parallel region slow the NumPy work
# between kernel calls; let them sleep unless the user chose otherwise (read
# once, when the OpenMP runtime loads with the first kernel).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from . import plots, valueadded  # noqa: E402
from .exceptions import (
    BoundaryWarning,
    ConvergenceWarning,
    MELSInputError,
    MELSWarning,
    MissingDataWarning,
)
from .model import MELS
from .power import power
from .results import MELSResults
from .simulate import simulate, simulate_london
from .summary import Summary, compare

__version__ = "0.1.0"

__all__ = [
    "MELS",
    "MELSResults",
    "Summary",
    "compare",
    "plots",
    "valueadded",
    "simulate",
    "simulate_london",
    "power",
    "MELSInputError",
    "MELSWarning",
    "MissingDataWarning",
    "ConvergenceWarning",
    "BoundaryWarning",
    "__version__",
]
