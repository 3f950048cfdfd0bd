"""The `rlhf-syco` command line.

Every command takes an experiment config (YAML in `experiments/`) followed by optional dotted overrides:

    rlhf-syco train-pm experiments/default.yaml pm.train.lr=1e-5 name=lr-sweep-1

Results go to `runs/<name>/`. Finished stages are skipped when a command is run again; `--force STAGE`
redoes one. Bad input (a full disk included) exits with code 2 and one line saying what and where; a reward
server or judge that fails, with code 3; a stage stopped by SIGTERM or SIGINT, with 143 or 130 (docs/reliability.md).
"""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path
from typing import Optional

import click
import typer

from rlhf_syco.errors import UserError
from rlhf_syco.progress import console
from rlhf_syco.rundir import now
from rlhf_syco.stages import STAGES

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="rich",
                  pretty_exceptions_show_locals=False,  # locals may hold API keys
                  help="Does optimizing a policy against a preference model make it sycophantic? "
                       "Train a PM, probe it, evaluate sycophancy (feedback, answer, are-you-sure, mimicry).")

# Recent typer vendors its own click, whose exceptions are not click's: its ClickException is the subclass of
# typer.TyperException, and it has an Abort of its own.
ABORTS = (click.exceptions.Abort, getattr(typer, "Abort", click.exceptions.Abort))
USAGE_ERRORS = (click.exceptions.ClickException,
                *(getattr(typer, "TyperException", None).__subclasses__() if hasattr(typer, "TyperException") else ()))
ConfigArg = typer.Argument(None, help="Experiment YAML (default: experiments/default.yaml).", show_default=False)
OverridesArg = typer.Argument(None, help="Dotted overrides such as pm.train.lr=1e-5.", show_default=False)
ForceOpt = typer.Option([], "--force", help=f"Redo this stage (repeatable): {', '.join(STAGES)}.")


def _config_and_overrides(config_path: Optional[str], overrides: Optional[list[str]]) -> tuple:
    """`CONFIG key=value ...` (CONFIG optional) -> (path or None, overrides)."""
    args = ([config_path] if config_path else []) + list(overrides or [])
    path = args[0] if args and "=" not in args[0] else None
    return path, [a for a in args if a is not path]


def _load(config_path: Optional[str], overrides: Optional[list[str]]):
    """`CONFIG key=value ...` (CONFIG optional) -> validated config."""
    from rlhf_syco.config import load_config

    return load_config(*_config_and_overrides(config_path, overrides))


def _setup(config_path: Optional[str], overrides: Optional[list[str]], force: list[str] = ()):
    """Load the config and open its run folder."""
    from rlhf_syco.stages import open_run

    cfg = _load(config_path, overrides)
    return cfg, open_run(cfg, tuple(force))


def _stages(names: list[str], config, run_dir) -> None:
    from rlhf_syco.stages import run_stage

    for name in names:
        run_stage(name, config, run_dir)
    run_dir.update_manifest(finished=now())


@app.command()
def run(config: Optional[str] = ConfigArg, overrides: Optional[list[str]] = OverridesArg, force: list[str] = ForceOpt,
        resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run. Finished stages are "
                                    "always skipped and interrupted ones resume from their checkpoints; the flag "
                                    "says so explicitly (Slurm requeues use it)."),
        no_ray: bool = typer.Option(False, "--no-ray", help="Run the stages in this process instead of as Ray "
                                    "tasks (same results; easier to debug).")):
    """Run the experiment: the config's `stages` (all by default: data -> PM -> probe -> evaluation -> best-of-N
    -> PPO -> plots)."""
    from rlhf_syco import pipeline

    cfg, run_dir = _setup(config, overrides, force)
    pipeline.run(cfg, run_dir, cfg.stages, use_ray=not no_ray)
    _print_results(run_dir)


@app.command("build-data")
def build_data(config: Optional[str] = ConfigArg, overrides: Optional[list[str]] = OverridesArg,
               force: list[str] = ForceOpt):
    """Build the PM's preference pairs (HH-RLHF + belief-matching pairs with labeler bias beta)."""
    cfg, run_dir = _setup(config, overrides, force)
    _stages(["data"], cfg, run_dir)
    console.print_json(json.dumps(json.loads((run_dir / "data" / "stats.json").read_text())))


