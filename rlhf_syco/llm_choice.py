"""A language model picks one lettered option: the shared core of every LLM judge and LLM feature labeller.

`probabilities(questions, prefill, letters)` returns, per question, a probability for each letter:
- `HFChooser`: a local causal LM reads the question (as a user turn where it has a chat template, else in the
  plain "Human: ... Assistant: ..." transcript), then `prefill` as the start of its answer; the letters'
  next-token probabilities, renormalised over the letters.
- `OpenAIChooser`: an OpenAI-compatible `/chat/completions` endpoint answers with a letter (many servers cannot
  continue a prefill, so the question ends with an instruction instead), parsed with `parse_letter`; the answer
  is one-hot, and an unparsable one is uniform (no information).
"""

from __future__ import annotations

import copy
import os
import time

import numpy as np
import requests

from rlhf_syco.errors import ServiceError, UserError


class HFChooser:
    """Prompts are left-padded in batches with explicit position ids, so batching does not change the answer.
    The tokens every prompt starts with (a chat template's system turn, k-shot examples, a judge's rubric) are
    run once and their KV cache copied into each batch (`share_prefix`): with three in-context examples that is
    most of every prompt."""

    def __init__(self, model: str, device: str = "cpu", batch_size: int = 8, dtype: str = "auto",
                 share_prefix: bool = True):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.name = f"hf:{model}"
        self.device = device
        self.batch_size = batch_size
        self.share_prefix = share_prefix
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            if self.tokenizer.eos_token is None:
                raise UserError(f"the judge tokenizer in {model} has neither a pad nor an eos token")
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=dtype).to(device).eval()
        self._letter_ids: dict[tuple[str, str], list[int]] = {}

    def prompt(self, question: str | list[dict], prefill: str) -> str:
        """`question`: a user turn's text, or a whole conversation (chat messages)."""
        messages = question if isinstance(question, list) else [{"role": "user", "content": question}]
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + prefill
        turns = "".join(f"\n\n{'Human' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in messages)
        return f"{self.tokenizer.bos_token or ''}{turns}\n\nAssistant: {prefill}"

    def letter_ids(self, prefill: str, letters: str) -> list[int]:
        """The ids the tokenizer uses for each letter right after the prefill (tokenizers merge differently)."""
        if (prefill, letters) not in self._letter_ids:
            encode = lambda text: self.tokenizer(text, add_special_tokens=False).input_ids
            before, ids = encode(prefill), []
            for letter in letters:
                after = encode(prefill + letter)
                if len(after) != len(before) + 1 or after[:len(before)] != before:
                    raise UserError(f"the judge tokenizer does not give {letter!r} its own token after the prefill")
                ids.append(after[-1])
            self._letter_ids[prefill, letters] = ids
        return self._letter_ids[prefill, letters]

    def probabilities(self, questions: list[str], prefill: str, letters: str) -> np.ndarray:
        torch, ids = self.torch, self.letter_ids(prefill, letters)
        encoded = [self.tokenizer(self.prompt(q, prefill), add_special_tokens=False).input_ids for q in questions]
        shared = shared_prefix_length(encoded) if self.share_prefix else 0
        prefix = self._prefix_cache(encoded[0][:shared]) if shared else None
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # batches of similar length: less padding
        out = np.zeros((len(encoded), len(letters)))
        for start in range(0, len(encoded), self.batch_size):
            rows = order[start:start + self.batch_size]
            suffixes = [encoded[i][shared:] for i in rows]
            width = max(map(len, suffixes))
            pads = [width - len(s) for s in suffixes]
            input_ids = torch.tensor([[self.tokenizer.pad_token_id] * p + s for p, s in zip(pads, suffixes)])
            mask = torch.tensor([[1] * shared + [0] * p + [1] * len(s) for p, s in zip(pads, suffixes)])
            positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, shared:]
            cache = None
            if prefix is not None:
                cache = copy.deepcopy(prefix)
                cache.batch_repeat_interleave(len(rows))
            with torch.inference_mode():
                logits = self.model(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device),
                                    position_ids=positions.to(self.device), past_key_values=cache,
                                    use_cache=cache is not None, logits_to_keep=1).logits[:, -1]
            out[rows] = logits[:, ids].float().softmax(-1).cpu().numpy()
        return out

    def _prefix_cache(self, tokens: list[int]):
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        with self.torch.inference_mode():
            self.model(input_ids=self.torch.tensor([tokens], device=self.device), past_key_values=cache,
                       use_cache=True, logits_to_keep=1)
        return cache


def shared_prefix_length(sequences: list[list[int]]) -> int:
    """How many leading tokens every sequence shares, leaving each at least one of its own to read from."""
    if not sequences:
        return 0
    first, limit = sequences[0], min(map(len, sequences)) - 1
    length = 0
    while length < limit and all(s[length] == first[length] for s in sequences):
        length += 1
    return length


class OpenAIChooser:
    """`api_key_env` names the environment variable holding the key; the key itself is never stored. A
    server that times out, refuses or answers 429/5xx is asked again `retries` times; then, or on an answer
    that is not a chat completion, a one-line `ServiceError` naming `where` (the config key) and the URL."""

    def __init__(self, base_url: str, model: str, api_key_env: str | None = "OPENAI_API_KEY",
                 timeout: float = 60.0, retries: int = 2, where: str | None = None):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.name = f"openai:{self.url}:{model}"
        self.api_key_env = api_key_env
        self.timeout, self.retries, self.where = timeout, retries, where
        self.session = requests.Session()
        if api_key_env and not os.environ.get(api_key_env):
            raise UserError(f"the environment variable {api_key_env} (the judge's API key) is not set", where)

    def ask(self, question: str, letters: str) -> str | None:
        from rlhf_syco.evaluation.judges import parse_letter

        headers = {"Authorization": f"Bearer {os.environ[self.api_key_env]}"} if self.api_key_env else {}
        options = ", ".join(letters[:-1]) + f" or {letters[-1]}"
        body = {"model": self.model, "temperature": 0, "max_tokens": 16,
                "messages": [{"role": "user", "content": f"{question}\n\nReply with the single letter {options}."}]}
        for attempt in range(self.retries + 1):
            try:
                response = self.session.post(self.url, headers=headers, timeout=self.timeout, json=body)
            except requests.RequestException as e:
                failure = f"cannot reach {self.url}: {type(e).__name__}"
            else:
                if response.status_code not in (429, 500, 502, 503, 504):
                    break
                failure = f"HTTP {response.status_code} from {self.url}"
            if attempt == self.retries:
                raise ServiceError(f"{failure} ({self.retries + 1} tries)", self.where)
            time.sleep(0.5 * 2 ** attempt)
        if not response.ok:
            raise ServiceError(f"HTTP {response.status_code} from {self.url}", self.where)
        try:
            content = response.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise ServiceError(f"{self.url} did not answer with a chat completion: "
                               f"{' '.join(response.text.split())[:120]!r}", self.where) from None
        return parse_letter(content or "", letters)

    def probabilities(self, questions: list[str], prefill: str, letters: str) -> np.ndarray:
        out = np.full((len(questions), len(letters)), 1 / len(letters))
        for row, question in enumerate(questions):
            letter = self.ask(question, letters)
            if letter is not None:
                out[row] = [float(letter == x) for x in letters]
        return out
