"""The shared evaluation: validation loss, perplexity and R statistics on fixed batches.

Used by the trainer at every evaluation and by `mlx-kssm evaluate`, so a number printed
during training and one printed afterwards come from the same code. Deterministic: the
models have no dropout or other training noise, the batches are fixed, and reductions run in
float32 in a fixed order.
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np


def _batch_stats(model, inputs, targets):
    logits, r, aux = model(inputs, return_r=True, return_aux=True)
    ce = nn.losses.cross_entropy(logits.astype(mx.float32), targets, reduction="sum")
    stats = {"ce_sum": ce, "reg": aux["reg"]}
    if r is not None:
        r = r.astype(mx.float32)
        stats.update(r=r, r_sum=mx.sum(r), r_sq_sum=mx.sum(r * r),
                     r_layer_sum=mx.sum(r, axis=(0, 1)))
    if aux.get("u") is not None:
        stats.update(u=aux["u"], u_at_bound=aux["u_at_bound"])
    return stats


_COMPILED: dict = {}  # id(model) -> (model, compiled forward statistics)


def _compiled_stats(model):
    """The forward pass compiled once per model (the scan is a long chain of small ops;
    uncompiled, rebuilding its graph per batch costs more than the arithmetic)."""
    entry = _COMPILED.get(id(model))
    if entry is None or entry[0] is not model:
        fn = mx.compile(lambda inputs, targets: _batch_stats(model, inputs, targets),
                        inputs=[model.state])
        if len(_COMPILED) > 8:
            _COMPILED.clear()
        entry = _COMPILED[id(model)] = (model, fn)
    return entry[1]


def evaluate_loss(model, batches, keep_r: bool = False) -> dict:
    """Metrics over `batches` (a list of (inputs, targets) int arrays, numpy or mx).

    Returns val_loss (mean cross-entropy per token, nats; the regularizer is NOT included),
    val_ppl, val_reg (mean regularizer), n_tokens, and for oscillator models val_R (mean over
    tokens and layers), val_R_std, val_R_layers (per layer); for v3, val_u and val_u_at_bound.
    With `keep_r`, also "R": R per position and layer, a numpy (N, T, L) array (None for a
    model without R), from the same forward passes.
    """
    if not batches:
        raise ValueError("evaluate_loss needs at least one batch")
    totals: dict = {}
    kept_r = []
    n_tokens = n_r = 0
    for inputs, targets in batches:
        inputs, targets = mx.array(inputs), mx.array(targets)
        stats = _compiled_stats(model)(inputs, targets)
        mx.eval(stats)
        if "r" in stats:
            r = stats.pop("r")
            if keep_r:
                kept_r.append(np.array(r))
        for k, v in stats.items():
            v = np.array(v, dtype=np.float64)
            totals[k] = totals.get(k, 0.0) + v
        n_tokens += targets.size
        n_r += targets.size * stats["r_layer_sum"].shape[0] if "r_sum" in stats else 0
    n_batches = len(batches)
    val_loss = float(totals["ce_sum"]) / n_tokens
    out = {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 700.0)),
           "val_reg": float(totals["reg"]) / n_batches, "n_tokens": n_tokens,
           "val_R": None, "val_R_std": None, "val_R_layers": None}
    if "r_sum" in totals:
        mean = float(totals["r_sum"]) / n_r
        out["val_R"] = mean
        out["val_R_std"] = math.sqrt(max(float(totals["r_sq_sum"]) / n_r - mean * mean, 0.0))
        out["val_R_layers"] = [float(x) / n_tokens for x in totals["r_layer_sum"]]
    if keep_r:
        out["R"] = np.concatenate(kept_r) if kept_r else None
    if "u" in totals:
        out["val_u"] = float(totals["u"]) / n_batches
        out["val_u_at_bound"] = float(totals["u_at_bound"]) / n_batches
    return out
