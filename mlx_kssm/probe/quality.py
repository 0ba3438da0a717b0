"""Mode-collapse checks on generated samples (the earlier project's failure modes: one token repeated,
punctuation runs like '::::', too little variety)."""

from __future__ import annotations

import re

DISTINCT2_FLOOR = 0.3  # below this share of distinct bigrams a sample is called collapsed
WINDOW = 50  # distinct-2 is judged per window of this many tokens: a long healthy sample
# reuses bigrams (more so with byte tokens), a looping one reuses them within any window
MIN_TOKENS = 20  # shorter samples are not judged on distinct-2
MAX_TOKEN_RUN = 8  # the same token this many times in a row
PUNCT_RUN = re.compile(r"([^\w\s])\1{5,}")  # six or more of the same punctuation mark


def distinct_n(tokens, n: int) -> float:
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


def longest_run(tokens) -> int:
    best = run = 0
    prev = object()
    for t in tokens:
        run = run + 1 if t == prev else 1
        best, prev = max(best, run), t
    return best


def windowed_distinct_n(tokens, n: int = 2, window: int = WINDOW) -> float:
    """Mean distinct-n over consecutive windows of `window` tokens (a last window shorter
    than MIN_TOKENS joins the one before), independent of the sample's length."""
    tokens = list(tokens)
    starts = list(range(0, max(1, len(tokens) - MIN_TOKENS + 1), window)) or [0]
    bounds = starts[1:] + [len(tokens)]
    return sum(distinct_n(tokens[a:b], n) for a, b in zip(starts, bounds)) / len(starts)


def sample_quality(tokens, text: str = "") -> dict:
    """Statistics of one sample and whether it looks collapsed (with the reason)."""
    tokens = list(tokens)
    stats = {"distinct_1": distinct_n(tokens, 1), "distinct_2": distinct_n(tokens, 2),
             "distinct_2_window": windowed_distinct_n(tokens, 2),
             "longest_run": longest_run(tokens),
             "punct_run": bool(PUNCT_RUN.search(text or ""))}
    reasons = []
    if stats["longest_run"] >= MAX_TOKEN_RUN:
        reasons.append(f"one token repeated {stats['longest_run']} times")
    if stats["punct_run"]:
        reasons.append("punctuation run")
    if len(tokens) >= MIN_TOKENS and stats["distinct_2_window"] < DISTINCT2_FLOOR:
        reasons.append(f"distinct-2 {stats['distinct_2_window']:.2f} < {DISTINCT2_FLOOR} "
                       f"(per {WINDOW}-token window)")
    stats["collapsed"] = bool(reasons)
    stats["reason"] = "; ".join(reasons)
    return stats
