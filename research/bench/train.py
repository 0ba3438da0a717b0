"""Trainer throughput on this machine -> JSON on stdout.

For each preset: tokens/s and peak memory of the compiled training step (after warm-up),
and the cost of one evaluation (--val-batches batches) and one checkpoint, each as a
fraction of a step and as overhead at the default cadence (eval every 200 steps, checkpoint
every 500). `batch_copy_over_step`: what the trainer pays per step to copy its batch out of
the memory-mapped token file (BatchSampler.batch + mx.array), as a fraction of the step --
the cost a zero-copy adoption of the map on Metal could save.

    python research/bench/train.py                       # tiny and v2 (batch 8 x seq 256)
    python research/bench/train.py --presets tiny v1-char --steps 20
"""

from __future__ import annotations

import argparse
import os
import json
import platform
import tempfile
import sys
from pathlib import Path

import mlx_kssm  # noqa: F401  (BLAS before mlx)
import mlx.core as mx
import numpy as np

from mlx_kssm import build_model, count_parameters
from mlx_kssm.data import BatchSampler, TokenDataset, npy_header, write_token_file
from mlx_kssm.models import preset_train_defaults
from mlx_kssm.evaluation import evaluate_loss
from mlx_kssm.train import checkpoint as ckpt
from mlx_kssm.train.optim import optimizer_arrays

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import seconds, trainer_step  # noqa: E402

SHAPES = {"tiny": (16, 128), "v1-char": (16, 256), "v2": (8, 256)}
VOCAB = 100277  # cl100k_base, what the BPE presets train on
FILE_TOKENS = 4_000_000  # token file the batch copy is timed on


def batch_copy_seconds(vocab: int, batch: int, seq: int, copies: int = 200) -> float:
    """Seconds per batch the trainer spends getting (inputs, targets) from a memory-mapped
    token file: BatchSampler.batch (random windows out of the map) plus mx.array of both."""
    with tempfile.TemporaryDirectory() as tmp:
        dtype = "uint16" if vocab <= 1 << 16 else "uint32"
        tokens = np.random.default_rng(0).integers(0, vocab, FILE_TOKENS)
        split = {"file": "tokens_train.npy", "tokens": FILE_TOKENS, "docs": 1}
        split["max_id"] = write_token_file(Path(tmp) / split["file"], iter([tokens]),
                                           FILE_TOKENS, dtype)
        (Path(tmp) / "meta.json").write_text(json.dumps({
            "format_version": 1, "tokenizer": None, "vocab_size": vocab, "dtype": dtype,
            "data_offset": len(npy_header(dtype, FILE_TOKENS)), "splits": {"train": split}}))
        sampler = BatchSampler(TokenDataset(tmp, "train"), batch, seq, seed=0)

        def copy(step):
            inputs, targets = sampler.batch(step)
            mx.eval(mx.array(inputs), mx.array(targets))

        return sum(seconds(copy, step) for step in range(copies)) / copies


def bench(preset: str, steps: int, warmup: int, val_batches: int) -> dict:
    batch, seq = SHAPES.get(preset, (8, 256))
    vocab = 257 if preset_train_defaults(preset).get("tokenizer") == "bytes" else VOCAB
    model = build_model(preset, vocab_size=vocab, seed=0)
    step, optimizer = trainer_step(model, batch, seq)
    rng = np.random.default_rng(0)

    def batch_arrays():
        x = rng.integers(0, vocab, (batch, seq + 1)).astype(np.int32)
        return mx.array(x[:, :-1]), mx.array(x[:, 1:])

    def one_step():
        step(*batch_arrays())

    compile_s = seconds(one_step)
    for _ in range(warmup - 1):
        one_step()
    mx.reset_peak_memory()
    step_s = sum(seconds(one_step) for _ in range(steps)) / steps
    peak = mx.get_peak_memory() / 1e9

    val = [tuple(np.array(a) for a in batch_arrays()) for _ in range(val_batches)]
    eval_s = seconds(evaluate_loss, model, val)
    with tempfile.TemporaryDirectory() as tmp:
        save_s = seconds(ckpt.save_checkpoint, Path(tmp), 1, model, optimizer_arrays(optimizer),
                         {"step": 1})
    copy_s = batch_copy_seconds(vocab, batch, seq)
    return {"preset": preset, "parameters": count_parameters(model), "batch": batch,
            "seq_len": seq, "steps_timed": steps, "compile_first_step_s": round(compile_s, 2),
            "step_s": round(step_s, 4), "tokens_per_sec": round(batch * seq / step_s, 1),
            "peak_mem_gb": round(peak, 3), "val_batches": val_batches,
            "eval_s": round(eval_s, 3), "eval_over_step": round(eval_s / step_s, 2),
            "checkpoint_s": round(save_s, 3), "checkpoint_over_step": round(save_s / step_s, 2),
            "overhead_at_defaults": round((eval_s / 200 + save_s / 500) / step_s, 4),
            "batch_copy_s": round(copy_s, 6), "batch_copy_over_step": round(copy_s / step_s, 5)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "v2"])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--val-batches", type=int, default=20)
    args = ap.parse_args()
    results = [bench(p, args.steps, args.warmup, args.val_batches) for p in args.presets]
    print(json.dumps({"machine": platform.machine(), "processor": platform.processor(),
                      "mlx": mx.__version__, "device": str(mx.default_device()),
                      "results": results}, indent=2))


if __name__ == "__main__":
    main()
