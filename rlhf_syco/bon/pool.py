"""Best-of-N's inputs: the sample pool drawn once from the policy, and its scores under every reward model.

Every piece is cached under `bon/` (`cache.cached`: keyed by the fingerprint of what it depends on), so an
interrupted run resumes at the first missing piece, and adding a reward model to a finished run scores only it.

- `pool/<type>/context.jsonl`: for a task with follow-up turns, one reply per record to every turn before the
  selected one (the last turn before the probe turns), shared by every reward model and n (are-you-sure: the
  first answer);
- `pool/<type>/shard-00000.jsonl`: `bon.n_max` samples to the selected turn of `bon.shard_size` prompts. A
  shard's samples depend only on the seed, its index and its prompts, so a resumed run draws exactly the pool an
  uninterrupted run draws;
- `pool/<type>/probe-00000.jsonl`: the replies to the probe turns after every sample (are-you-sure: the final
  answer after each reply to the challenge);
- `scores/<reward model>/<type>/shard-00000.json`: every sample's score.

The pool, context and probe turns depend only on the policy, prompts, sampling settings and seed, so with
`bon.share_pool` they are also kept in the runs folder's shared store (`cache.SHARED`): runs that differ only
in their PM (a β sweep) sample once. Scores depend on the reward model and stay with their run.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from reward_models import resolved_spec
from rlhf_syco.cache import SHARED, load_cached, store_cached
from rlhf_syco.config import ExperimentConfig
from rlhf_syco.evaluation import suite
from rlhf_syco.fanout import Workers
from rlhf_syco.generation import derive_seed
from rlhf_syco.models import build_reward_models, weights_stamp
from rlhf_syco.progress import progress_bar
from rlhf_syco.rundir import RunDir, fingerprint


def sampling(config: ExperimentConfig):
    return config.policy.generation.model_copy(update={"temperature": config.bon.temperature})


def pool_seed(config: ExperimentConfig) -> int:
    """The seed of the best-of-N items and samples: `bon.seed`, else the run's (runs of different seeds that set
    the same `bon.seed` share one pool)."""
    return config.seed if config.bon.seed is None else config.bon.seed


def budget(config: ExperimentConfig, task) -> int | None:
    return suite.budget(config.eval, task, config.bon.max_new_tokens)


def settings(config: ExperimentConfig, task) -> dict:
    """What a task's samples depend on, besides their prompts."""
    return {"model": config.policy.model.model_dump(), "weights": weights_stamp(config.policy.model.name_or_path),
            "generation": sampling(config).model_dump(), "max_new_tokens": budget(config, task),
            "seed": pool_seed(config), "follow_ups": [vars(f) for f in task.follow_ups(config.eval)]}


def shared_store(config: ExperimentConfig) -> Path | None:
    return Path(config.runs_dir) / SHARED if config.bon.share_pool else None


def context_turns(config: ExperimentConfig, out: Path, task, records: list[dict], policy) -> list[list[str]]:
    """One reply per record to every turn before the selected one; [] per record for a single-turn task."""
    turns = suite.selected_turn(task, config.eval)
    if turns == 0:
        return [[] for _ in records]
    path = out / "pool" / task.name / "context.jsonl"
    key = fingerprint({**settings(config, task), "records": records})
    rows = load_cached(path, key, shared_store(config))
    if rows is None:
        work = {"task": task, "records": records, "settings": config.eval, "turns": range(turns), "earlier": None,
                "seed": derive_seed(pool_seed(config), "bon", task.name, "first"), "max_new_tokens": budget(config, task)}
        with progress_bar() as progress:
            progress.add_task(f"context turns {task.name}", total=None)
            replies = next(policy.map(_sample_context, [work]))
        rows = store_cached(path, key, [{**_key(r), "replies": reply} for r, reply in zip(records, replies)],
                            shared_store(config))
    return [row["replies"] for row in rows]


def _sample_context(policy, work: dict) -> list[list[str]]:
    return suite.sample(policy, work["task"], work["records"], work["settings"], seed=work["seed"],
                        max_new_tokens=work["max_new_tokens"], turns=work["turns"], earlier=work["earlier"])