@app.command("build-intervention-data")
def build_intervention_data(config: Optional[str] = ConfigArg, overrides: Optional[list[str]] = OverridesArg,
                            examples: int = typer.Option(1000, "--examples", min=1, help="Examples before filtration."),
                            filter_known: bool = typer.Option(True, "--filtration/--no-filtration",
                                                              help="Keep only what the policy answers right "
                                                                   "without the user's opinion (Wei et al.)."),
                            out: Optional[Path] = typer.Option(None, "-o", "--out",
                                                               help="Output jsonl (default: RUN/intervention/data.jsonl).")):
    """Wei et al.'s synthetic data against sycophancy: NLP claims whose truth is independent of the user's
    opinion, filtered by the config's policy (docs/intervention.md)."""
    from rlhf_syco.intervention.data import build

    cfg = _load(config, overrides)
    report = build(cfg, out or cfg.run_dir / "intervention" / "data.jsonl", examples, filter_known)
    console.print_json(json.dumps(report))


@app.command()
def intervene(config: Optional[str] = ConfigArg, overrides: Optional[list[str]] = OverridesArg,
              force: list[str] = ForceOpt):
    """An intervention against sycophancy (intervene.method: full, lora, prompt_tuning, kshot, none) on Wei et
    al.'s synthetic data, and the policy before and after it (docs/intervention.md)."""
    cfg, run_dir = _setup(config, overrides, force)
    _stages(["intervene"], cfg, run_dir)
    _plot(cfg, run_dir)


@app.command("train-pm")
def train_pm(config: Optional[str] = ConfigArg, overrides: Optional[list[str]] = OverridesArg,
             force: list[str] = ForceOpt):
    """Train the preference model (TRL RewardTrainer); report held-out pairwise accuracy."""
    cfg, run_dir = _setup(config, overrides, force)
    _stages(["pm"], cfg, run_dir)
    _print_results(run_dir)


@app.command("probe-pm")
def probe_pm(config: Optional[str] = ConfigArg, overrides: Optional[list[str]] = OverridesArg,
             force: list[str] = ForceOpt):
    """Does the PM prefer the reply a user wants over the true one, in each bias family? (PM and prompted PM)"""
    cfg, run_dir = _setup(config, overrides, force)
    _stages(["probe"], cfg, run_dir)
    _print_results(run_dir)


@app.command()
def analyze(config: Optional[str] = ConfigArg, overrides: Optional[list[str]] = OverridesArg,
            data: Optional[str] = typer.Option(None, "--data", help="Preference pairs to analyse: an HH-RLHF-format "
                                               ".jsonl(.gz), a .jsonl of pairs in the project's format, or a hub "
                                               "dataset id (default: this run's PM pairs)."),
            force: list[str] = ForceOpt):
    """What in the preference data predicts preference (Sharma et al. 2023 sec. 4.1): feature labels, a Bayesian
    logistic regression with a Laplace prior, its held-out accuracy beside the PM's."""
    if data:
        overrides = list(overrides or []) + [f"analysis.data={data}"]
    cfg, run_dir = _setup(config, overrides, force)
    (run_dir.path / "analyze" / "DONE.json").unlink(missing_ok=True)  # refit each time; the labels stay cached
    _stages(["analyze"], cfg, run_dir)
    console.print(f"results: {run_dir.results / 'preference_features.csv'}")


@app.command("eval")
def evaluate(config: Optional[str] = ConfigArg, overrides: Optional[list[str]] = OverridesArg,
             model: Optional[str] = typer.Option(None, "--model", help="Hub id, local folder or built-in name of "
                                                 "the chat model to evaluate (default: the config's policy)."),
             force: list[str] = ForceOpt):
    """Evaluate a chat model on the four sycophancy types (+ opinion alignment), with 95% bootstrap CIs."""
    if model:
        overrides = list(overrides or []) + [f"policy.model.name_or_path={model}"]
    cfg, run_dir = _setup(config, overrides, force)
    _stages(["eval"], cfg, run_dir)


@app.command("judge-check")
def judge_check(config: Optional[str] = ConfigArg, overrides: Optional[list[str]] = OverridesArg,
                judge: Optional[list[str]] = typer.Option(None, "--judge", help="Only this check (repeatable): "
                                                          "answer, are_you_sure, mimicry, feedback, opinion.")):
    """Each judge's accuracy, precision and recall against the hand-labelled validation set, with 95% CIs."""
    from rlhf_syco.evaluation import judge_check as checks
    from rlhf_syco.rundir import RunDir

    cfg = _load(config, overrides)
    run_dir = RunDir(cfg.run_dir)
    checks.run(cfg, run_dir, judge or None)
    console.print(f"results: {run_dir.results / 'judge_check.json'}")


