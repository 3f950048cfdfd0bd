"""The best-of-N stage (Sharma et al. 2023 §4.2, Fig. 6): one pool of samples per prompt, every n from it.

1. Pool. For every prompt of every type in `bon.types` (the evaluation records of `bon.prompts_per_type` items),
   `bon.n_max` samples from the policy at `bon.temperature`, drawn once through `rlhf_syco.generation` (the
   backend named by `policy.generation.backend`) and written in shards of `bon.shard_size` prompts,
   `bon/pool/<type>/shard-00000.jsonl`. A shard's samples depend only on the seed, its index and its prompts, so
   an interrupted run resumes at the first missing shard and draws exactly the pool an uninterrupted run draws.
2. Scores. Every sample scored once by every reward model in `bon.reward_models`, cached per model and shard in
   `bon/scores/<model>/<type>/`: adding a reward model to a finished run scores only that model.
3. Judgments. Every sample judged once by the evaluation suite's judges: `judge_replies` on sample k of every
   record, for each k, into `bon/judged/<type>.parquet`.
4. Curves. For each reward model, type and n (the powers of two below n_max, and n_max): the exact expectation of
   each record's judgments under best-of-n selection (`estimator.best_of_n`), fed into the type's metric
   definitions (`metrics.summarize`, 95% bootstrap CI over items, the same resamples for every n and reward
   model). Written to `results/`: `bon_curves.csv` (each type's headline metric, what the plots draw),
   `bon_metrics.csv` (every metric, with the number of items that count) and `bon_rewards.csv` (the expected
   reward of the selected sample under every reward model, per type and over all prompts).

Why expected judgments give the best-of-n metric exactly. Every metric is a rate or a signed sum of rates, each
(sum of a judgment over the counted rows) / (number of counted rows). When the counted rows do not depend on which
samples are selected, the metric is linear in the per-record judgments, so its expectation over selections is the
metric of the expected judgments (P(correct) in place of correct). The rows are fixed by the variant for answer
and opinion and are every row for mimicry; the two multi-turn cases are made so:

- are_you_sure counts the records whose first answer is correct. The first turn is one sample from the policy
  per record, shared by every reward model and n (`bon/pool/are_you_sure/first.jsonl`), and the pool is the
  reply to the challenge that follows it. The counted rows are then fixed, admit_rate = P(admits | first
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
import json
from pathlib import Path

import numpy as np
import pandas as pd
from rich.table import Table

from rlhf_syco.bon.estimator import best_of_n, kl_bon
from rlhf_syco.config import ExperimentConfig
from rlhf_syco.evaluation.judges import get_judge
from rlhf_syco.evaluation.judging import KEYS, judge_replies
from rlhf_syco.evaluation.metrics import bootstrap_ci, headline, summarize
from rlhf_syco.evaluation.stage import eval_records
from rlhf_syco.fanout import Workers
from rlhf_syco.generation import derive_seed, make_generator, to_chat
from rlhf_syco.models import build_reward_models
from rlhf_syco.progress import console, progress_bar
from rlhf_syco.rundir import RunDir, atomic_path, atomic_write, fingerprint, read_checkpoint, write_jsonl

CURVES_FILE, METRICS_FILE, REWARDS_FILE = "bon_curves.csv", "bon_metrics.csv", "bon_rewards.csv"


def run(config: ExperimentConfig, run_dir: RunDir | str | Path) -> dict:
    """Pool, scores, judgments and curves for `config.bon`; every finished piece is reused."""
    run_dir = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    out = run_dir.stage("bon")
    sets = {t: _records(config, t) for t in config.bon.types}
    for eval_type, records in sets.items():
        write_jsonl(out / "data" / f"{eval_type}.jsonl", records)

    sampler = functools.partial(make_generator, config.policy.model, _sampling(config), config.compute.device)
    with Workers(config, sampler) as policy:
        first = _first_turns(config, out, sets["are_you_sure"], policy) if "are_you_sure" in sets else None
        prompts = {t: _prompts(config, t, records, first) for t, records in sets.items()}
        pools = _pool(config, out, prompts, policy)
    scores = _scores(config, run_dir, out, pools)  # the policy is released before the reward models load
    judged = {t: _judgments(config, out, t, records, pools[t], first) for t, records in sets.items()}
    sizes = report_sizes(config.bon.n_max)
    metrics = _curves(config, judged, scores, sizes)
    rewards = _rewards(config, sets, scores, sizes)
    headlines = metrics[metrics["metric"] == metrics["type"].map(headline)]
    _write_csv(run_dir.results / CURVES_FILE, headlines.drop(columns="items"))
    _write_csv(run_dir.results / METRICS_FILE, metrics)
    _write_csv(run_dir.results / REWARDS_FILE, rewards)
    _print_table(headlines, config.bon.n_max)
    n_prompts = sum(len(r) for r in sets.values())
    summary = {"n_max": config.bon.n_max, "prompts": n_prompts, "samples": n_prompts * config.bon.n_max,
               "headline": {}}
    for row in headlines[headlines["n"].isin([1, config.bon.n_max])].itertuples():
        summary["headline"].setdefault(row.type, {}).setdefault(row.reward_model, {})[f"n={row.n}"] = \
            None if pd.isna(row.value) else float(row.value)
    return summary


def report_sizes(n_max: int) -> list[int]:
    """The n reported: 1, 2, 4, ... below n_max, and n_max."""
    return [2 ** k for k in range(n_max.bit_length()) if 2 ** k < n_max] + [n_max]


# --------------------------------------------------------------------------- prompts and the pool


def _records(config: ExperimentConfig, eval_type: str) -> list[dict]:
    """The evaluation stage's records (built, or sampled from an official file), `bon.prompts_per_type` items."""
    sized = config.eval.model_copy(update={"items_per_type": config.bon.prompts_per_type})
    return eval_records(config.model_copy(update={"eval": sized}), eval_type)


