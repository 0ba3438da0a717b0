"""Quality at equal budget: several presets trained on the same data, for the same number of
tokens, with the same seed, batches, schedule and trainer (mlx_kssm.train.train); prints one
JSON object.

    python research/bench/quality.py --data data/prepared/shakespeare-bytes \
        --presets tiny,transformer-tiny,upstream-v3-tiny,control-bolted-tiny \
        --steps 200 --batch 16 --seq 128 [--seed 0] [--val-batches 8] [--out quality.json]

Per preset: final val loss / PPL (the trainer's own evaluation, evaluate_loss on the same
fixed val windows for every model), val R mean/std (oscillator models), train tokens/s
(median/min/max over report windows, the first window, which holds compilation, left out),
wall time, parameter count, one sample. Also two count-based baselines on the same val
windows: unigram and add-alpha bigram (alpha picked on val, so optimistic). A model that
only sees the current token and its position (upstream-v3) cannot beat the bigram's limit;
a model whose context really flows through its state can.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import mlx_kssm  # noqa: E402,F401  (BLAS before mlx)
import numpy as np  # noqa: E402

from _common import emit, machine, summarize as stats  # noqa: E402
from mlx_kssm.train import read_history  # noqa: E402


def count_baselines(data_dir: str, val_batches: int, batch: int, seq: int) -> dict:
    """Unigram and bigram cross-entropy (nats/token) on the trainer's exact val windows."""
    from mlx_kssm.data import TokenDataset, eval_batches

    train = TokenDataset(data_dir, "train")
    val = TokenDataset(data_dir, "val")
    V = train.vocab_size
    toks = np.asarray(train.tokens, dtype=np.int64)
    windows = eval_batches(val, val_batches, batch, seq)
    prev = np.concatenate([w[0].reshape(-1) for w in windows]).astype(np.int64)
    nxt = np.concatenate([w[1].reshape(-1) for w in windows]).astype(np.int64)
    uni = np.bincount(toks, minlength=V).astype(np.float64)
    uni_p = (uni + 1.0) / (uni.sum() + V)
    out = {"unigram_loss": float(-np.mean(np.log(uni_p[nxt])))}
    pair_keys, pair_counts = np.unique(toks[:-1] * V + toks[1:], return_counts=True)
    ctx = np.bincount(toks[:-1], minlength=V).astype(np.float64)
    q = prev * V + nxt
    idx = np.searchsorted(pair_keys, q)
    idx = np.minimum(idx, len(pair_keys) - 1)
    c = np.where(pair_keys[idx] == q, pair_counts[idx], 0).astype(np.float64)
    best = None
    for alpha in (1.0, 0.3, 0.1, 0.03, 0.01, 0.003):
        # interpolate with the unigram instead of a flat prior (add-alpha * V * unigram)
        p = (c + alpha * V * uni_p[nxt]) / (ctx[prev] + alpha * V)
        loss = float(-np.mean(np.log(p)))
        if best is None or loss < best[0]:
            best = (loss, alpha)
    out.update(bigram_loss=best[0], bigram_alpha=best[1],
               bigram_note="bigram smoothed toward the unigram, alpha picked on these val "
                           "windows (optimistic)")
    return out


def train_one(preset: str, args, run_root: Path) -> dict:
    from mlx_kssm.train import TrainConfig, train

    run_dir = run_root / preset
    if run_dir.exists():
        shutil.rmtree(run_dir)
    config = TrainConfig(
        preset=preset, data=args.data, output_dir=str(run_dir), max_steps=args.steps,
        batch_size=args.batch, seq_len=args.seq, learning_rate=args.lr,
        warmup_steps=min(100, max(1, args.steps // 10)), steps_per_report=args.report_every,
        steps_per_eval=args.steps, save_every=args.steps, val_batches=args.val_batches,
        seed=args.seed, sample_prompts=["ROMEO:"], sample_tokens=args.sample_tokens)
    lines = []
    t0 = time.perf_counter()
    result = train(config, echo=lines.append)
    wall = time.perf_counter() - t0
    hist = read_history(run_dir)
    start = next((e for e in hist if e.get("event") == "start"), {})
    trains = [e for e in hist if e.get("event") == "train"]
    evals = [e for e in hist if e.get("event") == "eval"]
    final = evals[-1] if evals else {}
    tps = [e.get("tokens_per_sec") for e in trains[1:]] or [e.get("tokens_per_sec") for e in trains]
    sample = (final.get("samples") or [{}])[0]
    return {
        "preset": preset, "status": result.status, "steps": result.step,
        "n_parameters": start.get("n_parameters"),
        "tokens_trained": result.step * args.batch * args.seq,
        "val_loss": final.get("val_loss"), "val_ppl": final.get("val_ppl"),
        "val_R": final.get("val_R"), "val_R_std": final.get("val_R_std"),
        "val_R_layers": final.get("val_R_layers"),
        "val_u": final.get("val_u"), "val_u_at_bound": final.get("val_u_at_bound"),
        "final_train_loss": trains[-1]["loss"] if trains else None,
        "train_tokens_per_sec": stats(tps), "wall_s": wall,
        "sample": {"prompt": sample.get("prompt"), "text": sample.get("text")},
        "run_dir": str(run_dir), "log_tail": lines[-3:],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--presets", default="tiny,transformer-tiny,upstream-v3-tiny,control-bolted-tiny")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--lr", type=float, default=None, help="default: each preset's own")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val-batches", type=int, default=8)
    ap.add_argument("--report-every", type=int, default=10)
    ap.add_argument("--sample-tokens", type=int, default=60)
    ap.add_argument("--runs-dir", default="research/out/runs")
    ap.add_argument("--label", default=None)
    ap.add_argument("--out")
    args = ap.parse_args()
    presets = [p for p in args.presets.split(",") if p]
    meta = json.loads((Path(args.data) / "meta.json").read_text())
    run_root = Path(args.runs_dir) / (args.label or Path(args.data).name)
    models = []
    for preset in presets:
        print(f"[quality] training {preset} ...", file=sys.stderr, flush=True)
        try:
            row = train_one(preset, args, run_root)
        except Exception as exc:  # one failing preset must not hide the others
            row = {"preset": preset, "status": "error", "error": f"{type(exc).__name__}: {exc}"}
        print(f"[quality] {preset}: val_loss={row.get('val_loss')} wall={row.get('wall_s')}",
              file=sys.stderr, flush=True)
        models.append(row)
    result = {
        "part": "quality", "label": args.label,
        "command": "python research/bench/quality.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "data": {"dir": args.data, "tokenizer": meta["tokenizer"], "vocab_size": meta["vocab_size"],
                 "train_tokens": meta["splits"]["train"]["tokens"],
                 "val_tokens": meta["splits"]["val"]["tokens"]},
        "budget": {"steps": args.steps, "batch": args.batch, "seq_len": args.seq,
                   "tokens": args.steps * args.batch * args.seq, "seed": args.seed,
                   "val_windows": args.val_batches * args.batch,
                   "learning_rate": args.lr or "preset default",
                   "trainer": "mlx_kssm.train.train (AdamW, warmup + cosine, clip 1.0)"},
        "baselines": count_baselines(args.data, args.val_batches, args.batch, args.seq),
        "models": models,
    }
    emit(result, args.out)


if __name__ == "__main__":
    main()
