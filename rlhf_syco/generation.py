"""Sampling replies from a policy behind one interface, so evaluation, best-of-n and PPO do not care which
engine runs it.

`Generator.generate(conversations, n, seed, prefill)` takes chat conversations (`[{"role", "content"}, ...]`,
ending with a user turn), an optional text per conversation that the assistant turn starts with (the reply is
what the model writes after it), and returns `n` replies per conversation. Backends are registered by name
(`policy.generation.backend`): `hf` runs transformers' `generate`; `vllm` is reserved.

Reproducibility: every batch draws from a torch RNG seeded with `derive_seed(seed, batch_index)` inside a forked
RNG state, so a batch's samples depend only on the seed, its index and its prompts, never on what ran before
(and the caller's RNG is left untouched). Temperature 0 means greedy decoding.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Protocol, Sequence

from rlhf_syco.config import GenerationConfig, ModelConfig
from rlhf_syco.errors import UserError

Conversation = list[dict]
# End-of-turn markers of common chat templates (ChatML, Llama 3, Gemma, Phi); whichever the vocabulary has
# stop generation, besides the tokenizer's and the model's own EOS ids.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")


class Generator(Protocol):
    def generate(self, conversations: Sequence[Conversation], n: int = 1, seed: int = 0,
                 prefill: Sequence[str | None] | None = None, *, max_new_tokens: int | None = None,
                 on_batch: Callable[[], None] | None = None) -> list[list[str]]:
        """`n` replies per conversation; `on_batch()` is called after each batch (for progress bars)."""
        ...


BACKENDS: dict[str, Callable[[ModelConfig, GenerationConfig, str], Generator]] = {}


def register_backend(name: str):
    """`@register_backend("name")` on a factory `(model_cfg, generation_cfg, device) -> Generator`."""
    def decorate(factory):
        BACKENDS[name] = factory
        return factory
    return decorate


def make_generator(model_cfg: ModelConfig, generation_cfg: GenerationConfig, device: str = "auto") -> Generator:
    if generation_cfg.backend not in BACKENDS:
        raise UserError(f"unknown generation backend {generation_cfg.backend!r}; known: {', '.join(BACKENDS)}",
                        "policy.generation.backend")
    return BACKENDS[generation_cfg.backend](model_cfg, generation_cfg, device)


def derive_seed(*parts) -> int:
    """A 63-bit seed from any parts, e.g. (seed, batch index): independent streams without shared state."""
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "little") >> 1


def to_chat(prompt: list[dict]) -> tuple[Conversation, str | None]:
    """A SycophancyEval prompt (`human`/`ai` turns) as chat messages, plus the trailing `ai` turn as prefill."""
    roles = {"human": "user", "ai": "assistant"}
    messages = [{"role": roles[turn["type"]], "content": turn["content"]} for turn in prompt]
    if messages and messages[-1]["role"] == "assistant":
        return messages[:-1], messages[-1]["content"]
    return messages, None


def stop_token_ids(model, tokenizer) -> list[int]:
    """Where a reply ends: the tokenizer's and the model's EOS and any end-of-turn token the vocabulary has."""
    vocab = tokenizer.get_vocab()
    model_eos = model.generation_config.eos_token_id
    model_eos = model_eos if isinstance(model_eos, list) else [model_eos]
    return sorted({i for i in [tokenizer.eos_token_id, *model_eos] if i is not None} |
                  {vocab[t] for t in END_OF_TURN_TOKENS if t in vocab})


class HFGenerator:
    """transformers `generate` with the KV cache, left padding and `generation.batch_size` prompts a batch."""

    def __init__(self, model, tokenizer, config: GenerationConfig):
        if tokenizer.chat_template is None:
            raise UserError("the policy's tokenizer has no chat template; use a chat model or set one")
        tokenizer.padding_side = "left"
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.stop_ids = stop_token_ids(model, tokenizer)

    def prompt_text(self, conversation: Conversation, prefill: str | None = None) -> str:
        """The chat template with the assistant's generation prompt, then the prefill, if any."""
        text = self.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        return text + (prefill or "")

    def generate(self, conversations, n=1, seed=0, prefill=None, *, max_new_tokens=None, on_batch=None):
        import torch

        prefill = list(prefill) if prefill is not None else [None] * len(conversations)
        if len(prefill) != len(conversations):
            raise ValueError(f"{len(prefill)} prefills for {len(conversations)} conversations")
        texts = [self.prompt_text(c, p) for c, p in zip(conversations, prefill)]
        sampling = self.config.temperature > 0
        options = dict(max_new_tokens=max_new_tokens or self.config.max_new_tokens, do_sample=sampling,
                       eos_token_id=self.stop_ids, pad_token_id=self.tokenizer.pad_token_id, use_cache=True)
        if sampling:
            options.update(temperature=self.config.temperature, top_p=self.config.top_p, top_k=0)
        size = self.config.batch_size
        replies: list[list[str]] = []
        for index, start in enumerate(range(0, len(texts), size)):
            batch = self.tokenizer(texts[start:start + size], return_tensors="pt", padding=True,
                                   add_special_tokens=False).to(self.model.device)
            with torch.random.fork_rng(devices=[self.model.device] if self.model.device.type == "cuda" else []), \
                    torch.inference_mode():
                if sampling and n > 1 and batch["input_ids"].shape[1] > 1:
                    batch = self._shared_prefix(batch, n)
                torch.manual_seed(derive_seed(seed, index))
                out = self.model.generate(**batch, **options)
            decoded = [self._decode(row) for row in out[:, batch["input_ids"].shape[1]:]]
            per_prompt = n if sampling else 1
            for i in range(0, len(decoded), per_prompt):
                replies.append(decoded[i:i + per_prompt] * (1 if sampling else n))
            if on_batch:
                on_batch()
        return replies

    def _shared_prefix(self, batch, n: int) -> dict:
        """The batch with each prompt repeated n times and its KV cache computed once and copied, instead of
        `num_return_sequences`, which runs the prompt through the model n times. All but the last prompt token
        are cached (generate needs one uncached token to start from); positions follow left padding as in
        generate."""
        from transformers import DynamicCache

        ids, mask = batch["input_ids"], batch["attention_mask"]
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
        cache = DynamicCache(config=self.model.config)
        self.model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1],
                   past_key_values=cache, use_cache=True, logits_to_keep=1)
        cache.batch_repeat_interleave(n)
        return {"input_ids": ids.repeat_interleave(n, 0), "attention_mask": mask.repeat_interleave(n, 0),
                "past_key_values": cache}

    def _decode(self, ids) -> str:
        """Text up to the first stop token, special tokens removed."""
        ids = ids.tolist()
        end = next((i for i, t in enumerate(ids) if t in self.stop_ids), len(ids))
        return self.tokenizer.decode(ids[:end], skip_special_tokens=True)


@register_backend("hf")
def _hf_backend(model_cfg: ModelConfig, generation_cfg: GenerationConfig, device: str) -> Generator:
    from rlhf_syco.models import load_causal_lm

    model, tokenizer = load_causal_lm(model_cfg, device)
    return HFGenerator(model, tokenizer, generation_cfg)


@register_backend("vllm")
def _vllm_backend(model_cfg: ModelConfig, generation_cfg: GenerationConfig, device: str) -> Generator:
    """Reserved for a vLLM engine: it would render prompts exactly as `HFGenerator.prompt_text` does and map
    the config onto `SamplingParams(n, temperature, top_p, max_tokens, seed=derive_seed(seed, i))`."""
    try:
        import vllm  # noqa: F401
    except ImportError:
        raise UserError("generation backend 'vllm' needs the vllm package (pip install vllm)",
                        "policy.generation.backend") from None
    raise UserError("generation backend 'vllm' is not implemented yet; use 'hf'", "policy.generation.backend")
