"""Peak memory of a long prompt: generate_tokens' prefill (mx.get_peak_memory) for a prompt of
--chars characters of English text on a seed-0 model; prints one JSON object.

    python research/bench/prompt_memory.py [--preset tiny] [--chars 100000]
        [--tokenizer bytes|cl100k_base] [--vocab N] [--out prompt_memory.json]

bytes: one token per byte (the v1-char setting: 100k characters = 100k tokens, vocab 257).
cl100k_base: the default BPE (~4 characters a token); ids are folded into --vocab (default
21075, the compacted Gutenberg vocabulary), as a compacted tokenizer would number them; the
logits of every prompt position are (tokens x vocab) floats, which is what a one-pass
prefill holds at once.
"""

from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import mlx_kssm  # noqa: E402,F401  (BLAS before mlx)
import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402

from _common import emit, machine  # noqa: E402
from mlx_kssm import build_model  # noqa: E402
from mlx_kssm.data.tokenizer import load_tokenizer  # noqa: E402
from mlx_kssm.probe.generate import generate_tokens  # noqa: E402

WORDS = ("the king is dead long live the king and all his men rode out at dawn to meet "
         "their fate upon the field where once their fathers fell").split()


def prompt_text(chars: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    words, size = [], 0
    while size <= chars:
        words.append(WORDS[rng.integers(len(WORDS))])
        size += len(words[-1]) + 1
    return " ".join(words)[:chars]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--chars", type=int, default=100_000)
    ap.add_argument("--tokenizer", default="bytes", choices=["bytes", "cl100k_base"])
    ap.add_argument("--vocab", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    tokenizer = load_tokenizer(args.tokenizer)
    vocab = args.vocab or (tokenizer.vocab_size if args.tokenizer == "bytes" else 21075)
    ids = (tokenizer.encode_array(prompt_text(args.chars)) % vocab).tolist()
    model = build_model(args.preset, vocab_size=vocab, seed=0)
    mx.eval(model.parameters())
    gen = generate_tokens(model, ids, max_tokens=1, temp=0.0)
    emit({"bench": "prompt_memory", "machine": machine(), "preset": args.preset,
          "tokenizer": args.tokenizer, "vocab": vocab, "chars": args.chars,
          "prompt_tokens": len(ids), "peak_memory_gb": round(gen.peak_memory_gb, 3),
          "prompt_tokens_per_s": round(gen.prompt_tps, 1)}, args.out)


if __name__ == "__main__":
    main()
