"""Small, dependency-free statistics for the causality suite (numpy only, no scipy).

- `betainc`: the regularized incomplete beta I_x(a, b) (continued fraction, Lentz's method),
  from which the Student-t distribution follows; `normal_cdf` from math.erfc.
- `one_sample_t` / `paired_t`: Student t-tests with one- or two-sided p-values.
- `sign_flip_test`: the exact sign-flip permutation test of "symmetric about 0" (every one of
  the 2^n sign patterns for n <= 16, else a fixed-seed Monte Carlo sample), assumption-free.
- `pearson`: Pearson r with its t-based p-value; `fisher_z` for averaging correlations.
- `bootstrap_counts` / `bootstrap_mean`: percentile-bootstrap confidence intervals over units
  (held-out sequences), vectorized: one (resamples, n) matrix of multinomial counts from a
  fixed seed, so an interval is deterministic and costs one matrix product.
- `t_quantile` / `t_interval`: the Student-t confidence interval of a mean (seeds of a study).
- `threshold_verdict`: PASS / FAIL / INCONCLUSIVE from an effect's CI, a threshold and a p-value
  (the rule is in its docstring and in docs/causality.md).

Each test returns a plain dict (JSON-able) so results can be printed and saved as they are.
"""

from __future__ import annotations

import math

import numpy as np

ALTERNATIVES = ("two-sided", "greater", "less")
EXACT_SIGN_FLIP_MAX_N = 16  # 2^16 = 65,536 sign patterns: exact enumeration below this
CONFIDENCE = 0.95  # the level of every confidence interval the suite and the study report
BOOTSTRAP_RESAMPLES = 4000  # percentile-interval endpoints then move by ~1% of the CI width
PASS, FAIL, INCONCLUSIVE = "PASS", "FAIL", "INCONCLUSIVE"


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if not (a > 0 and b > 0):
        raise ValueError(f"betainc needs a, b > 0, got a={a}, b={b}")
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    # the continued fraction converges fast for x < (a + 1) / (a + b + 2); use symmetry otherwise
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def _betacf(a: float, b: float, x: float, max_iter: int = 500, eps: float = 1e-15) -> float:
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, max_iter + 1):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with `df` degrees of freedom."""
    if math.isnan(t):
        return float("nan")
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))  # P(T > |t|)
    return tail if t >= 0 else 1.0 - tail


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    return 1.0 - t_sf(t, df)


def normal_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def normal_sf(x: float) -> float:
    return 0.5 * math.erfc(x / math.sqrt(2.0))


def _p_from_t(t: float, df: float, alternative: str) -> float:
    if alternative == "greater":
        return t_sf(t, df)
    if alternative == "less":
        return t_cdf(t, df)
    return min(1.0, 2.0 * t_sf(abs(t), df))


def _check_alternative(alternative: str) -> None:
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")


def one_sample_t(x, mu: float = 0.0, alternative: str = "two-sided") -> dict:
    """Student t-test of mean(x) against `mu`. A sample with zero spread gets t = +-inf when its
    mean differs from mu (p = 0) and p = 1 when it equals mu exactly."""
    _check_alternative(alternative)
    x = np.asarray(x, dtype=np.float64).ravel()
    n = x.size
    if n < 2:
        raise ValueError(f"a t-test needs at least 2 values, got {n}")
    mean = float(x.mean())
    sd = float(x.std(ddof=1))
    diff = mean - mu
    if sd == 0.0:
        t = 0.0 if diff == 0 else math.copysign(math.inf, diff)
        p = 1.0 if diff == 0 else _p_from_t(t, n - 1, alternative)
    else:
        t = diff / (sd / math.sqrt(n))
        p = _p_from_t(t, n - 1, alternative)
    return {"n": n, "mean": mean, "sd": sd, "t": t, "df": n - 1, "p": p,
            "alternative": alternative}


def paired_t(a, b, alternative: str = "two-sided") -> dict:
    """Paired t-test of a - b against 0 (a, b measured on the same units)."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in size: {a.size} vs {b.size}")
    return one_sample_t(a - b, 0.0, alternative)


def sign_flip_test(x, alternative: str = "two-sided", n_resamples: int = 20000,
                   seed: int = 0) -> dict:
    """Permutation test of H0 "x is symmetric about 0" with the statistic sum(x).

    Exact (all 2^n sign patterns) for n <= 16; otherwise `n_resamples` random sign patterns
    from a fixed seed, with the (count + 1) / (n_resamples + 1) estimate, so the p-value is
    deterministic and never 0. Note the floor: with n values, p >= 2^-n (exact) — a handful of
    sequences can never reach p < 0.01, however large the effect.
    """
    _check_alternative(alternative)
    x = np.asarray(x, dtype=np.float64).ravel()
    n = x.size
    if n < 1:
        raise ValueError("a sign-flip test needs at least 1 value")
    observed = float(x.sum())
    if n <= EXACT_SIGN_FLIP_MAX_N:
        codes = np.arange(2 ** n, dtype=np.int64)[:, None]
        signs = 1.0 - 2.0 * ((codes >> np.arange(n)) & 1)  # (2^n, n) of +-1
        exact = True
    else:
        rng = np.random.default_rng(seed)
        signs = rng.choice(np.array([-1.0, 1.0]), size=(n_resamples, n))
        exact = False
    stats = signs @ x
    tol = 1e-12 * max(1.0, np.abs(x).sum())  # ties up to float rounding count as extreme
    if alternative == "greater":
        extreme = stats >= observed - tol
    elif alternative == "less":
        extreme = stats <= observed + tol
    else:
        extreme = np.abs(stats) >= abs(observed) - tol
    count = int(extreme.sum())
    p = count / len(stats) if exact else (count + 1) / (len(stats) + 1)
    return {"n": n, "statistic": observed, "p": float(p), "exact": exact,
            "alternative": alternative}


