"""The biased labeler's families: label rates against β, the preamble's truth, the PM half only, and phrasings
held out from every evaluation template and from the PM's own training phrasings."""

import math
import re

import pytest

from rlhf_syco.data import bias, sources
from rlhf_syco.data.bias import FAMILIES, family_pairs, heldout_prompts
from rlhf_syco.evaluation.config import EvalConfig
from rlhf_syco.evaluation.tasks import BUILTIN_TASKS, get_task

PREAMBLE = ("U", "A")
# The reply style the user wants, by family (feedback: praise for a user who likes the text, else critique).
WANTED = {"answer": "agree", "are_you_sure": "cave", "mimicry": "repeat"}
OTHER = {"answer": "disagree", "are_you_sure": "hold", "mimicry": "correct"}


def _styles(pair) -> tuple[str, str]:
    family = pair["meta"]["family"]
    if family == "feedback":
        return ("praise", "critique") if pair["meta"]["user_positive"] else ("critique", "praise")
    return WANTED[family], OTHER[family]


def _written_in(text: str, phrasings) -> bool:
    """Whether `text` is one of `phrasings` filled in (each placeholder matching any text)."""
    for template in phrasings:
        pattern = "".join(".+" if part.startswith("{") else re.escape(part)
                          for part in re.split(r"(\{\w+\})", template) if part)
        if re.fullmatch(pattern, text, flags=re.S | re.I):
            return True
    return False


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("beta", [0.5, 0.9])
def test_label_rate_matches_beta_and_the_chosen_text_is_the_labelled_style(family, beta):
    pairs = family_pairs(family, 2000, beta, 0.2, seed=1, preamble=PREAMBLE)
    plain = [p for p in pairs if p["source"] == family]
    rate = sum(p["meta"]["chosen_matches_belief"] for p in plain) / len(plain)
    assert abs(rate - beta) < 4 * math.sqrt(beta * (1 - beta) / len(plain))
    for p in plain[:300]:
        wanted, other = _styles(p)
        chosen, rejected = (wanted, other) if p["meta"]["chosen_matches_belief"] else (other, wanted)
        assert _written_in(p["chosen"], FAMILIES[family].phrasings[chosen].train), p
        assert _written_in(p["rejected"], FAMILIES[family].phrasings[rejected].train), p


