"""What the runs folder's shared best-of-N pool saves a sweep, measured side by side in one run.

Two points of a beta sweep (SmolLM2-135M-Instruct policy, a MiniLM PM trained briefly at each beta) run their
best-of-N stage three ways: the first point with an empty shared store (it samples and judges), the second point
beside it (it finds the pool and its judgments in the store and only scores them with its own PM), and the
second point alone in a runs folder of its own (it samples and judges again). Printed: each one's best-of-N time,
the ratio shared / alone, and whether the shared and the lone second point wrote the same result bytes.

    python benchmarks/shared_pool.py [--items 4] [--n-max 8]
    python benchmarks/shared_pool.py --sweep runs/study-beta-sweep   # the stage times a finished sweep recorded
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_point(runs_dir: Path, beta: float, items: int, n_max: int) -> float:
    """`rlhf-syco run` of one point (data, a short PM training, best-of-N); returns the best-of-N stage's seconds."""
    overrides = [f"runs_dir={runs_dir}", f"name=beta-{beta}", f"pm.data.beta={beta}", "pm.train.max_steps=10",
                 "stages=[data,pm,bon]", "bon.types=[answer,feedback]", f"bon.prompts_per_type={items}",
                 f"bon.n_max={n_max}", "bon.seed=0"]
    subprocess.run([sys.executable, "-m", "rlhf_syco.cli", "run", str(ROOT / "experiments" / "default.yaml"),
                    "--no-ray", *overrides], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    manifest = json.loads((runs_dir / f"beta-{beta}" / "manifest.json").read_text())
    return manifest["stages"]["bon"]["seconds"]


def digest(run: Path) -> str:
    files = sorted(p for p in (run / "results").glob("bon_*") if p.is_file())
    return hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in files)).hexdigest()[:16]


def from_sweep(folder: Path) -> None:
    """Each point's recorded stage times; the first point to reach best-of-N is the one that sampled."""
    points = json.loads((folder / "sweep.json").read_text())["points"]
    rows = []
    for point in points:
        manifest = folder / point["name"] / "manifest.json"
        if manifest.exists():
            stages = json.loads(manifest.read_text())["stages"]
            rows.append((stages.get("bon", {}).get("started", ""), point["name"],
                         {k: v.get("seconds") for k, v in stages.items()}))
    for started, name, seconds in sorted(rows):
        shown = "  ".join(f"{k} {v:.0f} s" if v is not None else f"{k} running" for k, v in seconds.items())
        print(f"{name:24s} {shown}")
    total = sum(v or 0 for *_, seconds in rows for v in seconds.values())
    print(f"all stages of all points: {total / 60:.1f} min")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=4, help="items per type (answer: 4 prompts each, feedback 5)")
    parser.add_argument("--n-max", type=int, default=8)
    parser.add_argument("--sweep", type=Path, help="print the stage times a finished sweep recorded instead")
    args = parser.parse_args()
    if args.sweep:
        from_sweep(args.sweep)
        return
    with tempfile.TemporaryDirectory() as tmp:
        shared, alone = Path(tmp) / "shared", Path(tmp) / "alone"
        start = time.perf_counter()
        first = run_point(shared, 0.95, args.items, args.n_max)
        second = run_point(shared, 0.5, args.items, args.n_max)
        lone = run_point(alone, 0.5, args.items, args.n_max)
        same = digest(shared / "beta-0.5") == digest(alone / "beta-0.5")
        print(f"best-of-N, first point (samples and judges):      {first:7.1f} s")
        print(f"best-of-N, second point with the shared pool:     {second:7.1f} s")
        print(f"best-of-N, second point alone (samples again):    {lone:7.1f} s")
        print(f"shared / alone: x{second / lone:.2f}; results identical: {same}; "
              f"whole benchmark {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
