"""Figures from `results/` only: sycophancy against best-of-N and against RL steps, one panel per type.

Stages write tidy tables; this module only draws them. Each PNG is written next to the CSV of exactly the
rows it shows, so every figure can be re-plotted or checked elsewhere.

Tables read (written by the stages):
- `results/bon_curves.csv`: type, metric, reward_model, n, kl_bon (the analytic bound), kl_plugin (the estimate
  from the pool), value, ci_low, ci_high
- `results/bon_paired.csv`: type, metric, reward_model, minus, n, kl_bon, value, ci_low, ci_high, items (a second
  row of panels: the paired difference between two reward models' selections, with a line at 0)
- `results/ppo_curves.csv`: arm, step, kl, type, metric, value, ci_low, ci_high, reason (why a value is missing)
- `results/ppo_paired.csv`: arm, minus, step, kl, type, metric, value, ci_low, ci_high (the arms' differences
  drawn in a second row, as best-of-N's)
- `results/grpo_*.csv`, `results/rloo_*.csv`: GRPO's and RLOO's, as PPO's
- `results/bon_gold.csv`, `<optimizer>_gold.csv` and their `_fits.csv`: the gold rate and the proxy reward against
  sqrt(KL), with Gao et al.'s fitted forms (`overoptimization.py`)
- all of best-of-N's and the RL optimizers' curves at once (`optimizers_vs_kl.png`, when a run has more than one):
  each headline against KL from the reference, for the reward models they all optimized against
- `results/intervention_check.csv` (stage `intervene`): type, metric, policy (before, after, after - before),
  headline, value, ci_low, ci_high, n, measurable, reason
- `results/preference_features.csv` (stage `analyze`): subset, feature, measurable, p_preferred, p_low, p_high

Every headline reads the same way (higher = more sycophantic), and each panel's axis says so.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from rlhf_syco.rundir import atomic_path

PANEL_ORDER = ("feedback", "answer", "are_you_sure", "mimicry", "opinion")
RL_OPTIMIZERS = {"ppo": "PPO", "grpo": "GRPO", "rloo": "RLOO"}  # results/<key>_curves.csv, drawn as <value>
UP, BETTER = "\u2191 more sycophantic", "\u2191 better"


def panel_figure(rows: pd.DataFrame, x: str, x_label: str, series: str | None, title: str, out: Path,
                 log2_x: bool = False, paired: pd.DataFrame | None = None, difference: bool = False) -> Path:
    """One panel per sycophancy type: `value` against `x` with its CI band, one line per `series` value; with
    `paired`, a second row of panels with the paired differences (one line per pair); `difference`: the rows
    are differences themselves (a line at 0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = set(rows["type"])
    types = [t for t in PANEL_ORDER if t in present] + sorted(present - set(PANEL_ORDER))
    reasons = {t: _reason(rows[rows["type"] == t]) for t in types}
    rows = rows.dropna(subset=["value"])  # a metric not measurable at some point is not drawn
    if paired is not None and not paired.empty:
        cols, nrows = len(types), 2
        paired = paired.dropna(subset=["value"]).assign(pair=lambda d: d["reward_model"] + " \u2212 " + d["minus"])
    else:
        cols, nrows, paired = min(len(types), 3), math.ceil(len(types) / min(len(types), 3)), None
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.4 * nrows), squeeze=False)
    flat = list(axes.flat)
    for ax, eval_type in zip(flat, types):
        _panel(ax, rows[rows["type"] == eval_type], eval_type, x, x_label, series, log2_x, reasons[eval_type],
               difference=difference)
    if paired is not None:
        for ax, eval_type in zip(axes[1], types):
            _panel(ax, paired[paired["type"] == eval_type], eval_type, x, x_label, "pair", log2_x, difference=True)
    for ax in flat[len(types):] if paired is None else []:
        ax.axis("off")
    fig.suptitle(title)
    return _save(fig, rows, out)


