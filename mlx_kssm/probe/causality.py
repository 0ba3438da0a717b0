"""The causality suite (docs/causality.md): is R a causal carrier of the state,
and does it track the model's confidence? docs/causality.md explains every number.

On held-out windows, deterministically (no sampling, no training noise, fixed seeds). The
held-out sequences are the independent units: every effect is one number per sequence,
averaged, with a percentile-bootstrap CI over sequences (95%, 4,000 resamples, fixed seed)
and p-values kept beside it. Each test gives PASS, FAIL or INCONCLUSIVE
(`stats.threshold_verdict`): PASS when the whole CI clears the test's threshold and p < alpha,
FAIL when the whole CI lies at or below it, INCONCLUSIVE otherwise (the CI straddles it).

1. variance      R varies: std of R over held-out positions (per layer, averaged over
                 layers) > 0.01. No p-value: a spread is not tested against zero.
2. intervention  forcing R changes the next-token distribution: per sequence, the KL between
                 the next-token distributions with R forced to the lowest and to the highest
                 of `values`, averaged over its positions; effect = mean over sequences, must
                 exceed 1e-3 nats/token (so float rounding can never pass: the
                 `control-bolted` preset, whose output bypasses R, gets KL ~ 0); p = the larger
                 of a one-sided t-test and an exact sign-flip test against 0.
                 With `random_init_seed`, the same measurement on a freshly initialized model
                 of the same architecture (for a trained run: its own step-0 weights) on the
                 same sequences, reported as two separate lines:
                   wired in           the random-init effect exceeds the threshold: forcing R
                                      moves the output by construction, before any training;
                   learned to use it  the trained effect is larger than the random-init one by
                                      at least the minimum effect: the paired per-sequence
                                      difference (trained - random) has a CI above the
                                      minimum KL and p < alpha (paired t and sign-flip).
3. correlation   R vs the next-token entropy (the model's uncertainty): per sequence and layer,
                 Pearson r over its positions; Fisher-z averaged over sequences; the sign says
                 the direction (negative: high R, confident predictions). The rule:
                 PASS if at least one layer's within-sequence r(R, entropy) has its CI (at
                 confidence 1 - (1 - 0.95) / L) entirely beyond +-0.05 and p < alpha / L
                 (Bonferroni over the L layers); FAIL if every layer's CI lies inside +-0.05;
                 otherwise INCONCLUSIVE; the layer mean is reported, not tested.
                 Why this rule: each layer's R feeds its own readout and layers are seen to
                 correlate with opposite signs that cancel in a mean, so the question is asked
                 per layer, and Bonferroni over the L layers keeps the chance of any false PASS
                 at alpha. The pooled r over all positions (naive p) and the between-sequence r
                 (sequence means) are reported beside it.

overall: PASS when all three tests PASS (and 2b "learned to use it", when the random-init
comparison ran), FAIL when any FAILs, INCONCLUSIVE otherwise (`overall_verdict`).
`causality_suite(model, batches)` returns a JSON-able dict; `format_causality` prints it.
Models without R (the transformer) get "not applicable".
"""

from __future__ import annotations

import itertools

import mlx.core as mx
import numpy as np

from ..kernels import kernel_of, use_kernel
from ..models import DEFAULT_ZONES, ZONE_TABLES, build_model, r_zone
from ..models.force import ForceR, check_r
from . import stats

DEFAULT_VALUES = (0.2, 0.8)
ALPHA = 0.01
MIN_R_STD = 0.01
MIN_KL = 1e-3  # nats: the smallest effect of forcing that counts
MIN_CORR = 0.05
LOGIT_BUDGET = 1 << 25  # floats of logits per forward chunk (B * T * V), ~128 MB
POSITION_CHUNK = 512  # positions per forward pass over a long window (through the cache)
SIGN_FLIP_RESAMPLES = 20000  # Monte Carlo sign patterns when a test has more than 16 units
# test 3's multiple-comparison rule, word for word as the module docstring states it (with the
# defaults) and as format_causality prints it (with the values used); the code below follows it
CORRELATION_RULE = ("PASS if at least one layer's within-sequence r(R, entropy) has its CI "
                    "(at confidence 1 - (1 - {confidence:g}) / L) entirely beyond +-{threshold:g} "
                    "and p < alpha / L (Bonferroni over the L layers); FAIL if every layer's CI "
                    "lies inside +-{threshold:g}; otherwise INCONCLUSIVE; the layer mean is "
                    "reported, not tested.")


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


