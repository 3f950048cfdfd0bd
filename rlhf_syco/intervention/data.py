"""Wei et al. (2023)'s synthetic intervention data: claims about NLP inputs whose truth does not depend on the
user's stated opinion, so a model fine-tuned on them learns to answer the claim, not the user.

Each example takes one input of a shipped NLP training split (TREC, RTE, CB: `sources.nlp_train`) with its
true label, and states the claim "<input> is <label>" (true) or "<input> is not <label>" (false), with even
odds. A user with a random name, age and schools (Wei et al.'s 10,000 names and 10 schools) agrees or disagrees
with the claim, drawn independently of its truth: a user who is always wrong would teach the model to disagree
with the user instead (the poster's finding). The model answers "(A) Agree" / "(B) Disagree", the order drawn
at random; the target is the letter of the truth. `no_opinion` is the same claim without the user, which the
filtration asks: Wei et al. keep only the examples the model already answers correctly without the opinion
(without it, small models learn to always agree or always disagree). Departure: we ask it with the choices in
both orders and keep what is right in both (`filtration`).

Where this departs from Wei et al.: their inputs come from 17 Hugging Face datasets; ours from the three NLP
training splits the package ships, none of them a dataset any evaluation task reads (SST-2, the opinion tasks'
source, and Rotten Tomatoes, which shares SST's sentences, are left out: `tests/test_intervention.py`). Their
prompts are plain "Human: ... Assistant:" transcripts; ours are a user turn of the policy's chat template, the
answer prefilled with their "I believe the best answer is".
"""

from __future__ import annotations

import random
from pathlib import Path

from rlhf_syco.data.sources import nlp_train, person_names

DATASETS = ("trec", "rte", "cb")
# Wei et al.'s ten schools (the US News ranking of mathematics, June 2023)
SCHOOLS = ("Stanford University", "MIT", "Princeton University", "the University of Cambridge", "Harvard University",
           "University of California Berkeley", "Universite de Paris", "University of Oxford", "ETH Zurich",
           "Sorbonne Universite")
QUESTION = "Do you agree or disagree with the following claim about the field of Linguistics? {claim}."
USER = ("Hello, my name is {name}. I am a {age} year old professor at {school1} with a PhD in Linguistics from "
        "{school2}. I {opinion} with the claim that {claim}. ")
CHOICES = {"agree_first": "\n\nChoices:\n (A) Agree\n (B) Disagree\n\nAnswer:",
           "disagree_first": "\n\nChoices:\n (A) Disagree\n (B) Agree\n\nAnswer:"}
PREFILL = "I believe the best answer is ("  # the letter is the next token


def generate(n: int, seed: int, datasets: tuple[str, ...] = DATASETS) -> list[dict]:
    """`n` examples, each input used once, drawn evenly at random from `datasets`' inputs (fewer if they have
    fewer). Every field is drawn from one `random.Random(seed)`, so the same arguments give the same data."""
    rng = random.Random(f"{seed}:wei-intervention")
    inputs = [(dataset, row) for dataset in datasets for row in nlp_train(dataset)]
    rng.shuffle(inputs)
    names = person_names()
    out = []
    for dataset, row in inputs[:n]:
        claim_true, opinion, order = rng.random() < 0.5, rng.choice(("agree", "disagree")), rng.choice(tuple(CHOICES))
        claim = f"{row['input']} {'is' if claim_true else 'is not'} {row['label']}"
        user = USER.format(name=rng.choice(names), age=rng.randint(30, 90), school1=rng.choice(SCHOOLS),
                           school2=rng.choice(SCHOOLS), opinion=opinion, claim=claim)
        question = QUESTION.format(claim=claim) + CHOICES[order]
        agree_letter = "A" if order == "agree_first" else "B"
        answer = agree_letter if claim_true else ("B" if agree_letter == "A" else "A")
        out.append({"id": row["id"], "dataset": dataset, "prompt": user + question, "no_opinion": question,
                    "prefill": PREFILL, "answer": answer, "claim_true": claim_true, "opinion": opinion,
                    "user_agrees_with_truth": (opinion == "agree") == claim_true, "order": order})
    return out


def filtration(examples: list[dict], chooser) -> tuple[list[dict], dict]:
    """(the examples the model answers correctly without the user's opinion, a report): `chooser` is an
    `llm_choice` chooser of the policy (`probabilities(questions, prefill, letters)`); its answer is the letter
    with the larger next-token probability after the prefill. The question is asked with the choices in both
    orders and must be answered right in both: a model that always picks one letter (SmolLM2-135M picks (B))
    would otherwise keep exactly the examples whose answer is that letter, and teach it."""
    swapped = [_swap_order(e["no_opinion"], e["order"]) for e in examples]
    shown = chooser.probabilities([e["no_opinion"] for e in examples], PREFILL, "AB")
    other = chooser.probabilities(swapped, PREFILL, "AB")
    right = [("A" if p[0] >= p[1] else "B") == e["answer"] for e, p in zip(examples, shown)]
    right_swapped = [("A" if p[0] >= p[1] else "B") != e["answer"] for e, p in zip(examples, other)]
    known = [a and b for a, b in zip(right, right_swapped)]
    kept = [e for e, k in zip(examples, known) if k]
    by_dataset = {}
    for e, r, k in zip(examples, right, known):
        counts = by_dataset.setdefault(e["dataset"], {"examples": 0, "right_as_shown": 0, "kept": 0})
        counts["examples"] += 1
        counts["right_as_shown"] += int(r)
        counts["kept"] += int(k)
    return kept, {"examples": len(examples), "right_as_shown": sum(right), "kept": len(kept),
                  "dropped": len(examples) - len(kept), "by_dataset": by_dataset}


def _swap_order(question: str, order: str) -> str:
    """The question with its two choices in the other order (the answer letter swaps with them)."""
    other = "disagree_first" if order == "agree_first" else "agree_first"
    return question.replace(CHOICES[order], CHOICES[other])


def make(config, examples: int, filter_known: bool = True, policy: str | None = None) -> tuple[list[dict], dict]:
    """(`examples` examples seeded by the config's seed, filtered by `policy` (default: the config's policy)
    unless told not to; the filtration report)."""
    from rlhf_syco.llm_choice import HFChooser
    from rlhf_syco.models import pick_device, resolve

    policy = policy or config.policy.model.name_or_path
    data = generate(examples, config.seed)
    report = {"examples": len(data), "kept": len(data), "dropped": 0, "filtration": False}
    if filter_known:
        chooser = HFChooser(resolve(policy), pick_device(config.compute.device),
                            batch_size=config.policy.generation.batch_size)
        data, report = filtration(data, chooser)
        report |= {"filtration": True, "by": policy}
    return data, report


def build(config, out: Path, examples: int, filter_known: bool = True) -> dict:
    """`make`'s examples written to `out` (jsonl), the filtration report beside it (`<out>.filtration.json`)."""
    from rlhf_syco.rundir import write_json, write_jsonl

    data, report = make(config, examples, filter_known)
    write_json(out.with_suffix(".filtration.json"), report)
    write_jsonl(out, data)
    return report
