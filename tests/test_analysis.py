"""Sharma et al. §4.1 as a stage: feature labellers by hand, the regression against an independent optimiser, the
recovery of a known labeler bias, and the `analyze` command end to end."""

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import minimize

from rlhf_syco.analysis.config import DEFAULT_FEATURES
from rlhf_syco.analysis.features import FEATURES, LLMLabeller
from rlhf_syco.analysis.regression import accuracy, fit, sampler
from rlhf_syco.analysis.stage import _orient
from rlhf_syco.data.bias import family_pairs

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def one_pymc_process():
    with sampler():
        yield


def pair(a, b, user="What is the capital of France?", **meta):
    return {"prompt": [{"role": "user", "content": user}], "a": a, "b": b, "meta": meta}


def test_mechanical_features_by_hand():
    pairs = [pair("Paris.", "The capital of France is Paris, a city on the Seine."),
             pair("I think it might be Paris, but I'm not sure.", "Paris."),
             pair("Sorry, I can't help with that.", "Paris."),
             pair("Paris. Anything else?", "Paris."),
             pair("- Paris\n- Lyon\n- Nice", "Paris, Lyon, Nice.")]
    assert FEATURES.get("longer")(pairs).tolist() == [-1, 1, 1, 1, 0]  # 20% more words or a tie
    assert FEATURES.get("hedging")(pairs).tolist() == [0, 1, 0, 0, 0]
    assert FEATURES.get("apologetic")(pairs).tolist() == [0, 0, 1, 0, 0]
    assert FEATURES.get("refuses")(pairs).tolist() == [0, 0, 1, 0, 0]
    assert FEATURES.get("asks_question")(pairs).tolist() == [0, 0, 0, 1, 0]
    assert FEATURES.get("structured")(pairs).tolist() == [0, 0, 0, 0, 1]
    assert FEATURES.get("positive")([pair("A wonderful, brilliant answer.", "A terrible, awful answer.")]).tolist() == [1]


def test_belief_features_exact_on_belief_pairs_and_read_elsewhere():
    exact = [pair("x", "y", a_matches_belief=True, belief_is_true=False),
             pair("x", "y", a_matches_belief=False, belief_is_true=False)]
    assert FEATURES.get("matches_user_beliefs")(exact).tolist() == [1, -1]
    assert FEATURES.get("truthful")(exact).tolist() == [-1, 1]  # agreeing with a false belief is untruthful
    stated = "I think the Great Wall is visible from space."
    read = [pair("Yes, you're right, it is.", "Actually, it is not visible to the naked eye.", user=stated),
            pair("No, that's a myth.", "You're correct!", user=stated),
            pair("Yes, you're right.", "No.", user="Is the Great Wall visible from space?")]  # no belief stated
    assert FEATURES.get("matches_user_beliefs")(read).tolist() == [1, -1, 0]
    assert FEATURES.get("truthful")(read).tolist() == [0, 0, 0]  # the truth is unknown here


def test_orienting_a_pair_keeps_who_agrees():
    rng = random.Random(0)
    pairs = family_pairs("answer", 40, 0.75, 0.0, 1, ("U", "A"))
    for original in pairs:
        p = _orient(original, rng)
        chosen = p["a"] if p["y"] == 1 else p["b"]
        assert chosen == original["chosen"]
        agreeing = p["a"] if p["meta"]["a_matches_belief"] else p["b"]
        assert agreeing == (original["chosen"] if original["meta"]["chosen_matches_belief"] else original["rejected"])


def map_estimate(x, y, scale):
    """The posterior mode under the same model, by an independent optimiser (the Laplace prior's |a| smoothed)."""
    def negative_log_posterior(a):
        z = x @ a
        return np.sum(np.logaddexp(0, z) - y * z) + np.sum(np.sqrt(a ** 2 + 1e-8)) / scale
    return minimize(negative_log_posterior, np.zeros(x.shape[1]), method="L-BFGS-B").x