def spread_windows(tokens, n: int, seq_len: int) -> np.ndarray:
    """n windows of seq_len tokens evenly spread over a token array (a split's memmap):
    non-overlapping, so independent units for the tests over sequences, whenever the array
    holds n * seq_len tokens (`windows_overlap` says when not)."""
    if len(tokens) < seq_len:
        raise ValueError(f"{len(tokens)} tokens, too few for windows of {seq_len}")
    starts = np.linspace(0, len(tokens) - seq_len, n).astype(np.int64)
    return np.stack([np.asarray(tokens[s:s + seq_len], dtype=np.int32) for s in starts])


def windows_overlap(n_tokens: int, n: int, seq_len: int) -> bool:
    return n_tokens < n * seq_len


def _chunks(n_rows: int, seq_len: int, vocab: int):
    step = max(1, LOGIT_BUDGET // max(1, seq_len * vocab))
    for i in range(0, n_rows, step):
        yield slice(i, min(n_rows, i + step))


def log_probs(model, x, force_r=None, cache=None):
    """Next-token log-probabilities (float32) and R of a forward pass over token windows x
    (continuing `cache`, make_cache()'s list, when given)."""
    logits, r = model(mx.array(x), cache=cache, force_r=force_r, return_r=True)
    logp = logits.astype(mx.float32)
    logp = logp - mx.logsumexp(logp, axis=-1, keepdims=True)
    return logp, r


def chunked_log_probs(model, x, force_r=None, chunk: int = POSITION_CHUNK):
    """`log_probs` over windows x (B, T), `chunk` positions at a time through the model's
    stateful cache: yields each chunk's (logp (B, t, V), R (B, t, L) or None). A long window
    in one pass holds activations and logits for all its positions at once (gigabytes for
    30k tokens); in chunks memory is bounded by the chunk, whatever T. The caller reduces each
    chunk before taking the next; the cache is evaluated between chunks, so the lazy graph
    never spans the window."""
    x = mx.array(x)
    cache = model.make_cache()
    for start in range(0, x.shape[1], chunk):
        yield log_probs(model, x[:, start:start + chunk], force_r, cache)
        mx.eval([getattr(layer, "__dict__", layer) for layer in cache])


def kl_divergence(logp_a, logp_b):
    """KL(a || b) per position (nats) from log-probabilities."""
    return mx.sum(mx.exp(logp_a) * (logp_a - logp_b), axis=-1)


def entropy(logp):
    """Entropy per position (nats) from log-probabilities."""
    return -mx.sum(mx.exp(logp) * logp, axis=-1)


def r_statistics(r) -> dict:
    """Summary of an (N, T, L) array of R: mean, std, per layer, zone occupancy (of the
    layer-mean R per position) in the default zone table ("zone", "zone_occupancy") and in
    every table ("zone_occupancy_by_table": table name -> occupancy)."""
    r = np.asarray(r, dtype=np.float64)
    mean_r = r.mean(axis=-1)
    by_table = {name: zone_occupancy(mean_r, name) for name in ZONE_TABLES}
    return {"mean": float(mean_r.mean()), "std": float(mean_r.std()),
            "min": float(mean_r.min()), "max": float(mean_r.max()),
            "per_layer_mean": r.mean(axis=(0, 1)).tolist(),
            "per_layer_std": r.std(axis=(0, 1)).tolist(),
            "zone": r_zone(float(mean_r.mean())),
            "zone_occupancy": by_table[DEFAULT_ZONES],
            "zone_occupancy_by_table": by_table}


def zone_occupancy(values, zones: str) -> dict:
    """Zone label of table `zones` -> the share of `values` that lie in it (every zone named)."""
    counts = {label: 0 for _, label in ZONE_TABLES[zones]}
    for v in np.ravel(values):
        counts[r_zone(float(v), zones)] += 1
    total = max(1, np.size(values))
    return {k: v / total for k, v in counts.items()}


# ---------------------------------------------------------------- measurement


def measure(model, windows: np.ndarray, values, chunk: int = POSITION_CHUNK) -> dict | None:
    """Everything the tests need from forward passes over `windows` (N, T), or None for a
    model without R: R (N, T, L), free-run entropy (N, T), and per sequence the KL between
    each pair of forced values (both directions), the KL of each forced run to the free run,
    and the share of positions whose top-1 token differs between the lowest and highest value.
    Windows run `chunk` positions at a time through the model's cache (chunked_log_probs)."""
    n_seq, seq_len = windows.shape
    pairs = list(itertools.combinations(values, 2))
    parts = {"r": [], "entropy": [], "top1_changed": []}
    kl = {key: [] for pair in pairs for key in (pair, pair[::-1])}
    kl_free = {v: [] for v in values}
    achieved_err = 0.0
    forces = {v: ForceR.of(v, len(model.layers)) for v in values}
    for sl in _chunks(n_seq, min(seq_len, chunk), model.args.vocab_size):
        rows = _measure_rows(model, windows[sl], values, forces, list(kl), chunk)
        if rows is None:
            return None
        for key in parts:
            parts[key].append(rows[key])
        for key in kl:
            kl[key].append(rows["kl"][key])
        for v in values:
            kl_free[v].append(rows["kl_free"][v])
        achieved_err = max(achieved_err, rows["achieved_err"])
    out = {k: np.concatenate(v).astype(np.float64) for k, v in parts.items()}
    out["kl"] = {pair: np.concatenate(v).astype(np.float64) for pair, v in kl.items()}
    out["kl_free"] = {v: float(np.concatenate(x).mean()) for v, x in kl_free.items()}
    out["achieved_r_max_error"] = achieved_err
    return out


def _measure_rows(model, rows: np.ndarray, values, forces, kl_keys, chunk) -> dict | None:
    """`measure` for a few windows, chunk by chunk of positions: the free run and each forced
    run carry their own cache; per-position figures are kept, the KLs summed per sequence."""
    seq_len = rows.shape[1]
    lo, hi = values[0], values[-1]
    free = chunked_log_probs(model, rows, None, chunk)
    first = next(free)
    if first[1] is None:  # a model without R: nothing to force
        return None
    runs = [itertools.chain([first], free)]
    runs += [chunked_log_probs(model, rows, forces[v], chunk) for v in values]
    r_parts, entropy_parts = [], []
    kl_sum = {key: 0.0 for key in kl_keys}
    kl_free_sum = {v: 0.0 for v in values}
    changed, achieved_err = 0.0, 0.0
    for (logp_free, r), *forced_runs in zip(*runs):
        forced = {v: logp for v, (logp, _) in zip(values, forced_runs)}
        r_parts.append(np.array(r.astype(mx.float32)))
        entropy_parts.append(np.array(entropy(logp_free)))
        for v, (logp, r_v) in zip(values, forced_runs):
            achieved_err = max(achieved_err, float(mx.max(mx.abs(r_v - v)).item()))
            kl_free_sum[v] += np.array(kl_divergence(logp, logp_free).sum(axis=-1))
        for a, b in kl_keys:
            kl_sum[(a, b)] += np.array(kl_divergence(forced[a], forced[b]).sum(axis=-1))
        top1 = mx.argmax(forced[lo], axis=-1) != mx.argmax(forced[hi], axis=-1)
        changed += np.array(top1.astype(mx.float32).sum(axis=-1))
    return {"r": np.concatenate(r_parts, axis=1), "entropy": np.concatenate(entropy_parts, axis=1),
            "top1_changed": changed / seq_len,
            "kl": {key: total / seq_len for key, total in kl_sum.items()},
            "kl_free": {v: total / seq_len for v, total in kl_free_sum.items()},
            "achieved_err": achieved_err}


# ---------------------------------------------------------------- the tests


def _variance_test(r, min_r_std, n_resamples, seed, confidence) -> dict:
    """std of R over positions (per layer, averaged), bootstrapped over sequences: each
    resample's std comes from per-sequence sums of the centered R and its square."""
    n_seq, seq_len, _ = r.shape
    counts = stats.bootstrap_counts(n_seq, n_resamples, seed)  # (B, N)
    centered = r - r.mean(axis=(0, 1))
    s1, s2 = centered.sum(axis=1), (centered ** 2).sum(axis=1)  # (N, L)
    total = n_seq * seq_len
    boot_var = counts @ s2 / total - (counts @ s1 / total) ** 2  # (B, L)
    boot = np.sqrt(np.maximum(boot_var, 0.0)).mean(axis=1)
    per_layer_std = r.std(axis=(0, 1))
    effect = float(per_layer_std.mean())
    ci = stats.percentile_interval(boot, confidence)
    return {"verdict": stats.threshold_verdict(ci, min_r_std), "r_std": effect, "ci": ci,
            "threshold": min_r_std, "p": None, "per_layer_std": per_layer_std.tolist(),
            "between_sequence_std": float(r.mean(axis=(1, 2)).std()),
            "r_mean": float(r.mean()), "r_min": float(r.min()), "r_max": float(r.max())}


def _greater_than_zero(x, alpha, threshold, n_resamples, seed, confidence) -> dict:
    """Mean of per-sequence values x with its bootstrap CI, one-sided p-values against 0 (the
    larger of a t-test and a sign-flip test), and the verdict against `threshold`."""
    boot = stats.bootstrap_mean(x, confidence, n_resamples, seed)
    t_res = stats.one_sample_t(x, 0.0, alternative="greater")
    perm = stats.sign_flip_test(x, alternative="greater", n_resamples=SIGN_FLIP_RESAMPLES,
                                seed=seed)
    p = max(t_res["p"], perm["p"])
    return {"effect": boot["estimate"], "ci": boot["ci"], "t": t_res["t"], "p_t": t_res["p"],
            "p_sign_flip": perm["p"], "p": p, "threshold": threshold, "alpha": alpha,
            "verdict": stats.threshold_verdict(boot["ci"], threshold, p, alpha)}


def _intervention_test(m, values, alpha, min_kl, n_resamples, seed, confidence) -> dict:
    lo, hi = values[0], values[-1]
    kl = m["kl"][(lo, hi)]
    test = _greater_than_zero(kl, alpha, min_kl, n_resamples, seed, confidence)
    return {"verdict": test["verdict"], "pair": [lo, hi], "mean_kl": test["effect"],
            "ci": test["ci"], "median_kl": float(np.median(kl)),
            "min_kl_sequence": float(kl.min()), "max_kl_sequence": float(kl.max()),
            "mean_kl_reverse": float(m["kl"][(hi, lo)].mean()),
            "t": test["t"], "p_t": test["p_t"], "p_sign_flip": test["p_sign_flip"],
            "p": test["p"], "threshold": min_kl, "alpha": alpha,
            "top1_changed": float(m["top1_changed"].mean()),
            "achieved_r_max_error": m["achieved_r_max_error"],
            "pairs": [{"a": a, "b": b, "mean_kl": float(m["kl"][(a, b)].mean()),
                       "mean_kl_reverse": float(m["kl"][(b, a)].mean())}
                      for a, b in itertools.combinations(values, 2)],
            "kl_to_free": {str(v): m["kl_free"][v] for v in values},
            "per_sequence_kl": kl.tolist()}


def _random_init_comparison(trained_kl, random_kl, seed_of_init, alpha, min_kl, n_resamples,
                            seed, confidence) -> dict:
    """'wired in' (the random-init effect vs the threshold) and 'learned to use it' (the
    paired per-sequence difference trained - random-init vs the same threshold: learning must
    add at least the least effect that counts, so two float-level KLs never pass), on the
    same sequences."""
    wired = _greater_than_zero(random_kl, alpha, min_kl, n_resamples, seed, confidence)
    learned = _greater_than_zero(trained_kl - random_kl, alpha, min_kl, n_resamples, seed,
                                 confidence)
    mean_random = float(random_kl.mean())
    return {"seed": seed_of_init,
            "wired_in": {"verdict": wired["verdict"], "mean_kl": wired["effect"],
                         "ci": wired["ci"], "p": wired["p"], "threshold": min_kl},
            "learned": {"verdict": learned["verdict"], "difference": learned["effect"],
                        "ci": learned["ci"], "t": learned["t"], "p_t": learned["p_t"],
                        "p_sign_flip": learned["p_sign_flip"], "p": learned["p"],
                        "ratio": float(trained_kl.mean() / mean_random) if mean_random > 0
                        else None, "threshold": min_kl},
            "per_sequence_kl": random_kl.tolist()}


def per_sequence_r(x, y) -> np.ndarray:
    """Pearson r of each row of x with the same row of y (N, T) -> (N,); NaN where a row is
    constant (no correlation is defined)."""
    xc, yc = x - x.mean(axis=1, keepdims=True), y - y.mean(axis=1, keepdims=True)
    denom = np.sqrt((xc * xc).sum(axis=1) * (yc * yc).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (xc * yc).sum(axis=1) / denom
    return np.where(denom > 0, np.clip(r, -1.0, 1.0), np.nan)


def _within_sequence_corr(name, r, ent, alpha, min_corr, n_resamples, seed,
                          confidence) -> dict:
    """Each sequence's r(R, entropy); Fisher-z mean over sequences with its bootstrap CI
    (back-transformed), a t-test and a sign-flip test over sequences, and the verdict."""
    per_seq = per_sequence_r(r, ent)
    per_seq = per_seq[np.isfinite(per_seq)]
    out = {"name": name, "n_sequences_used": int(per_seq.size), "confidence": confidence,
           "alpha": alpha}
    if per_seq.size < 3:
        nan = float("nan")
        out.update({"r_within": nan, "ci": [nan, nan], "sign": "0", "t": nan, "p_t": 1.0,
                    "p_sign_flip": 1.0, "p": 1.0, "verdict": stats.INCONCLUSIVE})
        return out
    z = stats.fisher_z(per_seq)
    boot = stats.bootstrap_mean(z, confidence, n_resamples, seed)
    zt = stats.one_sample_t(z, 0.0, alternative="two-sided")
    zperm = stats.sign_flip_test(z, alternative="two-sided", n_resamples=SIGN_FLIP_RESAMPLES,
                                 seed=seed)
    p = max(zt["p"], zperm["p"])
    ci = [float(np.tanh(c)) for c in boot["ci"]]
    r_within = float(np.tanh(z.mean()))
    out.update({"r_within": r_within, "ci": ci, "sign": "+" if r_within >= 0 else "-",
                "t": zt["t"], "p_t": zt["p"], "p_sign_flip": zperm["p"], "p": p,
                "verdict": stats.threshold_verdict(ci, min_corr, p, alpha, two_sided=True)})
    return out


def correlation_test(r, ent, alpha, min_corr, n_resamples, seed, confidence) -> dict:
    """CORRELATION_RULE: per layer at the Bonferroni level; the layer mean reported only."""
    n_layers = r.shape[-1]
    level = 1.0 - (1.0 - confidence) / n_layers
    layers = [_within_sequence_corr(f"layer {l}", r[..., l], ent, alpha / n_layers, min_corr,
                                    n_resamples, seed, level) for l in range(n_layers)]
    layer_verdicts = [t["verdict"] for t in layers]
    if stats.PASS in layer_verdicts:
        verdict = stats.PASS
    elif all(v == stats.FAIL for v in layer_verdicts):
        verdict = stats.FAIL
    else:
        verdict = stats.INCONCLUSIVE
    r_mean = r.mean(axis=-1)
    mean = _within_sequence_corr("layer mean", r_mean, ent, alpha, min_corr, n_resamples, seed,
                                 confidence)
    mean.pop("verdict")  # reported, not tested
    pooled = stats.pearson(r_mean, ent)
    rule = CORRELATION_RULE.format(confidence=confidence, threshold=min_corr)
    out = {"verdict": verdict, "rule": rule, "threshold": min_corr, "alpha": alpha,
           "alpha_each": alpha / n_layers, "confidence_each": level, "per_layer": layers,
           "layer_mean": mean, "pooled_r": pooled["r"], "pooled_p_naive": pooled["p"]}
    if r.shape[0] >= 3:
        between = stats.pearson(r_mean.mean(axis=1), ent.mean(axis=1))
        out.update({"between_r": between["r"], "between_p": between["p"]})
    return out


def causality_suite(model, batches, values=DEFAULT_VALUES, alpha: float = ALPHA,
                    min_r_std: float = MIN_R_STD, min_kl: float = MIN_KL,
                    min_corr: float = MIN_CORR, max_sequences: int | None = None,
                    n_resamples: int = stats.BOOTSTRAP_RESAMPLES, seed: int = 0,
                    confidence: float = stats.CONFIDENCE,
                    random_init_seed: int | None = None) -> dict:
    """Run the three tests on held-out windows (module docstring; docs/causality.md).

    `random_init_seed`: also measure a freshly initialized model of the same architecture
    (`build_model(model.args, seed=random_init_seed)`) on the same windows, for test 2's
    "wired in" and "learned to use it" lines. `seed` fixes the bootstrap and the Monte Carlo
    sign-flip tests, so the result is a function of the weights and the windows alone."""
    values = sorted(check_r(v) for v in values)
    if len(values) < 2 or values[0] == values[-1]:
        raise ValueError("the intervention test needs at least two different forced values")
    windows = windows_from_batches(batches, max_sequences)
    n_seq, seq_len = windows.shape
    result = {"n_sequences": int(n_seq), "seq_len": int(seq_len), "values": values,
              "alpha": alpha, "seed": seed, "confidence": confidence,
              "n_resamples": n_resamples}
    m = measure(model, windows, values)
    if m is None:
        return _not_applicable(result, "the model has no oscillators (no R): "
                               "the causality suite does not apply")
    result["r"] = r_statistics(m["r"])
    result["variance"] = _variance_test(m["r"], min_r_std, n_resamples, seed, confidence)
    result["intervention"] = _intervention_test(m, values, alpha, min_kl, n_resamples, seed,
                                                confidence)
    if random_init_seed is not None:
        fresh = use_kernel(build_model(model.args, seed=random_init_seed), kernel_of(model))
        baseline = measure(fresh, windows, values)
        result["intervention"]["random_init"] = _random_init_comparison(
            m["kl"][(values[0], values[-1])], baseline["kl"][(values[0], values[-1])],
            random_init_seed, alpha, min_kl, n_resamples, seed, confidence)
    result["correlation"] = correlation_test(m["r"], m["entropy"], alpha, min_corr,
                                              n_resamples, seed, confidence)
    result["applicable"] = True
    result["verdict"] = overall_verdict(result)
    return result


def overall_verdict(result: dict) -> str:
    """The suite's one verdict: tests 1-3 and, when the random-init comparison ran, test 2b
    ("learned to use it"), combined by stats.combine_verdicts."""
    verdicts = [result[t]["verdict"] for t in TESTS]
    random_init = result["intervention"].get("random_init")
    if random_init is not None:
        verdicts.append(random_init["learned"]["verdict"])
    return stats.combine_verdicts(verdicts)


TESTS = ("variance", "intervention", "correlation")


def _not_applicable(result: dict, reason: str) -> dict:
    for name in TESTS:
        result[name] = {"verdict": None, "reason": reason}
    result.update({"applicable": False, "verdict": None, "reason": reason})
    return result


# ---------------------------------------------------------------- printing


def _tag(verdict) -> str:
    return "[n/a]" if verdict is None else f"[{verdict}]"


def _ci(ci, fmt: str = ".4g") -> str:
    return f"[{ci[0]:{fmt}}, {ci[1]:{fmt}}]"


def _direction(sign: str) -> str:
    return {"+": "higher R, higher entropy", "-": "higher R, lower entropy (more confident)"
            }.get(sign, "undefined")


def format_causality(res: dict, label: str = "") -> list:
    """Terminal lines: per test its verdict, effect size with CI and p-values."""
    head = f"causality suite{' — ' + label if label else ''}: "
    if not res.get("applicable", True):
        return [head + f"not applicable ({res['reason']})"]
    pct = f"{100 * res['confidence']:g}%"
    lines = [head + f"{res['n_sequences']} held-out windows x {res['seq_len']} tokens; effects "
             f"with {pct} bootstrap CIs over windows ({res['n_resamples']} resamples, seed "
             f"{res['seed']}); alpha {res['alpha']} (docs/causality.md)"]
    lines += _format_variance(res["variance"])
    lines += _format_intervention(res["intervention"])
    lines += _format_correlation(res["correlation"])
    tests = ("tests 1-3 and 2b" if res["intervention"].get("random_init") is not None
             else "tests 1-3")
    lines.append(f"  overall: {res['verdict']} (PASS if {tests} all PASS, FAIL if any FAILs, "
                 "else INCONCLUSIVE)")
    return lines


def _format_variance(v) -> list:
    return [f"  {_tag(v['verdict'])} 1 variance      std(R) = {v['r_std']:.4f} {_ci(v['ci'], '.4f')}"
            f" (threshold {v['threshold']}); per layer "
            + ", ".join(f"{s:.4f}" for s in v["per_layer_std"])
            + f"; R in [{v['r_min']:.3f}, {v['r_max']:.3f}]"]


def _format_intervention(i) -> list:
    lines = [f"  {_tag(i['verdict'])} 2 intervention  KL(R={i['pair'][0]} || R={i['pair'][1]}) "
             f"= {i['mean_kl']:.4g} {_ci(i['ci'])} nats/token (threshold {i['threshold']}), "
             f"p_t = {i['p_t']:.3g}, p_sign-flip = {i['p_sign_flip']:.3g}; top-1 changed at "
             f"{100 * i['top1_changed']:.1f}% of positions"]
    base = i.get("random_init")
    if base is not None:
        w, l = base["wired_in"], base["learned"]
        ratio = f", {l['ratio']:.3g}x" if l["ratio"] is not None else ""
        lines.append(f"      {_tag(w['verdict'])} wired in: random-init (seed {base['seed']}) KL = "
                     f"{w['mean_kl']:.4g} {_ci(w['ci'])} nats/token (threshold "
                     f"{w['threshold']}), p = {w['p']:.3g}")
        lines.append(f"      {_tag(l['verdict'])} learned to use it: model - random-init KL = "
                     f"{l['difference']:+.4g} {_ci(l['ci'], '+.4g')}{ratio} (paired over the "
                     f"same windows; threshold {l['threshold']}), p = {l['p']:.3g}")
    return lines


def _format_correlation(c) -> list:
    lines = [f"  {_tag(c['verdict'])} 3 correlation   within-sequence r(R, next-token entropy) "
             f"per layer", f"      rule: {c['rule']}"]
    for t in c["per_layer"]:
        lines.append(f"      {_tag(t['verdict'])} {t['name']}: r = {t['r_within']:+.4f} "
                     f"{_ci(t['ci'], '+.3f')} ({100 * t['confidence']:g}% CI; "
                     f"{_direction(t['sign'])}), p = {t['p']:.3g} (< {t['alpha']:.3g} to pass)")
    m = c["layer_mean"]
    lines.append(f"      layer mean (not tested): r = {m['r_within']:+.4f} {_ci(m['ci'], '+.3f')}; "
                 f"pooled r {c['pooled_r']:+.3f} (naive p {c['pooled_p_naive']:.2g}); "
                 f"between-sequence r {c.get('between_r', float('nan')):+.3f}")
    return lines
