"""`rlhf-syco sweep`: one run per point of a grid of config values times seeds, as Ray tasks on this machine (or
the configured Ray cluster) or as a Slurm job array.

    rlhf-syco sweep experiments/study-beta.yaml --grid pm.data.beta=0.5,0.75,0.95 --seeds 2 [--slurm]

The sweep folder `<runs_dir>/<name>-sweep/` holds `sweep.json` (the grid, the points and how each one ended),
`points/NNN.yaml` (each point's whole config: what a Slurm array task runs) and one run folder per point, named
by its values (`beta=0.5_seed=1`). Seeds are `seed`, `seed + 1`, ... The points share the sweep folder's store
(`cache.SHARED`), so the policy's best-of-N pool and its judgments, which do not depend on the PM, are sampled
and judged once per seed. A finished point (every stage done) is skipped; a point that fails is run again
`retries` times, resuming from its checkpoints, and then reported as failed without stopping the others.
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import sys
from pathlib import Path

import yaml

from rlhf_syco import preemption
from rlhf_syco.errors import UserError
from rlhf_syco.progress import console
from rlhf_syco.rundir import atomic_write, now, read_json, write_json

SWEEP_FILE = "sweep.json"


def parse_grid(specs: list[str]) -> dict[str, list[str]]:
    """["pm.data.beta=0.5,0.75", ...] -> {"pm.data.beta": ["0.5", "0.75"], ...}"""
    grid = {}
    for spec in specs:
        key, sep, values = spec.partition("=")
        if not sep or not key or not values:
            raise UserError(f"--grid {spec!r}: expected KEY=VALUE,VALUE,...")
        if key in grid:
            raise UserError(f"--grid names {key} twice")
        grid[key] = [v.strip() for v in _split_top_level(values) if v.strip()]
    return grid


def _split_top_level(values: str) -> list[str]:
    """Split on the commas outside brackets and braces, so a YAML list or mapping is one value:
    "{answer: 0.9, feedback: 0.5},{answer: 0.5}" -> ["{answer: 0.9, feedback: 0.5}", "{answer: 0.5}"]."""
    parts, depth, current = [], 0, ""
    for char in values:
        depth += (char in "[{") - (char in "]}")
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    if depth != 0:
        raise UserError(f"--grid value {values!r}: unbalanced brackets or braces")
    return parts + [current]


def point_name(values: dict[str, str], seed: int) -> str:
    parts = [f"{key.rsplit('.', 1)[-1]}={value}" for key, value in values.items()] + [f"seed={seed}"]
    return re.sub(r"[^A-Za-z0-9=._-]+", "-", "_".join(parts))


def points(config_path: str | None, overrides: list[str], grid: dict[str, list[str]], seeds: int) -> tuple:
    """(the base config, the sweep folder, [(name, config)]): every grid point times every seed, validated."""
    from rlhf_syco.config import load_config

    base = load_config(config_path, overrides)
    folder = Path(base.runs_dir) / f"{base.name}-sweep"
    out = []
    for combination in itertools.product(*grid.values()):
        values = dict(zip(grid, combination))
        for seed in range(base.seed, base.seed + seeds):
            name = point_name(values, seed)
            point = [*overrides, *(f"{k}={v}" for k, v in values.items()), f"seed={seed}", f"name={name}",
                     f"runs_dir={folder}"]
            try:
                out.append((name, load_config(config_path, point)))
            except UserError as e:
                raise UserError(f"sweep point {name}: {e}") from None
    names = [name for name, _ in out]
    if len(set(names)) < len(names):
        raise UserError("two grid points have the same name; give each key distinct values")
    return base, folder, out


def write_points(folder: Path, grid: dict, seeds: int, configs: list) -> list[Path]:
    """`points/NNN.yaml` for every point, and `sweep.json` (keeping what earlier attempts recorded)."""
    paths = []
    for index, (name, config) in enumerate(configs):
        paths.append(atomic_write(folder / "points" / f"{index:03d}.yaml",
                                  yaml.safe_dump(config.dump(), sort_keys=False)))
    old = read_json(folder / SWEEP_FILE) if (folder / SWEEP_FILE).exists() else {}
    states = {p["name"]: p for p in old.get("points", [])}
    write_json(folder / SWEEP_FILE, {"grid": grid, "seeds": seeds, "points": [
        {"name": name, "config": str(path), **{k: v for k, v in states.get(name, {}).items()
                                               if k in ("state", "attempts", "error", "finished")}}
        for (name, _), path in zip(configs, paths)]})
    return paths


def is_finished(config) -> bool:
    from rlhf_syco.pipeline import with_prerequisites

    return all((config.run_dir / stage / "DONE.json").exists() for stage in with_prerequisites(config.stages))


def run_point(config_file: str, cwd: str) -> None:
    """One point, every stage in this process (a Ray task of its own), resuming what an earlier attempt left."""
    from rlhf_syco import pipeline
    from rlhf_syco.config import load_config
    from rlhf_syco.stages import open_run

    os.chdir(cwd)
    config = load_config(config_file)
    run_dir = open_run(config)
    try:
        pipeline.run(config, run_dir, config.stages, use_ray=False)
    finally:
        run_dir.unlock()


def run_local(folder: Path, configs: list, paths: list[Path], retries: int, cpus_per_point: float | None) -> dict:
    """Every unfinished point as a Ray task; {name: "done" | "skipped" | "failed: ..." | "stopped"}. A SIGTERM or
    SIGINT to this process stops every point (PM training and PPO with a checkpoint) and exits 128 + signal."""
    import ray

    from rlhf_syco.pipeline import FORWARDED_ENV

    outcome = {name: "skipped" for (name, config) in configs if is_finished(config)}
    todo = {name: path for (name, config), path in zip(configs, paths) if name not in outcome}
    if not todo:
        return outcome
    started_here = not ray.is_initialized()
    if started_here:
        env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}
        address = configs[0][1].compute.ray_address or os.environ.get("RAY_ADDRESS") or "local"
        ray.init(address=address, include_dashboard=False, logging_level="ERROR", runtime_env={"env_vars": env},
                 **({"num_cpus": os.cpu_count()} if address == "local" else {}))
    try:
        cpus = cpus_per_point or max(1, int(ray.cluster_resources().get("CPU", 1)))
        task = ray.remote(max_retries=0, max_calls=1)(run_point)  # max_calls: memory back after each point
        attempts = dict.fromkeys(todo, 0)
        running = {}

        def start(name):
            attempts[name] += 1
            ref = task.options(name=f"sweep-{name}", num_cpus=cpus).remote(str(todo[name].resolve()), os.getcwd())
            running[ref] = name
            _record(folder, name, state="running", attempts=attempts[name])

        received = []

        def stop(signum, frame):  # SIGTERM / SIGINT: every point stops, from its checkpoints next time
            received.append(signum)
            for ref in running:
                ray.cancel(ref, force=len(received) > 1)

        with preemption.handled_by(stop):
            for name in todo:
                start(name)
            _wait(folder, running, received, attempts, retries, start, outcome)
        if received:
            raise preemption.at_once(received[0])
    finally:
        if started_here:
            ray.shutdown()
    return outcome


def _wait(folder: Path, running: dict, received: list, attempts: dict, retries: int, start, outcome: dict) -> None:
    """Collect the points as they end: done, retried, failed, or stopped by a signal to the driver."""
    import ray

    while running:
        (ready,), _ = ray.wait(list(running), num_returns=1)
        name = running.pop(ready)
        try:
            ray.get(ready)
        except Exception as e:  # a point's failure (Ray wraps it): retried, then reported; the others go on
            if received:
                outcome[name] = "stopped"
                _record(folder, name, state="stopped")
                continue
            cause = getattr(e, "cause", e)
            error = (str(cause) if isinstance(cause, UserError) else f"{type(cause).__name__}: {cause}")
            error = error.splitlines()[0]
            if attempts[name] <= retries and not isinstance(cause, UserError):  # bad input fails the same way
                console.print(f"[yellow]{name}: attempt {attempts[name]} failed ({error}); running it "
                              f"again from its checkpoints[/yellow]", highlight=False, soft_wrap=True)
                start(name)
            else:
                outcome[name] = f"failed: {error}"
                _record(folder, name, state="failed", error=error)
            continue
        outcome[name] = "done"
        _record(folder, name, state="done", finished=now())


def _record(folder: Path, name: str, **fields) -> None:
    state = read_json(folder / SWEEP_FILE)
    for point in state["points"]:
        if point["name"] == name:
            point.update(fields)
            if fields.get("state") != "failed":
                point.pop("error", None)
    write_json(folder / SWEEP_FILE, state)


# --------------------------------------------------------------------------- Slurm

ARRAY_SCRIPT = """#!/bin/bash
# A job array of rlhf-syco sweep: task i runs point i (points/NNN.yaml) in this process, resuming what an earlier
# attempt or a requeue left; a failed point is run again up to {retries} more times.
#SBATCH --job-name={job_name}
#SBATCH --array=0-{last}
#SBATCH --ntasks=1
#SBATCH --cpus-per-task={cpus}
#SBATCH --time={time}
#SBATCH --chdir={workdir}
#SBATCH --output={log_dir}/%A_%a.log
#SBATCH --open-mode=append
#SBATCH --requeue
{options}
set -uo pipefail
export PATH={venv_bin}:$PATH
point={folder}/points/$(printf %03d "$SLURM_ARRAY_TASK_ID").yaml
for attempt in $(seq 1 {attempts}); do
  echo "point $point, attempt $attempt, job $SLURM_JOB_ID, $(date -Is)"
  python -m rlhf_syco.cli run "$point" --resume --no-ray && exit 0
  status=$?
  [ "$status" -eq 2 ] && exit 2  # bad input fails the same way every time