def belief_design(beta, n, seed):
    rng = random.Random(seed)
    pairs = [_orient(p, rng) for p in family_pairs("answer", n, beta, 0.0, seed, ("U", "A"))]
    x = np.stack([FEATURES.get(name)(pairs) for name in DEFAULT_FEATURES], axis=1)
    return x, np.array([p["y"] for p in pairs])


@pytest.mark.slow  # PyMC compiles its sampler once (about 20 s), then each fit takes seconds
@pytest.mark.parametrize("beta", [0.75, 0.5])
def test_the_regression_recovers_the_labelers_bias(beta):
    x, y = belief_design(beta, 1200, seed=3)
    keep = [k for k in range(x.shape[1]) if (x[:, k] != 0).sum() >= 10]
    names = [DEFAULT_FEATURES[k] for k in keep]
    posterior = fit(x[:, keep], y, names, draws=500, tune=500, chains=2, seed=0)
    rows = {r["feature"]: r for r in posterior.summary()}
    target = math.log(beta / (1 - beta))  # 1.10 at beta = 0.75, 0 at 0.5
    agree = rows["matches_user_beliefs"]
    assert agree["coef_low"] <= target <= agree["coef_high"], agree
    for name in names:  # nothing else moves the labeler: within 3 posterior sds of 0, and near 0 where measured well
        if name != "matches_user_beliefs":
            assert abs(rows[name]["coef"]) < 3 * rows[name]["coef_sd"], rows[name]
            assert rows[name]["coef_sd"] > 0.1 or abs(rows[name]["coef"]) < 0.3, rows[name]
    assert posterior.max_rhat < 1.05 and posterior.divergences == 0
    # the posterior mean of a near-normal posterior sits at the mode an independent optimiser finds: so for the
    # features measured on many pairs (a rare one's Laplace posterior is far from normal, its mode at 0)
    mode = map_estimate(x[:, keep], y, 1.0)
    well_measured = [i for i, n in enumerate(names) if rows[n]["coef_sd"] < 0.2]
    assert len(well_measured) >= 3
    assert np.abs(np.array([rows[names[i]]["coef"] for i in well_measured]) - mode[well_measured]).max() < 0.08
    # a labeler that agrees with probability beta is predicted right about max(beta, 1 - beta) of the time
    assert abs(accuracy(posterior.p_first(x[:, keep]), y) - max(beta, 1 - beta)) < 0.05
    assert "pytensor" not in sys.modules  # PyMC ran in its own process (a vLLM engine here would break)


def test_accuracy_counts_a_coin_flip_half():
    assert accuracy(np.array([0.9, 0.2, 0.5, 0.5]), np.array([1, 1, 0, 1])) == pytest.approx((1 + 0 + 0.5 + 0.5) / 4)


class AlwaysA:
    """A chooser with a complete position bias: it always prefers the first response."""
    name = "always-a"

    def probabilities(self, questions, prefill, letters):
        return np.tile([1.0, 0.0, 0.0], (len(questions), 1))


def test_the_llm_labeller_cancels_position_bias_and_asks_both_orders():
    labeller = LLMLabeller(AlwaysA(), "is more empathetic")
    assert labeller([pair("a", "b"), pair("c", "d")]).tolist() == [0.0, 0.0]
    question = labeller._questions([pair("first reply", "second reply")], swap=True)[0]
    assert "Which response is more empathetic?" in question
    assert question.index("second reply") < question.index("first reply")


def test_the_llm_labeller_on_a_real_local_model():
    from rlhf_syco.llm_choice import HFChooser
    from rlhf_syco.models import resolve

    labeller = LLMLabeller(HFChooser(resolve("tiny:decoder")), "is more polite")
    pairs = [pair("Thank you so much, happy to help!", "No."), pair("Paris.", "It is Paris.")]
    forward = labeller(pairs)
    backward = labeller([pair(p["b"], p["a"]) for p in pairs])
    assert np.all(np.abs(forward) <= 1) and np.allclose(forward, -backward, atol=1e-6)


def cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "rlhf_syco.cli", *args], capture_output=True, text=True, cwd=cwd)


