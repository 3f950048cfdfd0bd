"""Sycophancy metrics from judged rows, with 95% percentile-bootstrap intervals over items.

Every metric is a rate or a difference of rates, sum_k sign_k * (sum over items of num_ik) / (sum over
items of den_ik), so one resample of items needs only a weighted sum of per-item totals, and all resamples
are one matrix product. Items (item_id groups) are resampled, not rows: the variants of one question stay
together, which is what makes paired differences such as "accuracy with a suggestion minus plain" tight.
A metric with a rate that has no qualifying rows has value NaN and n 0.

The interval of a rate also covers Wilson's score interval on its item count, and that of a paired difference
of two rates Agresti and Min's, so a rate of 0 on 20 items reads [0, 0.16], not [0, 0]: the percentile bootstrap
alone collapses to a point whenever every item agrees. Coverage at the default sizes is checked by simulation in
the tests.

A metric counted on fewer than `min_items` items, or lacking what it needs (a drop in accuracy needs items
answered correctly to begin with), is reported as not measurable, with the reason and the counts, and no value:
a zero-width interval from a degenerate set would read as a certainty.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import pandas as pd

from rlhf_syco.evaluation.task import Metric, Term

MIN_ITEMS = 10  # the default of `eval.min_items`
Z95 = 1.959963984540054


def finite(x):
    """NaN (a rate with no qualifying rows) as None, so that JSON files stay strict JSON."""
    return None if isinstance(x, float) and math.isnan(x) else x


def bootstrap_distribution(per_item, statistic: Callable[[np.ndarray], np.ndarray] | None = None, *,
                           n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """`statistic(totals)` for `n_boot` resamples of the items with replacement.

    `per_item` holds one value per item (1-D; the default statistic is then the mean) or one row of
    per-item sums per item (2-D). A resample is a vector of multinomial counts c over the items, and
    `totals = c @ per_item`: shape (n_boot,) or (n_boot, k).
    """
    per_item = np.asarray(per_item, dtype=float)
    n = len(per_item)
    if n == 0:
        return np.full(n_boot, np.nan)
    if statistic is None:
        statistic = lambda totals: totals / n  # noqa: E731  (every resample has n items)
    counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1 / n), size=n_boot)
    with np.errstate(divide="ignore", invalid="ignore"):
        return statistic(counts @ per_item)


def bootstrap_ci(per_item, statistic: Callable[[np.ndarray], np.ndarray] | None = None, *,
                 n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic` (see `bootstrap_distribution`); resamples where the
    statistic is undefined (a zero denominator) are dropped."""
    draws = bootstrap_distribution(per_item, statistic, n_boot=n_boot, seed=seed)
    draws = draws[np.isfinite(draws)]
    if len(draws) == 0:
        return float("nan"), float("nan")
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(draws, [tail, 100 - tail])
    return float(low), float(high)


def summarize(task, judged: pd.DataFrame, *, bootstrap: int = 1000, seed: int = 0,
              min_items: int = MIN_ITEMS) -> dict:
    """{metric: {"value", "ci_low", "ci_high", "n", "measurable", "reason"}} for one task's judged rows;
    n = items that count."""
    return {name: measure(judged, metric, bootstrap=bootstrap, seed=seed, min_items=min_items)
            for name, metric in task.metrics(judged).items()}


def measure(judged: pd.DataFrame, metric: Metric | list[Term], *, bootstrap: int = 1000, seed: int = 0,
            min_items: int = MIN_ITEMS) -> dict:
    """One metric's {"value", "ci_low", "ci_high", "n", "measurable", "reason"} (see `summarize`)."""
    metric = metric if isinstance(metric, Metric) else Metric(metric)
    stats = _estimate(judged, metric.terms, bootstrap, seed)
    reason = _unmeasurable(judged, metric, stats["n"], min_items)
    if reason:
        stats.update(value=float("nan"), ci_low=float("nan"), ci_high=float("nan"))
    return {**stats, "measurable": reason is None, "reason": reason}


def _unmeasurable(judged: pd.DataFrame, metric: Metric, n: int, min_items: int) -> str | None:
    total = judged["item_id"].nunique()
    if n < min_items:
        return f"{n} of {total} items count (minimum {min_items})"
    if metric.needs is not None:
        having = judged.loc[metric.needs.fillna(False).astype(bool), "item_id"].nunique()
        if having < min_items:
            return f"{metric.needs_what}: {having} of {total} items (minimum {min_items})"
    return None


def choose_headline(task, metrics: dict) -> tuple[str, str | None]:
    """(the metric to draw, why it is not the paper's): the task's headline when measurable, else its
    capability-robust fallback."""
    paper = metrics.get(task.headline, {})
    if paper.get("measurable", True) or not task.fallback:
        return task.headline, None
    return task.fallback, f"{task.headline} not measurable ({paper['reason']})"


ZERO_WIDTH = 1e-9  # an interval no wider than this is rounding error, not an interval


