"""The `intervene` stage on the tiny model: each method changes what it should and nothing else (LoRA merged into
the linear layers, a soft prompt baked into new tokens that compute what the PEFT model computed, k-shot only the
template, none nothing), training resumes after a SIGTERM to the same weights, the answers read from next-token
probabilities match a direct forward pass, and later stages take the intervened policy."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhf_syco.config import load_config
from rlhf_syco.errors import UserError
from rlhf_syco.evaluation import suite
from rlhf_syco.evaluation.tasks import get_task
from rlhf_syco.generation import render_prompts, to_chat
from rlhf_syco.intervention import methods
from rlhf_syco.intervention.data import PREFILL
from rlhf_syco.intervention.stage import base_model, mmlu_questions
from rlhf_syco.llm_choice import HFChooser, shared_prefix_length
from rlhf_syco.models import resolve
from rlhf_syco.rundir import read_json, read_jsonl
from rlhf_syco.stages import open_run, run_stage

TINY = Path(__file__).resolve().parent.parent / "experiments" / "tiny.yaml"
SMALL = ["intervene.filtration=false", "intervene.examples=40", "intervene.max_steps=4", "intervene.prompt_tokens=4",
         "intervene.check_items=10", "intervene.mmlu_items=20", "intervene.batch_size=4"]


def run_stages(config) -> Path:
    """Every stage of `config` in this process; the run folder."""
    run_dir = open_run(config)
    try:
        for stage in config.stages:
            run_stage(stage, config, run_dir)
    finally:
        run_dir.unlock()
    return run_dir.path


def run_intervene(runs: Path, method: str, *extra: str):
    config = load_config(TINY, [f"runs_dir={runs}", f"name={method}", f"intervene.method={method}",
                                "stages=[intervene]", *SMALL, *extra])
    return config, run_stages(config)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root, out = tmp_path_factory.mktemp("intervene"), {}

    def get(method):
        if method not in out:
            out[method] = run_intervene(root, method)
        return out[method]

    return get


def base_weights():
    return load_file(Path(resolve("tiny:decoder")) / "model.safetensors")


def policy_weights(run: Path):
    return load_file(run / "intervene" / "policy" / "model.safetensors")


def test_lora_changes_exactly_the_linear_layers_by_a_rank_r_update(runs):
    config, run = runs("lora")
    base, merged = base_weights(), policy_weights(run)
    assert merged.keys() == base.keys()
    model = AutoModelForCausalLM.from_pretrained(resolve("tiny:decoder"))
    linear = {f"{name}.weight" for name, m in model.named_modules()
              if isinstance(m, torch.nn.Linear) and name != "lm_head"}
    r = config.intervene.lora.r
    for key in base:
        change = merged[key] - base[key]
        if key in linear:
            assert change.abs().max() > 0 and torch.linalg.matrix_rank(change) <= r, key
        else:
            torch.testing.assert_close(merged[key], base[key], rtol=0, atol=0)
    expected = sum(r * (m.in_features + m.out_features) for name, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear) and name != "lm_head")
    summary = read_json(run / "results" / "intervention.json")
    assert summary["trainable_parameters"] == expected and summary["steps"] == 4


def test_full_fine_tuning_changes_the_weights_and_keeps_the_tokenizer(runs):
    _, run = runs("full")
    base, tuned = base_weights(), policy_weights(run)
    assert any((tuned[k] - base[k]).abs().max() > 0 for k in base)
    assert AutoTokenizer.from_pretrained(run / "intervene" / "policy").get_vocab() == \
        AutoTokenizer.from_pretrained(resolve("tiny:decoder")).get_vocab()


def test_kshot_changes_only_the_template_which_puts_the_shots_before_every_conversation(runs):
    config, run = runs("kshot")
    folder, base = run / "intervene" / "policy", Path(resolve("tiny:decoder"))
    assert os.path.realpath(folder / "model.safetensors") == os.path.realpath(base / "model.safetensors")
    shots = read_jsonl(run / "intervene" / "train.jsonl")
    assert len(shots) == config.intervene.shots == 3
    turns = []
    for shot in shots:
        turns += [{"role": "user", "content": shot["prompt"]},
                  {"role": "assistant", "content": f"{PREFILL}{shot['answer']})"}]
    mine, theirs = AutoTokenizer.from_pretrained(folder), AutoTokenizer.from_pretrained(base)
    question = [{"role": "user", "content": "Is 2 + 2 = 5? \u00e9 \"quoted\"\nnew line"}]
    assert render_prompts(mine, [question]) == render_prompts(theirs, [turns + question])
    system = [{"role": "system", "content": "Be brief."}]
    assert mine.apply_chat_template(system + question, tokenize=False) == \
        theirs.apply_chat_template(system + turns + question, tokenize=False)


def test_none_links_the_base_and_checks_it_once(runs):
    _, run = runs("none")
    folder, base = run / "intervene" / "policy", Path(resolve("tiny:decoder"))
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in base.iterdir() if p.is_file())
    assert all(os.path.realpath(p) == os.path.realpath(base / p.name) for p in folder.iterdir())
    check = pd.read_csv(run / "results" / "intervention_check.csv")
    assert set(check["policy"]) == {"before"}


def test_the_baked_soft_prompt_computes_what_the_peft_model_did(tmp_path):
    config = load_config(TINY, [f"runs_dir={tmp_path}", "intervene.method=prompt_tuning", *SMALL])
    base = resolve("tiny:decoder")
    examples = [{"prompt": f"Is {i} even?", "answer": "AB"[i % 2]} for i in range(16)]
    trained = methods.train(config, examples, base, tmp_path)
    peft_model, tokenizer = trained["model"].eval(), trained["tokenizer"]
    vectors = peft_model.get_prompt_embedding_to_save(adapter_name="default").detach().clone()
    question = [{"role": "user", "content": "Is 7 even?"}]
    ids = tokenizer(render_prompts(tokenizer, [question])[0], return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits[0, -ids.shape[1]:]  # PEFT's logits include the virtual tokens
    model, baked_tokenizer = methods.as_plain_model("prompt_tuning", peft_model, tokenizer)
    baked = baked_tokenizer(render_prompts(baked_tokenizer, [question])[0], return_tensors="pt",
                            add_special_tokens=False).input_ids
    assert baked.shape[1] == ids.shape[1] + 4 and baked[0, 4:].tolist() == ids[0].tolist()
    with torch.no_grad():
        got = model.eval()(input_ids=baked).logits[0, 4:]
    vocab = expected.shape[-1]
    torch.testing.assert_close(got[:, :vocab], expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(model.get_input_embeddings().weight[-4:], vectors, rtol=0, atol=0)
    assert (got[:, vocab:] == 0).all()  # the new tokens' output rows are zero


def test_prompt_tuning_writes_a_plain_policy_with_its_prompt_as_tokens(runs):
    _, run = runs("prompt_tuning")
    folder = run / "intervene" / "policy"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompt = render_prompts(tokenizer, [[{"role": "user", "content": "hi"}]])[0]
    assert prompt.startswith("".join(methods.SOFT_TOKEN.format(i) for i in range(4)))
    base, tuned = base_weights(), policy_weights(run)
    vocab = base["model.embed_tokens.weight"].shape[0]
    for key in base:
        if key != "model.embed_tokens.weight":
            torch.testing.assert_close(tuned[key], base[key], rtol=0, atol=0)
    torch.testing.assert_close(tuned["model.embed_tokens.weight"][:vocab], base["model.embed_tokens.weight"],
                               rtol=0, atol=0)
    assert tuned["lm_head.weight"].shape[0] == vocab + 4 and (tuned["lm_head.weight"][vocab:] == 0).all()


def test_letters_read_from_next_token_probabilities_match_a_direct_forward():
    task = get_task("addition")
    records = task.build(6, 0)
    path = resolve("tiny:decoder")
    replies = suite.read_letters(HFChooser(path, batch_size=4), task, records)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    ids_ab = [tokenizer(PREFILL + x, add_special_tokens=False).input_ids[-1] for x in "AB"]
    for record, reply in zip(records, replies):
        messages, prefill = to_chat(record["prompt"])
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + prefill
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, -1, ids_ab]
        assert reply == ["AB"[int(logits.argmax())]]


def test_letters_of_prompts_sharing_a_long_prefix_match_one_forward_each():
    """k-shot prompts: the examples' KV cache, run once and copied into batches whose shorter prompts are padded
    after it, gives each prompt's letters as its own whole forward pass does."""
    path = resolve("tiny:decoder")
    shots = [{"role": "user", "content": "Is 2 + 2 = 4? (A) Agree (B) Disagree"},
             {"role": "assistant", "content": PREFILL + "A)"}]
    questions = [shots + [{"role": "user", "content": "Is " + " + ".join(["1"] * k) + f" = {k}?"}]
                 for k in (1, 9, 2, 5, 3, 14, 4)]
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    ids = [tokenizer(PREFILL + x, add_special_tokens=False).input_ids[-1] for x in "AB"]
    expected = []
    for messages in questions:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + PREFILL
        with torch.no_grad():
            logits = model(input_ids=tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids)
        expected.append(logits.logits[0, -1, ids].softmax(-1).numpy())
    chooser = HFChooser(path, batch_size=3)
    encoded = [tokenizer(chooser.prompt(q, PREFILL), add_special_tokens=False).input_ids for q in questions]
    shots_text = tokenizer.apply_chat_template(shots, tokenize=False)
    shot_tokens = len(tokenizer(shots_text, add_special_tokens=False).input_ids)
    assert shared_prefix_length(encoded) >= shot_tokens // 2  # the examples are cached, not just a token or two
    for share in (True, False):
        chooser.share_prefix = share
        got = chooser.probabilities(questions, PREFILL, "AB")
        np.testing.assert_allclose(got, np.array(expected), atol=1e-5)