def pearson(x, y) -> dict:
    """Pearson correlation r and its two-sided p-value (t = r sqrt((n-2)/(1-r^2)), df n-2).
    The p-value assumes independent pairs: do not feed it positions of the same sequence."""
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"pearson: x and y differ in size ({x.size} vs {y.size})")
    n = x.size
    if n < 3:
        raise ValueError(f"pearson needs at least 3 pairs, got {n}")
    xc, yc = x - x.mean(), y - y.mean()
    denom = math.sqrt(float((xc * xc).sum()) * float((yc * yc).sum()))
    if denom == 0.0:
        return {"n": n, "r": float("nan"), "p": 1.0}
    r = float(np.clip((xc * yc).sum() / denom, -1.0, 1.0))
    if abs(r) == 1.0:
        return {"n": n, "r": r, "p": 0.0}
    t = r * math.sqrt((n - 2) / (1.0 - r * r))
    return {"n": n, "r": r, "p": min(1.0, 2.0 * t_sf(abs(t), n - 2))}


def fisher_z(r):
    """atanh(r), clipped away from +-1 so perfect correlations stay finite."""
    return np.arctanh(np.clip(np.asarray(r, dtype=np.float64), -0.999999, 0.999999))


def bootstrap_counts(n: int, n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> np.ndarray:
    """(n_resamples, n) counts: how often each of n units is drawn in each bootstrap resample
    (n draws with replacement). The same (n, n_resamples, seed) gives the same matrix, so
    statistics computed from one matrix are paired resample by resample."""
    if n < 1 or n_resamples < 1:
        raise ValueError(f"a bootstrap needs n >= 1 and n_resamples >= 1, got {n}, {n_resamples}")
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_resamples)


def percentile_interval(samples, confidence: float = CONFIDENCE) -> list:
    """[lo, hi]: the central `confidence` share of bootstrap statistics."""
    tail = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(np.asarray(samples, dtype=np.float64), [tail, 1.0 - tail])
    return [float(lo), float(hi)]


def bootstrap_mean(x, confidence: float = CONFIDENCE, n_resamples: int = BOOTSTRAP_RESAMPLES,
                   seed: int = 0) -> dict:
    """The mean of x (one value per unit) with its percentile-bootstrap CI over the units."""
    x = np.asarray(x, dtype=np.float64).ravel()
    counts = bootstrap_counts(x.size, n_resamples, seed)
    means = counts @ x / x.size
    return {"estimate": float(x.mean()), "ci": percentile_interval(means, confidence),
            "confidence": confidence, "n": int(x.size), "n_resamples": n_resamples,
            "seed": seed}


def t_quantile(q: float, df: float) -> float:
    """The q-quantile of Student's t with `df` degrees of freedom (bisection on t_cdf)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"a quantile needs 0 < q < 1, got {q}")
    if q < 0.5:
        return -t_quantile(1.0 - q, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < q:  # bracket: t_cdf is increasing
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def t_interval(x, confidence: float = CONFIDENCE) -> dict:
    """Mean of x with the Student-t CI mean +- t_{(1+c)/2, n-1} sd / sqrt(n), for a handful of
    independent values (training seeds), where a bootstrap would be meaningless. With one
    value the CI is undefined (None)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("a confidence interval needs at least one value")
    mean = float(x.mean())
    out = {"mean": mean, "n": int(x.size), "confidence": confidence, "ci": None,
           "half_width": None, "sd": None}
    if x.size >= 2:
        sd = float(x.std(ddof=1))
        half = t_quantile(0.5 + confidence / 2.0, x.size - 1) * sd / math.sqrt(x.size)
        out.update(sd=sd, half_width=half, ci=[mean - half, mean + half])
    return out


def threshold_verdict(ci, threshold: float, p: float | None = None, alpha: float | None = None,
                      two_sided: bool = False) -> str:
    """PASS / FAIL / INCONCLUSIVE for an effect with confidence interval `ci` = [lo, hi].

    PASS: the whole CI lies beyond the threshold (lo > threshold; two-sided: lo > threshold or
    hi < -threshold) and, when a p-value is given, p < alpha. FAIL: the whole CI lies at or
    below the threshold (two-sided: inside [-threshold, threshold]), i.e. the effect is
    credibly smaller than the least that counts. INCONCLUSIVE: anything else: the CI straddles
    the threshold, or it clears it while p >= alpha (too few units for the test to reach alpha).
    """
    lo, hi = ci
    if two_sided:
        beyond, within = lo > threshold or hi < -threshold, -threshold <= lo and hi <= threshold
    else:
        beyond, within = lo > threshold, hi <= threshold
    if beyond and (p is None or p < alpha):
        return PASS
    return FAIL if within else INCONCLUSIVE


def combine_verdicts(verdicts) -> str:
    """All PASS -> PASS; any FAIL -> FAIL; otherwise INCONCLUSIVE."""
    verdicts = list(verdicts)
    if verdicts and all(v == PASS for v in verdicts):
        return PASS
    return FAIL if FAIL in verdicts else INCONCLUSIVE


def ceiling_verdict(ci, threshold: float) -> str:
    """PASS / FAIL / INCONCLUSIVE for a harm that must stay small (a loss rise): PASS when the
    whole CI lies below the threshold, FAIL when the whole CI lies at or above it,
    INCONCLUSIVE when it straddles it."""
    lo, hi = ci
    if hi < threshold:
        return PASS
    return FAIL if lo >= threshold else INCONCLUSIVE
