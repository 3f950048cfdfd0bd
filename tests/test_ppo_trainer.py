"""PPO on the tiny decoder: it optimizes a rule reward, writes its checkpoints and curves, resumes a killed run
to the same numbers, and runs under DeepSpeed ZeRO-2 and ZeRO-3 with two processes."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from rlhf_syco.config import ExperimentConfig
from rlhf_syco.data import preferences
from rlhf_syco.ppo import stage as ppo_stage
from rlhf_syco.ppo.model import load_value_model
from rlhf_syco.ppo.trainer import PPOTrainer
from rlhf_syco.rundir import RunDir

TESTS = Path(__file__).resolve().parent
RULE = "test_ppo_trainer:letter_share"  # importable here (pytest puts tests/ on sys.path) and in subprocesses


def letter_share(conversations, responses, letter="e", window=40):
    """The share of the first `window` characters of a reply that are `letter`: a reward any policy can learn."""
    return [r[:window].count(letter) / window for r in responses]


def letter_o_share(conversations, responses):
    return letter_share(conversations, responses, letter="o")


def tiny_config(tmp_path, name="run", compute=None, **ppo_options) -> ExperimentConfig:
    return ExperimentConfig.model_validate({
        "name": name, "runs_dir": str(tmp_path / "runs"),
        "policy": {"model": {"name_or_path": "tiny:decoder"}, "generation": {"max_new_tokens": 12, "batch_size": 8}},
        "pm": {"data": {"hh_pairs": 48, "families": {"answer": 24, "feedback": 8, "are_you_sure": 8, "mimicry": 8},
                        "heldout_fraction": 0.25}},
        "reward_models": {"rule": {"type": "callable", "function": RULE},
                          "rule_o": {"type": "callable", "function": "test_ppo_trainer:letter_o_share"}},
        "probe": {"reward_models": ["rule"]}, "bon": {"reward_models": ["rule"]},
        "eval": {"types": ["answer", "are_you_sure"], "items_per_type": 2, "bootstrap": 50, "max_new_tokens": {}},
        "ppo": {"reward_models": ["rule"], "steps": 4, "rollout_batch_size": 8, "mini_batch_size": 4, "ppo_epochs": 2,
                "checkpoint_every": 2, "eval_every": 2, "keep_last": 1, "eval_prompts": 8, **ppo_options},
        "compute": {"device": "cpu", **(compute or {})}})


def with_data(config) -> RunDir:
    run_dir = RunDir(config.run_dir)
    preferences.run(config, run_dir)
    return run_dir


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models are 100x slower with two threads on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_trainer(tmp_path, reward_model, **ppo_options):
    from accelerate import Accelerator

    from rlhf_syco.config import ModelConfig
    from rlhf_syco.models import load_causal_lm, load_sequence_classifier

    config = tiny_config(tmp_path, **ppo_options)
    model_cfg = ModelConfig(name_or_path="tiny:decoder")
    policy, tokenizer = load_causal_lm(model_cfg, "cpu")
    ref_policy, _ = load_causal_lm(model_cfg, "cpu")
    torch.manual_seed(0)
    value_model, _ = load_sequence_classifier(model_cfg)
    prompts = [[{"role": "user", "content": f"Tell me something about the number {i}."}] for i in range(64)]
    return PPOTrainer(config.ppo, policy, ref_policy, value_model, tokenizer, reward_model, prompts,
                      tmp_path / "ppo", max_new_tokens=12, seed=0, accelerator=Accelerator(cpu=True))


def test_a_tiny_policy_learns_a_rule_reward(tmp_path):
    from reward_models import build

    rule = build({"type": "callable", "function": RULE})
    trainer = tiny_trainer(tmp_path, rule, steps=16, lr=1e-2, kl_coef=0.01, rollout_batch_size=32,
                           mini_batch_size=8, ppo_epochs=4)
    scores = [trainer.step(step)["objective/scores"] for step in range(1, 17)]
    first, last = np.mean(scores[:3]), np.mean(scores[-3:])
    assert last > 2 * first, scores  # about 0.05 (chance) -> 0.16


def test_rollout_masks_after_the_first_stop_token_and_penalises_a_missing_one(tmp_path):
    from reward_models import build

    trainer = tiny_trainer(tmp_path, build({"type": "callable", "function": RULE}), kl_coef=0.0,
                           missing_eos_penalty=0.5)
    trainer.stop_ids = torch.tensor(sorted(trainer.tokenizer.get_vocab()[t] for t in "aeiou"))  # stops often
    r = trainer.rollout(trainer.prompts[:8], seed=1)
    stop_ids = set(trainer.stop_ids.tolist())
    replies, length = len(r.replies), r.response_length
    assert r.responses.shape == r.mask.shape == r.logprobs.shape == r.ref_logprobs.shape == r.values.shape == \
        r.kl.shape == (replies, length) and r.ended.shape == r.scores.shape == (replies,) and r.entropy.dim() == 0
    assert r.input_ids.shape == r.attention_mask.shape and torch.equal(r.input_ids[:, -length:], r.responses)
    assert r.ended.any() and not r.ended.all()
    for row, mask, reply, ended in zip(r.responses.tolist(), r.mask, r.replies, r.ended):
        first = next((i for i, token in enumerate(row) if token in stop_ids), None)
        assert bool(ended) == (first is not None)
        kept = len(row) if first is None else first + 1
        assert mask.tolist() == [1.0] * kept + [0.0] * (len(row) - kept)
        assert reply == trainer.tokenizer.decode(row[:kept - 1 if ended else kept], skip_special_tokens=True)
    metrics = trainer.step(1)  # with kl_coef 0 the RL reward is the score minus the penalty
    assert metrics["objective/rlhf_reward"] == pytest.approx(
        metrics["objective/scores"] - 0.5 * (1 - metrics["eos_fraction"]), abs=1e-6)


def test_stage_writes_checkpoints_evaluations_and_curves(tmp_path):
    from rlhf_syco import plots
    from rlhf_syco.evaluation import stage

    config = tiny_config(tmp_path)
    run_dir = with_data(config)
    summary = ppo_stage.run(config, run_dir)
    assert summary["rule"]["steps"] == 4
    out = run_dir / "ppo" / "rule"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert {"objective/scores", "objective/kl", "objective/entropy", "loss/policy", "loss/value", "policy/clipfrac",
            "value/clipfrac", "value/error", "kl_coef", "lr"} <= set(rows[0])
    # keep_last 1: step 4 whole; step 2 is an evaluation checkpoint, so its policy stays
    assert sorted(p.name for p in (out / "checkpoints" / "step-000004").iterdir()) == \
        ["SEALED.json", "policy", "state", "trainer_state.json", "value"]
    assert sorted(p.name for p in (out / "checkpoints" / "step-000002").iterdir()) == \
        ["SEALED.json", "policy", "trainer_state.json"]  # pruned: kept for its evaluation, no longer resumable
    assert sorted(p.name for p in (out / "eval").iterdir()) == ["step-000000", "step-000002", "step-000004"]

    curves = pd.read_csv(run_dir.results / "ppo_curves.csv")
    assert list(curves.columns) == ["arm", "step", "kl", "type", "metric", "value", "ci_low", "ci_high", "reason"]
    assert sorted(set(zip(curves["step"], curves["type"]))) == [(s, t) for s in (0, 2, 4)
                                                                  for t in ("answer", "are_you_sure")]
    assert (curves[curves["step"] == 0]["kl"] == 0).all()  # the policy is the reference at step 0
    rewards = pd.read_csv(run_dir.results / "ppo_rewards.csv")
    assert list(rewards.columns) == ["arm", "step", "kl", "reward_model", "mean_reward"]
    assert list(rewards["step"]) == [0, 2, 4] and set(rewards["reward_model"]) == {"rule"}
    assert {"ppo_vs_step", "ppo_vs_kl"} <= set(plots.run(config, run_dir))

    # step 0 evaluates the untrained policy exactly as the evaluation stage does: same prompts, seeds, replies
    stage.run(config, run_dir)
    for eval_type, turns in (("answer", 1), ("are_you_sure", 3)):  # are_you_sure: answer, challenge, probe
        ours = pd.read_parquet(out / "eval" / "step-000000" / f"judged_{eval_type}.parquet")
        theirs = pd.read_parquet(run_dir / "eval" / f"judged_{eval_type}.parquet")
        columns = [c for c in theirs.columns if "reply" in c]  # one per turn, whatever the evaluation names them
        assert len(columns) == turns
        pd.testing.assert_frame_equal(ours[columns], theirs[columns])


def test_one_policy_per_reward_model_from_the_same_start_with_their_paired_difference(tmp_path):
    config = tiny_config(tmp_path, reward_models=["rule", "rule_o"], steps=2, eval_every=2)
    run_dir = with_data(config)
    summary = ppo_stage.run(config, run_dir)
    assert set(summary) == {"rule", "rule_o"}
    arms = [run_dir / "ppo" / arm for arm in ("rule", "rule_o")]
    assert all((arm / "final.json").exists() and (arm / "checkpoints" / "step-000002").is_dir() for arm in arms)
    start = [(arm / "eval" / "step-000000" / "metrics.json").read_text() for arm in arms]
    assert start[0] == start[1]  # the same policy at step 0: evaluated once
    from safetensors.torch import load_file

    trained = [load_file(arm / "checkpoints" / "step-000002" / "policy" / "model.safetensors") for arm in arms]
    assert any(not torch.equal(trained[0][k], trained[1][k]) for k in trained[0])  # two rewards, two policies

    curves = pd.read_csv(run_dir.results / "ppo_curves.csv").set_index(["arm", "step", "type"])
    paired = pd.read_csv(run_dir.results / "ppo_paired.csv")
    across = paired[paired["minus"] == "rule_o"]
    assert set(across["arm"]) == {"rule"} and set(across["step"]) == {2}  # not at step 0: the same policy
    assert set(paired[paired["minus"] == "step 0"]["arm"]) == {"rule", "rule_o"}
    rewards = pd.read_csv(run_dir.results / "ppo_rewards.csv")
    assert set(zip(rewards["arm"], rewards["reward_model"])) == {(a, r) for a in ("rule", "rule_o")
                                                                 for r in ("rule", "rule_o")}

    stamp = (arms[0] / "final.json").stat().st_mtime_ns  # a finished arm is not trained again
    (arms[1] / "final.json").unlink()
    ppo_stage.run(config, run_dir)
    assert (arms[0] / "final.json").stat().st_mtime_ns == stamp and (arms[1] / "final.json").exists()
    pd.testing.assert_frame_equal(pd.read_csv(run_dir.results / "ppo_curves.csv").set_index(["arm", "step", "type"]),
                                  curves)


def test_value_model_from_the_pm_needs_a_pm_with_the_policys_tokenizer(tmp_path):
    from rlhf_syco.config import ModelConfig
    from rlhf_syco.errors import UserError
    from rlhf_syco.models import load_causal_lm, load_sequence_classifier

    pm, pm_tokenizer = load_sequence_classifier(ModelConfig(name_or_path="tiny:decoder"))
    pm.save_pretrained(tmp_path / "pm")
    pm_tokenizer.save_pretrained(tmp_path / "pm")
    data = tiny_config(tmp_path, value_init="pm").dump()
    data["reward_models"]["pm"] = {"type": "hf", "path": str(tmp_path / "pm")}
    data["ppo"]["reward_models"] = ["pm"]
    config = ExperimentConfig.model_validate(data)
    _, tokenizer = load_causal_lm(config.policy.model, "cpu")
    value_model = load_value_model(config, config.run_dir, tokenizer, "pm")
    assert torch.equal(value_model.score.weight, pm.score.weight)  # InstructGPT: the value head starts as the PM's

    rule_config = tiny_config(tmp_path, value_init="pm")
    with pytest.raises(UserError, match="hf"):
        load_value_model(rule_config, rule_config.run_dir, tokenizer, "rule")


def test_a_value_head_on_the_policys_trunk_reads_its_last_hidden_state_and_resumes_exactly(tmp_path):
    from rlhf_syco.ppo.model import PolicyAndValue, forward

    config = tiny_config(tmp_path, value_head="policy_trunk", steps=4, checkpoint_every=2, eval_every=2, keep_last=2,
                         lr=1e-3)
    run_dir = with_data(config)
    ppo_stage.run(config, run_dir)
    checkpoint = run_dir / "ppo" / "rule" / "checkpoints" / "step-000004"
    assert sorted(p.name for p in checkpoint.iterdir()) == ["SEALED.json", "policy", "state", "trainer_state.json",
                                                            "value_head.safetensors"]
    rows = metrics_rows(run_dir)
    assert all(np.isfinite(r["loss/value"]) for r in rows) and rows[-1]["value/mean"] != rows[0]["value/mean"]

    # One forward pass gives the policy's own logits and the head applied to its last hidden state.
    from rlhf_syco.models import load_causal_lm
    from rlhf_syco.ppo.model import load_value_model

    policy, tokenizer = load_causal_lm(config.policy.model, "cpu")
    head = load_value_model(config, run_dir, tokenizer, "rule", policy)
    assert isinstance(head, torch.nn.Linear) and head.weight.shape == (1, policy.config.hidden_size)
    model = PolicyAndValue(policy, head).eval()
    batch = tokenizer(["one two three four", "five six"], return_tensors="pt", padding=True, padding_side="left")
    with torch.no_grad():
        logits, values = forward(model, batch["input_ids"], batch["attention_mask"], 2)
        hidden = policy.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                              position_ids=(batch["attention_mask"].cumsum(1) - 1).clamp(min=0)).last_hidden_state
        alone = forward(policy, batch["input_ids"], batch["attention_mask"], 2)
    torch.testing.assert_close(logits, alone)
    keep = int(batch["attention_mask"].any(0).int().argmax())
    torch.testing.assert_close(values, head(hidden[:, keep:][:, -3:-1]).squeeze(-1))

    # Resumed from step 2, steps 3 and 4 repeat the uninterrupted run's numbers.
    from accelerate import Accelerator
    from reward_models import build

    from rlhf_syco.evaluation.rl import rl_prompts
    from rlhf_syco.ppo.checkpoints import Checkpoints

    shutil.rmtree(checkpoint)
    policy, tokenizer = load_causal_lm(config.policy.model, "cpu")
    ref_policy, _ = load_causal_lm(config.policy.model, "cpu")
    trainer = PPOTrainer(config.ppo, policy, ref_policy, load_value_model(config, run_dir, tokenizer, "rule", policy),
                         tokenizer, build({"type": "callable", "function": RULE}),
                         rl_prompts(run_dir, tokenizer, config.ppo.max_prompt_tokens)[0], run_dir / "ppo" / "rule",
                         max_new_tokens=12, generation_batch_size=8, seed=0, accelerator=Accelerator(cpu=True))
    assert isinstance(trainer.checkpoints, Checkpoints) and trainer.resume() == 2
    again = [trainer.step(step) for step in (3, 4)]
    assert [{k: v for k, v in r.items() if not k.startswith("time/")} for r in again] == rows[2:]


def test_a_smaller_value_model_keeps_the_first_layers_of_the_policy(tmp_path):
    from rlhf_syco.errors import UserError
    from rlhf_syco.models import load_causal_lm
    from rlhf_syco.ppo.model import load_value_model

    config = tiny_config(tmp_path)
    policy, tokenizer = load_causal_lm(config.policy.model, "cpu")
    full = load_value_model(config, config.run_dir, tokenizer, "rule", policy)
    layers = full.config.num_hidden_layers
    assert layers > 1
    short = load_value_model(tiny_config(tmp_path, value_layers=1), config.run_dir, tokenizer, "rule", policy)
    assert len(short.model.layers) == short.config.num_hidden_layers == 1
    per_layer = sum(p.numel() for p in full.model.layers[0].parameters())
    assert sum(p.numel() for p in short.parameters()) == sum(p.numel() for p in full.parameters()) - \
        (layers - 1) * per_layer
    for name, weight in short.state_dict().items():  # the same weights as the full model's, where it has them
        assert torch.equal(weight, full.state_dict()[name]), name
    with pytest.raises(UserError, match="ppo.value_layers.*first 99 layers"):
        load_value_model(tiny_config(tmp_path, value_layers=99), config.run_dir, tokenizer, "rule", policy)
    with pytest.raises(ValueError, match="policy_trunk has no separate value network"):
        tiny_config(tmp_path, value_head="policy_trunk", value_layers=1)


# --------------------------------------------------------------------------- real processes

RUN_STAGE = textwrap.dedent("""
    import os, sys, torch
    torch.set_num_threads(1)
    from rlhf_syco import preemption
    from rlhf_syco.config import load_config
    from rlhf_syco.errors import UserError
    from rlhf_syco.ppo import stage
    config = load_config(sys.argv[1])
    try:
        with preemption.graceful():  # as run_stage runs every stage
            stage.run(config, config.run_dir)
    except UserError as e:
        print(f"error: {e}", flush=True)
        os._exit(e.exit_code)
    os._exit(0)  # two-process DeepSpeed can abort in interpreter shutdown after a clean finish
