"""The samples gate's thresholds (probe/quality.py KNOWN_WORDS, GIBBERISH): the share of a
40-token window's words found in a training corpus's vocabulary, on real held-out text and on
the same windows with their letters shuffled; prints one line per kind of text.

    tar -xJf /path/to/gutenberg-120.tar.xz -C /tmp     # the books the project's data fetch gets
    python research/bench/known_words.py --books /tmp/gutenberg --tokenizer cl100k_base
    python research/bench/known_words.py --books /tmp/gutenberg --tokenizer bytes

The books are shuffled with --seed; the first --train of them give the vocabulary, built as
the trainer builds it (quality.corpus_vocabulary: up to 2M tokens in 200 spread pieces); from
each of the others --windows windows are drawn. A window opening mid-word starts at its first
space; a last word cut short counts when a vocabulary word begins with it (known_words).
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np

from mlx_kssm.data.tokenizer import load_tokenizer
from mlx_kssm.probe.quality import corpus_vocabulary, known_words

GIBBERISH_SAMPLE = "o the ne uny ther UEAORRLNoiols"


def shuffle_letters(text: str, rng: random.Random) -> str:
    letters = [c for c in text if c.isalpha()]
    rng.shuffle(letters)
    it = iter(letters)
    return "".join(next(it) if c.isalpha() else c for c in text)


def window_texts(tok, book: Path, n: int, tokens: int, rng: random.Random):
    ids = tok.encode_array(book.read_text(errors="replace"))
    for start in rng.sample(range(len(ids) - tokens), n):
        text = tok.decode([int(x) for x in ids[start:start + tokens]])
        if text[:1].isalpha():  # opened mid-word
            text = text[text.find(" ") + 1:] if " " in text else ""
        yield text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--books", required=True, help="folder of .txt books")
    p.add_argument("--tokenizer", default="cl100k_base")
    p.add_argument("--train", type=int, default=100, help="books giving the vocabulary")
    p.add_argument("--windows", type=int, default=50, help="windows per held-out book")
    p.add_argument("--tokens", type=int, default=40, help="tokens per window (sample_tokens)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    tok, rng = load_tokenizer(a.tokenizer), random.Random(a.seed)
    books = sorted(Path(a.books).glob("*.txt"))
    rng.shuffle(books)
    train, held = books[:a.train], books[a.train:]
    ids = np.concatenate([tok.encode_array(b.read_text(errors="replace")) for b in train])
    vocabulary = corpus_vocabulary(ids, tok.decode)
    print(f"{len(train)} books, {len(ids):,} tokens: vocabulary of {len(vocabulary):,} words; "
          f"{len(held)} held-out books")
    shares = {"real": [], "letters shuffled": []}
    for book in held:
        for text in window_texts(tok, book, a.windows, a.tokens, rng):
            for kind, t in (("real", text), ("letters shuffled", shuffle_letters(text, rng))):
                known, n = known_words(t, vocabulary)
                if n:
                    shares[kind].append(known / n)
    for kind, xs in shares.items():
        xs = np.array(xs)
        print(f"{kind:>17}: {len(xs)} windows, mean {xs.mean():.3f}, 5th-95th percentile "
              f"{np.percentile(xs, 5):.3f}-{np.percentile(xs, 95):.3f}, below 0.5 "
              f"{np.mean(xs < 0.5):.1%}, at least 0.8 {np.mean(xs >= 0.8):.1%}")
    known, n = known_words(GIBBERISH_SAMPLE, vocabulary)
    print(f"{GIBBERISH_SAMPLE!r}: {known} of {n} words known")


if __name__ == "__main__":
    main()
