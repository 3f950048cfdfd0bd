"""The tiny experiment N times, each killed (SIGKILL) at random moments and with one checkpoint damaged, resumed
to the end, and compared with one uninterrupted run:

    python benchmarks/chaos.py [--runs 20] [--seed 0] [--out /tmp/chaos] [--signal TERM]

Each run: start `rlhf-syco run experiments/tiny.yaml --no-ray`, kill it (SIGKILL) just after PM training wrote a
checkpoint and damage that checkpoint (truncate, flip a byte, or delete one of its files, at random); start it
again, kill it at a random moment of what follows and damage the newest PPO checkpoint, if there is one; then
run it to the end with `--resume`. Prints one line per run and "k/N identical": every file in `results/` byte for byte
the same as the uninterrupted run's.

With `--signal TERM`, the runs go through Ray (the default of `rlhf-syco run`) and are stopped the way Slurm
preempts them: SIGTERM to the driver alone, at three random moments, each of which must end in one line and exit
143, before the run is resumed to the end.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMAND = [sys.executable, "-m", "rlhf_syco.cli", "run", str(ROOT / "experiments" / "tiny.yaml"), "--no-ray"]


def results(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run_dir / "results").glob("*")) if p.is_file()}


def damage(folder: Path, rng: random.Random) -> str:
    """Damage one file of a sealed checkpoint folder as a failing disk would."""
    files = [p for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "SEALED.json" and p.stat().st_size]
    target, how = rng.choice(files), rng.choice(["truncate", "flip", "delete"])
    if how == "truncate":
        with open(target, "r+b") as f:
            f.truncate(target.stat().st_size // 2)
    elif how == "flip":
        data = bytearray(target.read_bytes())
        data[rng.randrange(len(data))] ^= 0xFF
        target.write_bytes(bytes(data))
    else:
        target.unlink()
    return f"{how} {target.relative_to(folder.parent.parent.parent)}"


def newest(folder: Path, pattern: str) -> Path | None:
    sealed = [p.parent for p in folder.glob(f"{pattern}/SEALED.json")]
    return max(sealed, key=lambda p: int(p.name.split("-")[1]), default=None)


def start(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(COMMAND + args, stdout=log.open("a"), stderr=subprocess.STDOUT, start_new_session=True,
                            cwd=ROOT)


def kill(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def one_run(number: int, out: Path, rng: random.Random, reference: dict[str, bytes]) -> tuple[bool, str]:
    args = [f"runs_dir={out}", f"name=run-{number}", "--resume"]
    run_dir, log = out / f"run-{number}", out / f"run-{number}.log"
    events = []
    process = start(args, log)  # killed once PM training has written a checkpoint, which is then damaged
    pm_checkpoints = run_dir / "pm" / "checkpoints"
    deadline = time.time() + 300
    while process.poll() is None and newest(pm_checkpoints, "checkpoint-*") is None and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(rng.uniform(0, 0.3))
    if process.poll() is None:
        kill(process)
        events.append("killed in PM training")
    found = newest(pm_checkpoints, "checkpoint-*")
    if found is not None:
        events.append(damage(found, rng))
    process = start(args, log)  # killed at a random moment of what follows, and its newest PPO checkpoint damaged
    seconds = rng.uniform(1, 15)
    time.sleep(seconds)
    if process.poll() is None:
        kill(process)
        events.append(f"killed after {seconds:.1f} s")
    found = newest(run_dir / "ppo" / "pm" / "checkpoints", "step-*")
    if found is not None and not (run_dir / "ppo" / "DONE.json").exists():
        events.append(damage(found, rng))
    done = subprocess.run(COMMAND + args, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        return False, f"{', '.join(events)}; the resumed run failed: {done.stderr.strip().splitlines()[-1:]}"
    return results(run_dir) == reference, ", ".join(events)


def one_preempted_run(number: int, out: Path, rng: random.Random, reference: dict[str, bytes]) -> tuple[bool, str]:
    command = [c for c in COMMAND if c != "--no-ray"] + [f"runs_dir={out}", f"name=run-{number}", "--resume"]
    events = []
    for _ in range(3):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                   start_new_session=True, cwd=ROOT)
        seconds = rng.uniform(5, 30)
        try:
            process.wait(seconds)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGTERM)
        stderr = process.communicate()[1]
        last = (stderr.strip().splitlines() or [""])[-1]
        if process.returncode == 0:
            events.append(f"finished before {seconds:.1f} s")
            break
        if process.returncode != 143 or "Traceback" in stderr or not last.startswith("error: "):
            return False, f"{', '.join(events)}; SIGTERM after {seconds:.1f} s: exit {process.returncode}, {last}"
        events.append(f"after {seconds:.1f} s: {last.removeprefix('error: ').split(';')[0]}")
        while subprocess.run(["pgrep", "-s", str(process.pid)], capture_output=True).returncode == 0:
            time.sleep(0.2)  # Ray's workers and daemons stop with the driver
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        return False, f"{', '.join(events)}; the resumed run failed: {done.stderr.strip().splitlines()[-1:]}"
    return results(out / f"run-{number}") == reference, ", ".join(events)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="/tmp/rlhf-syco-chaos")
    parser.add_argument("--signal", choices=["KILL", "TERM"], default="KILL")
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    started = time.time()
    subprocess.run(COMMAND + [f"runs_dir={out}", "name=reference"], check=True, capture_output=True, cwd=ROOT)
    reference = results(out / "reference")
    print(f"reference run: {time.time() - started:.0f} s, {len(reference)} result files", flush=True)
    rng = random.Random(args.seed)
    identical = 0
    for number in range(args.runs):
        same, what = (one_run if args.signal == "KILL" else one_preempted_run)(number, out, rng, reference)
        identical += same
        print(f"run {number + 1:>2}: {'identical' if same else 'DIFFERENT'} ({what})", flush=True)
    print(f"{identical}/{args.runs} identical ({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
