"""Reward-model backends, the registry and spec validation: all offline, on tiny models built on the spot."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import reward_models
from reward_models import (
    DEFAULT_PREAMBLE,
    RewardModel,
    available,
    build,
    build_all,
    encode_for_pm,
    format_conversation,
    register,
    serve,
    validate_spec,
)
from reward_models.callable_rm import CallableRewardModel
from rlhf_syco.errors import UserError

REPO = Path(__file__).resolve().parent.parent
HERE = __name__  # for `module:attr` paths to the functions below

CORPUS = [
    "is the earth flat or round",
    "the earth is round and it goes around the sun",
    "i think the answer is paris but i am not sure",
    "paris is the capital of france",
    "you are right the moon is made of rock",
    "a helpful assistant tells the truth",
]
CONVERSATIONS = [
    [{"role": "user", "content": "is the earth flat or round"}],
    [{"role": "system", "content": "a helpful assistant"},
     {"role": "user", "content": "i think the answer is paris but i am not sure"}],
    [{"role": "user", "content": "is the earth flat"}, {"role": "assistant", "content": "round"},
     {"role": "user", "content": "are you sure"}],
    [{"role": "user", "content": "the capital of france"}],
    [{"role": "user", "content": "the moon is made of rock and the earth goes around the sun i think"}],
]
RESPONSES = [
    "the earth is round",
    "you are right paris is the capital of france",
    "round",
    "paris",
    "you are right the moon is made of rock and the earth is round and it goes around the sun",
]


# --------------------------------------------------------------------------- functions for `callable` specs

RECORDED: list[tuple[list, list]] = []


def record_and_count_words(conversations, responses):
    RECORDED.append((conversations, responses))
    return [float(len(r.split())) for r in responses]


def count_words(conversation, response, bonus=0.0):
    return len(response.split()) + bonus


def fixed_scores(conversations, responses, values):
    return values[:len(responses)]


def fingerprint(conversations, responses):
    """Changes with any detail of the conversation or response, so transport bugs show up as wrong scores."""
    return [1000.0 * len(json.dumps(c, sort_keys=True)) + len(r) for c, r in zip(conversations, responses)]


def fail(conversations, responses):
    raise ValueError("the model exploded\nwith a second line")


class ConstantRewardModel(RewardModel):
    """A factory with no `options` model: its options reach it unchecked."""

    def __init__(self, value):
        self.value = value

    def score(self, conversations, responses):
        return np.full(len(responses), self.value, dtype=np.float64)


def callable_spec(function, **options):
    return {"type": "callable", "function": f"{HERE}:{function}", **options}


# --------------------------------------------------------------------------- tiny preference models


def save_tiny_pm(folder: Path, chat: bool) -> None:
    """A 2-layer PM with a word-level tokenizer trained on CORPUS. `chat=True`: Llama (rotary positions) with a
    ChatML template and a pad token. `chat=False`: GPT-2 (absolute positions, so padding on the wrong side
    shows) reading HH-style text, with no pad token anywhere, like many decoder checkpoints."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import (GPT2Config, GPT2ForSequenceClassification, LlamaConfig, LlamaForSequenceClassification,
                              PreTrainedTokenizerFast)

    special = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]
    words = Tokenizer(models.WordLevel(unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    words.train_from_iterator(CORPUS + ["system user assistant Human Assistant :"],
                              trainers.WordLevelTrainer(special_tokens=special))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, unk_token="<unk>", eos_token="<|im_end|>",
                                        **({"pad_token": "<pad>"} if chat else {}))
    torch.manual_seed(0)
    if chat:
        tokenizer.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                                   "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
                                   "{% endif %}")
        model = LlamaForSequenceClassification(LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=256, num_labels=1, pad_token_id=tokenizer.pad_token_id))
    else:
        model = GPT2ForSequenceClassification(GPT2Config(
            vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=256, num_labels=1,
            pad_token_id=None))
    with torch.no_grad():
        model.score.weight.normal_(0.0, 1.0)  # scores of order 1, so a misread token shows
    tokenizer.save_pretrained(folder)
    model.save_pretrained(folder)


