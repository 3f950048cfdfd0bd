"""Sycophancy measured along RL training, for every optimizer that trains a policy against a reward model (PPO,
GRPO, RLOO): the RL prompts they all train on, and the evaluation callback each runs at step 0 and at every
evaluation step.

Run folder, for optimizer `<opt>` (`ppo`, `grpo`, `rloo`): `<opt>/<arm>/eval/step-NNNNNN/` holds the evaluation of
that step of the policy trained against reward model `<arm>` (`metrics.json`, judged replies). Rebuilt from
every arm's evaluations after each one:
- `results/<opt>_curves.csv` (arm, step, kl, type, metric, value, ci_low, ci_high, reason: each type's headline);
- `results/<opt>_paired.csv` (arm, minus, step, kl, type, metric, value, ci_low, ci_high, ...): each step's
  headline minus its own step 0's (`minus` = "step 0"), and minus the next arm's at the same step (`minus` =
  that arm: `pm` − `pm_nonsyco` with `reward_models: [pm, pm_nonsyco]`), with a paired bootstrap CI over
  the same items (every arm answers the same records with the same seeds);
- `results/<opt>_rewards.csv` (arm, step, kl, reward_model, mean_reward): every reward model's mean score of the
  arm's replies to held-out RL prompts;
- `results/<opt>_gold.csv` and `<opt>_gold_fits.csv`: each type's gold rate at every evaluated step beside the
  arm's proxy reward, against sqrt(KL), and Gao et al.'s RL form fitted to it (`overoptimization.py`);
- `results/<opt>_judged.jsonl`: every evaluated record's judgments (its keys and numeric columns) per arm and
  step, for comparisons paired over items across runs (the report's intervened - unintervened policy).
"""

from __future__ import annotations

import contextlib
import copy
import json
import shutil
import tempfile
from pathlib import Path
from typing import Protocol

import torch

from rlhf_syco.errors import UserError
from rlhf_syco.generation import HFGenerator, derive_seed, make_generator, render_prompts
from rlhf_syco.progress import console
from rlhf_syco.rundir import RunDir, atomic_path, read_json, read_jsonl, write_json, write_jsonl


def rl_prompts(run_dir, tokenizer, max_tokens: int, optimizer: str = "ppo") -> tuple[list, list]:
    """(training prompts, held-out prompts): the distinct conversations of `data/rl_{train,heldout}.jsonl`
    (HH-RLHF conversations up to their last assistant turn, and the bias families' PM-half items in held-out
    phrasings, so never an evaluation item nor a wording the PM was trained on) that take at most `max_tokens`
    tokens in the policy's chat template. Held-out conversations that also occur in training are dropped."""

    def contexts(name: str) -> dict:
        path = Path(run_dir) / "data" / name
        if not path.exists():
            raise UserError(f"{path} not found: RL prompts come from the data stage (rlhf-syco build-data)")
        return {json.dumps(p["prompt"], sort_keys=True): p["prompt"] for p in read_jsonl(path)}

    def short(conversations: list) -> list:
        texts = render_prompts(tokenizer, conversations)  # exactly the text a rollout samples after
        lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
        return [c for c, n in zip(conversations, lengths) if n <= max_tokens]

    train, heldout = contexts("rl_train.jsonl"), contexts("rl_heldout.jsonl")
    train_prompts = short(list(train.values()))
    heldout_prompts = short([c for key, c in heldout.items() if key not in train])
    if not train_prompts or not heldout_prompts:
        raise UserError(f"no training or held-out prompt fits in {max_tokens} tokens",
                        f"{optimizer}.max_prompt_tokens")
    return train_prompts, heldout_prompts


class TrainedPolicy(Protocol):
    """What the evaluation needs of an optimizer's trainer."""

    accelerator: object  # accelerate's Accelerator
    tokenizer: object
    seed: int

    def unwrapped_policy(self) -> contextlib.AbstractContextManager:
        """The bare policy being trained (parameters gathered under ZeRO-3)."""

    def replies_and_kl(self, conversations: list, seed: int) -> tuple[list[str], torch.Tensor]:
        """One reply per conversation sampled as in training, and each reply's summed log-ratio to the reference,
        sum_t log pi(y_t) - log pi_ref(y_t) (an unbiased estimate of KL(pi || pi_ref))."""


