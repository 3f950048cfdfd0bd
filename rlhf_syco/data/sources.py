"""Paths and readers for the public data shipped inside the package (see sources/README.md)."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import re
from functools import lru_cache
from pathlib import Path

SOURCES = Path(__file__).resolve().parent / "sources"
# Dataset keys for `split_of` (SycophancyEval's `base.dataset` names). Every caller must use these.
TRUTHFUL_QA = "truthful_qa"
TRIVIA_QA = "trivia_qa"
ARGUMENTS, GSM8K, POEMS = "arguments", "gsm8k", "poems"  # split by `argument_half`, `id` and `id`


def source_path(relative: str) -> Path:
    return SOURCES / relative


def open_text(path: str | Path):
    path = Path(path)
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def split_of(dataset: str, item_id: str) -> str:
    """'pm' or 'eval': a fixed 50/50 split by item id, so PM training never sees evaluation items.

    The split is a hash of `dataset:item_id`, so it does not depend on file order or on which subset is
    loaded. TriviaQA items use their `id`; TruthfulQA items (which have none) use `truthfulqa_id(question)`.
    """
    h = hashlib.sha256(f"{dataset}:{item_id}".encode()).digest()
    return "pm" if h[0] % 2 == 0 else "eval"


def truthfulqa_id(question: str) -> str:
    return hashlib.sha256(question.strip().encode()).hexdigest()[:12]


@lru_cache(maxsize=None)
def truthfulqa() -> tuple[dict, ...]:
    """TruthfulQA rows: id, question, best_answer, best_incorrect, correct[], incorrect[], category, type."""
    with open_text(source_path("truthfulqa/TruthfulQA.csv.gz")) as f:
        rows = []
        for r in csv.DictReader(f):
            rows.append({
                "id": truthfulqa_id(r["Question"]),
                "question": r["Question"].strip(),
                "best_answer": r["Best Answer"].strip(),
                "best_incorrect": r["Best Incorrect Answer"].strip(),
                "correct": [a.strip() for a in r["Correct Answers"].split(";") if a.strip()],
                "incorrect": [a.strip() for a in r["Incorrect Answers"].split(";") if a.strip()],
                "category": r["Category"],
                "type": r["Type"],
            })
    return tuple(rows)


@lru_cache(maxsize=None)
def triviaqa() -> tuple[dict, ...]:
    """TriviaQA rows: id, question, answers[] (aliases, in no particular order)."""
    with open_text(source_path("triviaqa/triviaqa_test_1k.jsonl.gz")) as f:
        return tuple({"id": r["id"], "question": r["question"].strip(), "answers": r["golden_answers"]}
                     for r in map(json.loads, f))


def held_out(rows, dataset: str, half: str) -> list[dict]:
    return [r for r in rows if split_of(dataset, r["id"]) == half]


def read_jsonl(path: Path) -> list[dict]:
    with open_text(path) as f:
        return [json.loads(line) for line in f if line.strip()]


@lru_cache(maxsize=None)
def mmlu() -> tuple[dict, ...]:
    """MMLU test rows: id, subject, question, options[4], answer (index)."""
    with open_text(source_path("mmlu/mmlu_test.csv.gz")) as f:
        return tuple({"id": f"test-{i}", "subject": r["subject"], "question": r["question"].strip(),
                      "options": [r[f"choice{j}"].strip() for j in range(4)], "answer": int(r["answer"])}
                     for i, r in enumerate(csv.DictReader(f)))


@lru_cache(maxsize=None)
def math500() -> tuple[dict, ...]:
    return tuple(read_jsonl(source_path("math500/math500_test.jsonl.gz")))


@lru_cache(maxsize=None)
def aqua() -> tuple[dict, ...]:
    return tuple({**r, "id": f"test-{i}"} for i, r in enumerate(read_jsonl(source_path("aqua/test.json.gz"))))


@lru_cache(maxsize=None)
def gsm8k() -> tuple[dict, ...]:
    return tuple({**r, "id": f"test-{i}"} for i, r in enumerate(read_jsonl(source_path("gsm8k/test.jsonl.gz"))))


def argument_half(row: dict) -> str:
    """An argument's half, split on its first six words: the set holds near-copies ("X" and "X and more") that
    must fall in the same half."""
    return split_of(ARGUMENTS, " ".join(re.findall(r"\w+", row["argument"].lower())[:6]))


@lru_cache(maxsize=None)
def arguments() -> tuple[dict, ...]:
    with open_text(source_path("arguments/ibm_argkp_arguments_test.csv.gz")) as f:
        return tuple(csv.DictReader(f))


@lru_cache(maxsize=None)
def poems() -> tuple[dict, ...]:
    """Poems of at least four non-blank lines, with a readable id from author and title."""
    rows = []
    for r in read_jsonl(source_path("poems/poems_4b4v.jsonl.gz")):
        if sum(1 for line in r["text"].splitlines() if line.strip()) >= 4:
            slug = re.sub(r"[^a-z0-9]+", "-", f"{r['author']} {r['title']}".lower()).strip("-")
            rows.append({**r, "id": slug})
    return tuple(rows)


@lru_cache(maxsize=None)
def sst2() -> tuple[dict, ...]:
    """SST-2 dev sentences: id, label ("positive" / "negative"), sentence."""
    with open_text(source_path("sst2/stsa.binary.dev.gz")) as f:
        rows = (line.rstrip("\n").split(" ", 1) for line in f if line.strip())
        return tuple({"id": f"dev-{i}", "label": "positive" if label == "1" else "negative", "sentence": sentence}
                     for i, (label, sentence) in enumerate(rows))


# Wei et al.'s natural-language labels (google/sycophancy-intervention: pull_from_huggingface.py)
TREC_LABELS = {"ABBR": "Abbreviation", "ENTY": "Entity", "DESC": "Description or Abstract Concept",
               "HUM": "Human Being", "LOC": "Location", "NUM": "Numeric Value"}
ENTAILMENT_LABELS = {"entailment": "Entailment", "not_entailment": "Not Entailment", "contradiction": "Contradiction",
                     "neutral": "Neither Entailment Nor Contradiction"}


@lru_cache(maxsize=None)
def nlp_train(dataset: str) -> tuple[dict, ...]:
    """A shipped NLP training split as {id, input, label, labels}: `input` is Wei et al.'s quoted text (two
    fields joined by " and "), `label` the natural-language label and `labels` every label of the dataset."""
    if dataset == "trec":
        with open_text(source_path("nlp/trec_train.txt.gz")) as f:
            rows = [line.rstrip("\n").split(" ", 1) for line in f if line.strip()]
        return tuple({"id": f"trec-{i}", "input": _quoted(question), "label": TREC_LABELS[coarse.split(":")[0]],
                      "labels": tuple(TREC_LABELS.values())} for i, (coarse, question) in enumerate(rows))
    if dataset in ("rte", "cb"):
        names = {"rte": ("entailment", "not_entailment"), "cb": ("entailment", "contradiction", "neutral")}[dataset]
        return tuple({"id": f"{dataset}-{r['idx']}", "input": f"{_quoted(r['premise'])} and {_quoted(r['hypothesis'])}",
                      "label": ENTAILMENT_LABELS[r["label"]], "labels": tuple(ENTAILMENT_LABELS[n] for n in names)}
                     for r in read_jsonl(source_path(f"nlp/{dataset}_train.jsonl.gz")))
    raise KeyError(dataset)


def _quoted(text: str) -> str:
    return '"' + text.replace('"', "").replace("\n", "").strip() + '"'


@lru_cache(maxsize=None)
def person_names() -> tuple[str, ...]:
    """Wei et al.'s 10,000 names."""
    with open_text(source_path("intervention/names.txt.gz")) as f:
        return tuple(n.strip() for n in f.read().split(",") if n.strip())


@lru_cache(maxsize=None)
def political_typology() -> tuple[dict, ...]:
    """Anthropic's political-typology quiz with user biographies: {id, bio ("liberal" / "conservative"), prompt,
    question (the answer options, the same for every biography asking it), liberal (the liberal answer's
    letter)}. In both files `corrects` is the liberal answer, whatever the biography."""
    rows = []
    for bio in ("liberal", "conservative"):
        path = source_path(f"anthropic_evals/political_typology_quiz_liberal-bio_{bio}.jsonl.gz")
        for i, r in enumerate(read_jsonl(path)):
            rows.append({"id": f"{bio}-{i}", "bio": bio, "prompt": r["prompt"],
                         "question": r["prompt"][r["prompt"].find("\n (A)"):],
                         "liberal": r["corrects"][0].strip().strip("()")})
    return tuple(rows)
