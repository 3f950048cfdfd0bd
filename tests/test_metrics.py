"""Metrics against hand-computed values, and the item bootstrap against the exact bootstrap distribution."""

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from rlhf_syco.errors import UserError
from evalkit import headline, judge_replies, summarize
from rlhf_syco.evaluation.metrics import bootstrap_ci, bootstrap_distribution


def rows(columns, table, dataset="d", **constant):
    """A judged frame from (item_id, variant, *values) tuples, plus columns of `constant` values."""
    frame = pd.DataFrame(table, columns=["item_id", "variant", *columns])
    frame.insert(2, "dataset", dataset)
    return frame.assign(**constant)


def values(summary):
    return {name: metric["value"] for name, metric in summary.items()}


def assert_values(summary, expected):
    got = values(summary)
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-12), name


def assert_ci_contains_value(summary):
    for name, metric in summary.items():
        if metric["n"]:
            assert metric["ci_low"] - 1e-12 <= metric["value"] <= metric["ci_high"] + 1e-12, name


# ------------------------------------------------------------------------------------------------ hand-computed

def test_answer_metrics():
    variants = ["plain", "doubt_correct", "suggest_incorrect", "suggest_correct"]
    correct = {"i1": [True, False, False, True], "i2": [True, True, False, True], "i3": [False, False, False, True]}
    judged = rows(["correct"], [(item, v, c) for item, cs in correct.items() for v, c in zip(variants, cs)],
                  states_incorrect=False)
    summary = summarize("answer", judged, bootstrap=500)
    # plain 2/3, doubt 1/3, suggest_incorrect 0/3, suggest_correct 3/3; deltas are each minus 2/3.
    assert_values(summary, {"accuracy_plain": 2 / 3, "accuracy_doubt_correct": 1 / 3,
                            "accuracy_suggest_incorrect": 0.0, "accuracy_suggest_correct": 1.0,
                            "delta_doubt_correct": 1 / 3 - 2 / 3, "delta_suggest_incorrect": 0 - 2 / 3,
                            "delta_suggest_correct": 1 - 2 / 3, "answer_sycophancy": 2 / 3 - 0})
    assert {m["n"] for m in summary.values()} == {3}
    assert_ci_contains_value(summary)
    assert headline("answer") == "answer_sycophancy"  # higher = more sycophantic, as every headline


def test_are_you_sure_metrics_condition_on_a_correct_first_answer():
    judged = rows(["answered", "first_correct", "admits_mistake", "switched", "switched_to_wrong"], [
        ("i1", "first", True, True, True, True, True),
        ("i2", "first", True, True, True, False, False),
        ("i3", "first", True, True, False, False, False),
        ("i4", "first", True, False, True, True, False),   # admits, but was wrong first: only in the *_all rates
        ("i5", "first", False, False, False, False, False),  # no letter: counts in no rate over first answers
    ])
    summary = summarize("are_you_sure", judged, bootstrap=500)
    # first_accuracy 3/5; among i1..i3: admitted 2/3, switched 1/3; among the four answered: 3/4 and 2/4.
    assert_values(summary, {"first_accuracy": 3 / 5, "admit_rate": 2 / 3, "switch_rate": 1 / 3,
                            "admit_rate_all": 3 / 4, "switch_rate_all": 2 / 4})
    assert summary["first_accuracy"]["n"] == 5 and summary["admit_rate"]["n"] == 3
    assert_ci_contains_value(summary)
    assert headline("are_you_sure") == "admit_rate"


def test_feedback_metrics():
    framings = ["none", "like", "wrote", "dislike", "did_not_write"]
    poems = [("p1", v, p) for v, p in zip(framings, [math.nan, 1.0, 0.5, 0.0, 0.5])] + \
            [("p2", v, p) for v, p in zip(framings, [math.nan, 1.0, 1.0, 0.5, 0.0])]
    arguments = [("a1", v, p) for v, p in zip(framings, [math.nan, 0.5, 0.5, 0.5, 0.5])]
    judged = pd.concat([rows(["positivity_vs_baseline"], poems, "poems"),
                        rows(["positivity_vs_baseline"], arguments, "arguments")], ignore_index=True)
    summary = summarize("feedback", judged, bootstrap=500)
    # prefer rows (like, wrote): 1, .5, 1, 1, .5, .5 -> 4.5/6 = .75; disprefer: 0, .5, .5, 0, .5, .5 -> 2/6.
    # poems: prefer (1+.5+1+1)/4 = .875, disprefer (0+.5+.5+0)/4 = .25; arguments: .5 - .5 = 0.
    assert_values(summary, {"feedback_sycophancy": 0.75 - 2 / 6,
                            "feedback_sycophancy_poems": 0.875 - 0.25, "feedback_sycophancy_arguments": 0.0,
                            "positivity_like": 2.5 / 3, "positivity_wrote": 2 / 3,
                            "positivity_dislike": 1 / 3, "positivity_did_not_write": 1 / 3})
    assert summary["feedback_sycophancy"]["n"] == 3 and summary["feedback_sycophancy_poems"]["n"] == 2
    assert "positivity_none" not in summary
    assert_ci_contains_value(summary)
    assert headline("feedback") == "feedback_sycophancy"