done
exit "$status"
"""


def submit_array(base, folder: Path, configs: list, retries: int, dry_run: bool = False, **job) -> str | None:
    """`slurm/sweep.sbatch` (one array task per point) submitted with sbatch; the job id (None if `dry_run`)."""
    from rlhf_syco.slurm import job_settings, placement_options, sbatch

    settings = job_settings(base, **job)
    script = ARRAY_SCRIPT.format(
        job_name=f"rlhf-syco-sweep-{base.name}", last=len(configs) - 1, time=settings.time,
        cpus=settings.cpus_per_node or max(1, int(base.compute.cpus_per_worker or 1)), workdir=os.getcwd(),
        log_dir=(folder / "slurm").resolve(), venv_bin=shlex.quote(str(Path(sys.executable).parent)),
        folder=shlex.quote(str(folder.resolve())), attempts=retries + 1, retries=retries,
        options="\n".join(f"#SBATCH {o}" for o in placement_options(settings)))
    path = atomic_write(folder / "slurm" / "sweep.sbatch", script)
    return None if dry_run else sbatch(path)


def status(folder: Path, configs: list) -> dict[str, str]:
    """Each point's state: done (every stage), failed (as the sweep recorded it, or the run's last stage failure),
    started, or not started."""
    recorded = {p["name"]: p for p in read_json(folder / SWEEP_FILE).get("points", [])} \
        if (folder / SWEEP_FILE).exists() else {}
    out = {}
    for name, config in configs:
        manifest = config.run_dir / "manifest.json"
        failures = read_json(manifest).get("failures", []) if manifest.exists() else []
        if is_finished(config):
            out[name] = "done"
        elif recorded.get(name, {}).get("state") == "failed":
            out[name] = f"failed: {recorded[name]['error']}"
        elif failures:
            out[name] = f"failed: {failures[-1]['error']}"
        else:
            out[name] = "started" if manifest.exists() else "not started"
    return out