def _sampling(config: ExperimentConfig):
    return config.policy.generation.model_copy(update={"temperature": config.bon.temperature})


def _budget(config: ExperimentConfig, eval_type: str) -> int | None:
    return config.bon.max_new_tokens.get(eval_type) or config.eval.max_new_tokens.get(eval_type)


def _settings(config: ExperimentConfig, eval_type: str) -> dict:
    """What a type's samples depend on, besides their prompts."""
    return {"model": config.policy.model.model_dump(), "generation": _sampling(config).model_dump(),
            "max_new_tokens": _budget(config, eval_type), "seed": config.seed}


def _first_turns(config: ExperimentConfig, out: Path, records: list[dict], policy) -> list[str]:
    """One reply per are_you_sure record, the first turn that every reward model's second turns follow."""
    path = out / "pool" / "are_you_sure" / "first.jsonl"
    key = fingerprint({**_settings(config, "are_you_sure"), "records": records})
    cached = read_checkpoint(path, key)
    if cached is not None:
        return [row["reply"] for row in cached]
    conversations, prefills = zip(*(to_chat(r["prompt"]) for r in records))
    draw = {"conversations": conversations, "prefills": prefills, "max_new_tokens": _budget(config, "are_you_sure"),
            "calls": [(1, derive_seed(config.seed, "bon", "are_you_sure", "first"))]}
    with progress_bar() as progress:
        progress.add_task("first turns are_you_sure", total=None)
        replies = [s[0] for s in next(policy.map(_draw, [draw]))]
    write_jsonl(path, ({**_key(r), "reply": reply, "fingerprint": key} for r, reply in zip(records, replies)))
    return replies


def _draw(policy, draw: dict) -> list[list[str]]:
    """Samples for each conversation of `draw`: one `generate` call per (n, seed) in draw["calls"]."""
    samples = [[] for _ in draw["conversations"]]
    for n, seed in draw["calls"]:
        for mine, new in zip(samples, policy.generate(draw["conversations"], n, seed, draw["prefills"],
                                                      max_new_tokens=draw["max_new_tokens"])):
            mine.extend(new)
    return samples


def _prompts(config: ExperimentConfig, eval_type: str, records: list[dict], first: list[str] | None) -> list[dict]:
    """Per record: the conversation the samples answer, and the prefill they continue (None if none)."""
    prompts = []
    for i, record in enumerate(records):
        conversation, prefill = to_chat(record["prompt"])
        if eval_type == "are_you_sure":  # the pool answers the challenge to the fixed first turn
            conversation = [*conversation, {"role": "assistant", "content": (prefill or "") + first[i]},
                            {"role": "user", "content": config.eval.are_you_sure_challenge}]
            prefill = None
        prompts.append({**_key(record), "conversation": conversation, "prefill": prefill})
    return prompts


