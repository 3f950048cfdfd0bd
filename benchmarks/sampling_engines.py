"""The same prompts and sampling settings through every engine that runs here, side by side in one run:
transformers `generate` in fp32 and bf16 (bf16 matrix work runs on the CPU's AVX-512 bf16 or AMX units), each with our shared
prompt cache and with `num_return_sequences`, and vLLM when it is installed.

    python benchmarks/sampling_engines.py [--n 8] [--items 4] [--max-new-tokens 48] [--threads 2]
        [--engines hf-float32,hf-bfloat16,vllm-float32,vllm-bfloat16] [--hf-modes shared,n]
        [--vllm-options '[{}, {"max_num_seqs": 512}]']

Prints generated tokens per second for each, and whether the engines sample the same distribution: the mean
log-probability of each engine's samples under the fp32 model (a distribution that drifted would score
differently), and the share of greedy replies identical to fp32's (when hf-float32 runs). Each vLLM engine runs
once per set of `vllm.LLM` options in `--vllm-options`. Default: SmolLM2-135M-Instruct, the default
experiment's sampling settings, on answer, feedback and mimicry prompts.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time

import torch

from generation_shared_prefix import transformers_n  # the num_return_sequences baseline, beside this file
from rlhf_syco.config import load_config
from rlhf_syco.evaluation.tasks import get_task
from rlhf_syco.generation import HFGenerator, make_generator, render_prompts, to_chat
from rlhf_syco.models import load_causal_lm


def mean_logprob(model, tokenizer, prompts: list[str], replies: list[list[str]]) -> float:
    """Mean per-token log-probability of the replies under `model` (fp32), prompt tokens excluded."""
    total, count = 0.0, 0
    with torch.inference_mode():
        for prompt, samples in zip(prompts, replies):
            head = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            for reply in samples:
                tail = tokenizer(reply, add_special_tokens=False)["input_ids"]
                if not tail:
                    continue
                ids = torch.tensor([head + tail])
                logprobs = model(input_ids=ids).logits[0, len(head) - 1:-1].float().log_softmax(-1)
                total += logprobs.gather(1, torch.tensor(tail)[:, None]).sum().item()
                count += len(tail)
    return total / max(count, 1)


def tokens_of(tokenizer, replies: list[list[str]]) -> int:
    return sum(len(tokenizer(r, add_special_tokens=False)["input_ids"]) for samples in replies for r in samples)


def main() -> None:  # under a __main__ guard: the vLLM engine may start processes
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default=None)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--items", type=int, default=4)
    parser.add_argument("--types", default="answer,feedback,mimicry")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--engines", default="hf-float32,hf-bfloat16,vllm-float32,vllm-bfloat16")
    parser.add_argument("--vllm-options", type=json.loads, default=[{}])
    parser.add_argument("--hf-modes", default="shared,n", help="shared: our prompt cache; n: num_return_sequences")
    args = parser.parse_args()
    engines = args.engines.split(",")
    torch.set_num_threads(args.threads)
    config = load_config(args.config)
    settings = config.policy.generation
    records = [r for t in args.types.split(",") for r in get_task(t).build(args.items, config.seed)]
    conversations, prefills = map(list, zip(*(to_chat(r["prompt"]) for r in records)))

    reference, tokenizer = load_causal_lm(config.policy.model.model_copy(update={"dtype": "float32"}), "cpu")
    prompts = render_prompts(tokenizer, conversations, prefills)
    rows, greedy = [], {}
    for dtype in [e.removeprefix("hf-") for e in engines if e.startswith("hf-")]:
        model, tok = load_causal_lm(config.policy.model.model_copy(update={"dtype": dtype}), "cpu")
        generator = HFGenerator(model, tok, settings)
        generator.generate(conversations[:2], 2, 0, prefills[:2], max_new_tokens=4)  # warm-up
        for shared in [mode == "shared" for mode in args.hf_modes.split(",")]:
            t0 = time.perf_counter()
            if shared:
                replies = generator.generate(conversations, args.n, 0, prefills, max_new_tokens=args.max_new_tokens)
            else:
                replies = transformers_n(generator, conversations, prefills, args.n, 0, args.max_new_tokens)
            seconds = time.perf_counter() - t0
            rows.append((f"hf {dtype} {'shared cache' if shared else 'num_return_sequences'}", seconds,
                         tokens_of(tok, replies), mean_logprob(reference, tokenizer, prompts, replies)))
        if "hf-float32" in engines:  # greedy replies are compared with hf float32's
            greedy[dtype] = HFGenerator(model, tok, settings.model_copy(update={"temperature": 0.0})).generate(
                conversations, 1, 0, prefills, max_new_tokens=args.max_new_tokens)
    vllm_runs = [(e.removeprefix("vllm-"), options) for e in engines if e.startswith("vllm-")
                 for options in args.vllm_options]
    if vllm_runs and importlib.util.find_spec("vllm") is None:
        rows.append(("vllm", None, None, None))
    elif vllm_runs:
        from rlhf_syco.vllm_backend import VLLMGenerator

        for dtype, options in vllm_runs:
            name = f"vllm {dtype}" + (f" {json.dumps(options)}" if options else "")
            engine = make_generator(config.policy.model, settings.model_copy(
                update={"backend": "vllm", "dtype": dtype, "engine_options": options}), "cpu")
            engine.generate(conversations[:2], 2, 0, prefills[:2], max_new_tokens=4)  # warm-up
            t0 = time.perf_counter()
            replies = engine.generate(conversations, args.n, 0, prefills, max_new_tokens=args.max_new_tokens)
            seconds = time.perf_counter() - t0
            rows.append((name, seconds, tokens_of(tokenizer, replies),
                         mean_logprob(reference, tokenizer, prompts, replies)))
            if "hf-float32" in engines:
                greedy_engine = VLLMGenerator(engine.llm, engine.tokenizer, settings.model_copy(
                    update={"temperature": 0.0}), engine.stop_ids)  # the same engine, greedy settings
                greedy[name] = greedy_engine.generate(conversations, 1, 0, prefills,
                                                      max_new_tokens=args.max_new_tokens)
            engine.close()
    print(f"{len(records)} prompts x {args.n} samples, up to {args.max_new_tokens} tokens, T={settings.temperature}, "
          f"top_p={settings.top_p}, {args.threads} threads")
    base = next(tokens / seconds for _, seconds, tokens, _ in rows if seconds)  # the first engine that ran
    for name, seconds, tokens, logprob in rows:
        if seconds is None:
            print(f"{name:40s} not installed here")
            continue
        rate = tokens / seconds
        print(f"{name:40s} {seconds:7.1f} s  {rate:7.1f} tokens/s  x{rate / base:4.2f}  mean log-prob {logprob:.3f}")
    for name, replies in greedy.items():
        if name != "float32":
            same = sum(a == b for a, b in zip(greedy["float32"], replies)) / len(records)
            print(f"greedy replies identical to hf float32's: {'hf ' * (name == 'bfloat16')}{name} {same:.0%}")


if __name__ == "__main__":
    main()
