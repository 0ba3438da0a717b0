"""Robustness and clamp sweeps of `mlx-kssm validate` (docs/causality.md, "Validation").

All measured on the same held-out windows (the units), each reduced to one number per window,
with percentile-bootstrap CIs over windows (`stats.bootstrap_mean`):

- `noise_sweep`: Gaussian noise added to every weight tensor W as
  scale x RMS(W) x N(0, 1) (relative to each tensor's own size, so a scale means the same
  share for an embedding and a bias; a tensor of zeros stays zero), one fixed-seed draw per
  scale; validation loss and mean R per window at each scale, and the paired loss rise over
  the clean weights (also relative to the clean loss, reported). Verdict at `judged_scale`:
  PASS when the CI of the loss rise lies below `max_rise` nats/token, FAIL when it lies at or
  above it, INCONCLUSIVE otherwise. An absolute rise, not a relative one: an over-confident
  model's large clean loss would hide a large rise.
- `temperature_sweep`: the loss of softmax(logits / T) per window, and the mean R and
  distinct-2 of seeded generations at each temperature. Reported, not judged.
- `clamp_sweep`: v3 (the bistable core) only: the loss with u's floor forced to other values
  at inference (`models.bistable.forced_u_floor`). Verdict: does u act on the prediction?
  The paired per-window |loss change| between the trained floor and the highest floor has a
  CI above 1e-3 nats/token (PASS), at or below it (FAIL), or straddling it (INCONCLUSIVE).
"""

from __future__ import annotations

import contextlib

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from ..models.bistable import U_LO, forced_u_floor
from . import stats
from .causality import _chunks, spread_windows

NOISE_SCALES = (0.0, 0.01, 0.05, 0.1)
TEMPERATURES = (0.5, 0.75, 1.0, 1.25, 1.5)
JUDGED_SCALE = 0.01  # the noise scale the robustness verdict reads
MAX_RISE = 0.05  # ... its loss may rise by less than this many nats/token
U_FLOORS = (U_LO, 0.3, 0.5, 1.0, 2.0)  # the trained floor first
MIN_U_EFFECT = 1e-3  # nats/token: the least loss change from moving u's floor that counts


def heldout_windows(tokens, n: int, seq_len: int) -> tuple:
    """(inputs, targets), each (n, seq_len): n windows spread over a split's tokens."""
    windows = spread_windows(tokens, n, seq_len + 1)
    return windows[:, :-1], windows[:, 1:]


def window_losses(model, inputs, targets, temp: float = 1.0) -> dict:
    """Per window: the mean next-token cross-entropy (nats) of softmax(logits / temp) and the
    mean R over positions and layers (None without R); u: the mean u (v3) or None."""
    losses, rs, us = [], [], []
    for sl in _chunks(len(inputs), inputs.shape[1], model.args.vocab_size):
        logits, r, aux = model(mx.array(inputs[sl]), return_r=True, return_aux=True)
        logits = logits.astype(mx.float32) / temp
        ce = nn.losses.cross_entropy(logits, mx.array(targets[sl]), reduction="none")
        losses.append(np.array(ce.mean(axis=-1)))
        if r is not None:
            rs.append(np.array(r.astype(mx.float32).mean(axis=(1, 2))))
        if aux.get("u") is not None:
            us.append(float(aux["u"].item()))
    return {"loss": np.concatenate(losses).astype(np.float64),
            "r": np.concatenate(rs).astype(np.float64) if rs else None,
            "u": float(np.mean(us)) if us else None}


@contextlib.contextmanager
def weight_noise(model, scale: float, seed: int):
    """Inside the block, every weight tensor W of `model` holds W + scale RMS(W) N(0, 1)
    (fixed seed); the clean weights return when it ends, whatever happens inside."""
    clean = tree_flatten(model.parameters())
    key = mx.random.key(seed)
    noisy = []
    for name, w in clean:
        key, sub = mx.random.split(key)
        w32 = w.astype(mx.float32)
        rms = mx.sqrt(mx.mean(w32 * w32))
        noise = mx.random.normal(w.shape, key=sub) * (scale * rms)
        noisy.append((name, (w32 + noise).astype(w.dtype)))
    model.update(tree_unflatten(noisy))
    mx.eval(model.parameters())
    try:
        yield model
    finally:
        model.update(tree_unflatten(clean))


def _mean_ci(x, n_resamples, seed) -> dict:
    boot = stats.bootstrap_mean(x, n_resamples=n_resamples, seed=seed)
    return {"mean": boot["estimate"], "ci": boot["ci"]}


