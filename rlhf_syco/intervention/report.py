"""The interventions' part of `rlhf-syco report` (`rlhf_syco/report.py`), for runs of the `intervene` stage:

- `intervention.csv` and `interventions.png`: each task's headline before and after the intervention and the
  paired difference after - before (`results/intervention_check.csv`), pooled per group;
- `intervention_vs_n.csv` and `intervention_<opt>_vs_step.csv` (`<opt>`: `ppo`, `grpo`, `rloo`), with their
  figures: does the intervention survive optimization? The intervened policy's headline minus its unintervened
  twin's (`intervention_effects`) under best-of-N and RL, pooled per group;
- the two sections of `report.md` that show them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from rlhf_syco.report import STATS, interval, load_json, pooled, read_results, run_settings, verdict


def report(runs: pd.DataFrame, out: Path, shared: frozenset) -> tuple[dict, list[Path], list[str]]:
    """({file name: table}, figures, report.md lines) of every part above the runs have."""
    tables, figures, lines = {}, [], []
    for part in (before_and_after(runs, out), under_optimization(runs, out, shared)):
        tables |= part[0]
        figures += part[1]
        lines += part[2]
    return tables, figures, lines


def before_and_after(runs: pd.DataFrame, out: Path) -> tuple[dict, list[Path], list[str]]:
    from rlhf_syco.plots import interventions_figure

    check = read_results(runs, "intervention_check.csv")
    if check.empty:
        return {}, [], []
    check = check[check["headline"].astype(bool)]
    table = pooled(check, ["type", "metric", "policy"]).merge(intervention_data(runs), on="group", how="left")
    lines = ["", "## Interventions", "",
             "Each task's headline for the policy before and after the intervention (answers read from the "
             "letters' next-token probabilities; MMLU accuracy reads higher = better), and the paired "
             "difference after - before (`results/intervention_check.csv`; docs/intervention.md).", "",
             "| group | method | examples kept / drawn | steps | type | metric | before | after | after - before |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (group, type_, metric), part in table.groupby(["group", "type", "metric"], sort=False):
        part, first = part.set_index("policy"), part.iloc[0]
        cells = [interval(*part.loc[p, STATS]) if p in part.index else "" for p in ("before", "after", "after - before")]
        lines.append(f"| {group} | {first['method']} | {first['kept']:.0f} / {first['drawn']:.0f} | "
                     f"{first['steps']:.0f} | {type_} | {metric} | " + " | ".join(cells) + " |")
    return {"intervention.csv": table}, [interventions_figure(table, out / "interventions.png")], lines


def under_optimization(runs: pd.DataFrame, out: Path, shared: frozenset) -> tuple[dict, list[Path], list[str]]:
    from rlhf_syco.plots import RL_OPTIMIZERS, panel_figure

    tables, figures, rows = {}, [], []
    configs = {r.run: load_json(Path(r.run) / "manifest.json")["config"] for r in runs.itertuples()}
    for optimizer, name, against, at in [("bon", "best-of-N", "reward_model", "n"),
                                         *((key, title, "arm", "step") for key, title in RL_OPTIMIZERS.items())]:
        bon = optimizer == "bon"
        effects = intervention_effects(runs, configs, "bon_selected.jsonl" if bon else f"{optimizer}_judged.jsonl",
                                       f"{optimizer}_curves.csv", against, at, "bon" if bon else "eval")
        if effects.empty:
            continue
        file = "intervention_vs_n" if bon else f"intervention_{optimizer}_vs_step"
        effects = tables[f"{file}.csv"] = pooled(effects, ["control", "type", "metric", against, at], shared=shared)
        figures.append(panel_figure(effects.assign(series=effects["group"] + " \u00b7 " + effects[against]), at,
                                    "N (best-of-N)" if bon else f"{name} step", "series",
                                    f"Intervened \u2212 unintervened policy under {name}, by the reward model "
                                    "optimized against (paired over items, 95% CI)", out / f"{file}.png",
                                    log2_x=bon, difference=True))
        ends = effects[effects[at].isin([effects[at].min(), effects[at].max()])]
        rows += [f"| {r.group} | {r.control} | {r.type} | {r.metric} | {name} | {getattr(r, against)} | "
                 f"{at} = {getattr(r, at)} | {interval(r.value, r.ci_low, r.ci_high)} | "
                 f"{verdict(r.value, r.ci_low, r.ci_high)} | {r.runs} |" for r in ends.itertuples()]
    if not tables:
        return {}, [], []
    lines = ["", "## Interventions under optimization", "",
             "The intervened policy's headline minus its unintervened twin's (the same run with "
             "`intervene.method: none`), optimized against each reward model, paired over the evaluation items "
             "both drew, at the start and at the largest n or last step (`intervention_vs_n.csv`, "
             "`intervention_<opt>_vs_step.csv` have every one). Below 0: less sycophantic than without the "
             "intervention.", "",
             "| group | twin | type | metric | method | against | at | intervened \u2212 twin [95% CI] | "
             "CI excludes 0 | runs |", "|---|---|---|---|---|---|---|---|---|---|", *rows]
    return tables, figures, lines


def intervention_data(runs: pd.DataFrame) -> pd.DataFrame:
    """Per group: the method and what it trained on (`results/intervention.json`), from its first run."""
    rows = []
    for group, part in runs.groupby("group", sort=False):
        summary = load_json(Path(part["run"].iloc[0]) / "results" / "intervention.json")
        if summary:
            rows.append({"group": group, "method": summary["method"], "kept": summary["filtration"]["kept"],
                         "drawn": summary["filtration"]["examples"], "steps": summary.get("steps")})
    return pd.DataFrame(rows, columns=["group", "method", "kept", "drawn", "steps"])


def judged_frames(path: Path, by: tuple[str, ...]) -> dict:
    """A `results/*.jsonl` of judged records (`bon_selected.jsonl`, `<opt>_judged.jsonl`) as {values of `by`: the
    records' frame}."""
    groups: dict = {}
    for row in map(json.loads, path.read_text().splitlines()):
        groups.setdefault(tuple(row.pop(k) for k in by), []).append(row)
    return {key: pd.DataFrame(rows) for key, rows in groups.items()}


def intervention_effects(runs: pd.DataFrame, configs: dict, judged: str, curves: str, against: str, at: str,
                         resamples_from: str = "eval") -> pd.DataFrame:
    """Does an intervention survive optimization? For every run that intervened (`intervene.method` other than
    none) and has an unintervened twin among the runs (`intervene.method: none`, every other setting and the seed
    the same): the intervened policy's headline minus the twin's, per type, reward model optimized against
    (`against`: best-of-N's `reward_model`, an RL `arm`) and `at` (n, step), paired over the evaluation items both
    drew (`metrics.paired_difference`, with the bootstrap of the config section `resamples_from`). `judged`: the
    runs' file of judged records; `curves`: the one that names each type's headline; `configs`: {run: its
    manifest's config}."""
    from rlhf_syco.evaluation.metrics import paired_difference
    from rlhf_syco.evaluation.tasks import get_task

    method = {run: c.get("intervene", {}).get("method") for run, c in configs.items()}

    def twin_key(run: str) -> tuple:
        others = {k: v for k, v in run_settings(configs[run]).items() if k != "intervene.method"}
        return configs[run]["seed"], tuple(sorted(others.items()))

    have = sorted(r for r in configs if (Path(r) / "results" / judged).exists())
    twins = {twin_key(run): run for run in have if method[run] == "none"}
    group = dict(zip(runs["run"], runs["group"]))
    rows = []
    for run in have:
        control = twins.get(twin_key(run))
        if method[run] in (None, "none") or control is None:
            continue
        by = ("type", against, at)
        mine, theirs = (judged_frames(Path(r) / "results" / judged, by) for r in (run, control))
        headlines = pd.read_csv(Path(run) / "results" / curves).groupby("type")["metric"].first()
        config = configs[run]
        for (name, rm, x), frame in mine.items():
            if (name, rm, x) not in theirs or name not in headlines:
                continue
            diff = paired_difference(get_task(name), headlines[name], frame, theirs[name, rm, x],
                                     bootstrap=config[resamples_from]["bootstrap"], seed=config["seed"],
                                     min_items=config["eval"]["min_items"])
            rows.append({"run": run, "seed": config["seed"], "group": group[run], "control": group[control],
                         "type": name, "metric": headlines[name], against: rm, at: x,
                         **{k: diff[k] for k in STATS}, "items": diff["n"], "reason": diff["reason"]})
    return pd.DataFrame(rows, columns=["run", "seed", "group", "control", "type", "metric", against, at, *STATS,
                                       "items", "reason"])
