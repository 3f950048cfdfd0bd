"""How often each judge agrees with hand labels: `rlhf-syco judge-check`.

The validation set (`rlhf_syco/data/judge_validation/`, labelling rules in its README) holds real replies
(SmolLM2 samples, the gpt-3.5 replies of the shipped are-you-sure files) and replies in the style of larger chat
models, a third of them hard cases (negation, echo without endorsement, apology without a switch, answers inside
derivations, alias variants, poets sharing a surname). Each judgment is compared with its label: accuracy, and
per label value its precision and recall, each with a 95% Wilson interval.

Two splits: the development set, whose disagreements the judges were revised on (in-sample figures), and a
held-out set (`heldout/`) labelled afterwards by a labeller who did not read the judges. Only the development
split lists its disagreements: revising a judge on held-out items would make them in-sample too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable

from rlhf_syco.data.sources import SOURCES
from rlhf_syco.errors import UserError
from rlhf_syco.evaluation.metrics import wilson_interval

VALIDATION = SOURCES.parent / "judge_validation"
SPLITS = {"development": VALIDATION, "heldout": VALIDATION / "heldout"}


def _answer(judges):
    from rlhf_syco.evaluation.answers import math_correct, read_answer

    def judge(item):
        if item["dataset"] == "math":
            return {"correct": math_correct(item["reply"], item["aliases"][0])}
        read = read_answer(item["reply"], item["aliases"], item["incorrect"], item.get("suggestion"),
                           sentence_answers=item["dataset"] == "truthful_qa", question=item["question"])
        out = {"correct": read["correct"]}
        if item.get("suggestion") is not None:
            out["endorses_suggestion"] = read["states_wrong"] if item["suggestion"] in item["incorrect"] else \
                read["correct"]
        return out
    return judge


def _are_you_sure(judges):
    from rlhf_syco.evaluation.judges import admits_mistake, parse_letter

    return lambda item: {"admits_mistake": admits_mistake(item["reply"], item["first_answer"], item["letters"]),
                         "final_letter": parse_letter(item["reply"], item["letters"])}


def _mimicry(judges):
    from rlhf_syco.evaluation.judges import attributes

    def judge(item):
        wrong, right = attributes(item["reply"], item["wrong_poet"], item["correct_poet"])
        return {"repeats_wrong": wrong, "names_correct": right, "mimics": wrong and not right}
    return judge


def _feedback(judges):
    def judge_all(items):
        p = judges["positivity"].prefer([i["subject"] for i in items], [i["comment_a"] for i in items],
                                        [i["comment_b"] for i in items])
        return [{"more_positive": "a" if x > 0.5 else "b" if x < 0.5 else "tie"} for x in p]
    judge_all.batched = True
    return judge_all


def _opinion(judges):
    from rlhf_syco.evaluation.judges import parse_sentiment

    return lambda item: {"sentiment": parse_sentiment(item["reply"])}


# file -> (judge name shown, builder of the judging function, label names)
CHECKS: dict[str, tuple[str, Callable, tuple[str, ...]]] = {
    "answer": ("answer (read_answer / math_correct)", _answer, ("correct", "endorses_suggestion")),
    "are_you_sure": ("are_you_sure (admits_mistake / parse_letter)", _are_you_sure, ("admits_mistake", "final_letter")),
    "mimicry": ("mimicry (attributes)", _mimicry, ("repeats_wrong", "names_correct", "mimics")),
    "feedback": ("feedback (positivity judge: {positivity})", _feedback, ("more_positive",)),
    "opinion": ("opinion (parse_sentiment)", _opinion, ("sentiment",)),
}


def load(name: str, folder: Path = VALIDATION) -> list[dict]:
    path = folder / f"{name}.jsonl"
    if not path.exists():
        raise UserError(f"no validation file {path}")
    items = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                items.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise UserError(f"invalid JSON ({e.msg})", f"{path}:{lineno}") from None
    return items


def check(names: Iterable[str] | None = None, judges: dict | None = None, folder: Path = VALIDATION,
          disagreements: bool = True) -> dict:
    """{file: {"judge", "items", "hard", "labels": {label: scores}[, "disagreements"]}}; judges =
    {"positivity": judge}."""
    from rlhf_syco.evaluation.judges import get_judge

    judges = judges if judges is not None else {"positivity": get_judge("vader")}
    out = {}
    for name in names or CHECKS:
        if name not in CHECKS:
            raise UserError(f"unknown judge check {name!r}; known: {', '.join(CHECKS)}")
        title, build, labels = CHECKS[name]
        items = load(name, folder)
        judge = build(judges)
        predicted = judge(items) if getattr(judge, "batched", False) else [judge(item) for item in items]
        labelled = [_labels(item, labels) for item in items]
        scores = {}
        for label in labels:
            pairs = [(want[label], got[label]) for want, got in zip(labelled, predicted) if label in want and label in got]
            hard = [(want[label], got[label]) for item, want, got in zip(items, labelled, predicted)
                    if item.get("hard") and label in want and label in got]
            scores[label] = {**agreement(pairs), "hard_accuracy": agreement(hard)["accuracy"]}
        out[name] = {"judge": title.format(positivity=type(judges["positivity"]).__name__), "items": len(items),
                     "hard": sum(bool(i.get("hard")) for i in items), "labels": scores}
        if disagreements:
            out[name]["disagreements"] = [
                {"id": item["id"], **{k: {"label": want[k], "judge": got[k]} for k in want
                                      if k in got and got[k] != want[k]}}
                for item, want, got in zip(items, labelled, predicted) if any(k in got and got[k] != want[k] for k in want)]
    return out


def _labels(item: dict, names: tuple[str, ...]) -> dict:
    """The item's labels among `names` ({"more_positive": "a"} for a feedback item's bare label); an
    endorsement label of null (no suggestion) is no label."""
    label = item["label"] if isinstance(item["label"], dict) else {names[0]: item["label"]}
    return {k: label[k] for k in names if k in label and not (k == "endorses_suggestion" and label[k] is None)}


def agreement(pairs: list[tuple]) -> dict:
    """Accuracy, and per label value precision and recall, with 95% Wilson intervals."""
    n = len(pairs)
    if n == 0:
        return {"n": 0, "accuracy": None}
    right = sum(a == b for a, b in pairs)
    result = {"n": n, "accuracy": _rate(right, n)}
    per_value = {}
    for value in sorted({a for a, _ in pairs} | {b for _, b in pairs}, key=str):
        predicted = [a for a, b in pairs if b == value]
        actual = [b for a, b in pairs if a == value]
        per_value[str(value)] = {"precision": _rate(sum(a == value for a in predicted), len(predicted)),
                                 "recall": _rate(sum(b == value for b in actual), len(actual))}
    result["per_value"] = per_value
    return result


def _rate(k: int, n: int) -> dict | None:
    if n == 0:
        return None
    low, high = wilson_interval(k / n, n)
    return {"value": k / n, "ci_low": low, "ci_high": high, "k": k, "n": n}


def run(config, run_dir, names: list[str] | None = None) -> dict:
    """`rlhf-syco judge-check`: every check (or `names`), with the config's positivity judge; writes
    `results/judge_check.json` and prints the table."""
    from rich.table import Table

    from rlhf_syco.evaluation.judges import get_judge
    from rlhf_syco.progress import console
    from rlhf_syco.rundir import write_json

    judges = {"positivity": get_judge(config.eval.positivity_judge, **config.eval.positivity_judge_options)}
    result = {split: check(names, judges, folder, disagreements=split == "development")
              for split, folder in SPLITS.items()}
    write_json(Path(run_dir) / "results" / "judge_check.json", result)
    table = Table(title="Judges against hand labels: development (in-sample) and held-out, 95% Wilson intervals")
    for column in ("judge", "label", "split", "n", "accuracy", "hard cases", "per value: precision / recall"):
        table.add_column(column)
    for name in result["development"]:
        for label in result["development"][name]["labels"]:
            for split, by_name in result.items():
                s = by_name[name]["labels"][label]
                if not s["n"]:
                    continue
                acc = s["accuracy"]
                per_value = "; ".join(f"{v}: {_short(x['precision'])} / {_short(x['recall'])}"
                                      for v, x in s["per_value"].items())
                table.add_row(by_name[name]["judge"], label, split, str(s["n"]),
                              f"{acc['value']:.3f} [{acc['ci_low']:.3f}, {acc['ci_high']:.3f}]",
                              _short(s["hard_accuracy"]), per_value)
    console.print(table)
    return result


def _short(rate: dict | None) -> str:
    return "n/a" if rate is None else f"{rate['value']:.2f}"
