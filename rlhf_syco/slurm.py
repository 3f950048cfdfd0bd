"""Slurm jobs: `rlhf-syco run` on a Ray cluster spread over the allocated nodes.

`render` fills in `slurm/ray.sbatch`. The job starts a Ray head on its first node and a Ray worker on each
other node (one `srun` step per node, with the node's CPUs and GPUs), waits until every node has joined,
and runs `rlhf-syco run` against that cluster with the project's Python (the one running this code).
`submit` writes the resolved config and the script into `<run_dir>/slurm/` (the job's log goes there too,
`<job id>.log`) and calls `sbatch`.

Preemption and time limits: the job is `--requeue`able, and two minutes before its time limit Slurm sends
the batch shell USR1, on which it requeues itself. A restarted job (`SLURM_RESTART_COUNT` > 0) runs with
`--resume` on a fresh Ray cluster: finished stages are skipped and an interrupted one resumes from its
checkpoints.
"""

from __future__ import annotations

import math
import os
import shlex
import string
import subprocess
import sys
from pathlib import Path

import yaml
from pydantic import Field, ValidationError

from rlhf_syco.errors import UserError
from rlhf_syco.rundir import RunDir, atomic_write
from rlhf_syco.strict import Strict

TEMPLATE = Path(__file__).resolve().parent.parent / "slurm" / "ray.sbatch"


class SlurmConfig(Strict):
    """The `slurm` section: the job's size and placement. `rlhf-syco submit` flags override it."""

    nodes: int = Field(1, gt=0)
    gpus_per_node: int = Field(0, ge=0)
    # Default: enough for this node's share of the workers, compute.cpus_per_worker each (1 when unset).
    cpus_per_node: int | None = Field(None, gt=0)
    time: str = "24:00:00"  # wall-clock limit per start; a job that reaches it requeues itself
    partition: str | None = None
    account: str | None = None
    sbatch_options: list[str] = []  # more `#SBATCH` options, e.g. ["--qos=high", "--constraint=a100"]


class _Template(string.Template):
    delimiter = "@"  # `$` belongs to bash


def job_settings(config, **flags) -> SlurmConfig:
    """`config.slurm` with the flags that are not None laid over it."""
    try:
        return SlurmConfig.model_validate({**config.slurm.model_dump(),
                                           **{k: v for k, v in flags.items() if v is not None}})
    except ValidationError as e:
        err = e.errors()[0]
        raise UserError(f"{err['msg']} (got {err['input']!r})", f"slurm.{err['loc'][0]}") from None


def render(config, run_dir: RunDir, *, nodes: int | None = None, gpus_per_node: int | None = None,
           cpus_per_node: int | None = None, time: str | None = None, partition: str | None = None,
           account: str | None = None, sbatch_options: list[str] | None = None, resume: bool = False) -> str:
    """The batch script that runs `config` in `run_dir`; `resume` passes `--resume` from the first start."""
    job = job_settings(config, nodes=nodes, gpus_per_node=gpus_per_node, cpus_per_node=cpus_per_node, time=time,
                       partition=partition, account=account, sbatch_options=sbatch_options)
    workers_per_node = math.ceil(config.compute.num_workers / job.nodes)
    cpus = job.cpus_per_node or math.ceil((config.compute.cpus_per_worker or 1) * workers_per_node)
    options = placement_options(job)
    folder = Path(run_dir.path).resolve() / "slurm"
    return _Template(TEMPLATE.read_text()).substitute(
        job_name=f"rlhf-syco-{config.name}", nodes=job.nodes, cpus_per_node=cpus, time=job.time,
        workdir=os.getcwd(), log_dir=folder,
        sbatch_options="\n".join(f"#SBATCH {option}" for option in options),
        venv_bin=shlex.quote(str(Path(sys.executable).parent)),  # not resolved: a venv's python is a link
        gpus_per_node=job.gpus_per_node, config=shlex.quote(str(folder / "config.yaml")),
        resume="--resume" if resume else "",
    )


def submit(config, run_dir: RunDir, *, dry_run: bool = False, **job) -> str | None:
    """Write `<run_dir>/slurm/config.yaml` and `job.sbatch`, submit the script; the job id (None if `dry_run`).

    `job`: the keyword arguments of `render`."""
    folder = Path(run_dir.path) / "slurm"
    atomic_write(folder / "config.yaml", yaml.safe_dump(config.dump(), sort_keys=False))
    script = atomic_write(folder / "job.sbatch", render(config, run_dir, **job))
    return None if dry_run else sbatch(script)


def placement_options(job: SlurmConfig) -> list[str]:
    """The `#SBATCH` options of a job's partition, account, GPUs and `sbatch_options`."""
    return [f"--{key}={value}" for key, value in (("partition", job.partition), ("account", job.account),
                                                  ("gpus-per-node", job.gpus_per_node)) if value] + job.sbatch_options


def sbatch(script: Path) -> str:
    """Submit `script`; the job id."""
    try:
        done = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True)
    except FileNotFoundError:
        raise UserError("sbatch not found: submit from a Slurm login node") from None
    if done.returncode:
        raise UserError(f"sbatch refused {script}: {done.stderr.strip()}")
    return done.stdout.strip().split(";")[0]  # `--parsable` prints "id" or "id;cluster"
