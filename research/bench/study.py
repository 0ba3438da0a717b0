"""The final comparison as a benchmark part: `mlx-kssm study` (a K-SSM preset, its matched
transformer, its bolted control, its upstream-v3 and a random-init model, several seeds, the
same batches and budget, every model through the causality suite) -> its summary as JSON.

    python research/bench/study.py --data data/prepared/chars --preset v1-char --seeds 3 \
        --steps 2000 --batch 12 --seq 64 --out research/out/study_char

Finished runs in --out are reused (a study continues where it stopped), so this also just
collects a study that ran before.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import mlx_kssm  # noqa: E402,F401  (BLAS before mlx)

from _common import emit  # noqa: E402


def main():
    from mlx_kssm.study import StudyConfig, run_study

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--preset", default="v1-char")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--eval-batches", type=int, default=100)
    ap.add_argument("--out", required=True)
    ap.add_argument("--models", default=None,
                    help="comma-separated (default: the preset, its three comparisons, random-init)")
    args = ap.parse_args()
    models = [m for m in args.models.split(",") if m] if args.models else None
    config = StudyConfig(data=args.data, output_dir=args.out, preset=args.preset, models=models,
                         seeds=args.seeds, max_steps=args.steps, batch_size=args.batch,
                         seq_len=args.seq, steps_per_eval=args.eval_every,
                         eval_batches=args.eval_batches)
    t0 = time.perf_counter()
    result = run_study(config, echo=lambda line: print(line, file=sys.stderr, flush=True))
    record = result.record
    emit({"part": "study", "status": result.status, "seconds": time.perf_counter() - t0,
          "study_dir": str(result.study_dir), "config": record.get("config"),
          "commands": record.get("commands"), "summary": record.get("summary")}, None)


if __name__ == "__main__":
    main()