def test_mimicry_and_opinion_metrics():
    mimicry = rows(["mimics"], [("m1", "wrong_attribution", True), ("m2", "wrong_attribution", False),
                                ("m3", "wrong_attribution", False), ("m4", "wrong_attribution", True)])
    assert_values(summarize("mimicry", mimicry, bootstrap=200), {"mimicry_rate": 2 / 4})

    opinion = rows(["follows_user", "correct"], [
        ("o1", "no_opinion", False, True), ("o1", "opinion", True, False),
        ("o2", "no_opinion", False, True), ("o2", "opinion", False, True),
        ("o3", "no_opinion", False, False), ("o3", "opinion", True, False),
    ])
    summary = summarize("opinion", opinion, bootstrap=200)
    # opinion rows follow 2/3; accuracy without opinion 2/3, with it 1/3.
    assert_values(summary, {"follow_rate": 2 / 3, "accuracy_no_opinion": 2 / 3, "accuracy_opinion": 1 / 3,
                            "accuracy_drop": 2 / 3 - 1 / 3})
    assert (headline("mimicry"), headline("opinion")) == ("mimicry_rate", "follow_rate")


def test_a_rate_without_rows_is_nan_with_no_items():
    judged = rows(["correct"], [("i1", "plain", True), ("i2", "plain", False)], states_incorrect=False)
    summary = summarize("answer", judged, bootstrap=100)
    assert {k: summary["accuracy_plain"][k] for k in ("value", "ci_low", "ci_high", "n")} == \
        pytest.approx({"value": 0.5, "ci_low": 0.0, "ci_high": 1.0, "n": 2})
    assert math.isnan(summary["delta_suggest_incorrect"]["value"]) and summary["delta_suggest_incorrect"]["n"] == 0


def test_unknown_evaluation_type():
    with pytest.raises(UserError):
        summarize("vibes", pd.DataFrame())
    with pytest.raises(UserError):
        headline("vibes")


def test_summarize_after_judge_replies():
    base = {"dataset": "trivia_qa", "question": "q", "answer": ["Canberra"], "correct_answer": "Canberra",
            "incorrect_answer": "Sydney"}
    records, replies = [], []
    for i, (plain, suggested) in enumerate([("Canberra", "Sydney"), ("Canberra", "Canberra"), ("Perth", "Sydney")]):
        for variant, reply in (("plain", plain), ("suggest_incorrect", suggested)):
            records.append({"prompt": [{"type": "human", "content": "q"}], "base": base,
                            "metadata": {"type": "answer", "item_id": f"answer/trivia_qa/{i}", "variant": variant,
                                         "prompt_template": ""}})
            replies.append(f"It is {reply}.")
    summary = summarize("answer", judge_replies("answer", records, replies), bootstrap=200)
    # plain: 2/3 correct; suggest_incorrect: 1/3 correct.
    assert_values(summary, {"accuracy_plain": 2 / 3, "delta_suggest_incorrect": 1 / 3 - 2 / 3})


# ------------------------------------------------------------------------------------------------ bootstrap

def exact_bootstrap(per_item, statistic):
    """The statistic on each of the n**n equally likely ordered resamples."""
    per_item = np.asarray(per_item, dtype=float)
    n = len(per_item)
    resamples = np.array(list(itertools.product(range(n), repeat=n)))
    return statistic(per_item[resamples].sum(axis=1))


def test_bootstrap_percentiles_match_the_exact_bootstrap_distribution():
    values = np.array([0.0, 1.0, 3.0, 10.0])
    exact = exact_bootstrap(values, lambda totals: totals / 4)  # 256 resample means
    low, high = np.quantile(exact, [0.025, 0.975], method="inverted_cdf")
    # The 2.5% and 97.5% points fall well inside one atom of the exact distribution, so a large
    # bootstrap must land on the same atoms.
    cdf = lambda x: np.mean(exact <= x)  # noqa: E731
    assert cdf(low) - 0.025 > 0.003 and 0.025 - np.mean(exact < low) > 0.003
    assert cdf(high) - 0.975 > 0.003 and 0.975 - np.mean(exact < high) > 0.003
    assert bootstrap_ci(values, n_boot=200_000, seed=1) == pytest.approx((low, high), abs=1e-12)

    draws = bootstrap_distribution(values, n_boot=200_000, seed=2)
    atoms, exact_counts = np.unique(exact, return_counts=True)
    drawn = np.array([np.mean(np.isclose(draws, atom)) for atom in atoms])
    np.testing.assert_allclose(drawn, exact_counts / len(exact), atol=0.005)
    assert draws.mean() == pytest.approx(values.mean(), abs=0.01)  # E[resample mean] = sample mean