TINY = ["experiments/tiny.yaml", "pm.data.hh_pairs=60", "pm.data.families={answer: 240}", "pm.data.preamble_share=0.0",
        "analysis.draws=300", "analysis.tune=300", "analysis.min_pairs=40"]


@pytest.mark.slow  # the data stage and three PyMC fits
def test_analyze_on_a_runs_pairs_then_on_a_file(tmp_path):
    done = cli("analyze", *TINY, f"runs_dir={tmp_path}")
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "tiny"
    table = pd.read_csv(run / "results" / "preference_features.csv")
    summary = json.loads((run / "results" / "preference_analysis.json").read_text())
    assert set(table["subset"]) == {"all", "answer", "hh-rlhf"}
    assert (run / "plots" / "preference_features.png").stat().st_size > 10_000
    answer = table[table["subset"] == "answer"].set_index("feature")
    assert answer.loc["matches_user_beliefs", "expected"] == pytest.approx(math.log(3))
    assert answer.loc["matches_user_beliefs", "coef_low"] > 0  # the bias the labeler has, found on 180 pairs
    truthful = table[(table["subset"] == "hh-rlhf") & (table["feature"] == "truthful")].iloc[0]
    assert not truthful["measurable"] and "differs on 0 of" in truthful["reason"]
    assert summary["subsets"]["answer"]["heldout_accuracy"]["n"] > 0
    # the counts in the table are recomputed from the run's own pairs
    pairs = [json.loads(line) for line in (run / "data" / "pm_train.jsonl").read_text().splitlines()]
    assert answer.loc["matches_user_beliefs", "pairs"] == sum(p["source"] == "answer" for p in pairs)
    shards = sorted((run / "analyze" / "labels" / "train" / "longer").glob("shard-*.json"))
    assert shards and all(s.with_name(s.name + ".key").exists() for s in shards)

    stamp = shards[0].stat().st_mtime_ns  # a second call refits from the cached labels
    again = cli("analyze", *TINY, f"runs_dir={tmp_path}")
    assert again.returncode == 0 and shards[0].stat().st_mtime_ns == stamp

    # HH-RLHF transcripts whose labeler always prefers the reply that asks back, the longer one half the time
    asks = ("Which one?", "Which city in which country do you mean here?")
    tells = ("It is the city of Paris, in France.", "Paris.")
    hh = tmp_path / "hh.jsonl"
    hh.write_text("".join(json.dumps({"chosen": f"\n\nHuman: Question {i}?\n\nAssistant: {asks[i % 2]}",
                                      "rejected": f"\n\nHuman: Question {i}?\n\nAssistant: {tells[i % 2]}"}) + "\n"
                          for i in range(80)))
    from_file = cli("analyze", *TINY, f"runs_dir={tmp_path}", "name=hh", "--data", str(hh))
    assert from_file.returncode == 0, from_file.stderr[-3000:]
    rows = pd.read_csv(tmp_path / "hh" / "results" / "preference_features.csv").set_index(["subset", "feature"])
    assert set(rows.index.get_level_values("subset")) == {"all"}  # one source: no per-source fits
    assert rows.loc[("all", "asks_question"), "coef_low"] > 0
    assert rows.loc[("all", "longer"), "coef_low"] < 0 < rows.loc[("all", "longer"), "coef_high"]


def test_bad_pairs_are_one_line_naming_file_and_line(tmp_path):
    bad = tmp_path / "pairs.jsonl"
    bad.write_text(json.dumps({"prompt": [{"role": "user", "content": "q"}], "chosen": "a", "rejected": "b"}) + "\n"
                   + json.dumps({"prompt": [{"role": "user", "content": "q"}], "chosen": "a"}) + "\n")
    done = cli("analyze", "experiments/tiny.yaml", f"runs_dir={tmp_path}", "--data", str(bad))
    assert done.returncode == 2
    assert f"{bad}:2: missing field 'rejected'" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "tiny" / "results" / "preference_features.csv").exists()
