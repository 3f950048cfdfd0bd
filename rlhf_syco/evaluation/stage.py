"""The evaluation stage: build the sets, generate the policy's replies, judge them, summarise with CIs.

Writes, under the run folder:
- `eval/data/<type>.jsonl`: the records evaluated (built from the shipped sources, or read from
  `eval.official_files`);
- `eval/replies_<type>.jsonl`: the generation checkpoint, one row per record. A type whose checkpoint exists
  and was generated the same way (same model, generation settings, records and seed) is not generated again;
  anything else about it is redone, so a changed setting never mixes old and new replies;
- `eval/judged_<type>.parquet`: one row of judgments per record, with the replies;
- `results/eval_summary.jsonl`: one row per (type, metric): value, 95% bootstrap CI, n, model. Rows of
  other models already in the file are kept, so several policies can be compared in one run folder.

All replies are generated before any is judged, so the policy is released before a model-based judge loads.
"""

from __future__ import annotations

import gc
import math
import random
from functools import partial
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from rlhf_syco.config import ExperimentConfig
from rlhf_syco.evaluation import datasets
from rlhf_syco.evaluation.judges import get_judge
from rlhf_syco.evaluation.judging import judge_replies
from rlhf_syco.evaluation.metrics import finite, headline, summarize
from rlhf_syco.generation import Generator, derive_seed, make_generator, to_chat
from rlhf_syco.progress import console, progress_bar
from rlhf_syco.rundir import RunDir, atomic_path, fingerprint, read_checkpoint, read_jsonl, write_jsonl

SUMMARY_FILE = "eval_summary.jsonl"
STATS = ("value", "ci_low", "ci_high", "n")


def run(config: ExperimentConfig, run_dir: RunDir | str | Path, model: str | None = None) -> dict:
    """Evaluate `config.policy` (or `model`: a hub id, local folder or built-in name) on `config.eval.types`."""
    run_dir = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    out = run_dir.stage("eval")
    model_cfg = config.policy.model if model is None else \
        config.policy.model.model_copy(update={"name_or_path": model})
    sets = {t: eval_records(config, t) for t in config.eval.types}
    for eval_type, records in sets.items():
        write_jsonl(out / "data" / f"{eval_type}.jsonl", records)

    fingerprints = {t: _fingerprint(config, model_cfg, t, records) for t, records in sets.items()}
    replies = {t: _checkpointed(out / f"replies_{t}.jsonl", fingerprints[t]) for t in sets}
    missing = [t for t in sets if replies[t] is None]
    if missing:
        generated = _generate(config, model_cfg, {t: sets[t] for t in missing})
        for eval_type, type_replies in generated.items():
            _write_checkpoint(out / f"replies_{eval_type}.jsonl", sets[eval_type], type_replies,
                              fingerprints[eval_type])
            replies[eval_type] = type_replies

    rows, headlines = [], {}
    positivity = get_judge(config.eval.positivity_judge, **config.eval.positivity_judge_options) \
        if "feedback" in sets else None
    for eval_type, records in sets.items():
        judged, metrics = evaluate_replies(eval_type, records, replies[eval_type], positivity,
                                           bootstrap=config.eval.bootstrap, seed=config.seed)
        with atomic_path(out / f"judged_{eval_type}.parquet") as tmp:
            judged.to_parquet(tmp, index=False)
        rows += [{"type": eval_type, "metric": name, **{k: finite(values.get(k)) for k in STATS},
                  "model": model_cfg.name_or_path} for name, values in metrics.items()]
        headlines[eval_type] = headline(eval_type)
    _merge_summary(run_dir.results / SUMMARY_FILE, rows, model_cfg.name_or_path, list(sets))
    _print_table(model_cfg.name_or_path, rows, headlines)
    return {"model": model_cfg.name_or_path,
            "headline": {r["type"]: {"metric": r["metric"], "value": r["value"]}
                         for r in rows if headlines[r["type"]] == r["metric"]}}


def evaluate_replies(eval_type: str, records: list[dict], replies: list, positivity_judge=None, *,
                     bootstrap: int = 1000, seed: int = 0):
    """(judged DataFrame with the replies added, metrics dict) for replies generated elsewhere.

    `positivity_judge` is a judge object or a registered name; only feedback uses it. For are_you_sure each
    reply is the pair (first reply, reply to the challenge).
    """
    judge = positivity_judge
    if eval_type != "feedback":
        judge = None
    elif isinstance(judge, str):
        judge = get_judge(judge)
    judged = judge_replies(eval_type, records, replies, positivity=judge)
    if eval_type == "are_you_sure":
        judged["first_reply"], judged["second_reply"] = [r[0] for r in replies], [r[1] for r in replies]
    else:
        judged["reply"] = list(replies)
    return judged, summarize(eval_type, judged, bootstrap=bootstrap, seed=seed)


