"""The stages of an experiment, in order, and the rule for running one.

Each stage is a plain function `fn(config, run_dir) -> summary dict` that reads earlier stages' artifacts and
writes only its own folder. `run_stage` skips a stage whose `DONE.json` exists, runs its prerequisites first,
and marks it done last, so a crashed stage restarts (from its own checkpoints) on the next call.
"""

from __future__ import annotations

import resource
import time

from rlhf_syco import preemption
from rlhf_syco.errors import UserError
from rlhf_syco.progress import console
from rlhf_syco.registry import import_object
from rlhf_syco.rundir import RunDir, now


# name -> ("module:function", prerequisites); the order is the pipeline's order. Modules are imported only
# when their stage runs, so the CLI starts fast and a stage's heavy imports stay in its worker.
STAGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "intervene": ("rlhf_syco.intervention.stage:run", ()),
    "data": ("rlhf_syco.data.preferences:run", ()),
    "pm": ("rlhf_syco.pm:train", ("data",)),
    "probe": ("rlhf_syco.pm:probe", ("pm",)),
    "analyze": ("rlhf_syco.analysis.stage:run", ("data",)),
    "eval": ("rlhf_syco.evaluation.stage:run", ()),
    "bon": ("rlhf_syco.bon.stage:run", ("pm",)),
    "ppo": ("rlhf_syco.ppo.stage:run", ("pm",)),
    "grpo": ("rlhf_syco.group_rl.stage:run_grpo", ("pm",)),
    "rloo": ("rlhf_syco.group_rl.stage:run_rloo", ("pm",)),
    "plots": ("rlhf_syco.plots:run", ()),
}


# Sections a run folder may change without invalidating finished stages: which stages `run` runs, where and how
# fast (no stage's results depend on these), and `analysis`, which only `analyze` reads (`rlhf-syco analyze`
# refits every time).
NOT_RESULTS = ("stages", "compute", "slurm", "analysis")


def open_run(config, force: tuple[str, ...] = ()) -> RunDir:
    """Create or reopen `runs/<name>/`; refuse to mix results of two different configs in one folder."""
    run_dir = RunDir(config.run_dir)
    run_dir.lock()
    old = run_dir.manifest().get("config")
    new = config.dump()
    if old is not None:  # a section or key added to the package since the run began reads as its default
        old = _with_new_fields(old, type(config), type(config)().dump())
    if old is not None and not force:
        diff = _first_difference({k: v for k, v in old.items() if k not in NOT_RESULTS},
                                 {k: v for k, v in new.items() if k not in NOT_RESULTS})
        if diff:
            raise UserError(f"run folder {run_dir.path} holds a run with a different config (first difference: "
                            f"{diff}); choose another name (name=...) or redo stages with --force STAGE")
    for stage in force:
        if stage not in STAGES:
            raise UserError(f"unknown stage {stage!r} for --force; stages: {', '.join(STAGES)}")
        run_dir.reset(stage)
    if force:
        run_dir.reset("plots")  # figures are drawn from every stage's results
    run_dir.start(new, config.seed)
    return run_dir


def _with_new_fields(old: dict, model, defaults: dict) -> dict:
    """A run's recorded config with the fields of `model` (a config section) it lacks set to their `defaults`, in
    every nested section; free-form mappings (`reward_models`, `eval.max_new_tokens`) are left as recorded."""
    from pydantic import BaseModel

    out = dict(old)
    for name, field in model.model_fields.items():
        if name not in out:
            out[name] = defaults[name]
        elif isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel) and \
                isinstance(out[name], dict) and isinstance(defaults[name], dict):
            out[name] = _with_new_fields(out[name], field.annotation, defaults[name])
    return out


def _first_difference(a, b, prefix: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            d = _first_difference(a.get(k), b.get(k), f"{prefix}{k}.")
            if d:
                return d
        return None
    return None if a == b else prefix.rstrip(".")


def run_stage(name: str, config, run_dir: RunDir) -> dict | None:
    """Run `name` (after its prerequisites) unless it is already done."""
    target, needs = STAGES[name]
    for dep in needs:
        run_stage(dep, config, run_dir)
    if run_dir.is_done(name):
        console.print(f"[dim]{name}: done already, skipped[/dim]")
        return None
    console.print(f"[bold]{name}[/bold]: running")
    if config.compute.torch_threads:
        import torch

        torch.set_num_threads(config.compute.torch_threads)
    t0, started = time.time(), now()
    run_dir.update_manifest(stages={name: {"started": started}})
    with preemption.graceful():  # SIGTERM / SIGINT: a checkpoint, then one line and exit 143
        summary = import_object(target)(config, run_dir) or {}
        late = preemption.requested()  # came after the stage's last step: it finished, and the run stops below
    seconds = round(time.time() - t0, 1)
    # the peak memory of the process that ran it (on Linux ru_maxrss is in KiB)
    peak_rss_mb = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    run_dir.mark_done(name, {"seconds": seconds, "peak_rss_mb": peak_rss_mb})
    run_dir.update_manifest(stages={name: {"started": started, "finished": now(), "seconds": seconds,
                                           "peak_rss_mb": peak_rss_mb}})
    console.print(f"[bold]{name}[/bold]: finished in {seconds:.0f}s")
    if late:
        raise preemption.after(name, late)
    return summary
