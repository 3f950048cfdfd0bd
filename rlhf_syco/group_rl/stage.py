"""The `grpo` and `rloo` stages: GRPO and RLOO of `policy.model` through TRL's `GRPOTrainer` and `RLOOTrainer`,
against each of the section's `reward_models` in turn (an arm each, as PPO's), with the sycophancy evaluation of
`evaluation/rl.py` at step 0 and every `eval_every` steps through a `TrainerCallback`.

Our reward models score text, so each becomes a TRL reward function as it is (`RewardFunction`): TRL samples
and decodes, the reward model reads the conversation and the reply's text with its own tokenizer.

Run folder (`runs/<name>/`), for optimizer `<opt>` (`grpo`, `rloo`) and each arm `<rm>`:
- `<opt>/<rm>/checkpoints/checkpoint-N/`: the Trainer's checkpoints (weights, optimizer, scheduler, RNG states),
  sealed once written; a rerun resumes from the newest intact one to the uninterrupted run's numbers;
- `<opt>/<rm>/log_history.jsonl`: TRL's metrics, one row per step (reward, its spread, TRL's own KL
  estimate, entropy, reply lengths, step time);
- `<opt>/<rm>/eval/step-NNNNNN/` and `results/<opt>_{curves,paired,rewards,gold,gold_fits}.csv`;
- `<opt>/<rm>/policy/`: the trained policy; `<opt>/<rm>/final.json` once the arm is done (its checkpoints are
  deleted then).
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import torch
from transformers import TrainerCallback

from rlhf_syco import training
from rlhf_syco.evaluation.rl import SycophancyEvaluation, rl_prompts
from rlhf_syco.generation import encode_prompts, render_prompts, reply_extent, sample_tokens
from rlhf_syco.rundir import RunDir, atomic_path, read_json, write_json, write_jsonl


def run_grpo(config, run_dir: RunDir) -> dict:
    return run(config, run_dir, "grpo")


def run_rloo(config, run_dir: RunDir) -> dict:
    return run(config, run_dir, "rloo")


def run(config, run_dir: RunDir | str | Path, optimizer: str) -> dict:
    """One arm per reward model in the `optimizer` section's `reward_models`, each resumed where it stopped."""
    run_dir = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    arms = {}
    for arm in config.arms(optimizer):
        done = run_dir.stage(optimizer) / arm / "final.json"
        if not done.exists():
            summary = train_arm(config, run_dir, optimizer, arm)
            if summary is not None:  # the main process writes
                write_json(done, summary)
                # the policy is saved and the arm marked done: its optimizer states are not needed again
                shutil.rmtree(done.parent / "checkpoints", ignore_errors=True)
        arms[arm] = read_json(done) if done.exists() else {}
    return arms


class RewardFunction:
    """A reward model as a TRL reward function: conversations and completions (chat messages) in, one float per
    reply out; `None` for a reply the model cannot score is left to TRL (NaN, left out of the mean)."""

    def __init__(self, name: str, reward_model):
        self.__name__, self.reward_model = name, reward_model

    def __call__(self, prompts, completions, **_) -> list[float]:
        replies = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [float(x) for x in self.reward_model.score(list(prompts), replies)]


def trl_arguments(config, optimizer: str, output_dir):
    """TRL's `GRPOConfig` / `RLOOConfig` for the `optimizer` section, the policy's sampling settings and
    `compute` (CPU, DeepSpeed, mixed precision)."""
    from rlhf_syco import distributed

    section, generation = getattr(config, optimizer), config.policy.generation
    world = distributed.world_size()
    replies = section.prompts_per_step * section.group_size
    if replies % world:
        from rlhf_syco.errors import UserError

        raise UserError(f"prompts_per_step x group_size ({replies}) must be a multiple of the number of "
                        f"processes ({world})", f"{optimizer}.prompts_per_step")
    common = dict(
        output_dir=str(output_dir), max_steps=section.steps, per_device_train_batch_size=replies // world,
        num_generations=section.group_size, max_completion_length=generation.max_new_tokens,
        temperature=generation.temperature, top_p=1.0, top_k=0,  # the full distribution, as PPO's rollouts
        learning_rate=section.lr, lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0,
        max_grad_norm=section.max_grad_norm or 0.0, beta=section.kl_coef, epsilon=section.epsilon,
        num_iterations=1, disable_dropout=True, logging_steps=1,
        save_strategy="steps", save_steps=section.checkpoint_every, save_total_limit=section.keep_last,
        seed=config.seed, data_seed=config.seed, report_to=[], disable_tqdm=True, dataloader_num_workers=0,
        remove_unused_columns=False, log_completions=False,
        bf16=config.compute.mixed_precision == "bf16", fp16=config.compute.mixed_precision == "fp16",
        **distributed.trainer_options(config.compute))
    if optimizer == "grpo":
        from trl import GRPOConfig

        return GRPOConfig(**common, loss_type=section.loss_type, scale_rewards=section.scale_rewards)
    from trl import RLOOConfig

    return RLOOConfig(**common, normalize_advantages=section.normalize_advantages)


