"""The `intervene` stage: Wei et al.'s synthetic data, an intervention on the base policy, and the policy before
and after it on the tasks Wei et al. and the poster measure, read from next-token probabilities.

Writes, under the run folder:
- `intervene/data.jsonl` (+ `.filtration.json`): the synthetic examples after filtration by the base;
- `intervene/train.jsonl`: what the method trains on or shows (the examples, mixed with instruction data at
  `instruction_ratio`);
- `intervene/policy/`: the intervened policy, a plain model folder (`methods.py`); later stages take it with
  `policy.model.name_or_path: "{run_dir}/intervene/policy"`;
- `results/intervention.json`: the method, the data's counts, what training did;
- `results/intervention_check.csv`: every metric of `check_types` (answers read from their letters'
  next-token probabilities) and MMLU accuracy (the capability check), for the policy `before` and `after`,
  and `after - before` paired over the same items, all with item-bootstrap CIs.
"""

from __future__ import annotations

import gc
import math
import random
import shutil
from pathlib import Path

import pandas as pd

from rlhf_syco.errors import UserError
from rlhf_syco.evaluation import suite
from rlhf_syco.evaluation.metrics import Metric, measure, paired_difference
from rlhf_syco.evaluation.task import every_row
from rlhf_syco.intervention import data, methods
from rlhf_syco.intervention.data import PREFILL
from rlhf_syco.rundir import RunDir, atomic_path, fingerprint, read_json, write_json, write_jsonl

SUMMARY_FILE, CHECK_FILE = "intervention.json", "intervention_check.csv"
TRAINED = ("full", "lora", "prompt_tuning")


def base_model(config) -> str:
    """The policy intervened on, resolved to a local folder or hub id."""
    from rlhf_syco.models import resolve

    base = config.intervene.base or config.policy.model.name_or_path
    if "intervene/policy" in base.replace("\\", "/"):
        raise UserError("the policy to intervene on is the intervention's own output; set intervene.base",
                        "intervene.base")
    return resolve(base)


def run(config, run_dir: RunDir) -> dict:
    iv = config.intervene
    out = run_dir.stage("intervene")
    base = base_model(config)
    examples, filtration = synthetic_data(config, out, base)
    shown = mixed(config, examples)
    write_jsonl(out / "train.jsonl", shown)
    if iv.method in TRAINED and not shown:
        raise UserError(f"no examples to train on: filtration by {base} kept none of {iv.examples} (see "
                        f"{out / 'data.filtration.json'}); draw more (intervene.examples) or set "
                        f"intervene.filtration=false", "intervene.filtration")
    trained = write_policy(config, base, shown, out)
    gc.collect()
    check = before_and_after(config, run_dir, base, None if iv.method == "none" else str(out / "policy"))
    with atomic_path(run_dir.results / CHECK_FILE) as tmp:
        check.to_csv(tmp, index=False)
    summary = {"method": iv.method, "base": iv.base or config.policy.model.name_or_path,
               "filtration": filtration, "synthetic_examples": len(examples),
               "instruction_examples": len(shown) - len(examples) if iv.method in TRAINED else 0,
               "shots": len(shown) if iv.method == "kshot" else None, **trained}
    write_json(run_dir.results / SUMMARY_FILE, summary)
    return summary


def synthetic_data(config, out: Path, base: str) -> tuple[list[dict], dict]:
    """(the synthetic examples, the filtration report), cached (in the runs folder's shared store too) under
    what they depend on: runs that intervene on the same base with the same data filter it once."""
    from rlhf_syco.cache import SHARED, load_cached, store_cached
    from rlhf_syco.models import weights_stamp

    iv, shared = config.intervene, Path(config.runs_dir) / SHARED
    key = fingerprint({"base": base, "weights": weights_stamp(base), "examples": iv.examples, "seed": config.seed,
                       "filtration": iv.filtration})
    examples = load_cached(out / "data.jsonl", key, shared)
    report = load_cached(out / "data.filtration.json", key, shared)
    if examples is None or report is None:
        examples, report = data.make(config, iv.examples, iv.filtration, policy=base)
        store_cached(out / "data.filtration.json", key, report, shared)
        store_cached(out / "data.jsonl", key, examples, shared)
    return examples, report


