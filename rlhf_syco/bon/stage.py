"""The best-of-N stage (Sharma et al. 2023 §4.2, Fig. 6): one pool of samples per prompt, every n from it.

1. Pool (`bon/pool.py`). For every prompt of every task in `bon.types` (the evaluation suite's records of
   `bon.prompts_per_type` items), `bon.n_max` samples from the policy at `bon.temperature`, drawn once through
   `rlhf_syco.generation` and cached in shards.
2. Scores (`bon/pool.py`). Every sample scored once by every reward model in `bon.reward_models`, cached per
   model and shard.
3. Judgments. Every sample judged once by the evaluation suite (`suite.judge` on sample k of every record, for
   each k), into `bon/judged/<type>.parquet`.
4. Curves. For each reward model, type and n (the powers of two below n_max, and n_max): the exact expectation of
   each record's judgments under best-of-n selection (`estimator.best_of_n`), fed into the type's metric
   definitions (`metrics.summarize`, 95% bootstrap CI over items, the same resamples for every n and reward
   model). Written to `results/`: `bon_curves.csv` (each type's headline metric, what the plots draw),
   `bon_metrics.csv` (every metric, with the number of items that count), `bon_paired.csv` (for every pair of
   reward models, the difference of each headline at each n with a paired bootstrap CI: the items are
   resampled once for both, so what the two selections share cancels), `bon_rewards.csv` (the expected reward
   of the selected sample under every reward model, per type and over all prompts), `bon_gold.csv` and
   `bon_gold_fits.csv` (the gold rate of the selection beside its proxy reward against sqrt(KL), and Gao et
   al.'s fit: `overoptimization.py`), `bon_context.json` (how many reward-model inputs had to be shortened to
   fit), `bon_budget.json` (how many samples ran into their token budget) and `bon_selected.jsonl` (every
   record's expected judgments per reward model and n, for comparisons paired over items across runs).

Why expected judgments give the best-of-n metric exactly. Every metric is a rate or a signed sum of rates, each
(sum of a judgment over the counted rows) / (number of counted rows). When the counted rows do not depend on which
samples are selected, the metric is linear in the per-record judgments, so its expectation over selections is the
metric of the expected judgments (P(correct) in place of correct). The rows are fixed by the variant for answer
and opinion and are every row for mimicry; the two multi-turn cases are made so:

- are_you_sure counts the records whose first answer is correct. The first turn is one sample from the policy
  per record, shared by every reward model and n (`bon/pool/are_you_sure/context.jsonl`), and the pool is the
  reply to the challenge that follows it (every task with follow-up turns is treated so: best-of-n acts on the
  last turn before the probe turns; a probe turn, such as are-you-sure's final-answer question, is played after
  every sample). The counted rows are then fixed, admit_rate = P(admits | first
  correct) is linear, and best-of-n acts on the reply to "Are you sure?", which is the question: does the PM
  prefer caving to a challenge? Selecting the first turn as well would need a fresh pool of second turns for
  every selected first turn (one per reward model and n) and would change the conditioning set with n.
- feedback judges each framed comment against a comment on the unframed text. The baseline is the policy's
  own sample: framed sample k is compared with sample k of the same item's unframed pool, an independent draw,
  so each sample costs one judgment and its expectation is P(the best-of-n framed comment is more positive than
  a policy comment on the unframed text); at n = 1 this is the evaluation stage's definition. Every n and
  reward model is measured against the same reference, so a framing-blind shift (selection making every comment
  more positive) raises all framings alike and cancels in feedback_sycophancy = prefer - disprefer, unless
  positivity saturates near 1 (see positivity_<framing> in bon_metrics.csv). A baseline selected by the same
  reward model at the same n would need all N^2 pairs judged per record (16.7 million at N = 4096).
"""

from __future__ import annotations

import functools
import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
from rich.table import Table

from rlhf_syco import overoptimization
from rlhf_syco.bon import pool
from rlhf_syco.bon.estimator import best_of_n, kl_bon, kl_plugin
from rlhf_syco.cache import cached
from rlhf_syco.config import ExperimentConfig
from rlhf_syco.evaluation import suite
from rlhf_syco.evaluation.metrics import bootstrap_ci, choose_headline, paired_difference, summarize
from rlhf_syco.evaluation.task import KEYS
from rlhf_syco.fanout import Workers
from rlhf_syco.generation import make_generator
from rlhf_syco.models import build_reward_models
from rlhf_syco.progress import console, progress_bar
from rlhf_syco.rundir import RunDir, atomic_path, fingerprint, write_json, write_jsonl

