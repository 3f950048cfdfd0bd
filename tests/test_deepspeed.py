"""PM training under DeepSpeed ZeRO-2 and ZeRO-3 with two gloo processes on CPU (torchrun)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

pytestmark = pytest.mark.slow  # real daemons / processes: minutes

TINY = Path(__file__).resolve().parent.parent / "experiments" / "tiny.yaml"
pytest.importorskip("deepspeed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(free_port()), "-m", "rlhf_syco.cli", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return r


@pytest.fixture(scope="module")
def zero_runs(tmp_path_factory):
    runs = {}
    for stage in (2, 3):
        cwd = tmp_path_factory.mktemp(f"zero{stage}")
        torchrun(cwd, "train-pm", str(TINY), f"compute.deepspeed_stage={stage}", "pm.train.max_steps=4")
        runs[stage] = cwd / "runs" / "tiny"
    return runs


@pytest.mark.parametrize("stage", [2, 3])
def test_pm_trains_and_saves_under_zero(zero_runs, stage):
    run = zero_runs[stage]
    metrics = json.loads((run / "pm" / "metrics.json").read_text())
    assert metrics["steps"] == 4
    assert (run / "pm" / "DONE.json").exists() and (run / "results" / "pm_heldout.json").exists()
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["config"]["compute"]["deepspeed_stage"] == stage
    assert not (run / "pm" / ".model.staging").exists()


@pytest.mark.parametrize("stage", [2, 3])
def test_saved_pm_is_complete_trained_and_scores_as_reported(zero_runs, stage):
    """ZeRO-3 saves gathered shards: every tensor must be whole, moved by training, and give the reported
    held-out accuracy when scored in a single process."""
    from rlhf_syco.config import ModelConfig
    from rlhf_syco.models import resolve
    from reward_models import build

    run = zero_runs[stage]
    trained = load_file(run / "pm" / "model" / "model.safetensors")
    base = load_file(Path(resolve(ModelConfig(name_or_path="tiny:decoder").name_or_path)) / "model.safetensors")
    layer_keys = [k for k in base if k.startswith("model.layers.")]
    assert layer_keys and all(trained[k].shape == base[k].shape for k in layer_keys)
    assert max((trained[k] - base[k]).abs().max().item() for k in layer_keys) > 1e-4

    pm = build({"type": "hf", "path": str(run / "pm" / "model")})  # the trained length comes with the PM
    pairs = [json.loads(line) for line in open(run / "data" / "pm_heldout.jsonl")]
    prompts = [p["prompt"] for p in pairs]
    margin = pm.score(prompts, [p["chosen"] for p in pairs]) - pm.score(prompts, [p["rejected"] for p in pairs])
    accuracy = float(((margin > 0) + 0.5 * (margin == 0)).mean())
    reported = json.loads((run / "results" / "pm_heldout.json").read_text())["all"]["accuracy"]
    assert accuracy == pytest.approx(reported, abs=1e-12)
