"""Where in the window one model beats another: val loss by position, from finished runs.

Each run folder (what research/bench/ablate.py trained) is loaded as `mlx_kssm.io.load_model`
resolves it (best/, else the newest checkpoint) and evaluated on the validation windows the
trainer uses (the same fixed windows, so the mean over positions is the run's val loss). The
loss is averaged per position t of the window (t tokens of context before the prediction),
then over buckets of positions; the differences are taken run by run against the first
model named, on the seeds both ran.

    python research/bench/position_loss.py --data data/prepared/chars --seq 64 --batch 12 \\
        --models v1char,bolted,tf_char --runs-dir research/out/ablate_2k/runs --seeds 0,1,2

JSON on stdout: per model and seed the val loss per bucket, and per other model the paired
difference (first model minus it) per bucket, mean and sd over seeds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import emit, machine  # noqa: E402


def buckets(seq_len: int) -> list:
    """[0], [1, 4), [4, 8), [8, 16), ... up to seq_len: context lengths on a doubling scale."""
    edges = [0, 1, 4]
    while edges[-1] < seq_len:
        edges.append(min(2 * edges[-1], seq_len))
    return list(zip(edges[:-1], edges[1:]))


def val_windows(data: str, batches: int, batch: int, seq: int) -> list:
    """The trainer's fixed validation windows (mlx_kssm.data.loader.eval_batches)."""
    from mlx_kssm.data import TokenDataset
    from mlx_kssm.data.loader import eval_batches

    return eval_batches(TokenDataset(data, "val"), batches, batch, seq)


def position_loss(run_dir: Path, windows: list):
    """(mean cross-entropy per position (seq,), the folder evaluated) over `windows`."""
    import mlx_kssm  # noqa: F401  (before mlx: loads OpenBLAS)
    import mlx.core as mx
    import mlx.nn as nn
    import numpy as np
    from mlx_kssm.io import load_model, resolve_model_dir

    model, _ = load_model(run_dir)
    total, count = 0.0, 0
    for inputs, targets in windows:
        ce = nn.losses.cross_entropy(model(mx.array(inputs)), mx.array(targets), reduction="none")
        total = total + np.array(ce.sum(axis=0))
        count += ce.shape[0]
    return total / count, resolve_model_dir(run_dir)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", default="data/prepared/chars")
    ap.add_argument("--runs-dir", required=True, help="RUNS_DIR/MODEL/seed_S are the run folders "
                    "(a study's runs/)")
    ap.add_argument("--models", required=True, help="comma-separated; the first is compared "
                    "with each other one")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--batches", type=int, default=100, help="as ablate.py's --val-batches")
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--seq", type=int, default=64)
    args = ap.parse_args()
    models = args.models.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    spans = buckets(args.seq)
    windows = val_windows(args.data, args.batches, args.batch, args.seq)  # once, for every run
    per_run = {}
    for name in models:
        for seed in seeds:
            run_dir = Path(args.runs_dir) / name / f"seed_{seed}"
            if not run_dir.is_dir():
                continue
            losses, folder = position_loss(run_dir, windows)
            per_run[(name, seed)] = {
                "folder": str(folder), "val_loss": float(losses.mean()),
                "buckets": [float(losses[lo:hi].mean()) for lo, hi in spans]}
            print(f"{name} seed {seed}: {per_run[(name, seed)]['val_loss']:.4f}", file=sys.stderr)
    if not per_run:
        sys.exit(f"Error: no run folders {args.runs_dir}/MODEL/seedS for {args.models}")
    base = models[0]
    diffs = {}
    for other in models[1:]:
        both = [s for s in seeds if (base, s) in per_run and (other, s) in per_run]
        if not both:
            continue
        rows = [[a - b for a, b in zip(per_run[(base, s)]["buckets"], per_run[(other, s)]["buckets"])]
                for s in both]
        diffs[other] = {"seeds": both, "mean": [statistics.mean(c) for c in zip(*rows)],
                        "sd": [statistics.stdev(c) if len(c) > 1 else None for c in zip(*rows)]}
    emit({"part": "positions", "command": "python research/bench/position_loss.py "
          + " ".join(sys.argv[1:]), "machine": machine(), "buckets": spans, "base": base,
          "runs": [{"model": m, "seed": s, **r} for (m, s), r in per_run.items()],
          "minus": diffs}, None)


if __name__ == "__main__":
    main()
