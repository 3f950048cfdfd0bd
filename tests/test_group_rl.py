"""GRPO and RLOO through TRL (`rlhf_syco/group_rl/`): our reward models as TRL reward functions, the KL the
evaluation reports, the stages' arms, evaluations and tables, and exact resume after a kill, a damaged
checkpoint or SIGTERM."""

import json
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from rlhf_syco.config import ExperimentConfig
from rlhf_syco.evaluation.metrics import summarize
from rlhf_syco.evaluation.tasks import get_task
from rlhf_syco.group_rl import stage as group_stage
from rlhf_syco.intervention.report import judged_frames
import test_ppo_trainer as ppo_test
from test_ppo_trainer import (RULE, finish, letter_share, one_thread, signalled,  # noqa: F401
                              tiny_config, with_data)

OPTIMIZERS = ["grpo", "rloo"]


def config_for(tmp_path, optimizer, name="run", **options) -> ExperimentConfig:
    data = tiny_config(tmp_path, name).dump()
    data[optimizer] = {"reward_models": ["rule"], "steps": 4, "prompts_per_step": 2, "group_size": 4,
                       "checkpoint_every": 2, "eval_every": 2, "keep_last": 1, "eval_prompts": 8, **options}
    return ExperimentConfig.model_validate(data)


def trl_trainer(config, optimizer, out, prompts):
    import datasets
    from trl import GRPOTrainer, RLOOTrainer

    from reward_models import build
    from rlhf_syco.models import load_causal_lm

    policy, tokenizer = load_causal_lm(config.policy.model, "cpu")
    rule = group_stage.RewardFunction("rule", build({"type": "callable", "function": RULE}))
    trainer_class = GRPOTrainer if optimizer == "grpo" else RLOOTrainer
    return trainer_class(model=policy, reward_funcs=[rule], args=group_stage.trl_arguments(config, optimizer, out),
                         train_dataset=datasets.Dataset.from_list([{"prompt": p} for p in prompts]),
                         processing_class=tokenizer)


PROMPTS = [[{"role": "user", "content": f"Tell me something about the number {i}."}] for i in range(64)]


def test_a_reward_model_scores_the_reply_text_of_trls_chat_completions():
    from reward_models import build

    rule = group_stage.RewardFunction("rule", build({"type": "callable", "function": RULE}))
    prompts = PROMPTS[:3]
    replies = ["eeee and then e", "nothing", ""]
    completions = [[{"role": "assistant", "content": r}] for r in replies]
    assert rule(prompts=prompts, completions=completions, completion_ids=None) == \
        pytest.approx(letter_share(prompts, replies))
    assert rule.__name__ == "rule"  # TRL names the reward's logged metrics after it


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_a_tiny_policy_learns_a_rule_reward(tmp_path, optimizer):
    config = config_for(tmp_path, optimizer, steps=16, prompts_per_step=8, group_size=4, lr=1e-2, kl_coef=0.01,
                        checkpoint_every=100)
    trainer = trl_trainer(config, optimizer, tmp_path / "out", PROMPTS)
    trainer.train()
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    assert len(rewards) == 16
    assert np.mean(rewards[-3:]) > 2 * np.mean(rewards[:3]), rewards  # about 0.04 (chance) -> 0.12-0.15


