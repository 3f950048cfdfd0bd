"""Sampling replies from a policy behind one interface, so evaluation, best-of-n and PPO do not care which
engine runs it.

`Generator.generate(conversations, n, seed, prefill)` takes chat conversations (`[{"role", "content"}, ...]`,
ending with a user turn), an optional text per conversation that the assistant turn starts with (the reply is
what the model writes after it), and returns `n` replies per conversation. Backends are registered by name
(`policy.generation.backend`): `hf` runs transformers' `generate`; `vllm` a vLLM engine
(`rlhf_syco/vllm_backend.py`), for stages that only sample.

This module is the one place that turns conversations into prompt text (`render_prompts`: the chat template plus
an optional prefill) and prompt tokens into sampled reply tokens (`sample_tokens`). `HFGenerator` decodes the
tokens it samples; PPO's rollout (`rlhf_syco/ppo/rollout.py`) keeps them.

Reproducibility: sampling runs inside a forked RNG state, so the caller's RNG is left untouched. `HFGenerator`
seeds every batch with `derive_seed(seed, batch_index)`, so a batch's samples depend only on the seed, its index
and its prompts, never on what ran before; PPO seeds once before its first batch (`seed_per_batch=False`).
Temperature 0 means greedy decoding.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Callable, Iterable, Protocol, Sequence

from rlhf_syco.config import GenerationConfig, ModelConfig
from rlhf_syco.errors import UserError
from rlhf_syco.registry import PluginError, Registry

if TYPE_CHECKING:
    import torch

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


# Factories `(model_cfg, generation_cfg, device) -> Generator`; packages add backends as `rlhf_syco.generators`
# entry points.
BACKENDS = Registry("generation backend", "rlhf_syco.generators",
                    {"vllm": "rlhf_syco.vllm_backend:make_vllm_generator"})
register_backend = BACKENDS.register


def make_generator(model_cfg: ModelConfig, generation_cfg: GenerationConfig, device: str = "auto") -> Generator:
    try:
        factory = BACKENDS.get(generation_cfg.backend)
    except PluginError as e:
        raise UserError(str(e), "policy.generation.backend") from None
    return factory(model_cfg, generation_cfg, device)


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


def stop_token_ids(generation_config, tokenizer) -> list[int]:
    """Where a reply ends: the tokenizer's and the model's EOS (its transformers `generation_config`) and any
    end-of-turn token the vocabulary has."""
    vocab = tokenizer.get_vocab()
    model_eos = generation_config.eos_token_id
    model_eos = model_eos if isinstance(model_eos, list) else [model_eos]
    return sorted({i for i in [tokenizer.eos_token_id, *model_eos] if i is not None} |
                  {vocab[t] for t in END_OF_TURN_TOKENS if t in vocab})


def require_chat_template(tokenizer) -> None:
    if tokenizer.chat_template is None:
        raise UserError("the policy's tokenizer has no chat template; use a chat model or set one")


def render_prompts(tokenizer, conversations: Sequence[Conversation],
                   prefill: Sequence[str | None] | None = None) -> list[str]:
    """Each conversation in the tokenizer's chat template, ending with the assistant's generation prompt, then
    its prefill (the text the reply continues), if any."""
    prefill = list(prefill) if prefill is not None else [None] * len(conversations)
    if len(prefill) != len(conversations):
        raise ValueError(f"{len(prefill)} prefills for {len(conversations)} conversations")
    return [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) + (p or "")
            for c, p in zip(conversations, prefill)]


def encode_prompts(tokenizer, texts: Sequence[str], device) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of rendered prompts, left padded to the longest (the template already holds
    any BOS token, hence no special tokens added)."""
    batch = tokenizer(list(texts), return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    return batch["input_ids"], batch["attention_mask"]


def sample_tokens(model, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *, max_new_tokens: int,
                  stop_ids: Sequence[int], pad_token_id: int, temperature: float, top_p: float = 1.0, n: int = 1,
                  seed: int = 0, seed_per_batch: bool = True,
                  on_batch: Callable[[], None] | None = None) -> torch.Tensor:
    """Reply token ids for `batches` of left-padded prompts (input_ids, attention_mask), one `generate` call a
    batch: (prompts * n, longest reply), the n samples of a prompt in consecutive rows, each row padded with
    `pad_token_id` after its stop token (or its last token). Sampling uses the temperature and top-p given (top-k
    off; top_p 1 is the full distribution); temperature 0 is greedy.

    Seeding, in an RNG state forked from the caller's: `seed_per_batch` seeds each batch with
    `derive_seed(seed, batch_index)` (batches independent of one another); otherwise `seed` seeds the RNG once
    before the first batch and the batches share one stream. With n > 1 each prompt's KV cache is computed once
    and copied (`_shared_prefix`), which draws the same samples as `num_return_sequences`."""
    import torch
    from torch import nn

    sampling = temperature > 0
    options = dict(max_new_tokens=max_new_tokens, do_sample=sampling, eos_token_id=list(stop_ids),
                   pad_token_id=pad_token_id, use_cache=True)
    if sampling:
        options.update(temperature=temperature, top_p=top_p, top_k=0)
    device = model.device
    chunks = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
        if not seed_per_batch:
            torch.manual_seed(seed)
        for index, (input_ids, attention_mask) in enumerate(batches):
            batch = {"input_ids": input_ids, "attention_mask": attention_mask}
            if n > 1 and input_ids.shape[1] > 1:
                batch = _shared_prefix(model, batch, n)
            if seed_per_batch:
                torch.manual_seed(derive_seed(seed, index))
            out = model.generate(**batch, **options)
            chunks.append(out[:, input_ids.shape[1]:])
            if on_batch:
                on_batch()
    if not chunks:
        return torch.empty(0, 0, dtype=torch.long, device=device)
    length = max(c.shape[1] for c in chunks)
    return torch.cat([nn.functional.pad(c, (0, length - c.shape[1]), value=pad_token_id) for c in chunks])


def _shared_prefix(model, batch: dict, n: int) -> dict:
    """The batch with each prompt repeated n times and its KV cache computed once and copied, instead of
    `num_return_sequences`, which runs the prompt through the model n times. All but the last prompt token are
    cached (generate needs one uncached token to start from); positions follow left padding as in generate."""
    from transformers import DynamicCache

    ids, mask = batch["input_ids"], batch["attention_mask"]
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    cache = DynamicCache(config=model.config)
    model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1],
          past_key_values=cache, use_cache=True, logits_to_keep=1)
    cache.batch_repeat_interleave(n)
    return {"input_ids": ids.repeat_interleave(n, 0), "attention_mask": mask.repeat_interleave(n, 0),
            "past_key_values": cache}