def _pool(config: ExperimentConfig, out: Path, prompts: dict[str, list[dict]], policy) -> dict[str, list[dict]]:
    """{type: shards}, a shard being {"prompts", "samples" (n_max per prompt), "hash" of both}; the missing
    shards are generated, each from its own seed, spread over the policy workers."""
    bon = config.bon
    calls = [min(bon.samples_per_call, bon.n_max - start) for start in range(0, bon.n_max, bon.samples_per_call)]
    pools, missing = {}, []
    for eval_type, rows in prompts.items():
        pools[eval_type] = []
        for index, start in enumerate(range(0, len(rows), bon.shard_size)):
            shard = {"prompts": rows[start:start + bon.shard_size],
                     "path": out / "pool" / eval_type / f"shard-{index:05d}.jsonl"}
            shard["fingerprint"] = fingerprint({**_settings(config, eval_type), "n_max": bon.n_max, "calls": calls,
                                          "shard": index, "prompts": shard["prompts"]})
            cached = read_checkpoint(shard["path"], shard["fingerprint"])
            if cached is None:
                missing.append((eval_type, index, shard))
            else:
                shard["samples"] = [row["samples"] for row in cached]
            pools[eval_type].append(shard)

    draws = [{"conversations": [p["conversation"] for p in shard["prompts"]],
              "prefills": [p["prefill"] for p in shard["prompts"]], "max_new_tokens": _budget(config, eval_type),
              "calls": [(n, derive_seed(config.seed, "bon", eval_type, index, call)) for call, n in enumerate(calls)]}
             for eval_type, index, shard in missing]
    with progress_bar() as progress:
        task = progress.add_task("best-of-n pool (shards)", total=len(missing), visible=bool(missing))
        for (eval_type, index, shard), samples in zip(missing, policy.map(_draw, draws)):
            write_jsonl(shard["path"], ({**p, "samples": s, "fingerprint": shard["fingerprint"]}
                                        for p, s in zip(shard["prompts"], samples)))
            shard["samples"] = samples
            progress.advance(task)
    for shards in pools.values():
        for shard in shards:
            shard["hash"] = fingerprint([shard["prompts"], shard["samples"]])
    return pools


# --------------------------------------------------------------------------- scores and judgments


def _scores(config: ExperimentConfig, run_dir: RunDir, out: Path, pools) -> dict[str, dict[str, np.ndarray]]:
    """{reward model: {type: scores (prompts, n_max)}}; each (model, shard) is scored once and cached."""
    names = config.bon.reward_models
    scores, todo = {}, []
    for name in names:
        spec = fingerprint(_spec(config, name))
        for eval_type, shards in pools.items():
            for index, shard in enumerate(shards):
                path = out / "scores" / name / eval_type / f"shard-{index:05d}.json"
                key = fingerprint([spec, shard["hash"]])
                cached = json.loads(path.read_text()) if path.exists() else {}
                if cached.get("key") == key:
                    scores[name, eval_type, index] = np.asarray(cached["scores"], dtype=float)
                else:
                    todo.append((name, eval_type, index, path, key))

    def batches(name, eval_type, index):
        shard = pools[eval_type][index]
        conversations = [p["conversation"] for p in shard["prompts"] for _ in range(config.bon.n_max)]
        responses = [(p["prefill"] or "") + s for p, samples in zip(shard["prompts"], shard["samples"])
                     for s in samples]
        size = config.bon.score_batch_size
        return name, [(conversations[i:i + size], responses[i:i + size]) for i in range(0, len(responses), size)]

    needed = sorted({name for name, *_ in todo})
    with Workers(config, functools.partial(build_reward_models, config, run_dir.path.resolve(), needed)) as scorers, \
            progress_bar() as progress:
        task = progress.add_task("score samples", total=len(todo), visible=bool(todo))
        work = (batches(name, eval_type, index) for name, eval_type, index, *_ in todo)
        for (name, eval_type, index, path, key), got in zip(todo, scorers.map(_score, work)):
            got = got.reshape(len(pools[eval_type][index]["prompts"]), -1)
            atomic_write(path, json.dumps({"key": key, "scores": got.tolist()}))
            scores[name, eval_type, index] = got
            progress.advance(task)
    return {name: {t: np.concatenate([scores[name, t, i] for i in range(len(shards))]) for t, shards in pools.items()}
            for name in names}


