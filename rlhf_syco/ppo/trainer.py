"""The PPO loop: `PPOTrainer.step` is one iteration, `PPOTrainer.train` runs (or resumes) a run to its last step.

A step is the standard RLHF PPO iteration (Ziegler et al. 2019; TRL's PPOTrainer):
1. rollout (`ppo/rollout.py`): sample one reply to each of `rollout_batch_size` prompts from the policy, score
   the reply text with the reward model (`missing_eos_penalty` is subtracted when the reply never stopped), and
   take old log-probs, reference log-probs and values from one no-grad pass;
2. rewards: -beta * KL_t on every reply token plus the score on the last one (the stop token when there is
   one); beta fixed or adapted toward a target KL (`core.KLController`);
3. GAE advantages (whitened) and returns;
4. `ppo_epochs` passes over shuffled mini-batches: clipped policy loss + vf_coef * clipped value loss, one
   AdamW step per mini-batch; the learning rate decays linearly to 0 over `steps`.

Every random draw (prompt order, sampling, mini-batch order) comes from a seed derived from (seed, step, ...,
process), never from the global RNG, so a run resumed from a checkpoint (`ppo/checkpoints.py`) repeats the
uninterrupted run's numbers. `ppo/metrics.jsonl` gets one row of training metrics per step (also to
TensorBoard, under `ppo/logs/`, or W&B with `ppo.log_with`).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from rlhf_syco import preemption
from rlhf_syco.distributed import zero_stage
from rlhf_syco.errors import UserError
from rlhf_syco.generation import derive_seed, stop_token_ids
from rlhf_syco.ppo import core
from rlhf_syco.ppo.checkpoints import Checkpoints
from rlhf_syco.ppo.config import PPOConfig
from rlhf_syco.ppo.model import PolicyAndValue, forward, frozen_reference, gathered_policy, without_dropout
from rlhf_syco.ppo.rollout import Rollout, rollout
from rlhf_syco.progress import console, progress_bar
from rlhf_syco.rundir import read_jsonl, write_jsonl


class PPOTrainer:
    """PPO of `policy` (a causal LM) against `reward_model` (a `reward_models.RewardModel`) on `prompts` (chat
    conversations ending with a user turn). `ref_policy` is a frozen copy of the policy; `value_model` a
    sequence classifier with a one-output `score` head, applied to every token, or a linear head on the policy's
    last hidden state (`ppo/model.py: load_value_model`). Rollouts sample at
    `temperature` up to `max_new_tokens` tokens and run `generation_batch_size` prompts per `generate` call
    and per no-grad forward pass."""

    def __init__(self, args: PPOConfig, policy, ref_policy, value_model, tokenizer, reward_model, prompts,
                 output_dir, *, temperature: float = 1.0, max_new_tokens: int = 64, generation_batch_size: int = 16,
                 seed: int = 0, accelerator=None):
        from accelerate import Accelerator

        if tokenizer.chat_template is None:
            raise UserError("the policy's tokenizer has no chat template; PPO renders prompts with it")
        if temperature <= 0:
            raise UserError("PPO samples its rollouts: policy.generation.temperature must be above 0")
        if not isinstance(value_model, torch.nn.Linear) and not hasattr(value_model, "score"):
            raise UserError(f"value model {type(value_model).__name__} has no `score` head on its tokens; "
                            "use a decoder (value_init: policy)")
        self.args, self.tokenizer, self.reward_model, self.prompts = args, tokenizer, reward_model, list(prompts)
        self.temperature, self.max_new_tokens, self.seed = temperature, max_new_tokens, seed
        self.generation_batch_size = generation_batch_size
        self.output_dir = Path(output_dir)
        self.accelerator = accelerator = accelerator or Accelerator()
        world = accelerator.num_processes
        if args.rollout_batch_size % world or args.mini_batch_size % world:
            raise UserError(f"ppo.rollout_batch_size and ppo.mini_batch_size must be multiples of the number of "
                            f"processes ({world})")
        self.local_batch, self.local_mini_batch = args.rollout_batch_size // world, args.mini_batch_size // world
        tokenizer.padding_side = "left"
        self.stop_ids = torch.tensor(stop_token_ids(policy.generation_config, tokenizer))  # the evaluation's stop set

        without_dropout(policy)
        without_dropout(value_model)
        self.model = PolicyAndValue(policy, value_model).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=args.lr, weight_decay=0.0)
        # Not passed to `prepare`: accelerate would step it once per process. Saved with the state instead.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: 1 - step / args.steps)
        self.model, self.optimizer = accelerator.prepare(self.model, self.optimizer)
        accelerator.register_for_checkpointing(self.scheduler)
        self.zero3 = zero_stage(accelerator) == 3
        self.ref_policy = frozen_reference(ref_policy, accelerator, self.zero3)
        self.kl_ctl = core.KLController(args.kl_coef, args.adaptive_kl_target, args.adaptive_kl_horizon)
        self.checkpoints = Checkpoints(self.output_dir / "checkpoints", accelerator, args.keep_last,
                                       keeps_policy=self._is_eval_step)
        self.history: list[dict] = []
        self._orders: dict[int, np.ndarray] = {}

    # ----------------------------------------------------------------------- the loop

    def train(self, evaluate=None) -> dict:
        """Run (or resume) to `args.steps`; `evaluate(trainer, step)` runs at step 0 and at each evaluation
        step, after that step's checkpoint. Returns the last step's metrics."""
        args, acc = self.args, self.accelerator
        start = self.resume()
        if evaluate is not None and (start == 0 or self._is_eval_step(start)):
            evaluate(self, start)  # a no-op when its results exist (a crash after the checkpoint repeats it)
        preemption.deferred()
        with progress_bar() as progress:
            task = progress.add_task("ppo", total=args.steps, completed=start)
            for step in range(start + 1, args.steps + 1):
                metrics = self.step(step)
                self.history.append(metrics)
                if acc.is_main_process:
                    write_jsonl(self.output_dir / "metrics.jsonl", self.history)
                if args.log_with != "none":
                    acc.log(metrics, step=step)
                saved = step % args.checkpoint_every == 0 or self._is_eval_step(step)
                if saved:
                    self.save_checkpoint(step)
                if evaluate is not None and self._is_eval_step(step):
                    evaluate(self, step)
                if preemption.agreed(acc.device):
                    path = self.save_checkpoint(step) if not saved else self.checkpoints.folder / f"step-{step:06d}"
                    raise preemption.stop("ppo", step, str(path.relative_to(self.output_dir.parent)))
                progress.update(task, completed=step, description=f"ppo: score {metrics['objective/scores']:.3f} "
                                                                  f"kl {metrics['objective/kl']:.3f}")
        return self.history[-1] if self.history else {}

    def _is_eval_step(self, step: int) -> bool:
        return step % self.args.eval_every == 0 or step == self.args.steps

    def step(self, step: int) -> dict:
        """One PPO iteration; returns its metrics (means over every process's episodes)."""
        args, acc = self.args, self.accelerator
        t0 = time.time()
        rank = acc.process_index
        prompts = self.step_prompts(step)[rank * self.local_batch:(rank + 1) * self.local_batch]
        r = self.rollout(prompts, derive_seed(self.seed, "rollout", step, rank))
        mask = r.mask

        scores = r.scores.clone()
        if args.missing_eos_penalty is not None:
            scores[~r.ended] -= args.missing_eos_penalty
        penalty = core.kl_per_token(r.logprobs, r.ref_logprobs, args.kl_estimator) * mask
        rewards = -self.kl_ctl.value * penalty
        last = mask.sum(1).long() - 1
        rewards[torch.arange(len(last)), last] += scores
        if args.whiten_rewards:
            rewards = core.masked_whiten(rewards, mask, shift_mean=False) * mask
        advantages, returns = core.gae(rewards, r.values, mask, args.gamma, args.lam)
        advantages = core.masked_whiten(advantages, mask) * mask
        t_rollout = time.time() - t0

        stats: dict[str, list] = {k: [] for k in ("loss/policy", "loss/value", "policy/clipfrac",
                                                  "policy/approxkl", "policy/ratio", "value/clipfrac", "grad_norm")}
        for epoch in range(args.ppo_epochs):
            order = torch.randperm(self.local_batch, generator=torch.Generator().manual_seed(
                derive_seed(self.seed, "minibatch", step, epoch, rank)))
            for start in range(0, self.local_batch, self.local_mini_batch):
                i = order[start:start + self.local_mini_batch]
                logits, values = forward(self.model, r.input_ids[i], r.attention_mask[i], r.response_length)
                logprobs = core.logprobs_of(logits / self.temperature, r.responses[i])
                pg_loss, pg_stats = core.policy_loss(logprobs, r.logprobs[i], advantages[i], mask[i],
                                                     args.cliprange)
                vf_loss, vf_clipfrac = core.value_loss(values, r.values[i], returns[i], mask[i],
                                                       args.cliprange_value)
                acc.backward(pg_loss + args.vf_coef * vf_loss)
                grad_norm = acc.clip_grad_norm_(self.model.parameters(), args.max_grad_norm or math.inf)
                self.optimizer.step()
                self.optimizer.zero_grad()
                for key, value in (("loss/policy", pg_loss), ("loss/value", vf_loss), ("value/clipfrac", vf_clipfrac),
                                   ("policy/clipfrac", pg_stats["clipfrac"]), ("grad_norm", grad_norm),
                                   ("policy/approxkl", pg_stats["approxkl"]), ("policy/ratio", pg_stats["ratio"])):
                    stats[key].append(math.nan if value is None else float(torch.as_tensor(value).detach()))
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()

        kl = (r.kl * mask).sum(1)
        local = {
            "objective/scores": r.scores.mean(), "objective/kl": kl.mean(),
            "objective/kl_penalty": penalty.sum(1).mean(),
            "objective/rlhf_reward": (scores - self.kl_ctl.value * penalty.sum(1)).mean(),
            "objective/entropy": r.entropy, "value/error": core.masked_mean((r.values - returns) ** 2, mask),
            "value/mean": core.masked_mean(r.values, mask), "eos_fraction": r.ended.float().mean(),
            "response_length": mask.sum(1).mean(),
            **{k: torch.tensor(np.mean(v)) for k, v in stats.items()},
        }
        keys = list(local)
        means = acc.reduce(torch.stack([local[k].float() for k in keys]).to(acc.device), "mean").tolist()
        metrics = {"step": step, "episodes": step * args.rollout_batch_size, "kl_coef": self.kl_ctl.value,
                   "lr": lr, **dict(zip(keys, means))}
        self.kl_ctl.update(metrics["objective/kl"], args.rollout_batch_size)
        seconds = time.time() - t0
        tokens = acc.reduce(mask.sum().to(acc.device), "sum").item()
        metrics.update({"time/rollout_s": t_rollout, "time/step_s": seconds, "time/tokens_per_s": tokens / seconds})
        return metrics

    def step_prompts(self, step: int) -> list:
        """The `rollout_batch_size` prompts of `step`: consecutive slices of a fresh shuffle of the prompt set
        for every pass over it, so each prompt is used once per pass and the order depends only on the seed."""
        size, n = self.args.rollout_batch_size, len(self.prompts)
        out = []
        for k in range((step - 1) * size, step * size):
            epoch, i = divmod(k, n)
            if epoch not in self._orders:
                self._orders[epoch] = np.random.default_rng(derive_seed(self.seed, "prompts", epoch)).permutation(n)
            out.append(self.prompts[self._orders[epoch][i]])
        return out

    # ----------------------------------------------------------------------- rollouts and generation

    def rollout(self, conversations: list, seed: int) -> Rollout:
        """One sampled, scored reply per conversation (this process's share): `ppo.rollout.rollout`."""
        return rollout(self, conversations, seed)

    def replies_and_kl(self, conversations: list, seed: int) -> tuple[list[str], torch.Tensor]:
        """Replies sampled as in a rollout and each one's summed k1 KL to the reference (for the evaluation)."""
        r = self.rollout(conversations, seed)
        return r.replies, (r.kl * r.mask).sum(1)

    def unwrapped_policy(self):
        """The bare policy for `generate` (a context manager); under ZeRO-3 its parameters are gathered."""
        return gathered_policy(self.accelerator, self.model, self.zero3)

    # ----------------------------------------------------------------------- checkpoints

    def save_checkpoint(self, step: int) -> Path:
        """`ppo/<arm>/checkpoints/step-NNNNNN/` with this step's weights, optimizer, RNG and KL coefficient."""
        return self.checkpoints.save(step, self.model, self.tokenizer, {"kl_coef": self.kl_ctl.value})

    def resume(self) -> int:
        """Load the newest complete checkpoint, if any; returns its step (0 for a fresh start)."""
        state = self.checkpoints.load_last()
        if state is None:
            return 0
        self.kl_ctl.value = state["kl_coef"]
        metrics = self.output_dir / "metrics.jsonl"
        if metrics.exists():  # steps after the checkpoint are redone
            self.history = [r for r in read_jsonl(metrics) if r["step"] <= state["step"]]
        console.print(f"[bold]ppo[/bold]: resumed from {state['path'].name}")
        return state["step"]