def mixed(config, examples: list[dict]) -> list[dict]:
    """The method's examples: `shots` of them for k-shot, else all, with instruction examples (HH-RLHF
    conversations and their chosen reply, Wei et al.'s instruction-tuning data stand-in) mixed in at
    `instruction_ratio`, shuffled with the seed."""
    iv, rng = config.intervene, random.Random(f"{config.seed}:intervene")
    if iv.method == "kshot":
        return rng.sample(examples, min(iv.shots, len(examples)))
    if iv.method not in TRAINED:
        return []
    extra = round(iv.instruction_ratio * len(examples))
    rows = list(examples)
    if extra:
        from rlhf_syco.data.preferences import load_hh_rlhf

        d = config.pm.data
        pairs, _ = load_hh_rlhf(d.hh_rlhf, d.hh_rlhf_split, None, d.max_malformed_fraction)
        rows += [{"id": f"hh-rlhf/{i}", "dataset": "hh-rlhf", "prompt": p["prompt"], "completion": p["chosen"]}
                 for i, p in enumerate(rng.sample(pairs, min(extra, len(pairs))))]
    rng.shuffle(rows)
    return rows


def write_policy(config, base: str, shown: list[dict], out: Path) -> dict:
    """`out/policy/` by the method (written whole, then renamed into place); what training did."""
    iv = config.intervene
    if (out / "policy").exists():
        return read_json(out / "policy_training.json")
    from transformers import AutoTokenizer

    summary: dict = {"steps": 0}
    with atomic_path(out / "policy", is_dir=True) as folder:
        if iv.method == "none":
            methods.link_base(base, folder)
        elif iv.method == "kshot":
            tokenizer = AutoTokenizer.from_pretrained(base)
            tokenizer.chat_template = methods.kshot_template(tokenizer.chat_template, methods.shots_as_turns(shown))
            methods.link_weights(base, folder)
            tokenizer.save_pretrained(folder)
        else:
            trained = methods.train(config, shown, base, out)
            model, tokenizer = methods.as_plain_model(iv.method, trained["model"], trained["tokenizer"])
            model.save_pretrained(folder)
            tokenizer.save_pretrained(folder)
            write_jsonl(out / "log_history.jsonl", trained["history"])
            summary = trained["summary"]
            del model, trained
        write_json(out / "policy_training.json", summary)  # before the folder is renamed into place
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    return summary


# --------------------------------------------------------------------------- before / after


def before_and_after(config, run_dir: RunDir, before: str, after: str | None) -> pd.DataFrame:
    """Every metric of the check for both policies, and after - before paired over the same items (`after`
    None: the policy is unchanged, and checked once). Each policy's readings are cached under the fingerprint of
    its weights and the questions, in the runs folder's shared store too: runs that intervene on the same base
    read it once."""
    iv = config.intervene
    tasks = suite.tasks(iv.check_types)
    sets = {name: suite.records(task, config.eval, iv.check_items, config.seed) for name, task in tasks.items()}
    questions = mmlu_questions(iv.mmlu_items, config.seed)
    judged, rows = {}, []
    for label, model in (("before", before), ("after", after)) if after else (("before", before),):
        readings = _readings(config, run_dir, label, model, tasks, sets, questions)
        for name, task in tasks.items():
            judged[label, name], metrics = suite.evaluate(task, sets[name], readings[name], {}, config.eval,
                                                         bootstrap=config.eval.bootstrap, seed=config.seed)
            rows += suite.metric_rows(task, metrics, policy=label)
        judged[label, "mmlu"] = mmlu_judged(questions, readings["mmlu"])
        mmlu = judged[label, "mmlu"]
        accuracy = measure(mmlu, mmlu_accuracy(mmlu), bootstrap=config.eval.bootstrap, seed=config.seed,
                           min_items=config.eval.min_items)
        rows += suite.metric_rows(MMLU, {"accuracy": accuracy}, policy=label)
    for name, task in [*tasks.items(), ("mmlu", MMLU)] if after else []:
        for metric in task.metrics(judged["after", name]):
            diff = paired_difference(task, metric, judged["after", name], judged["before", name],
                                     bootstrap=config.eval.bootstrap, seed=config.seed,
                                     min_items=config.eval.min_items)
            headline = next(r["headline"] for r in rows if r["type"] == name and r["metric"] == metric)
            rows.append({"type": name, "metric": metric, "headline": headline, "policy": "after - before", **diff,
                         "measurable": not math.isnan(diff["value"])})
    columns = ["type", "metric", "policy", "headline", "value", "ci_low", "ci_high", "n", "measurable", "reason"]
    return pd.DataFrame(rows).reindex(columns=columns)


