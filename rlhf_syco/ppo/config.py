"""The `ppo` section of an experiment config (pydantic only: no heavy imports)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rlhf_syco.strict import Strict


class PPOConfig(Strict):
    """PPO of `policy.model` against the reward model `reward_model`, with the sycophancy evaluation at step 0
    and every `eval_every` steps.

    Defaults are those of TRL's last PPOTrainer (`trl/experimental/ppo/ppo_config.py`, TRL <= 1.12) unless
    noted; docs/ppo.md has the table with sources. Rollouts sample with `policy.generation.temperature`
    (InstructGPT samples at 1; TRL's default is 0.7) and `policy.generation.max_new_tokens` (TRL: 53), always
    from the full distribution (top-p is not applied, so the PPO ratio and the KL see the sampling policy).

    Batch sizes count prompts across all processes: a step samples one reply to each of `rollout_batch_size`
    prompts, then runs `ppo_epochs` passes over them in shuffled mini-batches of `mini_batch_size`, one
    optimizer step per mini-batch (TRL: batch_size, mini_batch_size = batch_size / num_mini_batches).
    """

    # One policy is trained against each of these (an arm each, one after another; names in `reward_models`: the
    # PM, a prompted wrapper, http, callable, ...), so the RL curves compare reward models as best-of-N does.
    reward_models: list[str] = Field(["pm"], min_length=1)
    steps: int = Field(100, gt=0)  # PPO iterations (rollout + update); the learning rate decays linearly to 0
    rollout_batch_size: int = Field(64, gt=0)
    mini_batch_size: int = Field(8, gt=0)
    ppo_epochs: int = Field(4, gt=0)
    lr: float = Field(3e-6, gt=0)  # AdamW; TRL's PPO example uses 3e-6
    max_grad_norm: float | None = Field(1.0, gt=0)  # transformers' TrainingArguments default
    kl_coef: float = Field(0.05, ge=0)  # beta of the per-token penalty -beta * KL_t
    kl_estimator: Literal["k1", "k3"] = "k1"
    adaptive_kl_target: float | None = Field(None, gt=0)  # a target KL in nats turns on Ziegler et al.'s controller
    adaptive_kl_horizon: int = Field(10000, gt=0)  # Ziegler et al. 2019
    gamma: float = Field(1.0, ge=0, le=1)
    lam: float = Field(0.95, ge=0, le=1)
    cliprange: float = Field(0.2, gt=0)
    cliprange_value: float = Field(0.2, gt=0)
    vf_coef: float = Field(0.1, ge=0)
    whiten_rewards: bool = False
    missing_eos_penalty: float | None = Field(None, ge=0)  # subtracted from the score of a reply with no stop token
    # The value model is a separate network with a scalar head on every token: from the policy's weights and
    # a fresh head (TRL), or from the PM's (InstructGPT), which needs an `hf` PM with the policy's tokenizer.
    value_init: Literal["policy", "pm"] = "policy"
    # Cheaper value functions: `value_layers` keeps only the first layers of the separate value network (a smaller
    # value model); `value_head: policy_trunk` drops the separate network for a scalar head on the policy's own
    # last hidden state (one network, one forward pass and one AdamW state; the value loss then also trains the
    # policy's trunk, as in TRL's early `AutoModelForCausalLMWithValueHead`).
    value_head: Literal["separate", "policy_trunk"] = "separate"
    value_layers: int | None = Field(None, gt=0)
    # RL prompts are the PM pairs' contexts (data/pm_train.jsonl; held-out pairs monitor reward and KL); ones
    # longer than this many tokens in the policy's chat template are left out.
    max_prompt_tokens: int = Field(128, gt=0)
    checkpoint_every: int = Field(20, gt=0)
    keep_last: int = Field(2, gt=0)  # full checkpoints kept; evaluation checkpoints also keep their policy
    eval_every: int = Field(20, gt=0)
    eval_items_per_type: int | None = Field(None, gt=0)  # None: `eval.items_per_type`
    eval_prompts: int = Field(64, gt=0)  # held-out RL prompts for the reward models' mean reward and the KL
    log_with: Literal["none", "tensorboard", "wandb"] = "none"

    @model_validator(mode="after")
    def _arms_differ(self):
        if len(set(self.reward_models)) < len(self.reward_models):
            raise ValueError(f"reward_models lists one twice: {self.reward_models}")
        return self

    @model_validator(mode="after")
    def _one_kind_of_value_function(self):
        if self.value_head == "policy_trunk" and (self.value_layers or self.value_init != "policy"):
            raise ValueError("value_head: policy_trunk has no separate value network to shorten (value_layers) or "
                             "start from the PM (value_init: pm)")
        return self

    @model_validator(mode="after")
    def _mini_batches_divide_the_rollout(self):
        if self.rollout_batch_size % self.mini_batch_size:
            raise ValueError(f"rollout_batch_size ({self.rollout_batch_size}) must be a multiple of "
                             f"mini_batch_size ({self.mini_batch_size})")
        return self
