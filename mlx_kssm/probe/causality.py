"""The causality suite (SPEC 7, seed 002 made rigorous): is R a causal carrier of the state?

On held-out windows, deterministically (no sampling, no training noise, fixed seeds):

1. variance      R varies across inputs and positions: std of R > 0.01 (per layer, averaged).
2. intervention  forcing R changes the next-token distribution. For every sequence, the KL
                 between the next-token distributions under two forced values (lowest vs
                 highest of `values`), averaged over its positions: one number per sequence.
                 Those numbers are tested against zero over sequences (one-sided t-test AND
                 an exact sign-flip permutation test; both p < alpha) and must also exceed a
                 minimum effect (mean KL > 1e-3 nats), so float rounding can never pass: a
                 model whose output bypasses R (the `control-bolted` preset) gets KL ~ 0.
3. correlation   R (mean over layers) vs the next-token entropy. Positions of one sequence
                 are not independent, so the test is over sequences: each sequence's own
                 Pearson r, Fisher-z averaged, t-test and sign-flip test over sequences;
                 |mean r| > 0.05 and p < alpha. The pooled r over all positions (with its
                 naive p) and the between-sequence r (sequence means) are reported beside it.

`causality_suite(model, batches)` returns a JSON-able dict; `format_causality` prints it.
Models without R (the transformer) get "not applicable".
"""

from __future__ import annotations

import itertools

import mlx.core as mx
import numpy as np

from ..models import r_zone, ZONES
from . import stats

DEFAULT_VALUES = (0.2, 0.8)
ALPHA = 0.01
MIN_R_STD = 0.01
MIN_KL = 1e-3  # nats: the smallest effect of forcing that counts
MIN_CORR = 0.05
LOGIT_BUDGET = 1 << 25  # floats of logits per forward chunk (B * T * V), ~128 MB


def windows_from_batches(batches, max_sequences: int | None = None) -> np.ndarray:
    """Stack the input windows of `batches` into one (N, T) int array.

    `batches` is one (B, T) array, or an iterable of (B, T) arrays, (inputs, targets) pairs
    or dicts with "inputs"."""
    if hasattr(batches, "shape") and len(batches.shape) == 2:
        batches = [batches]
    rows, total = [], 0
    for batch in batches:
        if isinstance(batch, dict):
            batch = batch["inputs"]
        elif isinstance(batch, (tuple, list)):
            batch = batch[0]
        arr = np.asarray(batch)
        if arr.ndim != 2:
            raise ValueError(f"expected batches of shape (B, T), got {arr.shape}")
        rows.append(arr.astype(np.int32))
        total += arr.shape[0]
        if max_sequences is not None and total >= max_sequences:
            break
    if not rows:
        raise ValueError("no held-out windows: the batches are empty")
    if len({r.shape[1] for r in rows}) > 1:
        raise ValueError("all windows must have the same length")
    out = np.concatenate(rows)
    return out[:max_sequences] if max_sequences is not None else out


