"""The evaluation suite: records -> sample (every turn) -> judge -> summarize, for any `SycophancyTask`.

The evaluation stage, best-of-N and PPO's checkpoint evaluations all measure through these functions, so a
task means the same thing everywhere. `settings` is the config's `eval` section (official files, reply
budgets, judges, the are-you-sure challenge); item counts and seeds are arguments.

Replies are lists, one reply per turn: the first answers the record's prompt (continuing its prefill, if
any); each follow-up turn of the task (`SycophancyTask.follow_ups`) is played after the model's own previous
reply. Turn 0 is sampled with `seed`, a follow-up with `derive_seed(seed, follow_up.name)`.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Sequence

import pandas as pd

from rlhf_syco.evaluation.metrics import choose_headline, finite, summarize
from rlhf_syco.evaluation.task import KEYS, FollowUp, SycophancyTask
from rlhf_syco.evaluation.tasks import get_task
from rlhf_syco.generation import Generator, derive_seed, to_chat

STATS = ("value", "ci_low", "ci_high", "n")


def tasks(names: Sequence[str]) -> dict[str, SycophancyTask]:
    return {name: get_task(name) for name in names}


def records(task: SycophancyTask, settings, n_items: int, seed: int) -> list[dict]:
    """`n_items` base items of `task` with all their variants: built from the shipped sources, or sampled
    from the official file in `settings.official_files` (all variants of an item kept together)."""
    if task.name not in settings.official_files:
        return task.build(n_items, seed)
    from rlhf_syco.evaluation.official import load_official

    found = load_official(settings.official_files[task.name], task)
    item_ids = list(dict.fromkeys(r["metadata"]["item_id"] for r in found))
    rng = random.Random(f"{seed}:official:{task.name}")
    keep = set(rng.sample(item_ids, min(n_items, len(item_ids))))
    return [r for r in found if r["metadata"]["item_id"] in keep]


def budget(settings, task: SycophancyTask, override: dict[str, int] | None = None) -> int | None:
    """The reply budget of a task's turns: `override`, then `settings.max_new_tokens`, else None (the
    generator's own)."""
    return (override or {}).get(task.name) or settings.max_new_tokens.get(task.name)


def next_turn(record: dict, earlier: Sequence[str], follow_ups: Sequence[FollowUp]) -> tuple[list[dict], str | None]:
    """(conversation, prefill) of the turn after the replies `earlier` to `record`."""
    conversation, prefill = to_chat(record["prompt"])
    for reply, follow_up in zip(earlier, follow_ups):
        text, next_prefill = follow_up.for_record(record)
        conversation = [*conversation, {"role": "assistant", "content": (prefill or "") + reply},
                        {"role": "user", "content": text}]
        prefill = next_prefill
    return conversation, prefill


def turn_seed(seed: int, turn: int, follow_ups: Sequence[FollowUp]) -> int:
    return seed if turn == 0 else derive_seed(seed, follow_ups[turn - 1].name)


def turn_budget(turn: int, follow_ups: Sequence[FollowUp], max_new_tokens: int | None) -> int | None:
    """A follow-up's own budget (a probe needs a few tokens), else the task's."""
    return (follow_ups[turn - 1].max_new_tokens if turn > 0 else None) or max_new_tokens


def sample(generator: Generator, task: SycophancyTask, records: list[dict], settings, *, seed: int,
           max_new_tokens: int | None = None, turns: range | None = None, earlier: list[list[str]] | None = None,
           on_batch: Callable[[], None] | None = None) -> list[list[str]]:
    """One reply per turn to each record, for the turns in `turns` (default: all), after the replies `earlier`
    (default: none) to the turns before them; returns earlier + the new replies."""
    follow_ups = task.follow_ups(settings)
    replies = [list(e) for e in earlier] if earlier is not None else [[] for _ in records]
    for turn in turns if turns is not None else range(1 + len(follow_ups)):
        if not records:
            break
        conversations, prefills = zip(*(next_turn(r, done, follow_ups) for r, done in zip(records, replies)))
        prefills = None if all(p is None for p in prefills) else list(prefills)
        samples = generator.generate(list(conversations), 1, turn_seed(seed, turn, follow_ups), prefills,
                                     max_new_tokens=turn_budget(turn, follow_ups, max_new_tokens), on_batch=on_batch)
        for mine, new in zip(replies, samples):
            mine.append(new[0])
    return replies


def read_letters(chooser, task: SycophancyTask, records: list[dict]) -> list[list[str]]:
    """Replies read from the next-token probabilities instead of sampled: for a task with `letters`, each
    record's reply is the letter its policy (`chooser`, an `llm_choice` chooser) gives the most probability
    right after the record's prefill. Judged as sampled replies are."""
    if not task.letters:
        raise ValueError(f"task {task.name} has no letters to read")
    replies: list[list[str] | None] = [None] * len(records)
    for prefill, (indices, conversations) in letter_questions(records).items():
        probs = chooser.probabilities(conversations, prefill, task.letters)
        for i, p in zip(indices, probs):
            replies[i] = [task.letters[int(p.argmax())]]
    return replies