def train_arm(config, run_dir: RunDir, optimizer: str, arm: str) -> dict | None:
    """`optimizer` against the reward model `arm`, from the newest intact checkpoint; returns the arm's summary
    on the main process (None on the others)."""
    import gc

    import datasets

    from rlhf_syco.models import build_reward_models, load_causal_lm

    section = getattr(config, optimizer)
    out = run_dir.stage(optimizer) / arm
    checkpoints = out / "checkpoints"
    args = trl_arguments(config, optimizer, checkpoints)  # first: it sets up the processes' state
    policy, tokenizer = load_causal_lm(config.policy.model, "cpu")
    reward_models = build_reward_models(config, run_dir, list(dict.fromkeys([*config.arms(optimizer),
                                                                             *config.bon.reward_models])))
    train_prompts, heldout_prompts = rl_prompts(run_dir, tokenizer, section.max_prompt_tokens, optimizer)
    dataset = datasets.Dataset.from_list([{"prompt": p} for p in train_prompts])
    if optimizer == "grpo":
        from trl import GRPOTrainer as Trainer
    else:
        from trl import RLOOTrainer as Trainer
    trainer = Trainer(model=policy, reward_funcs=[RewardFunction(arm, reward_models[arm])], args=args,
                      train_dataset=dataset, processing_class=tokenizer,
                      callbacks=training.callbacks(f"{optimizer}: {arm}"))
    evaluation = SycophancyEvaluation(config, run_dir, reward_models, heldout_prompts, arm, optimizer)
    trainer.add_callback(EvaluateAlongTraining(TrainedPolicy(trainer, config), evaluation, section.eval_every,
                                               out / "log_history.jsonl"))
    resumed = training.train(trainer, checkpoints, optimizer)

    staging = out / ".policy.staging"
    trainer.save_model(str(staging))  # every process takes part (ZeRO-3 gathers)
    trainer.accelerator.wait_for_everyone()
    if not trainer.accelerator.is_main_process:
        return None
    with atomic_path(out / "policy", is_dir=True) as tmp:
        tmp.rmdir()
        staging.rename(tmp)
        tokenizer.save_pretrained(tmp)
    history = [h for h in trainer.state.log_history if "reward" in h]
    step_seconds = [h["step_time"] for h in history if h.get("step_time") is not None]
    summary = {"steps": trainer.state.global_step, "train_prompts": len(train_prompts),
               "heldout_prompts": len(heldout_prompts), "resumed_from": resumed.name if resumed else None,
               "seconds_per_step": float(np.mean(step_seconds)) if step_seconds else None,
               "final": {k: history[-1].get(k) for k in ("reward", "reward_std", "kl")} if history else {}}
    del trainer, policy, reward_models
    gc.collect()  # the next arm loads its own models
    return summary