def test_the_kl_of_a_batch_is_the_sum_of_each_replys_log_ratios_computed_alone(tmp_path):
    """`reply_logprobs` on a left-padded batch against one unpadded forward pass per reply; and the evaluation's KL
    is 0 exactly before training and positive after."""
    from rlhf_syco.generation import encode_prompts, render_prompts

    config = config_for(tmp_path, "grpo", steps=4, prompts_per_step=8, lr=1e-2, checkpoint_every=100)
    prompts = [PROMPTS[0], [{"role": "user", "content": "A much longer question, with many more words in it than "
                                                        "the others have, about the number 7?"}], PROMPTS[5]]
    trainer = trl_trainer(config, "grpo", tmp_path / "out", PROMPTS)
    policy = group_stage.TrainedPolicy(trainer, config)
    replies, kl = policy.replies_and_kl(prompts, seed=3)
    assert len(replies) == 3 and torch.equal(kl, torch.zeros(3))  # the policy is the reference
    trainer.train()
    replies, kl = policy.replies_and_kl(prompts, seed=3)
    assert (kl != 0).all()

    tok = policy.tokenizer
    ids, mask = encode_prompts(tok, render_prompts(tok, prompts), "cpu")
    responses = torch.randint(5, len(tok), (3, 6), generator=torch.Generator().manual_seed(0))
    reply_mask = torch.tensor([[1.0] * 6, [1.0] * 3 + [0.0] * 3, [1.0] * 5 + [0.0]])
    batched = group_stage.reply_logprobs(trainer.model, ids, mask, responses, reply_mask, 0.7, batch_size=2)
    for row in range(3):
        prompt = ids[row][mask[row].bool()]
        kept = responses[row][:int(reply_mask[row].sum())]
        with torch.no_grad():
            logits = trainer.model(torch.cat([prompt, kept])[None]).logits[0, len(prompt) - 1:-1]
        alone = torch.log_softmax(logits / 0.7, -1).gather(-1, kept[:, None]).squeeze(-1)
        torch.testing.assert_close(batched[row][:len(kept)], alone, atol=1e-5, rtol=1e-5)
        assert (batched[row][len(kept):] == 0).all()


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_stage_trains_one_policy_per_reward_model_with_evaluations_and_tables(tmp_path, optimizer):
    from safetensors.torch import load_file

    from rlhf_syco import plots

    config = config_for(tmp_path, optimizer, reward_models=["rule", "rule_o"], lr=1e-2)
    config = ExperimentConfig.model_validate({**config.dump(), "eval": {**config.dump()["eval"], "min_items": 1}})
    run_dir = with_data(config)
    summary = group_stage.run(config, run_dir, optimizer)
    assert set(summary) == {"rule", "rule_o"} and summary["rule"]["steps"] == 4
    arms = [run_dir / optimizer / arm for arm in ("rule", "rule_o")]
    for arm in arms:
        assert sorted(p.name for p in arm.iterdir()) == ["eval", "final.json", "log_history.jsonl", "policy"]
        assert sorted(p.name for p in (arm / "eval").iterdir()) == ["step-000000", "step-000002", "step-000004"]
        rows = [json.loads(line) for line in (arm / "log_history.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [1, 2, 3, 4] and {"reward", "reward_std", "entropy"} <= set(rows[0])
    start = [(arm / "eval" / "step-000000" / "metrics.json").read_text() for arm in arms]
    assert start[0] == start[1]  # the same policy at step 0: evaluated once
    trained = [load_file(arm / "policy" / "model.safetensors") for arm in arms]
    assert any(not torch.equal(trained[0][k], trained[1][k]) for k in trained[0])  # two rewards, two policies

    curves = pd.read_csv(run_dir.results / f"{optimizer}_curves.csv")
    assert list(curves.columns) == ["arm", "step", "kl", "type", "metric", "value", "ci_low", "ci_high", "reason"]
    assert sorted(set(zip(curves["arm"], curves["step"], curves["type"]))) == [
        (a, s, t) for a in ("rule", "rule_o") for s in (0, 2, 4) for t in ("answer", "are_you_sure")]
    assert (curves[curves["step"] == 0]["kl"] == 0).all() and (curves[curves["step"] == 4]["kl"] != 0).all()
    paired = pd.read_csv(run_dir.results / f"{optimizer}_paired.csv")
    assert set(paired[paired["minus"] == "rule_o"]["step"]) == {2, 4}
    # every evaluated record's judgments, read back, give the curves (what runs compare over items)
    judged = judged_frames(run_dir.results / f"{optimizer}_judged.jsonl", ("type", "arm", "step"))
    assert len(judged) == len(curves) and curves["value"].notna().any()
    for row in curves.itertuples():
        stats = summarize(get_task(row.type), judged[row.type, row.arm, row.step], bootstrap=10,
                          min_items=config.eval.min_items)
        assert stats[row.metric]["value"] == pytest.approx(row.value, nan_ok=True)
    rewards = pd.read_csv(run_dir.results / f"{optimizer}_rewards.csv")
    assert set(zip(rewards["arm"], rewards["reward_model"])) == {(a, r) for a in ("rule", "rule_o")
                                                                 for r in ("rule", "rule_o")}
    drawn = plots.run(config, run_dir)
    assert {f"{optimizer}_vs_step", f"{optimizer}_vs_kl"} <= set(drawn) and "optimizers_vs_kl" not in drawn

    stamp = (arms[0] / "final.json").stat().st_mtime_ns  # a finished arm is not trained again
    group_stage.run(config, run_dir, optimizer)
    assert (arms[0] / "final.json").stat().st_mtime_ns == stamp


def test_arms_default_to_ppos_and_an_unknown_one_is_a_config_error(tmp_path):
    from rlhf_syco.config import load_config
    from rlhf_syco.errors import UserError

    config = tiny_config(tmp_path, reward_models=["rule", "rule_o"])
    assert config.arms("grpo") == config.arms("rloo") == ["rule", "rule_o"]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config.dump()))
    with pytest.raises(UserError, match=r"rloo.reward_models: unknown reward model 'rul' \(did you mean 'rule'"):
        load_config(path, ["rloo.reward_models=[rul]"])
    with pytest.raises(UserError, match="group_size"):
        load_config(path, ["grpo.group_size=1"])