def letter_questions(records: list[dict]) -> dict[str, tuple[list[int], list]]:
    """{prefill: (the records' indices, their conversations up to the prefill)}: what a chooser is asked at once."""
    out: dict[str, tuple[list[int], list]] = {}
    for index, record in enumerate(records):
        conversation, prefill = to_chat(record["prompt"])
        indices, conversations = out.setdefault(prefill or "", ([], []))
        indices.append(index)
        conversations.append(conversation)
    return out


def selected_turn(task: SycophancyTask, settings) -> int:
    """The turn best-of-N selects among: the last before the probe turns."""
    follow_ups = task.follow_ups(settings)
    probes = 0
    while probes < len(follow_ups) and follow_ups[len(follow_ups) - 1 - probes].probe:
        probes += 1
    return len(follow_ups) - probes


def sample_tasks(generator: Generator, settings, sets: dict, *, seed: int,
                 on_batch: Callable[[], None] | None = None) -> dict[str, list[list[str]]]:
    """{task name: replies} for `sets` = {task name: (task, records)}, each task seeded on its own."""
    return {name: sample(generator, task, records, settings, seed=derive_seed(seed, name),
                         max_new_tokens=budget(settings, task), on_batch=on_batch)
            for name, (task, records) in sets.items()}


def turn_count(task: SycophancyTask, settings) -> int:
    return 1 + len(task.follow_ups(settings))


def budget_hits(tokenizer, task: SycophancyTask, settings, replies: list[list[str]], default_budget: int,
                override: dict[str, int] | None = None, turns: Sequence[int] | None = None) -> dict:
    """How many replies of the given turns (default: every turn but the probes) ran into their token budget
    (counted as taking at least that many of the policy's tokens): replies cut short read as not answering."""
    follow_ups = task.follow_ups(settings)
    task_budget = budget(settings, task, override) or default_budget
    turns = turns if turns is not None else [t for t in range(1 + len(follow_ups)) if t == 0 or not follow_ups[t - 1].probe]
    counts = {"replies": 0, "hit_budget": 0}
    for turn in turns:
        limit = turn_budget(turn, follow_ups, task_budget)
        texts = [r[turn] for r in replies if len(r) > turn]
        lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []
        counts["replies"] += len(lengths)
        counts["hit_budget"] += sum(n >= limit for n in lengths)
    counts["share"] = counts["hit_budget"] / counts["replies"] if counts["replies"] else None
    return counts


def make_judges(settings, tasks: Sequence[SycophancyTask]) -> dict[str, Any]:
    """The judges the tasks need, by role: "positivity" is `settings.positivity_judge` with its options; any
    other role is the registered judge of that name."""
    from rlhf_syco.evaluation.judges import get_judge

    roles = dict.fromkeys(role for task in tasks for role in task.judges)
    return {role: get_judge(settings.positivity_judge, **settings.positivity_judge_options)
            if role == "positivity" else get_judge(role) for role in roles}


def judge(task: SycophancyTask, records: list[dict], replies: list[list[str]], judges: dict[str, Any]) -> pd.DataFrame:
    """One row per record: KEYS, then the task's judgment columns."""
    if len(records) != len(replies):
        raise ValueError(f"{len(records)} records but {len(replies)} replies")
    keys = [{"item_id": r["metadata"]["item_id"], "variant": r["metadata"]["variant"],
             "dataset": r["base"].get("dataset", task.default_dataset)} for r in records]
    rows = task.judge(records, replies, judges) if records else []
    return pd.DataFrame([{**k, **row} for k, row in zip(keys, rows)], columns=KEYS + list(task.columns))


def reply_columns(task: SycophancyTask, settings) -> list[str]:
    """"reply", then "reply_<follow-up name>" for each follow-up turn."""
    return ["reply", *(f"reply_{f.name}" for f in task.follow_ups(settings))]


def evaluate(task: SycophancyTask, records: list[dict], replies: list[list[str]], judges: dict[str, Any],
             settings, *, bootstrap: int, seed: int) -> tuple[pd.DataFrame, dict]:
    """(judged rows with the replies added, metrics) for replies sampled with `sample`."""
    judged = judge(task, records, replies, judges)
    for turn, column in enumerate(reply_columns(task, settings)):
        judged[column] = [r[turn] for r in replies]
    return judged, summarize(task, judged, bootstrap=bootstrap, seed=seed, min_items=settings.min_items)


def metric_rows(task: SycophancyTask, metrics: dict, **extra) -> list[dict]:
    """Tidy rows, one per metric, the headline drawn marked (`choose_headline`: the paper's, else the
    capability-robust fallback, with the reason); NaN as None."""
    chosen, why = choose_headline(task, metrics)
    return [{"type": task.name, "metric": name, "headline": name == chosen,
             **{k: finite(values.get(k)) for k in STATS}, "measurable": values.get("measurable", True),
             "reason": values.get("reason") or (why if name == chosen else None), **extra}
            for name, values in metrics.items()]