CURVES_FILE, METRICS_FILE, PAIRED_FILE, REWARDS_FILE = "bon_curves.csv", "bon_metrics.csv", "bon_paired.csv", \
    "bon_rewards.csv"
CONTEXT_FILE, HEADLINES_FILE, BUDGET_FILE = "bon_context.json", "bon_headlines.json", "bon_budget.json"
GOLD_FILE, FITS_FILE, SELECTED_FILE = "bon_gold.csv", "bon_gold_fits.csv", "bon_selected.jsonl"


def run(config: ExperimentConfig, run_dir: RunDir | str | Path) -> dict:
    """Pool, scores, judgments and curves for `config.bon`; every finished piece is reused."""
    run_dir = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    out = run_dir.stage("bon")
    build_reward_models(config, run_dir.path.resolve(), config.bon.reward_models)  # a bad path fails before sampling
    tasks = suite.tasks(config.bon.types)
    sets = {name: suite.records(task, config.eval, config.bon.prompts_per_type, pool.pool_seed(config))
            for name, task in tasks.items()}
    for name, records in sets.items():
        write_jsonl(out / "data" / f"{name}.jsonl", records)

    sampler = functools.partial(make_generator, config.policy.model, pool.sampling(config), config.compute.device)
    with Workers(config, sampler) as policy:
        context = {name: pool.context_turns(config, out, tasks[name], records, policy) for name, records in sets.items()}
        prompts = {name: pool.prompts(config, tasks[name], records, context[name]) for name, records in sets.items()}
        pools = pool.draw_pool(config, out, tasks, prompts, policy)
        probes = pool.probe_turns(config, out, tasks, sets, context, pools, policy)
    scores, shortened = pool.score_pool(config, run_dir, out, pools)  # the policy is released first
    judges = suite.make_judges(config.eval, list(tasks.values()))
    judged = {name: _judgments(config, out, tasks[name], records, pools[name], context[name], probes[name], judges)
              for name, records in sets.items()}
    sizes = report_sizes(config.bon.n_max)
    kl = {(rm, name): np.mean([kl_plugin(samples, s, sizes) for samples, s in
                               zip((row for shard in pools[name] for row in shard["samples"]), scores[rm][name])],
                              axis=0) for rm in config.bon.reward_models for name in sets}
    metrics, paired, chosen, frames = _curves(config, tasks, judged, scores, sizes, kl)
    rewards = _rewards(config, sets, scores, sizes)
    gold, fits = _gold(config, tasks, frames, sizes, rewards)
    headlines = metrics[metrics["metric"] == metrics["type"].map({name: c["metric"] for name, c in chosen.items()})]
    _write_csv(run_dir.results / CURVES_FILE, headlines.drop(columns="items"))
    _write_csv(run_dir.results / METRICS_FILE, metrics)
    _write_csv(run_dir.results / PAIRED_FILE, paired)
    _write_csv(run_dir.results / REWARDS_FILE, rewards)
    _write_csv(run_dir.results / GOLD_FILE, gold)
    _write_csv(run_dir.results / FITS_FILE, fits)
    write_json(run_dir.results / CONTEXT_FILE, shortened)
    write_json(run_dir.results / BUDGET_FILE, _budget_hits(config, tasks, pools))
    write_json(run_dir.results / HEADLINES_FILE, chosen)
    write_jsonl(run_dir.results / SELECTED_FILE, selected_rows(frames))
    _print_table(headlines, config.bon.n_max)
    n_prompts = sum(len(r) for r in sets.values())
    summary = {"n_max": config.bon.n_max, "prompts": n_prompts, "samples": n_prompts * config.bon.n_max,
               "context": shortened, "headlines": chosen, "headline": {}}
    for row in headlines[headlines["n"].isin([1, config.bon.n_max])].itertuples():
        summary["headline"].setdefault(row.type, {}).setdefault(row.reward_model, {})[f"n={row.n}"] = \
            None if pd.isna(row.value) else float(row.value)
    return summary


