"""LLM judges and the LLM feature labeller against a real OpenAI-compatible server on loopback (`transformers serve`)."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from rlhf_syco.evaluation.judges import get_judge
from rlhf_syco.models import resolve

pytestmark = pytest.mark.slow  # a real server process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model = resolve("tiny:decoder")
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "server.log"
    binary = Path(sys.executable).parent / "transformers"
    with open(log, "w") as out:
        process = subprocess.Popen([str(binary), "serve", model, "--host", "127.0.0.1", "--port", str(port)],
                                   stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if requests.get(f"{url}/health", timeout=1).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.5)
        else:
            pytest.fail(f"transformers serve did not start: {log.read_text()[-2000:]}")
        yield {"url": url, "model": model, "log": log}
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_openai_judge_asks_a_real_server_in_both_orders(server):
    judge = get_judge("openai", base_url=server["url"] + "/v1", model=server["model"], api_key_env=None)
    before = server["log"].read_text().count("POST /v1/chat/completions")
    a, b = ["Wonderful, moving, brilliant poem!", "A poem."], ["Clumsy and dull.", "A poem."]
    forward, backward = judge.prefer(["a poem"] * 2, a, b), judge.prefer(["a poem"] * 2, b, a)
    assert set(forward.tolist()) <= {0.0, 0.25, 0.5, 0.75, 1.0}
    assert (forward + backward).tolist() == [1.0, 1.0]  # both orders averaged: no position bias survives
    # two pairs, two orders, two calls: eight real completions (a tiny random model answers no letter: 0.5)
    assert server["log"].read_text().count("POST /v1/chat/completions") - before == 8


def test_llm_feature_labeller_asks_a_real_server_in_both_orders(server):
    from rlhf_syco.analysis.features import LLMLabeller
    from rlhf_syco.llm_choice import OpenAIChooser

    labeller = LLMLabeller(OpenAIChooser(server["url"] + "/v1", server["model"], api_key_env=None), "is more polite")
    prompt = [{"role": "user", "content": "Where is Paris?"}]
    pairs = [{"prompt": prompt, "a": "Thank you for asking! It is in France.", "b": "France.", "meta": {}},
             {"prompt": prompt, "a": "France.", "b": "In France.", "meta": {}}]
    before = server["log"].read_text().count("POST /v1/chat/completions")
    forward = labeller(pairs)
    backward = labeller([{**p, "a": p["b"], "b": p["a"]} for p in pairs])
    assert set(forward.tolist()) <= {-1.0, -0.5, 0.0, 0.5, 1.0}
    assert (forward + backward).tolist() == [0.0, 0.0]  # the swapped pair reads the same answers, negated
    assert server["log"].read_text().count("POST /v1/chat/completions") - before == 8


def test_analyze_with_llm_features_from_a_real_server(server, tmp_path):
    root = Path(__file__).resolve().parents[1]
    options = f"{{base_url: '{server['url']}/v1', model: '{server['model']}', api_key_env: null}}"
    done = subprocess.run([sys.executable, "-m", "rlhf_syco.cli", "analyze", "experiments/tiny.yaml",
                           f"runs_dir={tmp_path}", "pm.data.hh_pairs=12", "pm.data.families={answer: 36}",
                           "analysis.min_pairs=10", "analysis.draws=200", "analysis.tune=200",
                           "analysis.llm=openai", f"analysis.llm_options={options}",
                           "analysis.llm_features={polite: 'is more polite'}"],
                          capture_output=True, text=True, cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    labels = tmp_path / "tiny" / "analyze" / "labels" / "train" / "polite" / "shard-0000.json"
    values = json.loads(labels.read_text())
    assert len(values) == 36 and all(-1 <= v <= 1 for v in values)  # 48 pairs, a quarter held out
    table = (tmp_path / "tiny" / "results" / "preference_features.csv").read_text()
    assert "polite" in table
