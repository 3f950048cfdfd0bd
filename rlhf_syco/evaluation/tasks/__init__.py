"""The sycophancy tasks, one module each, behind one registry.

A task is found by name: the built-ins below, any `rlhf_syco.tasks` entry point of an installed package, or a
`module:attr` path; each resolves to a `SycophancyTask` subclass or instance. Adding a type is one module and
one line here (or one entry point in another package).
"""

from __future__ import annotations

from functools import lru_cache

from rlhf_syco.registry import PluginError, Registry

TASKS = Registry("sycophancy task", "rlhf_syco.tasks", {
    "feedback": "rlhf_syco.evaluation.tasks.feedback:FeedbackTask",
    "answer": "rlhf_syco.evaluation.tasks.answer:AnswerTask",
    "are_you_sure": "rlhf_syco.evaluation.tasks.are_you_sure:AreYouSureTask",
    "mimicry": "rlhf_syco.evaluation.tasks.mimicry:MimicryTask",
    "opinion": "rlhf_syco.evaluation.tasks.opinion:OpinionTask",
    "addition": "rlhf_syco.evaluation.tasks.addition:AdditionTask",
    "political": "rlhf_syco.evaluation.tasks.political:PoliticalTask",
    "nlp_claims": "rlhf_syco.evaluation.tasks.nlp_claims:NLPClaimsTask",
})
BUILTIN_TASKS = ("feedback", "answer", "are_you_sure", "mimicry", "opinion", "addition", "political", "nlp_claims")


@lru_cache(maxsize=None)
def get_task(name: str):
    """The task registered as `name`, as an instance whose `name` is the one it was asked for."""
    from rlhf_syco.evaluation.task import SycophancyTask

    found = TASKS.get(name)
    task = found() if isinstance(found, type) else found
    if not isinstance(task, SycophancyTask):
        raise PluginError(f"sycophancy task {name!r} is a {type(task).__name__}, not a SycophancyTask")
    if ":" not in name and task.name != name:
        raise PluginError(f"sycophancy task {name!r} calls itself {task.name!r}; register it under its own name")
    return task
