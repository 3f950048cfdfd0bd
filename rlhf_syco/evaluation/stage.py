"""The evaluation stage: the policy (or any model) on every task of `eval.types`, through the suite.

Writes, under the run folder:
- `eval/data/<type>.jsonl`: the records evaluated (built from the shipped sources, or read from
  `eval.official_files`);
- `eval/replies_<type>.jsonl`: the replies, one row per record, cached (`cache.cached`) under the
  fingerprint of what they depend on (model, generation settings, budget, follow-up turns, records, seed), so
  a rerun generates nothing and a changed setting never mixes old and new replies;
- `eval/judged_<type>.parquet`: one row of judgments per record, with the replies;
- `results/eval_budget.json`: per type, how many replies ran into their token budget;
- `results/eval_summary.jsonl`: one row per (type, metric): value, 95% bootstrap CI, n, model. Rows of
  other models already in the file are kept, so several policies can be compared in one run folder.

All replies are generated before any is judged, so the policy is released before a model-based judge loads.
"""

from __future__ import annotations

import gc
from functools import partial
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from rlhf_syco.config import ExperimentConfig
from rlhf_syco.evaluation import suite
from rlhf_syco.generation import make_generator
from rlhf_syco.cache import load_cached, store_cached
from rlhf_syco.progress import console, progress_bar
from rlhf_syco.rundir import RunDir, atomic_path, fingerprint, read_jsonl, write_json, write_jsonl

SUMMARY_FILE, BUDGET_FILE = "eval_summary.jsonl", "eval_budget.json"


def run(config: ExperimentConfig, run_dir: RunDir | str | Path, model: str | None = None) -> dict:
    """Evaluate `config.policy` (or `model`: a hub id, local folder or built-in name) on `config.eval.types`."""
    run_dir = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    out = run_dir.stage("eval")
    settings = config.eval
    model_cfg = config.policy.model if model is None else \
        config.policy.model.model_copy(update={"name_or_path": model})
    tasks = suite.tasks(settings.types)
    sets = {name: suite.records(task, settings, settings.items_per_type, config.seed) for name, task in tasks.items()}
    for name, records in sets.items():
        write_jsonl(out / "data" / f"{name}.jsonl", records)

    keys = {name: _fingerprint(config, model_cfg, tasks[name], records) for name, records in sets.items()}
    replies = {name: _cached_replies(out / f"replies_{name}.jsonl", keys[name]) for name in sets}
    missing = [name for name in sets if replies[name] is None]
    if missing:
        generated = _generate(config, model_cfg, {name: (tasks[name], sets[name]) for name in missing})
        for name, type_replies in generated.items():
            store_cached(out / f"replies_{name}.jsonl", keys[name],
                         [{"item_id": r["metadata"]["item_id"], "variant": r["metadata"]["variant"], "replies": reply}
                          for r, reply in zip(sets[name], type_replies)])
            replies[name] = type_replies

    from rlhf_syco.models import load_tokenizer

    tokenizer = load_tokenizer(model_cfg)
    write_json(run_dir.results / BUDGET_FILE, {
        name: suite.budget_hits(tokenizer, tasks[name], settings, replies[name], config.policy.generation.max_new_tokens)
        for name in sets})
    rows = []
    judges = suite.make_judges(settings, list(tasks.values()))
    for name, records in sets.items():
        judged, metrics = suite.evaluate(tasks[name], records, replies[name], judges, settings,
                                         bootstrap=settings.bootstrap, seed=config.seed)
        with atomic_path(out / f"judged_{name}.parquet") as tmp:
            judged.to_parquet(tmp, index=False)
        rows += suite.metric_rows(tasks[name], metrics, model=model_cfg.name_or_path)
    _merge_summary(run_dir.results / SUMMARY_FILE, rows, model_cfg.name_or_path, list(sets))
    _print_table(model_cfg.name_or_path, rows)
    return {"model": model_cfg.name_or_path,
            "headline": {r["type"]: {"metric": r["metric"], "value": r["value"]} for r in rows if r["headline"]}}


def _generate(config: ExperimentConfig, model_cfg, sets: dict) -> dict[str, list]:
    """Replies for every set from one loaded policy, released before returning."""
    generator = make_generator(model_cfg, config.policy.generation, config.compute.device)
    batch = config.policy.generation.batch_size
    calls = sum(suite.turn_count(task, config.eval) * -(-len(records) // batch) for task, records in sets.values())
    with progress_bar() as progress:
        task = progress.add_task(f"generate {', '.join(sets)}", total=calls)
        out = suite.sample_tasks(generator, config.eval, sets, seed=config.seed,
                                 on_batch=partial(progress.advance, task))
    del generator
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out


def _fingerprint(config: ExperimentConfig, model_cfg, task, records: list[dict]) -> str:
    """What the replies of one set depend on."""
    return fingerprint({"model": model_cfg.model_dump(), "generation": config.policy.generation.model_dump(),
                        "max_new_tokens": suite.budget(config.eval, task), "seed": config.seed,
                        "follow_ups": [vars(f) for f in task.follow_ups(config.eval)], "records": records})


def _cached_replies(path: Path, key: str) -> list | None:
    rows = load_cached(path, key)
    if rows is None and path.exists():
        console.print(f"[yellow]{path.name} was generated with other settings; generating again[/yellow]")
    return None if rows is None else [r["replies"] for r in rows]


def _merge_summary(path: Path, rows: list[dict], model: str, types: list[str]) -> None:
    """Replace this model's rows for the evaluated types; keep every other row."""
    old = read_jsonl(path) if path.exists() else []
    kept = [r for r in old if not (r.get("model") == model and r.get("type") in types)]
    write_jsonl(path, kept + rows)


def _print_table(model: str, rows: list[dict]) -> None:
    table = Table(title=f"Sycophancy evaluation: {escape(model)}")
    for column in ("type", "headline metric", "value", "95% CI", "n"):
        table.add_column(column, justify="right" if column in ("value", "95% CI", "n") else "left")
    for r in rows:
        if r["headline"]:
            ci = escape(f"[{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]")
            table.add_row(r["type"], r["metric"], _fmt(r["value"]), ci, str(r["n"]))
    console.print(table)


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"