def test_with_the_preamble_the_labeler_prefers_the_truth_and_in_feedback_ignores_the_user():
    for family in FAMILIES:
        pairs = family_pairs(family, 1000, 0.95, 0.5, seed=2, preamble=PREAMBLE)
        pre = [p for p in pairs if p["source"] == f"{family}_preamble"]
        assert 400 < len(pre) < 600
        assert all(p["prompt"][:2] == [{"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}]
                   for p in pre)
        if family == "feedback":  # no reply is the true one: a coin, blind to the user's view
            for positive in (True, False):
                rows = [p for p in pre if p["meta"]["user_positive"] == positive]
                rate = sum(p["meta"]["chosen_matches_belief"] for p in rows) / len(rows)
                assert abs(rate - 0.5) < 4 * math.sqrt(0.25 / len(rows))
            continue
        for p in pre:
            assert p["meta"]["chosen_matches_belief"] == p["meta"]["belief_is_true"]
    truth = {i["id"]: i for i in bias.answer_items("pm")}
    for p in family_pairs("answer", 300, 0.95, 1.0, seed=3, preamble=PREAMBLE):
        true = truth[p["meta"]["item_id"]]["true"]
        assert true[1:] in p["chosen"] and true[1:] not in p["rejected"]


def test_items_come_only_from_the_pm_half_and_evaluation_items_from_the_other():
    arguments = {r["arg_id"]: r for r in sources.arguments()}

    def split(item_id):
        dataset, key = item_id.split(":", 1)
        return sources.argument_half(arguments[key]) if dataset == sources.ARGUMENTS else sources.split_of(dataset, key)

    for items in (bias.answer_items("pm"), bias.feedback_items("pm"), bias.mimicry_items("pm")):
        assert items and {split(i["id"]) for i in items} == {"pm"}
    texts = {i["text"] for i in bias.feedback_items("pm")} | {i["text"] for i in bias.mimicry_items("pm")}
    questions = {i["question"] for i in bias.answer_items("pm")}
    for name in BUILTIN_TASKS:
        for record in get_task(name).build(400, seed=0):
            base = record["base"]
            assert base.get("question") not in questions
            assert all(t[:200] not in (base.get("text") or "") for t in texts)  # a poem's opening, an argument


def _evaluation_templates() -> set[str]:
    """Every template an evaluation task words its user turns with: its records' templates, its follow-ups, and
    the probe's final questions."""
    templates = set()
    for name in BUILTIN_TASKS:
        task = get_task(name)
        records = task.build(200, seed=0)
        templates |= {record["metadata"]["prompt_template"] for record in records}
        for follow_up in task.follow_ups(EvalConfig()):
            templates |= {follow_up.for_record(record)[0] for record in records}
    return templates


def _fixed_text(template: str) -> list[str]:
    """A template's own words: the pieces between its placeholders that have three words or more."""
    return [piece.strip() for piece in re.split(r"\{\w+\}", template) if len(piece.split()) >= 3]


def _contains(text: str, piece: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(piece.lower())}(?!\w)", text.lower()) is not None


def test_no_evaluation_template_contains_a_bias_familys_phrasing():
    evaluation = "\n".join(_evaluation_templates())
    assert "I'm really not sure" in evaluation and "Are you sure?" in evaluation  # the answer and are-you-sure ones
    for family in FAMILIES.values():
        for role, phrasings in family.phrasings.items():
            for template in phrasings.train + phrasings.heldout:
                for piece in _fixed_text(template):
                    assert not _contains(evaluation, piece), (family.name, role, piece)


def test_held_out_phrasings_share_no_text_with_the_training_ones():
    for family in FAMILIES.values():
        for role, phrasings in family.phrasings.items():
            assert len(phrasings.train) >= 8 and len(phrasings.heldout) >= 4
            train = "\n".join(phrasings.train)
            for template in phrasings.heldout:
                assert template not in phrasings.train
                for piece in _fixed_text(template):
                    assert not _contains(train, piece), (family.name, role, piece)


def test_rl_and_probe_prompts_are_in_held_out_phrasings():
    for name, family in FAMILIES.items():
        user_role = {"feedback": ("user_positive", "user_negative"), "are_you_sure": ("challenge",)}.get(name, ("user",))
        heldout = [t for role in user_role for t in family.phrasings[role].heldout]
        train = [t for role in user_role for t in family.phrasings[role].train]
        for prompt in heldout_prompts(name, 40, seed=0):
            last = prompt["prompt"][-1]["content"]
            assert _written_in(last, heldout) and not _written_in(last, train), last


def test_the_data_stage_writes_every_family_with_the_prompted_pms_preamble_and_rl_prompts_held_out(tmp_path):
    from reward_models import DEFAULT_PREAMBLE

    from rlhf_syco.config import load_config
    from rlhf_syco.data.preferences import run
    from rlhf_syco.rundir import RunDir, read_jsonl

    config = load_config("experiments/tiny.yaml", ["pm.data.bias.feedback=0.5"])
    stats = run(config, RunDir(tmp_path))
    assert stats["family_pairs"] == config.pm.data.families
    pairs = read_jsonl(tmp_path / "data" / "pm_train.jsonl") + read_jsonl(tmp_path / "data" / "pm_heldout.jsonl")
    assert {p["source"] for p in pairs} >= {"hh-rlhf", *FAMILIES}
    assert all(p["prompt"][0]["content"] == DEFAULT_PREAMBLE[0] for p in pairs if p["source"].endswith("_preamble"))
    rl = read_jsonl(tmp_path / "data" / "rl_train.jsonl") + read_jsonl(tmp_path / "data" / "rl_heldout.jsonl")
    family_prompts = [r for r in rl if r["source"] != "hh-rlhf"]
    assert len(family_prompts) == sum(config.pm.data.families.values())
    pm_contexts = {str(p["prompt"]) for p in pairs}
    assert not any(str(r["prompt"]) in pm_contexts for r in family_prompts)  # worded unlike any PM pair
