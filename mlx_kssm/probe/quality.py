"""Checks on generated samples: mode collapse (the ways a small model's samples fail: one
token repeated, punctuation runs like '::::', too little variety) and gibberish (words the
training corpus never uses)."""

from __future__ import annotations

import bisect
import re

DISTINCT2_FLOOR = 0.3  # below this share of distinct bigrams a sample is called collapsed
WINDOW = 50  # distinct-2 is judged per window of this many tokens: a long healthy sample
# reuses bigrams (more so with byte tokens), a looping one reuses them within any window
MIN_TOKENS = 20  # shorter samples are not judged on distinct-2
MAX_TOKEN_RUN = 8  # the same token this many times in a row
PUNCT_RUN = re.compile(r"([^\w\s])\1{5,}")  # six or more of the same punctuation mark


WORD = re.compile(r"[a-z]+(?:'[a-z]+)*")  # a word: letters, with inner apostrophes
# Share of a sample's words found in the training corpus's vocabulary: at or above KNOWN_WORDS
# the sample is words and phrases; below GIBBERISH it is gibberish; between, fragments.
# Measured on 1,000 40-token windows of 20 Gutenberg books against the vocabulary of 100 others
# built as the trainer builds it (docs/training.md, "Samples"): real text 0.97 with cl100k
# (5th percentile 0.88) and 0.95 with bytes (0.80); the same windows with their letters
# shuffled 0.17 and 0.18 (95th percentile 0.30 and 0.43).
KNOWN_WORDS, GIBBERISH = 0.80, 0.50
VOCAB_TOKENS = 2_000_000  # training tokens decoded for the vocabulary (spread over the split)
VOCAB_CHUNKS = 200


def words(text: str) -> list:
    """The words of `text`, lower-cased."""
    return WORD.findall(text.lower())


class Vocabulary:
    """The words of a corpus: membership, and whether a word begins one (a sample cut short by
    the token limit ends in part of a word)."""

    def __init__(self, words_seen):
        self.words = frozenset(words_seen)
        self.ordered = sorted(self.words)

    def __contains__(self, word: str) -> bool:
        return word in self.words

    def __len__(self) -> int:
        return len(self.words)

    def begins(self, prefix: str) -> bool:
        i = bisect.bisect_left(self.ordered, prefix)
        return i < len(self.ordered) and self.ordered[i].startswith(prefix)


def corpus_vocabulary(tokens, decode, max_tokens: int = VOCAB_TOKENS,
                      chunks: int = VOCAB_CHUNKS) -> Vocabulary:
    """The words of up to `max_tokens` of `tokens` (a token array: the training split),
    decoded by `decode` in `chunks` pieces spread evenly over it."""
    n = len(tokens)
    size = max(1, min(n, max_tokens) // chunks)
    last = max(0, n - size)
    starts = sorted({round(i * last / max(1, chunks - 1)) for i in range(chunks)})
    seen = set()
    for start in starts:
        seen.update(words(decode([int(t) for t in tokens[start:start + size]])))
    return Vocabulary(seen)


def known_words(text: str, vocabulary: Vocabulary) -> tuple:
    """(words of `text` found in `vocabulary`, words of `text`). A last word with nothing
    after it may be cut short by the token limit: it counts as known when a known word
    begins with it."""
    found = words(text)
    known = sum(w in vocabulary for w in found)
    if found and text[-1:].isalpha() and found[-1] not in vocabulary:
        known += vocabulary.begins(found[-1])
    return known, len(found)


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


def sample_quality(tokens, text: str = "", vocabulary=None) -> dict:
    """Statistics of one sample and whether it looks collapsed (with the reason); with the
    training corpus's `vocabulary`, also its words and how many of them it holds."""
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
    if vocabulary is not None:
        stats["known_words"], stats["words"] = known_words(text, vocabulary)
    stats["collapsed"] = bool(reasons)
    stats["reason"] = "; ".join(reasons)
    return stats
