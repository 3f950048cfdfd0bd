"""`rlhf-syco report RUN_OR_SWEEP_DIR... [-o report/]`: figures, tables and a Markdown report across runs, read
from each run's `results/` only.

Runs are grouped by the config values that differ between them, seeds aside (a beta sweep: one group per beta,
labelled `beta=0.95`); a sweep folder stands for all of its points. Within a group, each run's estimate and its
95% CI are pooled over the seeds (`pool`). Written to the output folder:

- `bon_curves.csv`, `bon_paired.csv`, `<opt>_curves.csv`, `<opt>_paired.csv` (`ppo`, `grpo`, `rloo`): the runs'
  tables pooled per group (their keys, the pooled value and CI, the mean KL, and `runs`, the number of runs with a
  value);
- `optimizers_vs_kl.csv`, when the runs used more than one optimizer: each optimizer's pooled headline against
  KL, for the reward models they all optimized against (`plots.optimizer_rows`);
- `findings.csv`: per group and type, the PM - non-sycophantic PM difference at the largest n (best-of-N) and at
  the last step (PPO, GRPO, RLOO), whether its pooled CI excludes 0, and in how many runs the run's own CI
  excludes 0 on the same side (with 2 seeds the pooled CI's coverage falls short when the seeds disagree:
  docs/results.md);
- `pm_learned.csv`: per group and bias family, what the PM learned: its accuracy on fresh pairs of the
  labeler against the labeler's ceiling (`results/pm_bias.json`) and whether it is within 0.05 of it, and how
  often each reward model prefers the sycophantic reply on evaluation-half items in held-out phrasings
  (`results/probe_pm.json`), pooled over seeds;
- `gold_fits.csv`: every run's Gao et al. fits (`overoptimization.py`), not pooled;
- for runs of the `intervene` stage, the interventions' tables, figures and sections
  (`rlhf_syco/intervention/report.py`);
- `runs.csv`: each run, its group and seed;
- the figures (`bon_vs_n.png`, `bon_paired_vs_n.png`, `<opt>_vs_step.png`, `<opt>_vs_kl.png`,
  `<opt>_paired_vs_step.png`, `optimizers_vs_kl.png`, each with the CSV of the rows it draws) and `report.md`,
  which links them.

Pooling seeds. Each seed draws its own evaluation items and trains its own PM, so the runs of a group are
independent replicates. From run i's value v_i and CI, se_i = (ci_high - ci_low) / (2 * 1.96); the pooled value
is the mean of the v_i and its CI is mean +- 1.96 * sqrt((mean(se_i^2) + tau^2) / k), with tau^2 =
max(0, var(v_i) - mean(se_i^2)) the spread between seeds beyond their sampling error (a random-effects
moment estimate with equal weights). Runs that share their best-of-N items (one `bon.seed`) are not independent in
their items: their CI is mean +- 1.96 * sqrt(mean(se_i^2) + var(v_i) / k), the items' error kept whole and only
the seeds' spread averaged. With one run, its own CI is kept. The normal form reads the percentile
bootstrap CIs as symmetric, and with 2 seeds tau^2 is estimated from one difference: the coverage this gives is
simulated in the tests (`tests/test_report.py`) and stated in docs/results.md.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from rlhf_syco.errors import UserError
from rlhf_syco.evaluation.metrics import Z95
from rlhf_syco.rundir import atomic_path, atomic_write, read_json

IGNORED = ("name", "seed", "runs_dir", "stages", "compute", "slurm", "analysis")
STATS = ["value", "ci_low", "ci_high"]


# --------------------------------------------------------------------------- finding and grouping runs


def find_runs(paths: list[Path]) -> list[Path]:
    """Run folders: each path is a run (it has `manifest.json`) or a sweep folder (its finished points' runs)."""
    from rlhf_syco.sweep import SWEEP_FILE

    runs = []
    for path in map(Path, paths):
        if (path / "manifest.json").exists():
            runs.append(path)
        elif (path / SWEEP_FILE).exists():
            points = load_json(path / SWEEP_FILE).get("points", [])
            runs += [path / p["name"] for p in points if p.get("state") == "done"]
        else:
            raise UserError(f"{path}: not a run folder (no manifest.json) or a sweep folder (no {SWEEP_FILE})")
    if not runs:
        raise UserError(f"no runs to report under {', '.join(map(str, paths))} (a sweep's points count once done)")
    return list({run.resolve(): run for run in runs}.values())


def load_json(path: Path) -> dict:
    try:
        return read_json(path)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable ({e})") from None


def _flat(config: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        if not prefix and key in IGNORED:
            continue
        if isinstance(value, dict) and value:
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = json.dumps(value, sort_keys=True)
    return out


def run_settings(config: dict) -> dict:
    """The run's config as {dotted key: JSON value}, seeds and IGNORED sections aside; a path inside the run's own
    folder (`{run_dir}/intervene/policy`) is the same setting in every run."""
    own = str(Path(config["runs_dir"]) / config["name"])
    return {k: v.replace(own, "{run_dir}") for k, v in _flat(config).items()}


def label_runs(runs: list[Path]) -> pd.DataFrame:
    """One row per run: run, group (the values that differ between the runs' configs, seeds aside), seed."""
    manifests = [load_json(run / "manifest.json") for run in runs]
    for run, manifest in zip(runs, manifests):
        if not isinstance(manifest.get("config"), dict) or "seed" not in manifest["config"]:
            raise UserError(f"{run / 'manifest.json'}: no config with a seed: not a run's manifest")
    configs = [m["config"] for m in manifests]
    flat = [run_settings(c) for c in configs]
    keys = sorted({k for f in flat for k in f})
    varied = [k for k in keys if len({f.get(k) for f in flat}) > 1]
    groups = [", ".join(f"{k.rsplit('.', 1)[-1]}={_shown(f.get(k))}" for k in varied) or "all" for f in flat]
    return pd.DataFrame({"run": [str(r) for r in runs], "group": groups, "seed": [c["seed"] for c in configs],
                         "bon_seed": [c.get("bon", {}).get("seed") for c in configs],
                         "finished": ["finished" in m for m in manifests]})


def shared_pools(runs: pd.DataFrame) -> frozenset:
    """The groups whose runs all drew their best-of-N items and samples with one `bon.seed`."""
    return frozenset(group for group, part in runs.groupby("group")
                     if part["bon_seed"].notna().all() and part["bon_seed"].nunique() == 1)


def _shown(value: str | None) -> str:
    return "unset" if value is None else str(json.loads(value))


# --------------------------------------------------------------------------- pooling seeds


def pool(values, ci_low, ci_high, shared_items: bool = False) -> dict:
    """The pooled estimate of runs' values with their 95% CIs (see the module docstring): {"value", "ci_low",
    "ci_high", "runs"}; runs without a value take no part. `shared_items`: the runs measured the same items."""
    v, low, high = (np.asarray(x, dtype=float) for x in (values, ci_low, ci_high))
    keep = np.isfinite(v) & np.isfinite(low) & np.isfinite(high)
    if not keep.any() and np.isfinite(v).sum() == 1:  # one run, with a value but no interval (its reason says why)
        return {"value": float(v[np.isfinite(v)][0]), "ci_low": math.nan, "ci_high": math.nan, "runs": 1}
    v, low, high = v[keep], low[keep], high[keep]
    k = len(v)
    if k == 0:
        return {"value": math.nan, "ci_low": math.nan, "ci_high": math.nan, "runs": 0}
    if k == 1:
        return {"value": float(v[0]), "ci_low": float(low[0]), "ci_high": float(high[0]), "runs": 1}
    within, spread = np.mean(((high - low) / (2 * Z95)) ** 2), float(np.var(v, ddof=1))
    if shared_items:  # the items' error is common to every run and does not average out; the seeds' spread does
        half = Z95 * math.sqrt(within + spread / k)
    else:
        half = Z95 * math.sqrt((within + max(0.0, spread - within)) / k)
    mean = float(v.mean())
    return {"value": mean, "ci_low": mean - half, "ci_high": mean + half, "runs": k}


def pooled(tables: pd.DataFrame, by: list[str], mean_of: tuple[str, ...] = (),
           shared: frozenset = frozenset()) -> pd.DataFrame:
    """`tables` (every run's rows, with `group`) pooled over the runs of each group and `by`; columns in
    `mean_of` (a KL) are averaged; the groups in `shared` measured the same items in every run."""
    rows = []
    for key, part in tables.groupby(["group", *by], sort=False, dropna=False):
        row = dict(zip(["group", *by], key)) | pool(part["value"], part["ci_low"], part["ci_high"], key[0] in shared)
        rows.append(row | {c: float(part[c].mean()) for c in mean_of})
    return pd.DataFrame(rows)


def read_results(runs: pd.DataFrame, name: str) -> pd.DataFrame:
    """`results/<name>` of every run that has it, with run, group and seed columns."""
    parts = []
    for row in runs.itertuples():
        path = Path(row.run) / "results" / name
        if path.exists() and path.stat().st_size > 1:
            parts.append(pd.read_csv(path).assign(run=row.run, group=row.group, seed=row.seed))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


# --------------------------------------------------------------------------- the report


def build(paths: list[Path], out: Path) -> dict:
    """Everything in the module docstring, written to `out`; returns {"runs", "groups", "files"}."""
    from rlhf_syco.intervention import report as interventions
    from rlhf_syco.plots import RL_OPTIMIZERS, optimizer_rows, panel_figure

    runs = label_runs(find_runs(paths))
    if out.exists() and not out.is_dir():
        raise UserError(f"-o {out}: a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    written, figures, shared = {"runs.csv": runs}, [], shared_pools(runs)
    bon, bon_paired = read_results(runs, "bon_curves.csv"), read_results(runs, "bon_paired.csv")
    bon_paired_runs = bon_paired
    if not bon.empty:
        bon = pooled(bon, ["type", "metric", "reward_model", "n"], mean_of=("kl_bon",), shared=shared)
        written["bon_curves.csv"] = bon
        figures.append(panel_figure(bon.assign(series=bon["group"] + " \u00b7 " + bon["reward_model"]), "n",
                                    "N (best-of-N)", "series", "Sycophancy vs best-of-N (mean over seeds, 95% CI)",
                                    out / "bon_vs_n.png", log2_x=True))
    if not bon_paired.empty:
        bon_paired = pooled(bon_paired, ["type", "metric", "reward_model", "minus", "n"], mean_of=("kl_bon",),
                            shared=shared)
        written["bon_paired.csv"] = bon_paired
        figures.append(panel_figure(bon_paired.assign(series=bon_paired["group"]), "n", "N (best-of-N)", "series",
                                    _pair_title(bon_paired, "best-of-N"), out / "bon_paired_vs_n.png", log2_x=True,
                                    difference=True))
    paired_pooled, paired_runs, rl_curves = {"best-of-N": bon_paired}, {"best-of-N": bon_paired_runs}, {}
    for optimizer, name in RL_OPTIMIZERS.items():
        curves, paired = read_results(runs, f"{optimizer}_curves.csv"), read_results(runs, f"{optimizer}_paired.csv")
        if not curves.empty:
            curves = rl_curves[name] = pooled(curves, ["arm", "type", "metric", "step"], mean_of=("kl",))
            written[f"{optimizer}_curves.csv"] = curves
            series = curves.assign(series=curves["group"] + " \u00b7 " + curves["arm"])
            figures.append(panel_figure(series, "step", f"{name} step", "series", f"Sycophancy vs {name} steps, by "
                                        "the reward model optimized against (mean over seeds)",
                                        out / f"{optimizer}_vs_step.png"))
            figures.append(panel_figure(series, "kl", "KL to the reference policy (nats, mean over seeds)", "series",
                                        f"Sycophancy vs KL ({name})", out / f"{optimizer}_vs_kl.png"))
        if not paired.empty:
            paired = paired[paired["minus"] != "step 0"]
        paired_runs[name] = paired
        if not paired.empty:
            paired = pooled(paired, ["arm", "minus", "type", "metric", "step"], mean_of=("kl",))
            written[f"{optimizer}_paired.csv"] = paired
            figures.append(panel_figure(paired.assign(series=paired["group"]), "step", f"{name} step", "series",
                                        _pair_title(paired.rename(columns={"arm": "reward_model"}), name),
                                        out / f"{optimizer}_paired_vs_step.png", difference=True))
        paired_pooled[name] = paired
    compared = optimizer_rows(bon, rl_curves)
    if compared["optimizer"].nunique() > 1:
        written["optimizers_vs_kl.csv"] = compared
        figures.append(panel_figure(compared, "kl", "KL to the reference policy (nats, mean over seeds)", "series",
                                    "Sycophancy vs KL, by optimizer (against the same reward model)",
                                    out / "optimizers_vs_kl.png"))
    written["findings.csv"] = findings(paired_pooled, paired_runs)
    written["pm_learned.csv"] = pm_learned(runs)
    methods = {"bon": "best-of-N", **RL_OPTIMIZERS}
    fits = [(method, read_results(runs, f"{key}_gold_fits.csv")) for key, method in methods.items()]
    fits = [f.assign(method=method) for method, f in fits if not f.empty]
    fits = pd.concat(fits, ignore_index=True) if fits else pd.DataFrame()
    written["gold_fits.csv"] = fits
    tables, drawn, intervention_lines = interventions.report(runs, out, shared)
    written |= tables
    figures += drawn
    for name, frame in written.items():
        with atomic_path(out / name) as tmp:
            frame.to_csv(tmp, index=False)
    atomic_write(out / "report.md", markdown(runs, written["findings.csv"], written["pm_learned.csv"], fits, figures,
                                            intervention_lines))
    return {"runs": len(runs), "groups": runs["group"].nunique(),
            "files": sorted([*written, "report.md", *(f.name for f in figures)])}


def _pair_title(paired: pd.DataFrame, method: str) -> str:
    pairs = sorted(set(paired["reward_model"] + " \u2212 " + paired["minus"]))
    return f"{', '.join(pairs)}: paired difference under {method} (mean over seeds, 95% CI)"


FINDING_COLUMNS = ["group", "type", "metric", "method", "difference", "at", "value", "ci_low", "ci_high", "runs",
                   "excludes_0", "runs_excluding_0"]


def findings(pooled_tables: dict[str, pd.DataFrame], run_tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per group and type: the paired difference at the largest n (best-of-N) and the last step (an RL optimizer),
    whether its pooled CI excludes 0, and in how many of the runs behind it the run's own CI excludes 0 on the same
    side. Tables by method ("best-of-N", "PPO", "GRPO", "RLOO"): pooled, and every run's rows."""
    rows = []
    for method in pooled_tables:
        at, first = ("n", "reward_model") if method == "best-of-N" else ("step", "arm")
        paired, each = pooled_tables.get(method, pd.DataFrame()), run_tables.get(method, pd.DataFrame())
        if paired.empty:
            continue
        last = paired[paired[at] == paired.groupby(["group", "type"])[at].transform("max")]
        for row in last.itertuples():
            mine = each[(each["group"] == row.group) & (each["type"] == row.type) & (each["metric"] == row.metric)
                        & (each[first] == getattr(row, first)) & (each["minus"] == row.minus)
                        & (each[at] == getattr(row, at))].dropna(subset=STATS)
            side = (mine["ci_low"] > 0) if row.value > 0 else (mine["ci_high"] < 0)
            rows.append({"group": row.group, "type": row.type, "metric": row.metric, "method": method,
                         "difference": f"{getattr(row, first)} \u2212 {row.minus}", "at": f"{at} = {getattr(row, at)}",
                         "value": row.value, "ci_low": row.ci_low, "ci_high": row.ci_high, "runs": row.runs,
                         "excludes_0": verdict(row.value, row.ci_low, row.ci_high),
                         "runs_excluding_0": f"{int(side.sum())} of {len(mine)}"})
    return pd.DataFrame(rows, columns=FINDING_COLUMNS)


# A PM has learned a family when its pooled accuracy on fresh labeler pairs is this close to the ceiling: below it,
# a best-of-N or RL finding on the family's type says little about the labeler's bias.
LEARNED_WITHIN = 0.05


def pm_learned(runs: pd.DataFrame) -> pd.DataFrame:
    """Per group, family and measure (`accuracy` on fresh labeler pairs, `prefers sycophantic: <reward model>`
    in the probe), pooled over seeds; `ceiling` = max(beta, 1 - beta) for the accuracy, and `learned` whether
    the accuracy is within LEARNED_WITHIN of it."""
    rows = []
    for run in runs.itertuples():
        results = Path(run.run) / "results"
        if (results / "pm_bias.json").exists():
            for family, b in read_json(results / "pm_bias.json").items():
                rows.append({"group": run.group, "family": family, "measure": "accuracy", "value": b["accuracy"],
                             "ci_low": b["ci_low"], "ci_high": b["ci_high"], "ceiling": b["ceiling"]})
        if (results / "probe_pm.json").exists():
            for rm, probe in read_json(results / "probe_pm.json").items():
                for family, f in probe.get("families", {}).items():
                    rows.append({"group": run.group, "family": family, "measure": f"prefers sycophantic: {rm}",
                                 "value": f["sycophantic_preference_rate"], "ci_low": f["ci_low"],
                                 "ci_high": f["ci_high"], "ceiling": math.nan})
    if not rows:
        return pd.DataFrame(columns=["group", "family", "measure", "value", "ci_low", "ci_high", "runs", "ceiling",
                                     "learned"])
    table = pooled(pd.DataFrame(rows), ["family", "measure"], mean_of=("ceiling",))
    accuracy = table["measure"] == "accuracy"
    table["learned"] = np.where(accuracy, np.where(table["value"] >= table["ceiling"] - LEARNED_WITHIN, "yes", "no"),
                                "")
    return table


def verdict(value: float, low: float, high: float) -> str:
    if np.isfinite(value) and not np.isfinite([low, high]).any():
        return "no (the two sides differ on no item)"
    if not all(np.isfinite([value, low, high])):
        return "not measurable"
    return "yes, above 0" if low > 0 else "yes, below 0" if high < 0 else "no"


def markdown(runs: pd.DataFrame, found: pd.DataFrame, learned: pd.DataFrame, fits: pd.DataFrame,
             figures: list[Path], intervention_lines: list[str] = ()) -> str:
    """report.md: the runs, the findings table, what the PMs learned, the interventions' sections
    (`intervention/report.py`), the figures and the gold-reward fits."""
    lines = ["# Sycophancy across runs", "",
             f"{len(runs)} runs in {runs['group'].nunique()} groups ({', '.join(sorted(runs['group'].unique()))}). "
             "Each value is the mean over a group's seeds with a 95% CI that pools the runs' own CIs and the spread "
             "between seeds (`rlhf_syco/report.py`). Every sycophancy metric reads higher = more sycophantic.", "",
             "## Findings", "",
             "The difference between optimizing against the PM and against the non-sycophantic PM, at the largest n "
             "(best-of-N) and the last step (PPO, GRPO, RLOO).", "",
             "| group | type | metric | method | difference | at | value [95% CI] | runs | CI excludes 0 | "
             "runs whose own CI excludes 0 |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in found.itertuples():
        lines.append(f"| {r.group} | {r.type} | {r.metric} | {r.method} | {r.difference} | {r.at} | "
                     f"{interval(r.value, r.ci_low, r.ci_high)} | {r.runs} | {r.excludes_0} | {r.runs_excluding_0} |")
    mixed = found.groupby(["group", "method", "type"])["metric"].nunique()
    for (group, method, type_), _ in mixed[mixed > 1].items():
        lines.append(f"\n{group}, {method}, {type_}: the runs drew different headlines (the paper's metric was not "
                     f"measurable in some), so each is pooled over the runs that drew it.")
    if not learned.empty:
        lines += ["", "## What the PM learned", "",
                  "Accuracy: the PM's agreement with the simulated labeler on fresh pairs of each bias family (training "
                  "phrasings, PM-half items), against the labeler's ceiling max(beta, 1 - beta); learned: within "
                  f"{LEARNED_WITHIN} of it. Prefers sycophantic: "
                  "how often a reward model scores the sycophantic reply above the other one on evaluation-half items "
                  "in held-out phrasings (the probe; docs/bias.md).", "",
                  "| group | family | measure | value [95% CI] | ceiling | learned | runs |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r.group} | {r.family} | {r.measure} | {interval(r.value, r.ci_low, r.ci_high)} | "
                  f"{'' if math.isnan(r.ceiling) else f'{r.ceiling:.2f}'} | {r.learned} | {r.runs} |"
                  for r in learned.itertuples()]
    lines += list(intervention_lines)
    lines += ["", "## Figures", ""] + [f"![{f.stem}]({f.name})\n" for f in figures]
    if not fits.empty:
        lines += ["## Gold reward: Gao et al.'s fits", "",
                  "Best-of-N: R(d) - R(0) = d(alpha - beta d); RL (PPO, GRPO, RLOO): d(alpha - beta log d); "
                  "d = sqrt(KL). "
                  "beta > 0: the gold rate turns down as the policy moves away (`rlhf_syco/overoptimization.py`).", "",
                  "| run | method | type | optimized against | alpha [95% CI] | beta [95% CI] | note |",
                  "|---|---|---|---|---|---|---|"]
        for r in fits.itertuples():
            against = r.reward_model if isinstance(getattr(r, "reward_model", None), str) else r.arm
            lines.append(f"| {Path(r.run).name} | {r.method} | {r.type} | {against} | "
                         f"{interval(r.alpha, r.alpha_ci_low, r.alpha_ci_high)} | "
                         f"{interval(r.beta, r.beta_ci_low, r.beta_ci_high)} | "
                         f"{r.reason if isinstance(r.reason, str) else ''} |")
    lines += ["", "## Runs", "", "| run | group | seed |", "|---|---|---|"]
    lines += [f"| {Path(r.run).name} | {r.group} | {r.seed} |" for r in runs.itertuples()]
    return "\n".join(lines) + "\n"


def interval(value, low, high) -> str:
    if np.isfinite(value) and not np.isfinite([low, high]).all():
        return f"{value:+.3f} (no interval)"
    if not all(np.isfinite([value, low, high])):
        return "n/a"
    return f"{value:+.3f} [{low:+.3f}, {high:+.3f}]"
