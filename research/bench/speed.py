"""Training-step time of a K-SSM preset against its parameter-matched transformer, on this
machine -> JSON on stdout (and --out).

    python research/bench/speed.py                         # v1-char vs transformer-char
    python research/bench/speed.py --preset tiny --vocab 257 --seqs 64,256 --rounds 15
    # a study variant (mlx-kssm study --variants) against the preset's transformer
    python research/bench/speed.py --preset v1-char-s \
        --variant research/variants/capacity-char-s.toml:osc2x --batch 24 --seqs 64

Both models run the trainer's own compiled step (AdamW, clip 1.0) on the same random batch.
Method: after warm-up (compilation), rounds alternate one K-SSM step and one transformer step,
so both see the same machine state; the ratio K-SSM time / transformer time is taken round by
round and reported as median [min-max] (< 1: K-SSM faster).
"""

from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import mlx_kssm  # noqa: E402,F401  (BLAS before mlx)
import numpy as np  # noqa: E402

from _common import emit, machine, seconds, summarize, trainer_step  # noqa: E402


def step_times(presets: dict, vocab: int, batch: int, seq: int, rounds: int, warmup: int) -> dict:
    from mlx_kssm import build_model, count_parameters

    rng = np.random.default_rng(0)
    x = rng.integers(0, vocab, (batch, seq)).astype(np.int32)
    y = rng.integers(0, vocab, (batch, seq)).astype(np.int32)
    runs, params = {}, {}
    for role, (name, overrides) in presets.items():
        model = build_model(name, vocab_size=vocab, seed=0, **overrides)
        params[role] = count_parameters(model)
        runs[role] = trainer_step(model, batch, seq)[0]
        for _ in range(warmup):
            runs[role](x, y)
    times = {role: [] for role in presets}
    for _ in range(rounds):
        for role, run in runs.items():
            times[role].append(seconds(run, x, y))
    ratios = [k / t for k, t in zip(times["kssm"], times["transformer"])]
    return {"seq_len": seq, "batch": batch, "tokens_per_step": batch * seq,
            "parameters": params,
            "step_s": {role: summarize(ts) for role, ts in times.items()},
            "kssm_over_transformer": summarize(ratios)}


def main():
    from mlx_kssm.models.presets import comparison_presets

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--preset", default="v1-char", help="K-SSM preset")
    ap.add_argument("--variant", default=None, metavar="FILE:NAME",
                    help="time this study variant in the K-SSM's place")
    ap.add_argument("--vocab", type=int, default=None, help="default: the preset's")
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--seqs", default="64,256")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--out")
    args = ap.parse_args()
    from mlx_kssm.models import preset_args

    presets = {"kssm": (args.preset, {}),
               "transformer": (comparison_presets(args.preset)["transformer"], {})}
    if args.variant:
        from mlx_kssm.study.variants import load_variants
        path, _, name = args.variant.rpartition(":")
        variant = load_variants(path)[name]
        presets["kssm"] = (variant["preset"], variant["model"])
    vocab = args.vocab or preset_args(args.preset).vocab_size
    results = [step_times(presets, vocab, args.batch, int(s), args.rounds, args.warmup)
               for s in args.seqs.split(",")]
    emit({"part": "speed", "command": "python research/bench/speed.py " + " ".join(sys.argv[1:]),
          "machine": machine(), "presets": presets, "vocab": vocab, "results": results}, args.out)
    for r in results:
        q = r["kssm_over_transformer"]
        print(f"seq {r['seq_len']}: K-SSM / transformer step time = {q['median']:.3f} "
              f"[{q['min']:.3f}-{q['max']:.3f}]", file=sys.stderr)


if __name__ == "__main__":
    main()
