"""`hf`: a trained `AutoModelForSequenceClassification` with one output, the usual shape of a preference model.

The model reads the text from `format_conversation` (the same text PM training saw: both encode with
`encode_for_pm`). A text longer than `max_length` tokens is shortened where it matters least: first the
middles of its long messages (the quoted poem, argument or solution of an evaluation prompt), marked by
`MARKER`, keeping each message's start and end and its short first and last lines (the user's framing and
final instruction); then the reply's tail, keeping the reply's start; then the middles of the other turns
(the prompted PM's preamble among them). Only if that is still too long is the text cut from the left, as it
always was before. Texts are sorted by length and batched so padding is small, and scores are put back in the
caller's order. The weights load on the first `score` (or first access to `.model` / `.tokenizer`), so
building every model in a config costs nothing until used; a `path` that names no folder, or a model that
cannot be loaded, fails as one line (`PMLoadError`, or the application's `load_error`).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
from pydantic import Field

from reward_models.base import Message, Options, RewardModel, format_conversation, pair_count, register

MARKER = " … "  # stands in for the tokens cut from the middle of a message
_HUB_ID = re.compile(r"(\b[\w\-.]+\b/)?\b[\w\-.]{1,96}\b")  # huggingface_hub's repo-id rule


def encode_for_pm(tokenizer, conversations: Sequence[list[Message]], responses: Sequence[str],
                  max_length: int, stats: dict[str, int] | None = None) -> list[list[int]]:
    """The token ids a PM reads for each pair: the `format_conversation` text, at most `max_length` tokens.

    PM training encodes with this too, so that special tokens and shortening match scoring exactly. A chat
    template writes its own special tokens; plain HH-style text gets the tokenizer's usual ones (as TRL does).
    A text that fits is encoded as it is; a longer one is shortened by `_shorten`. `stats`, when given, is
    updated in place: `inputs` (pairs encoded), `shortened` (pairs longer than `max_length`) and
    `left_truncated` (those of them that still had to be cut from the left).
    """
    special = not getattr(tokenizer, "chat_template", None)
    texts = [format_conversation(tokenizer, c, r) for c, r in zip(conversations, responses)]
    encoded = tokenizer(texts, add_special_tokens=special, verbose=False)["input_ids"]
    too_long = [i for i, ids in enumerate(encoded) if len(ids) > max_length]
    left_truncated = 0
    for i in too_long:
        encoded[i], fits = _shorten(tokenizer, conversations[i], responses[i], max_length, special, encoded[i])
        left_truncated += not fits
    if stats is not None:
        for key, n in (("inputs", len(texts)), ("shortened", len(too_long)), ("left_truncated", left_truncated)):
            stats[key] = stats.get(key, 0) + n
    return encoded


def _shorten(tokenizer, conversation: Sequence[Message], response: str, max_length: int, special: bool,
             ids: list[int]) -> tuple[list[int], bool]:
    """`ids` (the full text's) brought down to `max_length` tokens by shortening message contents, then
    re-rendering with `format_conversation` so a chat template stays intact; (ids, whether that sufficed).

    In order, until the text fits: the middles of the conversation's messages longer than `max_length // 4`
    tokens (quoted material), longest first, each down to that many tokens, which still hold its first and
    last lines when each is at most half of them (`_middle_cut`); then the reply's tail, down to its first
    `max_length // 4` tokens; then the middle of every message longer than `max_length // 8` tokens (framing
    lines and preamble included), down to that many. Each step removes as many tokens as the text is too long
    and re-measures (the marker, and token merges at the cut, can cost a token or two more), so it is
    deterministic and needs a few tokenizations per message. Without a fast tokenizer (no character offsets)
    it goes straight to the left cut.
    """
    if not getattr(tokenizer, "is_fast", False):
        return _left_truncated(tokenizer, format_conversation(tokenizer, conversation, response), max_length,
                               special), False
    contents = [m["content"] for m in conversation] + [response]
    # Each content is tokenized once; cuts fall on these token boundaries and copy the original characters.
    spans = [tokenizer(c, add_special_tokens=False, return_offsets_mapping=True, verbose=False)["offset_mapping"]
             for c in contents]
    keep = [len(s) for s in spans]
    reply = len(contents) - 1

    def render() -> str:
        messages = [{**m, "content": _middle_cut(c, s, k)} for m, c, s, k in zip(conversation, contents, spans, keep)]
        cut_reply = keep[reply] < len(spans[reply])  # its tail goes: the start is what the PM must judge
        return format_conversation(tokenizer, messages,
                                   response[:spans[reply][keep[reply] - 1][1]] if cut_reply else response)

    long, short = max(max_length // 4, 2), max(max_length // 8, 1)
    longest_first = sorted(range(reply), key=lambda j: (-keep[j], j))
    steps = ([(j, long) for j in longest_first] + [(reply, min(keep[reply], long))]
             + [(j, short) for j in longest_first])
    for j, lowest in steps:
        while len(ids) > max_length and keep[j] > lowest:
            keep[j] = max(lowest, keep[j] - (len(ids) - max_length))
            ids = tokenizer(render(), add_special_tokens=special, verbose=False)["input_ids"]
        if len(ids) <= max_length:
            return ids, True
    return _left_truncated(tokenizer, render(), max_length, special), False


def _middle_cut(content: str, spans: list[tuple[int, int]], keep: int) -> str:
    """`content` with all but `keep` of its tokens cut from the middle, `MARKER` in their place.

    The first line (a framing sentence) and the last line (a closing instruction) are kept whole when each
    fits in half of `keep`; the rest of `keep` is shared evenly between the text after the first line and the
    text before the last line, so the cut falls in the middle of what lies between.
    """
    n = len(spans)
    if keep >= n:
        return content
    first_nl, last_nl = content.find("\n"), content.rfind("\n")
    first = sum(start < first_nl for start, _ in spans) if first_nl >= 0 else n
    last = sum(start > last_nl for start, _ in spans) if last_nl >= 0 else 0
    head = first if first <= keep // 2 else 0
    tail = last if last <= keep // 2 else 0
    rest = keep - head - tail
    head, tail = head + (rest + 1) // 2, tail + rest // 2
    kept_head = content[:spans[head - 1][1]] if head else ""
    kept_tail = content[spans[n - tail][0]:] if tail else ""
    return (kept_head.rstrip() + MARKER + kept_tail.lstrip()).strip(" ")


def _left_truncated(tokenizer, text: str, max_length: int, special: bool) -> list[int]:
    """The last resort: cut from the left, which keeps the end of the reply and the tokenizer's special tokens."""
    side, tokenizer.truncation_side = tokenizer.truncation_side, "left"
    try:
        return tokenizer(text, truncation=True, max_length=max_length, add_special_tokens=special)["input_ids"]
    finally:
        tokenizer.truncation_side = side


def could_be_hub_id(name: str) -> bool:
    """Whether `name` is spelled like a hub model id (`org/model`), as opposed to a filesystem path such as
    `/data/pm`, `./pm` or `runs/x/pm/model`, which can only be a local folder."""
    return bool(_HUB_ID.fullmatch(name)) and "--" not in name and ".." not in name


class PMLoadError(OSError):
    """A PM `path` that names no folder, or a model that cannot be loaded from it; the message is one line."""


class HFOptions(Options):
    path: str  # local folder or hub id
    revision: str | None = None
    trust_remote_code: bool = False
    batch_size: int = Field(32, gt=0)
    # None: the length the PM was trained with (PM folders saved by rlhf-syco record it as the tokenizer's
    # model_max_length), else 512. Scoring with another length than training would change the scores.
    max_length: int | None = Field(None, gt=0)
    device: str = "auto"  # "auto" = cuda when available, else cpu
    # The body's dtype; the scalar head stays float32 (`_head_in_float32`). bfloat16 scores about 3 times as
    # fast on a CPU with AMX (`benchmarks/pm_scoring_dtype.py`).
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


@register("hf", options=HFOptions)
class HFRewardModel(RewardModel):
    """Options: see `HFOptions`."""

    # What a load failure raises. An application may put its own one-line error type here (rlhf_syco's
    # `build_reward_models` puts one naming the config key); it is called with the message.
    load_error: Callable[[str], Exception] = PMLoadError

    def __init__(self, **options):
        self.settings = HFOptions.model_validate(options)
        self._model = None
        self._tokenizer = None
        # Pairs scored so far, how many were longer than `max_length`, and how many of those were cut from the
        # left (the shortening in `encode_for_pm` was not enough): see `context_stats`.
        self.scored = self.shortened = self.left_truncated = 0

    @property
    def model(self):
        self._load()
        return self._model

    @property
    def tokenizer(self):
        self._load()
        return self._tokenizer

    def _load(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        s = self.settings
        self.check_path()
        device = s.device if s.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            tokenizer = AutoTokenizer.from_pretrained(s.path, revision=s.revision,
                                                      trust_remote_code=s.trust_remote_code)
            with _whole():
                model = AutoModelForSequenceClassification.from_pretrained(
                    s.path, revision=s.revision, trust_remote_code=s.trust_remote_code, dtype=getattr(torch, s.dtype))
        except OSError as e:  # transformers' word for a folder without a model, or a hub model it cannot fetch
            raise self.load_error(f"cannot load the PM {s.path!r}: {str(e).strip().splitlines()[0]}") from None
        if model.config.num_labels != 1:
            raise ValueError(f"{s.path}: a preference model needs num_labels=1, found {model.config.num_labels}")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        # Without pad_token_id the classifier cannot find each row's last real token in a padded batch.
        text_config = model.config.get_text_config()
        if text_config.pad_token_id is None:
            text_config.pad_token_id = tokenizer.pad_token_id
        # Right padding keeps position ids equal to the unpadded ones, so batching does not change scores.
        tokenizer.padding_side = "right"
        if s.dtype != "float32":
            _head_in_float32(model)
        self._tokenizer = tokenizer
        self._model = model.to(device).eval()

    def check_path(self) -> None:
        """Fail now, loading nothing, if `path` is spelled like a filesystem path and names no folder (a hub id
        is only known to be unreachable when it loads)."""
        path = self.settings.path
        if not os.path.isdir(path) and not could_be_hub_id(path):
            raise self.load_error(f"no such PM folder: {path}")

    def context_stats(self) -> dict[str, int]:
        """{"scored": pairs scored, "shortened": those longer than `max_length`, whose text `encode_for_pm`
        shortened, "left_truncated": those of them that also lost their start}, since this model was built."""
        return {"scored": self.scored, "shortened": self.shortened, "left_truncated": self.left_truncated}

    @property
    def max_length(self) -> int:
        if self.settings.max_length is not None:
            return self.settings.max_length
        recorded = self.tokenizer.model_max_length  # a huge sentinel when the tokenizer records none
        return recorded if recorded < 1_000_000 else 512

    def score(self, conversations: Sequence[list[Message]], responses: Sequence[str]) -> np.ndarray:
        import torch

        if pair_count(conversations, responses) == 0:
            return np.empty(0, dtype=np.float64)
        tokenizer, model = self.tokenizer, self.model
        stats: dict[str, int] = {}
        encoded = encode_for_pm(tokenizer, conversations, responses, self.max_length, stats)
        self.scored += stats["inputs"]
        self.shortened += stats["shortened"]
        self.left_truncated += stats["left_truncated"]
        # Longest batch first: if memory runs out, it does so at once.
        longest_first = sorted(range(len(encoded)), key=lambda i: len(encoded[i]), reverse=True)
        scores = np.empty(len(encoded), dtype=np.float64)
        size = self.settings.batch_size
        with torch.inference_mode():
            for start in range(0, len(encoded), size):
                rows = longest_first[start:start + size]
                batch = tokenizer.pad({"input_ids": [encoded[i] for i in rows]}, return_tensors="pt")
                logits = model(**batch.to(model.device)).logits
                scores[rows] = logits[:, 0].float().cpu().numpy()
        return scores


def _head_in_float32(model) -> None:
    """Keep the scalar head (the last linear layer with one output) in float32 and feed it float32, so a body run
    in bfloat16 or float16 does not round the score itself to 8 or 11 significant bits: best-of-N ranks dozens
    of samples per prompt by score, and rounded scores tie."""
    import torch

    heads = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 1]
    if not heads:
        return
    head = heads[-1].float()
    head.register_forward_pre_hook(lambda module, args: tuple(a.float() for a in args))


@contextlib.contextmanager
def _whole():
    """Load unpartitioned even inside a ZeRO-3 run (PPO): transformers would otherwise build the model under
    the run's `zero.Init`, and a reward model that each process scores with on its own must be whole."""
    try:
        from transformers.integrations import deepspeed as hf_deepspeed
    except ImportError:
        yield
        return
    ref = getattr(hf_deepspeed, "_hf_deepspeed_config_weak_ref", None)
    active = ref() if ref is not None else None
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        if active is not None:
            hf_deepspeed.set_hf_deepspeed_config(active)
