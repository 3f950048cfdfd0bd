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

import os
import time

import numpy as np
import requests

from rlhf_syco.errors import ServiceError, UserError


class HFChooser:
    """Prompts are left-padded in batches with explicit position ids, so batching does not change the answer."""

    def __init__(self, model: str, device: str = "cpu", batch_size: int = 8, dtype: str = "auto"):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.name = f"hf:{model}"
        self.device = device
        self.batch_size = batch_size
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
        ids = self.letter_ids(prefill, letters)
        prompts = [self.prompt(q, prefill) for q in questions]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # batches of similar length: less padding
        out = np.zeros((len(prompts), len(letters)))
        for start in range(0, len(prompts), self.batch_size):
            rows = order[start:start + self.batch_size]
            batch = self.tokenizer([prompts[i] for i in rows], return_tensors="pt", padding=True,
                                   add_special_tokens=False).to(self.device)
            positions = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
            with self.torch.inference_mode():
                logits = self.model(**batch, position_ids=positions, logits_to_keep=1).logits[:, -1]
            out[rows] = logits[:, ids].float().softmax(-1).cpu().numpy()
        return out


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