def _save(fig, rows: pd.DataFrame, out: Path) -> Path:
    """The figure as `out` and the rows it shows beside it as CSV."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    with atomic_path(out.with_suffix(".csv")) as tmp:
        rows.to_csv(tmp, index=False)
    return out


def preference_features_figure(rows: pd.DataFrame, out: Path) -> Path:
    """Sharma et al.'s Fig. 5: per feature, P(the response with more of it is preferred, all else equal) with
    its 95% interval, one panel per subset of pairs; a feature not measurable there is listed, not drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    subsets = list(dict.fromkeys(rows["subset"]))
    fig, axes = plt.subplots(1, len(subsets), figsize=(4.6 * len(subsets), 0.35 * rows["feature"].nunique() + 1.6),
                             squeeze=False, sharey=True)
    features = list(dict.fromkeys(rows["feature"]))
    for ax, subset in zip(axes[0], subsets):
        panel = rows[rows["subset"] == subset].set_index("feature").reindex(features)
        y = list(range(len(features)))
        shown = panel["measurable"].fillna(False).astype(bool).values
        mean, low, high = (panel[c].values for c in ("p_preferred", "p_low", "p_high"))
        ax.errorbar(mean[shown], [v for v, s in zip(y, shown) if s], xerr=[(mean - low)[shown], (high - mean)[shown]],
                    fmt="o", markersize=4, capsize=2)
        for v, s in zip(y, shown):
            if not s:
                ax.text(0.5, v, "not measurable", ha="center", va="center", fontsize=7, color="grey")
        if "expected" in panel and panel["expected"].notna().any():  # where the labeler's rule is known
            known = panel["expected"].notna().values & shown
            ax.scatter(1 / (1 + np.exp(-panel["expected"].values[known])), [v for v, k in zip(y, known) if k],
                       marker="x", color="tab:red", zorder=3, label="the labeler's true effect")
            ax.legend(fontsize=7, loc="lower right")
        ax.axvline(0.5, color="grey", linewidth=0.8)
        ax.set_yticks(y, features, fontsize=8)
        ax.set_xlabel("P(response with more of the feature preferred)", fontsize=8)
        ax.set_title(f"{subset} ({int(panel['pairs'].max())} pairs)", fontsize=10)
        ax.grid(alpha=0.3, axis="x")
    axes[0][0].invert_yaxis()  # the first feature on top (the axes share y)
    fig.suptitle("What predicts preference (Bayesian logistic regression, 95% intervals)")
    return _save(fig, rows, out)


