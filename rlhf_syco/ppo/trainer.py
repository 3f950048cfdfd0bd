"""PPO against any reward model that scores text, checkpointed, with sycophancy measured along the way.

A step is the standard RLHF PPO iteration (Ziegler et al. 2019; TRL's PPOTrainer):
1. rollout: sample one reply to each of `rollout_batch_size` prompts from the policy; score the reply *text*
   with the reward model (so the PM may have its own tokenizer, be a prompted wrapper, a server or a function;
   `missing_eos_penalty` is subtracted when the reply never stopped); one no-grad pass of the policy, the
   frozen reference and the value model gives old log-probs, reference log-probs and values;
2. rewards: -beta * KL_t on every reply token plus the score on the last one (the stop token when there is
   one); beta fixed or adapted toward a target KL (`core.KLController`);
3. GAE advantages (whitened) and returns;
4. `ppo_epochs` passes over shuffled mini-batches: clipped policy loss + vf_coef * clipped value loss, one
   AdamW step per mini-batch; the learning rate decays linearly to 0 over `steps`.

The policy and the value model are separate networks wrapped in one module (as TRL does), so accelerate and
DeepSpeed ZeRO-2/3 manage one engine and one optimizer. Every random draw (prompt order, sampling, mini-batch
order) comes from a seed derived from (seed, step, ...), so a run resumed from a checkpoint repeats the
uninterrupted run's numbers.

Run folder (`runs/<name>/`):
- `ppo/checkpoints/step-NNNNNN/`: `policy/` and `value/` (safetensors, loadable with `from_pretrained`),
  `state/` (accelerate: optimizer, scheduler, RNG states; DeepSpeed shards under ZeRO), `trainer_state.json`.
  The newest `keep_last` are complete; older evaluation checkpoints keep only `policy/`. Each is written
  under a temporary name and renamed, so a listed checkpoint is a complete one.
- `ppo/metrics.jsonl`: one row of training metrics per step (also to TensorBoard, under `ppo/logs/`, or W&B
  with `ppo.log_with`).
- `ppo/eval/step-NNNNNN/`: the sycophancy evaluation of that checkpoint (`metrics.json`, judged replies).
- `results/ppo_curves.csv` (step, kl, type, metric, value, ci_low, ci_high: each type's headline metric) and
  `results/ppo_rewards.csv` (step, kl, reward_model, mean_reward), rebuilt from `ppo/eval/` after each one.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rlhf_syco.errors import UserError
from rlhf_syco.generation import HFGenerator, derive_seed, stop_token_ids
from rlhf_syco.ppo import core
from rlhf_syco.ppo.config import PPOConfig
from rlhf_syco.progress import console, progress_bar
from rlhf_syco.rundir import RunDir, atomic_path, read_json, read_jsonl, write_json, write_jsonl



class PolicyAndValue(nn.Module):
    """The policy and the value model as one module: `forward` gives, for the last `response_length`
    positions, the policy's next-token logits and the value of the state before each response token."""

    def __init__(self, policy, value_model):
        super().__init__()
        self.policy, self.value_model = policy, value_model
        self.config = policy.config  # accelerate sizes DeepSpeed buckets from `config.hidden_size`

    def forward(self, input_ids, attention_mask, response_length: int):
        position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)  # left padding, as in generation
        logits = self.policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             logits_to_keep=response_length + 1, use_cache=False).logits[:, :-1]
        backbone = getattr(self.value_model, self.value_model.base_model_prefix)
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=False).last_hidden_state
        values = self.value_model.score(hidden[:, -response_length - 1:-1]).squeeze(-1)
        return logits, values


