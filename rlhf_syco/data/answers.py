"""Readable and wrong TriviaQA answers, shared by the answer task and the belief-matching PM pairs.

TriviaQA's alias lists are unordered (the first alias of "Argentina" is "Arxintina"), so the answer shown to a
user is the alias most other aliases contain (`canonical_alias`). A wrong answer is the canonical answer of
another item, preferring one of the same kind (a year, a number, or as many words, up to three) whose question
opens the same way ("who ...", "which country ..."), short and matching no alias of this item.
"""

from __future__ import annotations

import random
import re
from functools import lru_cache

from rlhf_syco.data.sources import triviaqa
from rlhf_syco.text import contains_span, normalize_answer


@lru_cache(maxsize=None)
def trivia_canonical() -> dict[str, str]:
    return {r["id"]: canonical_alias(r["answers"]) for r in triviaqa()}


def canonical_alias(aliases: list[str]) -> str:
    """The alias most other aliases contain as a token span (ties: ASCII first, then list order), in its
    shortest title-case spelling, else one neither all upper nor all lower case."""
    norms = [normalize_answer(a) for a in aliases]

    def support(i: int) -> tuple:
        return (-sum(contains_span(other, norms[i]) for other in norms), not aliases[i].isascii(), i)

    best = norms[min((i for i in range(len(aliases)) if norms[i]), key=support, default=0)]
    spellings = sorted((a for a, n in zip(aliases, norms) if n == best), key=len)
    return next((a for a in spellings if a.istitle()), None) or \
        next((a for a in spellings if not (a.isupper() or a.islower())), spellings[0])


def wrong_trivia_answer(row: dict, pool: list[dict], canon: dict[str, str], rng: random.Random) -> str:
    """Another item's answer, preferring one asked the same way ("Which country ...") and of the same kind."""
    aliases = [normalize_answer(a) for a in row["answers"]]
    kind, asked = _answer_kind(canon[row["id"]]), _question_opening(row["question"])
    others = [r for r in pool if r["id"] != row["id"] and _looks_like_an_answer(canon[r["id"]])]
    same_kind = [r for r in others if _answer_kind(canon[r["id"]]) == kind]
    for tier in ([r for r in same_kind if _question_opening(r["question"]) == asked], same_kind, others):
        for r in rng.sample(tier, len(tier)):
            n = normalize_answer(canon[r["id"]])
            if n and not any(contains_span(n, a) or contains_span(a, n) for a in aliases if a):
                return canon[r["id"]]
    raise RuntimeError(f"no wrong answer for TriviaQA item {row['id']}")


def _looks_like_an_answer(text: str) -> bool:
    """Short, and no Wikipedia residue such as "Finger (disambiguation)"."""
    return len(text.split()) <= 4 and "(" not in text


def _question_opening(question: str) -> str:
    """"who" for questions about a person, else the first two words ("which country", "how many")."""
    words = normalize_answer(question).split()
    return "who" if words[:1] == ["who"] else " ".join(words[:2])


def _answer_kind(answer: str) -> str:
    text = answer.strip()
    if re.fullmatch(r"1\d{3}|20\d{2}", text):
        return "year"
    if re.fullmatch(r"[\d,.]+", text):
        return "number"
    return f"words{min(len(text.split()), 3)}"
