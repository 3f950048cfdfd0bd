"""`hf`: a trained `AutoModelForSequenceClassification` with one output, the usual shape of a preference model.

The model reads the text from `format_conversation` (the same text PM training saw), truncated from the left
so the end of the response, where the score is read, always survives. Texts are sorted by length and batched
so padding is small, and scores are put back in the caller's order. The weights load on the first `score`
(or first access to `.model` / `.tokenizer`), so building every model in a config costs nothing until used.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import Field

from reward_models.base import Message, Options, RewardModel, format_conversation, pair_count, register


def encode_for_pm(tokenizer, conversations: Sequence[list[Message]], responses: Sequence[str],
                  max_length: int) -> list[list[int]]:
    """The token ids a PM reads for each pair: the `format_conversation` text, cut from the left to `max_length`.

    PM training should encode with this too, so that special tokens and truncation match scoring exactly. A chat
    template writes its own special tokens; plain HH-style text gets the tokenizer's usual ones (as TRL does).
    """
    tokenizer.truncation_side = "left"
    texts = [format_conversation(tokenizer, c, r) for c, r in zip(conversations, responses)]
    return tokenizer(texts, truncation=True, max_length=max_length,
                     add_special_tokens=not getattr(tokenizer, "chat_template", None))["input_ids"]


class HFOptions(Options):
    path: str  # local folder or hub id
    revision: str | None = None
    trust_remote_code: bool = False
    batch_size: int = Field(32, gt=0)
    # None: the length the PM was trained with (PM folders saved by rlhf-syco record it as the tokenizer's
    # model_max_length), else 512. Scoring with another length than training would change the scores.
    max_length: int | None = Field(None, gt=0)
    device: str = "auto"  # "auto" = cuda when available, else cpu
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


@register("hf", options=HFOptions)
class HFRewardModel(RewardModel):
    """Options: see `HFOptions`."""

    def __init__(self, **options):
        self.settings = HFOptions.model_validate(options)
        self._model = None
        self._tokenizer = None

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
        device = s.device if s.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        tokenizer = AutoTokenizer.from_pretrained(s.path, revision=s.revision, trust_remote_code=s.trust_remote_code)
        with _whole():
            model = AutoModelForSequenceClassification.from_pretrained(
                s.path, revision=s.revision, trust_remote_code=s.trust_remote_code, dtype=getattr(torch, s.dtype))
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
        self._tokenizer = tokenizer
        self._model = model.to(device).eval()

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
        encoded = encode_for_pm(tokenizer, conversations, responses, self.max_length)
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