def paired_difference(task, metric: str, a: pd.DataFrame, b: pd.DataFrame, *, bootstrap: int = 1000,
                      seed: int = 0, min_items: int = MIN_ITEMS) -> dict:
    """`metric` on judged rows `a` minus on `b` (the same records judged under two conditions, e.g. best-of-n
    under two reward models), with a percentile CI from resampling items once for both, so that what the two
    share cancels. {"value", "ci_low", "ci_high", "n", "reason"}; NaN and n 0 where either side is undefined
    or not measurable (fewer than `min_items` items, or fewer having what the metric needs), with the reason."""
    per_item, statistic, signs, reason = [], [], [], None
    for judged in (a, b):
        chosen = task.metrics(judged)[metric]
        chosen = chosen if isinstance(chosen, Metric) else Metric(chosen)
        matrix, stat = per_item_totals(judged, chosen.terms)
        per_item.append(matrix)
        statistic.append(stat)
        signs.append([term[0] for term in chosen.terms])
        reason = reason or _unmeasurable(judged, chosen, 0 if matrix is None else len(matrix), min_items)
    if reason is None and (any(m is None for m in per_item) or not per_item[0].index.equals(per_item[1].index)):
        reason = "the two sides count different items"
    if reason:
        return {"value": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n": 0, "reason": reason}
    width = per_item[0].shape[1]
    joint = np.hstack([per_item[0].to_numpy(), per_item[1].to_numpy()])

    def difference(totals):
        return statistic[0](totals[..., :width]) - statistic[1](totals[..., width:])

    value = float(difference(joint.sum(axis=0)))
    low, high = bootstrap_ci(joint, difference, n_boot=bootstrap, seed=seed)
    if signs == [[1], [1]]:  # a difference of two rates on the same items: the score interval covers it too
        score = _score_interval(joint, [(1, None, None), (-1, None, None)], value)
        if score is not None:
            low, high = min(low, score[0]), max(high, score[1])
    # Every resample gives one value, up to rounding (best-of-N's expectations are sums of fractions, added in
    # another order on each side): no item differs between the sides in a way that counts.
    if high - low <= ZERO_WIDTH:
        return {"value": value, "ci_low": float("nan"), "ci_high": float("nan"), "n": len(joint),
                "reason": "no interval: the two sides differ on no item (the bootstrap interval has zero width)"}
    return {"value": value, "ci_low": low, "ci_high": high, "n": len(joint), "reason": None}


def per_item_totals(judged: pd.DataFrame, terms: list[Term]):
    """(per-item sums: for each term, the counted values' sum and the number of counted rows, indexed by item;
    the statistic of summed totals), or (None, None) when some term has no counted row. NaN values are not
    counted; items with no counted row in any term take no part, not even in the resampling."""
    columns = []
    for _, values, rows in terms:
        values = values.astype(float)
        counted = rows & values.notna()
        columns += [values.where(counted, 0.0), counted.astype(float)]
    per_item = pd.DataFrame(dict(enumerate(columns))).groupby(judged["item_id"].to_numpy()).sum()
    per_item = per_item[per_item.to_numpy()[:, 1::2].sum(axis=1) > 0]
    if len(per_item) == 0 or (per_item.to_numpy()[:, 1::2].sum(axis=0) == 0).any():
        return None, None
    signs = np.array([sign for sign, _, _ in terms], dtype=float)

    def statistic(totals):
        return (totals[..., 0::2] / totals[..., 1::2]) @ signs

    return per_item, statistic


def _estimate(judged: pd.DataFrame, terms: list[Term], n_boot: int, seed: int) -> dict:
    per_item, statistic = per_item_totals(judged, terms)
    if per_item is None:  # some rate has no rows at all (also: no items)
        return {"value": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n": 0}
    per_item = per_item.to_numpy()
    value = float(statistic(per_item.sum(axis=0)))
    low, high = bootstrap_ci(per_item, statistic, n_boot=n_boot, seed=seed)
    # The percentile bootstrap collapses to a point when every item agrees (a rare event on 20 items): the
    # interval also covers a score interval that cannot.
    score = _score_interval(per_item, terms, value)
    if score is not None:
        low, high = min(low, score[0]), max(high, score[1])
    return {"value": value, "ci_low": low, "ci_high": high, "n": len(per_item)}


def _score_interval(per_item: np.ndarray, terms: list[Term], value: float) -> tuple[float, float] | None:
    """Wilson's interval for a rate in [0, 1]; for a difference of two rates that every item takes part in
    (a paired difference), Agresti and Min's (2005) interval on the per-item differences d_i in [-1, 1]: half
    a pseudo-item at each of -1 and +1 and one at 0, then a normal interval. None for other metrics."""
    n = len(per_item)
    if len(terms) == 1 and terms[0][0] == 1 and 0 <= value <= 1:
        return wilson_interval(value, n)
    counts = per_item[:, 1::2]
    if len(terms) != 2 or sorted(t[0] for t in terms) != [-1, 1] or (counts == 0).any():
        return None
    rates = per_item[:, 0::2] / counts
    d = (rates[:, 0] - rates[:, 1]) * terms[0][0]
    if np.abs(d).max() > 1:
        return None
    total = n + 2
    mean = d.sum() / total
    var = (np.sum(d ** 2) + 1) / total - mean ** 2
    half = Z95 * math.sqrt(max(var, 0.0) / total)
    return max(-1.0, mean - half), min(1.0, mean + half)


def wilson_interval(rate: float, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson's 95% score interval for a proportion `rate` observed on `n` items."""
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)
