"""The exact best-of-n estimator: every n <= N from one pool of N samples, with no Monte-Carlo noise.

Drawing n of the pool's N samples without replacement and keeping the highest-scoring one selects the sample of
rank i (1 = lowest score, N = highest) exactly when it is drawn and the other n - 1 come from the i - 1 samples
below it, so

    P(rank i is selected) = C(i - 1, n - 1) / C(N, n),    i = n..N    (zero below n),

and the expectation of any per-sample value under best-of-n is the weighted sum over ranks: an average over all
C(N, n) subsets, computed in O(N) per n. n = 1 gives the pool mean and n = N the top sample. The weights are
formed in log space from log-gamma, so N = 4096 (C(4096, 2048) ~ 1e1231) is as stable as N = 4.

Ties: samples with equal scores are ranked by pool index, the earlier sample ranking higher, the same rule as
`numpy.argmax` (which returns the first maximum); with it, "the best of a subset" is always one sample.
"""

from __future__ import annotations

import math

import numpy as np


def selection_weights(pool_size: int, n: int) -> np.ndarray:
    """P(the sample of rank i is the best of n drawn without replacement), for ranks i = 1..pool_size."""
    if not 1 <= n <= pool_size:
        raise ValueError(f"best-of-n needs 1 <= n <= pool size, got n={n}, pool size {pool_size}")
    log_factorial = np.array([math.lgamma(k + 1) for k in range(pool_size + 1)])

    def log_choose(a, b):
        return log_factorial[a] - log_factorial[b] - log_factorial[a - b]

    ranks = np.arange(n, pool_size + 1)
    weights = np.zeros(pool_size)
    weights[n - 1:] = np.exp(log_choose(ranks - 1, n - 1) - log_choose(pool_size, n))
    return weights


def rank_order(scores: np.ndarray) -> np.ndarray:
    """Indices that sort each pool (last axis) from lowest to highest score; among equal scores the earlier
    sample comes later, i.e. ranks higher."""
    scores = np.asarray(scores, dtype=float)
    if np.isnan(scores).any():
        raise ValueError("best-of-n scores contain NaN")
    index = np.broadcast_to(np.arange(scores.shape[-1]), scores.shape)
    return np.lexsort((-index, scores), axis=-1)


def best_of_n(scores, values, ns) -> np.ndarray:
    """E[value of the highest-scoring sample among n drawn without replacement], for each n in `ns`.

    `scores` has shape (..., N): one pool per leading index (e.g. per prompt). `values` has the same shape or
    more trailing axes (..., N, k) for several values per sample. Returns shape (len(ns), ...[, k]).
    """
    scores, values = np.asarray(scores, dtype=float), np.asarray(values, dtype=float)
    if values.shape[:scores.ndim] != scores.shape:
        raise ValueError(f"values of shape {values.shape} do not match scores of shape {scores.shape}")
    order = rank_order(scores).reshape(scores.shape + (1,) * (values.ndim - scores.ndim))
    ranked = np.take_along_axis(values, order, axis=scores.ndim - 1)
    weights = np.stack([selection_weights(scores.shape[-1], n) for n in ns])
    return np.moveaxis(np.tensordot(ranked, weights, axes=([scores.ndim - 1], [1])), -1, 0)


def kl_bon(n) -> np.ndarray | float:
    """log n - (n - 1) / n nats, the usual closed form of KL(best-of-n || policy) (Stiennon et al. 2020): an
    upper bound, reached only when no two samples are alike (Beirami et al. 2024)."""
    n = np.asarray(n, dtype=float)
    return np.log(n) - (n - 1) / n


def kl_plugin(samples, scores, ns) -> np.ndarray:
    """Plug-in estimate of KL(best-of-n || policy) for one prompt, for each n in `ns`: the pool's distinct
    replies at their pool frequencies p stand in for the policy, and best-of-n of n independent draws from
    them selects reply j with probability q_j = F(s_j)^n - F(s_j-)^n (F: the distribution function of the
    replies' scores; replies of equal score share their step in proportion to p); the estimate is
    sum_j q_j log(q_j / p_j). Like the true KL it never exceeds `kl_bon` (Beirami et al. 2024), and it is far
    below it when replies repeat."""
    distinct = {reply: j for j, reply in enumerate(dict.fromkeys(samples))}
    which = np.array([distinct[s] for s in samples])
    counts = np.bincount(which, minlength=len(distinct)).astype(float)
    p = counts / counts.sum()
    score = np.bincount(which, weights=np.asarray(scores, float), minlength=len(distinct)) / counts
    levels, level = np.unique(score, return_inverse=True)
    mass = np.bincount(level, weights=p, minlength=len(levels))  # P(a draw scores levels[k])
    upper = np.cumsum(mass)
    lower = upper - mass
    out = []
    for n in ns:
        q = ((upper ** n - lower ** n) / mass)[level] * p
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(q > 0, q * np.log(q / p), 0.0)
        out.append(max(float(terms.sum()), 0.0))  # a KL is never negative; rounding can make 0 read -7e-16
    return np.array(out)
