"""Bayesian logistic regression of the observed choice on feature differences (Sharma et al. 2023 §4.1).

P(A preferred over B) = sigmoid(sum_k alpha_k (f_k(A) - f_k(B))), no intercept (which response is called A is
arbitrary), alpha_k ~ Laplace(0, prior_scale). Fit with PyMC's NUTS sampler. A feature's effect is reported as
sigmoid(alpha_k): the probability that the response with more of feature k is preferred, all else equal (the
paper's figure), with a 95% credible interval from the posterior draws.

PyMC, not NumPyro: measured here, a test-sized fit takes 1-2 s with PyMC once pytensor's compiled code is
cached, against 5-12 s with NumPyro, which compiles again for every new model; fits of the study's size take
about as long in both (docs/analysis.md).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np


@dataclass
class Posterior:
    features: list[str]
    draws: np.ndarray  # (draws, features): every chain's draws of alpha
    max_rhat: float
    divergences: int

    def summary(self) -> list[dict]:
        """Per feature: posterior mean, sd and 95% interval of alpha, and mean and 95% interval of sigmoid(alpha)."""
        rows = []
        for k, name in enumerate(self.features):
            alpha = self.draws[:, k]
            p = 1 / (1 + np.exp(-alpha))
            rows.append({"feature": name, "coef": float(alpha.mean()), "coef_sd": float(alpha.std()),
                         "coef_low": float(np.percentile(alpha, 2.5)),
                         "coef_high": float(np.percentile(alpha, 97.5)), "p_preferred": float(p.mean()),
                         "p_low": float(np.percentile(p, 2.5)), "p_high": float(np.percentile(p, 97.5))})
        return rows

    def p_first(self, x: np.ndarray) -> np.ndarray:
        """Posterior predictive P(A preferred) for feature differences `x` (pairs, features)."""
        return (1 / (1 + np.exp(-(np.asarray(x, float) @ self.draws.T)))).mean(axis=1)


_SAMPLER = None  # the child process PyMC runs in, while a `sampler()` block is open


@contextlib.contextmanager
def sampler():
    """A child process for PyMC that every `fit` inside the block uses (it starts once: importing PyMC takes
    seconds). It is stopped when the block ends, however it ends: a child left running keeps the process from
    exiting."""
    global _SAMPLER
    if _SAMPLER is not None:
        yield
        return
    import multiprocessing

    _SAMPLER = multiprocessing.get_context("spawn").Pool(1)
    try:
        yield
    finally:
        _SAMPLER.terminate()
        _SAMPLER = None


def fit(x: np.ndarray, y: np.ndarray, features: list[str], *, prior_scale: float = 1.0, draws: int = 1000,
        tune: int = 1000, chains: int = 2, seed: int = 0) -> Posterior:
    """Posterior draws of the coefficients; `x` (pairs, features) of differences, `y` 1 where A was chosen.

    PyMC runs in a child process of its own (`sampler()`): pytensor loads numba's llvmlite, whose objects break
    the kernel registration of a vLLM engine started later in the same process."""
    with sampler():
        return _SAMPLER.apply(_fit, (np.asarray(x, float), np.asarray(y, int), list(features)),
                              dict(prior_scale=prior_scale, draws=draws, tune=tune, chains=chains, seed=seed))


def _fit(x, y, features, *, prior_scale, draws, tune, chains, seed) -> Posterior:
    import logging
    import warnings

    try:
        with warnings.catch_warnings():  # pytensor's "could not link to a BLAS": irrelevant at this size
            warnings.simplefilter("ignore", UserWarning)
            import pymc as pm
    except ImportError:
        from rlhf_syco.errors import UserError

        raise UserError("the analysis needs PyMC: pip install 'rlhf-syco[analysis]'") from None
    logging.getLogger("pymc").setLevel(logging.ERROR)  # "run at least 4 chains" and the sampler's chatter
    with pm.Model(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        alpha = pm.Laplace("alpha", mu=0.0, b=prior_scale, shape=len(features))
        pm.Bernoulli("choice", logit_p=pm.math.dot(np.asarray(x, float), alpha), observed=np.asarray(y, int))
        trace = pm.sample(draws=draws, tune=tune, chains=chains, cores=1, random_seed=seed, progressbar=False,
                          compute_convergence_checks=False)
    import arviz

    samples = trace.posterior["alpha"].values  # (chains, draws, features)
    return Posterior(list(features), samples.reshape(-1, len(features)), float(arviz.rhat(trace)["alpha"].max()),
                     int(trace.sample_stats["diverging"].values.sum()))


def accuracy(p_first: np.ndarray, y: np.ndarray) -> float:
    """Share of pairs whose choice the model predicts; a prediction of exactly 0.5 counts half."""
    p_first, y = np.asarray(p_first, float), np.asarray(y, int)
    hit = np.where(np.isclose(p_first, 0.5), 0.5, ((p_first > 0.5) == (y == 1)).astype(float))
    return float(hit.mean()) if len(hit) else float("nan")
