"""`http`: a reward model behind an HTTP endpoint, and `serve` to put any reward model behind one.

Two wire protocols:

- `rlhf_syco` (endpoint `/score`): POST `{"conversations": [...], "responses": [...]}` -> `{"scores": [...]}`.
  Conversations travel as chat messages, so the server formats them for its own model.
- `openrlhf` (endpoint `/get_reward`): OpenRLHF's remote reward model contract. POST
  `{"query": [prompt + response text], "prompts": [prompt text], "labels": [...]}` -> `{"rewards": [...]}`
  (older servers answer `{"score": [...]}`, which is accepted too). The texts come from `format_conversation`
  with the `tokenizer` option's chat template, or in HH-RLHF style when no tokenizer is given.

Secrets never go in configs: `headers_env` maps a header name to the environment variable holding its value.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

import numpy as np
from pydantic import Field

from reward_models.base import _HH_SPEAKERS, Message, Options, RewardModel, format_conversation, pair_count, register
from rlhf_syco.errors import ServiceError, UserError

logger = logging.getLogger(__name__)

_RETRYABLE_STATUS = {429, 500, 502, 503, 504}


class HTTPOptions(Options):
    url: str  # the full endpoint, e.g. http://host:8000/score or http://host:5000/get_reward
    protocol: Literal["rlhf_syco", "openrlhf"] = "rlhf_syco"
    batch_size: int = Field(64, gt=0)
    timeout: float = Field(60, gt=0)
    headers_env: dict[str, str] = {}  # header name -> environment variable holding its value
    retries: int = Field(2, ge=0)
    tokenizer: str | None = None  # openrlhf only: local tokenizer folder whose chat template formats texts


@register("http", options=HTTPOptions)
class HTTPRewardModel(RewardModel):
    """Options: see `HTTPOptions`. Retries connection failures, timeouts and 429/5xx answers."""

    def __init__(self, **options):
        self.settings = HTTPOptions.model_validate(options)
        self._tokenizer = None
        if self.settings.tokenizer is not None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.settings.tokenizer)

    def score(self, conversations: Sequence[list[Message]], responses: Sequence[str]) -> np.ndarray:
        n = pair_count(conversations, responses)
        size = self.settings.batch_size
        scores = []
        for start in range(0, n, size):
            scores += self._score_batch(conversations[start:start + size], responses[start:start + size])
        return np.asarray(scores, dtype=np.float64)

    def _score_batch(self, conversations, responses) -> list[float]:
        if self.settings.protocol == "rlhf_syco":
            reply = self._post({"conversations": list(conversations), "responses": list(responses)})
            scores = reply.get("scores") if isinstance(reply, dict) else None
        else:
            prompts = [format_conversation(self._tokenizer, c, None) for c in conversations]
            queries = [format_conversation(self._tokenizer, c, r) for c, r in zip(conversations, responses)]
            reply = self._post({"query": queries, "prompts": prompts, "labels": [""] * len(queries)})
            scores = reply.get("rewards", reply.get("score")) if isinstance(reply, dict) else None
        if not isinstance(scores, list) or len(scores) != len(responses):
            raise self._failed(f"{self.settings.url}: expected {len(responses)} scores in the reply, "
                               f"got {_shorten(json.dumps(reply))}")
        try:
            values = [float(s) for s in scores]
        except (TypeError, ValueError):
            values = [math.nan]
        if not all(math.isfinite(v) for v in values):
            raise self._failed(f"{self.settings.url}: answered scores that are not finite numbers: "
                               f"{_shorten(json.dumps(scores))}")
        return values

    def _post(self, payload: dict) -> Any:
        url = self.settings.url
        headers = {"Content-Type": "application/json", **self._secret_headers()}
        request = urllib.request.Request(url, data=json.dumps(payload).encode(), headers=headers, method="POST")
        for attempt in range(self.settings.retries + 1):
            last_try = attempt == self.settings.retries
            try:
                with urllib.request.urlopen(request, timeout=self.settings.timeout) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as e:
                if last_try or e.code not in _RETRYABLE_STATUS:
                    raise self._failed(f"HTTP {e.code} from {url}{_error_detail(e)}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                if last_try:
                    reason = getattr(e, "reason", e)
                    raise self._failed(f"cannot reach {url}: {_shorten(str(reason))} "
                                       f"({self.settings.retries + 1} tries)") from None
            except json.JSONDecodeError:
                raise self._failed(f"{url} did not answer with JSON") from None
            time.sleep(0.5 * 2**attempt)

    def _failed(self, message: str) -> ServiceError:
        """The one-line error of a server that failed, naming the config key of this reward model when known
        (`build_reward_models` sets it)."""
        return ServiceError(message, getattr(self, "config_key", None))

    def _secret_headers(self) -> dict[str, str]:
        headers = {}
        for header, variable in self.settings.headers_env.items():
            if variable not in os.environ:
                raise UserError(f"environment variable {variable!r} (for HTTP header {header!r}) is not set",
                                getattr(self, "config_key", None))
            headers[header] = os.environ[variable]
        return headers


def _error_detail(error: urllib.error.HTTPError) -> str:
    """The server's own `error` message, if it sent one, on one short line."""
    try:
        detail = json.loads(error.read()).get("error")
    except (ValueError, AttributeError, OSError):
        return ""
    return f": {_shorten(str(detail))}" if detail else ""