def _chunks(n_rows: int, seq_len: int, vocab: int):
    step = max(1, LOGIT_BUDGET // max(1, seq_len * vocab))
    for i in range(0, n_rows, step):
        yield slice(i, min(n_rows, i + step))


def log_probs(model, x, force_r=None):
    """Next-token log-probabilities (float32) and R of a forward pass over token windows x."""
    logits, r = model(mx.array(x), force_r=force_r, return_r=True)
    logp = logits.astype(mx.float32)
    logp = logp - mx.logsumexp(logp, axis=-1, keepdims=True)
    return logp, r


def kl_divergence(logp_a, logp_b):
    """KL(a || b) per position (nats) from log-probabilities."""
    return mx.sum(mx.exp(logp_a) * (logp_a - logp_b), axis=-1)


def entropy(logp):
    """Entropy per position (nats) from log-probabilities."""
    return -mx.sum(mx.exp(logp) * logp, axis=-1)


def r_statistics(r) -> dict:
    """Summary of an (N, T, L) array of R: mean, std, per layer, zone occupancy (of the
    layer-mean R per position)."""
    r = np.asarray(r, dtype=np.float64)
    mean_r = r.mean(axis=-1)
    zones = {label: 0 for _, label in ZONES}
    labels, counts = np.unique([r_zone(v) for v in mean_r.ravel()], return_counts=True)
    for label, count in zip(labels, counts):
        zones[str(label)] = int(count)
    total = mean_r.size
    return {"mean": float(mean_r.mean()), "std": float(mean_r.std()),
            "min": float(mean_r.min()), "max": float(mean_r.max()),
            "per_layer_mean": r.mean(axis=(0, 1)).tolist(),
            "per_layer_std": r.std(axis=(0, 1)).tolist(),
            "zone": r_zone(float(mean_r.mean())),
            "zone_occupancy": {k: v / total for k, v in zones.items()}}


def causality_suite(model, batches, values=DEFAULT_VALUES, alpha: float = ALPHA,
                    min_r_std: float = MIN_R_STD, min_kl: float = MIN_KL,
                    min_corr: float = MIN_CORR, max_sequences: int | None = None,
                    n_resamples: int = 20000, seed: int = 0) -> dict:
    """Run the three tests of SPEC 7 on held-out windows (see the module docstring)."""
    values = sorted(float(v) for v in values)
    if len(values) < 2 or values[0] == values[-1]:
        raise ValueError("the intervention test needs at least two different forced values")
    for v in values:
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"forced R must lie in [0, 1], got {v}")
    windows = windows_from_batches(batches, max_sequences)
    n_seq, seq_len = windows.shape
    result = {"n_sequences": int(n_seq), "seq_len": int(seq_len), "values": values,
              "alpha": alpha, "seed": seed}

    r_all, ent_all = [], []
    kl_pairs = {pair: [] for pair in itertools.combinations(values, 2)}
    kl_rev = {pair: [] for pair in kl_pairs}
    kl_free = {v: [] for v in values}
    top1_changed, achieved_err = [], 0.0
    lo, hi = values[0], values[-1]
    for sl in _chunks(n_seq, seq_len, model.args.vocab_size):
        x = windows[sl]
        logp_free, r = log_probs(model, x)
        if r is None:
            return _not_applicable(result, "the model has no oscillators (no R): "
                                   "the causality suite does not apply")
        r_all.append(np.array(r.astype(mx.float32)))
        ent_all.append(np.array(entropy(logp_free)))
        forced = {}
        for v in values:
            logp_v, r_v = log_probs(model, x, force_r=v)
            achieved_err = max(achieved_err, float(mx.max(mx.abs(r_v - v)).item()))
            forced[v] = logp_v
            kl_free[v].append(np.array(kl_divergence(logp_v, logp_free).mean(axis=-1)))
        for a, b in kl_pairs:
            kl_pairs[(a, b)].append(np.array(kl_divergence(forced[a], forced[b]).mean(axis=-1)))
            kl_rev[(a, b)].append(np.array(kl_divergence(forced[b], forced[a]).mean(axis=-1)))
        changed = mx.argmax(forced[lo], axis=-1) != mx.argmax(forced[hi], axis=-1)
        top1_changed.append(np.array(changed.astype(mx.float32).mean(axis=-1)))

    r_all = np.concatenate(r_all).astype(np.float64)  # (N, T, L)
    ent_all = np.concatenate(ent_all).astype(np.float64)  # (N, T)
    result["r"] = r_statistics(r_all)

    # 1. variance
    per_layer_std = r_all.std(axis=(0, 1))
    r_std = float(per_layer_std.mean())
    result["variance"] = {
        "passed": bool(r_std > min_r_std), "r_std": r_std, "threshold": min_r_std,
        "per_layer_std": per_layer_std.tolist(),
        "between_sequence_std": float(r_all.mean(axis=(1, 2)).std()),
        "r_mean": float(r_all.mean()), "r_min": float(r_all.min()), "r_max": float(r_all.max())}

    # 2. intervention: one KL per sequence, tested against 0 over sequences
    kl = np.concatenate(kl_pairs[(lo, hi)]).astype(np.float64)
    t_res = stats.one_sample_t(kl, 0.0, alternative="greater")
    perm = stats.sign_flip_test(kl, alternative="greater", n_resamples=n_resamples, seed=seed)
    p = max(t_res["p"], perm["p"])
    mean_kl = float(kl.mean())
    result["intervention"] = {
        "passed": bool(p < alpha and mean_kl > min_kl),
        "pair": [lo, hi], "mean_kl": mean_kl, "median_kl": float(np.median(kl)),
        "min_kl_sequence": float(kl.min()), "max_kl_sequence": float(kl.max()),
        "mean_kl_reverse": float(np.concatenate(kl_rev[(lo, hi)]).mean()),
        "t": t_res["t"], "p_t": t_res["p"], "p_sign_flip": perm["p"], "p": p,
        "min_effect": min_kl, "alpha": alpha,
        "top1_changed": float(np.concatenate(top1_changed).mean()),
        "achieved_r_max_error": achieved_err,
        "pairs": [{"a": a, "b": b, "mean_kl": float(np.concatenate(kl_pairs[(a, b)]).mean()),
                   "mean_kl_reverse": float(np.concatenate(kl_rev[(a, b)]).mean())}
                  for a, b in kl_pairs],
        "kl_to_free": {str(v): float(np.concatenate(kl_free[v]).mean()) for v in values},
        "per_sequence_kl": kl.tolist()}

    # 3. correlation of R with next-token entropy, over sequences; R of each layer and the
    # layer mean are tested (layers can correlate with opposite signs and cancel in the mean),
    # Bonferroni-corrected: each candidate needs p < alpha / (L + 1)
    r_mean = r_all.mean(axis=-1)  # (N, T)
    candidates = [("mean", r_mean)] + [(f"layer {l}", r_all[..., l])
                                       for l in range(r_all.shape[-1])]
    alpha_each = alpha / len(candidates)
    pooled = stats.pearson(r_mean, ent_all)
    corr = {"threshold": min_corr, "alpha": alpha, "alpha_each": alpha_each,
            "pooled_r": pooled["r"], "pooled_p_naive": pooled["p"]}
    if n_seq >= 3:
        between = stats.pearson(r_mean.mean(axis=1), ent_all.mean(axis=1))
        corr.update({"between_r": between["r"], "between_p": between["p"]})
    tests = [_within_sequence_corr(name, rv, ent_all, n_resamples, seed)
             for name, rv in candidates]
    for t in tests:
        t["passed"] = bool(abs(t["r_within"]) > min_corr and t["p"] < alpha_each)
    corr["per_candidate"] = tests
    best = min(tests, key=lambda t: (not t["passed"], t["p"], -abs(t["r_within"])))
    corr.update({"passed": any(t["passed"] for t in tests), "best": best["name"],
                 "r_within": best["r_within"], "t": best["t"], "p_t": best["p_t"],
                 "p_sign_flip": best["p_sign_flip"], "p": best["p"],
                 "n_sequences_used": best["n_sequences_used"]})
    result["correlation"] = corr
    result["applicable"] = True
    result["passed"] = bool(result["variance"]["passed"] and result["intervention"]["passed"]
                            and corr["passed"])
    return result


