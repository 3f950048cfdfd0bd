"""A model path that names nothing stops the real CLI with one line naming the config key and the path, and
exit code 2: the policy (`eval --model`), a PM path that names no folder, and a hub id we cannot fetch."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf_syco.config import load_config
from rlhf_syco.errors import UserError
from rlhf_syco.stages import open_run

REPO = Path(__file__).resolve().parent.parent
STATUS = re.compile(r"\w+: (running|done already, skipped)")  # the stage lines the CLI prints before working


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "80"}  # narrow: a wrapped message would show
    return subprocess.run([sys.executable, "-m", "rlhf_syco.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def assert_one_line(result: subprocess.CompletedProcess, expected: str) -> None:
    lines = result.stderr.splitlines()
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert lines[-1] == f"error: {expected}"
    assert all(STATUS.fullmatch(line) for line in lines[:-1]), result.stderr


def test_eval_with_a_model_folder_that_does_not_exist(tmp_path):
    result = cli("eval", "experiments/default.yaml", f"runs_dir={tmp_path}", "--model", "/no/such/folder")
    assert_one_line(result, "policy.model.name_or_path: no such model folder: /no/such/folder")


@pytest.fixture
def bad_pm_config(tmp_path) -> Path:
    """experiments/tiny.yaml with a PM path that names nothing, and a run folder whose `data` and `pm` stages
    are marked done: the probe then goes straight to building its reward models, the check under test."""
    config = tmp_path / "bad-pm.yaml"
    config.write_text((REPO / "experiments" / "tiny.yaml").read_text() + (
        "reward_models:\n  pm: {type: hf, path: /no/such/pm}\n  pm_nonsyco: {type: prompted, base: pm}\n"))
    run = open_run(load_config(config, [f"runs_dir={tmp_path}"]))
    run.mark_done("data")
    run.mark_done("pm")
    run.unlock()  # the command under test opens the folder itself
    return config


def test_probe_with_a_pm_folder_that_does_not_exist(bad_pm_config, tmp_path):
    result = cli("probe-pm", str(bad_pm_config), f"runs_dir={tmp_path}")
    assert_one_line(result, "reward_models.pm.path: no such PM folder: /no/such/pm")


def test_hub_ids_that_cannot_be_fetched_offline_are_one_line_too(monkeypatch):
    from rlhf_syco.models import build_reward_models, load_causal_lm

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = load_config(REPO / "experiments" / "tiny.yaml", ["policy.model.name_or_path=no-org/no-such-model"])
    with pytest.raises(UserError, match=r"^policy\.model\.name_or_path: cannot load 'no-org/no-such-model': "
                                        r"[^\n]+$"):
        load_causal_lm(config.policy.model)
    # A PM hub id passes the cheap check at build time, and fails as one line naming its key when it loads.
    config = load_config(REPO / "experiments" / "tiny.yaml", [
        "reward_models={pm: {type: hf, path: no-org/no-pm}, pm_nonsyco: {type: prompted, base: pm}}"])
    pm = build_reward_models(config, "runs/unused")["pm"]
    with pytest.raises(UserError, match=r"^reward_models\.pm\.path: cannot load the PM 'no-org/no-pm': [^\n]+$"):
        pm.score([[{"role": "user", "content": "hi"}]], ["hello"])


def test_inline_and_referenced_pms_are_checked_under_their_own_keys():
    from rlhf_syco.models import build_reward_models

    config = load_config(REPO / "experiments" / "tiny.yaml", [
        "reward_models={pm: {type: hf, path: ./no/pm}, pm_nonsyco: {type: prompted, base: {type: hf, path: /x/y}}}"])
    with pytest.raises(UserError, match=r"^reward_models\.pm_nonsyco\.base\.path: no such PM folder: /x/y$"):
        build_reward_models(config, "runs/unused", ["pm_nonsyco"])
    with pytest.raises(UserError, match=r"^reward_models\.pm\.path: no such PM folder: \./no/pm$"):
        build_reward_models(config, "runs/unused")
