"""Scoring a best-of-N pool with the PM's body in bfloat16 instead of float32, measured side by side in one run.

A finished run's PM scores the first `--shards` shards of each type of the run's own best-of-N pool twice, in
float32 and with `dtype: bfloat16` (the scalar head stays float32), in this process, one after the other on the
same inputs. Printed: each one's seconds and the ratio; how closely the scores agree (Pearson r, Spearman rho,
the largest difference); how often the two pick the same top sample of a prompt's pool (best-of-N at n = N), and
how many prompts' top score ties; and, per judged column of the run's `bon/judged/` files, the best-of-N value at
n = N under each, the number a result would report.

    python benchmarks/pm_scoring_dtype.py RUN_DIR [--shards 2] [--reward-model pm]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def pool(run: Path, shards: int) -> dict[str, dict]:
    """{type: {"conversations", "responses", "rows", "n"}}: the first `shards` shards of each type's pool, as
    `score_pool` scores them (`pool_texts`)."""
    from rlhf_syco.bon.pool import pool_texts

    out = {}
    for folder in sorted((run / "bon" / "pool").iterdir()):
        records = [json.loads(line) for path in sorted(folder.glob("shard-*.jsonl"))[:shards]
                   for line in path.read_text().splitlines()]
        conversations, responses = pool_texts(records, [r["samples"] for r in records])
        out[folder.name] = {"conversations": conversations, "responses": responses, "rows": len(records),
                            "n": len(records[0]["samples"])}
    return out


def reward_model(run: Path, name: str, dtype: str):
    """The run's reward model `name` as its config builds it, every `hf` model in it with body dtype `dtype`."""
    from reward_models import build_all

    specs = json.loads((run / "manifest.json").read_text())["config"]["reward_models"]

    def with_dtype(spec):
        if isinstance(spec, dict):
            spec = {k: with_dtype(v) for k, v in spec.items()}
            return {**spec, "dtype": dtype} if spec.get("type") == "hf" else spec
        return spec

    return build_all({k: with_dtype(v) for k, v in specs.items()}, {"run_dir": str(run), "device": "cpu"})[name]


def judged(run: Path, kind: str, rows: int, n: int) -> tuple[list[str], np.ndarray]:
    """(the numeric judged columns, their values (rows, n, columns)) for the first `rows` prompts of the pool."""
    import pandas as pd

    table = pd.read_parquet(run / "bon" / "judged" / f"{kind}.parquet").sort_values(["record", "sample"])
    table = table[table["record"] < rows]
    columns = [c for c in table.columns if c not in ("record", "sample")
               and (pd.api.types.is_bool_dtype(table[c]) or pd.api.types.is_float_dtype(table[c]))]
    return columns, table[columns].to_numpy(dtype=float).reshape(rows, n, len(columns))


def top_ties(scores: np.ndarray, responses: list[str]) -> int:
    """Prompts whose highest score is shared by two different replies (a repeated reply ties with itself)."""
    n = scores.shape[1]
    return sum(len({responses[i * n + j] for j in np.flatnonzero(row == row.max())}) > 1
               for i, row in enumerate(scores))


def main() -> None:
    from scipy.stats import spearmanr

    from rlhf_syco.bon.estimator import best_of_n

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a finished run folder with pm/model and a best-of-N pool")
    parser.add_argument("--shards", type=int, default=2, help="shards of each type's pool (16 prompts each)")
    parser.add_argument("--reward-model", default="pm", help="a reward model of the run's config (pm, pm_nonsyco)")
    args = parser.parse_args()
    inputs = pool(args.run, args.shards)
    scores, seconds = {}, {}
    first = next(iter(inputs.values()))
    for dtype in ("float32", "bfloat16"):
        model = reward_model(args.run, args.reward_model, dtype)
        model.score(first["conversations"][:8], first["responses"][:8])  # loads the weights: not timed
        start = time.perf_counter()
        scores[dtype] = {kind: model.score(x["conversations"], x["responses"]).reshape(x["rows"], x["n"])
                         for kind, x in inputs.items()}
        seconds[dtype] = time.perf_counter() - start
    total = sum(x["rows"] * x["n"] for x in inputs.values())
    print(f"{args.reward_model} on {total} samples of {args.run.name} ({args.shards} shards per type)")
    print(f"float32 {seconds['float32']:.1f} s, bfloat16 {seconds['bfloat16']:.1f} s: "
          f"bfloat16 / float32 x{seconds['bfloat16'] / seconds['float32']:.2f}")
    for kind in inputs:
        full, half = scores["float32"][kind], scores["bfloat16"][kind]
        same_top = float(np.mean(full.argmax(1) == half.argmax(1)))
        ties = {d: top_ties(s[kind], inputs[kind]["responses"]) for d, s in scores.items()}
        print(f"{kind}: r {np.corrcoef(full.ravel(), half.ravel())[0, 1]:.4f}, "
              f"rho {spearmanr(full.ravel(), half.ravel()).statistic:.4f}, "
              f"max |diff| {np.abs(full - half).max():.3f} (scores sd {full.std():.2f}); same top sample "
              f"{same_top:.2f} of {len(full)} prompts; top score tied between different replies: "
              f"float32 {ties['float32']}, bfloat16 {ties['bfloat16']}")
        columns, values = judged(args.run, kind, *full.shape)
        best = {d: np.nanmean(best_of_n(s[kind], values, [full.shape[1]])[0], axis=0) for d, s in scores.items()}
        for j, column in enumerate(columns):
            print(f"    best-of-{full.shape[1]} {column}: float32 {best['float32'][j]:.3f}, "
                  f"bfloat16 {best['bfloat16'][j]:.3f}")


if __name__ == "__main__":
    main()
