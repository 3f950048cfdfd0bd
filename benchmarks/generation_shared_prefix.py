"""n samples per prompt: one prompt pass whose KV cache is copied n times (ours) against transformers'
`num_return_sequences` (the prompt run n times), side by side on the same batches, seeds and model.

    python benchmarks/generation_shared_prefix.py [--n 8] [--types answer,feedback] [--threads 2]

Prints seconds for both, the ratio, and whether the samples are identical (they should be: same seed, same
random numbers). Default: SmolLM2-135M-Instruct on the default experiment's best-of-N prompts.
"""

from __future__ import annotations

import argparse
import time

import torch

from rlhf_syco.config import load_config
from rlhf_syco.evaluation.tasks import get_task
from rlhf_syco.generation import HFGenerator, derive_seed, to_chat
from rlhf_syco.models import load_causal_lm


def transformers_n(generator: HFGenerator, conversations, prefills, n: int, seed: int, max_new_tokens: int):
    """`HFGenerator.generate` as it would be with `num_return_sequences=n` instead of the shared cache."""
    tok, size, replies = generator.tokenizer, generator.config.batch_size, []
    texts = [generator.prompt_text(c, p) for c, p in zip(conversations, prefills)]
    for index, start in enumerate(range(0, len(texts), size)):
        batch = tok(texts[start:start + size], return_tensors="pt", padding=True, add_special_tokens=False)
        torch.manual_seed(derive_seed(seed, index))
        with torch.inference_mode():
            out = generator.model.generate(**batch, do_sample=True, temperature=generator.config.temperature,
                                           top_p=generator.config.top_p, top_k=0, max_new_tokens=max_new_tokens,
                                           num_return_sequences=n, eos_token_id=generator.stop_ids,
                                           pad_token_id=tok.pad_token_id, use_cache=True)
        decoded = [generator._decode(row) for row in out[:, batch["input_ids"].shape[1]:]]
        replies += [decoded[i:i + n] for i in range(0, len(decoded), n)]
    return replies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default=None)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--types", default="answer,feedback,mimicry")
    parser.add_argument("--items", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_config(args.config)
    model, tokenizer = load_causal_lm(config.policy.model, "cpu")
    generator = HFGenerator(model, tokenizer, config.policy.generation.model_copy(update={"temperature": 1.0}))
    records = [r for t in args.types.split(",") for r in get_task(t).build(args.items, config.seed)]
    conversations, prefills = zip(*(to_chat(r["prompt"]) for r in records))
    times, samples = {}, {}
    for name in ("shared cache", "num_return_sequences", "shared cache"):  # ours twice: warm-up noise shows
        t0 = time.perf_counter()
        if name == "shared cache":
            samples[name] = generator.generate(conversations, args.n, 0, prefills, max_new_tokens=args.max_new_tokens)
        else:
            samples[name] = transformers_n(generator, conversations, prefills, args.n, 0, args.max_new_tokens)
        times.setdefault(name, []).append(time.perf_counter() - t0)
    ours, theirs = min(times["shared cache"]), times["num_return_sequences"][0]
    print(f"{len(records)} prompts x {args.n} samples, up to {args.max_new_tokens} tokens, {args.threads} threads")
    print(f"num_return_sequences: {theirs:.1f} s   shared cache: {ours:.1f} s   speed-up {theirs / ours:.2f}x")
    print(f"identical samples: {samples['shared cache'] == samples['num_return_sequences']}")


if __name__ == "__main__":
    main()