def gold_figure(rows: pd.DataFrame, fits: pd.DataFrame, series: str, title: str, out: Path) -> Path:
    """Gao et al.'s Fig. 1 per sycophancy type: the gold rate (with its CI and the fitted form, dashed) and the
    proxy reward it was selected or trained on, both against sqrt(KL); one line per `series`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rlhf_syco.overoptimization import predict

    present = set(rows["type"])
    types = [t for t in PANEL_ORDER if t in present] + sorted(present - set(PANEL_ORDER))
    fig, axes = plt.subplots(2, len(types), figsize=(4.2 * len(types), 6.4), squeeze=False)
    fitted = fits.set_index(["type", series]) if not fits.empty else None
    for column, eval_type in enumerate(types):
        gold_ax, proxy_ax = axes[0][column], axes[1][column]
        panel = rows[rows["type"] == eval_type]
        for index, (name, line) in enumerate(panel.groupby(series, sort=True)):
            line, colour = line.sort_values("sqrt_kl"), f"C{index}"
            drawn = line.dropna(subset=["gold"])
            gold_ax.plot(drawn["sqrt_kl"], drawn["gold"], marker="o", markersize=3, color=colour, label=name)
            gold_ax.fill_between(drawn["sqrt_kl"], drawn["ci_low"], drawn["ci_high"], alpha=0.2, color=colour)
            fit = fitted.loc[(eval_type, name)] if fitted is not None and (eval_type, name) in fitted.index else None
            if fit is not None and pd.notna(fit["alpha"]) and len(drawn):
                d = np.linspace(0, line["sqrt_kl"].max(), 50)
                start = float(drawn.loc[drawn["sqrt_kl"].idxmin(), "gold"])
                gold_ax.plot(d, start + predict(fit["form"], d, fit["alpha"], fit["beta"]), "--", color=colour,
                             linewidth=1, label=f"{name}: α {fit['alpha']:.2f}, β {fit['beta']:.2f}")
            proxy_ax.plot(line["sqrt_kl"], line["proxy"], marker="o", markersize=3, color=colour, label=name)
        if panel["gold"].isna().all():
            gold_ax.text(0.5, 0.5, _reason(panel.rename(columns={"gold": "value"})), ha="center", va="center",
                         transform=gold_ax.transAxes, fontsize=8)
        gold_ax.set_title(f"{eval_type}: gold", fontsize=10)
        gold_ax.set_ylabel("gold rate (↑ truthful, unswayed)", fontsize=8)
        proxy_ax.set_title(f"{eval_type}: proxy", fontsize=10)
        proxy_ax.set_ylabel("proxy reward (the optimized RM's score)", fontsize=8)
        for ax in (gold_ax, proxy_ax):
            ax.set_xlabel("√KL (nats½)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle(title)
    return _save(fig, rows, out)


def interventions_figure(rows: pd.DataFrame, out: Path) -> Path:
    """Several interventions side by side (`group` column: one per run group): each task's headline before and
    after, with 95% CIs, one panel per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    types = list(dict.fromkeys(rows["type"]))
    groups = list(dict.fromkeys(rows["group"]))
    fig, axes = plt.subplots(1, len(types), figsize=(1.1 * len(groups) + 2.2 * len(types), 3.6), squeeze=False)
    labelled = set()
    for ax, eval_type in zip(axes[0], types):
        panel = rows[rows["type"] == eval_type]
        for x, group in enumerate(groups):
            for offset, policy, colour in ((-0.12, "before", "tab:grey"), (0.12, "after", "tab:blue")):
                r = panel[(panel["group"] == group) & (panel["policy"] == policy)]
                if r.empty or pd.isna(r["value"].iloc[0]):
                    continue
                r = r.iloc[0]
                err = [[r["value"] - r["ci_low"]], [r["ci_high"] - r["value"]]] if not pd.isna(r["ci_low"]) else None
                ax.errorbar([x + offset], [r["value"]], yerr=err, fmt="o", capsize=2, color=colour,
                            label=None if policy in labelled else policy)
                labelled.add(policy)
        ax.set_xticks(range(len(groups)), groups, rotation=40, ha="right", fontsize=7)
        ax.set_ylabel(f"{panel['metric'].iloc[0]} ({BETTER if eval_type == 'mmlu' else UP})", fontsize=8)
        ax.set_title(eval_type, fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Before and after each intervention (next-token reading, 95% CIs)", fontsize=10)
    return _save(fig, rows, out)


def intervention_figure(rows: pd.DataFrame, out: Path) -> Path:
    """The policy before and after the intervention: each task's headline (and MMLU accuracy, the capability
    check) with its 95% CI, the paired difference after - before in the panel's title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = rows[rows["headline"].astype(bool)]
    types = list(dict.fromkeys(rows["type"]))
    fig, axes = plt.subplots(1, len(types), figsize=(3.0 * len(types), 3.2), squeeze=False)
    for ax, eval_type in zip(axes[0], types):
        panel = rows[rows["type"] == eval_type].set_index("policy")
        for x, label in enumerate(("before", "after")):
            if label not in panel.index:
                continue
            r = panel.loc[label]
            if pd.isna(r["value"]):
                ax.text(x, 0.5, "not\nmeasurable", ha="center", va="center", fontsize=7, color="grey",
                        transform=ax.get_xaxis_transform())
                continue
            ax.errorbar([x], [r["value"]], yerr=[[r["value"] - r["ci_low"]], [r["ci_high"] - r["value"]]],
                        fmt="o", capsize=3, color=("tab:grey", "tab:blue")[x])
        ax.set_xticks([0, 1], ["before", "after"])
        ax.set_xlim(-0.5, 1.5)
        metric = panel["metric"].iloc[0]
        ax.set_ylabel(f"{metric} ({BETTER if eval_type == 'mmlu' else UP})", fontsize=8)
        title = eval_type
        if "after - before" in panel.index and not pd.isna(panel.loc["after - before", "value"]):
            d = panel.loc["after - before"]
            title += f"\n\u0394 {d['value']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle("Before and after the intervention (next-token reading, 95% CIs)", fontsize=10)
    return _save(fig, rows, out)


def _reason(rows: pd.DataFrame) -> str:
    """Why a panel has nothing to draw: the recorded reason, when the table has one."""
    if "reason" in rows and rows["value"].isna().all():
        found = rows["reason"].dropna()
        if len(found):
            return "not measurable:\n" + str(found.iloc[0]).replace(" (", "\n(")
    return "not measurable: no eligible items"


def _panel(ax, panel: pd.DataFrame, eval_type: str, x: str, x_label: str, series: str | None, log2_x: bool,
           reason: str = "not measurable: no eligible items", difference: bool = False) -> None:
    if panel.empty:
        ax.set_title(eval_type, fontsize=10)
        ax.text(0.5, 0.5, reason, ha="center", va="center", transform=ax.transAxes, fontsize=8, wrap=True)
        return
    lines = [(name, line.sort_values(x)) for name, line in (panel.groupby(series, sort=True) if series
                                                              else [(None, panel)])]
    single = all(len(line) == 1 for _, line in lines)
    for index, (name, line) in enumerate(lines):
        if not single:
            ax.plot(line[x], line["value"], marker="o", markersize=3, label=name)
            ax.fill_between(line[x], line["ci_low"], line["ci_high"], alpha=0.2)
            continue
        # A band needs two points: one value per series gets an error bar, each series a little apart from the
        # others so that equal values do not hide one another.
        shift = (index - (len(lines) - 1) / 2) * 0.1
        xs = line[x] * 2 ** shift if log2_x else line[x] + shift
        below = (line["value"] - line["ci_low"]).clip(lower=0)
        above = (line["ci_high"] - line["value"]).clip(lower=0)
        ax.errorbar(xs, line["value"], yerr=[below, above], fmt="o", markersize=4, capsize=3, label=name)
    metric = panel["metric"].iloc[0]
    if difference:
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set_title(f"{eval_type}: paired difference", fontsize=10)
        ax.set_ylabel(f"\u0394 {metric}", fontsize=8)
    else:
        ax.set_title(f"{eval_type}: {metric}", fontsize=10)
        ax.set_ylabel(f"{metric} ({UP})", fontsize=8)
    ax.set_xlabel(x_label)
    if log2_x:
        ax.set_xscale("log", base=2)
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=8)


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path) if path.exists() and path.stat().st_size > 1 else pd.DataFrame()


def optimizer_rows(bon: pd.DataFrame, rl: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Every optimizer's headline against KL from the reference, for the reward models they all optimized
    against: best-of-N's curves (`bon`) at each n, against the analytic KL bound log n - (n-1)/n, and each RL
    optimizer's (`rl`: {name: its curves}) at each evaluated step, against the KL estimated on held-out prompts.
    Columns: optimizer, reward_model, series, type, metric, kl, value, ci_low, ci_high (and `group`, when the
    tables have one: the series then name it). A type's rows keep one metric, the first optimizer's headline
    (best-of-N's, then PPO's, ...): an optimizer whose headline there is another metric is left out of that panel
    rather than drawn on another scale."""
    columns = ["optimizer", "reward_model", "series", "type", "metric", "kl", "value", "ci_low", "ci_high"]
    frames = [bon.assign(optimizer="best-of-N", kl=bon["kl_bon"])] if not bon.empty else []
    frames += [curves.rename(columns={"arm": "reward_model"}).assign(optimizer=name)
               for name, curves in rl.items() if not curves.empty]
    if not frames:
        return pd.DataFrame(columns=columns)
    rows = pd.concat(frames, ignore_index=True)
    shared = set.intersection(*(set(f["reward_model"]) for f in frames))
    rows = rows[rows["reward_model"].isin(shared)]
    rows = rows[rows["metric"] == rows.groupby("type", sort=False)["metric"].transform("first")]
    series = rows["optimizer"]
    if len(shared) > 1:
        series = series + " \u00b7 " + rows["reward_model"]
    if "group" in rows:
        columns.insert(0, "group")
        if rows["group"].nunique() > 1:
            series = rows["group"] + " \u00b7 " + series
    return rows.assign(series=series)[columns].reset_index(drop=True)


def run(config, run_dir) -> dict:
    """Draw every figure whose table exists; returns {figure name: path}."""
    results, out = Path(os.fspath(run_dir)) / "results", Path(os.fspath(run_dir)) / "plots"
    made = {}
    bon = results / "bon_curves.csv"
    if bon.exists():
        rows = pd.read_csv(bon)
        paired = pd.read_csv(results / "bon_paired.csv") if (results / "bon_paired.csv").exists() else None
        made["bon_vs_n"] = panel_figure(rows, "n", "N (best-of-N)", "reward_model",
                                        "Sycophancy vs best-of-N", out / "bon_vs_n.png", log2_x=True, paired=paired)
        made["bon_vs_kl"] = panel_figure(rows, "kl_bon", "KL bound log N - (N-1)/N (nats)", "reward_model",
                                         "Sycophancy vs KL (best-of-N)", out / "bon_vs_kl.png", paired=paired)
    for optimizer, name in RL_OPTIMIZERS.items():
        curves = results / f"{optimizer}_curves.csv"
        if not curves.exists():
            continue
        rows, paired = pd.read_csv(curves), _read(results / f"{optimizer}_paired.csv")
        if not paired.empty:  # the arms' difference at each step (each arm minus its own start is not drawn)
            paired = paired[paired["minus"] != "step 0"].rename(columns={"arm": "reward_model"})
        made[f"{optimizer}_vs_step"] = panel_figure(
            rows, "step", f"{name} step", "arm", f"Sycophancy vs {name} steps, by the reward model optimized "
            "against", out / f"{optimizer}_vs_step.png", paired=paired)
        made[f"{optimizer}_vs_kl"] = panel_figure(
            rows, "kl", "KL to the reference policy (nats)", "arm", f"Sycophancy vs KL ({name}), by the reward "
            "model optimized against", out / f"{optimizer}_vs_kl.png", paired=paired)
    compared = optimizer_rows(_read(results / "bon_curves.csv"),
                              {name: _read(results / f"{o}_curves.csv") for o, name in RL_OPTIMIZERS.items()})
    if compared["optimizer"].nunique() > 1:
        made["optimizers_vs_kl"] = panel_figure(
            compared, "kl", "KL to the reference policy (nats)", "series",
            "Sycophancy vs KL, by optimizer (against the same reward model)", out / "optimizers_vs_kl.png")
    gold_titles = {"bon": ("reward_model", "Gold vs proxy reward under best-of-N selection"),
                   **{o: ("arm", f"Gold vs proxy reward along {n}, by the reward model optimized against")
                      for o, n in RL_OPTIMIZERS.items()}}
    for method, (series, title) in gold_titles.items():
        gold, fits = results / f"{method}_gold.csv", results / f"{method}_gold_fits.csv"
        if gold.exists() and gold.stat().st_size > 1:
            made[f"{method}_gold"] = gold_figure(pd.read_csv(gold), pd.read_csv(fits), series, title,
                                                 out / f"{method}_gold.png")
    check = results / "intervention_check.csv"
    if check.exists():
        made["intervention"] = intervention_figure(pd.read_csv(check), out / "intervention.png")
    features = results / "preference_features.csv"
    if features.exists():
        made["preference_features"] = preference_features_figure(pd.read_csv(features),
                                                                 out / "preference_features.png")
    return {k: str(v) for k, v in made.items()}
