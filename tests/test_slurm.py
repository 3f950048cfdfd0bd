"""`rlhf-syco submit` on a real (one-node) Slurm cluster: the job starts Ray, runs the tiny experiment on it,
and a job requeued in the middle of the run resumes from its checkpoints and ends with the same results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf_syco.models import resolve
from rlhf_syco.config import ExperimentConfig
from slurm_cluster import slurm_cluster  # noqa: F401  (the session fixture)

pytestmark = pytest.mark.slow  # real daemons / processes: minutes

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "experiments" / "tiny.yaml"
# Short feedback and mimicry replies keep the tiny run at seconds.
FAST = ["eval.max_new_tokens.feedback=12", "eval.max_new_tokens.mimicry=12"]


def submit(runs: Path, name: str) -> tuple[str, Path]:
    """`rlhf-syco submit` the tiny experiment to the test cluster, with all of the node's CPUs."""
    done = subprocess.run([sys.executable, "-m", "rlhf_syco.cli", "submit", str(TINY), *FAST, f"name={name}",
                           f"runs_dir={runs}", f"slurm.cpus_per_node={os.cpu_count()}", "--time=00:20:00"],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()[-1], runs / name  # the job id is the last thing printed


def results(run_dir: Path) -> dict[str, str]:
    tables = sorted(p for p in (run_dir / "results").iterdir() if p.suffix in (".json", ".jsonl", ".csv"))
    return {p.name: p.read_text() for p in tables}


def finished(job: dict) -> bool:
    return job["JobState"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")


@pytest.fixture(scope="module")
def first_job(slurm_cluster, tmp_path_factory):  # noqa: F811
    resolve("tiny:decoder")  # build it first: the first build reseeds torch, which would change the PM's init
    job, run_dir = submit(tmp_path_factory.mktemp("runs"), "slurm")
    state = slurm_cluster.wait(job, finished, timeout=300)
    return job, state, run_dir


def test_job_runs_the_experiment_on_ray(first_job):
    job, state, run_dir = first_job
    log = (run_dir / "slurm" / f"{job}.log").read_text()
    assert state["JobState"] == "COMPLETED" and state["ExitCode"] == "0:0", log[-3000:]
    assert "stage-pm pid=" in log  # the PM was trained in a Ray worker of the job's cluster
    assert all((run_dir / stage / "DONE.json").exists() for stage in ExperimentConfig().stages)
    heldout = sum(1 for _ in open(run_dir / "data" / "pm_heldout.jsonl"))
    assert json.loads((run_dir / "results" / "pm_heldout.json").read_text())["all"]["n"] == heldout
    probe = json.loads((run_dir / "results" / "probe_pm.json").read_text())
    assert set(probe) == {"pm", "pm_nonsyco"} and probe["pm"]["n"] == 16 and len(probe["pm"]["families"]) == 4
    rows = [json.loads(line) for line in (run_dir / "results" / "eval_summary.jsonl").read_text().splitlines()]
    assert {r["type"] for r in rows} == {"feedback", "answer", "are_you_sure", "mimicry", "opinion"}


def test_requeued_job_resumes_and_matches(slurm_cluster, first_job, tmp_path):  # noqa: F811
    job, run_dir = submit(tmp_path, "slurm-requeue")
    checkpoint = run_dir / "pm" / "checkpoints" / "checkpoint-2" / "trainer_state.json"
    slurm_cluster.wait(job, lambda j: checkpoint.exists() or finished(j), timeout=240, poll=0.2)
    assert checkpoint.exists(), "the job ended before the PM's first checkpoint"
    data_done = (run_dir / "data" / "DONE.json").read_text()
    slurm_cluster.run("scontrol", "requeue", job)
    slurm_cluster.wait(job, lambda j: j["JobState"] == "PENDING", timeout=120)
    slurm_cluster.run("scontrol", "update", f"jobid={job}", "StartTime=now")  # else it waits ~2 min
    state = slurm_cluster.wait(job, finished, timeout=300)

    log = (run_dir / "slurm" / f"{job}.log").read_text()
    assert state["JobState"] == "COMPLETED" and state["Restarts"] == "1", log[-3000:]
    assert f"job {job}, restart 1" in log
    assert (run_dir / "data" / "DONE.json").read_text() == data_done  # finished before the requeue: not redone
    pm = json.loads((run_dir / "pm" / "metrics.json").read_text())
    assert pm["resumed_from"] and pm["resumed_from"].startswith("checkpoint-")
    assert results(run_dir) == results(first_job[2])