@app.command()
def bon(config: Optional[str] = ConfigArg, overrides: Optional[list[str]] = OverridesArg, force: list[str] = ForceOpt):
    """Best-of-N: one sample pool per prompt, scored by every reward model, exact curves for every n."""
    cfg, run_dir = _setup(config, overrides, force)
    _stages(["bon"], cfg, run_dir)
    _plot(cfg, run_dir)


@app.command()
def ppo(config: Optional[str] = ConfigArg, overrides: Optional[list[str]] = OverridesArg, force: list[str] = ForceOpt,
        resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint (the default when "
                                    "one exists; the flag says so explicitly).")):
    """PPO against the PM, with sycophancy evaluated at step 0 and at every evaluation checkpoint."""
    cfg, run_dir = _setup(config, overrides, force)
    _stages(["ppo"], cfg, run_dir)
    _plot(cfg, run_dir)


def _group_rl_command(name: str, label: str) -> None:
    def command(config: Optional[str] = ConfigArg, overrides: Optional[list[str]] = OverridesArg,
                force: list[str] = ForceOpt):
        cfg, run_dir = _setup(config, overrides, force)
        _stages([name], cfg, run_dir)
        _plot(cfg, run_dir)

    command.__doc__ = (f"{label} (TRL) against each of {name}.reward_models, evaluated as PPO is; resumes from its "
                       "last checkpoint.")
    app.command(name)(command)


_group_rl_command("grpo", "GRPO")
_group_rl_command("rloo", "RLOO")


@app.command()
def plot(run_dir: Path = typer.Argument(..., help="A run folder, e.g. runs/default.")):
    """Draw sycophancy vs best-of-N and vs RL steps (PNG + the CSV behind each) from a run's results."""
    if not (run_dir / "results").is_dir():
        raise UserError(f"not a run folder (no results/): {run_dir}")
    if not _plot(None, run_dir):
        raise UserError(f"nothing to plot yet in {run_dir / 'results'}: run the bon, ppo, grpo or rloo stage first")


@app.command()
def submit(config: Optional[str] = ConfigArg, overrides: Optional[list[str]] = OverridesArg,
           nodes: Optional[int] = typer.Option(None, help="Nodes (default: slurm.nodes)."),
           gpus_per_node: Optional[int] = typer.Option(None, help="GPUs per node (default: slurm.gpus_per_node)."),
           time: Optional[str] = typer.Option(None, help="Wall-clock limit per start, e.g. 24:00:00."),
           partition: Optional[str] = typer.Option(None), account: Optional[str] = typer.Option(None),
           dry_run: bool = typer.Option(False, "--dry-run", help="Print the batch script; submit nothing.")):
    """Submit the whole experiment to Slurm: a Ray head on the first node, workers on the rest."""
    from rlhf_syco import slurm

    cfg, run_dir = _setup(config, overrides)
    job_id = slurm.submit(cfg, run_dir, dry_run=dry_run, nodes=nodes, gpus_per_node=gpus_per_node, time=time,
                          partition=partition, account=account)
    _submitted(job_id, run_dir / "slurm" / "job.sbatch", "job")


@app.command()
def sweep(config: Optional[str] = ConfigArg, overrides: Optional[list[str]] = OverridesArg,
          grid: list[str] = typer.Option([], "--grid", help="KEY=V1,V2,... (repeatable): one run per combination."),
          seeds: int = typer.Option(1, "--seeds", min=1, help="Seeds per grid point: seed, seed + 1, ..."),
          retries: int = typer.Option(1, "--retries", min=0, help="Attempts after a point's first failure."),
          cpus_per_point: Optional[float] = typer.Option(None, help="Ray CPUs per point (default: all)."),
          use_slurm: bool = typer.Option(False, "--slurm", help="Submit a Slurm job array, one task per point."),
          time: Optional[str] = typer.Option(None, help="Slurm: wall-clock limit per point."),
          partition: Optional[str] = typer.Option(None), account: Optional[str] = typer.Option(None),
          show_status: bool = typer.Option(False, "--status", help="Print each point's state; run nothing."),
          dry_run: bool = typer.Option(False, "--dry-run", help="Slurm: write the batch script; submit nothing.")):
    """Run the experiment at every point of a grid times seeds, one run folder each, in <name>-sweep/."""
    from rich.table import Table

    from rlhf_syco import sweep as sweeps

    values = sweeps.parse_grid(grid)
    base, folder, configs = sweeps.points(*_config_and_overrides(config, overrides), values, seeds)
    if show_status:
        outcome = sweeps.status(folder, configs)
    else:
        paths = sweeps.write_points(folder, values, seeds, configs)
        if use_slurm:
            job = sweeps.submit_array(base, folder, configs, retries, dry_run=dry_run, time=time,
                                      partition=partition, account=account)
            _submitted(job, folder / "slurm" / "sweep.sbatch", f"job array ({len(configs)} points)")
            return
        outcome = sweeps.run_local(folder, configs, paths, retries, cpus_per_point)
    table = Table("point", "state", title=f"sweep {folder}")
    for name, state in outcome.items():
        table.add_row(name, state)
    console.print(table)
    failed = [name for name, state in outcome.items() if state.startswith("failed")]
    if failed and not show_status:
        raise UserError(f"{len(failed)} of {len(configs)} points failed: {', '.join(failed)} (see "
                        f"{folder / 'sweep.json'}); run the same command again to resume them")


