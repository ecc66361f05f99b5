"""Classical school value-added baselines and reports.

* :func:`dfe_value_added`: the DfE 2003 KS3 to GCSE/GNVQ median-line method;
* :func:`mixedlm_va`: the traditional random-intercept (or random-slope)
  value-added model by statsmodels MixedLM (maximum likelihood);
* :func:`progress8`: Progress 8, England's secondary progress measure since 2016;
* :func:`compare_schools`: one table per school comparing these with MELS.
"""

from .dfe import DfEResult, dfe_value_added, round_half_up
from .example import (
    example_pupils_path,
    synthetic_progress8_pupils,
    synthetic_pupil_records,
)
from .mixedlm import mixedlm_va
from .progress8 import Progress8Result, progress8
from .report import compare, compare_schools, separation_summary

__all__ = [
    "DfEResult",
    "dfe_value_added",
    "round_half_up",
    "example_pupils_path",
    "synthetic_pupil_records",
    "synthetic_progress8_pupils",
    "progress8",
    "Progress8Result",
    "mixedlm_va",
    "compare_schools",
    "compare",
    "separation_summary",
]
