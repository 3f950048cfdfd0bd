"""Config loading: defaults, overrides, and one-line errors that name the file, line and key."""

import subprocess
import sys
from pathlib import Path

import pytest

from rlhf_syco.config import EXPERIMENTS_DIR, load_config
from rlhf_syco.errors import UserError


@pytest.mark.parametrize("name", sorted(p.name for p in EXPERIMENTS_DIR.glob("*.yaml")))
def test_shipped_experiments_validate(name):
    cfg = load_config(EXPERIMENTS_DIR / name)
    assert cfg.name == Path(name).stem


def test_paper_config_is_paper_scale():
    cfg = load_config(EXPERIMENTS_DIR / "paper-llama3-8b.yaml")
    assert cfg.bon.n_max == 4096 and cfg.compute.deepspeed_stage == 3
    assert "8B" in cfg.policy.model.name_or_path


def test_dotted_overrides_apply_with_yaml_types():
    cfg = load_config(EXPERIMENTS_DIR / "tiny.yaml", ["pm.train.lr=1e-5", "pm.data.beta=0.5", "name=other",
                                                     "probe.reward_models=[pm]"])
    assert cfg.pm.train.lr == 1e-5 and cfg.pm.data.beta == 0.5 and cfg.name == "other"
    assert cfg.probe.reward_models == ["pm"]


def test_an_unquoted_no_is_the_mixed_precision_setting_not_false(tmp_path):
    p = tmp_path / "exp.yaml"
    p.write_text("compute:\n  mixed_precision: no\n")
    assert load_config(p).compute.mixed_precision == "no"
    cfg = load_config(EXPERIMENTS_DIR / "tiny.yaml", ["compute.mixed_precision=bf16", "compute.mixed_precision=no"])
    assert cfg.compute.mixed_precision == "no"
    assert "compute.mixed_precision" in _error(tmp_path, "compute:\n  mixed_precision: yes\n")[0]


def _error(tmp_path, text, overrides=()):
    p = tmp_path / "exp.yaml"
    p.write_text(text)
    with pytest.raises(UserError) as e:
        load_config(p, list(overrides))
    return str(e.value), p


def test_unknown_key_names_line_and_suggestion(tmp_path):
    msg, p = _error(tmp_path, "name: x\npm:\n  train:\n    lrr: 0.1\n")
    assert msg == f"{p}:4: unknown key 'pm.train.lrr' (did you mean 'lr'?)"


def test_wrong_type_names_expected_type(tmp_path):
    msg, p = _error(tmp_path, "name: x\nbon:\n  n_max: many\n")
    assert msg.startswith(f"{p}:3: bon.n_max: Input should be a valid integer")
    assert "'many'" in msg


def test_override_error_names_the_override(tmp_path):
    msg, _ = _error(tmp_path, "name: x\n", ["pm.trian.lr=1"])
    assert msg == "override 'pm.trian.lr=1': unknown key 'pm.trian' (did you mean 'train'?)"


def test_out_of_range_value(tmp_path):
    msg, p = _error(tmp_path, "pm:\n  data:\n    beta: 1.5\n")
    assert msg.startswith(f"{p}:3: pm.data.beta: Input should be less than or equal to 1")


def test_unknown_reward_model_reference(tmp_path):
    msg, p = _error(tmp_path, "probe:\n  reward_models: [pm, pmm]\n")
    assert "unknown reward model 'pmm' (did you mean 'pm'?)" in msg


def test_bad_reward_model_option_is_caught_at_load(tmp_path):
    msg, p = _error(tmp_path, "reward_models:\n  pm: {type: hf, pth: x}\n  pm_nonsyco: {type: prompted, base: pm}\n")
    assert msg.startswith(f"{p}:2: reward_models.pm: ") and "'pth'" in msg and "'path'" in msg


def test_invalid_yaml_names_line(tmp_path):
    msg, p = _error(tmp_path, "name: x\npm: [\n")
    assert msg.startswith(f"{p}:") and "invalid YAML" in msg


def test_cli_exits_2_with_one_line_and_no_traceback(tmp_path):
    p = tmp_path / "exp.yaml"
    p.write_text("name: x\npolicy:\n  modle: {}\n")
    r = subprocess.run([sys.executable, "-m", "rlhf_syco.cli", "show-config", str(p)], capture_output=True,
                       text=True, cwd=tmp_path)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr + r.stdout
    lines = [line for line in (r.stderr + r.stdout).splitlines() if line.strip()]
    assert len(lines) == 1 and "unknown key 'policy.modle' (did you mean 'model'?)" in lines[0]
    assert f"{p}:3" in lines[0]
    assert not (tmp_path / "runs").exists()  # nothing half-written


def test_unknown_stage_in_the_stage_list_is_named_with_its_line(tmp_path):
    msg, p = _error(tmp_path, "name: x\nstages: [data, pm, evl]\n")
    assert f"{p}:2" in msg and "unknown stage 'evl'" in msg and "did you mean 'eval'" in msg