def _within_sequence_corr(name, r, ent, n_resamples, seed) -> dict:
    """Each sequence's Pearson r(R, entropy) over its positions; Fisher-z, then a t-test and
    a sign-flip test over sequences (sequences are the independent units)."""
    per_seq = [stats.pearson(r[i], ent[i])["r"] for i in range(len(r))
               if r[i].std() > 0 and ent[i].std() > 0]
    out = {"name": name, "n_sequences_used": len(per_seq)}
    if len(per_seq) < 3:
        out.update({"r_within": float("nan"), "t": float("nan"), "p_t": 1.0,
                    "p_sign_flip": 1.0, "p": 1.0})
        return out
    z = stats.fisher_z(per_seq)
    zt = stats.one_sample_t(z, 0.0, alternative="two-sided")
    zperm = stats.sign_flip_test(z, alternative="two-sided", n_resamples=n_resamples, seed=seed)
    out.update({"r_within": float(np.tanh(z.mean())), "t": zt["t"], "p_t": zt["p"],
                "p_sign_flip": zperm["p"], "p": max(zt["p"], zperm["p"])})
    return out


def _not_applicable(result: dict, reason: str) -> dict:
    for name in ("variance", "intervention", "correlation"):
        result[name] = {"passed": None, "reason": reason}
    result.update({"applicable": False, "passed": None, "reason": reason})
    return result


def _verdict(passed) -> str:
    return "n/a " if passed is None else ("PASS" if passed else "FAIL")


def format_causality(res: dict, label: str = "") -> list:
    """Terminal lines: one PASS/FAIL line per test with its numbers."""
    head = f"causality suite{' — ' + label if label else ''}: "
    if not res.get("applicable", True):
        return [head + f"not applicable ({res['reason']})"]
    lines = [head + f"{res['n_sequences']} held-out windows x {res['seq_len']} tokens, "
             f"alpha {res['alpha']}"]
    v = res["variance"]
    lines.append(f"  [{_verdict(v['passed'])}] 1 variance      std(R) = {v['r_std']:.4f} "
                 f"(> {v['threshold']}); per layer "
                 + ", ".join(f"{s:.4f}" for s in v["per_layer_std"])
                 + f"; R in [{v['r_min']:.3f}, {v['r_max']:.3f}]")
    i = res["intervention"]
    lines.append(f"  [{_verdict(i['passed'])}] 2 intervention  KL(R={i['pair'][0]} || "
                 f"R={i['pair'][1]}) = {i['mean_kl']:.4g} nats/token (> {i['min_effect']}), "
                 f"t = {i['t']:.3g}, p_t = {i['p_t']:.3g}, p_sign-flip = {i['p_sign_flip']:.3g}; "
                 f"top-1 changed at {100 * i['top1_changed']:.1f}% of positions")
    c = res["correlation"]
    lines.append(f"  [{_verdict(c['passed'])}] 3 correlation   within-sequence r(R {c['best']}, "
                 f"entropy) = {c['r_within']:+.4f} (|r| > {c['threshold']}), p_t = "
                 f"{c['p_t']:.3g}, p_sign-flip = {c['p_sign_flip']:.3g} (< {c['alpha_each']:.3g}"
                 f" each, Bonferroni)")
    lines.append("      " + "; ".join(f"{t['name']}: r {t['r_within']:+.3f} p {t['p']:.2g}"
                                      for t in c["per_candidate"])
                 + f"; pooled r {c['pooled_r']:+.3f} (naive p {c['pooled_p_naive']:.2g}), "
                 f"between-sequence r {c.get('between_r', float('nan')):+.3f}")
    lines.append(f"  overall: {'PASS' if res['passed'] else 'FAIL'}")
    return lines
