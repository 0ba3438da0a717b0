"""Small, dependency-free statistics for the causality suite (numpy only, no scipy).

- `betainc`: the regularized incomplete beta I_x(a, b) (continued fraction, Lentz's method),
  from which the Student-t distribution follows; `normal_cdf` from math.erfc.
- `one_sample_t` / `paired_t`: Student t-tests with one- or two-sided p-values.
- `sign_flip_test`: the exact sign-flip permutation test of "symmetric about 0" (every one of
  the 2^n sign patterns for n <= 16, else a fixed-seed Monte Carlo sample), assumption-free.
- `pearson`: Pearson r with its t-based p-value; `fisher_z` for averaging correlations.

Each test returns a plain dict (JSON-able) so results can be printed and saved as they are.
"""

from __future__ import annotations

import math

import numpy as np

ALTERNATIVES = ("two-sided", "greater", "less")
EXACT_SIGN_FLIP_MAX_N = 16  # 2^16 = 65,536 sign patterns: exact enumeration below this


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
