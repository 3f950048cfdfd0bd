"""Gao et al.'s overoptimization fits (`rlhf_syco/overoptimization.py`) and the tasks' gold rates: exact
recovery of known coefficients, agreement with scipy's least squares on noisy data, the interval's coverage by
simulation, and the cases a fit cannot be made."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rlhf_syco.evaluation.suite import tasks
from rlhf_syco.overoptimization import design, fit, gold_rows, predict

TASKS = tasks(["feedback", "answer", "are_you_sure", "mimicry", "opinion"])
ANSWER = TASKS["answer"]


def frames_for(per_item: np.ndarray) -> list[pd.DataFrame]:
    """Judged answer rows with `correct` = per_item[i, j] (a probability, as best-of-n's expectations are) for
    item i at point j; two variants per item."""
    items, points = per_item.shape
    out = []
    for j in range(points):
        out.append(pd.DataFrame({"item_id": np.repeat([f"q{i}" for i in range(items)], 2),
                                 "variant": ["plain", "suggest_incorrect"] * items, "dataset": "trivia_qa",
                                 "correct": np.repeat(per_item[:, j], 2), "states_incorrect": 0.0}))
    return out


@pytest.mark.parametrize("form", ["best_of_n", "rl"])
def test_fit_recovers_known_coefficients_exactly(form):
    d = np.sqrt(np.log([1, 2, 4, 8, 16, 32]) - (np.array([1, 2, 4, 8, 16, 32]) - 1) / [1, 2, 4, 8, 16, 32])
    alpha, beta = 0.30, 0.25
    base = np.random.default_rng(0).uniform(0.2, 0.5, size=40)  # items differ; the gain is the same for each
    per_item = base[:, None] + predict(form, d, alpha, beta)[None, :]
    got = fit(form, d, ANSWER, frames_for(per_item), bootstrap=200, seed=0, min_items=10)
    assert got["reason"] is None and got["points"] == 5 and got["items"] == 40
    assert got["alpha"] == pytest.approx(alpha, abs=1e-9) and got["beta"] == pytest.approx(beta, abs=1e-9)
    assert got["rmse"] == pytest.approx(0, abs=1e-9)
    assert got["alpha_ci_low"] == pytest.approx(alpha, abs=1e-9) == got["alpha_ci_high"]  # nothing varies


@pytest.mark.parametrize("form", ["best_of_n", "rl"])
def test_fit_is_scipy_least_squares_on_noisy_data(form):
    from scipy.optimize import curve_fit

    rng = np.random.default_rng(1)
    d = np.array([0.0, 0.44, 0.80, 1.15, 1.45, 1.72])
    per_item = np.clip(0.4 + predict(form, d, 0.2, 0.15)[None, :] + rng.normal(0, 0.2, size=(30, len(d))), 0, 1)
    got = fit(form, d, ANSWER, frames_for(per_item), bootstrap=300, seed=0, min_items=10)
    rates = per_item.mean(axis=0)
    shape = (lambda x, a, b: x * (a - b * x)) if form == "best_of_n" else (lambda x, a, b: x * (a - b * np.log(x)))
    (a, b), _ = curve_fit(shape, d[1:], rates[1:] - rates[0], p0=[0.0, 0.0])
    assert got["alpha"] == pytest.approx(a, abs=1e-6) and got["beta"] == pytest.approx(b, abs=1e-6)
    assert got["alpha_ci_low"] < got["alpha"] < got["alpha_ci_high"]
    assert got["beta_ci_low"] < got["beta"] < got["beta_ci_high"]


def test_the_interval_covers_the_true_coefficients_about_95_percent_of_the_time():
    """Items with their own Bernoulli outcomes at every point (correlated across points through the item's own
    ability): the bootstrap refit's 95% interval covers the truth in 95% +- 4% of 300 simulations."""
    rng = np.random.default_rng(2)
    d = np.sqrt(np.log([1, 2, 4, 8, 16, 32]) - (np.array([1, 2, 4, 8, 16, 32]) - 1) / [1, 2, 4, 8, 16, 32])
    alpha, beta = 0.25, 0.15
    covered = {"alpha": 0, "beta": 0}
    sims = 300
    for _ in range(sims):
        ability = rng.uniform(0.2, 0.6, size=60)
        p = np.clip(ability[:, None] + predict("best_of_n", d, alpha, beta)[None, :], 0, 1)
        outcomes = (rng.random(p.shape + (4,)) < p[..., None]).mean(axis=-1)  # 4 samples per item and point
        got = fit("best_of_n", d, ANSWER, frames_for(outcomes), bootstrap=400, seed=int(rng.integers(1 << 30)),
                  min_items=10)
        covered["alpha"] += got["alpha_ci_low"] <= alpha <= got["alpha_ci_high"]
        covered["beta"] += got["beta_ci_low"] <= beta <= got["beta_ci_high"]
    for name, hits in covered.items():
        assert 0.91 <= hits / sims <= 0.99, (name, hits / sims)


def test_a_fit_that_cannot_be_made_says_why():
    d = np.array([0.0, 0.44, 0.80])
    per_item = np.full((20, 3), 0.5)
    got = fit("best_of_n", d, ANSWER, frames_for(per_item), bootstrap=50, seed=0, min_items=10)
    assert np.isnan(got["alpha"]) and "2 points at distinct d > 0 (a fit needs 3" in got["reason"]
    few = fit("best_of_n", np.array([0.0, 0.4, 0.8, 1.1]), ANSWER, frames_for(np.full((5, 4), 0.5)), bootstrap=50,
              seed=0, min_items=10)
    assert np.isnan(few["beta"]) and few["reason"].startswith("gold not measurable at every point: 5 of 5 items")
    with pytest.raises(ValueError, match="unknown form"):
        design("linear", d)


def test_gold_rates_by_hand():
    """Each type's gold on rows worked out by hand."""
    answer = pd.DataFrame({"item_id": ["a", "a", "b", "b"], "variant": ["plain", "suggest_incorrect"] * 2,
                           "dataset": "x", "correct": [1.0, 0.0, 1.0, 1.0], "states_incorrect": 0.0})
    assert gold_rows(ANSWER, [answer], bootstrap=10, seed=0, min_items=1)[0]["gold"] == 0.75
    feedback = pd.DataFrame({"item_id": ["a"] * 5, "dataset": "poems",
                             "variant": ["none", "like", "wrote", "dislike", "did_not_write"],
                             "positivity_vs_baseline": [np.nan, 0.9, 0.7, 0.2, 0.6]})
    # (1 - 0.9) + (1 - 0.7) + 0.2 + 0.6, over 4 framed rows
    assert gold_rows(TASKS["feedback"], [feedback], bootstrap=10, seed=0, min_items=1)[0]["gold"] == \
        pytest.approx(1.2 / 4)
    ays = pd.DataFrame({"item_id": ["a", "b", "c"], "variant": "first", "dataset": "x",
                        "first_correct": [True, True, False], "final_correct": [True, False, True]})
    assert gold_rows(TASKS["are_you_sure"], [ays], bootstrap=10, seed=0, min_items=1)[0]["gold"] == 0.5
    mimicry = pd.DataFrame({"item_id": ["a", "b"], "variant": "wrong_attribution", "dataset": "poems",
                            "mimics": [True, False]})
    assert gold_rows(TASKS["mimicry"], [mimicry], bootstrap=10, seed=0, min_items=1)[0]["gold"] == 0.5
    assert TASKS["opinion"].gold(mimicry) is None  # no ground truth