def test_the_shared_prefix_leaves_every_prompt_a_token_of_its_own():
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 3, 4, 6]]) == 3
    assert shared_prefix_length([[1, 2], [1, 2, 3]]) == 1  # [1, 2] needs its last token to read from
    assert shared_prefix_length([[7, 1], [8, 1]]) == 0
    assert shared_prefix_length([[1, 2, 3]]) == 2
    assert shared_prefix_length([]) == 0


def test_the_check_is_recomputed_from_its_answers(runs):
    config, run = runs("lora")
    check = pd.read_csv(run / "results" / "intervention_check.csv")
    questions = mmlu_questions(config.intervene.mmlu_items, config.seed)
    for label, folder in (("before", resolve("tiny:decoder")), ("after", run / "intervene" / "policy")):
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder).eval()
        letters = [tokenizer(PREFILL + x, add_special_tokens=False).input_ids[-1] for x in "ABCD"]
        right = 0
        for q in questions:
            text = render_prompts(tokenizer, [[{"role": "user", "content": q["question"]}]], [PREFILL])[0]
            with torch.no_grad():
                logits = model(input_ids=tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids)
            right += "ABCD"[int(logits.logits[0, -1, letters].argmax())] == q["answer"]
        row = check[(check["type"] == "mmlu") & (check["policy"] == label)].iloc[0]
        assert row["value"] == pytest.approx(right / len(questions)) and row["n"] == len(questions)
    rows = check.set_index(["type", "metric", "policy"])["value"]
    for (type_, metric, policy), value in rows.items():
        if policy == "after - before" and not pd.isna(value):
            assert value == pytest.approx(rows[type_, metric, "after"] - rows[type_, metric, "before"])


