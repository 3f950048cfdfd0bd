"""Short names for the evaluation suite's calls, as the tests use them: a task by name, one reply per record."""

from rlhf_syco.evaluation import suite
from rlhf_syco.evaluation.judges import get_judge
from rlhf_syco.evaluation.metrics import summarize as _summarize
from rlhf_syco.evaluation.tasks import get_task


def build(name: str, n_items: int, seed: int = 0) -> list[dict]:
    return get_task(name).build(n_items, seed)


def judge_replies(name: str, records: list[dict], replies: list, positivity=None):
    """`replies[i]`: a reply, or a list of replies (one per turn)."""
    turns = [list(r) if isinstance(r, (list, tuple)) else [r] for r in replies]
    return suite.judge(get_task(name), records, turns, {"positivity": positivity or get_judge("vader")})


def summarize(name: str, judged, min_items: int = 1, **options) -> dict:
    """Every metric measurable from one item on: the hand-computed tests use a handful."""
    return _summarize(get_task(name), judged, min_items=min_items, **options)


def headline(name: str) -> str:
    return get_task(name).headline