class PPOTrainer:
    """PPO of `policy` (a causal LM) against `reward_model` (a `reward_models.RewardModel`) on `prompts` (chat
    conversations ending with a user turn). `ref_policy` is a frozen copy of the policy; `value_model` a
    sequence classifier with a one-output `score` head, applied to every token. Rollouts sample at
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
        if not hasattr(value_model, "score"):
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
        self.stop_ids = torch.tensor(stop_token_ids(policy, tokenizer))  # the evaluation's stop set

        for model in (policy, value_model):  # dropout would make the PPO ratio noisy (TRL does the same)
            for module in model.modules():
                if isinstance(module, nn.Dropout):
                    module.p = 0.0
        self.model = PolicyAndValue(policy, value_model).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=args.lr, weight_decay=0.0)
        # Not passed to `prepare`: accelerate would step it once per process. Saved with the state instead.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: 1 - step / args.steps)
        self.model, self.optimizer = accelerator.prepare(self.model, self.optimizer)
        accelerator.register_for_checkpointing(self.scheduler)
        self.zero3 = _zero_stage(accelerator) == 3
        self.ref_policy = _frozen(ref_policy, accelerator, self.zero3)
        self.kl_ctl = core.KLController(args.kl_coef, args.adaptive_kl_target, args.adaptive_kl_horizon)
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
        with progress_bar() as progress:
            task = progress.add_task("ppo", total=args.steps, completed=start)
            for step in range(start + 1, args.steps + 1):
                metrics = self.step(step)
                self.history.append(metrics)
                if acc.is_main_process:
                    write_jsonl(self.output_dir / "metrics.jsonl", self.history)
                if args.log_with != "none":
                    acc.log(metrics, step=step)
                if step % args.checkpoint_every == 0 or self._is_eval_step(step):
                    self.save_checkpoint(step)
                if evaluate is not None and self._is_eval_step(step):
                    evaluate(self, step)
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
        mask = r["mask"]

        scores = r["scores"].clone()
        if args.missing_eos_penalty is not None:
            scores[~r["ended"]] -= args.missing_eos_penalty
        penalty = core.kl_per_token(r["logprobs"], r["ref_logprobs"], args.kl_estimator) * mask
        rewards = -self.kl_ctl.value * penalty
        last = mask.sum(1).long() - 1
        rewards[torch.arange(len(last)), last] += scores
        if args.whiten_rewards:
            rewards = core.masked_whiten(rewards, mask, shift_mean=False) * mask
        advantages, returns = core.gae(rewards, r["values"], mask, args.gamma, args.lam)
        advantages = core.masked_whiten(advantages, mask) * mask
        t_rollout = time.time() - t0

        stats: dict[str, list] = {k: [] for k in ("loss/policy", "loss/value", "policy/clipfrac",
                                                  "policy/approxkl", "policy/ratio", "value/clipfrac", "grad_norm")}
        for epoch in range(args.ppo_epochs):
            order = torch.randperm(self.local_batch, generator=torch.Generator().manual_seed(
                derive_seed(self.seed, "minibatch", step, epoch, rank)))
            for start in range(0, self.local_batch, self.local_mini_batch):
                i = order[start:start + self.local_mini_batch]
                logits, values = self._forward(self.model, r["input_ids"][i], r["attention_mask"][i],
                                               mask.shape[1])
                logprobs = core.logprobs_of(logits / self.temperature, r["responses"][i])
                pg_loss, pg_stats = core.policy_loss(logprobs, r["logprobs"][i], advantages[i], mask[i],
                                                     args.cliprange)
                vf_loss, vf_clipfrac = core.value_loss(values, r["values"][i], returns[i], mask[i],
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

        kl = (r["kl"] * mask).sum(1)
        local = {
            "objective/scores": r["scores"].mean(), "objective/kl": kl.mean(),
            "objective/kl_penalty": penalty.sum(1).mean(),
            "objective/rlhf_reward": (scores - self.kl_ctl.value * penalty.sum(1)).mean(),
            "objective/entropy": r["entropy"], "value/error": core.masked_mean((r["values"] - returns) ** 2, mask),
            "value/mean": core.masked_mean(r["values"], mask), "eos_fraction": r["ended"].float().mean(),
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

    # ----------------------------------------------------------------------- rollouts

    def rollout(self, conversations: list, seed: int) -> dict:
        """Sample one reply per conversation (this process's share) and everything PPO needs about it.

        Tensors are (replies, response length); `mask` covers each reply up to and including its first stop
        token. Also returns the reply texts (special tokens removed) and the reward model's scores of them.
        """
        tok, device = self.tokenizer, self.accelerator.device
        texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
        queries = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        with self.unwrapped_policy() as policy:
            responses = self._sample(policy, queries, seed)
        length = responses.shape[1]
        is_stop = torch.isin(responses, self.stop_ids.to(device))
        ended = is_stop.any(1)
        first_stop = torch.where(ended, is_stop.int().argmax(1), length)
        mask = (torch.arange(length, device=device)[None] <= first_stop[:, None]).float()
        input_ids = torch.cat([queries["input_ids"], responses], 1)
        attention_mask = torch.cat([queries["attention_mask"], mask.long()], 1)

        parts: dict[str, list] = {k: [] for k in ("logprobs", "values", "ref_logprobs", "entropy")}
        with torch.no_grad():
            for start in range(0, len(texts), self.generation_batch_size):
                rows = slice(start, start + self.generation_batch_size)
                logits, values = self._forward(self.model, input_ids[rows], attention_mask[rows], length)
                logits /= self.temperature
                parts["logprobs"].append(core.logprobs_of(logits, responses[rows]))
                parts["entropy"].append(core.entropy_of(logits))
                parts["values"].append(values)
                ref_logits = self._forward(self.ref_policy, input_ids[rows], attention_mask[rows], length)
                ref_logits /= self.temperature
                parts["ref_logprobs"].append(core.logprobs_of(ref_logits, responses[rows]))
        out = {k: torch.cat(v).float() * mask for k, v in parts.items()}
        replies = [tok.decode(row[:int(n)], skip_special_tokens=True)
                   for row, n in zip(responses.tolist(), first_stop.tolist())]
        scores = self.reward_model.score(conversations, replies)
        out.update(input_ids=input_ids, attention_mask=attention_mask, responses=responses, mask=mask, ended=ended,
                   replies=replies, scores=torch.tensor(scores, dtype=torch.float32, device=device),
                   kl=core.kl_per_token(out["logprobs"], out["ref_logprobs"], "k1"),
                   entropy=core.masked_mean(out["entropy"], mask))
        return out

    def _sample(self, policy, queries, seed: int) -> torch.Tensor:
        """Replies (token ids, padded after their stop token) sampled from the full distribution at
        `temperature`, from an RNG seeded with `seed` (the caller's RNG untouched)."""
        import transformers

        config = transformers.GenerationConfig(
            max_new_tokens=self.max_new_tokens, do_sample=True, temperature=self.temperature, top_k=0, top_p=1.0,
            eos_token_id=self.stop_ids.tolist(), pad_token_id=self.tokenizer.pad_token_id, use_cache=True)
        device = queries["input_ids"].device
        chunks = []
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
            torch.manual_seed(seed)
            for start in range(0, len(queries["input_ids"]), self.generation_batch_size):
                rows = slice(start, start + self.generation_batch_size)
                out = policy.generate(input_ids=queries["input_ids"][rows],
                                      attention_mask=queries["attention_mask"][rows], generation_config=config)
                chunks.append(out[:, queries["input_ids"].shape[1]:])
        length = max(c.shape[1] for c in chunks)
        pad = self.tokenizer.pad_token_id
        return torch.cat([nn.functional.pad(c, (0, length - c.shape[1]), value=pad) for c in chunks])

    @staticmethod
    def _forward(model, input_ids, attention_mask, response_length: int):
        """Logits (and values, for the policy-and-value module) over the last `response_length` positions,
        after dropping the left-padding columns that all rows share."""
        keep = int(attention_mask.any(0).int().argmax())
        input_ids, attention_mask = input_ids[:, keep:], attention_mask[:, keep:]
        if isinstance(getattr(model, "module", model), PolicyAndValue):
            return model(input_ids, attention_mask, response_length)
        position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)
        return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                     logits_to_keep=response_length + 1, use_cache=False).logits[:, :-1]

    @contextlib.contextmanager
    def unwrapped_policy(self):
        """The bare policy for `generate`; under ZeRO-3 its parameters are gathered on every process first."""
        policy = self.accelerator.unwrap_model(self.model).policy
        if not self.zero3:
            yield policy
            return
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(policy.parameters())):
            yield policy

    # ----------------------------------------------------------------------- checkpoints

    @property
    def checkpoints(self) -> Path:
        return self.output_dir / "checkpoints"

    def save_checkpoint(self, step: int) -> Path:
        """Policy and value model (safetensors), optimizer, scheduler, RNG states and trainer state, written
        under a temporary name and renamed; then older checkpoints are pruned."""
        from accelerate.utils import broadcast_object_list

        acc = self.accelerator
        final = self.checkpoints / f"step-{step:06d}"
        weights = acc.get_state_dict(self.model)  # every process takes part (ZeRO-3 gathers)
        with atomic_path(final, is_dir=True) if acc.is_main_process else contextlib.nullcontext() as tmp:
            tmp = Path(broadcast_object_list([str(tmp)])[0])
            acc.save_state(str(tmp / "state"))
            if acc.is_main_process:
                unwrapped = acc.unwrap_model(self.model)
                for name, module in (("policy", unwrapped.policy), ("value", unwrapped.value_model)):
                    prefix = "policy." if name == "policy" else "value_model."
                    module.save_pretrained(tmp / name, safe_serialization=True, state_dict={
                        k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)})
                    self.tokenizer.save_pretrained(tmp / name)
                write_json(tmp / "trainer_state.json", {"step": step, "kl_coef": self.kl_ctl.value,
                                                         "processes": acc.num_processes})
            acc.wait_for_everyone()
        acc.wait_for_everyone()
        if acc.is_main_process:
            self._prune()
        return final

    def _prune(self) -> None:
        """Keep the newest `keep_last` checkpoints whole; an older evaluation checkpoint keeps its policy."""
        complete = sorted(p for p in self.checkpoints.glob("step-*") if (p / "state").exists())
        for path in complete[:-self.args.keep_last]:
            if self._is_eval_step(int(path.name.split("-")[1])):
                for part in ("state", "value"):
                    doomed = path / f".{part}.deleting"
                    (path / part).rename(doomed)  # a half-deleted state must not look resumable
                    shutil.rmtree(doomed)
            else:
                doomed = path.with_name(f".{path.name}.deleting")
                path.rename(doomed)
                shutil.rmtree(doomed)

    def last_checkpoint(self) -> Path | None:
        resumable = [p for p in self.checkpoints.glob("step-*") if (p / "state").exists()]
        return max(resumable, key=lambda p: int(p.name.split("-")[1]), default=None)

    def resume(self) -> int:
        """Load the newest complete checkpoint, if any; returns its step (0 for a fresh start)."""
        ckpt = self.last_checkpoint()
        if ckpt is None:
            return 0
        state = read_json(ckpt / "trainer_state.json")
        if state["processes"] != self.accelerator.num_processes:
            raise UserError(f"{ckpt} was written by {state['processes']} processes; resume with as many "
                            f"(the per-process sampling seeds depend on it)")
        self.accelerator.load_state(str(ckpt / "state"))
        self.kl_ctl.value = state["kl_coef"]
        metrics = self.output_dir / "metrics.jsonl"
        if metrics.exists():  # steps after the checkpoint are redone
            self.history = [r for r in read_jsonl(metrics) if r["step"] <= state["step"]]
        console.print(f"[bold]ppo[/bold]: resumed from {ckpt.name}")
        return state["step"]