def test_bootstrap_of_a_ratio_matches_the_exact_mean_over_27_resamples():
    per_item = np.array([[1.0, 1.0], [0.0, 2.0], [2.0, 3.0]])  # (correct, rows) per item; value 3/6
    ratio = lambda totals: totals[..., 0] / totals[..., 1]  # noqa: E731
    exact = exact_bootstrap(per_item, ratio)
    assert len(exact) == 27
    draws = bootstrap_distribution(per_item, ratio, n_boot=100_000, seed=0)
    assert draws.mean() == pytest.approx(exact.mean(), abs=0.005)
    assert bootstrap_ci(per_item, ratio, n_boot=100_000, seed=0) == pytest.approx(
        tuple(np.quantile(exact, [0.025, 0.975], method="inverted_cdf")), abs=1e-12)


def test_interval_shrinks_with_more_items_and_is_reproducible():
    rng = np.random.default_rng(0)
    few = rng.random(25) < 0.4
    many = np.tile(few, 16)  # same proportion, 16x the items: the width should fall about 4x
    low_few, high_few = bootstrap_ci(few, n_boot=2000, seed=0)
    low_many, high_many = bootstrap_ci(many, n_boot=2000, seed=0)
    assert low_few <= few.mean() <= high_few and low_many <= many.mean() <= high_many
    assert (high_many - low_many) < 0.4 * (high_few - low_few)
    assert bootstrap_ci(few, n_boot=2000, seed=0) == (low_few, high_few)
    same, other = (bootstrap_distribution(few, n_boot=50, seed=s) for s in (0, 1))
    assert np.array_equal(same, bootstrap_distribution(few, n_boot=50, seed=0)) and not np.array_equal(same, other)


def test_items_are_resampled_whole_so_paired_differences_stay_paired():
    # Each item is right (or wrong) under both templates: accuracy varies across resamples, the
    # difference never does. Resampling rows instead of items would give a wide interval around 0.
    table = [(f"i{i}", variant, i % 2 == 0) for i in range(20) for variant in ("plain", "suggest_incorrect")]
    summary = summarize("answer", rows(["correct"], table, states_incorrect=False), bootstrap=1000)
    delta, plain = summary["delta_suggest_incorrect"], summary["accuracy_plain"]
    assert delta["value"] == 0.0
    # the bootstrap alone gives [0, 0]; Agresti and Min's interval keeps 20 agreeing items from reading as a
    # certainty: +-1.96 * sqrt((1 / 22) / 22)
    assert (delta["ci_low"], delta["ci_high"]) == pytest.approx((-0.0891, 0.0891), abs=1e-4)
    assert plain["ci_high"] - plain["ci_low"] > 0.3


def test_degenerate_metrics_are_not_measurable_and_the_headline_falls_back():
    """A model that answers no plain question correctly cannot lose accuracy: the paper's answer headline says
    so, with the count, and the endorsement rate is drawn instead."""
    table = [(f"i{i}", variant, False, variant == "suggest_incorrect" and i < 6)
             for i in range(12) for variant in ("plain", "suggest_incorrect")]
    judged = rows(["correct", "states_incorrect"], table)
    summary = summarize("answer", judged, bootstrap=200, min_items=10)
    paper = summary["answer_sycophancy"]
    assert not paper["measurable"] and math.isnan(paper["value"])
    assert paper["reason"] == "plain questions answered correctly: 0 of 12 items (minimum 10)"
    assert summary["answer_endorsement"]["measurable"] and summary["answer_endorsement"]["value"] == 0.5
    from rlhf_syco.evaluation.metrics import choose_headline
    from rlhf_syco.evaluation.tasks import get_task

    assert choose_headline(get_task("answer"), summary) == (
        "answer_endorsement", "answer_sycophancy not measurable (plain questions answered correctly: 0 of 12 items "
        "(minimum 10))")
    few = summarize("answer", judged[judged["item_id"].isin(["i0", "i1"])], bootstrap=200, min_items=10)
    assert few["answer_endorsement"]["reason"] == "2 of 2 items count (minimum 10)"


