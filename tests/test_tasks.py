"""The task registry: every built-in task is complete, and a task from a separately installed package runs
through the evaluation stage and best-of-N without touching the project."""

import sys

import numpy as np
import pandas as pd
import pytest

from rlhf_syco.bon import stage as bon_stage
from rlhf_syco.config import ExperimentConfig
from rlhf_syco.errors import UserError
from rlhf_syco.evaluation import stage as eval_stage
from rlhf_syco.evaluation import suite
from rlhf_syco.evaluation.task import KEYS, SycophancyTask
from rlhf_syco.evaluation.tasks import BUILTIN_TASKS, TASKS, get_task
from rlhf_syco.models import resolve


class CannedPolicy:
    """Names the user's suggested city when there is one, else the right capital."""

    def generate(self, conversations, n=1, seed=0, prefill=None, *, max_new_tokens=None, on_batch=None):
        out = []
        for c in conversations:
            text = c[-1]["content"]
            reply = text.split("I think it is ")[1].rstrip(".") if "I think it is" in text else "Paris"
            out.append([f"It is {reply}."] * n)
        return out


@pytest.mark.parametrize("name", BUILTIN_TASKS)
def test_builtin_tasks_declare_everything(name):
    task = get_task(name)
    assert isinstance(task, SycophancyTask) and task.name == name
    records = task.build(2, 0)
    assert records and all(r["metadata"]["type"] == name for r in records)
    settings = ExperimentConfig().eval
    replies = [["A reply."] * suite.turn_count(task, settings) for _ in records]
    judged = suite.judge(task, records, replies, {"positivity": _Half()})
    assert list(judged.columns) == KEYS + list(task.columns)
    metrics = suite.summarize(task, judged, bootstrap=20, seed=0)
    assert task.headline in metrics


@pytest.mark.parametrize("name", BUILTIN_TASKS)
def test_every_metric_reads_only_numeric_judgments_as_best_of_n_keeps_them(name):
    """Best-of-N averages the numeric and boolean judgment columns over selections and drops the rest (letters,
    texts): each task's metrics must come out the same from those columns alone, unparsable replies included."""
    task, settings = get_task(name), ExperimentConfig().eval
    records = task.build(6, 0)
    turns = suite.turn_count(task, settings)
    answers = ["A) I agree.", "B) No.", "Not sure at all.", "It is Paris.", "(B)", "I think the answer is 4."]
    replies = [[answers[(i + t) % len(answers)] for t in range(turns)] for i in range(len(records))]
    judged = suite.judge(task, records, replies, {"positivity": _Half()})
    numeric = judged[KEYS + [c for c in task.columns if pd.api.types.is_numeric_dtype(judged[c])]]
    full, kept = (suite.summarize(task, frame, bootstrap=20, seed=0, min_items=1) for frame in (judged, numeric))
    assert {k: v["value"] for k, v in kept.items()} == pytest.approx({k: v["value"] for k, v in full.items()},
                                                                      nan_ok=True)


class _Half:
    def prefer(self, contexts, a, b):
        return [0.5] * len(a)


def test_unknown_tasks_are_one_line_errors_with_a_suggestion():
    with pytest.raises(UserError, match="unknown sycophancy task 'answr' \\(did you mean 'answer'\\?\\)"):
        get_task("answr")
    with pytest.raises(ValueError, match="unknown sycophancy task 'answr'"):
        ExperimentConfig.model_validate({"eval": {"types": ["answr"]}})
    assert TASKS.names()[:len(BUILTIN_TASKS)] == list(BUILTIN_TASKS)


@pytest.fixture
def plugin(install_plugin):
    install_plugin("syco_plugin_task")
    get_task.cache_clear()
    yield
    get_task.cache_clear()
    sys.modules.pop("syco_plugin_task", None)


def test_a_task_from_an_installed_package_runs_through_eval_and_best_of_n(tmp_path, plugin, monkeypatch):
    assert "capitals" in TASKS.names()
    config = ExperimentConfig.model_validate({
        "policy": {"model": {"name_or_path": "tiny:decoder"}, "generation": {"max_new_tokens": 4}},
        "reward_models": {"pm": {"type": "hf", "path": resolve("tiny:encoder")},
                          "pm_nonsyco": {"type": "prompted", "base": "pm"}},
        "eval": {"types": ["capitals"], "items_per_type": 3, "bootstrap": 50, "min_items": 3},
        "bon": {"types": ["capitals"], "n_max": 2, "prompts_per_type": 3, "bootstrap": 50}})
    monkeypatch.setattr(eval_stage, "make_generator", lambda *args: CannedPolicy())
    summary = eval_stage.run(config, tmp_path)
    assert summary["headline"]["capitals"] == {"metric": "agree_rate", "value": 1.0}  # always agrees

    monkeypatch.setattr(bon_stage, "make_generator", lambda *args: CannedPolicy())
    bon_stage.run(config, tmp_path)
    curves = pd.read_csv(tmp_path / "results" / "bon_curves.csv")
    assert set(curves["type"]) == {"capitals"} and np.allclose(curves["value"], 1.0)
    paired = pd.read_csv(tmp_path / "results" / "bon_paired.csv")
    assert set(paired["reward_model"] + "-" + paired["minus"]) == {"pm-pm_nonsyco"}
    assert np.allclose(paired["value"], 0.0)  # identical samples: the selections cannot differ in sycophancy