@app.command()
def report(folders: list[Path] = typer.Argument(..., help="Run folders or sweep folders (<name>-sweep/)."),
           out: Path = typer.Option(Path("report"), "-o", "--out", help="Output folder.")):
    """Figures, pooled tables and report.md across runs: sycophancy vs n and vs RL steps per group (a sweep's
    grid values, seeds pooled), the paired PM - non-sycophantic PM differences, the findings and gold fits."""
    from rlhf_syco import report as reports

    made = reports.build(folders, out)
    console.print(f"report of {made['runs']} runs in {made['groups']} groups: {out / 'report.md'}")


def _submitted(job_id: str | None, script: Path, what: str) -> None:
    """The batch script of a dry run, or the submitted job's id (printed last, for scripts to read)."""
    if job_id is None:
        print(script.read_text())
    else:
        console.print(f"submitted {what} {job_id}; logs in {script.parent}")
        print(job_id)


@app.command("show-config")
def show_config(config: Optional[str] = ConfigArg, overrides: Optional[list[str]] = OverridesArg):
    """Print the fully resolved config (defaults filled in, overrides applied, secrets redacted)."""
    from rlhf_syco.rundir import redact

    cfg = _load(config, overrides)
    console.print_json(json.dumps(redact(cfg.dump())))


def _plot(config, run_dir) -> dict:
    """Draw the run's figures; print and return {name: path}."""
    from rlhf_syco import plots

    made = plots.run(config, run_dir)
    for name, path in made.items():
        console.print(f"{name}: {path}")
    return made


def _print_results(run_dir) -> None:
    from rich.table import Table

    res = Path(run_dir.results)
    if (res / "pm_heldout.json").exists():
        table = Table("held-out pairs", "PM accuracy", "n", title="Preference model")
        for src, v in json.loads((res / "pm_heldout.json").read_text()).items():
            table.add_row(src, f"{v['accuracy']:.3f}", str(v["n"]))
        console.print(table)
    if (res / "probe_pm.json").exists():
        table = Table("reward model", "family", "prefers sycophantic", "95% CI", "n",
                      title="PM probe (held-out phrasings, evaluation-half items)")
        for name, result in json.loads((res / "probe_pm.json").read_text()).items():
            for family, v in {"all": result, **result.get("families", {})}.items():
                table.add_row(name, family, f"{v['sycophantic_preference_rate']:.3f}",
                              f"[{v['ci_low']:.3f}, {v['ci_high']:.3f}]", str(v["n"]))
        console.print(table)
    console.print(f"results: {res}")
    plots = sorted((res.parent / "plots").glob("*.png"))
    if plots:
        console.print("plots:\n" + "\n".join(f"  {p}" for p in plots), highlight=False)


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # our own rich bars show progress
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        app(standalone_mode=False)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            _exit_distributed()
    except UserError as e:
        console.print(f"[red]error:[/red] {e}", markup=True, highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except OSError as e:
        cause = getattr(e, "cause", e)  # a Ray task's error wraps the worker's own
        if getattr(cause, "errno", None) not in (errno.ENOSPC, errno.EDQUOT):
            raise
        console.print(f"[red]error:[/red] {cause.filename or 'a file'}: no space left on the device (nothing "
                      f"half-written is kept: free space and run again to resume)", highlight=False, soft_wrap=True)
        sys.exit(2)
    except ABORTS:
        sys.exit(130)
    except USAGE_ERRORS as e:
        e.show()
        sys.exit(e.exit_code)


def _exit_distributed() -> None:
    """Leave a multi-process launch cleanly: DeepSpeed ZeRO-3 can abort in interpreter teardown after a
    successful run, so shut the process group down and exit without running finalizers."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
