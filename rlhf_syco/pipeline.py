"""Run an experiment's stages in order, each in its own Ray task, retrying a stage that fails.

`run(config, run_dir, stages)` adds the stages' prerequisites, skips the ones already done, and runs the
rest one after another. With Ray, each stage is one task (`max_retries=0`: retries are ours, see below) with
the resources `stage_resources` gives it, calling the same `run_stage` as the in-process path; stage
functions stay plain Python and a run gives the same results either way. With `compute.num_workers > 1`,
the training stages (PM, PPO, GRPO, RLOO) run as a Ray Train group (`_train_group`: the stage function on every
rank), and
best-of-N's task coordinates that many actors (`rlhf_syco.fanout`). Ray joins `compute.ray_address`
(or `$RAY_ADDRESS`) when set, as on a Slurm allocation (`slurm/`); otherwise it starts a private local
instance with this machine's cores for the length of the run.

A stage that raises, or whose worker dies (out of memory, a killed process, a lost node), is run again up
to `compute.stage_retries` times and resumes from its own checkpoints; each failure is logged in the
manifest under `failures`. Bad input (`UserError`) is not retried: it would fail the same way.

SIGTERM or SIGINT reaching the driver while a stage's task runs is passed on to that task's worker, which then
stops as if it had received the signal itself (`rlhf_syco.preemption`): the training stages after writing a
checkpoint. A Ray Train group (`compute.num_workers > 1`) is asked through a request file in the stage's folder
(the runs folder is shared by every node, as the ranks' checkpoints already require): every rank reads it at its
next step, all stop after the same step with one checkpoint, and rank 0 tells the driver, which exits as one
stage task would.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

from rich.markup import escape

from rlhf_syco import preemption
from rlhf_syco.errors import UserError
from rlhf_syco.progress import console
from rlhf_syco.rundir import RunDir, now, read_json
from rlhf_syco.stages import STAGES, run_stage

# What a stage's worker must share with the driver: the model cache, offline switches, quiet bars, imports.
FORWARDED_ENV = ("RLHF_SYCO_", "HF_", "TRANSFORMERS_", "TOKENIZERS_PARALLELISM", "PYTHONPATH")
CPU_ONLY_STAGES = ("data", "plots")  # they load no model
# <run>/<stage>/.stop-request: the driver asks a training group to stop; .stopped: the group says it did
STOP_REQUEST, STOPPED = ".stop-request", ".stopped"
TRAINING_STAGES = ("pm", "ppo", "grpo", "rloo")  # with compute.num_workers > 1: a Ray Train group, one process per worker
FAN_OUT_STAGES = ("bon",)  # with compute.num_workers > 1: a coordinating task and actors (rlhf_syco.fanout)


def run(config, run_dir: RunDir, stages: list[str], use_ray: bool = True) -> dict:
    """Run `stages` and their prerequisites; return {stage: its summary, or None if it was done already}."""
    order = with_prerequisites(stages)
    results = dict.fromkeys(order)
    pending = [name for name in order if not run_dir.is_done(name)]
    if not pending:
        console.print("[dim]every stage is done already[/dim]")
        return results
    # Ray's start replaces the driver's SIGTERM handler, so ours is put in after it
    with _ray(config, pending) if use_ray else contextlib.nullcontext(), preemption.handled_by(_stop_between_stages):
        for name in pending:
            results[name] = _run_with_retries(name, config, run_dir, use_ray)
    run_dir.update_manifest(finished=now())
    return results


def with_prerequisites(names: list[str]) -> list[str]:
    """`names` plus everything they need, in pipeline order (the order of `STAGES`)."""
    needed: set[str] = set()

    def add(name: str) -> None:
        if name not in STAGES:
            raise UserError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
        if name not in needed:
            needed.add(name)
            for dep in STAGES[name][1]:
                add(dep)

    for name in names:
        add(name)
    return [name for name in STAGES if name in needed]


def stage_resources(name: str, config) -> dict:
    """The Ray resources of one of a stage's workers (its task, actors or training processes). Stages that
    load a model get `compute.gpus_per_worker`."""
    c = config.compute
    return {"num_cpus": worker_cpus(config, group_size(name, config)),
            "num_gpus": 0 if name in CPU_ONLY_STAGES else c.gpus_per_worker}


def worker_cpus(config, workers: int = 1) -> float:
    """`compute.cpus_per_worker`, or, when unset, the CPUs of the largest Ray node shared by `workers`."""
    import ray

    if config.compute.cpus_per_worker:
        return config.compute.cpus_per_worker
    largest = max(node["Resources"].get("CPU", 0) for node in ray.nodes() if node["Alive"])
    return max(1, int(largest // workers))


def group_size(name: str, config) -> int:
    """How many workers of `stage_resources`' size a stage runs at once."""
    parallel = name in TRAINING_STAGES or name in FAN_OUT_STAGES
    return config.compute.num_workers if parallel else 1


