"""The `grpo` and `rloo` sections of an experiment config (pydantic only: no heavy imports)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rlhf_syco.strict import Strict


class GroupRLConfig(Strict):
    """What GRPO and RLOO share: a step samples `group_size` replies to each of `prompts_per_step` RL prompts
    (the PM pairs' contexts, as PPO's) at `policy.generation.temperature` and up to
    `policy.generation.max_new_tokens` tokens, scores each reply's text with the arm's reward model, and takes
    one optimizer step on the group-relative advantages (one pass: TRL's `num_iterations` 1, so the ratio is
    1 and the update is on-policy). One policy is trained against each of `reward_models` (an arm each, from the
    same start, prompts and seeds; by default PPO's arms), with the sycophancy evaluation at step 0 and every
    `eval_every` steps, as PPO's (`evaluation/rl.py`).

    Batch sizes count across all processes; TRL's `per_device_train_batch_size` counts replies, so it is
    `prompts_per_step * group_size / processes`. The learning rate decays linearly to 0 over `steps`.
    """

    reward_models: list[str] | None = Field(None, min_length=1)  # None: PPO's (`ppo.reward_models`)
    steps: int = Field(100, gt=0)
    prompts_per_step: int = Field(8, gt=0)
    lr: float = Field(1e-6, gt=0)  # TRL's default for both
    max_grad_norm: float | None = Field(1.0, gt=0)
    epsilon: float = Field(0.2, gt=0)  # the clipping range (inactive with one pass, kept for num_iterations > 1)
    max_prompt_tokens: int = Field(128, gt=0)
    checkpoint_every: int = Field(20, gt=0)
    keep_last: int = Field(2, gt=0)
    eval_every: int = Field(20, gt=0)
    eval_items_per_type: int | None = Field(None, gt=0)  # None: `eval.items_per_type`
    eval_prompts: int = Field(64, gt=0)  # held-out RL prompts for the reward models' mean reward and the KL

    @model_validator(mode="after")
    def _arms_differ(self):
        if self.reward_models and len(set(self.reward_models)) < len(self.reward_models):
            raise ValueError(f"reward_models lists one twice: {self.reward_models}")
        return self


class GRPOConfig(GroupRLConfig):
    """GRPO (Shao et al. 2024, DeepSeekMath): the advantage of a reply is its reward minus its group's mean,
    divided by the group's standard deviation (`scale_rewards`); the KL to the reference is a loss term
    (k3 estimator) with coefficient `kl_coef`. Defaults follow the paper where TRL differs: kl_coef 0.04
    (TRL: 0) and the paper's per-sequence loss normalisation, `loss_type: grpo` (TRL: dapo). The paper's groups
    of 64 are 8 here (TRL's default)."""

    group_size: int = Field(8, ge=2)
    kl_coef: float = Field(0.04, ge=0)
    loss_type: Literal["grpo", "dapo", "dr_grpo", "bnpo"] = "grpo"
    scale_rewards: Literal["group", "batch", "none"] = "group"


class RLOOConfig(GroupRLConfig):
    """RLOO (Ahmadian et al. 2024, "Back to basics"): the reward of a reply is its score minus `kl_coef` times
    its summed log-ratio to the reference, and its advantage that reward minus the mean of the other replies
    to the same prompt (the leave-one-out baseline). Defaults: TRL's kl_coef 0.05; groups of 4, the paper's
    best k (TRL: 2)."""

    group_size: int = Field(4, ge=2)
    kl_coef: float = Field(0.05, ge=0)
    normalize_advantages: bool = False