def _budget_hits(config: ExperimentConfig, tasks: dict, pools: dict) -> dict:
    """Per type, how many pool samples ran into their token budget."""
    from rlhf_syco.models import load_tokenizer

    tokenizer = load_tokenizer(config.policy.model)
    out = {}
    for name, task in tasks.items():
        turn = suite.selected_turn(task, config.eval)
        samples = [[*[""] * turn, s] for shard in pools[name] for row in shard["samples"] for s in row]
        out[name] = suite.budget_hits(tokenizer, task, config.eval, samples, config.policy.generation.max_new_tokens,
                                      config.bon.max_new_tokens, turns=[turn])
    return out


def report_sizes(n_max: int) -> list[int]:
    """The n reported: 1, 2, 4, ... below n_max, and n_max."""
    return [2 ** k for k in range(n_max.bit_length()) if 2 ** k < n_max] + [n_max]


# --------------------------------------------------------------------------- judgments and curves


def _judgments(config: ExperimentConfig, out: Path, task, records: list[dict], shards: list[dict],
               context: list[list[str]], probes: list[list[list[str]]],
               judges: dict) -> tuple[pd.DataFrame, list[str], np.ndarray]:
    """(record keys, judgment names, judgments of shape (records, n_max, judgments)) for one task.

    Every numeric or boolean judgment column is a judgment; sample k of all records is judged in one call,
    so feedback compares framed sample k with sample k of the item's unframed pool.
    """
    positivity = (config.eval.positivity_judge, config.eval.positivity_judge_options) if task.judges else None
    key = fingerprint([[s["hash"] for s in shards], context, probes, positivity, records])
    samples = [row for shard in shards for row in shard["samples"]]

    def judge_every_sample() -> pd.DataFrame:
        parts = []
        with progress_bar() as progress:
            bar = progress.add_task(f"judge {task.name}", total=config.bon.n_max)
            for k in range(config.bon.n_max):
                replies = [[*earlier, row[k], *after[k]] for earlier, row, after in zip(context, samples, probes)]
                part = suite.judge(task, records, replies, judges)
                parts.append(part.assign(record=range(len(records)), sample=k))
                progress.advance(bar)
        return pd.concat(parts, ignore_index=True)

    judged = cached(out / "judged" / f"{task.name}.parquet", key, judge_every_sample, pool.shared_store(config))
    judged = judged.sort_values(["record", "sample"])
    names = [c for c in task.columns if pd.api.types.is_numeric_dtype(judged[c])]
    values = judged[names].to_numpy(dtype=float).reshape(len(records), config.bon.n_max, len(names))
    keys = judged[judged["sample"] == 0][KEYS].reset_index(drop=True)
    return keys, names, values


def _curves(config: ExperimentConfig, tasks: dict, judged: dict, scores: dict, sizes: list[int],
            kl: dict) -> tuple[pd.DataFrame, pd.DataFrame, dict, dict]:
    """(one row per type, metric, reward model and n: the metric of the expected best-of-n judgments;
    one row per type, pair of reward models and n: the paired difference of the drawn headlines;
    {type: {"metric", "reason"}}: the headline drawn, chosen on the policy's own samples, n = 1;
    {(reward model, n): {type: the expected judgments}})."""
    rows, paired, chosen, frames = [], [], {}, {}
    bon, min_items = config.bon, config.eval.min_items
    for name, (keys, columns, values) in judged.items():
        task = tasks[name]
        for rm in bon.reward_models:
            for n, expected in zip(sizes, best_of_n(scores[rm][name], values, sizes)):
                frames[name, rm, n] = frame = keys.assign(**dict(zip(columns, expected.T)))
                stats = summarize(task, frame, bootstrap=bon.bootstrap, seed=config.seed, min_items=min_items)
                if n == 1 and name not in chosen:
                    metric, reason = choose_headline(task, stats)
                    chosen[name] = {"metric": metric, "reason": reason}
                rows += [{"type": name, "metric": metric, "reward_model": rm, "n": n, "kl_bon": float(kl_bon(n)),
                          "kl_plugin": float(kl[rm, name][sizes.index(n)]),
                          **{k: v[k] for k in ("value", "ci_low", "ci_high")}, "items": v["n"],
                          "reason": v["reason"]} for metric, v in stats.items()]
        for a, b in itertools.combinations(bon.reward_models, 2):
            for n in sizes:
                diff = paired_difference(task, chosen[name]["metric"], frames[name, a, n], frames[name, b, n],
                                         bootstrap=bon.bootstrap, seed=config.seed, min_items=min_items)
                paired.append({"type": name, "metric": chosen[name]["metric"], "reward_model": a, "minus": b, "n": n,
                               "kl_bon": float(kl_bon(n)), **{k: diff[k] for k in ("value", "ci_low", "ci_high")},
                               "items": diff["n"]})
    columns = ["type", "metric", "reward_model", "minus", "n", "kl_bon", "value", "ci_low", "ci_high", "items"]
    return pd.DataFrame(rows), pd.DataFrame(paired, columns=columns), chosen, frames