def _run_with_retries(name: str, config, run_dir: RunDir, use_ray: bool) -> dict | None:
    attempts = config.compute.stage_retries + 1
    for attempt in range(1, attempts + 1):
        try:
            if not use_ray:
                return run_stage(name, config, run_dir)
            if name in TRAINING_STAGES and config.compute.num_workers > 1:
                return _train_group(name, config, run_dir)
            import ray

            resources = stage_resources(name, config)
            if group_size(name, config) > 1:  # the task coordinates; its actors ask for the resources
                resources = {"num_cpus": 0, "num_gpus": 0}
            # max_calls=1: the worker process exits after its stage, handing its memory back before the next
            task = ray.remote(max_retries=0, max_calls=1)(_stage_in_worker).options(name=f"stage-{name}",
                                                                                    **resources)
            return _get_passing_on_signals(task.remote(name, config, str(run_dir.path.resolve()), os.getcwd()))
        except UserError as e:
            raise getattr(e, "cause", e) from None  # Ray wraps it; show the user their error, not Ray's
        except Exception as e:
            cause = getattr(e, "cause", e)  # Ray wraps the stage's own exception
            error = f"{type(cause).__name__}: {cause}".splitlines()[0]
            failures = run_dir.manifest().get("failures", [])
            run_dir.update_manifest(failures=[*failures, {"stage": name, "attempt": attempt, "time": now(),
                                                          "error": error}])
            if attempt == attempts:
                raise
            console.print(f"[yellow]{name}: attempt {attempt} of {attempts} failed ({escape(error)}); "
                          f"running it again from its checkpoints[/yellow]")


def _stop_between_stages(signum, frame) -> None:
    raise preemption.at_once(signum)


def _get_passing_on_signals(task):
    """`ray.get(task)`, passing SIGTERM and SIGINT that reach the driver on to the task. Ray's cancel interrupts
    the worker's main thread as a SIGINT does, and waits for the stage to stop; a second signal kills the worker."""
    import ray

    received = []

    def pass_on(signum, frame):
        received.append(signum)
        ray.cancel(task, force=len(received) > 1)

    with preemption.handled_by(pass_on):
        try:
            result = ray.get(task)
        except Exception as e:
            if not received:
                raise
            cause = getattr(e, "cause", e)  # the stage's Preempted, or Ray's error for a cancelled or killed worker
            if isinstance(cause, preemption.Preempted):
                raise cause.caused_by(received[0]) from None
            raise preemption.at_once(received[0]) from None
    if received:  # the signal came as the task finished: its stage is done, and the run stops before the next
        raise preemption.at_once(received[0])
    return result


def _quiet_about_stops(unraisable) -> None:
    """Ray's cancel interrupts the worker wherever it is, at times inside a library's `__del__`, where Python can
    only print the interrupt with a traceback: the stop is reported once, by the stage, so that print is dropped."""
    if not isinstance(unraisable.exc_value, (KeyboardInterrupt, preemption.Preempted)):
        sys.__unraisablehook__(unraisable)


def enter_worker(config, cwd: str) -> None:
    """Set up a Ray worker process (a stage task, a training rank, an actor) like the driver: its working
    folder, so relative paths in the config resolve the same, and `compute.torch_threads`, or one torch thread
    per CPU Ray gave the worker."""
    import ray
    import torch

    os.chdir(cwd)
    sys.unraisablehook = _quiet_about_stops
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    torch.set_num_threads(config.compute.torch_threads or max(1, int(cpus)))


def _stage_in_worker(name: str, config, run_dir: str, cwd: str) -> dict | None:
    enter_worker(config, cwd)
    return run_stage(name, config, RunDir(run_dir))


