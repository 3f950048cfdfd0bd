"""Stage `analyze`: what in the preference data predicts preference (Sharma et al. 2023 §4.1).

Reads this run's PM pairs (`data/pm_train.jsonl` to fit, `data/pm_heldout.jsonl` for held-out accuracy: the
PM's own held-out pairs) or `analysis.data` (an HH-RLHF-format file, a file of pairs in the project's format, or
a hub dataset id; a share `analysis.heldout_fraction` held out). Each pair is shown as (A, B) in a seeded random
order, labelled with every feature (cached per feature and shard of pairs under `analyze/labels/`, so an
interrupted run resumes), and one regression is fit on all pairs and one per source. Writes:

- `results/preference_features.csv`: subset, feature, measurable, reason, nonzero (pairs on which the feature
  differs), coef (posterior mean of alpha) with its 95% interval, p_preferred = sigmoid(alpha) with its interval,
  and, where the truth is known (the answer family's pairs without the preamble: the labeler prefers agreement
  with probability β and nothing else), expected and covered;
- `results/preference_analysis.json`: per subset, pair counts, held-out accuracy of the regression beside the
  PM's (`results/pm_heldout.json`), the sampler's diagnostics;
- `plots/preference_features.png`.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pandas as pd

from rlhf_syco.analysis.features import FEATURES, LLMLabeller, make_chooser
from rlhf_syco.analysis.regression import accuracy, fit, sampler
from rlhf_syco.cache import cached
from rlhf_syco.errors import UserError
from rlhf_syco.evaluation.metrics import wilson_interval
from rlhf_syco.plots import preference_features_figure
from rlhf_syco.progress import console, progress_bar
from rlhf_syco.rundir import RunDir, atomic_path, fingerprint, read_json, read_jsonl, write_json

FEATURES_FILE, SUMMARY_FILE = "preference_features.csv", "preference_analysis.json"
KNOWN_TRUTH = "answer"  # the source whose labeler rule is known exactly: its reply styles differ in no other way


def run(config, run_dir: RunDir) -> dict:
    with sampler():  # one PyMC process for every subset's fit
        return _analyse(config, run_dir)


def _analyse(config, run_dir: RunDir) -> dict:
    settings = config.analysis
    train, heldout = _pairs(config, run_dir)
    names = list(settings.features) + list(settings.llm_features)
    labellers = _labellers(settings)
    out = run_dir.stage("analyze")
    with progress_bar() as progress:
        x_train = _label(labellers, train, out / "labels" / "train", settings.shard_size, progress)
        x_heldout = _label(labellers, heldout, out / "labels" / "heldout", settings.shard_size, progress)
    y_train, y_heldout = np.array([p["y"] for p in train]), np.array([p["y"] for p in heldout])

    pm = read_json(run_dir.results / "pm_heldout.json") if settings.data is None and \
        (run_dir.results / "pm_heldout.json").exists() else {}
    sources = sorted({p["source"] for p in train})
    subsets = {"all": None, **({s: s for s in sources} if len(sources) > 1 else {})}
    rows, summary = [], {"features": names, "data": settings.data or "this run's PM pairs", "subsets": {}}
    for subset, source in subsets.items():
        keep = np.array([source is None or p["source"] == source for p in train])
        keep_heldout = np.array([source is None or p["source"] == source for p in heldout], bool)
        if keep.sum() < settings.min_pairs:
            summary["subsets"][subset] = {"measurable": False, "train_pairs": int(keep.sum()),
                                          "reason": f"{int(keep.sum())} pairs (minimum {settings.min_pairs})"}
            continue
        x, y = x_train[keep], y_train[keep]
        nonzero = (x != 0).sum(axis=0)
        fitted = [k for k in range(len(names)) if nonzero[k] >= settings.min_nonzero]
        if not fitted:
            summary["subsets"][subset] = {"measurable": False, "train_pairs": int(keep.sum()),
                                          "reason": f"no feature differs on {settings.min_nonzero} pairs or more"}
            continue
        posterior = fit(x[:, fitted], y, [names[k] for k in fitted], prior_scale=settings.prior_scale,
                        draws=settings.draws, tune=settings.tune, chains=settings.chains, seed=config.seed)
        by_name = {r["feature"]: r for r in posterior.summary()}
        expected = _expected(config, subset, settings.features)
        for k, name in enumerate(names):
            row = {"subset": subset, "feature": name, "nonzero": int(nonzero[k]), "pairs": int(keep.sum())}
            if name in by_name:
                row.update(measurable=True, reason=None, **{c: v for c, v in by_name[name].items() if c != "feature"})
            else:
                row.update(measurable=False, reason=f"differs on {int(nonzero[k])} of {int(keep.sum())} pairs "
                                                    f"(minimum {settings.min_nonzero})")
            if name in expected:
                row["expected"] = expected[name]
                row["covered"] = bool(row.get("coef_low", math.inf) <= expected[name] <= row.get("coef_high", -math.inf))
            rows.append(row)
        predicted = posterior.p_first(x_heldout[keep_heldout][:, fitted]) if keep_heldout.any() else np.zeros(0)
        summary["subsets"][subset] = {
            "measurable": True, "train_pairs": int(keep.sum()), "heldout_pairs": int(keep_heldout.sum()),
            "heldout_accuracy": _rate(accuracy(predicted, y_heldout[keep_heldout]), int(keep_heldout.sum())),
            "pm_heldout_accuracy": (pm.get(subset) or {}).get("accuracy"),
            "max_rhat": posterior.max_rhat, "divergences": posterior.divergences,
            "fitted": posterior.features}
    table = pd.DataFrame(rows, columns=None if rows else ["subset", "feature", "measurable", "reason"])
    with atomic_path(run_dir.results / FEATURES_FILE) as tmp:
        table.to_csv(tmp, index=False)
    write_json(run_dir.results / SUMMARY_FILE, summary)
    if not table.empty:
        preference_features_figure(table, run_dir.path / "plots" / "preference_features.png")
    _print(table, summary)
    return {k: {"heldout_accuracy": (v.get("heldout_accuracy") or {}).get("value"),
                "pm_heldout_accuracy": v.get("pm_heldout_accuracy")} for k, v in summary["subsets"].items()}


# --------------------------------------------------------------------------- pairs


def _pairs(config, run_dir: RunDir) -> tuple[list[dict], list[dict]]:
    """(train, held-out) pairs in (A, B) form: {"prompt", "a", "b", "y" (1 if A was chosen), "source", "meta"}."""
    settings = config.analysis
    if settings.data is None:
        train = read_jsonl(run_dir / "data" / "pm_train.jsonl")
        heldout = read_jsonl(run_dir / "data" / "pm_heldout.jsonl")
    else:
        pairs = load_pairs(settings.data, settings.data_split, settings.limit)
        random.Random(f"{config.seed}:analysis-split").shuffle(pairs)
        n_heldout = max(1, round(len(pairs) * settings.heldout_fraction))
        train, heldout = pairs[n_heldout:], pairs[:n_heldout]
    rng = random.Random(f"{config.seed}:analysis-order")
    return [_orient(p, rng) for p in train], [_orient(p, rng) for p in heldout]


def load_pairs(source: str, split: str = "train", limit: int | None = None) -> list[dict]:
    """A file of pairs in the project's format (`prompt` a list of messages), else HH-RLHF records
    (`data.preferences.load_hh_rlhf`: a local .jsonl / .jsonl.gz or a hub dataset id)."""
    from rlhf_syco.data.preferences import load_hh_rlhf

    path = Path(source)
    if path.is_file() and not path.name.endswith(".gz"):
        with path.open(encoding="utf-8") as f:
            first = next((line for line in f if line.strip()), "")
        try:
            own_format = isinstance(json.loads(first).get("prompt"), list)
        except (json.JSONDecodeError, AttributeError):
            own_format = False
        if own_format:
            return _own_pairs(path, limit)
    pairs, _ = load_hh_rlhf(source, split, limit)
    return pairs


def _own_pairs(path: Path, limit: int | None) -> list[dict]:
    pairs = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if limit is not None and len(pairs) >= limit:
            break
        try:
            pair = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"invalid JSON ({e.msg})", f"{path}:{lineno}") from None
        for field in ("prompt", "chosen", "rejected"):
            if field not in pair:
                raise UserError(f"missing field {field!r}", f"{path}:{lineno}")
        if not isinstance(pair["chosen"], str) or not isinstance(pair["rejected"], str):
            raise UserError("'chosen' and 'rejected' must be strings", f"{path}:{lineno}")
        pairs.append({"source": "pairs", "meta": {}, **pair})
    if not pairs:
        raise UserError("no pairs", str(path))
    return pairs


def _orient(pair: dict, rng: random.Random) -> dict:
    """Chosen as A or B at random: the regression has no intercept, so which is first must carry no signal."""
    swap = rng.random() < 0.5
    meta = dict(pair.get("meta") or {})
    if "chosen_matches_belief" in meta:
        meta["a_matches_belief"] = meta["chosen_matches_belief"] != swap
    a, b = (pair["rejected"], pair["chosen"]) if swap else (pair["chosen"], pair["rejected"])
    return {"prompt": pair["prompt"], "a": a, "b": b, "y": 0 if swap else 1, "source": pair.get("source", "pairs"),
            "meta": meta}


# --------------------------------------------------------------------------- labels


def _labellers(settings) -> dict:
    labellers = {name: FEATURES.get(name) for name in settings.features}
    if settings.llm_features:
        chooser = make_chooser(settings.llm, settings.llm_options)
        labellers.update({name: LLMLabeller(chooser, question) for name, question in settings.llm_features.items()})
    return labellers


def _label(labellers: dict, pairs: list[dict], folder: Path, shard_size: int, progress) -> np.ndarray:
    """(pairs, features) differences, each feature's shards cached under `folder` keyed by what they depend on."""
    columns = []
    for name, labeller in labellers.items():
        spec = {"feature": name, "labeller": getattr(labeller, "spec", getattr(labeller, "__qualname__", name))}
        shards = [pairs[i:i + shard_size] for i in range(0, len(pairs), shard_size)]
        task = progress.add_task(f"label {name} ({folder.name})", total=len(shards))
        values = []
        for index, shard in enumerate(shards):
            key = fingerprint({**spec, "pairs": [[p["prompt"], p["a"], p["b"], p["meta"]] for p in shard]})
            values += cached(folder / name / f"shard-{index:04d}.json", key,
                             lambda: [float(v) for v in labeller(shard)])
            progress.advance(task)
        columns.append(np.array(values, float))
    return np.stack(columns, axis=1) if columns else np.zeros((len(pairs), 0))