def test_the_comparison_keeps_the_shared_reward_models_and_one_metric_per_type():
    from rlhf_syco.plots import optimizer_rows

    stats = {"value": 0.1, "ci_low": 0.0, "ci_high": 0.2}
    bon = pd.DataFrame([{"type": "answer", "metric": "answer_sycophancy", "reward_model": rm, "n": n,
                         "kl_bon": np.log(n) - (n - 1) / n, **stats} for rm in ("pm", "pm_nonsyco") for n in (1, 4)])
    ppo = pd.DataFrame([{"arm": "pm", "step": s, "kl": 0.5 * s, "type": t, "metric": m, **stats}
                        for s in (0, 2) for t, m in (("answer", "answer_sycophancy"), ("mimicry", "mimicry_rate"))])
    grpo = ppo.assign(metric=np.where(ppo["type"] == "answer", "answer_endorsement", "mimicry_rate"))
    rows = optimizer_rows(bon, {"PPO": ppo, "GRPO": grpo})
    assert set(rows["reward_model"]) == {"pm"}  # pm_nonsyco: best-of-N only
    answer = rows[rows["type"] == "answer"]
    assert set(answer["metric"]) == {"answer_sycophancy"} and set(answer["optimizer"]) == {"best-of-N", "PPO"}
    assert set(rows[rows["type"] == "mimicry"]["optimizer"]) == {"PPO", "GRPO"}
    assert list(answer[answer["optimizer"] == "best-of-N"]["kl"]) == pytest.approx([0.0, np.log(4) - 0.75])
    assert list(rows[rows["optimizer"] == "PPO"]["kl"]) == [0.0, 0.0, 1.0, 1.0]


# --------------------------------------------------------------------------- real processes

RUN_STAGE = textwrap.dedent("""
    import os, sys, torch
    torch.set_num_threads(1)
    from rlhf_syco import preemption
    from rlhf_syco.config import load_config
    from rlhf_syco.errors import UserError
    from rlhf_syco.group_rl import stage
    config = load_config(sys.argv[1])
    try:
        with preemption.graceful():
            stage.run(config, config.run_dir, sys.argv[2])
    except UserError as e:
        print(f"error: {e}", flush=True)
        os._exit(e.exit_code)
    os._exit(0)
""")


def stage_process(config, optimizer, tmp_path, launcher=()) -> subprocess.Popen:
    return ppo_test.stage_process(config, tmp_path, launcher, runner=RUN_STAGE, args=[optimizer])