def probe_turns(config: ExperimentConfig, out: Path, tasks: dict, sets: dict, context: dict, pools: dict,
                policy) -> dict[str, list[list[list[str]]]]:
    """{type: per record, per sample, the replies to the probe turns after it} ([] for tasks without probes)."""
    out_probes, work, where = {}, [], []
    for name, task in tasks.items():
        first, last = suite.selected_turn(task, config.eval) + 1, suite.turn_count(task, config.eval)
        records, shards = sets[name], pools[name]
        out_probes[name] = [None] * len(records)
        start = 0
        for index, shard in enumerate(shards):
            rows = range(start, start + len(shard["prompts"]))
            start += len(shard["prompts"])
            if first == last:
                for i in rows:
                    out_probes[name][i] = [[] for _ in range(config.bon.n_max)]
                continue
            path = out / "pool" / name / f"probe-{index:05d}.jsonl"
            key = fingerprint({**settings(config, task), "shard": shard["hash"], "context": [context[name][i] for i in rows]})
            cached = load_cached(path, key, shared_store(config))
            if cached is not None:
                for i, row in zip(rows, cached):
                    out_probes[name][i] = row["probes"]
                continue
            repeated = [records[i] for i in rows for _ in range(config.bon.n_max)]
            earlier = [[*context[name][i], sample] for i, samples in zip(rows, shard["samples"]) for sample in samples]
            work.append({"task": task, "records": repeated, "settings": config.eval, "turns": range(first, last),
                         "earlier": earlier, "seed": derive_seed(pool_seed(config), "bon", name, index, "probe"),
                         "max_new_tokens": budget(config, task)})
            where.append((name, list(rows), path, key, last - first))
    with progress_bar() as progress:
        bar = progress.add_task("best-of-n probe turns (shards)", total=len(work), visible=bool(work))
        for (name, rows, path, key, probes), replies in zip(where, policy.map(_sample_context, work)):
            n = config.bon.n_max  # replies: earlier turns + the probe turns, n_max rows per record
            per_record = [[reply[-probes:] for reply in replies[j * n:(j + 1) * n]] for j in range(len(rows))]
            store_cached(path, key, [{"probes": p} for p in per_record], shared_store(config))
            for i, p in zip(rows, per_record):
                out_probes[name][i] = p
            progress.advance(bar)
    return out_probes


def prompts(config: ExperimentConfig, task, records: list[dict], context: list[list[str]]) -> list[dict]:
    """Per record: the conversation the pool's samples answer (after the context turns), and their prefill."""
    follow_ups = task.follow_ups(config.eval)
    out = []
    for record, earlier in zip(records, context):
        conversation, prefill = suite.next_turn(record, earlier, follow_ups)
        out.append({**_key(record), "conversation": conversation, "prefill": prefill})
    return out


def draw_pool(config: ExperimentConfig, out: Path, tasks: dict, prompts: dict[str, list[dict]],
              policy) -> dict[str, list[dict]]:
    """{type: shards}, a shard being {"prompts", "samples" (n_max per prompt), "hash" of both}; the missing
    shards are generated, each from its own seed, spread over the policy workers."""
    bon = config.bon
    calls = [min(bon.samples_per_call, bon.n_max - start) for start in range(0, bon.n_max, bon.samples_per_call)]
    pools, missing = {}, []
    for name, rows in prompts.items():
        pools[name] = []
        for index, start in enumerate(range(0, len(rows), bon.shard_size)):
            shard = {"prompts": rows[start:start + bon.shard_size],
                     "path": out / "pool" / name / f"shard-{index:05d}.jsonl"}
            shard["key"] = fingerprint({**settings(config, tasks[name]), "n_max": bon.n_max, "calls": calls,
                                        "shard": index, "prompts": shard["prompts"]})
            cached = load_cached(shard["path"], shard["key"], shared_store(config))
            if cached is None:
                missing.append((name, index, shard))
            else:
                shard["samples"] = [row["samples"] for row in cached]
            pools[name].append(shard)

    draws = [{"conversations": [p["conversation"] for p in shard["prompts"]],
              "prefills": [p["prefill"] for p in shard["prompts"]], "max_new_tokens": budget(config, tasks[name]),
              "calls": [(n, derive_seed(pool_seed(config), "bon", name, index, call)) for call, n in enumerate(calls)]}
             for name, index, shard in missing]
    with progress_bar() as progress:
        task = progress.add_task("best-of-n pool (shards)", total=len(missing), visible=bool(missing))
        for (name, index, shard), samples in zip(missing, policy.map(_draw, draws)):
            store_cached(shard["path"], shard["key"], [{**p, "samples": s} for p, s in zip(shard["prompts"], samples)],
                         shared_store(config))
            shard["samples"] = samples
            progress.advance(task)
    for shards in pools.values():
        for shard in shards:
            shard["hash"] = fingerprint([shard["prompts"], shard["samples"]])
    return pools