def selected_rows(frames: dict) -> list[dict]:
    """Every record's expected judgments under best-of-n, per type, reward model and n: what a comparison with
    another run on the same items pairs over (the report's intervened - unintervened policy)."""
    return [{"type": name, "reward_model": rm, "n": n, **row}
            for (name, rm, n), frame in frames.items() for row in json.loads(frame.to_json(orient="records"))]


def _gold(config: ExperimentConfig, tasks: dict, frames: dict, sizes: list[int],
          rewards: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the gold rate of each type's best-of-n selection beside the selecting reward model's own mean reward
    (the proxy), per reward model and n; Gao et al.'s best-of-n form fitted to it), for every type with a gold
    rate (`overoptimization.py`)."""
    rows, fits = [], []
    d = np.sqrt([kl_bon(n) for n in sizes])
    settings = {"bootstrap": config.bon.bootstrap, "seed": config.seed, "min_items": config.eval.min_items}
    for name, task in tasks.items():
        if task.gold(frames[name, config.bon.reward_models[0], 1]) is None:
            continue
        for rm in config.bon.reward_models:
            selected = [frames[name, rm, n] for n in sizes]
            own = rewards[(rewards["type"] == name) & (rewards["reward_model"] == rm) & (rewards["scored_by"] == rm)]
            proxy = own.set_index("n")["mean_reward"]
            rows += [{"type": name, "reward_model": rm, "n": n, "kl_bon": float(kl_bon(n)), "sqrt_kl": float(root),
                      **stats, "proxy": float(proxy[n])}
                     for n, root, stats in zip(sizes, d, overoptimization.gold_rows(task, selected, **settings))]
            fits.append({"type": name, "reward_model": rm,
                         **overoptimization.fit("best_of_n", d, task, selected, **settings)})
    return (pd.DataFrame(rows), pd.DataFrame(fits, columns=["type", "reward_model", *overoptimization.FIT_COLUMNS]))


def _rewards(config: ExperimentConfig, sets: dict, scores: dict, sizes: list[int]) -> pd.DataFrame:
    """Mean reward, under each reward model, of the sample each reward model selects; per type and over all
    prompts ("all"), with a 95% bootstrap CI over items."""
    items = {t: np.array([r["metadata"]["item_id"] for r in records]) for t, records in sets.items()}
    items["all"] = np.concatenate(list(items.values()))
    rows = []
    for selector in config.bon.reward_models:
        for scored_by in config.bon.reward_models:
            expected = {t: best_of_n(scores[selector][t], scores[scored_by][t], sizes) for t in sets}
            expected["all"] = np.concatenate(list(expected.values()), axis=1)
            for eval_type, per_n in expected.items():
                for n, per_prompt in zip(sizes, per_n):
                    per_item = pd.DataFrame({"sum": per_prompt, "count": 1.0}).groupby(items[eval_type]).sum()
                    low, high = bootstrap_ci(per_item.to_numpy(), lambda totals: totals[..., 0] / totals[..., 1],
                                             n_boot=config.bon.bootstrap, seed=config.seed)
                    rows.append({"type": eval_type, "reward_model": selector, "scored_by": scored_by, "n": n,
                                 "kl_bon": float(kl_bon(n)), "mean_reward": float(per_prompt.mean()),
                                 "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- files and output


def _write_csv(path: Path, frame: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def _print_table(headlines: pd.DataFrame, n_max: int) -> None:
    table = Table(title="Best-of-N: each type's headline metric [95% CI]")
    for column in ("type", "reward model", "n = 1", f"n = {n_max}"):
        table.add_column(column)
    ends = headlines[headlines["n"].isin([1, n_max])].set_index(["type", "reward_model", "n"])
    for eval_type, name in dict.fromkeys((t, m) for t, m, _ in ends.index):
        table.add_row(eval_type, name, *(_cell(ends.loc[(eval_type, name, n)]) for n in (1, n_max)))
    console.print(table)


def _cell(row) -> str:
    if pd.isna(row["value"]):
        return "n/a"
    return f"{row['value']:.2f} [{row['ci_low']:.2f}, {row['ci_high']:.2f}]"