def history(run_dir, optimizer) -> list[dict]:
    """TRL's logged metrics of arm `rule`, without the timings."""
    rows = [json.loads(line) for line in (Path(run_dir) / optimizer / "rule" / "log_history.jsonl").read_text()
            .splitlines()]
    return [{k: v for k, v in r.items() if "time" not in k and "per_second" not in k} for r in rows]


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_killed_damaged_and_signalled_runs_resume_to_the_numbers_of_an_uninterrupted_one(tmp_path, optimizer):
    options = dict(steps=12, eval_every=6, checkpoint_every=2, keep_last=2, lr=1e-2)
    whole = config_for(tmp_path, optimizer, "whole", **options)
    with_data(whole)
    finish(stage_process(whole, optimizer, tmp_path))
    tables = [f"{optimizer}_{t}.csv" for t in ("curves", "rewards")]

    def same_as_whole(run):
        assert history(run.run_dir, optimizer) == history(whole.run_dir, optimizer)
        for table in tables:
            pd.testing.assert_frame_equal(pd.read_csv(run.run_dir / "results" / table),
                                          pd.read_csv(whole.run_dir / "results" / table))

    killed = config_for(tmp_path, optimizer, "killed", **options)
    shutil.copytree(whole.run_dir / "data", killed.run_dir / "data")
    log = f"{optimizer}/rule/log_history.jsonl"
    signalled(stage_process(killed, optimizer, tmp_path), killed, signal.SIGKILL, 5, log)
    checkpoints = killed.run_dir / optimizer / "rule" / "checkpoints"
    newest = max(checkpoints.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert int(newest.name.split("-")[1]) < 12, "the run finished before it could be killed"
    # The newest checkpoint's weights cut short, as a failing disk leaves them: set aside, and the run resumes
    # from the one before it.
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    output = finish(stage_process(killed, optimizer, tmp_path))
    assert f"{newest.name} is damaged" in " ".join(output.split())
    same_as_whole(killed)

    stopped = config_for(tmp_path, optimizer, "stopped", **options)
    shutil.copytree(whole.run_dir / "data", stopped.run_dir / "data")
    process = stage_process(stopped, optimizer, tmp_path)
    output = signalled(process, stopped, signal.SIGTERM, 3, log)
    assert process.returncode == 143, output[-3000:]
    step = int(output.split(f"{optimizer}: stopped by SIGTERM after step ")[1].split(",")[0])
    assert step < 12 and f"with a checkpoint (checkpoint-{step})" in output
    finish(stage_process(stopped, optimizer, tmp_path))
    same_as_whole(stopped)


@pytest.mark.slow
def test_grpo_with_two_gloo_processes(tmp_path):
    """The stage as every rank of a two-process launch (as `torchrun`, or a Ray Train group, runs it): each rank
    samples half of a step's replies, TRL gathers the rewards for the group advantages, the evaluation splits the
    records between the ranks and rank 0 writes everything."""
    import socket

    config = config_for(tmp_path, "grpo", "two", steps=4, prompts_per_step=2, group_size=4, lr=1e-2)
    with_data(config)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    finish(stage_process(config, "grpo", tmp_path, launcher), timeout=600)
    out = config.run_dir / "grpo" / "rule"
    assert json.loads((out / "final.json").read_text())["steps"] == 4
    assert [r["step"] for r in history(config.run_dir, "grpo")] == [1, 2, 3, 4]
    curves = pd.read_csv(config.run_dir / "results" / "grpo_curves.csv")
    assert sorted(set(zip(curves["step"], curves["type"]))) == [(s, t) for s in (0, 2, 4)
                                                                  for t in ("answer", "are_you_sure")]
    judged = pd.read_parquet(out / "eval" / "step-000004" / "judged_answer.parquet")
    assert len(judged) == len(pd.read_parquet(out / "eval" / "step-000000" / "judged_answer.parquet")) > 0
