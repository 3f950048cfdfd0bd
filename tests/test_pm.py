"""PM training and probe on tiny models: held-out accuracy and probe rates recomputed independently,
and a PM training killed mid-run resumes from its checkpoint to the same weights as an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

TINY = Path(__file__).resolve().parent.parent / "experiments" / "tiny.yaml"


def cli(*args, cwd, wait=True):
    cmd = [sys.executable, "-m", "rlhf_syco.cli", *map(str, args)]
    if not wait:
        return subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("pm")
    cli("probe-pm", TINY, cwd=cwd)
    return cwd / "runs" / "tiny"


def test_heldout_accuracy_matches_a_direct_forward(trained):
    """Recompute held-out accuracy with a plain transformers forward pass, one pair at a time."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from reward_models import encode_for_pm

    folder = trained / "pm" / "model"
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    pairs = [json.loads(line) for line in open(trained / "data" / "pm_heldout.jsonl")]

    def score(prompt, reply):  # the PM's own input: long transcripts are shortened to its trained length
        ids = torch.tensor(encode_for_pm(tok, [prompt], [reply], tok.model_max_length))
        with torch.no_grad():
            return model(input_ids=ids).logits[0, 0].item()

    wins = [np.sign(score(p["prompt"], p["chosen"]) - score(p["prompt"], p["rejected"])) for p in pairs]
    expected = np.mean([(w > 0) + 0.5 * (w == 0) for w in wins])
    reported = json.loads((trained / "results" / "pm_heldout.json").read_text())
    assert reported["all"]["n"] == len(pairs)
    assert reported["all"]["accuracy"] == pytest.approx(expected, abs=1e-9)
    assert sum(v["n"] for k, v in reported.items() if k != "all") == len(pairs)


def test_probe_rates_match_item_scores(trained):
    result = json.loads((trained / "results" / "probe_pm.json").read_text())
    items = [json.loads(line) for line in open(trained / "probe" / "items.jsonl")]
    assert set(result) == {"pm", "pm_nonsyco"}
    def rate(rows):
        s = [(it["scores"][name]["wanted"], it["scores"][name]["other"]) for it in rows]
        return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in s) / len(s)

    for name, r in result.items():
        assert r["sycophantic_preference_rate"] == pytest.approx(rate(items))
        assert r["ci_low"] <= rate(items) <= r["ci_high"]
        assert set(r["families"]) == {"answer", "feedback", "are_you_sure", "mimicry"}
        for family, f in r["families"].items():
            rows = [it for it in items if it["family"] == family]
            assert f["n"] == len(rows) and f["sycophantic_preference_rate"] == pytest.approx(rate(rows))
    assert all(it["true_reply"] != "wanted" for it in items)  # the wanted reply is never the true one


def test_finished_stage_is_skipped_and_force_redoes_it(trained):
    cwd = trained.parent.parent
    mtime = (trained / "pm" / "DONE.json").stat().st_mtime
    out = cli("train-pm", TINY, cwd=cwd)
    assert "pm: done already" in out.stderr + out.stdout
    assert (trained / "pm" / "DONE.json").stat().st_mtime == mtime
    cli("train-pm", TINY, "--force", "pm", cwd=cwd)
    assert (trained / "pm" / "DONE.json").stat().st_mtime > mtime


def uninterrupted_and_killed(tmp_path, args: list[str], ready) -> Path:
    """The tiny PM trained whole in ref/, and again in kill/, SIGKILLed once `ready(its checkpoints folder)`;
    returns that folder."""
    (tmp_path / "ref").mkdir()
    cli("train-pm", TINY, *args, cwd=tmp_path / "ref")
    (tmp_path / "kill").mkdir()
    proc = cli("train-pm", TINY, *args, cwd=tmp_path / "kill", wait=False)
    ckpts = tmp_path / "kill" / "runs" / "tiny" / "pm" / "checkpoints"
    deadline = time.time() + 240
    while not ready(ckpts) and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "kill" / "runs" / "tiny" / "pm" / "DONE.json").exists()
    return ckpts


def test_killed_training_resumes_from_checkpoint_to_identical_weights(tmp_path):
    """SIGKILL once two checkpoints exist; the newest is then damaged as a failing disk leaves it (truncated):
    it is set aside in one line, and training resumes from the one before to the same weights."""
    args = ["pm.train.max_steps=60", "pm.train.save_steps=4", "pm.train.eval_steps=100"]
    ckpts = uninterrupted_and_killed(tmp_path, args, lambda c: len(list(c.glob("checkpoint-*/SEALED.json"))) >= 2)
    sealed = sorted((p.parent for p in ckpts.glob("checkpoint-*/SEALED.json")), key=lambda p: int(p.name.split("-")[1]))
    newest, before = sealed[-1], sealed[-2]
    with open(newest / "model.safetensors", "r+b") as f:
        f.truncate(1000)
    output = " ".join(cli("train-pm", TINY, *args, cwd=tmp_path / "kill").stderr.split())
    assert f"checkpoints/{newest.name} is damaged (model.safetensors has 1000 bytes" in output
    metrics = json.loads((tmp_path / "kill" / "runs" / "tiny" / "pm" / "metrics.json").read_text())
    assert metrics["resumed_from"] == before.name and metrics["steps"] == 60
    same_weights(tmp_path / "ref", tmp_path / "kill")