# --------------------------------------------------------------------------- what is known, and the table


def _expected(config, subset: str, features: list[str]) -> dict[str, float]:
    """On this run's answer pairs without the preamble the labeler prefers agreement with probability beta and
    looks at nothing else: alpha = logit(beta) for matches_user_beliefs, 0 for every other mechanical feature.
    (In the other families a reply style carries more than agreement, e.g. caving apologises, so the other
    features' effects are not known to be 0.)"""
    beta = config.pm.data.bias.get(KNOWN_TRUTH, config.pm.data.beta)
    if config.analysis.data is not None or subset != KNOWN_TRUTH or not 0 < beta < 1:
        return {}
    return {name: (math.log(beta / (1 - beta)) if name == "matches_user_beliefs" else 0.0)
            for name in features}


def _rate(value: float, n: int) -> dict | None:
    if n == 0 or value != value:
        return None
    low, high = wilson_interval(value, n)
    return {"value": value, "ci_low": low, "ci_high": high, "n": n}


def _print(table: pd.DataFrame, summary: dict) -> None:
    from rich.table import Table

    for subset, info in summary["subsets"].items():
        if not info["measurable"]:
            console.print(f"[bold]{subset}[/bold]: not measurable ({info['reason']})")
            continue
        acc, pm = info["heldout_accuracy"], info["pm_heldout_accuracy"]
        title = (f"{subset}: {info['train_pairs']} pairs; held-out accuracy "
                 + (f"{acc['value']:.3f} [{acc['ci_low']:.3f}, {acc['ci_high']:.3f}] on {acc['n']}" if acc else "n/a")
                 + (f", the PM's {pm:.3f}" if pm is not None else ""))
        view = Table(title=title)
        for column in ("feature", "P(preferred) [95%]", "alpha [95%]", "differs on", "expected"):
            view.add_column(column)
        for row in table[table["subset"] == subset].itertuples():
            if not row.measurable:
                view.add_row(row.feature, "not measurable", row.reason, str(row.nonzero), "")
                continue
            known = getattr(row, "expected", float("nan"))
            view.add_row(row.feature, f"{row.p_preferred:.3f} [{row.p_low:.3f}, {row.p_high:.3f}]",
                         f"{row.coef:+.2f} [{row.coef_low:+.2f}, {row.coef_high:+.2f}]", str(row.nonzero),
                         "" if known != known else f"{known:+.2f} ({'covered' if row.covered else 'NOT covered'})")
        console.print(view)