def _draw(policy, draw: dict) -> list[list[str]]:
    """Samples for each conversation of `draw`: one `generate` call per (n, seed) in draw["calls"]."""
    samples = [[] for _ in draw["conversations"]]
    for n, seed in draw["calls"]:
        for mine, new in zip(samples, policy.generate(draw["conversations"], n, seed, draw["prefills"],
                                                      max_new_tokens=draw["max_new_tokens"])):
            mine.extend(new)
    return samples


def score_pool(config: ExperimentConfig, run_dir: RunDir, out: Path, pools) -> tuple[dict, dict]:
    """({reward model: {type: scores (prompts, n_max)}}, {reward model: context stats}); each (model, shard)
    is scored once and cached. Context stats count the PM inputs that had to be shortened."""
    names = config.bon.reward_models
    specs = {k: v.model_dump() for k, v in config.reward_models.items()}
    found, todo = {}, []
    for name in names:
        spec = fingerprint(resolved_spec(specs, name))
        for task_name, shards in pools.items():
            for index, shard in enumerate(shards):
                path = out / "scores" / name / task_name / f"shard-{index:05d}.json"
                key = fingerprint([spec, shard["hash"]])
                cached = load_cached(path, key)
                if cached is None:
                    todo.append((name, task_name, index, path, key))
                else:
                    found[name, task_name, index] = cached

    def batches(name, task_name, index):
        shard = pools[task_name][index]
        conversations, responses = pool_texts(shard["prompts"], shard["samples"])
        size = config.bon.score_batch_size
        return name, [(conversations[i:i + size], responses[i:i + size]) for i in range(0, len(responses), size)]

    needed = sorted({name for name, *_ in todo})
    with Workers(config, functools.partial(build_reward_models, config, run_dir.path.resolve(), needed)) as scorers, \
            progress_bar() as progress:
        task = progress.add_task("score samples", total=len(todo), visible=bool(todo))
        work = (batches(name, task_name, index) for name, task_name, index, *_ in todo)
        for (name, task_name, index, path, key), (got, stats) in zip(todo, scorers.map(_score, work)):
            rows = len(pools[task_name][index]["prompts"])
            found[name, task_name, index] = store_cached(path, key, {"scores": got.reshape(rows, -1).tolist(),
                                                                      "context": stats})
            progress.advance(task)
    scores, context = {}, {}
    for name in names:
        scores[name] = {t: np.concatenate([np.asarray(found[name, t, i]["scores"], dtype=float).reshape(-1, config.bon.n_max)
                                           for i in range(len(shards))]) for t, shards in pools.items()}
        for (model, _, _), piece in found.items():
            if model == name:
                for k, v in piece["context"].items():
                    context.setdefault(name, {}).setdefault(k, 0)
                    context[name][k] += v
    return scores, context


def pool_texts(prompts: list[dict], samples: list[list[str]]) -> tuple[list, list[str]]:
    """(conversations, responses) as a reward model scores a shard: one row per sample, in pool order, a
    prefilled reply with its prefill."""
    conversations = [p["conversation"] for p, mine in zip(prompts, samples) for _ in mine]
    responses = [(p["prefill"] or "") + s for p, mine in zip(prompts, samples) for s in mine]
    return conversations, responses


def _score(models: dict, work: tuple[str, list]) -> tuple[np.ndarray, dict]:
    """Scores of one shard, and the change in the model's context counters (inputs scored / shortened)."""
    name, batches = work
    model = models[name]
    counted = model
    while not hasattr(counted, "context_stats") and hasattr(counted, "base"):  # a prompted model's base counts
        counted = counted.base
    before = dict(counted.context_stats()) if hasattr(counted, "context_stats") else None
    scores = np.concatenate([model.score(conversations, responses) for conversations, responses in batches])
    after = counted.context_stats() if before is not None else {}
    return scores, {k: v - before.get(k, 0) for k, v in after.items()}


def _key(record: dict) -> dict:
    return {"item_id": record["metadata"]["item_id"], "variant": record["metadata"]["variant"]}