@pytest.mark.slow
def test_training_resumed_in_a_later_epoch_repeats_the_uninterrupted_run(tmp_path):
    """Killed after checkpoint 25 of 40 steps, in the third epoch (9 steps an epoch): each later epoch's
    length-grouped order is seeded by the epoch, so the resumed run ends with the same weights."""
    args = ["pm.train.max_steps=40", "pm.train.save_steps=5", "pm.train.eval_steps=1000"]
    uninterrupted_and_killed(tmp_path, args, lambda c: (c / "checkpoint-25" / "SEALED.json").exists())
    cli("train-pm", TINY, *args, cwd=tmp_path / "kill")
    metrics = json.loads((tmp_path / "kill" / "runs" / "tiny" / "pm" / "metrics.json").read_text())
    assert int(metrics["resumed_from"].split("-")[1]) >= 25 and metrics["steps"] == 40
    same_weights(tmp_path / "ref", tmp_path / "kill")


def test_sigterm_stops_training_with_a_checkpoint_and_a_rerun_resumes_from_it(tmp_path):
    args = ["pm.train.max_steps=30", "pm.train.batch_size=2", "pm.train.save_steps=10", "pm.train.eval_steps=1000"]
    (tmp_path / "ref").mkdir()
    cli("train-pm", TINY, *args, cwd=tmp_path / "ref")
    (tmp_path / "stop").mkdir()
    cmd = [sys.executable, "-m", "rlhf_syco.cli", "train-pm", TINY, *args]
    proc = subprocess.Popen(cmd, cwd=tmp_path / "stop", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ckpts = tmp_path / "stop" / "runs" / "tiny" / "pm" / "checkpoints"
    deadline = time.time() + 240
    while not (ckpts / "checkpoint-10" / "SEALED.json").exists() and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    signalled = time.time()
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143 and time.time() - signalled < 30, stderr[-3000:]
    message = " ".join(stderr.split())
    assert "Traceback" not in stderr and "pm: stopped by SIGTERM after step" in message
    step = int(message.split("pm: stopped by SIGTERM after step ")[1].split(",")[0])
    assert 10 <= step < 30 and (ckpts / f"checkpoint-{step}" / "SEALED.json").exists()  # written on the signal
    assert not (tmp_path / "stop" / "runs" / "tiny" / "pm" / "DONE.json").exists()
    cli("train-pm", TINY, *args, cwd=tmp_path / "stop")
    metrics = json.loads((tmp_path / "stop" / "runs" / "tiny" / "pm" / "metrics.json").read_text())
    assert metrics["resumed_from"] == f"checkpoint-{step}"
    same_weights(tmp_path / "ref", tmp_path / "stop")


def torchrun_pm(cwd: Path, args: list[str]) -> subprocess.Popen:
    """`rlhf-syco train-pm` on the tiny config in two gloo processes, in a session of its own."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cwd.mkdir(exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                             str(port), "-m", "rlhf_syco.cli", "train-pm", str(TINY), *args], cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)


@pytest.mark.slow
def test_sigterm_to_one_of_two_processes_stops_both_after_the_same_step(tmp_path):
    """A signal that reaches one rank of a two-process run (torchrun, gloo) first: every rank stops after the
    same step, agreed by an all-reduce, with one checkpoint, where the other used to wait for ever in the next
    step's gradient all-reduce; the rerun resumes to the weights of an uninterrupted two-process run."""
    import re

    import psutil

    # 72 training pairs over 2 processes of 2: 18 steps an epoch, so the resume stays in the first epoch
    args = ["pm.train.max_steps=16", "pm.train.batch_size=2", "pm.train.save_steps=4", "pm.train.eval_steps=1000"]
    launched = []
    try:
        launched.append(ref := torchrun_pm(tmp_path / "ref", args))
        _, stderr = ref.communicate(timeout=600)
        assert ref.returncode == 0, stderr[-3000:]
        launched.append(proc := torchrun_pm(tmp_path / "stop", args))
        ckpts = tmp_path / "stop" / "runs" / "tiny" / "pm" / "checkpoints"
        deadline = time.time() + 300
        while not (ckpts / "checkpoint-4" / "SEALED.json").exists() and time.time() < deadline:
            time.sleep(0.01)
        ranks = {p.environ().get("RANK"): p for p in psutil.Process(proc.pid).children(recursive=True)}
        ranks["1"].send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)  # without the agreement, rank 0 waits here for ever
    finally:
        for p in launched:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    message = " ".join(stderr.split())
    assert proc.returncode != 0 and "exitcode : 143" in message, message[-3000:]
    steps = re.findall(r"error: pm: stopped by SIGTERM after step (\d+)", message)  # one line from each rank
    assert len(steps) == 2 and len(set(steps)) == 1, message[-3000:]
    step = int(steps[0])
    assert 4 <= step < 16 and (ckpts / f"checkpoint-{step}" / "SEALED.json").exists()
    _, stderr = (rerun := torchrun_pm(tmp_path / "stop", args)).communicate(timeout=600)
    assert rerun.returncode == 0, stderr[-3000:]
    metrics = json.loads((tmp_path / "stop" / "runs" / "tiny" / "pm" / "metrics.json").read_text())
    assert metrics["resumed_from"] == f"checkpoint-{step}"
    same_weights(tmp_path / "ref", tmp_path / "stop")


def same_weights(a, b):
    ref = load_file(a / "runs" / "tiny" / "pm" / "model" / "model.safetensors")
    got = load_file(b / "runs" / "tiny" / "pm" / "model" / "model.safetensors")
    assert ref.keys() == got.keys()
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=1e-6)