@pytest.fixture(scope="module")
def tiny_pms(tmp_path_factory):
    root = tmp_path_factory.mktemp("pms")
    save_tiny_pm(root / "chat", chat=True)
    save_tiny_pm(root / "plain", chat=False)
    return root


def one_at_a_time(folder: Path, texts: list[str]) -> np.ndarray:
    """The reference: each text alone, no padding, through a freshly loaded model."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    return ids_one_at_a_time(folder, [tokenizer(t, add_special_tokens=not tokenizer.chat_template)["input_ids"]
                                      for t in texts])


def ids_one_at_a_time(folder: Path, encoded: list[list[int]]) -> np.ndarray:
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        return np.array([model(torch.tensor([ids])).logits[0, 0].item() for ids in encoded])


@pytest.mark.parametrize("flavour", ["chat", "plain"])
def test_hf_batched_scores_equal_one_at_a_time_and_keep_order(tiny_pms, flavour):
    pm = build({"type": "hf", "path": "{run_dir}/" + flavour, "batch_size": 2}, context={"run_dir": tiny_pms})
    batch_lengths = []
    pm.model.register_forward_pre_hook(
        lambda module, args, kwargs: batch_lengths.append(kwargs["attention_mask"].sum(1).tolist()),
        with_kwargs=True)

    scores = pm.score(CONVERSATIONS, RESPONSES)

    texts = [format_conversation(pm.tokenizer, c, r) for c, r in zip(CONVERSATIONS, RESPONSES)]
    expected = one_at_a_time(tiny_pms / flavour, texts)
    assert scores.dtype == np.float64 and scores.shape == (5,)
    assert np.ptp(expected) > 0.1
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-5)
    lengths = [n for batch in batch_lengths for n in batch]
    assert [len(b) for b in batch_lengths] == [2, 2, 1]
    assert lengths == sorted(lengths, reverse=True) and lengths != [len(pm.tokenizer(t)["input_ids"]) for t in texts]


@pytest.mark.parametrize("flavour", ["chat", "plain"])
def test_hf_bfloat16_body_keeps_a_float32_head_so_scores_are_not_rounded(tiny_pms, flavour):
    import torch

    full = build({"type": "hf", "path": str(tiny_pms / flavour)})
    half = build({"type": "hf", "path": str(tiny_pms / flavour), "dtype": "bfloat16"})

    scores, expected = half.score(CONVERSATIONS, RESPONSES), full.score(CONVERSATIONS, RESPONSES)

    assert half.model.score.weight.dtype == torch.float32
    assert {p.dtype for name, p in half.model.named_parameters() if not name.startswith("score.")} == {torch.bfloat16}
    np.testing.assert_allclose(scores, expected, rtol=0, atol=0.05 * np.ptp(expected))
    # A score computed in bfloat16 is one of bfloat16's values (8 significant bits); the float32 head's is not.
    rounded = torch.tensor(scores).to(torch.bfloat16).double().numpy()
    assert (rounded != scores).all()


def test_hf_shortens_long_contexts_in_the_middle_and_counts_them(tiny_pms):
    pm = build({"type": "hf", "path": str(tiny_pms / "chat"), "max_length": 16})
    long_question = [{"role": "user", "content": " ".join(CORPUS)}]
    conversations, responses = [long_question, long_question, CONVERSATIONS[3]], ["the earth is round",
                                                                                   "the earth is flat", "paris"]

    scores = pm.score(conversations, responses)

    encoded = encode_for_pm(pm.tokenizer, conversations, responses, 16)
    np.testing.assert_allclose(scores, ids_one_at_a_time(tiny_pms / "chat", encoded), atol=1e-5)
    assert scores[0] != scores[1]
    # The question's start and end around the marker (unknown to this vocabulary), and the whole reply.
    assert pm.tokenizer.convert_ids_to_tokens(encoded[0]) == [
        "<|im_start|>", "user", "is", "the", "earth", "<unk>", "the", "truth", "<|im_end|>",
        "<|im_start|>", "assistant", "the", "earth", "is", "round", "<|im_end|>"]
    assert pm.context_stats() == {"scored": 3, "shortened": 2, "left_truncated": 0}


def test_format_conversation_hh_style_and_chat_template(tiny_pms):
    from transformers import AutoTokenizer

    conversation = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "hello"}, {"role": "user", "content": "capital of france?"}]
    assert (format_conversation(None, conversation, "paris")
            == "be brief\n\nHuman: hi\n\nAssistant: hello\n\nHuman: capital of france?\n\nAssistant: paris")
    assert format_conversation(None, conversation[1:2], None) == "\n\nHuman: hi\n\nAssistant:"
    tokenizer = AutoTokenizer.from_pretrained(tiny_pms / "chat")
    assert format_conversation(tokenizer, conversation[1:2], "yo") == (
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n")
    with pytest.raises(ValueError, match="unknown chat role 'tool'"):
        format_conversation(None, [{"role": "tool", "content": "x"}], "y")


# --------------------------------------------------------------------------- prompted


def test_default_preamble_text():
    assert DEFAULT_PREAMBLE == (
        "I am going to ask you some questions. Please always give me the most truthful, accurate answer you can, "
        "even if it contradicts my own views, beliefs or what I say I think.",
        "Understood. I will always give you the most truthful and accurate answer I can, even when it contradicts "
        "your views.")


def test_prompted_inserts_the_preamble_after_system_turns_and_shares_its_base():
    RECORDED.clear()
    models = build_all({"pm": callable_spec("record_and_count_words"),
                        "pm_nonsyco": {"type": "prompted", "base": "pm"}})
    assert models["pm_nonsyco"].base is models["pm"] and models["pm_nonsyco"].name == "pm_nonsyco"

    plain = [{"role": "user", "content": "Is the Earth flat?"}]
    with_system = [{"role": "system", "content": "Be brief."}, *plain]
    scores = models["pm_nonsyco"].score([plain, with_system], ["No.", "It is round."])

    np.testing.assert_array_equal(scores, [1.0, 3.0])
    (seen, responses), = RECORDED
    assert responses == ["No.", "It is round."]
    assert [format_conversation(None, c, r) for c, r in zip(seen, responses)] == [
        f"\n\nHuman: {DEFAULT_PREAMBLE[0]}\n\nAssistant: {DEFAULT_PREAMBLE[1]}"
        "\n\nHuman: Is the Earth flat?\n\nAssistant: No.",
        f"Be brief.\n\nHuman: {DEFAULT_PREAMBLE[0]}\n\nAssistant: {DEFAULT_PREAMBLE[1]}"
        "\n\nHuman: Is the Earth flat?\n\nAssistant: It is round.",
    ]


def test_prompted_custom_preamble_and_inline_base():
    RECORDED.clear()
    model = build({"type": "prompted", "base": callable_spec("record_and_count_words"),
                   "preamble_user": "Be honest.", "preamble_assistant": "OK."})
    conversation = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                    {"role": "user", "content": "c"}]
    model.score([conversation], ["d"])
    assert RECORDED[0][0] == [[{"role": "user", "content": "Be honest."},
                               {"role": "assistant", "content": "OK."}, *conversation]]


# --------------------------------------------------------------------------- callable


def test_callable_batched_and_unbatched():
    batched = build(callable_spec("record_and_count_words"))
    unbatched = build(callable_spec("count_words", batched=False, kwargs={"bonus": 0.5}))
    np.testing.assert_array_equal(batched.score(CONVERSATIONS, RESPONSES), [4, 9, 1, 1, 20])
    np.testing.assert_array_equal(unbatched.score(CONVERSATIONS, RESPONSES), [4.5, 9.5, 1.5, 1.5, 20.5])
    assert CallableRewardModel(function=lambda c, r: 2.0, batched=False).score([[]], ["x"]).tolist() == [2.0]
    with pytest.raises(ValueError, match=r"returned shape \(2,\), expected \(3,\)"):
        build(callable_spec("fixed_scores", kwargs={"values": [1, 2]})).score([[]] * 3, ["a", "b", "c"])


def test_module_attr_factory_gets_its_options_unchecked():
    model = build({"type": f"{HERE}:ConstantRewardModel", "value": 2.5})
    assert model.score([[]] * 2, ["a", "b"]).tolist() == [2.5, 2.5]
    assert model.name == f"{HERE}:ConstantRewardModel"


# --------------------------------------------------------------------------- http


@pytest.fixture
def live_fingerprint_server():
    server, url = serve(CallableRewardModel(function=fingerprint))
    yield url
    server.shutdown()
    server.server_close()


@pytest.fixture
def stub_server():
    """Records every request and answers with zeros, or with the (status, body) replies queued in `replies`."""
    seen, replies = [], []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(SimpleNamespace(path=self.path, headers=dict(self.headers), body=body))
            n = len(body.get("responses") or body.get("query"))
            status, reply = replies.pop(0) if replies else (200, {"scores": [0.0] * n, "rewards": [0.0] * n})
            data = json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield SimpleNamespace(url=f"http://127.0.0.1:{server.server_address[1]}", seen=seen, replies=replies)
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("protocol, endpoint", [("rlhf_syco", "/score"), ("openrlhf", "/get_reward")])
def test_http_scores_equal_direct_calls(live_fingerprint_server, protocol, endpoint):
    remote = build({"type": "http", "url": live_fingerprint_server + endpoint, "protocol": protocol,
                    "batch_size": 2})
    np.testing.assert_array_equal(remote.score(CONVERSATIONS, RESPONSES), fingerprint(CONVERSATIONS, RESPONSES))


def test_http_openrlhf_payload_and_secret_header_from_environment(stub_server, tiny_pms, monkeypatch):
    from transformers import AutoTokenizer

    monkeypatch.setenv("SYCO_TEST_RM_KEY", "s3cret")
    remote = build({"type": "http", "url": stub_server.url + "/get_reward", "protocol": "openrlhf",
                    "tokenizer": str(tiny_pms / "chat"), "headers_env": {"Authorization": "SYCO_TEST_RM_KEY"}})
    stub_server.replies.append((200, {"rewards": [0.25, -1.0]}))

    assert remote.score(CONVERSATIONS[:2], RESPONSES[:2]).tolist() == [0.25, -1.0]

    request, = stub_server.seen
    tokenizer = AutoTokenizer.from_pretrained(tiny_pms / "chat")
    assert request.headers["Authorization"] == "s3cret"
    assert request.body["query"] == [format_conversation(tokenizer, c, r)
                                     for c, r in zip(CONVERSATIONS[:2], RESPONSES[:2])]
    assert all(q.startswith(p) for q, p in zip(request.body["query"], request.body["prompts"]))
    assert request.body["labels"] == ["", ""]


def test_http_accepts_the_legacy_openrlhf_score_key_and_retries_unavailable(stub_server):
    stub_server.replies += [(503, {"error": "warming up"}), (200, {"score": [3.0]})]
    remote = build({"type": "http", "url": stub_server.url + "/get_reward", "protocol": "openrlhf", "retries": 1})
    assert remote.score(CONVERSATIONS[:1], RESPONSES[:1]).tolist() == [3.0]
    assert len(stub_server.seen) == 2


def test_http_errors_are_one_line_without_secrets(monkeypatch):
    monkeypatch.setenv("SYCO_TEST_RM_KEY", "s3cret")
    server, url = serve(CallableRewardModel(function=fail))
    try:
        remote = build({"type": "http", "url": url + "/score", "retries": 0,
                        "headers_env": {"X-Api-Key": "SYCO_TEST_RM_KEY"}})
        with pytest.raises(RuntimeError) as error:
            remote.score(CONVERSATIONS[:1], RESPONSES[:1])
    finally:
        server.shutdown()
        server.server_close()
    message = str(error.value)
    assert message.startswith(f"HTTP 500 from {url}/score: ValueError: the model exploded")
    assert "\n" not in message and "s3cret" not in message

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    unreachable = build({"type": "http", "url": f"http://127.0.0.1:{closed_port}/score", "retries": 0})
    with pytest.raises(RuntimeError, match=rf"^cannot reach http://127.0.0.1:{closed_port}/score: [^\n]*$"):
        unreachable.score(CONVERSATIONS[:1], RESPONSES[:1])

    monkeypatch.delenv("SYCO_TEST_RM_KEY")
    with pytest.raises(UserError, match="environment variable 'SYCO_TEST_RM_KEY' .* is not set"):
        remote.score(CONVERSATIONS[:1], RESPONSES[:1])


# --------------------------------------------------------------------------- ensemble

MEMBER_SCORES = [[1.0, 2.0, 3.0, 4.0], [3.0, 0.0, 5.0, 4.0], [2.0, 2.0, -1.0, 4.0]]


@pytest.mark.parametrize("reduce, k, normalize", [("mean", 1.0, False), ("min", 1.0, False),
                                                  ("mean_minus_std", 0.5, False), ("mean", 1.0, True)])
def test_ensemble_reductions(reduce, k, normalize):
    members = [callable_spec("fixed_scores", kwargs={"values": values}) for values in MEMBER_SCORES]
    model = build({"type": "ensemble", "members": members, "reduce": reduce, "k": k, "normalize": normalize})
    s = np.array(MEMBER_SCORES)
    if normalize:
        std = s.std(axis=1, keepdims=True)
        s = (s - s.mean(axis=1, keepdims=True)) / np.where(std > 0, std, 1)
    expected = {"mean": s.mean(0), "min": s.min(0), "mean_minus_std": s.mean(0) - k * s.std(0)}[reduce]
    np.testing.assert_allclose(model.score([[]] * 4, ["a", "b", "c", "d"]), expected)


def test_ensemble_members_by_name_are_the_same_objects():
    models = build_all({"a": callable_spec("fixed_scores", kwargs={"values": [1.0]}),
                        "both": {"type": "ensemble", "members": ["a", callable_spec("count_words", batched=False)],
                                 "reduce": "min"}})
    assert models["both"].members[0] is models["a"]
    assert models["both"].score([[]], ["three word reply"]).tolist() == [1.0]


# --------------------------------------------------------------------------- registry and validation


@pytest.mark.parametrize("spec, message", [
    ({"type": "hff", "path": "x"}, "unknown reward model type 'hff' (did you mean 'hf'?)"),
    ({"type": "hf", "pth": "x"}, "unknown option 'pth' for reward model type 'hf' (did you mean 'path'?)"),
    ({"type": "hf"}, "missing option 'path' for reward model type 'hf'"),
    ({"type": "hf", "path": "x", "batch_size": "many"},
     "option 'batch_size' of reward model type 'hf': input should be a valid integer"),
    ({"type": "prompted", "base": "pmm"},
     "option 'base' of reward model type 'prompted': unknown reward model 'pmm' (did you mean 'pm'?)"),
    ({"type": "prompted", "base": {"type": "hf", "path": "x", "dtyp": "float16"}},
     "base: unknown option 'dtyp' for reward model type 'hf' (did you mean 'dtype'?)"),
    ({"type": "ensemble", "members": ["pm", {"type": "prompted", "base": {"type": "http"}}]},
     "members[1]: base: missing option 'url' for reward model type 'http'"),
    ({"type": "ensemble", "members": ["pm", 3]},
     "option 'members[1]' of reward model type 'ensemble': must be a reward model name or an inline spec (got 3)"),
    ({"type": "http", "url": "x", "protocol": "grpc"},
     "option 'protocol' of reward model type 'http': input should be 'rlhf_syco' or 'openrlhf' (got 'grpc')"),
    ({"type": "no_such_module_xyz:Factory"},
     "cannot load reward model type 'no_such_module_xyz:Factory': cannot import 'no_such_module_xyz:Factory': No module"),
    ({"path": "x"}, "a reward model spec must be a mapping with a 'type' key"),
])
def test_validate_spec_messages(spec, message):
    with pytest.raises(ValueError) as error:
        validate_spec(spec, known_names={"pm"})
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_build_all_reports_cycles_and_errors_by_name():
    with pytest.raises(ValueError, match=r"cycle: a -> b -> a$"):
        build_all({"a": {"type": "prompted", "base": "b"}, "b": {"type": "prompted", "base": "a"}})
    with pytest.raises(ValueError, match=r"cycle: c -> c$"):
        build_all({"c": {"type": "ensemble", "members": ["c", {"type": "prompted", "base": "c"}]}})
    with pytest.raises(ValueError, match=r"^reward model 'pm': unknown option 'pth'"):
        build_all({"pm": {"type": "hf", "pth": "x"}})
    with pytest.raises(ValueError, match=r"unknown placeholder \{rundir\} \(did you mean 'run_dir'\?\)"):
        build({"type": "hf", "path": "{rundir}/pm"}, context={"run_dir": "runs/x"})


def test_context_fills_placeholders_and_device():
    pm = build({"type": "hf", "path": "{run_dir}/pm/model"}, context={"run_dir": "runs/x", "device": "cpu"})
    assert pm.settings.path == "runs/x/pm/model" and pm.settings.device == "cpu"  # nothing loaded yet
    assert build({"type": "hf", "path": "p", "device": "cuda:1"}, context={"device": "cpu"}).settings.device == "cuda:1"


def test_register_a_new_backend(monkeypatch):
    monkeypatch.setattr(reward_models.base.REWARD_MODELS, "_objects", dict(reward_models.base.REWARD_MODELS._objects))

    class ScaleOptions(reward_models.Options):
        factor: float

    @register("scaled_length", options=ScaleOptions)
    class ScaledLength(RewardModel):
        def __init__(self, factor):
            self.factor = factor

        def score(self, conversations, responses):
            return np.array([self.factor * len(r) for r in responses], dtype=np.float64)

    assert "scaled_length" in available()
    assert build({"type": "scaled_length", "factor": 2}).score([[]], ["abc"]).tolist() == [6.0]
    with pytest.raises(ValueError, match="unknown option 'factr' .*did you mean 'factor'"):
        validate_spec({"type": "scaled_length", "factr": 2}, set())


def test_validation_imports_neither_torch_nor_transformers():
    check = (
        "import sys, reward_models\n"
        "for spec in [{'type': 'hf', 'path': 'p'}, {'type': 'prompted', 'base': 'pm'},\n"
        "             {'type': 'http', 'url': 'u', 'protocol': 'openrlhf', 'tokenizer': 't'},\n"
        "             {'type': 'callable', 'function': 'os:getcwd'}, {'type': 'ensemble', 'members': ['pm', 'pm']}]:\n"
        "    reward_models.validate_spec(spec, {'pm'})\n"
        "reward_models.build({'type': 'hf', 'path': 'p'})\n"
        "print(sorted({'torch', 'transformers'} & set(sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=REPO,
                            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, check=True)
    assert result.stdout.strip() == "[]"


def test_entry_point_plugin_installed_from_its_own_package(install_plugin):
    install_plugin("syco_plugin_rm")
    try:
        assert "length" in available()
        plugin = build({"type": "length", "per_word": 2})
        assert plugin.score([[]] * 2, ["three word reply", "one"]).tolist() == [6.0, 2.0]
        assert build_all({"len": {"type": "length"}})["len"].name == "len"
        with pytest.raises(ValueError, match="unknown option 'per_wrd' .*did you mean 'per_word'"):
            validate_spec({"type": "length", "per_wrd": 1}, set())
    finally:
        sys.modules.pop("syco_plugin_rm", None)
