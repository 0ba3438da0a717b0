"""What a GPU adds, measured on one -> JSON (issue: the CUDA twin of the fused scan).

    python research/bench/gpu.py [--torch] [--out FILE]

Run it where MLX has a GPU backend (CUDA build on NVIDIA, or Metal); it refuses elsewhere.
The tests never run it: CI has no GPU, and these are measurements, not checks. Allow several
minutes: on an H100 the parity part took about a minute, and each kernel.py shape and the
PyTorch comparison 1-2 minutes each (mostly compiling); research/RESULTS.md section 11 was measured
with the parts run as separate commands (its lines name them), after an all-in-one run here
outlasted the 4-minute limit it was given.

1. parity: the fused kernel vs the reference scan (kernels/reference.py), both on the GPU,
   at the shapes of tests/test_kernel_harness.py (which runs the same sources emulated on a
   CPU) plus the presets' banks at B8 x T512: states, every gradient, the decode step and
   forced R. Errors are max |kernel - reference| / max(1, max |reference|).
2. speed: the fused scan + adjoint vs the op-graph scan the model runs without it
   (kernels.cpu.scan_free under mx.compile), forward and forward+backward, B8 x T512, for
   v2's bank (32 groups x 4) and 0.1's (8 x 16); research/bench/kernel.py does the timing.
3. --torch: one v2 training step, MLX vs the PyTorch twin (research/bench/torch_kssm.py) on
   the same GPU, same seed-0 weights and batch; needs a CUDA build of torch.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys

import mlx_kssm  # noqa: F401  (its BLAS before mlx)
import mlx.core as mx

from mlx_kssm.kernels import dispatch, fused

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import kernel as kernel_bench  # noqa: E402
from _common import emit, machine  # noqa: E402

# (B, T, G, n, force_r): the emulation tests' shapes, then the presets' banks at bench size
PARITY_SHAPES = [(2, 7, 4, 5, None), (2, 33, 4, 16, None), (1, 9, 8, 40, None),
                 (3, 1, 3, 16, None), (1, 1024, 2, 16, None), (2, 12, 4, 16, 0.37),
                 (2, 12, 4, 40, 0.37), (8, 512, 32, 4, None), (8, 512, 8, 16, None),
                 (8, 512, 32, 4, 0.3)]


def parity(module) -> dict:
    rows = []
    for B, T, G, n, force_r in PARITY_SHAPES:
        res = module.parity_check(B=B, T=T, G=G, n=n, force_r=force_r, seed=B * T + n)
        rows.append({"shape": [B, T, G, n], "force_r": force_r, "ok": res["ok"],
                     "max_error": res["max_error"], "errors": res["errors"]})
        print(f"[gpu] parity B{B} T{T} G{G} n{n} force_r={force_r}: "
              f"{'ok' if res['ok'] else 'MISMATCH'} (max error {res['max_error']:.2e})",
              file=sys.stderr, flush=True)
    return {"all_ok": all(r["ok"] for r in rows), "tolerance": fused.TOLERANCE, "rows": rows}


def speed() -> dict:
    out = {}
    for groups, osc in ((32, 4), (8, 16)):
        # kernel.py prints its JSON: keep stdout for this script's one JSON object
        with contextlib.redirect_stdout(sys.stderr):
            res = kernel_bench.main(["--batch", "8", "--seq", "512", "--groups", str(groups),
                                     "--osc", str(osc), "--repeats", "3", "--no-emulation"])
        out[f"{groups}x{osc}"] = res
    return out


def torch_step(batch: int, seq: int) -> dict:
    cmd = [sys.executable, os.path.join(HERE, "torch_kssm.py"), "--presets", "v2",
           "--batch", str(batch), "--seq", str(seq), "--repeats", "5", "--warmup", "2",
           "--variants", "eager,script", "--device", "cuda"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1:] or ["failed"], "command": cmd}
    return json.loads(done.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--torch", action="store_true", help="also MLX vs PyTorch, v2 train step")
    ap.add_argument("--batch", type=int, default=8, help="--torch's batch  [8]")
    ap.add_argument("--seq", type=int, default=256, help="--torch's sequence length  [256]")
    ap.add_argument("--out", help="write the JSON here too")
    args = ap.parse_args()
    backend = dispatch.gpu_backend()
    if backend is None:
        sys.exit("Error: no GPU backend in this MLX build (needs MLX's CUDA build on an NVIDIA "
                 "GPU, or Metal)")
    module = dispatch.backend_module(backend)
    ok, detail = module.self_check()
    res = {"part": "gpu", "command": "python research/bench/gpu.py " + " ".join(sys.argv[1:]),
           "machine": machine(), "backend": backend, "device": str(mx.default_device()),
           "self_check_ok": ok, "self_check": detail,  # parity still runs: it shows where
           "parity": parity(module), "speed": speed()}
    if args.torch:
        res["torch"] = torch_step(args.batch, args.seq)
    emit(res, args.out)


if __name__ == "__main__":
    main()