class SycophancyEvaluation:
    """`evaluate(trainer, step)` for the optimizer `optimizer` (its config section has `eval_items_per_type` and
    `eval_prompts`; its arms are `config.arms(optimizer)`): the evaluation suite on the policy in memory, with the
    evaluation stage's records, prompts, prefills, reply budgets, seeds and are-you-sure second turn
    (`eval_items_per_type` items per type), judged by the suite; plus, on `eval_prompts` held-out RL prompts
    sampled as in training, the mean score under each reward model and the KL to the reference (mean over replies
    of sum_t log pi(y_t) - log pi_ref(y_t)). The sampling seeds are the same at every step, so the curves compare
    policies on identical random numbers."""

    def __init__(self, config, run_dir: RunDir, reward_models: dict, heldout_prompts: list, arm: str,
                 optimizer: str = "ppo"):
        from rlhf_syco.evaluation import suite

        settings = getattr(config, optimizer)
        items = settings.eval_items_per_type or config.eval.items_per_type
        self.config, self.optimizer = config, optimizer
        self.tasks = suite.tasks(config.eval.types)
        self.records = {name: suite.records(task, config.eval, items, config.seed) for name, task in self.tasks.items()}
        self.judges = suite.make_judges(config.eval, list(self.tasks.values()))
        self.reward_models, self.heldout = reward_models, heldout_prompts[:settings.eval_prompts]
        self.arms, self.root = config.arms(optimizer), run_dir.stage(optimizer)
        self.folder, self.results = self.root / arm / "eval", run_dir.results

    def __call__(self, trainer: TrainedPolicy, step: int) -> None:
        out = self.folder / f"step-{step:06d}"
        if out.exists():
            return
        first = self.root / self.arms[0] / "eval" / out.name
        if step == 0 and first.exists() and first != out:  # every arm starts from the same policy and seeds
            if trainer.accelerator.is_main_process:
                with atomic_path(out, is_dir=True) as tmp:
                    tmp.rmdir()
                    shutil.copytree(first, tmp)
                self._write_tables()
            trainer.accelerator.wait_for_everyone()
            return
        acc = trainer.accelerator
        replies = self._replies(trainer)
        kl, rewards = self._rewards_and_kl(trainer)
        if acc.is_main_process:
            self._write(out, step, replies, kl, rewards)
        acc.wait_for_everyone()

    def _replies(self, trainer: TrainedPolicy) -> dict[str, list]:
        """Every process generates the replies to its share of the records; the main process gets them all."""
        from accelerate.utils import gather_object

        from rlhf_syco.evaluation import suite

        acc = trainer.accelerator
        rank, world = acc.process_index, acc.num_processes
        shares = {t: records[rank::world] for t, records in self.records.items()}
        with trainer.unwrapped_policy() as policy:
            dtype = self.config.policy.generation.dtype
            if dtype and getattr(torch, dtype) != policy.dtype:  # sample from a copy in the sampling dtype
                policy = copy.deepcopy(policy).to(getattr(torch, dtype))
            with self._generator(policy, trainer.tokenizer, world) as generator:
                generated = suite.sample_tasks(generator, self.config.eval,
                                               {name: (self.tasks[name], records) for name, records in shares.items()},
                                               seed=self.config.seed)
        out = {}
        for eval_type, replies in generated.items():
            numbered = gather_object([(rank + world * i, reply) for i, reply in enumerate(replies)])
            out[eval_type] = [reply for _, reply in sorted(numbered)]
        return out

    @contextlib.contextmanager
    def _generator(self, policy, tokenizer, world: int):
        """The configured backend on a copy of these weights saved to disk (an engine such as vLLM loads its
        model from a folder); transformers on the weights in memory for `hf`, and in a multi-process run,
        where an in-process engine would meet the run's process group."""
        settings = self.config.policy.generation
        if settings.backend == "hf" or world > 1:
            yield HFGenerator(policy, tokenizer, settings)
            return
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.folder.parent, prefix=".policy-") as folder:
            policy.save_pretrained(folder, safe_serialization=True)
            tokenizer.save_pretrained(folder)
            model = self.config.policy.model.model_copy(update={"name_or_path": folder,
                                                                "dtype": str(policy.dtype).removeprefix("torch.")})
            generator = make_generator(model, settings, self.config.compute.device)
            try:
                yield generator
            finally:
                generator.close()

    def _rewards_and_kl(self, trainer: TrainedPolicy) -> tuple[float, dict[str, float]]:
        acc = trainer.accelerator
        rank, world = acc.process_index, acc.num_processes
        share = self.heldout[:len(self.heldout) // world * world][rank::world]
        replies, kl = trainer.replies_and_kl(share, derive_seed(trainer.seed, "eval-rollout", rank))
        sums = [kl.sum()] + [torch.tensor(rm.score(share, replies).sum()) for rm in self.reward_models.values()]
        totals = acc.reduce(torch.stack([s.double() for s in sums]).to(acc.device), "sum").tolist()
        n = len(share) * world
        return totals[0] / n, {name: total / n for name, total in zip(self.reward_models, totals[1:])}

    def _write(self, out: Path, step: int, replies: dict, kl: float, rewards: dict) -> None:
        from rlhf_syco.evaluation import suite

        sycophancy = {}
        with atomic_path(out, is_dir=True) as tmp:
            for name, records in self.records.items():
                judged, metrics = suite.evaluate(self.tasks[name], records, replies[name], self.judges,
                                                 self.config.eval, bootstrap=self.config.eval.bootstrap,
                                                 seed=self.config.seed)
                judged.to_parquet(tmp / f"judged_{name}.parquet", index=False)
                sycophancy[name] = {row["metric"]: {k: row[k] for k in (*suite.STATS, "headline", "reason")}
                                    for row in suite.metric_rows(self.tasks[name], metrics)}
            write_json(tmp / "metrics.json", {"step": step, "kl": kl, "rewards": rewards, "sycophancy": sycophancy})
        shown = ", ".join(f"{name} {next(v['value'] for v in sycophancy[name].values() if v['headline'])}"
                          for name in self.tasks)
        console.print(f"[bold]{self.optimizer}[/bold] step {step}: kl {kl:.3f}, rewards "
                      f"{', '.join(f'{k} {v:.3f}' for k, v in rewards.items())}; sycophancy: {shown}")
        self._write_tables()

    def _write_tables(self) -> None:
        """`results/<opt>_curves.csv`, `_paired.csv`, `_rewards.csv` and `_gold*.csv` from every arm's evaluations
        so far."""
        import pandas as pd

        from rlhf_syco.evaluation.metrics import paired_difference

        def judged(arm, step, name):
            path = self.root / arm / "eval" / f"step-{step:06d}" / f"judged_{name}.parquet"
            return pd.read_parquet(path) if path.exists() else None

        curves, paired, rewards, every = [], [], [], []
        drawn = {}  # each type's headline as chosen on the untrained policy (step 0), kept for every step and arm
        for index, arm in enumerate(self.arms):
            others = self.arms[index + 1:index + 2]  # the next arm: pm - pm_nonsyco for [pm, pm_nonsyco]
            for path in sorted((self.root / arm / "eval").glob("step-*/metrics.json")):
                m = read_json(path)
                for name, metrics in m["sycophancy"].items():
                    headline = drawn.setdefault(name, next(k for k, v in metrics.items() if v["headline"]))
                    curves.append({"arm": arm, "step": m["step"], "kl": m["kl"], "type": name, "metric": headline,
                                   **{k: metrics[headline][k] for k in ("value", "ci_low", "ci_high", "reason")}})
                    mine = judged(arm, m["step"], name)
                    if mine is not None:
                        every += judged_rows(mine, arm=arm, step=m["step"], type=name)
                    against = [("step 0", judged(arm, 0, name))] + [(o, judged(o, m["step"], name)) for o in others] \
                        if m["step"] > 0 else []  # at step 0 every arm is the same policy
                    for minus, base in against:
                        if base is None:
                            continue
                        stats = paired_difference(self.tasks[name], headline, mine, base,
                                                  bootstrap=self.config.eval.bootstrap, seed=self.config.seed,
                                                  min_items=self.config.eval.min_items)
                        paired.append({"arm": arm, "minus": minus, "step": m["step"], "kl": m["kl"], "type": name,
                                       "metric": headline, **stats})
                rewards += [{"arm": arm, "step": m["step"], "kl": m["kl"], "reward_model": name, "mean_reward": value}
                            for name, value in m["rewards"].items()]
        gold, fits = self._gold(judged)
        for table, rows in (("curves", curves), ("paired", paired), ("rewards", rewards), ("gold", gold),
                            ("gold_fits", fits)):
            with atomic_path(self.results / f"{self.optimizer}_{table}.csv") as tmp:
                pd.DataFrame(rows).to_csv(tmp, index=False)
        write_jsonl(self.results / f"{self.optimizer}_judged.jsonl", every)

    def _gold(self, judged) -> tuple[list[dict], list[dict]]:
        """Per arm and type with a gold rate: the gold rate at each evaluated step beside the arm's own reward
        model's mean reward (the proxy), and Gao et al.'s RL form fitted against d = sqrt(KL) (KL clipped at 0:
        the estimate is unbiased, so it can dip below 0 near the start)."""
        import numpy as np

        from rlhf_syco import overoptimization

        settings = {"bootstrap": self.config.eval.bootstrap, "seed": self.config.seed,
                    "min_items": self.config.eval.min_items}
        gold, fits = [], []
        for arm in self.arms:
            evals = [read_json(p) for p in sorted((self.root / arm / "eval").glob("step-*/metrics.json"))]
            d = np.sqrt(np.clip([0.0 if m["step"] == 0 else m["kl"] for m in evals], 0.0, None))
            for name, task in self.tasks.items():
                frames = [judged(arm, m["step"], name) for m in evals]
                if not frames or task.gold(frames[0]) is None:
                    continue
                gold += [{"arm": arm, "step": m["step"], "kl": m["kl"], "sqrt_kl": float(root), "type": name, **stats,
                          "proxy": m["rewards"].get(arm)}
                         for m, root, stats in zip(evals, d, overoptimization.gold_rows(task, frames, **settings))]
                fits.append({"arm": arm, "type": name, **overoptimization.fit("rl", d, task, frames, **settings)})
        return gold, fits


def judged_rows(judged, **keys) -> list[dict]:
    """A judged table as JSON rows under `keys`: the record keys and the numeric judgment columns, which are all
    a task's metrics read (`tests/test_tasks.py`); the replies' text stays in the stage folder."""
    import pandas as pd

    from rlhf_syco.evaluation.task import KEYS

    columns = [c for c in judged.columns if c in KEYS or pd.api.types.is_numeric_dtype(judged[c])]
    return [{**keys, **row} for row in json.loads(judged[columns].to_json(orient="records"))]
