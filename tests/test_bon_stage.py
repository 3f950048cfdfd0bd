"""The best-of-N stage: hand-computable curves from a scripted policy, caching, and resuming after a kill."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pandas as pd
import pytest
import torch

from rlhf_syco import plots
from rlhf_syco.bon import stage
from rlhf_syco.config import ExperimentConfig
from evalkit import build
from rlhf_syco.evaluation.config import ARE_YOU_SURE_CHALLENGE
from rlhf_syco.evaluation.metrics import summarize
from rlhf_syco.evaluation.tasks import get_task
from rlhf_syco.generation import to_chat
from rlhf_syco.intervention.report import judged_frames
from rlhf_syco.models import resolve

N = 4
HERE = __name__  # for `module:attr` paths to the reward functions below
PLOT_COLUMNS = ["type", "metric", "reward_model", "n", "kl_bon", "kl_plugin", "value", "ci_low", "ci_high", "reason"]
SPECIAL = ("I apologize, you are right.", "This is wonderful, excellent and great.", "By {poet}.")
scored = []  # (reward function, number of pairs) per call


def special(conversations, responses):
    """Rewards the scripted policy's sample 0 (the sycophantic one), and nothing else."""
    scored.append(("special", len(responses)))
    return [float(r.startswith(("I apologize", "This is wonderful", "By "))) for r in responses]


def contrary(conversations, responses):
    return [-s for s in special(conversations, responses)]


def length(conversations, responses):
    scored.append(("length", len(responses)))
    return [len(r) for r in responses]


class ScriptedPolicy:
    """Sample 0 of every prompt is sycophantic (caves to the challenge, praises a liked or own text, names the
    user's poet), the others are neutral; first turns of are_you_sure answer correctly."""

    def __init__(self, records):
        self.records = {r["prompt"][0]["content"]: r for r in records}
        self.first_turn = {question: f"{r['base']['correct_letter']})" if r["base"]["letters"]
                           else r["base"]["correct_answer"] for question, r in self.records.items()}
        self.calls = []

    def generate(self, conversations, n=1, seed=0, prefill=None, *, max_new_tokens=None, on_batch=None):
        self.calls.append(list(conversations))
        return [[self._sample(c[-1]["content"], k) for k in range(n)] for c in conversations]

    def _sample(self, user: str, k: int) -> str:
        if user == ARE_YOU_SURE_CHALLENGE:
            return SPECIAL[0] if k == 0 else "I am confident in my answer."
        if user in self.first_turn:
            return self.first_turn[user]
        if user.startswith("Please comment"):
            return SPECIAL[1] if k == 0 and (" I really like" in user or " I wrote" in user) else "A comment."
        if user.startswith("I love this poem by the poet "):
            poet = user.removeprefix("I love this poem by the poet ").split(".\n")[0]
            return SPECIAL[2].format(poet=poet) if k == 0 else "A poem."
        return "Something."


def config(reward_models, types, policy="tiny:decoder", **bon) -> ExperimentConfig:
    specs = {"special": {"type": "callable", "function": f"{HERE}:special"},
             "contrary": {"type": "callable", "function": f"{HERE}:contrary"},
             "length": {"type": "callable", "function": f"{HERE}:length"},
             "pm": {"type": "hf", "path": resolve("tiny:encoder")},
             "pm_nonsyco": {"type": "prompted", "base": "pm"}}
    return ExperimentConfig.model_validate({
        "policy": {"model": {"name_or_path": policy}, "generation": {"max_new_tokens": 6, "batch_size": 4}},
        "reward_models": specs, "eval": {"max_new_tokens": {}, "min_items": 1},
        "bon": {"types": types, "n_max": N, "prompts_per_type": 2, "shard_size": 3, "bootstrap": 50,
                "reward_models": reward_models, "share_pool": False, **bon}})  # the tests below count samples


@pytest.fixture
def scripted(monkeypatch):
    records = build("are_you_sure", 2, 0)
    policy = ScriptedPolicy(records)
    monkeypatch.setattr(stage, "make_generator", lambda *args: policy)
    scored.clear()
    return policy


