"""Is v3's bistable regime used, and is its training healthy? -> JSON on stdout (and --out).

Trains the v3 preset (or --preset) through the real trainer twice on the same data, batches and
seed, and --reference (v2: the same model with a plain coupling logit) once for comparison:
with the boxed core (what the preset does now: a..j squashed to +-0.45 around u = 1, Delta = 1,
so u stays in [0.1, 10] by construction) and with raw projections (core_box 0: the same
in-regime start, no box; the preset before the box). For each run it reports, over training,
the fraction of positions whose raw u lies outside [0.1, 10], the mean u, the gradient norm
before clipping (and the share of report windows whose mean exceeds the clip), and at the end
the distribution of u over the validation windows: quantiles, the share inside the regime, the
share near its ends (u < 0.12 or u > 8.3), per layer the median and the 10-90% spread.

    python research/bench/v3_health.py --data data/prepared/bpe --steps 300 --batch 8 --seq 128
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import mlx_kssm  # noqa: E402,F401  (BLAS before mlx)
import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402

from _common import emit, machine  # noqa: E402


def u_distribution(model, batches) -> dict:
    """Raw u (no bound applied) of every layer at every validation position."""
    from mlx_kssm.models.bistable import N_PROJECTIONS, core_projections, raw_u
    from mlx_kssm.models.kssm import coupling_offset

    start = coupling_offset(model.args)
    per_layer = [[] for _ in model.layers]
    for inputs, _ in batches:
        x = model.embed(mx.array(inputs))
        for i, layer in enumerate(model.layers):
            bank = layer.bank
            p = bank.in_proj(bank.norm(x))[..., start:start + N_PROJECTIONS]
            per_layer[i].append(np.array(raw_u(core_projections(p, model.args.core_box))).ravel())
            x, _, _ = layer(x)
    per_layer = [np.concatenate(v) for v in per_layer]
    u = np.concatenate(per_layer)
    inside = (u >= 0.1) & (u <= 10)
    near_ends = inside & ((u < 0.12) | (u > 8.3))
    q = np.quantile(u, [0.01, 0.1, 0.5, 0.9, 0.99]).tolist()
    return {"positions": int(u.size), "inside_regime": float(inside.mean()),
            "near_ends": float(near_ends.mean()), "quantiles_1_10_50_90_99": q,
            "std_inside": float(u[inside].std()) if inside.any() else None,
            "layers_median_10_90": [np.quantile(v, [0.5, 0.1, 0.9]).round(3).tolist()
                                    for v in per_layer]}


def run(label: str, args, overrides: dict, preset: str | None = None) -> dict:
    from mlx_kssm import build_model, save_model
    from mlx_kssm.data import TokenDataset, eval_batches
    from mlx_kssm.train import TrainConfig, train
    from mlx_kssm.train import read_history

    root = Path(args.runs_dir) / label
    if root.exists():
        shutil.rmtree(root)
    vocab = TokenDataset(args.data, "train").vocab_size
    model = build_model(preset or args.preset, vocab_size=vocab, seed=args.seed, **overrides)
    save_model(root / "init", model)
    config = TrainConfig(model=str(root / "init"), data=args.data, output_dir=str(root / "run"),
                         max_steps=args.steps, batch_size=args.batch, seq_len=args.seq,
                         learning_rate=args.lr, steps_per_report=args.report_every,
                         steps_per_eval=args.steps, save_every=args.steps, val_batches=4,
                         seed=args.seed, sample_prompts=["ROMEO:"], sample_tokens=20)
    result = train(config, echo=lambda s: print(f"[{label}] {s}", file=sys.stderr, flush=True))
    hist = read_history(root / "run")
    reports = [e for e in hist if e.get("event") == "train"]
    evals = [e for e in hist if e.get("event") == "eval"]
    from mlx_kssm import load
    trained, _ = load(root / "run")
    val = eval_batches(TokenDataset(args.data, "val"), 4, args.batch, args.seq)
    return {
        "label": label, "status": result.status, "steps": result.step,
        "val_loss": evals[-1]["val_loss"] if evals else None,
        "u_at_bound": [round(e["u_at_bound"], 4) for e in reports if "u" in e],
        "u_mean": [round(e["u"], 4) for e in reports if "u" in e],
        "grad_norm": [round(e["grad_norm"], 3) for e in reports],
        "reg": [round(e["reg"], 5) for e in reports],
        "windows_clipped": sum(e["grad_norm"] > 1.0 for e in reports) / max(1, len(reports)),
        "grad_norm_median": statistics.median(e["grad_norm"] for e in reports),
        "u_at_bound_last": reports[-1].get("u_at_bound") if reports else None,
        "final_u": u_distribution(trained, val) if trained.args.bistable else None,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--preset", default="v3")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--report-every", type=int, default=10)
    ap.add_argument("--reference", default="v2", help="a preset without the core, trained "
                    "alike, for the gradient norms of a healthy run ('' to skip)")
    ap.add_argument("--runs-dir", default="research/out/v3_health")
    ap.add_argument("--out")
    args = ap.parse_args()
    runs = [run("boxed core", args, {}), run("raw projections", args, {"core_box": 0.0})]
    if args.reference:
        runs.append(run(f"reference {args.reference}", args, {}, preset=args.reference))
    emit({"part": "v3_health", "command": "python research/bench/v3_health.py " + " ".join(sys.argv[1:]),
          "machine": machine(), "preset": args.preset, "runs": runs}, args.out)


if __name__ == "__main__":
    main()
