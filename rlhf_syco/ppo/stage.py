"""The `ppo` stage: PPO of `policy.model` against each of `ppo.reward_models` in turn (an arm each: one policy
per reward model, from the same start, prompts and seeds), resumed from the arm's last complete checkpoint, with
the sycophancy evaluation at step 0 and every `ppo.eval_every` steps.

Run folder (`runs/<name>/`), for each arm `<rm>`:
- `ppo/<rm>/checkpoints/step-NNNNNN/`: `policy/`, `value/`, `state/`, `trainer_state.json` (`ppo/checkpoints.py`);
- `ppo/<rm>/metrics.jsonl`: one row of training metrics per step (`ppo/trainer.py`), trackers' logs under
  `ppo/<rm>/logs/`; `ppo/<rm>/final.json` once the arm is done;
- `ppo/<rm>/eval/step-NNNNNN/`, and for all arms `results/ppo_curves.csv`, `results/ppo_paired.csv`,
  `results/ppo_rewards.csv`: the evaluations along the way (`evaluation/rl.py`).
"""

from __future__ import annotations

from pathlib import Path

from rlhf_syco import distributed
from rlhf_syco.evaluation.rl import SycophancyEvaluation, rl_prompts
from rlhf_syco.ppo.model import load_value_model
from rlhf_syco.ppo.trainer import PPOTrainer
from rlhf_syco.rundir import RunDir, read_json, write_json


def make_accelerator(config, log_dir):
    """accelerate's `Accelerator` for `config.compute` (`rlhf_syco.distributed`), with DeepSpeed's batch sizes
    set for one optimizer step per mini-batch (micro batch: this process's share of `ppo.mini_batch_size`, no
    gradient accumulation) and clipping at `ppo.max_grad_norm`; trackers (`ppo.log_with`) write under
    `log_dir`."""
    ppo = config.ppo
    world = distributed.world_size()
    micro = max(ppo.mini_batch_size // world, 1)
    zero = {"train_micro_batch_size_per_gpu": micro, "gradient_accumulation_steps": 1,
            "train_batch_size": micro * world, "gradient_clipping": ppo.max_grad_norm or 0.0}
    return distributed.make_accelerator(config.compute, zero, project_dir=str(log_dir),
                                        log_with=None if ppo.log_with == "none" else ppo.log_with)


def run(config, run_dir: RunDir | str | Path) -> dict:
    """The PPO stage: one arm per reward model in `config.ppo.reward_models`, each resumed where it stopped."""
    run_dir = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    arms = {}
    for arm in config.ppo.reward_models:
        done = run_dir.stage("ppo") / arm / "final.json"
        if not done.exists():
            write_json(done, train_arm(config, run_dir, arm))
        arms[arm] = read_json(done)
    return arms


def train_arm(config, run_dir: RunDir, arm: str) -> dict:
    """PPO against the reward model `arm`, resuming from its last complete checkpoint, with the sycophancy
    evaluation at step 0 and every `ppo.eval_every` steps."""
    import gc

    from rlhf_syco.models import build_reward_models, load_causal_lm

    ppo, generation = config.ppo, config.policy.generation
    out = run_dir.stage("ppo") / arm
    accelerator = make_accelerator(config, out / "logs")
    # Every process loads at once: under ZeRO-3 loading is collective (zero.Init partitions as it builds).
    policy, tokenizer = load_causal_lm(config.policy.model, "cpu")
    ref_policy, _ = load_causal_lm(config.policy.model, "cpu")
    value_model = load_value_model(config, run_dir, tokenizer, arm, policy)
    reward_models = build_reward_models(config, run_dir, list(dict.fromkeys([*ppo.reward_models,
                                                                             *config.bon.reward_models])))
    train_prompts, heldout_prompts = rl_prompts(run_dir, tokenizer, ppo.max_prompt_tokens)
    trainer = PPOTrainer(ppo, policy, ref_policy, value_model, tokenizer, reward_models[arm],
                         train_prompts, out, temperature=generation.temperature,
                         max_new_tokens=generation.max_new_tokens, generation_batch_size=generation.batch_size,
                         seed=config.seed, accelerator=accelerator)
    if ppo.log_with != "none":
        accelerator.init_trackers(f"ppo-{arm}", config=ppo.model_dump())
    final = trainer.train(SycophancyEvaluation(config, run_dir, reward_models, heldout_prompts, arm))
    accelerator.end_training()
    summary = {"steps": ppo.steps, "train_prompts": len(train_prompts), "heldout_prompts": len(heldout_prompts),
               "final": {k: final.get(k) for k in ("objective/scores", "objective/kl", "kl_coef")}}
    del trainer, policy, ref_policy, value_model, reward_models
    gc.collect()  # the next arm loads its own models
    return summary