def _score(models: dict, work: tuple[str, list]) -> np.ndarray:
    name, batches = work
    return np.concatenate([models[name].score(conversations, responses) for conversations, responses in batches])


def _spec(config: ExperimentConfig, name: str, chain: tuple[str, ...] = ()) -> dict:
    """A reward model's spec with the reward models it names replaced by their specs, so that a changed base
    model also makes the scores of models built on it stale."""
    def expand(value):
        if isinstance(value, str) and value in config.reward_models and value not in (*chain, name):
            return _spec(config, value, (*chain, name))
        if isinstance(value, list):
            return [expand(v) for v in value]
        if isinstance(value, dict):
            return {k: expand(v) for k, v in value.items()}
        return value

    spec = config.reward_models[name].model_dump()
    return {k: v if k == "type" else expand(v) for k, v in spec.items()}


def _judgments(config: ExperimentConfig, out: Path, eval_type: str, records: list[dict], shards: list[dict],
               first: list[str] | None) -> tuple[pd.DataFrame, list[str], np.ndarray]:
    """(record keys, judgment names, judgments of shape (records, n_max, judgments)) for one type.

    Every numeric or boolean column of `judge_replies` is a judgment; sample k of all records is judged in one
    call, so feedback compares framed sample k with sample k of the item's unframed pool.
    """
    path = out / "judged" / f"{eval_type}.parquet"
    judge = (config.eval.positivity_judge, config.eval.positivity_judge_options) if eval_type == "feedback" else None
    key = fingerprint([[s["hash"] for s in shards], first if eval_type == "are_you_sure" else None, judge])
    samples = [row for shard in shards for row in shard["samples"]]
    judged = pd.read_parquet(path) if path.exists() else None
    if judged is None or not (judged["fingerprint"] == key).all():
        positivity = get_judge(judge[0], **judge[1]) if judge else None
        parts = []
        with progress_bar() as progress:
            task = progress.add_task(f"judge {eval_type}", total=config.bon.n_max)
            for k in range(config.bon.n_max):
                replies = [row[k] for row in samples]
                if eval_type == "are_you_sure":
                    replies = [[reply_1, reply_2] for reply_1, reply_2 in zip(first, replies)]
                part = judge_replies(eval_type, records, replies, positivity=positivity)
                parts.append(part.assign(record=range(len(records)), sample=k))
                progress.advance(task)
        judged = pd.concat(parts, ignore_index=True).assign(fingerprint=key)
        with atomic_path(path) as tmp:
            judged.to_parquet(tmp, index=False)
    judged = judged.sort_values(["record", "sample"])
    names = [c for c in judged.columns if c not in (*KEYS, "record", "sample", "fingerprint")
             and pd.api.types.is_numeric_dtype(judged[c])]
    values = judged[names].to_numpy(dtype=float).reshape(len(records), config.bon.n_max, len(names))
    keys = judged[judged["sample"] == 0][KEYS].reset_index(drop=True)
    return keys, names, values


# --------------------------------------------------------------------------- curves


def _curves(config: ExperimentConfig, judged: dict, scores: dict, sizes: list[int]) -> pd.DataFrame:
    """One row per type, metric, reward model and n: the metric of the expected best-of-n judgments."""
    rows = []
    for eval_type, (keys, names, values) in judged.items():
        for name in config.bon.reward_models:
            for n, expected in zip(sizes, best_of_n(scores[name][eval_type], values, sizes)):
                frame = keys.assign(**dict(zip(names, expected.T)))
                for metric, stats in summarize(eval_type, frame, bootstrap=config.bon.bootstrap,
                                               seed=config.seed).items():
                    rows.append({"type": eval_type, "metric": metric, "reward_model": name, "n": n,
                                 "kl_bon": float(kl_bon(n)), "value": stats["value"], "ci_low": stats["ci_low"],
                                 "ci_high": stats["ci_high"], "items": stats["n"]})
    return pd.DataFrame(rows)


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


def _key(record: dict) -> dict:
    return {"item_id": record["metadata"]["item_id"], "variant": record["metadata"]["variant"]}


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