def _shorten(text: str, limit: int = 200) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[:limit - 3] + "..."


# --------------------------------------------------------------------------- serving


def serve(reward_model: RewardModel, host: str = "127.0.0.1", port: int = 0):
    """Serve `reward_model` over HTTP from a background thread; returns `(server, base_url)`.

    `/score` speaks the `rlhf_syco` protocol, `/get_reward` the `openrlhf` one. OpenRLHF texts are turned back
    into conversations by reading HH-RLHF style turns (what the `http` backend sends without a tokenizer);
    any other text becomes one user turn holding the prompt. Port 0 picks a free port. Stop with
    `server.shutdown()`. Requests are scored one at a time, so a model on one GPU never runs concurrently.
    """
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            if self.path not in ("/score", "/get_reward"):
                return self._answer(404, {"error": f"unknown path {self.path}; use /score or /get_reward"})
            try:
                payload = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                conversations, responses = _pairs_from_request(self.path, payload)
            except (ValueError, KeyError, TypeError) as e:
                return self._answer(400, {"error": f"bad request: {type(e).__name__}: {e}"})
            try:
                with lock:
                    scores = reward_model.score(conversations, responses).tolist()
            except Exception as e:  # the client gets the message; the server keeps serving
                logger.exception("scoring failed")
                return self._answer(500, {"error": f"{type(e).__name__}: {e}"})
            self._answer(200, {"scores": scores} if self.path == "/score" else {"rewards": scores})

        def _answer(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format, *args):
            logger.debug(format, *args)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="reward-model-server", daemon=True).start()
    bound_host, bound_port = server.server_address[:2]
    return server, f"http://{bound_host}:{bound_port}"


def _pairs_from_request(path: str, payload: dict) -> tuple[list[list[Message]], list[str]]:
    if path == "/score":
        return list(payload["conversations"]), list(payload["responses"])
    queries = payload["query"]
    prompts = payload.get("prompts") or [None] * len(queries)
    if len(prompts) != len(queries):
        raise ValueError(f"{len(queries)} queries but {len(prompts)} prompts")
    pairs = [_conversation_from_text(q, p) for q, p in zip(queries, prompts)]
    return [c for c, _ in pairs], [r for _, r in pairs]


_REPLY_CUE = "\n\nAssistant:"
_HH_TURN = re.compile("\n\n(" + "|".join(_HH_SPEAKERS.values()) + "): ")


def _conversation_from_text(query: str, prompt: str | None) -> tuple[list[Message], str]:
    """Undo HH-RLHF style formatting: the prompt's turns, and the response after the prompt (or, without a
    usable prompt, after the last 'Assistant:')."""
    if prompt is None or not query.startswith(prompt):
        cut = query.rfind(_REPLY_CUE)
        prompt = query[:cut + len(_REPLY_CUE)] if cut >= 0 else ""
    response = query[len(prompt):].removeprefix(" ")
    head, *turns = _HH_TURN.split(prompt.removesuffix(_REPLY_CUE))
    if not prompt.endswith(_REPLY_CUE) or not turns:
        return [{"role": "user", "content": prompt}], response
    role_of = {speaker: role for role, speaker in _HH_SPEAKERS.items()}
    messages = [{"role": "system", "content": head}] if head else []
    messages += [{"role": role_of[speaker], "content": content} for speaker, content in zip(turns[::2], turns[1::2])]
    return messages, response
