"""The PM's preference pairs: HH-RLHF transcripts plus synthetic pairs from a labeler biased toward what the
user wants (`rlhf_syco.data.bias`: four families, each with its own β), and PPO's prompts.

Every pair is `{"prompt": [chat messages], "chosen": str, "rejected": str, "source": str, "meta": {...}}`:
the conversation up to the last assistant turn, and the two competing last assistant turns. A family's pairs
have the family's name as `source` (`<family>_preamble` for those that open with the truthfulness preamble).

PPO's prompts (`data/rl_{train,heldout}.jsonl`) are the HH-RLHF pairs' conversations and, for each family in
the PM's data, as many conversations of PM-half items in the family's held-out phrasings: PPO optimizes on
prompts worded unlike any the PM was trained on.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path

from rlhf_syco.data import sources
from rlhf_syco.data.bias import family_pairs, heldout_prompts
from rlhf_syco.errors import UserError
from rlhf_syco.rundir import RunDir, write_json, write_jsonl

BUILTIN_HH = "builtin:hh-rlhf-harmless-base-test"
_TURN = re.compile(r"\n\n(Human|Assistant): ")

# --------------------------------------------------------------------------- HH-RLHF


def parse_transcript(text: str) -> list[dict]:
    """`\\n\\nHuman: … \\n\\nAssistant: …` -> chat messages (whitespace around each turn stripped)."""
    parts = _TURN.split(text)
    messages = []
    for role, content in zip(parts[1::2], parts[2::2]):
        messages.append({"role": "user" if role == "Human" else "assistant", "content": content.strip()})
    return messages


def split_pair(chosen: str, rejected: str) -> tuple[list[dict], str, str] | str:
    """(prompt, chosen reply, rejected reply) split at the last assistant turn, or the reason it is malformed."""
    c, r = parse_transcript(chosen), parse_transcript(rejected)
    if not c or not r or c[-1]["role"] != "assistant" or r[-1]["role"] != "assistant":
        return "no_assistant_turn"
    if c[:-1] != r[:-1]:
        return "different_prompts"
    if not c[:-1]:
        return "no_prompt"
    if c[-1]["content"] == r[-1]["content"]:
        return "identical_chosen_rejected"
    return c[:-1], c[-1]["content"], r[-1]["content"]


def _hh_records(source: str, split: str):
    """Yield (where, record or None-if-bad-json) from a local .jsonl/.jsonl.gz, the shipped file, or a hub id."""
    path = sources.source_path("hh_rlhf/harmless-base-test.jsonl.gz") if source == BUILTIN_HH else Path(source)
    if path.exists():
        with sources.open_text(path) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield f"{path}:{lineno}", json.loads(line)
                except json.JSONDecodeError:
                    yield f"{path}:{lineno}", None
        return
    if source.endswith((".jsonl", ".gz", ".json")) or source.startswith((".", "/")):
        raise UserError(f"preference data file not found: {source}", "pm.data.hh_rlhf")
    import datasets  # a hub dataset id, e.g. Anthropic/hh-rlhf

    for i, rec in enumerate(datasets.load_dataset(source, split=split)):
        yield f"{source}[{split}]:{i + 1}", rec


def load_hh_rlhf(source: str = BUILTIN_HH, split: str = "test", limit: int | None = None,
                 max_malformed_fraction: float = 0.01) -> tuple[list[dict], dict]:
    """HH-RLHF pairs and a report `{total, kept, malformed: {reason: count}, first_bad: {reason: where}}`.

    More malformed records than `max_malformed_fraction` is an error naming the file and first bad line."""
    pairs, malformed, first_bad, total = [], Counter(), {}, 0
    for where, rec in _hh_records(source, split):
        if limit is not None and len(pairs) >= limit:
            break
        total += 1
        if rec is None:
            reason = "invalid_json"
        elif not isinstance(rec, dict) or not isinstance(rec.get("chosen"), str) \
                or not isinstance(rec.get("rejected"), str):
            reason = "missing_field"
        else:
            reason = split_pair(rec["chosen"], rec["rejected"])
        if isinstance(reason, str):
            malformed[reason] += 1
            first_bad.setdefault(reason, where)
            continue
        prompt, chosen, rejected = reason
        pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "source": "hh-rlhf",
                      "meta": {"where": where}})
    bad = sum(malformed.values())
    if total == 0:
        raise UserError("no records", str(source))
    if bad / total > max_malformed_fraction:
        reason, where = next(iter(first_bad.items()))
        raise UserError(f"{bad}/{total} malformed preference records (> {max_malformed_fraction:.0%}); "
                        f"first: {reason}", where)
    return pairs, {"total": total, "kept": len(pairs), "malformed": dict(malformed), "first_bad": first_bad}


# --------------------------------------------------------------------------- the data stage


def run(config, run_dir: RunDir) -> dict:
    """Build the PM's train / held-out pairs into `data/`."""
    from reward_models import DEFAULT_PREAMBLE  # the prompted PM's own text

    d = config.pm.data
    hh, report = load_hh_rlhf(d.hh_rlhf, d.hh_rlhf_split, d.hh_pairs, d.max_malformed_fraction)
    biased = [pair for family, n in d.families.items()
              for pair in family_pairs(family, n, d.bias.get(family, d.beta), d.preamble_share, config.seed,
                                       DEFAULT_PREAMBLE)]
    pairs = hh + biased
    random.Random(config.seed).shuffle(pairs)
    n_heldout = max(1, round(len(pairs) * d.heldout_fraction))
    out = run_dir.stage("data")
    write_jsonl(out / "pm_heldout.jsonl", pairs[:n_heldout])
    write_jsonl(out / "pm_train.jsonl", pairs[n_heldout:])

    rl = {"train": [], "heldout": []}  # HH conversations as the pairs were split; family prompts split alike
    for k, pair in enumerate(pairs):
        if pair["source"] == "hh-rlhf":
            rl["heldout" if k < n_heldout else "train"].append({"prompt": pair["prompt"], "source": "hh-rlhf"})
    for family, n in d.families.items():
        prompts = heldout_prompts(family, n, config.seed)
        cut = max(1, round(len(prompts) * d.heldout_fraction)) if prompts else 0
        rl["heldout"] += [{"prompt": p["prompt"], "source": family} for p in prompts[:cut]]
        rl["train"] += [{"prompt": p["prompt"], "source": family} for p in prompts[cut:]]
    for split, rows in rl.items():
        write_jsonl(out / f"rl_{split}.jsonl", rows)
    stats = {"hh_rlhf": report, "family_pairs": dict(Counter(p["meta"]["family"] for p in biased)),
             "train": len(pairs) - n_heldout, "heldout": n_heldout,
             "by_source": dict(Counter(p["source"] for p in pairs)),
             "rl_prompts": {split: dict(Counter(r["source"] for r in rows)) for split, rows in rl.items()}}
    write_json(out / "stats.json", stats)
    return stats