def test_curves_follow_the_hand_computed_selection_probabilities(tmp_path, scripted):
    """The sycophantic sample is the unique top under `special`, so best-of-n picks it with probability
    n / N; under `contrary` it is the unique bottom, picked only when n = 1 (probability 1 / N)."""
    cfg = config(["special", "contrary"], ["are_you_sure", "feedback", "mimicry"])
    stage.run(cfg, tmp_path)
    curves = pd.read_csv(tmp_path / "results" / "bon_curves.csv")
    assert list(curves.columns) == PLOT_COLUMNS
    assert len(curves) == 3 * 2 * 3 and set(curves["n"]) == {1, 2, 4}
    value = curves.set_index(["type", "reward_model", "n"])["value"]
    for n in (1, 2, 4):
        p_special, p_contrary = n / N, (1 / N if n == 1 else 0.0)
        for name, p in (("special", p_special), ("contrary", p_contrary)):
            assert value["are_you_sure", name, n] == pytest.approx(p)  # every first answer is correct
            assert value["mimicry", name, n] == pytest.approx(p)
            # like/wrote: P(more positive than the neutral baseline) = p + (1 - p) / 2; dislike/not written 1/2
            assert value["feedback", name, n] == pytest.approx(p / 2)
    metrics = pd.read_csv(tmp_path / "results" / "bon_metrics.csv").set_index(["type", "metric", "reward_model", "n"])
    assert metrics.loc[("are_you_sure", "first_accuracy", "special", 4), "value"] == pytest.approx(1.0)
    assert metrics.loc[("feedback", "positivity_dislike", "special", 4), "value"] == pytest.approx(0.5)
    assert np.isclose(curves["kl_bon"], np.log(curves["n"]) - (curves["n"] - 1) / curves["n"]).all()

    rewards = pd.read_csv(tmp_path / "results" / "bon_rewards.csv").set_index(["type", "reward_model",
                                                                                "scored_by", "n"])
    # at n = N every prompt gets its top reward: 1 for are_you_sure (2 prompts), mimicry (2) and the liked or
    # own texts of feedback (4 of its 10 prompts), 0 for the rest
    assert rewards.loc[("all", "special", "special", 4), "mean_reward"] == pytest.approx((2 + 2 + 4) / 14)
    assert rewards.loc[("mimicry", "contrary", "special", 2), "mean_reward"] == 0.0
    assert rewards.loc[("mimicry", "special", "special", 2), "mean_reward"] == pytest.approx(0.5)

    gold = pd.read_csv(tmp_path / "results" / "bon_gold.csv").set_index(["type", "reward_model", "n"])
    for n in (1, 2, 4):
        p = n / N  # under `special`
        assert gold.loc[("mimicry", "special", n), "gold"] == pytest.approx(1 - p)  # not mimicking
        # like/wrote rows: 1 - (p + (1 - p) / 2); dislike/did-not-write rows: 1/2; as many of each
        assert gold.loc[("feedback", "special", n), "gold"] == pytest.approx((2 - p) / 4)
        assert gold.loc[("mimicry", "special", n), "proxy"] == pytest.approx(p)  # the sycophantic sample scores 1
        assert gold.loc[("mimicry", "special", n), "sqrt_kl"] == pytest.approx(np.sqrt(np.log(n) - (n - 1) / n))
    fits = pd.read_csv(tmp_path / "results" / "bon_gold_fits.csv")
    assert (fits["form"] == "best_of_n").all() and fits["reason"].str.contains("2 points at distinct d > 0").all()

    # the selections' per-record judgments, read back, give the curves (what runs compare over items)
    selected = judged_frames(tmp_path / "results" / stage.SELECTED_FILE, ("type", "reward_model", "n"))
    assert len(selected) == 3 * 2 * 3
    for (name, rm, n), frame in selected.items():
        metric = curves.set_index(["type", "reward_model", "n"]).loc[(name, rm, n), "metric"]
        stats = summarize(get_task(name), frame, bootstrap=10, min_items=1)
        assert stats[metric]["value"] == pytest.approx(value[name, rm, n])
    assert selected["mimicry", "special", 2]["item_id"].is_unique

    figures = plots.run(cfg, tmp_path)
    assert set(figures) == {"bon_vs_n", "bon_vs_kl", "bon_gold"}
    assert all(os.path.getsize(p) > 0 for p in figures.values())


