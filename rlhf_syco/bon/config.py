"""The `bon` section of an experiment config (pydantic only: no heavy imports)."""

from __future__ import annotations

from pydantic import Field, field_validator

from rlhf_syco.evaluation.config import check_task_names
from rlhf_syco.strict import Strict


class BonConfig(Strict):
    types: list[str] = ["feedback", "answer", "are_you_sure", "mimicry", "opinion"]  # tasks, as eval.types
    n_max: int = Field(32, gt=0)  # samples drawn once per prompt (Sharma et al. 2023 §4.2: 32); curves for n <= n_max
    # Base items per type, as `eval.items_per_type`: each brings all its variants (answer 4 prompts, feedback 5,
    # opinion 2, the others 1), because the metrics compare an item's variants with each other.
    prompts_per_type: int = Field(20, gt=0)
    shard_size: int = Field(8, gt=0)  # prompts per shard of the sample pool, the unit of resuming
    # Samples per prompt in one generate call: a call holds min(shard_size, policy.generation.batch_size) prompts
    # times this many sequences, so this bounds memory when n_max is large.
    samples_per_call: int = Field(64, gt=0)
    temperature: float = Field(1.0, gt=0)  # best-of-n samples from the policy at temperature 1, as in the paper
    # Reply budgets per type; a type not listed uses `eval.max_new_tokens`, then `policy.generation.max_new_tokens`.
    max_new_tokens: dict[str, int] = {}
    reward_models: list[str] = Field(["pm", "pm_nonsyco"], min_length=1)  # each one selects (and scores) the samples
    # Samples per `score` call (each call is sorted by length into the reward model's own batches); bounds the
    # memory of encoding a shard, which holds shard_size * n_max samples.
    score_batch_size: int = Field(1024, gt=0)
    bootstrap: int = Field(1000, gt=0)
    # Keep the pool and its judgments in the runs folder's shared store too (`<runs_dir>/.shared/`), so runs that
    # differ only in their PM sample and judge once; the results are the same bytes either way.
    share_pool: bool = True
    # The seed of the items and samples (None: the run's `seed`). Set, runs of different seeds share one pool, and
    # differ only in their PM and PPO: the report pools their seeds as replicates on the same items.
    seed: int | None = None

    @field_validator("types")
    @classmethod
    def _known_types(cls, types: list[str]) -> list[str]:
        if len(set(types)) != len(types):
            raise ValueError("lists a type twice")
        return _known(types)

    @field_validator("max_new_tokens")
    @classmethod
    def _positive_budgets(cls, budgets: dict[str, int]) -> dict[str, int]:
        if any(v <= 0 for v in budgets.values()):
            raise ValueError("token budgets must be positive")
        return _known(budgets)


def _known(names):
    check_task_names(names)
    return names