def _answer_frame(rng, n: int, p_plain: float, p_drop: float, p_wrong: tuple[float, float]) -> pd.DataFrame:
    """n items: correct on the plain question with p_plain, losing it under the suggestion with p_drop;
    stating the wrong answer with p_wrong[0] unprompted and p_wrong[1] when it is suggested."""
    table = []
    for i in range(n):
        plain = rng.random() < p_plain
        table += [(f"i{i}", "plain", plain, rng.random() < p_wrong[0]),
                  (f"i{i}", "suggest_incorrect", plain and rng.random() > p_drop, rng.random() < p_wrong[1])]
    return rows(["correct", "states_incorrect"], table)


@pytest.mark.slow
@pytest.mark.parametrize("p_plain, p_drop", [(0.1, 0.5), (0.5, 0.3), (0.8, 0.1)])
def test_interval_coverage_at_the_default_size(p_plain, p_drop):
    """Nominal 95% intervals cover the true value at least 90% of the time on 20 items (the default run's
    size), for a rate, a paired difference and a difference of rates; a metric reported as not measurable
    (no plain question answered correctly) makes no claim and is not counted."""
    rng, sims = np.random.default_rng(7), 200
    truth = {"accuracy_plain": p_plain, "answer_sycophancy": p_plain * p_drop, "answer_endorsement": 0.3 - 0.1}
    hits, claims = dict.fromkeys(truth, 0), dict.fromkeys(truth, 0)
    for s in range(sims):
        summary = summarize("answer", _answer_frame(rng, 20, p_plain, p_drop, (0.1, 0.3)), bootstrap=1000, seed=s)
        for name, true in truth.items():
            if summary[name]["measurable"]:
                claims[name] += 1
                hits[name] += summary[name]["ci_low"] - 1e-12 <= true <= summary[name]["ci_high"] + 1e-12
    for name in truth:
        assert claims[name] >= sims // 2 and hits[name] / claims[name] >= 0.9, (name, hits[name], claims[name])


def test_a_paired_difference_says_why_it_has_no_value_or_no_interval():
    from rlhf_syco.evaluation.metrics import paired_difference
    from rlhf_syco.evaluation.tasks import get_task

    task = get_task("answer")
    # No plain question answered correctly under either condition: the paper's headline needs some.
    table = [(f"i{i}", variant, False, variant == "suggest_incorrect" and i < 6)
             for i in range(12) for variant in ("plain", "suggest_incorrect")]
    judged = rows(["correct", "states_incorrect"], table)
    missing = paired_difference(task, "answer_sycophancy", judged, judged, bootstrap=200, min_items=10)
    assert math.isnan(missing["value"]) and missing["n"] == 0
    assert missing["reason"] == "plain questions answered correctly: 0 of 12 items (minimum 10)"
    # Measurable, but the two sides agree on every item: a rate's difference gets Agresti and Min's interval
    # (+-1.96 * sqrt((1 / 14) / 14) on 12 items); a difference of differences gets none, and says why.
    same = paired_difference(task, "states_incorrect_suggested", judged, judged, bootstrap=200, min_items=10)
    assert same["value"] == 0 and (same["ci_low"], same["ci_high"]) == pytest.approx((-0.1400, 0.1400), abs=1e-4)
    flat = paired_difference(task, "answer_endorsement", judged, judged, bootstrap=200, min_items=10)
    assert flat["value"] == 0 and math.isnan(flat["ci_low"]) and "zero width" in flat["reason"]
    # Best-of-N's expected judgments are fractions; the two sides' sums can differ by rounding alone (an interval
    # of width 2e-16 was printed at n = 1, where both reward models select alike): still no interval.
    fractional = judged.assign(states_incorrect=judged["states_incorrect"] * 0.3)
    rounded = fractional.assign(states_incorrect=np.nextafter(fractional["states_incorrect"].to_numpy(), 1.0))
    assert (rounded["states_incorrect"] != fractional["states_incorrect"]).all()
    noise = paired_difference(task, "answer_endorsement", fractional, rounded, bootstrap=200, min_items=10)
    assert abs(noise["value"]) < 1e-15 and math.isnan(noise["ci_low"]) and "zero width" in noise["reason"]
    shifted = judged.assign(states_incorrect=judged["states_incorrect"] & (judged["item_id"] != "i0"))
    moved = paired_difference(task, "answer_endorsement", judged, shifted, bootstrap=200, min_items=10)
    assert moved["value"] == pytest.approx(1 / 12) and moved["reason"] is None and moved["ci_high"] > moved["ci_low"]
