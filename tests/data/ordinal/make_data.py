"""Simulate ordinal.csv: two- and five-category outcomes with a random intercept.

100 groups of 20 units; x ~ N(0, 1); latent y* = 0.8 x + u_g + e with
u_g ~ N(0, 0.5^2) and e standard normal (probit columns) or standard
logistic (logit columns).  ``bin_*`` = 1{y* > 0.2}; ``cat5_*`` cuts y* at
-1.5, -0.5, 0.5, 1.5 into 1..5.  Run: ``python make_data.py`` (seed 20261123).
"""

import numpy as np
import pandas as pd

rng = np.random.default_rng(20261123)
n_groups, size = 100, 20
g = np.repeat(np.arange(1, n_groups + 1), size)
x = rng.standard_normal(g.size)
u = np.repeat(rng.normal(scale=0.5, size=n_groups), size)
cuts = np.array([-1.5, -0.5, 0.5, 1.5])
out = {"g": g, "x": np.round(x, 6)}
for link, e in (("probit", rng.standard_normal(g.size)), ("logit", rng.logistic(size=g.size))):
    ystar = 0.8 * x + u + e
    out[f"bin_{link}"] = (ystar > 0.2).astype(int)
    out[f"cat5_{link}"] = 1 + np.searchsorted(cuts, ystar)
pd.DataFrame(out).to_csv("ordinal.csv", index=False)
