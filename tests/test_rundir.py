"""Run folders: atomic writes, secrets never written, done-markers, refusing to mix configs, damaged caches and
checkpoints."""

import json
import os

import pytest

from rlhf_syco.config import EXPERIMENTS_DIR, load_config
from rlhf_syco.cache import cached, load_cached
from rlhf_syco.errors import UserError
from rlhf_syco.rundir import RunDir, atomic_path, atomic_write, newest_intact, redact, seal, seal_damage
from rlhf_syco.stages import open_run


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "a.json"
    atomic_write(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["a.json"]  # no temp file left behind


def test_atomic_dir_replaces_whole_folder(tmp_path):
    target = tmp_path / "model"
    with atomic_path(target, is_dir=True) as tmp:
        (tmp / "w1").write_text("1")
    with atomic_path(target, is_dir=True) as tmp:
        (tmp / "w2").write_text("2")
    assert sorted(os.listdir(target)) == ["w2"] and sorted(os.listdir(tmp_path)) == ["model"]


def test_redact_drops_secrets_but_keeps_env_names():
    out = redact({"http": {"api_key": "sk-123", "api_key_env": "OPENAI_API_KEY", "max_new_tokens": 5},
                  "headers": [{"token": "abc"}], "hf_token": None})
    assert out == {"http": {"api_key": "<redacted>", "api_key_env": "OPENAI_API_KEY", "max_new_tokens": 5},
                   "headers": [{"token": "<redacted>"}], "hf_token": None}


def test_manifest_has_config_versions_commit_and_no_secrets(tmp_path):
    run = open_run(load_config(EXPERIMENTS_DIR / "tiny.yaml", [f"runs_dir={tmp_path}"]))
    m = json.loads(run.manifest_path.read_text())
    assert m["config"]["name"] == "tiny" and m["seed"] == 0 and "torch" in m["packages"]
    assert {"created", "started", "git_commit"} <= set(m)
    RunDir(run.path).update_manifest(config={"secret_token": "s3cr3t"})
    assert "s3cr3t" not in run.manifest_path.read_text()


def test_reopening_with_another_config_is_refused(tmp_path):
    open_run(load_config(EXPERIMENTS_DIR / "tiny.yaml", [f"runs_dir={tmp_path}"]))
    with pytest.raises(UserError, match="first difference: pm.train.lr"):
        open_run(load_config(EXPERIMENTS_DIR / "tiny.yaml", [f"runs_dir={tmp_path}", "pm.train.lr=0.5"]))
    # compute settings do not change results: reopening with other resources is fine
    open_run(load_config(EXPERIMENTS_DIR / "tiny.yaml", [f"runs_dir={tmp_path}", "compute.num_workers=2"]))


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_a_damaged_cache_file_is_recomputed(tmp_path, damage):
    path = tmp_path / "replies.jsonl"
    calls = []
    compute = lambda: calls.append(1) or [{"reply": "Paris."}, {"reply": "Lyon."}]
    assert cached(path, "k", compute) == compute()[:2] and len(calls) == 2
    hurt(path, damage)
    assert cached(path, "k", compute) == [{"reply": "Paris."}, {"reply": "Lyon."}] and len(calls) == 3
    assert load_cached(path, "k") is not None and load_cached(path, "other key") is None


def hurt(path, damage):
    if damage == "truncate":
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size // 2)
    elif damage == "flip":
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
    else:
        path.unlink()


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_the_newest_intact_checkpoint_is_found_and_damaged_newer_ones_set_aside(tmp_path, damage):
    for step in (2, 4, 6):
        folder = tmp_path / f"step-{step}"
        (folder / "state").mkdir(parents=True)
        (folder / "state" / "optimizer.bin").write_bytes(bytes(range(256)) * step)
        (folder / "trainer_state.json").write_text(f'{{"step": {step}}}')
        seal(folder)
    assert seal_damage(tmp_path / "step-6") is None
    hurt(tmp_path / "step-6" / "state" / "optimizer.bin", damage)
    (tmp_path / "step-8").mkdir()  # written but never sealed: killed while saving
    found = newest_intact(tmp_path.glob("step-*"), lambda p: int(p.name.split("-")[1]))
    assert found == tmp_path / "step-4"
    assert sorted(p.name for p in (tmp_path / ".damaged").iterdir()) == ["step-6", "step-8"]
    reason = seal_damage(tmp_path / ".damaged" / "step-6")
    assert reason.startswith("state/optimizer.bin ") and ("missing" in reason) == (damage == "delete")
