"""The pipeline on a real local Ray (2 CPUs): the same results as in one process, a stage whose worker is
killed is retried from its checkpoint, and `rlhf-syco run` killed at random moments finishes with `--resume`.

Every table in `results/` (json, jsonl, csv) is compared whole: no field there legitimately differs between
runs (timings and attempts live in `manifest.json` and the stages' `DONE.json`, which are not compared)."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from rlhf_syco import pipeline
from rlhf_syco.config import load_config
from rlhf_syco.errors import UserError
from rlhf_syco.models import resolve
from rlhf_syco.rundir import RunDir
from rlhf_syco.stages import STAGES, open_run

pytestmark = pytest.mark.slow  # real daemons / processes: minutes

ray = pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "experiments" / "tiny.yaml"
# Every stage but the intervention (tests/test_intervene.py), whose policy the tiny config's later stages do not take.
EVERY = [stage for stage in STAGES if stage != "intervene"]
# Short feedback and mimicry replies keep the tiny run at seconds.
FAST = ["eval.max_new_tokens.feedback=12", "eval.max_new_tokens.mimicry=12"]


def tiny(runs: Path, name: str, *overrides: str):
    return load_config(TINY, [*FAST, f"name={name}", f"runs_dir={runs}", *overrides])


def results(run_dir) -> dict[str, str]:
    tables = sorted(p for p in (Path(run_dir) / "results").iterdir() if p.suffix in (".json", ".jsonl", ".csv"))
    return {p.name: p.read_text() for p in tables}


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory) -> Path:
    """The whole tiny experiment run in this process, without Ray."""
    import torch

    resolve("tiny:decoder")  # build it first: the first build reseeds torch, which would change the PM's init
    cfg = tiny(tmp_path_factory.mktemp("runs"), "reference")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread, as in a Ray worker with one CPU: tiny models crawl on two busy cores
    try:
        pipeline.run(cfg, open_run(cfg), EVERY, use_ray=False)
    finally:
        torch.set_num_threads(threads)
    return cfg.run_dir


@pytest.fixture(scope="module")
def reference(reference_dir) -> dict[str, str]:
    return results(reference_dir)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


def test_prerequisites_come_first_in_pipeline_order():
    assert pipeline.with_prerequisites(["probe", "data"]) == ["data", "pm", "probe"]
    with pytest.raises(UserError, match="unknown stage 'pn'"):
        pipeline.with_prerequisites(["pn"])


def test_ray_run_matches_in_process_run_and_rerun_does_nothing(local_ray, reference, tmp_path):
    cfg = tiny(tmp_path, "ray")
    run_dir = open_run(cfg)
    summaries = pipeline.run(cfg, run_dir, EVERY, use_ray=True)
    assert list(summaries) == EVERY and None not in summaries.values()  # None: skipped as done
    assert results(run_dir) == reference

    stamps = {p: p.stat().st_mtime_ns for p in run_dir.path.rglob("*") if p.is_file()}
    assert pipeline.run(cfg, run_dir, EVERY) == dict.fromkeys(EVERY)
    assert {p: p.stat().st_mtime_ns for p in run_dir.path.rglob("*") if p.is_file()} == stamps


def test_stage_whose_worker_dies_is_retried_from_its_checkpoint(local_ray, reference, tmp_path):
    cfg = tiny(tmp_path, "retry")
    run_dir = open_run(cfg)
    checkpoint = run_dir / "pm" / "checkpoints" / "checkpoint-2" / "trainer_state.json"
    killed = []

    def kill_pm_worker_after_first_checkpoint():
        deadline = time.time() + 120
        while not checkpoint.exists() and time.time() < deadline:
            time.sleep(0.05)
        for pid in _pids_titled("ray::stage-pm"):
            os.kill(pid, signal.SIGKILL)  # like the out-of-memory killer
            killed.append(pid)

    threading.Thread(target=kill_pm_worker_after_first_checkpoint, daemon=True).start()
    summaries = pipeline.run(cfg, run_dir, ["pm"])
    assert killed, "the PM stage's worker was not found"
    failures = run_dir.manifest()["failures"]
    assert [(f["stage"], f["attempt"]) for f in failures] == [("pm", 1)]
    assert summaries["pm"]["resumed_from"].startswith("checkpoint-")
    assert results(run_dir)["pm_heldout.json"] == reference["pm_heldout.json"]


def test_best_of_n_spread_over_two_actors_gives_the_same_results(local_ray, reference_dir, reference, tmp_path):
    """The reference run's PM, then best-of-N with its sampling and scoring spread over two actors."""
    run_dir = RunDir(tmp_path / "reference")
    for stage in ("data", "pm"):
        shutil.copytree(reference_dir / stage, run_dir / stage)
    cfg = tiny(tmp_path, "reference", "compute.num_workers=2", "compute.cpus_per_worker=1")
    pipeline.run(cfg, run_dir, ["bon"])
    bon_tables = [name for name in reference if name.startswith("bon_")]
    assert bon_tables and {name: results(run_dir)[name] for name in bon_tables} == \
        {name: reference[name] for name in bon_tables}


