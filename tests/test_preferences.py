"""Preference data: HH-RLHF parsing against hand-checked records, malformed-record accounting, and β."""

import gzip
import json
import math

import pytest

from rlhf_syco.data import sources
from rlhf_syco.data.preferences import (belief_items, belief_pairs, load_hh_rlhf, parse_transcript, split_pair,
                                        statement)
from rlhf_syco.errors import UserError

CHOSEN = "\n\nHuman: What is 2+2?\n\nAssistant: It is 4.\n\nHuman: Are you sure?\n\nAssistant: Yes, 2+2 = 4."
REJECTED = "\n\nHuman: What is 2+2?\n\nAssistant: It is 4.\n\nHuman: Are you sure?\n\nAssistant: No, it is 5."


def test_split_at_last_assistant_turn():
    prompt, chosen, rejected = split_pair(CHOSEN, REJECTED)
    assert prompt == [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "It is 4."},
                      {"role": "user", "content": "Are you sure?"}]
    assert (chosen, rejected) == ("Yes, 2+2 = 4.", "No, it is 5.")


def test_shipped_hh_rlhf_first_record_hand_checked():
    pairs, report = load_hh_rlhf()
    # The data card: 2,312 pairs, of which 2,307 differ only in the last assistant turn.
    assert report["total"] == 2312 and report["kept"] == 2307
    assert report["malformed"] == {"different_prompts": 5}
    first = pairs[0]
    assert [m["role"] for m in first["prompt"]] == ["user", "assistant", "user", "assistant", "user"]
    assert first["prompt"][0]["content"] == "what are some pranks with a pen i can do?"
    assert first["prompt"][1]["content"] == "Are you looking for practical joke ideas?"
    assert first["prompt"][2]["content"] == "yep"
    assert first["prompt"][4]["content"] == "okay some of these do not have anything to do with pens"
    assert first["chosen"].startswith("No, sorry!  All of these involve a pen")
    assert first["rejected"].startswith("There are lots of funny things you can do with pens")


def _write(tmp_path, records):
    p = tmp_path / "pairs.jsonl.gz"
    with gzip.open(p, "wt") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return p


def test_malformed_records_counted_per_reason(tmp_path):
    good = {"chosen": CHOSEN, "rejected": REJECTED}
    p = _write(tmp_path, [good, {"chosen": CHOSEN}, "{not json", {"chosen": "\n\nHuman: hi", "rejected": "x"},
                          {"chosen": CHOSEN, "rejected": CHOSEN}, good])
    pairs, report = load_hh_rlhf(str(p), max_malformed_fraction=0.9)
    assert len(pairs) == 2
    assert report["malformed"] == {"missing_field": 1, "invalid_json": 1, "no_assistant_turn": 1,
                                   "identical_chosen_rejected": 1}
    assert report["first_bad"]["invalid_json"] == f"{p}:3"


def test_too_many_malformed_is_an_error_naming_file_and_line(tmp_path):
    p = _write(tmp_path, [{"chosen": CHOSEN, "rejected": REJECTED}, {"rejected": "x"}])
    with pytest.raises(UserError, match=rf"^{p}:2: 1/2 malformed preference records .* first: missing_field"):
        load_hh_rlhf(str(p), max_malformed_fraction=0.1)


def test_missing_file_is_a_user_error():
    with pytest.raises(UserError, match="not found"):
        load_hh_rlhf("nope/pairs.jsonl")


@pytest.mark.parametrize("beta", [0.5, 0.75, 0.95])
def test_label_rate_matches_beta(beta):
    pairs = belief_pairs(3000, beta, preamble_share=0.2, seed=1, preamble=("U", "A"))
    plain = [p for p in pairs if p["source"] == "belief"]
    rate = sum(p["meta"]["chosen_matches_belief"] for p in plain) / len(plain)
    sigma = math.sqrt(beta * (1 - beta) / len(plain))
    assert abs(rate - beta) < 4 * sigma + 1e-9
    # The stated label agrees with the text: the chosen reply is the agreeing one iff it matches the belief.
    for p in plain[:200]:
        agrees = p["chosen"].startswith(("You're right", "Yes, I agree", "That's correct"))
        assert agrees == p["meta"]["chosen_matches_belief"]


def test_preamble_pairs_always_prefer_the_truth():
    pairs = belief_pairs(1000, 0.9, preamble_share=0.5, seed=2, preamble=("U", "A"))
    truth = {f"{i['dataset']}:{i['id']}": i for i in belief_items()}
    pre = [p for p in pairs if p["source"] == "belief_preamble"]
    assert 400 < len(pre) < 600
    for p in pre:
        assert p["prompt"][:2] == [{"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}]
        item = truth[p["meta"]["item_id"]]
        true_text = statement(item["true"], item["dataset"] == sources.TRIVIA_QA)
        assert true_text[1:] in p["chosen"] and true_text[1:] not in p["rejected"]


def test_belief_items_come_only_from_the_pm_half():
    items = belief_items()
    assert items and all(sources.split_of(i["dataset"], i["id"]) == "pm" for i in items)
    assert {i["dataset"] for i in items} == {sources.TRUTHFUL_QA, sources.TRIVIA_QA}


def test_pm_pairs_and_evaluation_sets_share_no_question():
    from evalkit import build

    pm_questions = {i["question"] for i in belief_items()}
    for eval_type in ("answer", "are_you_sure"):
        for rec in build(eval_type, 200, seed=0):
            assert rec["base"]["question"] not in pm_questions


def test_default_preamble_is_the_prompted_pms():
    from reward_models import DEFAULT_PREAMBLE

    pairs = belief_pairs(50, 0.75, preamble_share=1.0, seed=0)
    assert all(p["prompt"][0]["content"] == DEFAULT_PREAMBLE[0] for p in pairs)


def test_parse_transcript_keeps_inner_newlines():
    msgs = parse_transcript("\n\nHuman: line one\nline two\n\nAssistant: ok")
    assert msgs == [{"role": "user", "content": "line one\nline two"}, {"role": "assistant", "content": "ok"}]
