"""`rlhf-syco sweep`: a tiny grid as Ray tasks on a real local Ray (a point that fails once is retried, one that
cannot succeed is reported without stopping the others, finished points are skipped) and as a real Slurm job
array, each point's results those of the same run made alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf_syco.models import resolve
from rlhf_syco.sweep import parse_grid, point_name
from slurm_cluster import slurm_cluster  # noqa: F401  (the session fixture)

pytestmark = pytest.mark.slow  # real daemons and processes: minutes

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "experiments" / "tiny.yaml")
QUICK = ["stages=[data,pm,probe]"]  # the stages whose results differ with beta, in seconds
MARKER = "RLHF_SYCO_TEST_FLAKY_MARKER"


def flaky(conversations, responses):
    """A reward that fails the first time any process calls it (a node lost, say), and works from then on."""
    marker = Path(os.environ[MARKER])
    if not marker.exists():
        marker.write_text("failed once")
        raise RuntimeError("a flaky reward server")
    return [float(len(r)) for r in responses]


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "rlhf_syco.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"),
                                                                          os.environ.get("PYTHONPATH", "")]),
                               **(env or {})})


def results(run_dir: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((run_dir / "results").glob("*.json"))}


def test_grid_parsing_and_point_names():
    assert parse_grid(["pm.data.beta=0.5,0.95", "ppo.lr=1e-5"]) == {"pm.data.beta": ["0.5", "0.95"],
                                                                     "ppo.lr": ["1e-5"]}
    assert point_name({"pm.data.beta": "0.5", "pm.data.bias": "{answer: 0.9}"}, 2) == \
        "beta=0.5_bias=-answer-0.9-_seed=2"
    from rlhf_syco.errors import UserError

    with pytest.raises(UserError, match="expected KEY=VALUE"):
        parse_grid(["pm.data.beta"])
    assert parse_grid(["pm.data.bias={answer: 0.9, feedback: 0.5},{answer: 0.5}", "bon.types=[answer,feedback]"]) == \
        {"pm.data.bias": ["{answer: 0.9, feedback: 0.5}", "{answer: 0.5}"], "bon.types": ["[answer,feedback]"]}
    with pytest.raises(UserError, match="unbalanced"):
        parse_grid(["pm.data.bias={answer: 0.9"])


def test_a_local_sweep_retries_a_failed_point_reports_a_broken_one_and_skips_finished_ones(tmp_path):
    resolve("tiny:decoder")  # built once, before the Ray workers need it
    flaky_rm = ("reward_models={pm: {type: hf, path: '{run_dir}/pm/model'}, pm_nonsyco: {type: prompted, base: pm}, "
                "flaky: {type: callable, function: 'test_sweep:flaky'}}")
    args = ["sweep", TINY, *QUICK, f"runs_dir={tmp_path}", flaky_rm, "probe.reward_models=[pm,flaky]",
            "compute.stage_retries=0",  # the point fails, not just its stage
            "--grid", f"pm.data.hh_rlhf=builtin:hh-rlhf-harmless-base-test,{tmp_path}/missing.jsonl",
            "--grid", "pm.data.beta=0.5,0.95", "--retries", "1"]
    env = {MARKER: str(tmp_path / "flaky-marker")}
    done = cli(*args, env=env)
    assert done.returncode == 2, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: 2 of 4 points failed: hh_rlhf=") and "missing.jsonl" in done.stderr
    sweep = tmp_path / "tiny-sweep"
    state = {p["name"]: p for p in json.loads((sweep / "sweep.json").read_text())["points"]}
    good = {name: p for name, p in state.items() if "harmless" in name}
    bad = {name: p for name, p in state.items() if "missing" in name}
    assert [p["state"] for p in good.values()] == ["done", "done"]
    assert sorted(p["attempts"] for p in good.values()) == [1, 2]  # the flaky reward failed one point once
    assert all(p["state"] == "failed" and p["attempts"] == 1 and "missing.jsonl" in p["error"]  # bad input:
               for p in bad.values())                                                         # not retried
    assert len(list(sweep.glob("points/*.yaml"))) == 4

    # each finished point holds the results of the same run made alone
    name = next(n for n in good if "beta=0.95" in n)
    alone = cli("run", TINY, *QUICK, f"runs_dir={tmp_path}", "name=alone", flaky_rm, "probe.reward_models=[pm,flaky]",
                "compute.stage_retries=0", "pm.data.beta=0.95", "--no-ray", env=env)
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert results(sweep / name) == results(tmp_path / "alone")
    assert json.loads((sweep / name / "results" / "pm_bias.json").read_text())["answer"]["beta"] == 0.95

    stamps = {p: p.stat().st_mtime_ns for n in good for p in (sweep / n).rglob("DONE.json")}
    again = cli(*args, env=env)  # finished points are skipped; the broken ones fail again
    assert again.returncode == 2 and "skipped" in again.stdout + again.stderr
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    status = cli(*args, "--status", env=env)
    shown = " ".join((status.stdout + status.stderr).split())
    assert status.returncode == 0 and shown.count("│ done") == 2 and shown.count("failed") == 2, shown


def test_sigterm_to_a_local_sweep_stops_every_point_and_the_rerun_finishes_them(tmp_path):
    """SIGTERM to the sweep's driver (Slurm preempting the job that runs it, Ctrl-C): the running point stops
    with a PM checkpoint, the queued one never starts, the command ends with one line and exit 143, sweep.json
    says "stopped", and the same command again finishes both."""
    import signal
    import time

    resolve("tiny:decoder")
    args = ["sweep", TINY, "stages=[data,pm]", f"runs_dir={tmp_path}", "pm.train.max_steps=400",
            "pm.train.save_steps=5", "pm.train.batch_size=2", "--grid", "pm.data.beta=0.5,0.95"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "rlhf_syco.cli", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    checkpoints = tmp_path / "tiny-sweep" / "beta=0.5_seed=0" / "pm" / "checkpoints"
    deadline = time.time() + 300
    while not list(checkpoints.glob("checkpoint-*/SEALED.json")) and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=180)
    last = stderr.strip().splitlines()[-1]
    assert proc.returncode == 143 and last.startswith("error: stopped by SIGTERM"), stderr[-3000:]
    state = {p["name"]: p["state"] for p in json.loads((tmp_path / "tiny-sweep" / "sweep.json").read_text())["points"]}
    assert state == {"beta=0.5_seed=0": "stopped", "beta=0.95_seed=0": "stopped"}
    assert not (tmp_path / "tiny-sweep" / "beta=0.5_seed=0" / "pm" / "DONE.json").exists()
    again = cli(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    state = {p["name"]: p["state"] for p in json.loads((tmp_path / "tiny-sweep" / "sweep.json").read_text())["points"]}
    assert set(state.values()) == {"done"}
    resumed = json.loads((tmp_path / "tiny-sweep" / "beta=0.5_seed=0" / "pm" / "metrics.json").read_text())
    assert resumed["resumed_from"].startswith("checkpoint-")


def test_a_slurm_sweep_runs_one_array_task_per_point(slurm_cluster, tmp_path):  # noqa: F811
    resolve("tiny:decoder")
    args = ["sweep", TINY, *QUICK, f"runs_dir={tmp_path}", "--grid", "pm.data.beta=0.5,0.95", "--slurm",
            f"slurm.cpus_per_node={os.cpu_count()}", "--time=00:15:00"]
    done = cli(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    job = done.stdout.split()[-1]
    script = (tmp_path / "tiny-sweep" / "slurm" / "sweep.sbatch").read_text()
    assert "#SBATCH --array=0-1" in script
    for task in ("0", "1"):
        state = slurm_cluster.wait(f"{job}_{task}", lambda j: j["JobState"] in ("COMPLETED", "FAILED", "CANCELLED"),
                                   timeout=600)
        log = (tmp_path / "tiny-sweep" / "slurm" / f"{job}_{task}.log").read_text()
        assert state["JobState"] == "COMPLETED", log[-3000:]
    status = cli("sweep", TINY, *QUICK, f"runs_dir={tmp_path}", "--grid", "pm.data.beta=0.5,0.95", "--status")
    assert status.returncode == 0 and (status.stdout + status.stderr).count("│ done") == 2, status.stderr
    probes = [json.loads((tmp_path / "tiny-sweep" / f"beta={b}_seed=0" / "results" / "probe_pm.json").read_text())
              for b in ("0.5", "0.95")]
    assert probes[0] != probes[1]  # two PMs, trained at two betas
