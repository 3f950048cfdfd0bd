"""Letters read from next-token probabilities with the prompts' shared prefix run once and its KV cache copied
into every batch (ours) against every prompt run whole, side by side on the same chooser and questions.

    python benchmarks/chooser_shared_prefix.py [--shots 3] [--items 50] [--threads 1]

The policy is the `intervene` stage's k-shot policy (`--shots` synthetic examples in the chat template; 0: the
base as it is), read on the stage's before / after check (Wei et al.'s addition, NLP claims, Anthropic's political
typology; MMLU). Prints seconds for both, the ratio, the largest probability difference and how many letters
differ (none should). Default: SmolLM2-135M-Instruct.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer

from rlhf_syco.config import load_config
from rlhf_syco.evaluation import suite
from rlhf_syco.intervention import data, methods
from rlhf_syco.intervention.data import PREFILL
from rlhf_syco.intervention.stage import MMLU_LETTERS, mmlu_questions
from rlhf_syco.llm_choice import HFChooser
from rlhf_syco.models import resolve


def kshot_policy(base: str, shots: int, folder: Path) -> str:
    """The k-shot policy folder as the stage writes it: the base's weights, the shots in its chat template."""
    if not shots:
        return base
    tokenizer = AutoTokenizer.from_pretrained(base)
    examples = data.generate(shots, seed=0)
    tokenizer.chat_template = methods.kshot_template(tokenizer.chat_template, methods.shots_as_turns(examples))
    folder.mkdir(parents=True)
    methods.link_weights(base, folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", default="builtin:smollm2-135m-instruct")
    parser.add_argument("--shots", type=int, default=3)
    parser.add_argument("--items", type=int, default=50, help="items per letter task; MMLU gets twice as many")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_config("experiments/intervention.yaml")
    tasks = suite.tasks(config.intervene.check_types)
    asks = []  # (label, questions, prefill, letters)
    for name, task in tasks.items():
        records = suite.records(task, config.eval, args.items, config.seed)
        asks += [(name, questions, prefill, task.letters)
                 for prefill, (_, questions) in suite.letter_questions(records).items()]
    asks.append(("mmlu", [q["question"] for q in mmlu_questions(2 * args.items, config.seed)], PREFILL, MMLU_LETTERS))

    with tempfile.TemporaryDirectory() as tmp:
        policy = kshot_policy(resolve(args.policy), args.shots, Path(tmp) / "policy")
        chooser = HFChooser(policy, batch_size=args.batch_size)
        chooser.probabilities(asks[0][1][:2], asks[0][2], asks[0][3])  # warm up
        seconds, probs = {}, {}
        for share in (True, False):
            chooser.share_prefix = share
            start = time.perf_counter()
            probs[share] = [chooser.probabilities(q, prefill, letters) for _, q, prefill, letters in asks]
            seconds[share] = time.perf_counter() - start
    prompts = sum(len(q) for _, q, _, _ in asks)
    gap = max(float(np.abs(a - b).max()) for a, b in zip(probs[True], probs[False]))
    changed = sum(int((a.argmax(1) != b.argmax(1)).sum()) for a, b in zip(probs[True], probs[False]))
    print(f"{args.policy} with {args.shots} shots, {prompts} prompts ({', '.join(dict.fromkeys(a[0] for a in asks))}), "
          f"batch {args.batch_size}, {args.threads} thread(s)")
    print(f"shared prefix: {seconds[True]:.1f} s; every prompt whole: {seconds[False]:.1f} s; "
          f"ratio {seconds[True] / seconds[False]:.2f}")
    print(f"largest probability difference {gap:.1e}; letters that differ: {changed} of {prompts}")


if __name__ == "__main__":
    main()
