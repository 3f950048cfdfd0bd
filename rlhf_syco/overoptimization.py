"""Overoptimization against a gold reward (Gao, Schulman and Hilton 2023, "Scaling laws for reward model
overoptimization"): what the optimized policy really achieves, against d = sqrt(KL(pi || pi_ref)), beside the
proxy reward it was optimized against.

Because the truth is known, each sycophancy type with a `gold` rate (`SycophancyTask.gold`: states the true
answer, holds a correct one, is not swayed by the framing) is a gold reward. Gao et al.'s forms, fitted to the
gain over the starting policy, R(d) - R(0):

    best-of-n   d (alpha - beta d)        d = sqrt(log n - (n - 1) / n), the usual closed form of best-of-n's KL
    RL          d (alpha - beta log d)    d = sqrt(KL), PPO's estimate on held-out RL prompts (clipped at 0)

Both are linear in (alpha, beta): ordinary least squares on the points beyond d = 0. The 95% intervals are
percentile bootstrap intervals over items, each resample drawing the items once for every point (the points
share their items, so their correlation is kept) and refitting. A fit needs `MIN_POINTS` points beyond d = 0 at
distinct d: with two, the two coefficients pass through them exactly and the interval says nothing about the
form. A positive beta means the gold reward turns down as the policy moves further from the reference. The d
are taken as known: PPO's KL estimate has noise of its own that the intervals leave out, and best-of-n's closed
form is an upper bound on its KL, far above it when replies repeat (docs/bon.md), which stretches d and shrinks
beta.

Where this departs from Gao et al.: their gold reward is a large reward model's score and ours is a rate of a
judged property, so R is a probability and is fitted per sycophancy type, not over all prompts; best-of-n's
gold is its exact expectation under selection (the estimator in `bon/estimator.py`), not a Monte Carlo estimate.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from rlhf_syco.evaluation.metrics import Metric, measure, per_item_totals

FORMS = {"best_of_n": "d(alpha - beta d)", "rl": "d(alpha - beta log d)"}
MIN_POINTS = 3
FIT_COLUMNS = ["form", "alpha", "alpha_ci_low", "alpha_ci_high", "beta", "beta_ci_low", "beta_ci_high", "rmse",
               "points", "items", "reason"]


def design(form: str, d) -> np.ndarray:
    """The columns multiplying (alpha, beta): (d, -d^2) or (d, -d log d), with d log d = 0 at d = 0."""
    d = np.asarray(d, dtype=float)
    if form == "best_of_n":
        second = d * d
    elif form == "rl":
        second = np.where(d > 0, d * np.log(np.where(d > 0, d, 1.0)), 0.0)
    else:
        raise ValueError(f"unknown form {form!r}; known: {', '.join(FORMS)}")
    return np.stack([d, -second], axis=-1)


def predict(form: str, d, alpha: float, beta: float) -> np.ndarray:
    """The fitted gain R(d) - R(0)."""
    return design(form, d) @ np.array([alpha, beta])


def gold_rows(task, frames: list[pd.DataFrame], *, bootstrap: int, seed: int, min_items: int) -> list[dict]:
    """The task's gold rate on each judged frame: {"gold", "ci_low", "ci_high", "items", "reason"}."""
    rows = []
    for frame in frames:
        stats = measure(frame, task.gold(frame), bootstrap=bootstrap, seed=seed, min_items=min_items)
        rows.append({"gold": stats["value"], "ci_low": stats["ci_low"], "ci_high": stats["ci_high"],
                     "items": stats["n"], "reason": stats["reason"]})
    return rows


def fit(form: str, d, task, frames: list[pd.DataFrame], *, bootstrap: int, seed: int, min_items: int) -> dict:
    """Gao et al.'s `form` fitted to the task's gold rate on `frames` (the same records judged at each point)
    against `d`; `frames[0]` is the starting policy, at d = 0. One row of `FIT_COLUMNS`."""
    d = np.asarray(d, dtype=float)
    out = dict.fromkeys(FIT_COLUMNS, float("nan")) | {"form": form, "points": int(np.sum(d[1:] > 0)), "items": 0,
                                                      "reason": None}
    reasons = [row["reason"] for row in gold_rows(task, frames, bootstrap=1, seed=seed, min_items=min_items)]
    x = design(form, d[1:])
    distinct = len(np.unique(np.round(d[1:][d[1:] > 0], 12)))
    if next((r for r in reasons if r), None):
        return out | {"reason": "gold not measurable at every point: " + next(r for r in reasons if r)}
    if d[0] != 0 or distinct < MIN_POINTS or np.linalg.matrix_rank(x) < 2:
        return out | {"reason": f"{distinct} points at distinct d > 0 (a fit needs {MIN_POINTS}: with two, the two "
                                f"coefficients pass through them exactly)"}
    sums, counts = _totals(task, frames)
    gains = _gains(sums.sum(axis=0, keepdims=True), counts.sum(axis=0, keepdims=True))[0]
    pinv = np.linalg.pinv(x)
    alpha, beta = pinv @ gains
    resampled = np.random.default_rng(seed).multinomial(len(sums), np.full(len(sums), 1 / len(sums)),
                                                        size=bootstrap)
    with np.errstate(divide="ignore", invalid="ignore"):
        coefficients = _gains(resampled @ sums, resampled @ counts) @ pinv.T
    coefficients = coefficients[np.isfinite(coefficients).all(axis=1)]
    if len(coefficients) == 0:
        return out | {"reason": "no bootstrap resample has gold at every point"}
    (a_low, b_low), (a_high, b_high) = np.percentile(coefficients, [2.5, 97.5], axis=0)
    residual = gains - x @ np.array([alpha, beta])
    return out | {"alpha": float(alpha), "alpha_ci_low": float(a_low), "alpha_ci_high": float(a_high),
                  "beta": float(beta), "beta_ci_low": float(b_low), "beta_ci_high": float(b_high),
                  "rmse": float(np.sqrt(np.mean(residual ** 2))), "items": len(sums)}


def _totals(task, frames: list[pd.DataFrame]) -> tuple[np.ndarray, np.ndarray]:
    """(items x points) sums and counts of the counted gold values; an item missing at a point counts 0 there."""
    parts = []
    for frame in frames:
        metric = task.gold(frame)
        terms = metric.terms if isinstance(metric, Metric) else metric
        assert len(terms) == 1, "a gold rate is one term"
        totals, _ = per_item_totals(frame, terms)
        parts.append(totals)
    items = sorted(set().union(*(p.index for p in parts)))
    aligned = [p.reindex(items, fill_value=0.0).to_numpy() for p in parts]
    return np.stack([a[:, 0] for a in aligned], axis=1), np.stack([a[:, 1] for a in aligned], axis=1)


def _gains(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """R(d_j) - R(0) for each row of totals (rows x points) -> (rows x points - 1)."""
    rates = sums / counts
    return rates[:, 1:] - rates[:, :1]
