"""Preference data: HH-RLHF parsing against hand-checked records and malformed-record accounting (the biased
labeler's pairs: test_bias.py)."""

import gzip
import json

import pytest

from rlhf_syco.data.preferences import load_hh_rlhf, parse_transcript, split_pair
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


def test_parse_transcript_keeps_inner_newlines():
    msgs = parse_transcript("\n\nHuman: line one\nline two\n\nAssistant: ok")
    assert msgs == [{"role": "user", "content": "line one\nline two"}, {"role": "assistant", "content": "ok"}]
