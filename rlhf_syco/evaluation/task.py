"""What a sycophancy type is: `SycophancyTask`, and the helpers its records are built with.

A task declares everything about its type that the rest of the project needs, and nothing else knows about
types: how its records are built from the shipped sources (`build`) and read from official files
(`from_official`); the follow-up user turns the suite plays after the first reply (are-you-sure's challenge);
the judges it needs; its judgment columns; its metrics, one of them the headline the plots draw. Every headline
reads the same way: higher = more sycophantic.

Records follow the SycophancyEval layout (`prompt` / `base` / `metadata`), with `metadata.type`, `item_id` and
`variant` added so that the variants of one base item are paired by the judges and resampled together by the
bootstrap. A prompt's trailing `ai` turn is a prefill the reply continues; judges read prefill + reply.

Sampling is deterministic: each (seed, task, source) seeds its own `random.Random` from a string, so the items
drawn from one source do not change when another source or the requested size changes. Base items are shared
out evenly across a task's sources (the remainder goes to the sources listed first); a source smaller than its
share gives all it has.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable

import pandas as pd

KEYS = ["item_id", "variant", "dataset"]

# (sign, per-row values, rows that count): one ratio of a metric (see `metrics`).
Term = tuple[int, pd.Series, pd.Series]


@dataclass(frozen=True)
class FollowUp:
    """A user turn played after the model's previous reply. `name` seeds its samples, so adding a turn
    elsewhere never changes this one's; `prefill` starts the model's answer, as a trailing `ai` turn does.
    `text_key` / `prefill_key` take them from the record's `base` instead (a turn worded per record).

    A `probe` turn only reads out what the model now answers (are-you-sure's "So what's the answer?"): it is
    played after every sample, and best-of-N selects among the samples of the last turn before the probes."""

    name: str
    text: str = ""
    prefill: str | None = None
    text_key: str | None = None
    prefill_key: str | None = None
    probe: bool = False
    max_new_tokens: int | None = None

    def for_record(self, record: dict) -> tuple[str, str | None]:
        base = record["base"]
        return (base[self.text_key] if self.text_key else self.text,
                base.get(self.prefill_key) if self.prefill_key else self.prefill)


@dataclass
class Metric:
    """A metric's terms, and what it needs to be measurable: rows (`needs`, a boolean Series) from at least
    the configured minimum of items, described as `needs_what` ("first answers correct")."""

    terms: list[Term]
    needs: pd.Series | None = None
    needs_what: str = ""


class SycophancyTask:
    """One sycophancy type. Subclasses set the class variables and implement `build`, `judge`, `metrics`."""

    name: ClassVar[str]
    headline: ClassVar[str]  # the paper's metric, drawn when measurable; higher = more sycophantic
    fallback: ClassVar[str | None] = None  # a capability-robust headline for when `headline` is not measurable
    columns: ClassVar[tuple[str, ...]]  # judgment columns, after KEYS
    judges: ClassVar[tuple[str, ...]] = ()  # judge roles `judge` receives (see `suite.make_judges`)
    default_dataset: ClassVar[str | None] = None  # `dataset` of records whose base names none
    # Where the answer is one of these letters, right after the record's prefill: it can also be read from the
    # letters' next-token probabilities (`suite.read_letters`), which small models answer more reliably.
    letters: ClassVar[str | None] = None

    def follow_ups(self, settings) -> list[FollowUp]:
        """The user turns after the first reply; `settings` is the config's `eval` section."""
        return []

    def build(self, n_items: int, seed: int) -> list[dict]:
        """`n_items` base items, each expanded into all of its variants (adjacent)."""
        raise NotImplementedError

    def from_official(self, record: dict) -> dict:
        """An official-format record's `base` and `metadata` completed to this package's schema; must set
        `metadata.variant` (None when the metadata does not tell)."""
        return record

    def judge(self, records: list[dict], replies: list[list[str]], judges: dict[str, Any]) -> list[dict]:
        """One dict of `columns` per record; `replies[i]` holds one reply per turn of record i."""
        raise NotImplementedError

    def metrics(self, judged: pd.DataFrame) -> dict[str, list[Term] | Metric]:
        """{metric name: its terms, or a `Metric`}; must include `headline` (and `fallback`)."""
        raise NotImplementedError

    def gold(self, judged: pd.DataFrame) -> Metric | None:
        """The gold reward, where the truth is known: one rate (a single term), higher = better (the reply states
        the true answer, holds a correct one, is not swayed by the framing). None where the type has no ground
        truth. Read against the proxy reward for overoptimization (`overoptimization.py`)."""
        return None


# --------------------------------------------------------------------------- building records


def balanced(task: str, sources: dict, n: int, seed: int) -> Iterable[tuple[str, str, dict]]:
    """(source name, source id, base) for `n` items shared evenly across `sources`, each seeded on its own.
    A source is `make_bases(k, rng)` yielding (source id, base)."""
    share, extra = divmod(n, len(sources))
    for i, (name, make_bases) in enumerate(sources.items()):
        rng = random.Random(f"{seed}:{task}:{name}")
        for source_id, base in make_bases(share + (i < extra), rng):
            yield name, source_id, base


def pick(rows, k: int, rng: random.Random) -> list:
    rows = list(rows)
    return rng.sample(rows, min(k, len(rows)))


def make_record(task: str, item_id: str, variant: str, template: str, base: dict, turns, **metadata) -> dict:
    return {"prompt": [{"type": role, "content": text} for role, text in turns], "base": base,
            "metadata": {"prompt_template": template, "type": task, "item_id": item_id, "variant": variant,
                         **metadata}}


def seen(record: dict, reply: str) -> str:
    """The text the judges read for the first turn: the prefill (a trailing ai turn), if any, then the reply."""
    last = record["prompt"][-1]
    return (last["content"] if last["type"] == "ai" else "") + reply


def every_row(judged: pd.DataFrame) -> pd.Series:
    return pd.Series(True, index=judged.index)


def variants(judged: pd.DataFrame, expected: tuple[str, ...]) -> list[str]:
    """The expected variants (always reported, NaN when absent) and any others present."""
    return list(dict.fromkeys([*expected, *pd.unique(judged["variant"])]))
