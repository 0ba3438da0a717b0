"""K-SSM model speed on this machine:

- forward+backward tokens/s for `tiny` and `v2` at batch 8 x seq 256
- the scan's pure-MLX forms: the complex sequential step with the hand-written adjoint
  (kernels/cpu.py, used) and the oracle with autodiff; forward+backward. (An associative,
  log-depth form lost to the sequential one by 8-61x on this CPU and was removed.)
- stateful decode tokens/s at context 16 vs 1024 (flat: O(1) work per token)
- parameter counts of every preset

    python research/bench/model.py [--repeats 3] [--out model.json]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import mlx_kssm  # noqa: E402,F401  (loads OpenBLAS before mlx)
import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402
import numpy as np  # noqa: E402

from _common import emit, machine, summarize, timed  # noqa: E402
from generation import stateful_per_token  # noqa: E402
from mlx_kssm import build_model, count_parameters  # noqa: E402
from mlx_kssm.kernels import cpu, reference  # noqa: E402
from mlx_kssm.models import preset_names  # noqa: E402


def fwd_bwd(preset, vocab, B, T, repeats):
    model = build_model(preset, vocab_size=vocab, seed=0)
    x = mx.random.randint(0, vocab, (B, T), key=mx.random.key(0))
    y = mx.random.randint(0, vocab, (B, T), key=mx.random.key(1))
    # nn.value_and_grad differentiates w.r.t. the model's parameters (not compiled here: the
    # trainer's compiled step, with the optimizer, is measured by bench/train.py and blas.py)
    step = nn.value_and_grad(model, lambda: nn.losses.cross_entropy(model(x), y).mean())
    t = timed(lambda: mx.eval(step()), repeats=repeats)
    return {"batch": B, "seq_len": T, "vocab": vocab, "seconds": t,
            "tokens_per_sec": B * T / t["median"]}


def scan_forms(B, T, G, n, repeats):
    """Forward+backward of the scan alone, both forms, alternating in one process."""
    key = mx.random.key(2)
    ks = mx.random.split(key, 5)
    dr = mx.random.uniform(-0.9, 0.9, (B, T, G, n), key=ks[0])
    di = mx.random.uniform(-0.4, 0.4, (B, T, G, n), key=ks[1])
    k = mx.random.uniform(0, 1, (B, T, G, 1), key=ks[2])
    cr = mx.random.normal((B, T, G, n), key=ks[3])
    ci = mx.random.normal((B, T, G, n), key=ks[4])
    z0 = mx.zeros((B, G, n))
    out = {}
    for name, fn in (("sequential_adjoint", cpu.scan_free),
                     ("sequential_autodiff", reference.scan_sequential)):
        def loss(*a, fn=fn):
            zr, zi = fn(*a, z0, z0)
            return (zr * zr + zi).sum()
        step = mx.compile(mx.grad(loss, argnums=(0, 1, 2, 3, 4)))
        t = timed(lambda: mx.eval(step(dr, di, k, cr, ci)), repeats=repeats)
        out[name] = {"seconds": t, "tokens_per_sec": B * T / t["median"]}
    # the model trains with sequential_adjoint (kernels/cpu.py); autodiff is the alternative
    out["adjoint_over_autodiff"] = (out["sequential_adjoint"]["tokens_per_sec"]
                                    / out["sequential_autodiff"]["tokens_per_sec"])
    out["shape"] = {"batch": B, "seq_len": T, "groups": G, "osc_per_group": n}
    return out


def decode_speed(preset, vocab, context, n_tokens=64):
    """Stateful decoding after a `context`-token prompt (generation.py's measurement)."""
    model = build_model(preset, vocab_size=vocab, seed=0)
    prompt = np.random.default_rng(3).integers(0, vocab, context).tolist()
    runs = [stateful_per_token(model, prompt, n_tokens)[0] for _ in range(3)]
    return {"context": context, "tokens_per_sec": summarize(runs)["median"],
            "tokens_per_sec_runs": summarize(runs)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out")
    args = ap.parse_args()
    result = {"command": " ".join(["python", "research/bench/model.py"] + sys.argv[1:]),
              "machine": machine()}
    result["fwd_bwd"] = {"tiny": fwd_bwd("tiny", 12000, 8, 256, args.repeats),
                         "v2": fwd_bwd("v2", 20544, 8, 256, args.repeats)}
    result["scan_forms"] = {"tiny_bank": scan_forms(8, 256, 8, 8, args.repeats),
                            "v2_bank": scan_forms(8, 256, 8, 16, args.repeats)}
    dec = {c: decode_speed("tiny", 12000, c) for c in (16, 1024)}
    result["decode_tiny"] = {"by_context": dec,
                             "ratio_1024_over_16": dec[1024]["tokens_per_sec"]
                             / dec[16]["tokens_per_sec"]}
    result["parameters"] = {p: count_parameters(build_model(p)) for p in preset_names()}
    emit(result, args.out)


if __name__ == "__main__":
    main()