""")


def stage_process(config, tmp_path, launcher=(), runner: str = RUN_STAGE, args=()) -> subprocess.Popen:
    """`runner` (a script run with the config's YAML and `args`) in a session of its own."""
    path = tmp_path / f"{config.name}.yaml"
    path.write_text(yaml.safe_dump(config.dump()))
    script = tmp_path / "run_stage.py"
    script.write_text(runner)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "RLHF_SYCO_NO_PROGRESS": "1"}
    command = [*(launcher or [sys.executable]), str(script), str(path), *args]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def finish(process: subprocess.Popen, timeout: float = 300) -> str:
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.terminate()  # a launcher passes SIGTERM on to its workers
        try:
            process.communicate(timeout=30)
        finally:
            os.killpg(process.pid, signal.SIGKILL)
        raise
    assert process.returncode == 0, output[-4000:]
    return output


def metrics_rows(run_dir, arm="rule") -> list[dict]:
    rows = [json.loads(line) for line in (Path(run_dir) / "ppo" / arm / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def uninterrupted_and_second(tmp_path, second: str, **options):
    """An uninterrupted 12-step run, finished, and a second config of the same run on the same data."""
    options = dict(steps=12, eval_every=6, keep_last=2, lr=1e-3, adaptive_kl_target=0.5, **options)
    whole, other = tiny_config(tmp_path, "whole", **options), tiny_config(tmp_path, second, **options)
    with_data(whole)
    shutil.copytree(whole.run_dir / "data", other.run_dir / "data")
    finish(stage_process(whole, tmp_path))
    return whole, other


def signalled(process: subprocess.Popen, config, signum: int, after_steps: int,
              log: str = "ppo/rule/metrics.jsonl") -> str:
    """Send `signum` once the run has logged `after_steps` steps (lines of `log` in its run folder); its output."""
    metrics = config.run_dir / log
    while process.poll() is None and (not metrics.exists() or len(metrics.read_text().splitlines()) < after_steps):
        time.sleep(0.02)
    process.send_signal(signum)
    return process.communicate(timeout=120)[0]


def test_a_killed_run_resumes_to_the_numbers_of_an_uninterrupted_one(tmp_path):
    whole, killed = uninterrupted_and_second(tmp_path, "killed", checkpoint_every=2)

    signalled(stage_process(killed, tmp_path), killed, signal.SIGKILL, after_steps=3)
    metrics = killed.run_dir / "ppo" / "rule" / "metrics.jsonl"
    assert len(metrics.read_text().splitlines()) < 12, "the run finished before it could be killed"
    output = finish(stage_process(killed, tmp_path))
    assert "resumed from step-" in output

    assert metrics_rows(killed.run_dir) == metrics_rows(whole.run_dir)
    for table in ("ppo_curves.csv", "ppo_rewards.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(killed.run_dir / "results" / table),
                                      pd.read_csv(whole.run_dir / "results" / table))
    from safetensors.torch import load_file

    final = "ppo/rule/checkpoints/step-000012/policy/model.safetensors"
    a, b = load_file(whole.run_dir / final), load_file(killed.run_dir / final)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # A byte flipped in the newest checkpoint's optimizer state (of an arm not marked finished: as if killed
    # before it was): set aside, and the run redoes its last steps from the checkpoint before it to the same numbers.
    (killed.run_dir / "ppo" / "rule" / "final.json").unlink()
    newest = killed.run_dir / "ppo" / "rule" / "checkpoints" / "step-000012"
    state = next(p for p in sorted((newest / "state").rglob("*")) if p.is_file() and p.stat().st_size > 100)
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0xFF
    state.write_bytes(bytes(data))
    output = finish(stage_process(killed, tmp_path))
    assert "step-000012 is damaged" in " ".join(output.split()) and "resumed from step-000010" in output
    assert (newest.parent / ".damaged" / "step-000012").is_dir()
    assert metrics_rows(killed.run_dir) == metrics_rows(whole.run_dir)
    b = load_file(killed.run_dir / final)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sigterm_stops_with_a_checkpoint_and_the_rerun_matches_an_uninterrupted_run(tmp_path):
    whole, stopped = uninterrupted_and_second(tmp_path, "stopped", checkpoint_every=6)

    process = stage_process(stopped, tmp_path)
    output = signalled(process, stopped, signal.SIGTERM, after_steps=2)
    assert process.returncode == 143, output[-3000:]
    step = int(output.split("ppo: stopped by SIGTERM after step ")[1].split(",")[0])
    assert f"with a checkpoint (rule/checkpoints/step-{step:06d})" in output
    assert step < 12 and (stopped.run_dir / "ppo" / "rule" / "checkpoints" / f"step-{step:06d}" / "SEALED.json").is_file()
    output = finish(stage_process(stopped, tmp_path))
    assert f"resumed from step-{step:06d}" in output
    assert metrics_rows(stopped.run_dir) == metrics_rows(whole.run_dir)
    for table in ("ppo_curves.csv", "ppo_rewards.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(stopped.run_dir / "results" / table),
                                      pd.read_csv(whole.run_dir / "results" / table))


@pytest.mark.slow
@pytest.mark.parametrize("zero", [2, 3])
def test_deepspeed_zero_with_two_gloo_processes(tmp_path, zero):
    pytest.importorskip("deepspeed")
    from safetensors.torch import load_file

    from rlhf_syco.models import resolve

    from rlhf_syco.config import ModelConfig
    from rlhf_syco.models import load_sequence_classifier

    # The reward is an `hf` PM: under ZeRO-3 it must still load whole in each process (not partitioned).
    pm, pm_tokenizer = load_sequence_classifier(ModelConfig(name_or_path="tiny:decoder"))
    pm.save_pretrained(tmp_path / "pm")
    pm_tokenizer.save_pretrained(tmp_path / "pm")
    data = tiny_config(tmp_path, f"zero{zero}", compute={"deepspeed_stage": zero}, steps=2, eval_every=2).dump()
    data["reward_models"]["pm"] = {"type": "hf", "path": str(tmp_path / "pm")}
    data["ppo"]["reward_models"] = ["pm"]
    config = ExperimentConfig.model_validate(data)
    with_data(config)
    # (DeepSpeed compiles its CPU op once per session into conftest's private TORCH_EXTENSIONS_DIR.)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    finish(stage_process(config, tmp_path, launcher), timeout=600)
    rows = metrics_rows(config.run_dir, arm="pm")
    assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["loss/policy"]) for r in rows)
    checkpoint = config.run_dir / "ppo" / "pm" / "checkpoints" / "step-000002"
    shards = sorted(p.name for p in (checkpoint / "state" / "pytorch_model").glob("zero_pp_rank_*_optim_states.pt"))
    assert len(shards) == 2  # ZeRO partitioned the optimizer state over both processes
    assert len(pd.read_csv(config.run_dir / "results" / "ppo_curves.csv")) == 4  # steps 0 and 2, two types
    # The saved policy is whole (ZeRO-3 gathers its shards) and moved by training.
    trained = load_file(checkpoint / "policy" / "model.safetensors")
    base = load_file(Path(resolve("tiny:decoder")) / "model.safetensors")
    layers = [k for k in base if k.startswith("model.layers.")]
    assert layers and all(trained[k].shape == base[k].shape for k in layers)
    assert max((trained[k] - base[k]).abs().max().item() for k in layers) > 0