def test_are_you_sure_second_turns_follow_the_fixed_first_turn(tmp_path, scripted):
    stage.run(config(["special"], ["are_you_sure"]), tmp_path)
    first_call, *pool_calls = scripted.calls
    followups = [c for call in pool_calls for c in call if c[-1]["content"] == ARE_YOU_SURE_CHALLENGE]
    probes = [c for call in pool_calls for c in call if c[-1]["content"].startswith("So what's the answer?")]
    assert len(probes) == 2 * N  # the final-answer probe is played after every sample
    assert len(followups) == len(first_call) == 2
    for question, followup in zip(first_call, followups):
        user = question[-1]["content"]
        _, prefill = to_chat(scripted.records[user]["prompt"])
        assert followup == [*question, {"role": "assistant", "content": (prefill or "") + scripted.first_turn[user]},
                            {"role": "user", "content": ARE_YOU_SURE_CHALLENGE}]


def test_adding_a_reward_model_scores_only_that_one(tmp_path, scripted, monkeypatch):
    stage.run(config(["special"], ["mimicry", "feedback"]), tmp_path)
    assert {name for name, _ in scored} == {"special"}
    scored.clear()
    monkeypatch.setattr(stage, "make_generator", lambda *args: pytest.fail("the pool was drawn again"))
    stage.run(config(["special", "length"], ["mimicry", "feedback"], score_batch_size=5), tmp_path)
    # mimicry has 2 prompts (1 shard), feedback 10 (4 shards of at most 3), N samples each, at most 5 a call
    assert scored == [("length", k) for k in (5, 3, *(5, 5, 2) * 3, 4)]
    curves = pd.read_csv(tmp_path / "results" / "bon_curves.csv")
    assert set(curves["reward_model"]) == {"special", "length"}


def test_real_models_end_to_end(tmp_path):
    """Tiny random policy and PM: the prompted PM differs from the PM, n = 1 does not depend on the selector."""
    stage.run(config(["pm", "pm_nonsyco"], ["answer", "opinion"]), tmp_path)
    curves = pd.read_csv(tmp_path / "results" / "bon_curves.csv")
    first = curves[curves["n"] == 1].pivot(index="type", columns="reward_model", values="value")
    np.testing.assert_allclose(first["pm"], first["pm_nonsyco"])
    scores = {name: np.concatenate([json.loads(p.read_text())["scores"]
                                    for p in sorted((tmp_path / "bon" / "scores" / name / "answer").glob("shard-*.json"))])
              for name in ("pm", "pm_nonsyco")}
    assert scores["pm"].shape == (8, N) and not np.allclose(scores["pm"], scores["pm_nonsyco"])


def test_runs_that_differ_in_their_pm_share_one_pool_and_get_the_results_of_unshared_runs(tmp_path, scripted,
                                                                                       monkeypatch):
    """The shared store: the second run links the first one's pool, context and judgments instead of sampling
    or judging, scores with its own reward model, and its results are those of the same run without sharing."""
    runs = tmp_path / "runs"

    def run(name, reward_model, share):
        cfg = config([reward_model], ["are_you_sure", "feedback"], share_pool=share).model_copy(
            update={"runs_dir": str(runs), "name": name})
        stage.run(cfg, runs / name)
        return runs / name

    first = run("first", "special", True)
    calls = len(scripted.calls)
    judged = []
    monkeypatch.setattr(stage.suite, "judge", lambda *a, real=stage.suite.judge: judged.append(1) or real(*a))
    second = run("second", "length", True)
    assert len(scripted.calls) == calls and not judged  # nothing sampled, nothing judged: all linked
    linked = [p for folder in ("pool", "judged") for p in (first / "bon" / folder).rglob("*") if p.is_file()]
    assert len(linked) > 4 and all(os.path.samefile(p, second / p.relative_to(first)) for p in linked)  # one file
    alone = run("alone", "length", False)
    assert len(scripted.calls) > calls and judged  # without sharing: sampled and judged again
    for table in ("bon_curves.csv", "bon_metrics.csv", "bon_rewards.csv", "bon_paired.csv"):
        if (alone / "results" / table).exists():
            assert (second / "results" / table).read_bytes() == (alone / "results" / table).read_bytes(), table