def _train_group(name: str, config, run_dir: RunDir) -> dict:
    """A training stage as a Ray Train group of `compute.num_workers` processes: Ray Train sets up
    torch.distributed (nccl on GPUs, gloo on CPUs) and RANK/WORLD_SIZE, which accelerate, the Trainer and
    DeepSpeed pick up, so the stage function runs unchanged on every rank."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    c = config.compute
    worker = stage_resources(name, config)
    resources = {"CPU": worker["num_cpus"], **({"GPU": worker["num_gpus"]} if worker["num_gpus"] else {})}
    stop_request = (run_dir.path / name / STOP_REQUEST).resolve()
    stop_request.unlink(missing_ok=True)  # one left by an earlier stopped run
    trainer = TorchTrainer(
        _stage_in_group,
        train_loop_config={"name": name, "config": config, "run_dir": str(run_dir.path.resolve()), "cwd": os.getcwd(),
                           "stop_request": str(stop_request)},
        torch_config=TorchConfig(backend="nccl" if c.gpus_per_worker else "gloo"),
        scaling_config=ScalingConfig(num_workers=c.num_workers, use_gpu=bool(c.gpus_per_worker),
                                     resources_per_worker=resources),
        run_config=RunConfig(name=name, storage_path=str((run_dir.path / "ray_train").resolve())),
    )
    received = []

    def pass_on(signum, frame):  # the ranks read the request at their next step and stop together after it
        received.append(signum)
        if len(received) > 1:
            raise preemption.at_once(signum)
        preemption.request(stop_request, signum)

    stopped = stop_request.with_name(STOPPED)
    stopped.unlink(missing_ok=True)
    try:
        with preemption.handled_by(pass_on):
            trainer.fit()
        if stopped.exists():  # the ranks stopped together after a step, with a checkpoint
            note = read_json(stopped)
            raise preemption.Preempted(note["message"], note["signal"]).caused_by(received[0] if received else
                                                                                 note["signal"])
    except preemption.Preempted:
        raise
    except Exception:
        if not received:
            raise
        raise preemption.at_once(received[0]) from None
    finally:
        stop_request.unlink(missing_ok=True)
        stopped.unlink(missing_ok=True)
    return read_json(run_dir / name / "DONE.json")  # the stage's own summary stays in its folder


def _stage_in_group(loop_config: dict) -> None:
    """One rank of a training group. A stop on a signal (`preemption.Preempted`, agreed by every rank after the
    same step) is handed to the driver through `STOPPED` by rank 0 rather than raised, so that Ray Train does not
    report it as a failing worker."""
    from rlhf_syco.rundir import write_json

    request = Path(loop_config["stop_request"])
    preemption.watch(request)
    try:
        _stage_in_worker(loop_config["name"], loop_config["config"], loop_config["run_dir"], loop_config["cwd"])
    except preemption.Preempted as e:
        if os.environ.get("RANK", "0") == "0":
            write_json(request.with_name(STOPPED), {"message": str(e), "signal": e.signum})


@contextlib.contextmanager
def _ray(config, stages: list[str]):
    """Connect to the configured cluster or start a local one; stop only what was started here."""
    import ray

    if ray.is_initialized():  # the caller's own Ray session (a notebook, a test)
        _check_fits(config, stages)
        yield
        return
    address = config.compute.ray_address or os.environ.get("RAY_ADDRESS")
    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}
    options = {"include_dashboard": False, "logging_level": logging.ERROR, "runtime_env": {"env_vars": env}}
    try:
        if address:
            ray.init(address=address, **options)
        else:  # "local": never attach to another Ray found on this machine
            ray.init(address="local", num_cpus=os.cpu_count(), **options)
    except (SystemExit, KeyboardInterrupt) as e:  # SIGTERM (Ray's own handler exits) or SIGINT while Ray starts
        ray.shutdown()
        raise preemption.at_once(signal.SIGINT if isinstance(e, KeyboardInterrupt) else signal.SIGTERM) from None
    try:
        _check_fits(config, stages)
        yield
    finally:
        ray.shutdown()


def _check_fits(config, stages: list[str]) -> None:
    """A task asking for more than the cluster has would wait forever; say so instead."""
    import ray

    total = ray.cluster_resources()
    for name in stages:
        need, workers = stage_resources(name, config), group_size(name, config)
        for resource, amount, key in (("CPU", need["num_cpus"], "cpus_per_worker"),
                                      ("GPU", need["num_gpus"], "gpus_per_worker")):
            if amount * workers > total.get(resource, 0):
                asked = f"{workers} workers x {amount:g}" if workers > 1 else f"{amount:g}"
                raise UserError(f"stage {name} asks for {asked} {resource}s but the Ray cluster has "
                                f"{total.get(resource, 0):g}", f"compute.{key}")