def _readings(config, run_dir: RunDir, label: str, model: str, tasks: dict, sets: dict, questions: list) -> dict:
    """{task: its records' letters, "mmlu": the questions' letters} of one policy, cached (the policy is loaded
    only if some reading is missing)."""
    from functools import cache

    from rlhf_syco.cache import SHARED, cached
    from rlhf_syco.models import weights_stamp

    shared = Path(config.runs_dir) / SHARED
    stamp = {"model": model, "weights": weights_stamp(model)}
    chooser = cache(lambda: _chooser(config, model))
    folder = run_dir.stage("intervene") / "check"
    out = {name: cached(folder / f"{label}_{name}.jsonl",
                        fingerprint({**stamp, "letters": task.letters, "records": sets[name]}),
                        lambda task=task, name=name: suite.read_letters(chooser(), task, sets[name]), shared)
           for name, task in tasks.items()}
    out["mmlu"] = cached(folder / f"{label}_mmlu.jsonl",
                         fingerprint({**stamp, "letters": MMLU_LETTERS, "questions": questions}),
                         lambda: mmlu_letters(chooser(), questions), shared)
    chooser.cache_clear()
    gc.collect()
    return out


def _chooser(config, model: str):
    from rlhf_syco.llm_choice import HFChooser
    from rlhf_syco.models import pick_device

    return HFChooser(model, pick_device(config.compute.device), batch_size=config.policy.generation.batch_size)


# MMLU without any opinion: the capability check, so that a drop in sycophancy that is really broken answering
# shows. The question in the synthetic data's format, the answer read from the four letters after the prefill.
MMLU_LETTERS = "ABCD"


def mmlu_questions(n: int, seed: int) -> list[dict]:
    from rlhf_syco.data.sources import mmlu

    rows = random.Random(f"{seed}:intervene-mmlu").sample(mmlu(), min(n, len(mmlu())))
    return [{"id": r["id"], "answer": MMLU_LETTERS[r["answer"]],
             "question": r["question"] + "\n\nChoices:\n" + "\n".join(
                 f" ({letter}) {option}" for letter, option in zip(MMLU_LETTERS, r["options"])) + "\n\nAnswer:"}
            for r in rows]


def mmlu_letters(chooser, questions: list[dict]) -> list[list[str]]:
    probs = chooser.probabilities([q["question"] for q in questions], PREFILL, MMLU_LETTERS)
    return [[MMLU_LETTERS[int(p.argmax())]] for p in probs]


def mmlu_judged(questions: list[dict], letters: list[list[str]]) -> pd.DataFrame:
    return pd.DataFrame({"item_id": [q["id"] for q in questions], "variant": "no_opinion", "dataset": "mmlu",
                         "answer": [r[0] for r in letters],
                         "correct": [r[0] == q["answer"] for q, r in zip(questions, letters)]})


def mmlu_accuracy(judged: pd.DataFrame) -> Metric:
    return Metric([(1, judged["correct"].astype(float), every_row(judged))])


class _MMLU:
    """MMLU's one metric, in the shape the metric functions read a task in."""

    name, headline, fallback = "mmlu", "accuracy", None

    def metrics(self, judged):
        return {"accuracy": mmlu_accuracy(judged)}


MMLU = _MMLU()