def eval_records(config: ExperimentConfig, eval_type: str) -> list[dict]:
    """The records of one set: built from the shipped sources, or the official file's (items sampled down to
    `items_per_type` with the seed, all variants of an item kept together)."""
    if eval_type not in config.eval.official_files:
        return datasets.build(eval_type, config.eval.items_per_type, config.seed)
    records = datasets.load_official(config.eval.official_files[eval_type], eval_type)
    item_ids = list(dict.fromkeys(r["metadata"]["item_id"] for r in records))
    rng = random.Random(f"{config.seed}:official:{eval_type}")
    keep = set(rng.sample(item_ids, min(config.eval.items_per_type, len(item_ids))))
    return [r for r in records if r["metadata"]["item_id"] in keep]


# --------------------------------------------------------------------------- generation


def _generate(config: ExperimentConfig, model_cfg, sets: dict[str, list[dict]]) -> dict[str, list]:
    """Replies for every set in `sets` from one loaded policy, released before returning."""
    generator = make_generator(model_cfg, config.policy.generation, config.compute.device)
    batch = config.policy.generation.batch_size
    batches = sum((2 if t == "are_you_sure" else 1) * math.ceil(len(r) / batch) for t, r in sets.items())
    with progress_bar() as progress:
        task = progress.add_task(f"generate {', '.join(sets)}", total=batches)
        out = generate_replies(generator, config, sets, on_batch=partial(progress.advance, task))
    del generator
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out


def generate_replies(generator: Generator, config: ExperimentConfig, sets: dict[str, list[dict]],
                     on_batch=None) -> dict[str, list]:
    """{type: replies} with the evaluation's prompts, prefills, reply budgets and seeds; for are_you_sure,
    (first reply, reply to the challenge) pairs. Also used on the policy in training (PPO)."""
    out = {}
    for eval_type, records in sets.items():
        budget = config.eval.max_new_tokens.get(eval_type)
        seed = derive_seed(config.seed, eval_type)
        if not records:
            out[eval_type] = []
        elif eval_type == "are_you_sure":
            out[eval_type] = _are_you_sure(generator, records, seed, budget, config.eval.are_you_sure_challenge,
                                           on_batch)
        else:
            conversations, prefills = zip(*(to_chat(r["prompt"]) for r in records))
            samples = generator.generate(conversations, 1, seed, prefills, max_new_tokens=budget, on_batch=on_batch)
            out[eval_type] = [s[0] for s in samples]
    return out


def _are_you_sure(generator: Generator, records, seed: int, budget, challenge: str, on_batch) -> list:
    """(first reply, reply to the challenge) per record; the second turn sees the model's own first reply."""
    conversations, prefills = zip(*(to_chat(r["prompt"]) for r in records))
    first = [s[0] for s in generator.generate(conversations, 1, seed, prefills, max_new_tokens=budget,
                                              on_batch=on_batch)]
    followups = [[*c, {"role": "assistant", "content": (p or "") + reply}, {"role": "user", "content": challenge}]
                 for c, p, reply in zip(conversations, prefills, first)]
    second = [s[0] for s in generator.generate(followups, 1, derive_seed(seed, "challenge"),
                                               max_new_tokens=budget, on_batch=on_batch)]
    return [list(pair) for pair in zip(first, second)]


# --------------------------------------------------------------------------- checkpoints and results


def _fingerprint(config: ExperimentConfig, model_cfg, eval_type: str, records: list[dict]) -> str:
    """What the replies of one set depend on; a checkpoint with another fingerprint is stale."""
    settings = {"model": model_cfg.model_dump(), "generation": config.policy.generation.model_dump(),
                "max_new_tokens": config.eval.max_new_tokens.get(eval_type), "seed": config.seed,
                "challenge": config.eval.are_you_sure_challenge if eval_type == "are_you_sure" else None,
                "records": records}
    return fingerprint(settings)


def _checkpointed(path: Path, expected: str) -> list | None:
    rows = read_checkpoint(path, expected)
    if rows is None and path.exists():
        console.print(f"[yellow]{path.name} was generated with other settings; generating again[/yellow]")
    return None if rows is None else [r["reply"] for r in rows]


def _write_checkpoint(path: Path, records: list[dict], replies: list, key: str) -> None:
    write_jsonl(path, ({"item_id": r["metadata"]["item_id"], "variant": r["metadata"]["variant"], "reply": reply,
                        "fingerprint": key} for r, reply in zip(records, replies)))


def _merge_summary(path: Path, rows: list[dict], model: str, types: list[str]) -> None:
    """Replace this model's rows for the evaluated types; keep every other row."""
    old = read_jsonl(path) if path.exists() else []
    kept = [r for r in old if not (r.get("model") == model and r.get("type") in types)]
    write_jsonl(path, kept + rows)


def _print_table(model: str, rows: list[dict], headlines: dict[str, str]) -> None:
    table = Table(title=f"Sycophancy evaluation: {escape(model)}")
    for column in ("type", "headline metric", "value", "95% CI", "n"):
        table.add_column(column, justify="right" if column in ("value", "95% CI", "n") else "left")
    for r in rows:
        if headlines.get(r["type"]) == r["metric"]:
            ci = escape(f"[{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]")
            table.add_row(r["type"], r["metric"], _fmt(r["value"]), ci, str(r["n"]))
    console.print(table)


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"
