"""`rlhf-syco report`: runs grouped by what their configs set differently, seeds pooled, the findings and the
figures, every number recomputed here from the runs' `results/` files; the pooled interval's coverage by
simulation; bad folders as one-line errors."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rlhf_syco.report import build, pool, verdict

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "experiments" / "tiny.yaml")


def fake_run(folder: Path, beta: float, seed: int, paired: list[tuple[int, float, float, float]]) -> Path:
    """A run folder with a manifest and the two best-of-N tables the report reads; `paired` rows are
    (n, value, ci_low, ci_high) of pm - pm_nonsyco on answer."""
    folder.mkdir(parents=True)
    config = {"name": folder.name, "seed": seed, "runs_dir": str(folder.parent), "pm": {"data": {"beta": beta}},
              "compute": {"device": "cpu"}}
    (folder / "manifest.json").write_text(json.dumps({"config": config}))
    (folder / "results").mkdir()
    rows = [{"type": "answer", "metric": "answer_endorsement", "reward_model": "pm", "minus": "pm_nonsyco", "n": n,
             "kl_bon": 0.1 * n, "value": v, "ci_low": lo, "ci_high": hi, "items": 20} for n, v, lo, hi in paired]
    pd.DataFrame(rows).to_csv(folder / "results" / "bon_paired.csv", index=False)
    curves = [{**r, "minus": None, "kl_plugin": 0.0, "reason": None} for r in rows]
    pd.DataFrame(curves).drop(columns=["minus", "items"]).to_csv(folder / "results" / "bon_curves.csv", index=False)
    return folder


def hand_pool(values, lows, highs):
    """DerSimonian-Laird with equal weights, written out again."""
    se2 = [((h - l) / (2 * 1.959963984540054)) ** 2 for l, h in zip(lows, highs)]
    k, mean = len(values), sum(values) / len(values)
    spread = sum((v - mean) ** 2 for v in values) / (k - 1)
    half = 1.959963984540054 * math.sqrt((sum(se2) / k + max(0.0, spread - sum(se2) / k)) / k)
    return mean, mean - half, mean + half


def test_runs_are_grouped_by_beta_and_seeds_pooled(tmp_path):
    high = [fake_run(tmp_path / f"b95-s{s}", 0.95, s, [(1, 0.0, -0.1, 0.1), (32, v, lo, hi)])
            for s, (v, lo, hi) in enumerate([(0.30, 0.10, 0.50), (0.10, 0.02, 0.18)])]
    low = fake_run(tmp_path / "b50-s0", 0.5, 0, [(1, 0.0, -0.1, 0.1), (32, 0.02, -0.08, 0.12)])
    made = build([*high, low], tmp_path / "report")
    assert made["runs"] == 3 and made["groups"] == 2
    found = pd.read_csv(tmp_path / "report" / "findings.csv").set_index("group")
    mean, lo, hi = hand_pool([0.30, 0.10], [0.10, 0.02], [0.50, 0.18])
    assert found.loc["beta=0.95", ["value", "ci_low", "ci_high"]].tolist() == pytest.approx([mean, lo, hi])
    assert found.loc["beta=0.95", "at"] == "n = 32" and found.loc["beta=0.95", "runs"] == 2
    assert found.loc["beta=0.95", "excludes_0"] == verdict(mean, lo, hi)
    assert found.loc["beta=0.95", "runs_excluding_0"] == "2 of 2"  # both runs' own CIs are above 0
    assert found.loc["beta=0.5", ["value", "ci_low", "ci_high"]].tolist() == pytest.approx([0.02, -0.08, 0.12])
    assert found.loc["beta=0.5", "excludes_0"] == "no"  # one run: its own interval
    text = (tmp_path / "report" / "report.md").read_text()
    assert "| beta=0.5 | answer | answer_endorsement | best-of-N | pm − pm_nonsyco | n = 32 | +0.020 [-0.080, +0.120]" \
        in text
    for figure in ("bon_vs_n.png", "bon_paired_vs_n.png"):
        assert f"]({figure})" in text and (tmp_path / "report" / figure).stat().st_size > 10_000
    drawn = pd.read_csv(tmp_path / "report" / "bon_paired_vs_n.csv")  # the rows behind the figure
    assert sorted(drawn["group"].unique()) == ["beta=0.5", "beta=0.95"]


def test_pool_by_hand():
    assert pool([0.2], [0.1], [0.4]) == {"value": 0.2, "ci_low": 0.1, "ci_high": 0.4, "runs": 1}
    # two runs that agree exactly: no spread beyond their sampling error, so the within-run error over k
    se = 0.1 / 1.959963984540054
    got = pool([0.3, 0.3], [0.2, 0.2], [0.4, 0.4])
    assert got["ci_high"] - 0.3 == pytest.approx(1.959963984540054 * math.sqrt(se ** 2 / 2))
    assert pool([np.nan, 0.5], [np.nan, 0.4], [np.nan, 0.6])["runs"] == 1
    assert math.isnan(pool([], [], [])["value"])


@pytest.mark.parametrize("k, tau, shared, floor", [(2, 0.0, False, 0.95), (3, 0.0, False, 0.95),
                                                   (2, 1.0, False, 0.86), (3, 1.0, False, 0.88),
                                                   (5, 1.0, False, 0.90), (2, 0.0, True, 0.95),
                                                   (2, 1.0, True, 0.88), (2, 2.0, True, 0.85)])
def test_the_pooled_interval_covers_the_truth(k, tau, shared, floor):
    """Runs whose estimates scatter by their sampling error (se 0.05; with `shared` items, one draw common to
    every run) plus a between-seed spread tau (in units of se). 20,000 simulations each; the floors sit just
    under the coverage measured (docs/results.md quotes it): 0.95 or more without spread, short of it with
    few seeds that disagree (the moment estimate of the spread is poor with 2 or 3)."""
    rng = np.random.default_rng(k + int(10 * tau) + shared)
    sims, se, truth = 20_000, 0.05, 0.1
    items = rng.normal(0, se, (sims, 1)) if shared else rng.normal(0, se, (sims, k))
    values = truth + rng.normal(0, tau * se, (sims, k)) + items
    half = 1.959963984540054 * se
    hits = sum(lo <= truth <= hi for lo, hi in
               ((p["ci_low"], p["ci_high"]) for p in (pool(v, v - half, v + half, shared_items=shared)
                                                      for v in values)))
    print(f"coverage k={k} tau={tau} se shared={shared}: {hits / sims:.3f}")
    assert hits / sims >= floor, hits / sims


def test_a_folder_that_is_no_run_is_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "rlhf_syco.cli", "report", str(tmp_path), "-o",
                           str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: {tmp_path}: not a run folder (no manifest.json) or a sweep folder " \
                                  f"(no sweep.json)"
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_the_report_of_real_runs_matches_their_results(tmp_path):
    """Two tiny runs (two seeds at one beta, best-of-N and PPO): every pooled number and the findings
    recomputed from the runs' own results/ files."""
    runs = []
    for seed in (0, 1):
        done = subprocess.run([sys.executable, "-m", "rlhf_syco.cli", "run", TINY, "--no-ray", f"seed={seed}",
                               f"name=tiny-{seed}", f"runs_dir={tmp_path}", "stages=[data,pm,bon,ppo]"],
                              capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert done.returncode == 0, done.stderr[-3000:]
        runs.append(tmp_path / f"tiny-{seed}")
    done = subprocess.run([sys.executable, "-m", "rlhf_syco.cli", "report", *map(str, runs), "-o",
                           str(tmp_path / "report")], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "report"
    for table, keys in (("bon_curves.csv", ["type", "metric", "reward_model", "n"]),
                        ("bon_paired.csv", ["type", "metric", "reward_model", "minus", "n"]),
                        ("ppo_curves.csv", ["arm", "type", "metric", "step"])):
        mine = [pd.read_csv(run / "results" / table) for run in runs]
        report = pd.read_csv(out / table).set_index(keys)
        assert set(report["group"]) == {"all"}  # only the seed and name differ
        joined = mine[0].merge(mine[1], on=keys, suffixes=("_0", "_1"))
        assert len(joined) == len(report)
        for row in joined.itertuples(index=False):
            row = row._asdict()
            got = report.loc[tuple(row[k] for k in keys)]
            pairs = [(row[f"value_{s}"], row[f"ci_low_{s}"], row[f"ci_high_{s}"]) for s in (0, 1)]
            finite = [p for p in pairs if all(np.isfinite(p))]
            if len(finite) == 2:
                assert [got["value"], got["ci_low"], got["ci_high"]] == pytest.approx(hand_pool(*zip(*finite)))
            elif len(finite) == 1:
                assert [got["value"], got["ci_low"], got["ci_high"]] == pytest.approx(list(finite[0]))
            else:
                assert np.isnan(got["value"])
    found = pd.read_csv(out / "findings.csv")
    assert set(found["method"]) == {"best-of-N"} and (found["at"] == "n = 4").all()  # PPO has one arm here
    assert set(pd.read_csv(out / "gold_fits.csv")["method"]) == {"best-of-N", "PPO"}
    assert (out / "ppo_vs_step.png").exists() and (out / "report.md").read_text().count("![") == 5
    # best-of-N and PPO against the same PM on one figure: the pooled curves' own rows, on one metric per type
    compared = pd.read_csv(out / "optimizers_vs_kl.csv")
    assert set(compared["optimizer"]) == {"best-of-N", "PPO"} and set(compared["reward_model"]) == {"pm"}
    ppo = pd.read_csv(out / "ppo_curves.csv")
    for row in compared[compared["optimizer"] == "PPO"].itertuples():
        same = ppo[(ppo["type"] == row.type) & (ppo["metric"] == row.metric) & (ppo["kl"] == row.kl)]
        assert len(same) == 1 and same["value"].iloc[0] == pytest.approx(row.value, nan_ok=True)
    assert (compared.groupby("type")["metric"].nunique() == 1).all()


def test_runs_with_more_than_one_optimizer_get_the_comparison_and_the_rl_findings(tmp_path):
    """GRPO's tables beside best-of-N's: pooled over two seeds, drawn against KL with best-of-N's, and its
    pm - pm_nonsyco difference at the last step among the findings."""
    runs = []
    for seed, (value, low, high) in enumerate([(0.30, 0.10, 0.50), (0.10, 0.02, 0.18)]):
        run = fake_run(tmp_path / f"s{seed}", 0.95, seed, [(1, 0.0, -0.1, 0.1), (32, 0.2, 0.1, 0.3)])
        curves = [{"arm": arm, "step": step, "kl": 0.5 * step + seed, "type": "answer", "metric": "answer_endorsement",
                   "value": 0.1 * step, "ci_low": 0.0, "ci_high": 0.2 * step + 0.1, "reason": None}
                  for arm in ("pm", "pm_nonsyco") for step in (0, 4)]
        pd.DataFrame(curves).to_csv(run / "results" / "grpo_curves.csv", index=False)
        paired = [{"arm": "pm", "minus": "pm_nonsyco", "step": 4, "kl": 2.0 + seed, "type": "answer",
                   "metric": "answer_endorsement", "value": value, "ci_low": low, "ci_high": high, "items": 20}]
        pd.DataFrame(paired).to_csv(run / "results" / "grpo_paired.csv", index=False)
        runs.append(run)
    made = build(runs, tmp_path / "report")
    assert {"grpo_curves.csv", "grpo_paired.csv", "optimizers_vs_kl.csv", "optimizers_vs_kl.png"} <= set(made["files"])
    compared = pd.read_csv(tmp_path / "report" / "optimizers_vs_kl.csv")
    grpo = compared[(compared["optimizer"] == "GRPO") & (compared["reward_model"] == "pm")].set_index("kl")
    assert list(grpo.index) == [0.5, 2.5]  # the KL at step 0 and 4, each the mean over the two seeds
    assert grpo.loc[2.5, "value"] == pytest.approx(0.4)
    assert set(compared[compared["optimizer"] == "best-of-N"]["reward_model"]) == {"pm"}
    found = pd.read_csv(tmp_path / "report" / "findings.csv")
    row = found[found["method"] == "GRPO"].iloc[0]
    assert (row["at"], row["difference"]) == ("step = 4", "pm \u2212 pm_nonsyco")
    assert [row["value"], row["ci_low"], row["ci_high"]] == \
        pytest.approx(hand_pool([0.30, 0.10], [0.10, 0.02], [0.50, 0.18]))
    assert "GRPO" in (tmp_path / "report" / "report.md").read_text()


def test_what_the_pm_learned_is_pooled_and_judged_against_the_ceiling(tmp_path):
    """Two seeds at beta = 0.95: the accuracies pool as any value does, and a family counts as learned when the
    pooled accuracy is within 0.05 of max(beta, 1 - beta): 0.93 is, 0.60 is not."""
    runs = []
    for seed, (answer, feedback) in enumerate([(0.94, 0.58), (0.92, 0.62)]):
        run = fake_run(tmp_path / f"s{seed}", 0.95, seed, [(1, 0.0, -0.1, 0.1), (32, 0.1, 0.0, 0.2)])
        bias = {family: {"beta": 0.95, "n": 200, "accuracy": acc, "ci_low": acc - 0.04, "ci_high": acc + 0.03,
                         "ceiling": 0.95} for family, acc in (("answer", answer), ("feedback", feedback))}
        (run / "results" / "pm_bias.json").write_text(json.dumps(bias))
        probe = {"pm": {"families": {"answer": {"sycophantic_preference_rate": 0.9, "ci_low": 0.8, "ci_high": 1.0}}}}
        (run / "results" / "probe_pm.json").write_text(json.dumps(probe))
        runs.append(run)
    build(runs, tmp_path / "report")
    learned = pd.read_csv(tmp_path / "report" / "pm_learned.csv", keep_default_na=False)
    learned = learned.set_index(["family", "measure"])
    for family, accs in (("answer", [0.94, 0.92]), ("feedback", [0.58, 0.62])):
        row = learned.loc[(family, "accuracy")]
        mean, lo, hi = hand_pool(accs, [a - 0.04 for a in accs], [a + 0.03 for a in accs])
        assert [row["value"], row["ci_low"], row["ci_high"]] == pytest.approx([mean, lo, hi])
        assert row["learned"] == ("yes" if mean >= 0.95 - 0.05 else "no")
    assert learned.loc[("answer", "accuracy"), "learned"] == "yes"
    assert learned.loc[("feedback", "accuracy"), "learned"] == "no"
    assert learned.loc[("answer", "prefers sycophantic: pm"), "learned"] == ""  # no ceiling for the probe
    text = (tmp_path / "report" / "report.md").read_text()
    assert "| all | feedback | accuracy | +0.600 [" in text and "| 0.95 | no | 2 |" in text  # seeds only: one group


def test_a_figure_with_one_value_per_line_draws_each_ci_as_an_error_bar_and_hides_none():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.container import ErrorbarContainer

    from rlhf_syco.plots import _panel

    # PPO's paired difference has one step (the last): a band over one point draws nothing. Two groups share a value.
    rows = pd.DataFrame({"group": ["beta=0.5", "beta=0.95"], "step": [4, 4], "value": [0.05, 0.05],
                         "ci_low": [-0.2, -0.1], "ci_high": [0.3, 0.2], "metric": "mimicry_rate"})
    fig, ax = plt.subplots()
    _panel(ax, rows, "mimicry", "step", "PPO step", "group", log2_x=False, difference=True)

    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert [c.get_label() for c in bars] == ["beta=0.5", "beta=0.95"]
    xs = [c.lines[0].get_xdata()[0] for c in bars]
    assert xs[0] < 4 < xs[1] and xs[1] - xs[0] < 0.5  # apart, still at step 4
    for bar, (low, high) in zip(bars, [(-0.2, 0.3), (-0.1, 0.2)]):
        segment = bar.lines[2][0].get_segments()[0]
        assert [segment[0][1], segment[1][1]] == pytest.approx([low, high])
    plt.close(fig)


def fake_intervention_run(folder: Path, method: str, mimics: dict[int, list[float]], seed: int = 0) -> Path:
    """A run of the intervention study with per-record mimicry judgments: `mimics` is {n: each item's expected
    mimicry under the PM}, best-of-N's selections (`bon_selected.jsonl`) and, with n read as a step, PPO's
    evaluations of its `pm` arm (`ppo_judged.jsonl`)."""
    folder.mkdir(parents=True)
    config = {"name": folder.name, "seed": seed, "runs_dir": str(folder.parent), "intervene": {"method": method},
              "policy": {"model": {"name_or_path": f"{folder}/intervene/policy"}}, "bon": {"bootstrap": 400},
              "eval": {"min_items": 2, "bootstrap": 400}}
    (folder / "manifest.json").write_text(json.dumps({"config": config}))
    (folder / "results").mkdir()
    rows = [{"item_id": f"poem-{i}", "variant": "mimicry", "dataset": "poems", "mimics": m, "n": n}
            for n, values in mimics.items() for i, m in enumerate(values)]
    (folder / "results" / "bon_selected.jsonl").write_text(
        "".join(json.dumps({"type": "mimicry", "reward_model": "pm", **r}) + "\n" for r in rows))
    (folder / "results" / "ppo_judged.jsonl").write_text(
        "".join(json.dumps({"type": "mimicry", "arm": "pm", "step": r.pop("n"), **r}) + "\n" for r in rows))
    curve = [{"type": "mimicry", "metric": "mimicry_rate", "value": float(np.mean(v)), "ci_low": 0.0, "ci_high": 1.0,
              "reason": None} for v in mimics.values()]
    pd.DataFrame([{**c, "reward_model": "pm", "n": n, "kl_bon": 0.0, "kl_plugin": 0.0} for c, n in zip(curve, mimics)]
                 ).to_csv(folder / "results" / "bon_curves.csv", index=False)
    pd.DataFrame([{**c, "arm": "pm", "step": n, "kl": 0.0} for c, n in zip(curve, mimics)]
                 ).to_csv(folder / "results" / "ppo_curves.csv", index=False)
    return folder


def test_an_intervention_under_optimization_is_its_twin_subtracted_over_the_same_items(tmp_path):
    """The intervened run minus the run that differs only in `intervene.method: none`, item by item, under
    best-of-N and PPO: the difference by hand and a CI that holds it, at each n and step; a run with no twin
    gets no row."""
    control = {1: [0.5, 0.5, 0.25, 0.75, 0.0, 1.0], 4: [0.75, 1.0, 0.5, 1.0, 0.25, 1.0]}
    kshot = {1: [0.25, 0.5, 0.0, 0.5, 0.0, 0.75], 4: [0.75, 0.75, 0.5, 1.0, 0.0, 1.0]}
    runs = [fake_intervention_run(tmp_path / "none", "none", control),
            fake_intervention_run(tmp_path / "kshot", "kshot", kshot),
            fake_intervention_run(tmp_path / "lora-seed-1", "lora", kshot, seed=1)]  # its twin would be seed 1
    build(runs, tmp_path / "report")
    for table, at in (("intervention_vs_n.csv", "n"), ("intervention_ppo_vs_step.csv", "step")):
        effects = pd.read_csv(tmp_path / "report" / table).set_index(at)
        assert set(effects["group"]) == {"method=kshot"} and set(effects["control"]) == {"method=none"}
        assert len(effects) == 2
        for x in (1, 4):
            by_hand = np.mean(kshot[x]) - np.mean(control[x])
            assert effects.loc[x, "value"] == pytest.approx(by_hand)
            assert effects.loc[x, "ci_low"] <= by_hand <= effects.loc[x, "ci_high"]
        assert effects.loc[1, "value"] == pytest.approx(-1 / 6) and effects.loc[4, "value"] == pytest.approx(-1 / 12)
    report = (tmp_path / "report" / "report.md").read_text()
    assert "## Interventions under optimization" in report and report.count("| method=kshot | method=none |") == 4
    assert "intervention_vs_n.png" in report and "intervention_ppo_vs_step.png" in report


def test_a_verdict_says_on_which_side_of_0_or_why_it_cannot():
    nan = float("nan")
    assert verdict(0.2, 0.1, 0.3) == "yes, above 0" and verdict(-0.2, -0.3, -0.1) == "yes, below 0"
    assert verdict(0.1, -0.1, 0.3) == "no"
    assert verdict(0.0, nan, nan) == "no (the two sides differ on no item)"
    assert verdict(nan, nan, nan) == "not measurable"
