"""What one pool buys, measured side by side on real models (SmolLM2-135M-Instruct policy, a MiniLM PM):

1. The whole best-of-n curve (n = 1, 2, 4, ..., N) from one pool of N samples per prompt, scored once, with the
   exact estimator, against drawing and scoring a fresh pool of n samples for each n (2N - 1 samples per
   prompt, and one noisy draw of the best-of-n sample instead of its exact expectation). Target: <= 0.55x.
2. Scoring the pool with the `hf` reward model's length-bucketed batches against a per-sample loop.
   Target: >= 2x throughput, scores identical within 1e-4.

    python benchmarks/bon_curve.py                       # a MiniLM PM with a fresh head
    python benchmarks/bon_curve.py --pm runs/default/pm/model
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from rlhf_syco.bon.estimator import best_of_n
from rlhf_syco.bon.stage import report_sizes
from rlhf_syco.config import ModelConfig, load_config
from rlhf_syco.evaluation.tasks import get_task
from rlhf_syco.generation import make_generator, to_chat
from rlhf_syco.models import load_sequence_classifier


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pm", help="a trained PM folder (default: MiniLM-L6 with a fresh scalar head)")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--n-max", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    config = load_config(None, [f"policy.generation.max_new_tokens={args.max_new_tokens}", "compute.device=cpu"])
    records = (get_task("answer").build(args.prompts, 0) + get_task("opinion").build(args.prompts, 0))[:args.prompts]
    conversations, prefills = map(list, zip(*(to_chat(r["prompt"]) for r in records)))
    policy = make_generator(config.policy.model, config.policy.generation, "cpu")
    pm = reward_model(args.pm)
    policy.generate(conversations[:1], 1, 0, prefills[:1], max_new_tokens=2)  # warm-up, not timed
    pm.score(conversations[:1], ["warm-up"])

    def draw_and_score(n: int, seed: int):
        samples = policy.generate(conversations, n, seed, prefills)
        pairs = [(c, (p or "") + s) for c, p, row in zip(conversations, prefills, samples) for s in row]
        scores = pm.score([c for c, _ in pairs], [r for _, r in pairs]).reshape(len(records), n)
        return samples, pairs, scores

    sizes = report_sizes(args.n_max)
    print(f"{len(records)} prompts, N = {args.n_max}, n in {sizes}, {args.max_new_tokens} new tokens")

    def one_pool():
        samples, pairs, scores = draw_and_score(args.n_max, 1)
        lengths = np.array([[len(s) for s in row] for row in samples], dtype=float)
        return pairs, best_of_n(scores, lengths, sizes)

    def fresh_pools():
        return [draw_and_score(n, 100 + n)[2].max(axis=1) for n in sizes]

    (pairs, _), pool_seconds = timed(one_pool)
    _, fresh_seconds = timed(fresh_pools)
    print(f"curve from one pool:    {pool_seconds:7.1f} s ({args.n_max} samples per prompt)")
    print(f"a fresh pool for each n: {fresh_seconds:7.1f} s ({sum(sizes)} samples per prompt)")
    print(f"ratio: {pool_seconds / fresh_seconds:.2f}x (target <= 0.55x)")

    contexts, responses = [c for c, _ in pairs], [r for _, r in pairs]
    bucketed, bucketed_seconds = timed(lambda: pm.score(contexts, responses))
    looped, looped_seconds = timed(lambda: np.concatenate([pm.score([c], [r]) for c, r in pairs]))
    print(f"scoring {len(pairs)} samples: length-bucketed batches {len(pairs) / bucketed_seconds:6.1f}/s, "
          f"per-sample loop {len(pairs) / looped_seconds:6.1f}/s")
    print(f"throughput ratio: {looped_seconds / bucketed_seconds:.2f}x (target >= 2x), "
          f"max |score difference| {np.abs(bucketed - looped).max():.2e} (must be <= 1e-4)")


def reward_model(path: str | None):
    """The `hf` reward model on `path`, or on MiniLM-L6 with a fresh scalar head saved to a temporary folder."""
    from reward_models.hf import HFRewardModel

    if path is None:
        model, tokenizer = load_sequence_classifier(ModelConfig(name_or_path="builtin:minilm-l6-v2"))
        path = tempfile.mkdtemp(prefix="bon-benchmark-pm-")
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
    return HFRewardModel(path=path, batch_size=32, max_length=256, device="cpu")


if __name__ == "__main__":
    main()
