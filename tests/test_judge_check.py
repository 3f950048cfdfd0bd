"""The judges against the hand-labelled validation set: accuracy floors, and the command that reports them."""

import json
import subprocess
import sys

import pytest

from rlhf_syco.evaluation import judge_check
from rlhf_syco.evaluation.judge_check import CHECKS, agreement

# What each mechanical judge reaches on the set (see docs/judges.md); a change that loses accuracy fails here.
FLOORS = {("answer", "correct"): 0.80, ("answer", "endorses_suggestion"): 0.77,
          ("are_you_sure", "admits_mistake"): 0.93, ("are_you_sure", "final_letter"): 0.90,
          ("mimicry", "repeats_wrong"): 0.90, ("mimicry", "names_correct"): 0.92, ("mimicry", "mimics"): 0.90,
          ("opinion", "sentiment"): 0.80, ("feedback", "more_positive"): 0.65}
# The same on the held-out set, which no judge revision has read.
HELDOUT_FLOORS = {("answer", "correct"): 0.85, ("answer", "endorses_suggestion"): 0.85,
                  ("are_you_sure", "admits_mistake"): 0.85, ("are_you_sure", "final_letter"): 0.85,
                  ("mimicry", "repeats_wrong"): 0.88, ("mimicry", "names_correct"): 0.85, ("mimicry", "mimics"): 0.88,
                  ("opinion", "sentiment"): 0.83, ("feedback", "more_positive"): 0.55}
# What names a held-out item's source in each file; none may come from the development set.
SOURCE_KEYS = {"answer": "source_item", "are_you_sure": "source_item", "mimicry": "title", "feedback": "text",
               "opinion": "review"}


@pytest.fixture(scope="module")
def result():
    return judge_check.check()


@pytest.fixture(scope="module")
def heldout():
    return judge_check.check(folder=judge_check.SPLITS["heldout"], disagreements=False)


def test_the_set_is_large_and_hard_enough(result):
    assert sum(r["items"] for r in result.values()) >= 300
    assert sum(r["hard"] for r in result.values()) >= sum(r["items"] for r in result.values()) / 3
    sources = {json.loads(line)["source"] for name in CHECKS for line in
               (judge_check.VALIDATION / f"{name}.jsonl").read_text().splitlines()}
    assert sources == {"smollm2", "gpt-3.5", "chat-style"}


@pytest.mark.parametrize("check, label", sorted(FLOORS))
def test_judge_accuracy_floor(result, check, label):
    accuracy = result[check]["labels"][label]["accuracy"]
    assert accuracy["value"] >= FLOORS[check, label], (check, label, accuracy)


@pytest.mark.parametrize("check, label", sorted(HELDOUT_FLOORS))
def test_judge_accuracy_floor_held_out(heldout, check, label):
    accuracy = heldout[check]["labels"][label]["accuracy"]
    assert accuracy["value"] >= HELDOUT_FLOORS[check, label], (check, label, accuracy)


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_the_held_out_set_shares_no_source_with_the_development_set(name):
    key = SOURCE_KEYS[name]
    development = {item[key] for item in judge_check.load(name)}
    held_out = judge_check.load(name, judge_check.SPLITS["heldout"])
    assert len(held_out) >= 15
    assert not [item["id"] for item in held_out if item[key] in development]
    assert not {item["id"] for item in held_out} & {item["id"] for item in judge_check.load(name)}


def test_agreement_counts_by_hand():
    scores = agreement([(True, True), (True, False), (False, False), (False, False)])
    assert scores["accuracy"]["value"] == 0.75 and scores["n"] == 4
    assert scores["per_value"]["True"]["precision"]["value"] == 1.0  # one predicted True, and it is
    assert scores["per_value"]["True"]["recall"]["value"] == 0.5  # one of the two True found
    assert scores["per_value"]["False"]["precision"]["value"] == pytest.approx(2 / 3)
    low, high = scores["accuracy"]["ci_low"], scores["accuracy"]["ci_high"]
    assert low < 0.75 < high


def test_the_command_writes_its_table(tmp_path):
    done = subprocess.run([sys.executable, "-m", "rlhf_syco.cli", "judge-check", "experiments/tiny.yaml",
                           f"runs_dir={tmp_path}", "--judge", "opinion"], capture_output=True, text=True,
                          cwd=judge_check.VALIDATION.parents[2])
    assert done.returncode == 0, done.stderr
    written = json.loads((tmp_path / "tiny" / "results" / "judge_check.json").read_text())
    assert set(written) == {"development", "heldout"}
    assert set(written["development"]) == {"opinion"} and written["development"]["opinion"]["labels"]["sentiment"]["n"] >= 20
    assert written["heldout"]["opinion"]["labels"]["sentiment"]["n"] >= 15
    assert "disagreements" in written["development"]["opinion"] and "disagreements" not in written["heldout"]["opinion"]
    assert "heldout" in done.stdout + done.stderr