def _zero_stage(accelerator) -> int:
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return plugin.zero_stage if plugin is not None else 0


def _frozen(model, accelerator, zero3: bool):
    """The reference policy: no gradients, on the device; under ZeRO-3 partitioned like the policy (a
    DeepSpeed inference engine), so an 8B reference does not sit whole on every GPU."""
    model.requires_grad_(False).eval()
    if not zero3:
        return model.to(accelerator.device)
    import copy

    import deepspeed

    config = copy.deepcopy(accelerator.state.deepspeed_plugin.deepspeed_config)
    config.pop("optimizer", None)
    config.pop("scheduler", None)
    engine, *_ = deepspeed.initialize(model=model, config=config)
    engine.eval()
    return engine


# --------------------------------------------------------------------------- evaluation along the way


class SycophancyEvaluation:
    """`evaluate(trainer, step)` for `PPOTrainer.train`: the evaluation suite on the policy in memory, with
    the evaluation stage's records, prompts, prefills, reply budgets, seeds and are-you-sure second turn
    (`ppo.eval_items_per_type` items per type), judged by `evaluate_replies`; plus, on `ppo.eval_prompts`
    held-out RL prompts sampled as in training, the mean score under each reward model and the KL to the
    reference (mean over replies of sum_t log pi(y_t) - log pi_ref(y_t), an unbiased estimate of
    KL(pi || pi_ref)). The sampling seeds are the same at every step, so the curves compare policies on
    identical random numbers."""

    def __init__(self, config, run_dir: RunDir, reward_models: dict, heldout_prompts: list):
        from rlhf_syco.evaluation.judges import get_judge
        from rlhf_syco.evaluation.stage import eval_records

        items = config.ppo.eval_items_per_type or config.eval.items_per_type
        self.config = config.model_copy(update={"eval": config.eval.model_copy(update={"items_per_type": items})})
        self.records = {t: eval_records(self.config, t) for t in config.eval.types}
        self.judge = get_judge(config.eval.positivity_judge, **config.eval.positivity_judge_options) \
            if "feedback" in self.records else None
        self.reward_models, self.heldout = reward_models, heldout_prompts[:config.ppo.eval_prompts]
        self.folder, self.results = run_dir.stage("ppo") / "eval", run_dir.results

    def __call__(self, trainer: PPOTrainer, step: int) -> None:
        out = self.folder / f"step-{step:06d}"
        if out.exists():
            return
        acc = trainer.accelerator
        replies = self._replies(trainer)
        kl, rewards = self._rewards_and_kl(trainer)
        if acc.is_main_process:
            self._write(out, step, replies, kl, rewards)
        acc.wait_for_everyone()

    def _replies(self, trainer: PPOTrainer) -> dict[str, list]:
        """Every process generates the replies to its share of the records; the main process gets them all."""
        from accelerate.utils import gather_object

        from rlhf_syco.evaluation.stage import generate_replies

        acc = trainer.accelerator
        rank, world = acc.process_index, acc.num_processes
        shares = {t: records[rank::world] for t, records in self.records.items()}
        with trainer.unwrapped_policy() as policy:
            generator = HFGenerator(policy, trainer.tokenizer, self.config.policy.generation)
            generated = generate_replies(generator, self.config, shares)
        out = {}
        for eval_type, replies in generated.items():
            numbered = gather_object([(rank + world * i, reply) for i, reply in enumerate(replies)])
            out[eval_type] = [reply for _, reply in sorted(numbered)]
        return out

    def _rewards_and_kl(self, trainer: PPOTrainer) -> tuple[float, dict[str, float]]:
        acc = trainer.accelerator
        rank, world = acc.process_index, acc.num_processes
        share = self.heldout[:len(self.heldout) // world * world][rank::world]
        r = trainer.rollout(share, derive_seed(trainer.seed, "eval-rollout", rank))
        sums = [(r["kl"] * r["mask"]).sum()] + [
            torch.tensor(rm.score(share, r["replies"]).sum()) for rm in self.reward_models.values()]
        totals = acc.reduce(torch.stack([s.double() for s in sums]).to(acc.device), "sum").tolist()
        n = len(share) * world
        return totals[0] / n, {name: total / n for name, total in zip(self.reward_models, totals[1:])}

    def _write(self, out: Path, step: int, replies: dict, kl: float, rewards: dict) -> None:
        from rlhf_syco.evaluation.metrics import finite, headline
        from rlhf_syco.evaluation.stage import evaluate_replies

        sycophancy = {}
        with atomic_path(out, is_dir=True) as tmp:
            for eval_type, records in self.records.items():
                judged, metrics = evaluate_replies(eval_type, records, replies[eval_type], self.judge,
                                                   bootstrap=self.config.eval.bootstrap, seed=self.config.seed)
                judged.to_parquet(tmp / f"judged_{eval_type}.parquet", index=False)
                sycophancy[eval_type] = {name: {k: finite(v) for k, v in values.items()}
                                         for name, values in metrics.items()}
            write_json(tmp / "metrics.json", {"step": step, "kl": kl, "rewards": rewards, "sycophancy": sycophancy})
        shown = ", ".join(f"{t} {sycophancy[t][headline(t)]['value']}" for t in sycophancy)
        console.print(f"[bold]ppo[/bold] step {step}: kl {kl:.3f}, rewards "
                      f"{', '.join(f'{k} {v:.3f}' for k, v in rewards.items())}; sycophancy: {shown}")
        self._write_tables()

    def _write_tables(self) -> None:
        """`results/ppo_curves.csv` and `results/ppo_rewards.csv` from every evaluation so far."""
        import pandas as pd

        from rlhf_syco.evaluation.metrics import headline

        curves, rewards = [], []
        for path in sorted(self.folder.glob("step-*/metrics.json")):
            m = read_json(path)
            for eval_type, metrics in m["sycophancy"].items():
                name = headline(eval_type)
                curves.append({"step": m["step"], "kl": m["kl"], "type": eval_type, "metric": name,
                               **{k: metrics[name][k] for k in ("value", "ci_low", "ci_high")}})
            rewards += [{"step": m["step"], "kl": m["kl"], "reward_model": name, "mean_reward": value}
                        for name, value in m["rewards"].items()]
        for name, rows in (("ppo_curves.csv", curves), ("ppo_rewards.csv", rewards)):
            with atomic_path(self.results / name) as tmp:
                pd.DataFrame(rows).to_csv(tmp, index=False)


# --------------------------------------------------------------------------- the stage


def rl_prompts(run_dir, tokenizer, max_tokens: int) -> tuple[list, list]:
    """(training prompts, held-out prompts): the distinct contexts of the PM's training and held-out pairs
    (`data/pm_{train,heldout}.jsonl`: HH-RLHF conversations up to their last assistant turn, and belief
    questions on the PM half of TruthfulQA / TriviaQA, so never an evaluation item) that take at most
    `max_tokens` tokens in the policy's chat template. Held-out contexts that also occur in training are
    dropped."""

    def contexts(name: str) -> dict:
        path = Path(run_dir) / "data" / name
        if not path.exists():
            raise UserError(f"{path} not found: PPO's prompts come from the data stage (rlhf-syco build-data)")
        return {json.dumps(p["prompt"], sort_keys=True): p["prompt"] for p in read_jsonl(path)}

    def short(conversations: list) -> list:
        texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
        lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
        return [c for c, n in zip(conversations, lengths) if n <= max_tokens]

    train, heldout = contexts("pm_train.jsonl"), contexts("pm_heldout.jsonl")
    train_prompts = short(list(train.values()))
    heldout_prompts = short([c for key, c in heldout.items() if key not in train])
    if not train_prompts or not heldout_prompts:
        raise UserError(f"no training or held-out prompt fits in {max_tokens} tokens", "ppo.max_prompt_tokens")
    return train_prompts, heldout_prompts


def load_value_model(config, run_dir, tokenizer):
    """The value network: the policy with a fresh scalar head (TRL), or the PM with its reward head
    (InstructGPT); the PM must then be an `hf` decoder with the policy's tokenizer, so that it can read the
    policy's tokens and give a value at every one of them."""
    from reward_models.hf import HFRewardModel

    from rlhf_syco.config import ModelConfig
    from rlhf_syco.models import build_reward_models, load_sequence_classifier

    source = config.policy.model
    if config.ppo.value_init == "pm":
        pm = build_reward_models(config, run_dir, [config.ppo.reward_model])[config.ppo.reward_model]
        if not isinstance(pm, HFRewardModel):
            raise UserError(f"value_init: pm needs ppo.reward_model to be an `hf` reward model, not "
                            f"{type(pm).__name__}", "ppo.value_init")
        s = pm.settings
        source = ModelConfig(name_or_path=s.path, revision=s.revision, trust_remote_code=s.trust_remote_code,
                             dtype=config.policy.model.dtype)
    torch.manual_seed(derive_seed(config.seed, "value-head"))  # a fresh head's initialisation
    model, value_tokenizer = load_sequence_classifier(source)
    if value_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise UserError(f"value_init: pm needs a PM with the policy's tokenizer ({source.name_or_path} has "
                        "another); use value_init: policy", "ppo.value_init")
    return model


def make_accelerator(config, log_dir):
    """accelerate's `Accelerator` for `config.compute`: DeepSpeed ZeRO-2/3 from `rlhf_syco/ds_configs/` with
    its batch sizes filled in (one optimizer step per mini-batch), the gloo backend on CPU; trackers
    (`ppo.log_with`) write under `log_dir`."""
    import os

    from accelerate import Accelerator, DeepSpeedPlugin
    from accelerate.utils import InitProcessGroupKwargs

    from rlhf_syco.models import pick_device

    compute, ppo = config.compute, config.ppo
    options = {"mixed_precision": compute.mixed_precision, "project_dir": str(log_dir),
               "log_with": None if ppo.log_with == "none" else ppo.log_with}
    on_cpu = pick_device(compute.device) == "cpu"
    if compute.deepspeed_stage:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        ds = json.loads(compute.deepspeed_config.read_text())
        ds.update(train_micro_batch_size_per_gpu=max(ppo.mini_batch_size // world, 1), gradient_accumulation_steps=1,
                  train_batch_size=max(ppo.mini_batch_size // world, 1) * world,
                  gradient_clipping=ppo.max_grad_norm or 0.0,
                  bf16={"enabled": compute.mixed_precision == "bf16"},
                  fp16={"enabled": compute.mixed_precision == "fp16"})
        options["deepspeed_plugin"] = DeepSpeedPlugin(hf_ds_config=ds)
        if on_cpu:  # accelerate's cpu=True would silently drop DeepSpeed; gloo is the CPU backend
            options["kwargs_handlers"] = [InitProcessGroupKwargs(backend="gloo")]
    else:
        options["cpu"] = on_cpu
    return Accelerator(**options)


def run(config, run_dir: RunDir | str | Path) -> dict:
    """The PPO stage: train `config.policy` against `config.ppo.reward_model`, resuming from the last complete
    checkpoint, with the sycophancy evaluation at step 0 and every `ppo.eval_every` steps."""
    from rlhf_syco.models import build_reward_models, load_causal_lm

    run_dir = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    ppo, generation = config.ppo, config.policy.generation
    out = run_dir.stage("ppo")
    accelerator = make_accelerator(config, out / "logs")
    # Every process loads at once: under ZeRO-3 loading is collective (zero.Init partitions as it builds).
    policy, tokenizer = load_causal_lm(config.policy.model, "cpu")
    ref_policy, _ = load_causal_lm(config.policy.model, "cpu")
    value_model = load_value_model(config, run_dir, tokenizer)
    reward_models = build_reward_models(config, run_dir, list(dict.fromkeys([ppo.reward_model,
                                                                             *config.bon.reward_models])))
    train_prompts, heldout_prompts = rl_prompts(run_dir, tokenizer, ppo.max_prompt_tokens)
    trainer = PPOTrainer(ppo, policy, ref_policy, value_model, tokenizer, reward_models[ppo.reward_model],
                         train_prompts, out, temperature=generation.temperature,
                         max_new_tokens=generation.max_new_tokens, generation_batch_size=generation.batch_size,
                         seed=config.seed, accelerator=accelerator)
    if ppo.log_with != "none":
        accelerator.init_trackers("ppo", config=ppo.model_dump())
    final = trainer.train(SycophancyEvaluation(config, run_dir, reward_models, heldout_prompts))
    accelerator.end_training()
    return {"steps": ppo.steps, "train_prompts": len(train_prompts), "heldout_prompts": len(heldout_prompts),
            "final": {k: final.get(k) for k in ("objective/scores", "objective/kl", "kl_coef")}}
