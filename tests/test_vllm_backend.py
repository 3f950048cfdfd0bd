"""The `vllm` backend on the real CPU engine (SmolLM2-135M-Instruct): the reproducibility contract of `hf` (a
batch's samples depend only on the seed, its index and its prompts, whatever the engine ran before), greedy
decoding that agrees with transformers, prefills, and one-line errors."""

import random

import numpy as np
import pytest
import torch

from rlhf_syco.config import GenerationConfig, ModelConfig
from rlhf_syco.errors import UserError
from rlhf_syco.generation import HFGenerator, make_generator
from rlhf_syco.models import load_causal_lm

pytest.importorskip("vllm")
pytestmark = pytest.mark.slow

QUESTIONS = ["What is the capital of France?", "Name a poet.", "Is 17 a prime number?", "Why is the sky blue?",
             "Who wrote Hamlet?", "What does a thermometer measure?"]
CONVERSATIONS = [[{"role": "user", "content": q}] for q in QUESTIONS]
SETTINGS = dict(temperature=0.7, top_p=0.9, batch_size=2, max_new_tokens=16, dtype="float32")


@pytest.fixture(scope="module")
def engine():
    generator = make_generator(ModelConfig(), GenerationConfig(backend="vllm", **SETTINGS), "cpu")
    yield generator
    generator.close()


def test_a_batch_depends_only_on_seed_index_and_prompts(engine):
    first = engine.generate(CONVERSATIONS, 3, seed=5)
    other_first_batch = engine.generate([CONVERSATIONS[5], CONVERSATIONS[4], *CONVERSATIONS[2:4]], 3, seed=5)
    again = engine.generate(CONVERSATIONS, 3, seed=5)
    assert again == first  # nothing carries over from earlier calls (prefix cache, RNG)
    assert other_first_batch[2:] == first[2:4]  # batch 1 is the same whatever batch 0 held
    assert engine.generate(CONVERSATIONS[2:4], 3, seed=5) != first[2:4]  # ... and its index matters
    assert engine.generate(CONVERSATIONS, 3, seed=6) != first
    assert all(len(samples) == 3 for samples in first)
    assert sum(len(set(samples)) for samples in first) > len(first)  # the n samples of a prompt differ


def seed_everything(seed: int) -> None:
    random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)


def draws() -> tuple:
    return random.random(), np.random.rand(), torch.rand(1).item()


def test_sampling_leaves_the_callers_rng_alone(engine):
    seed_everything(123)
    expected = draws()
    seed_everything(123)
    engine.generate(CONVERSATIONS[:2], 2, seed=1)
    assert draws() == expected


def test_greedy_agrees_with_transformers_and_prefill_continues_the_reply():
    settings = {**SETTINGS, "temperature": 0.0, "max_new_tokens": 12}
    seed_everything(7)
    expected = draws()
    seed_everything(7)
    greedy = make_generator(ModelConfig(), GenerationConfig(backend="vllm", **settings), "cpu")
    assert draws() == expected  # vLLM seeds all three globally
    prefill = [None, "The poet is", None, "The sky is blue because", None, None]
    try:
        ours = greedy.generate(CONVERSATIONS, 2, 0, prefill)
    finally:
        greedy.close()
    model, tokenizer = load_causal_lm(ModelConfig(), "cpu")
    reference = HFGenerator(model, tokenizer, GenerationConfig(**settings)).generate(CONVERSATIONS, 2, 0, prefill)
    assert all(a == b for a, b in ours)  # greedy: one reply, copied n times
    # fp32 on both; the engine's kernels differ from transformers', so allow one near-tie to flip
    assert sum(o == r for o, r in zip(ours, reference)) >= len(QUESTIONS) - 1
    assert not ours[1][0].startswith("The poet is")  # the reply is what comes after the prefill


def test_unknown_engine_option_is_a_user_error():
    with pytest.raises(UserError, match="policy.generation.engine_options"):
        make_generator(ModelConfig(), GenerationConfig(backend="vllm", engine_options={"no_such_option": 1}), "cpu")


def test_ppo_evaluates_its_checkpoints_through_the_engine_as_the_evaluation_stage_does(tmp_path):
    """Step 0 of PPO samples from the weights in memory, saved for the engine: the replies must be the
    evaluation stage's, which loads the same model from its folder."""
    import pandas as pd

    from rlhf_syco.config import ExperimentConfig
    from rlhf_syco.data import preferences
    from rlhf_syco.evaluation import stage
    from rlhf_syco.ppo import stage as ppo_stage
    from rlhf_syco.rundir import RunDir

    config = ExperimentConfig.model_validate({
        "name": "run", "runs_dir": str(tmp_path / "runs"),
        "policy": {"generation": {**SETTINGS, "backend": "vllm", "max_new_tokens": 8, "batch_size": 4}},
        "pm": {"data": {"hh_pairs": 16, "families": {"answer": 16}, "heldout_fraction": 0.25}},
        "reward_models": {"rule": {"type": "callable", "function": "test_ppo_trainer:letter_share"}},
        "probe": {"reward_models": ["rule"]}, "bon": {"reward_models": ["rule"]},
        "eval": {"types": ["answer", "are_you_sure"], "items_per_type": 2, "bootstrap": 20, "min_items": 1,
                 "max_new_tokens": {}},
        "ppo": {"reward_models": ["rule"], "steps": 1, "rollout_batch_size": 2, "mini_batch_size": 2, "ppo_epochs": 1,
                "checkpoint_every": 1, "eval_every": 1, "keep_last": 1, "eval_prompts": 2, "max_prompt_tokens": 64},
        "compute": {"device": "cpu"}})
    run_dir = RunDir(config.run_dir)
    preferences.run(config, run_dir)
    ppo_stage.run(config, run_dir)
    stage.run(config, run_dir)
    assert not list((run_dir / "ppo").glob(".policy-*"))  # the saved copy is gone
    for eval_type in ("answer", "are_you_sure"):
        ours = pd.read_parquet(run_dir / "ppo" / "rule" / "eval" / "step-000000" / f"judged_{eval_type}.parquet")
        theirs = pd.read_parquet(run_dir / "eval" / f"judged_{eval_type}.parquet")
        columns = [c for c in theirs.columns if "reply" in c]
        pd.testing.assert_frame_equal(ours[columns], theirs[columns])
        assert (ours[columns[0]].str.len() > 0).all()
