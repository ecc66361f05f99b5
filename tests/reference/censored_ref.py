"""Brute-force integral of the censored (Tobit) MELS likelihood: a test oracle.

Random intercept theta1 (SD sigma_u,ij from the BS function) and random scale
omega = tau_l theta1 + sigma_omega theta2; plain Gauss-Hermite over both
standardised effects, no closed forms, no adaptation.  Accurate for small
groups only.
"""

from __future__ import annotations

import numpy as np
from scipy.special import log_ndtr, logsumexp


def censored_loglik_brute(
    y, mu, logd, sd_u, cens, group, tau_l, sigma_omega, n_points: int = 60, w=None
) -> np.ndarray:
    """Per-group log-likelihood.  ``cens``: +1 at or below a lower limit (y is the
    limit), -1 at or above an upper limit, 0 observed; ``w`` unit weights."""
    x, lw = np.polynomial.hermite.hermgauss(n_points)
    x, lw = np.sqrt(2.0) * x, np.log(lw / np.sqrt(np.pi))
    t1, t2 = (g.ravel() for g in np.meshgrid(x, x, indexing="ij"))
    lw2 = (lw[:, None] + lw[None, :]).ravel()
    w = np.ones_like(y) if w is None else w
    out = []
    for g in np.unique(group):
        rows = group == g
        r = (y[rows] - mu[rows])[None, :] - sd_u[rows][None, :] * t1[:, None]
        logvar = logd[rows][None, :] + (tau_l * t1 + sigma_omega * t2)[:, None]
        eps = r * np.exp(-0.5 * logvar)
        c = cens[rows][None, :]
        dens = -0.5 * (np.log(2 * np.pi) + logvar + eps * eps)
        lp = np.where(c == 0, dens, log_ndtr(c * eps))
        out.append(logsumexp((lp * w[rows][None, :]).sum(axis=1) + lw2))
    return np.array(out)


def censored_posterior_brute(
    y, mu, logd, sd_u, cens, group, tau_l, sigma_omega, n_points: int = 321
) -> tuple[np.ndarray, np.ndarray]:
    """Per-group posterior means of theta1 and of omega, on a dense uniform grid
    over [-8, 8]^2 with the prior density as weight (posterior modes can sit far
    in the prior's tails, where a plain Gauss-Hermite rule converges slowly)."""
    x = np.linspace(-8.0, 8.0, n_points)
    t1, t2 = (g.ravel() for g in np.meshgrid(x, x, indexing="ij"))
    lw2 = -0.5 * (t1 * t1 + t2 * t2)
    om = tau_l * t1 + sigma_omega * t2
    m1, mo = [], []
    for g in np.unique(group):
        rows = group == g
        r = (y[rows] - mu[rows])[None, :] - sd_u[rows][None, :] * t1[:, None]
        logvar = logd[rows][None, :] + om[:, None]
        eps = r * np.exp(-0.5 * logvar)
        c = cens[rows][None, :]
        lp = np.where(c == 0, -0.5 * (np.log(2 * np.pi) + logvar + eps * eps), log_ndtr(c * eps))
        lw_post = lp.sum(axis=1) + lw2
        p = np.exp(lw_post - logsumexp(lw_post))
        m1.append(p @ t1)
        mo.append(p @ om)
    return np.array(m1), np.array(mo)


def ordinal_loglik_brute(
    codes, xb, gamma, logd, sd_u, group, tau_l, sigma_omega, link, n_points: int = 60
) -> np.ndarray:
    """Per-group log-likelihood of the ordinal location scale model, P(y <= c) =
    F((gamma_c - xb - sd_u theta1) / sigma), log sigma^2 = logd + omega, by plain
    Gauss-Hermite over (theta1, theta2)."""
    from scipy.special import expit

    cdf = (lambda t: np.exp(log_ndtr(t))) if link == "probit" else expit
    x, lw = np.polynomial.hermite.hermgauss(n_points)
    x, lw = np.sqrt(2.0) * x, np.log(lw / np.sqrt(np.pi))
    t1, t2 = (g.ravel() for g in np.meshgrid(x, x, indexing="ij"))
    lw2 = (lw[:, None] + lw[None, :]).ravel()
    ext = np.concatenate([[-np.inf], gamma, [np.inf]])
    c = codes.astype(int)
    out = []
    for g in np.unique(group):
        rows = group == g
        loc = xb[rows][None, :] + sd_u[rows][None, :] * t1[:, None]
        sd = np.exp(0.5 * (logd[rows][None, :] + (tau_l * t1 + sigma_omega * t2)[:, None]))
        p = cdf((ext[c[rows] + 1] - loc) / sd) - cdf((ext[c[rows]] - loc) / sd)
        out.append(logsumexp(np.log(p).sum(axis=1) + lw2))
    return np.array(out)