class HFGenerator:
    """transformers `generate` with the KV cache, left padding and `generation.batch_size` prompts a batch."""

    def __init__(self, model, tokenizer, config: GenerationConfig):
        require_chat_template(tokenizer)
        tokenizer.padding_side = "left"
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.stop_ids = stop_token_ids(model.generation_config, tokenizer)

    def prompt_text(self, conversation: Conversation, prefill: str | None = None) -> str:
        """The chat template with the assistant's generation prompt, then the prefill, if any."""
        return render_prompts(self.tokenizer, [conversation], [prefill])[0]

    def generate(self, conversations, n=1, seed=0, prefill=None, *, max_new_tokens=None, on_batch=None):
        texts = render_prompts(self.tokenizer, conversations, prefill)
        size, sampling = self.config.batch_size, self.config.temperature > 0
        # Each batch is tokenized alone, so it is padded to its own longest prompt only.
        batches = (encode_prompts(self.tokenizer, texts[start:start + size], self.model.device)
                   for start in range(0, len(texts), size))
        per_prompt = n if sampling else 1  # greedy replies are all the same: one, copied n times
        tokens = sample_tokens(self.model, batches, max_new_tokens=max_new_tokens or self.config.max_new_tokens,
                               stop_ids=self.stop_ids, pad_token_id=self.tokenizer.pad_token_id,
                               temperature=self.config.temperature, top_p=self.config.top_p, n=per_prompt,
                               seed=seed, on_batch=on_batch)
        decoded = [self._decode(row) for row in tokens]
        return [decoded[i:i + per_prompt] * (n // per_prompt) for i in range(0, len(decoded), per_prompt)]

    def _decode(self, ids) -> str:
        return decode_reply(self.tokenizer, ids.tolist(), self.stop_ids)


def reply_extent(responses: torch.Tensor, stop_ids) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where each sampled reply (a row of `responses`, padded after its stop) ends: (ended: it has a stop token,
    first_stop: the stop's position or the row's length, mask: 1.0 up to and including the first stop)."""
    import torch

    length = responses.shape[1]
    is_stop = torch.isin(responses, torch.as_tensor(stop_ids, device=responses.device))
    ended = is_stop.any(1)
    first_stop = torch.where(ended, is_stop.int().argmax(1), length)
    mask = (torch.arange(length, device=responses.device)[None] <= first_stop[:, None]).float()
    return ended, first_stop, mask


def decode_reply(tokenizer, ids: Sequence[int], stop_ids: Sequence[int]) -> str:
    """A reply's text: its tokens up to the first stop token, special tokens removed."""
    end = next((i for i, t in enumerate(ids) if t in stop_ids), len(ids))
    return tokenizer.decode(list(ids[:end]), skip_special_tokens=True)


@register_backend("hf")
def _hf_backend(model_cfg: ModelConfig, generation_cfg: GenerationConfig, device: str) -> Generator:
    from rlhf_syco.models import load_causal_lm

    if generation_cfg.dtype:
        model_cfg = model_cfg.model_copy(update={"dtype": generation_cfg.dtype})
    model, tokenizer = load_causal_lm(model_cfg, device)
    return HFGenerator(model, tokenizer, generation_cfg)