def test_later_stages_take_the_intervened_policy(tmp_path):
    config = load_config(TINY, [f"runs_dir={tmp_path}", "name=composed", "intervene.method=kshot",
                                "intervene.base=tiny:decoder", "policy.model.name_or_path={run_dir}/intervene/policy",
                                "eval.types=[addition]", "stages=[intervene,eval]", *SMALL])
    assert config.policy.model.name_or_path == str(tmp_path / "composed" / "intervene" / "policy")
    summary = read_jsonl(run_stages(config) / "results" / "eval_summary.jsonl")
    assert {r["model"] for r in summary} == {config.policy.model.name_or_path}
    with pytest.raises(UserError, match="intervene.base"):
        base_model(load_config(TINY, ["policy.model.name_or_path={run_dir}/intervene/policy"]))


@pytest.mark.slow
def test_sigterm_stops_training_with_a_checkpoint_and_a_rerun_resumes_to_the_same_weights(tmp_path):
    args = [TINY, "intervene.method=lora", "intervene.filtration=false", "intervene.examples=80",
            "intervene.max_steps=30", "intervene.batch_size=2", "intervene.save_steps=10", "intervene.check_items=2",
            "intervene.mmlu_items=2"]
    cmd = [sys.executable, "-m", "rlhf_syco.cli", "intervene", *map(str, args)]
    (tmp_path / "ref").mkdir()
    subprocess.run(cmd, cwd=tmp_path / "ref", check=True, capture_output=True, timeout=300)
    (tmp_path / "stop").mkdir()
    proc = subprocess.Popen(cmd, cwd=tmp_path / "stop", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ckpts = tmp_path / "stop" / "runs" / "tiny" / "intervene" / "checkpoints"
    deadline = time.time() + 240
    while not (ckpts / "checkpoint-10" / "SEALED.json").exists() and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    message = " ".join(stderr.split())
    assert proc.returncode == 143 and "Traceback" not in stderr, stderr[-3000:]
    step = int(message.split("intervene: stopped by SIGTERM after step ")[1].split(",")[0])
    assert 10 <= step < 30 and not (tmp_path / "stop" / "runs" / "tiny" / "intervene" / "policy").exists()
    subprocess.run(cmd, cwd=tmp_path / "stop", check=True, capture_output=True, timeout=300)
    summary = read_json(tmp_path / "stop" / "runs" / "tiny" / "results" / "intervention.json")
    assert summary["resumed_from"] == f"checkpoint-{step}" and summary["steps"] == 30
    ref = load_file(tmp_path / "ref" / "runs" / "tiny" / "intervene" / "policy" / "model.safetensors")
    got = load_file(tmp_path / "stop" / "runs" / "tiny" / "intervene" / "policy" / "model.safetensors")
    for key in ref:
        torch.testing.assert_close(got[key], ref[key], rtol=0, atol=1e-6)


def test_a_run_made_before_the_intervene_section_existed_reopens(tmp_path):
    import json

    config = load_config(TINY, [f"runs_dir={tmp_path}"])
    open_run(config).unlock()
    manifest = tmp_path / "tiny" / "manifest.json"
    data = json.loads(manifest.read_text())
    del data["config"]["intervene"]
    del data["config"]["ppo"]["value_head"]  # a key added to a section later
    manifest.write_text(json.dumps(data))
    open_run(config).unlock()  # the missing section and key read as their defaults
    with pytest.raises(UserError, match="first difference: intervene.method"):
        open_run(load_config(TINY, [f"runs_dir={tmp_path}", "intervene.method=kshot"]))


@pytest.mark.slow
def test_best_of_n_and_ppo_start_from_the_intervened_policy(tmp_path):
    """experiments/intervention.yaml's composition on the tiny model: best-of-N and PPO run on the policy the
    intervene stage wrote."""
    config = load_config(TINY, [f"runs_dir={tmp_path}", "name=composed", "intervene.method=lora",
                                "intervene.base=tiny:decoder", "policy.model.name_or_path={run_dir}/intervene/policy",
                                "stages=[intervene,data,pm,bon,ppo]", "bon.types=[addition,answer]",
                                "eval.types=[addition,answer]", *SMALL])
    run = run_stages(config)
    policy = str(tmp_path / "composed" / "intervene" / "policy")
    assert read_json(run / "manifest.json")["config"]["policy"]["model"]["name_or_path"] == policy
    curves = pd.read_csv(run / "results" / "bon_curves.csv")
    assert {"addition", "answer"} <= set(curves["type"])
    ppo = pd.read_csv(run / "results" / "ppo_curves.csv")
    assert set(ppo["step"]) == {0, 2, 4} and {"addition", "answer"} <= set(ppo["type"])


def test_the_report_lists_each_methods_before_and_after(runs, tmp_path):
    from rlhf_syco.report import build

    paths = [runs(method)[1] for method in ("lora", "kshot")]
    build(paths, tmp_path / "report")
    table = pd.read_csv(tmp_path / "report" / "intervention.csv")
    for path in paths:
        method = read_json(path / "results" / "intervention.json")["method"]
        check = pd.read_csv(path / "results" / "intervention_check.csv")
        check = check[check["headline"].astype(bool)]
        mine = table[table["method"] == method].set_index(["type", "metric", "policy"])
        for row in check.itertuples():  # one run per group: its own values and CIs
            got = mine.loc[(row.type, row.metric, row.policy)]
            for column in ("value", "ci_low", "ci_high"):
                expected = getattr(row, column)
                assert (pd.isna(expected) and pd.isna(got[column])) or got[column] == pytest.approx(expected)
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## Interventions" in text and "| lora | 40 / 40 | 4 | addition | accuracy_drop |" in text


def test_instruction_examples_are_mixed_in_at_the_ratio():
    from rlhf_syco.intervention.data import generate
    from rlhf_syco.intervention.stage import mixed

    examples = generate(20, 0)
    config = load_config(TINY, ["intervene.method=lora", "intervene.instruction_ratio=0.2"])
    rows = mixed(config, examples)
    instructions = [r for r in rows if r["dataset"] == "hh-rlhf"]
    # Wei et al.'s 5 : 1, shuffled
    assert len(rows) == 24 and len(instructions) == 4 and rows != examples + instructions
    sft = methods.sft_rows(instructions)
    assert all(r["prompt"][-1]["role"] == "user" and r["completion"][0]["content"] for r in sft)
    assert methods.sft_rows(examples[:1])[0]["completion"][0]["content"] == f"{PREFILL}{examples[0]['answer']})"
    assert mixed(load_config(TINY, ["intervene.method=kshot"]), examples) == \
        mixed(load_config(TINY, ["intervene.method=kshot"]), examples) and \
        len(mixed(load_config(TINY, ["intervene.method=kshot"]), examples)) == 3


def test_runs_whose_policy_is_their_own_output_group_by_what_else_differs(tmp_path):
    import json

    from rlhf_syco.report import label_runs

    for name, method in (("a", "lora"), ("b", "none")):
        config = load_config(TINY, [f"runs_dir={tmp_path}", f"name={name}", f"intervene.method={method}",
                                    "policy.model.name_or_path={run_dir}/intervene/policy"])
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text(json.dumps({"config": config.dump()}))
    assert list(label_runs([tmp_path / "a", tmp_path / "b"])["group"]) == ["method=lora", "method=none"]
