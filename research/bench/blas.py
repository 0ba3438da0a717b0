"""MLX on a Linux CPU with and without the optimized BLAS that `import mlx_kssm` loads.

Each configuration runs in its own child process (the BLAS must be chosen before mlx is
imported); the parent prints one JSON object with both and the ratios.

    python research/bench/blas.py [--steps 2] [--out blas.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def child(steps: int) -> dict:
    sys.path.insert(0, HERE)
    import mlx_kssm  # noqa: F401  (honours MLX_KSSM_NO_BLAS)
    import mlx.core as mx

    from _common import machine, timed, trainer_step
    from mlx_kssm import _blas, build_model

    out = {"machine": machine(), "blas": dict(_blas.STATUS),
           "matmul_gflops": _blas.measure_gflops()}
    for preset, vocab in (("tiny", 12000), ("v2", 20544)):
        B, T = 8, 256
        model = build_model(preset, vocab_size=vocab, seed=0)
        x = mx.random.randint(0, vocab, (B, T), key=mx.random.key(0))
        y = mx.random.randint(0, vocab, (B, T), key=mx.random.key(1))
        step, _ = trainer_step(model, B, T)
        t = timed(lambda: step(x, y), repeats=steps, warmup=1)
        out[f"{preset}_train_step"] = {"batch": B, "seq_len": T, "vocab": vocab,
                                       "seconds": t, "tokens_per_sec": B * T / t["median"]}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--out")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.steps)))
        return
    runs = {}
    for label, env_extra in (("openblas", {}), ("reference_blas", {"MLX_KSSM_NO_BLAS": "1"})):
        env = {**os.environ, **env_extra}
        if label == "openblas":
            env.pop("MLX_KSSM_NO_BLAS", None)
        proc = subprocess.run([sys.executable, __file__, "--child", "--steps", str(args.steps)],
                              capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            sys.exit(f"{label} child failed:\n{proc.stderr}")
        runs[label] = json.loads(proc.stdout.strip().splitlines()[-1])
    fast, slow = runs["openblas"], runs["reference_blas"]
    result = {
        "command": "python research/bench/blas.py --steps %d" % args.steps,
        "runs": runs,
        "ratios": {
            "matmul_gflops": fast["matmul_gflops"] / slow["matmul_gflops"],
            "tiny_train_step": fast["tiny_train_step"]["tokens_per_sec"]
            / slow["tiny_train_step"]["tokens_per_sec"],
            "v2_train_step": fast["v2_train_step"]["tokens_per_sec"]
            / slow["v2_train_step"]["tokens_per_sec"],
        },
    }
    sys.path.insert(0, HERE)
    from _common import emit
    emit(result, args.out)


if __name__ == "__main__":
    main()