def test_pm_and_ppo_train_as_ray_train_groups_of_two_processes(local_ray, tmp_path):
    cfg = tiny(tmp_path, "group", "compute.num_workers=2", "compute.cpus_per_worker=1", "ppo.steps=2",
               "ppo.eval_every=2", "ppo.checkpoint_every=2")
    run_dir = open_run(cfg)
    pipeline.run(cfg, run_dir, ["pm", "ppo"])
    pm = json.loads((run_dir / "pm" / "metrics.json").read_text())
    assert pm["processes"] == 2 and pm["steps"] == cfg.pm.train.max_steps
    state = json.loads((run_dir / "ppo" / "pm" / "checkpoints" / "step-000002" / "trainer_state.json").read_text())
    assert state["processes"] == 2
    assert (run_dir / "results" / "ppo_curves.csv").exists() and run_dir.is_done("ppo")


def test_sigterm_to_the_driver_stops_a_ray_train_group_after_one_step_with_a_checkpoint(tmp_path):
    """SIGTERM to the `rlhf-syco run` driver alone while PM training runs as a group of two Ray Train ranks: the
    driver asks the ranks through the stage's request file, both stop after the same step with one checkpoint,
    the command ends in one line with exit 143, and `--resume` continues from that checkpoint to the end."""
    command = [sys.executable, "-m", "rlhf_syco.cli", "run", str(TINY), *FAST, "name=group", "stages=[pm]",
               "compute.num_workers=2", "compute.cpus_per_worker=1", "pm.train.max_steps=300",
               "pm.train.save_steps=5", f"runs_dir={tmp_path}"]
    checkpoints = tmp_path / "group" / "pm" / "checkpoints"
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    deadline = time.time() + 240
    while not (checkpoints / "checkpoint-5" / "SEALED.json").exists() and process.poll() is None \
            and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    stderr = process.communicate(timeout=180)[1]
    _wait_until_gone(process.pid)
    assert process.returncode == 143, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    found = re.fullmatch(r"error: pm: stopped by SIGTERM after step (\d+), with a checkpoint \(checkpoint-\1\); "
                         r"run again \(with --resume\) to continue from it", last)
    assert found, last
    step = int(found.group(1))
    assert 5 <= step < 300 and (checkpoints / f"checkpoint-{step}" / "SEALED.json").exists()
    assert sum("stopped by SIGTERM" in line for line in stderr.splitlines()) == 1  # not also as a worker failure
    assert not list((tmp_path / "group" / "pm").glob(".stop*"))

    finished = subprocess.run([*command, "--resume"], capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr[-3000:]
    metrics = json.loads((tmp_path / "group" / "pm" / "metrics.json").read_text())
    assert metrics["resumed_from"] == f"checkpoint-{step}" and metrics["steps"] == 300 and metrics["processes"] == 2


def test_bad_input_is_not_retried(tmp_path):
    cfg = tiny(tmp_path, "bad", f"pm.data.hh_rlhf={tmp_path}/missing.jsonl")
    run_dir = open_run(cfg)
    with pytest.raises(UserError, match="missing.jsonl"):
        pipeline.run(cfg, run_dir, ["data"], use_ray=False)
    assert "failures" not in run_dir.manifest()


def test_resources_the_cluster_lacks_fail_at_once(local_ray, tmp_path):
    cfg = tiny(tmp_path, "gpu", "compute.gpus_per_worker=1")
    with pytest.raises(UserError, match="compute.gpus_per_worker.*stage pm asks for 1 GPUs"):
        pipeline.run(cfg, open_run(cfg), ["pm"])


def test_killed_run_resumes_to_the_same_results(reference, tmp_path):
    """SIGKILL `rlhf-syco run` (its whole process group) at random moments: in start-up or data, in PM training
    just after its first checkpoint, and in the stages after the probe; then `--resume` to the end."""
    command = [sys.executable, "-m", "rlhf_syco.cli", "run", str(TINY), *FAST, "name=killed",
               f"stages=[{','.join(EVERY)}]",  # as the reference ran them
               f"runs_dir={tmp_path}", "--resume"]
    run_dir = tmp_path / "killed"
    seed = int(time.time())
    rng = random.Random(seed)
    triggers = [  # (when the moment's window opens, a random delay into it); tiny PM training lasts a second
        (lambda: True, rng.uniform(1, 8)),
        (lambda: (run_dir / "pm" / "checkpoints" / "checkpoint-2" / "trainer_state.json").exists(), rng.uniform(0, .1)),
        (lambda: (run_dir / "probe" / "DONE.json").exists(), rng.uniform(0, 5)),
    ]
    for number, (ready, delay) in enumerate(triggers):
        log = open(tmp_path / f"attempt-{number}.log", "w")
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 120
        while not ready() and process.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(delay)
        _kill_session(process.pid)
        process.wait()
        _wait_until_gone(process.pid)
    finished = subprocess.run(command, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert results(run_dir) == reference, f"random kill moments: seed {seed}"
    assert json.loads((run_dir / "pm" / "metrics.json").read_text())["resumed_from"].startswith("checkpoint-")

    again = subprocess.run(command, capture_output=True, text=True)  # a finished run: nothing to do
    assert again.returncode == 0 and "every stage is done already" in again.stderr
    assert results(run_dir) == reference


def _pids_titled(title: str) -> list[int]:
    ps = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return [int(line.split(None, 1)[0]) for line in ps.splitlines() if line.split(None, 1)[1:] == [title]]


def _kill_session(session: int) -> None:
    """SIGKILL the run's process group, and Ray's workers with it: they run in process groups of their own (in
    the same session), and would otherwise outlive the driver by a second or two and could finish a stage."""
    for pid in [session, *_session_pids(session)]:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _wait_until_gone(session: int) -> None:
    deadline = time.time() + 60
    while _session_pids(session):
        ps = subprocess.run(["ps", "-o", "pid,stat,etime,args", "-s", str(session)], capture_output=True, text=True)
        assert time.time() < deadline, f"processes of the stopped run are still running:\n{ps.stdout}"
        time.sleep(0.2)


def _session_pids(session: int) -> list[int]:
    ps = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True).stdout
    return [int(pid) for pid, sid in (line.split() for line in ps.splitlines()) if int(sid) == session]


def test_sigterm_at_random_moments_of_every_checkpointing_stage_then_resume(reference, tmp_path):
    """SIGTERM to the `rlhf-syco run` driver alone (as `scancel --signal=TERM` or Ctrl-C reach it), which passes it
    on to the stage's Ray worker: at a random moment of PM training, the probe, the analysis, evaluation and
    best-of-N, in PPO just after its first checkpoint, and at a random moment of GRPO and of RLOO. Each stop is
    one line and exit 143; `--resume` then finishes the run to the numbers of an uninterrupted one."""
    command = [sys.executable, "-m", "rlhf_syco.cli", "run", str(TINY), *FAST, "name=signalled",
               f"stages=[{','.join(EVERY)}]", f"runs_dir={tmp_path}", "--resume"]
    run_dir = tmp_path / "signalled"
    seed = int(time.time())
    rng = random.Random(seed)

    def running(stage):
        try:
            state = json.loads((run_dir / "manifest.json").read_text())["stages"].get(stage, {})
        except (OSError, ValueError, KeyError):
            return False
        return "started" in state and "finished" not in state

    ppo_checkpoint = run_dir / "ppo" / "pm" / "checkpoints" / "step-000002" / "SEALED.json"
    stages = ("pm", "probe", "analyze", "eval", "bon")
    moments = [*((lambda stage=stage: running(stage), rng.uniform(0, 1.5)) for stage in stages),
               (ppo_checkpoint.exists, 0),
               *((lambda stage=stage: running(stage), rng.uniform(0, 3)) for stage in ("grpo", "rloo"))]
    stops = []
    for ready, delay in moments:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                   start_new_session=True)
        deadline = time.time() + 180
        while not ready() and process.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(delay)
        process.send_signal(signal.SIGTERM)
        stderr = process.communicate(timeout=120)[1]
        _wait_until_gone(process.pid)  # Ray's workers and daemons stop with the driver
        assert process.returncode == 143, f"seed {seed}: {stderr[-3000:]}"
        last = stderr.strip().splitlines()[-1]
        assert "Traceback" not in stderr and last.startswith("error: ") and "stopped by SIGTERM" in last, last
        stops.append(last)
    assert re.search(r"ppo: stopped by SIGTERM after step \d, with a checkpoint \(pm/checkpoints/step-00000\d\)",
                     stops[len(stages)]), stops

    finished = subprocess.run(command, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert results(run_dir) == reference, f"random signal moments: seed {seed}; stops: {stops}"
