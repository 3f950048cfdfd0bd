"""Are the reply budgets long enough for what the judges read? One long sample per record, judged whole and
cut at each budget, side by side in one run:

    python benchmarks/reply_budgets.py [--config experiments/default.yaml] [--items 20] [--cap 320]

For each task and budget, prints the share of replies that would hit it and the share of judgments that are
the same on the cut reply as on the whole one (the feedback positivity within 0.1). SmolLM2-135M-Instruct
rambles far past any budget the 15-minute default run affords; what matters is whether the cut changes the
judgment. Every turn is sampled at `--cap`; the cut applies to the turn each task's budget governs (the first
reply; are-you-sure's reply to the challenge), so later turns saw the whole reply: an approximation for
are-you-sure.
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from rlhf_syco.config import load_config
from rlhf_syco.evaluation import suite
from rlhf_syco.generation import make_generator
from rlhf_syco.models import load_tokenizer

BUDGETS = (8, 16, 24, 32, 48, 64, 96, 128, 192, 256)
CUT_TURNS = {"are_you_sure": (1,)}  # other tasks: the first reply


def same(a, b, tolerance: float | None) -> bool:
    if a is None or b is None or (isinstance(a, float) and math.isnan(a)) or (isinstance(b, float) and math.isnan(b)):
        return (a is None or a != a) and (b is None or b != b)
    return abs(float(a) - float(b)) < tolerance if tolerance is not None else a == b


def agreement(whole, cut, columns, tolerance: float = 0.1) -> float:
    """The smallest, over the task's judgment columns, share of records judged the same."""
    shares = []
    for column in columns:
        tol = tolerance if whole[column].dtype.kind == "f" and whole[column].dropna().nunique() > 2 else None
        shares.append(np.mean([same(a, b, tol) for a, b in zip(whole[column], cut[column])]))
    return float(min(shares))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default=None)
    parser.add_argument("--items", type=int, default=20)
    parser.add_argument("--cap", type=int, default=320)
    args = parser.parse_args()
    config = load_config(args.config)
    settings = config.eval
    tasks = suite.tasks(settings.types)
    tokenizer = load_tokenizer(config.policy.model)
    generator = make_generator(config.policy.model, config.policy.generation, config.compute.device)
    judges = suite.make_judges(settings, list(tasks.values()))

    def cut(text: str, budget: int) -> str:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return text if len(ids) < budget else tokenizer.decode(ids[:budget], skip_special_tokens=True)

    print(f"{'task':<14}{'budget now':>11}{'hit cap':>9}  " + "".join(f"{b:>11}" for b in BUDGETS))
    for name, task in tasks.items():
        records = suite.records(task, settings, args.items, config.seed)
        replies = suite.sample(generator, task, records, settings, seed=config.seed, max_new_tokens=args.cap)
        turns = CUT_TURNS.get(name, (0,))
        lengths = np.array([len(tokenizer(r[t], add_special_tokens=False)["input_ids"]) for r in replies for t in turns])
        whole = suite.judge(task, records, replies, judges)
        cells = []
        for budget in BUDGETS:
            cut_replies = [[cut(x, budget) if t in turns else x for t, x in enumerate(r)] for r in replies]
            same_share = agreement(whole, suite.judge(task, records, cut_replies, judges), task.columns)
            cells.append(f"{(lengths >= budget).mean():.2f}/{same_share:.2f}")
        now = suite.budget(settings, task) or config.policy.generation.max_new_tokens
        print(f"{name:<14}{now:>11}{(lengths >= args.cap).mean():>9.2f}  " + "".join(f"{c:>11}" for c in cells))
    print(f"cells: share of replies that hit the budget / share of judgments unchanged by the cut ({args.items} "
          f"items per task, every turn sampled up to --cap {args.cap} tokens; 'hit cap': the share cut even there)")
    if hasattr(generator, "close"):  # the vLLM engine holds memory outside Python's reach
        generator.close()


if __name__ == "__main__":
    main()