def noise_sweep(model, inputs, targets, scales=NOISE_SCALES, judged_scale=JUDGED_SCALE,
                max_rise=MAX_RISE, seed: int = 0,
                n_resamples: int = stats.BOOTSTRAP_RESAMPLES) -> dict:
    """The weight-noise sweep (module docstring): one row per scale, and the verdict."""
    scales = sorted({0.0, *map(float, scales)})
    if judged_scale not in scales:
        raise ValueError(f"the judged noise scale {judged_scale} is not among {scales}")
    clean = window_losses(model, inputs, targets)
    rows = []
    for i, scale in enumerate(scales):
        if scale == 0.0:
            m = clean
        else:
            with weight_noise(model, scale, seed + i):
                m = window_losses(model, inputs, targets)
        rise = m["loss"] - clean["loss"]
        rows.append({"scale": scale, "loss": _mean_ci(m["loss"], n_resamples, seed),
                     "r": None if m["r"] is None else _mean_ci(m["r"], n_resamples, seed),
                     "loss_rise": _mean_ci(rise, n_resamples, seed),
                     "relative_rise": _mean_ci(rise / clean["loss"], n_resamples, seed)})
    judged = next(r for r in rows if r["scale"] == judged_scale)
    return {"noise": "relative: W + scale * RMS(W) * N(0, 1) per weight tensor",
            "seed": seed, "n_windows": int(len(inputs)), "rows": rows,
            "judged_scale": judged_scale, "max_rise": max_rise,
            "verdict": stats.ceiling_verdict(judged["loss_rise"]["ci"], max_rise)}


def temperature_sweep(model, tokenizer, inputs, targets, temps=TEMPERATURES, samples: int = 4,
                      max_tokens: int = 40, seed: int = 0,
                      n_resamples: int = stats.BOOTSTRAP_RESAMPLES) -> dict:
    """Loss of softmax(logits / T) per window, and seeded generations from the first
    `samples` windows' first 8 tokens at each T: their mean R and distinct-2. Not judged."""
    from .generate import generate_tokens
    from .quality import sample_quality

    rows = []
    for temp in temps:
        m = window_losses(model, inputs, targets, temp=float(temp))
        gen_r, distinct = [], []
        for i in range(min(samples, len(inputs))):
            gen = generate_tokens(model, inputs[i][:8].tolist(), max_tokens=max_tokens,
                                  temp=float(temp), seed=seed + i,
                                  stop_ids=(tokenizer.sep_id,))
            distinct.append(sample_quality(gen.tokens)["distinct_2"])
            if gen.r_trace and gen.r_trace[0]:
                gen_r.append(float(np.mean(gen.r_trace)))
        rows.append({"temperature": float(temp), "loss": _mean_ci(m["loss"], n_resamples, seed),
                     "generation_r": _mean_ci(gen_r, n_resamples, seed) if gen_r else None,
                     "distinct_2": float(np.mean(distinct)) if distinct else None})
    return {"rows": rows, "samples": samples, "max_tokens": max_tokens, "verdict": None}


def clamp_sweep(model, inputs, targets, floors=U_FLOORS, min_effect=MIN_U_EFFECT,
                n_resamples: int = stats.BOOTSTRAP_RESAMPLES, seed: int = 0) -> dict:
    """Perplexity with u's floor forced to each of `floors` (module docstring); a model
    without the bistable core gets "not applicable"."""
    if not getattr(model.args, "bistable", False):
        return {"applicable": False, "verdict": None,
                "reason": "not applicable: the model has no bistable core (v3 only)"}
    floors = [U_LO] + sorted(float(f) for f in floors if float(f) != U_LO)
    trained = window_losses(model, inputs, targets)
    rows = []
    for floor in floors:
        if floor == U_LO:
            m = trained
        else:
            with forced_u_floor(floor):
                m = window_losses(model, inputs, targets)
        loss = _mean_ci(m["loss"], n_resamples, seed)
        rows.append({"u_floor": floor, "loss": loss, "ppl": float(np.exp(loss["mean"])),
                     "u": m["u"], "change": _mean_ci(m["loss"] - trained["loss"],
                                                    n_resamples, seed)})
        last = m
    effect = _mean_ci(np.abs(last["loss"] - trained["loss"]), n_resamples, seed)
    return {"applicable": True, "trained_floor": U_LO, "rows": rows,
            "u_effect": {**effect, "floors": [U_LO, floors[-1]], "threshold": min_effect},
            "verdict": stats.threshold_verdict(effect["ci"], min_effect)}