class TrainedPolicy:
    """The TRL trainer's policy as the evaluation sees it (`evaluation.rl.TrainedPolicy`)."""

    def __init__(self, trainer, config):
        self.trainer, self.accelerator, self.tokenizer = trainer, trainer.accelerator, trainer.processing_class
        self.seed, self.generation = config.seed, config.policy.generation
        self.policy_model = config.policy.model
        self._reference = None

    def unwrapped_policy(self):
        from trl.models.utils import unwrap_model_for_generation

        return unwrap_model_for_generation(self.trainer.model_wrapped, self.accelerator)

    def reference(self):
        """TRL's reference model where it keeps one (kl_coef > 0), else a frozen copy of the starting policy."""
        if getattr(self.trainer, "ref_model", None) is not None:
            return self.trainer.ref_model
        if self._reference is None:
            from rlhf_syco.models import load_causal_lm

            self._reference = load_causal_lm(self.policy_model, "cpu")[0].requires_grad_(False).eval()
            self._reference.to(self.accelerator.device)
        return self._reference

    def replies_and_kl(self, conversations: list, seed: int) -> tuple[list[str], torch.Tensor]:
        """Replies sampled as TRL samples them (full distribution at the training temperature, up to the
        tokenizer's EOS), and each one's summed log-ratio to the reference."""
        tok, device, size = self.tokenizer, self.accelerator.device, self.generation.batch_size
        temperature = self.generation.temperature
        ids, mask = encode_prompts(tok, render_prompts(tok, conversations), device)
        batches = [(ids[i:i + size], mask[i:i + size]) for i in range(0, len(ids), size)]
        with self.unwrapped_policy() as policy:
            responses = sample_tokens(policy, batches, max_new_tokens=self.generation.max_new_tokens,
                                      stop_ids=[tok.eos_token_id], pad_token_id=tok.pad_token_id,
                                      temperature=temperature, top_p=1.0, seed=seed, seed_per_batch=False)
            _, first_stop, reply_mask = reply_extent(responses, [tok.eos_token_id])
            logprobs = reply_logprobs(policy, ids, mask, responses, reply_mask, temperature, size)
        ref_logprobs = reply_logprobs(self.reference(), ids, mask, responses, reply_mask, temperature, size)
        replies = [tok.decode(row[:int(n)], skip_special_tokens=True)
                   for row, n in zip(responses.tolist(), first_stop.tolist())]
        return replies, ((logprobs - ref_logprobs) * reply_mask).sum(1)


@torch.no_grad()
def reply_logprobs(model, prompt_ids, prompt_mask, responses, reply_mask, temperature: float, batch_size: int):
    """log p(reply token | everything before it) at `temperature`, for every reply token: (B, T)."""
    input_ids = torch.cat([prompt_ids, responses], 1)
    attention_mask = torch.cat([prompt_mask, reply_mask.long()], 1)
    position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)
    length, out = responses.shape[1], []
    for i in range(0, len(input_ids), batch_size):
        rows = slice(i, i + batch_size)
        logits = model(input_ids=input_ids[rows], attention_mask=attention_mask[rows],
                       position_ids=position_ids[rows], use_cache=False).logits[:, -length - 1:-1].float()
        out.append(torch.log_softmax(logits / temperature, -1).gather(-1, responses[rows, :, None]).squeeze(-1))
    return torch.cat(out) * reply_mask


class EvaluateAlongTraining(TrainerCallback):
    """A `TrainerCallback` that runs `evaluation` (`evaluation.rl.SycophancyEvaluation`) at step 0 and after the
    checkpoint of every `eval_every`-th step and the last (it asks the Trainer for one there), and keeps TRL's
    per-step metrics in `log_file`. The evaluation runs with the Trainer's random states set aside, so a run
    with evaluations draws the same samples as one without, and a resumed run as an uninterrupted one."""

    def __init__(self, policy: TrainedPolicy, evaluation: SycophancyEvaluation, eval_every: int, log_file):
        self.policy, self.evaluation, self.eval_every, self.log_file = policy, evaluation, eval_every, log_file

    def _is_eval_step(self, state) -> bool:
        return state.global_step % self.eval_every == 0 or state.global_step == state.max_steps

    def _evaluate(self, step: int) -> None:
        python, numpy = random.getstate(), np.random.get_state()
        devices = [self.policy.accelerator.device] if self.policy.accelerator.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices):
                self.evaluation(self.policy, step)
        finally:
            random.setstate(python)
            np.random.set_state(numpy)

    def on_train_begin(self, args, state, control, **kw):
        if state.global_step == 0 or self._is_eval_step(state):  # a no-op where its results exist
            self._evaluate(state.global_step)
        return control

    def on_step_end(self, args, state, control, **kw):
        if self._is_eval_step(state):
            control.should_save = True  # the evaluated policy is a checkpoint, as in PPO
        return control

    def on_save(self, args, state, control, **kw):
        if self._is_eval_step(state):
            self._evaluate(state.global_step)
        return control

    def on_log(self, args, state, control, **kw):
        if state.is_world_process_zero:
            write_jsonl(self.log_file, [h for h in state.log_history if "reward" in h])
        return control