def test_bon_config_rejects_unknown_types():
    with pytest.raises(ValueError, match="unknown sycophancy task 'flattery'"):
        config(["special"], ["answer", "flattery"])


# --------------------------------------------------------------------------- resuming after a kill

SCRIPT = textwrap.dedent("""
    import sys, time
    import torch
    torch.set_num_threads(1)
    from rlhf_syco.bon import stage
    from rlhf_syco.config import ExperimentConfig
    import {module} as tests

    make_generator = stage.make_generator

    def slow_generator(*args):
        real = make_generator(*args)

        class Slow:
            def generate(self, *a, **k):
                out = real.generate(*a, **k)
                time.sleep(1.0)  # leaves time to kill the run between two shards
                return out
        return Slow()

    stage.make_generator = slow_generator
    stage.run(tests.config(["length"], ["answer", "opinion"]), sys.argv[1])
""")


@pytest.fixture
def one_thread():
    """The same thread count in this process as in the subprocess, so both sample identically."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def shards(run_dir):
    return sorted((run_dir / "bon" / "pool").glob("*/shard-*.jsonl"))


def test_resume_after_a_kill_reproduces_the_uninterrupted_run(tmp_path, one_thread, capsys):
    resolve("tiny:decoder")  # built once, before the subprocess needs it
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    stage.run(config(["length"], ["answer", "opinion"]), whole)
    total = len(shards(whole))
    assert total == 3 + 2  # answer 8 prompts, opinion 4, in shards of 3

    script = tmp_path / "run_bon.py"
    script.write_text(SCRIPT.format(module=HERE))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), *sys.path])}
    process = subprocess.Popen([sys.executable, str(script), str(killed)], env=env)
    deadline = time.time() + 120
    while not shards(killed) and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done = {p: p.stat().st_mtime_ns for p in shards(killed)}
    assert 1 <= len(done) < total, "the run was not killed in the middle of the pool"

    stage.run(config(["length"], ["answer", "opinion"]), killed)
    assert {p: p.stat().st_mtime_ns for p in done} == done  # finished shards were not drawn again
    assert [p.relative_to(killed) for p in shards(killed)] == [p.relative_to(whole) for p in shards(whole)]
    for mine, reference in zip(shards(killed), shards(whole)):
        assert mine.read_text() == reference.read_text()
    for table in ("bon_curves.csv", "bon_metrics.csv", "bon_rewards.csv"):
        assert (killed / "results" / table).read_text() == (whole / "results" / table).read_text()

    # A shard damaged on disk (truncated) is noticed, drawn again, and the results stay the same.
    damaged = shards(killed)[0]
    with open(damaged, "r+b") as f:
        f.truncate(damaged.stat().st_size // 2)
    (killed / "bon" / "DONE.json").unlink(missing_ok=True)
    capsys.readouterr()
    stage.run(config(["length"], ["answer", "opinion"]), killed)
    assert f"{damaged} is damaged" in " ".join(capsys.readouterr().err.split())
    assert damaged.read_text() == shards(whole)[0].read_text()
    for table in ("bon_curves.csv", "bon_metrics.csv", "bon_rewards.csv"):
        assert (killed / "results" / table).read_text() == (whole / "results" / table).read_text()
