"""Decoding speed: stateful (per-layer cache, O(1) per token) vs recomputing the whole context
for every new token (the earlier project's way); prints one JSON object.

    python research/bench/generation.py [--presets tiny] [--contexts 16,256,1024,4096]
        [--vocab 21075] [--repeats 3] [--out generation.json]

stateful:  mlx_kssm.probe.generate.generate_tokens (greedy) after a prompt of C tokens;
           tokens/s of the generated tokens only (the prompt's prefill is reported apart).
           Also the same path timed token by token: steady state = 1 / median per-token time,
           and the first token after the prefill apart (it pays for releasing the prefill's
           buffers: tens of ms after a 4096-token prompt, a one-off).
recompute: for each new token, model(last C tokens) without a cache, argmax of the last
           position (a sliding window of exactly C tokens, so the work per token is fixed).
Both uncompiled model calls, random seed-0 weights (speed does not depend on the weights).
Per repeat every context runs once (stateful then recompute, back to back); ratios
(stateful/recompute, and stateful at the longest / shortest context) are taken within a repeat.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import mlx_kssm  # noqa: E402,F401  (BLAS before mlx)
import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402

from _common import emit, machine, seconds, summarize as summary  # noqa: E402
from mlx_kssm import build_model  # noqa: E402
from mlx_kssm.probe.generate import generate_tokens  # noqa: E402


def stateful(model, prompt, n_new):
    g = generate_tokens(model, prompt, max_tokens=n_new, temp=0.0)
    return g.generation_tps, g.prompt_tps


def stateful_per_token(model, prompt, n_new):
    """The same stateful path (prefill with a cache, then one token at a time), timing each
    token: returns (1 / median per-token seconds, seconds of the first token after prefill)."""
    cache = model.make_cache()
    logits = model(mx.array([list(prompt)]), cache=cache)
    tokens = [int(mx.argmax(logits[0, -1]).item())]

    def decode_one():  # .item() waits for the token: the step is finished when timed
        logits = model(mx.array([tokens[-1:]]), cache=cache)
        tokens.append(int(mx.argmax(logits[0, -1]).item()))

    times = [seconds(decode_one) for _ in range(n_new)]
    return 1.0 / statistics.median(times), times[0]


def recompute(model, prompt, n_new):
    ctx = list(prompt)
    C = len(prompt)

    def decode_all():
        for _ in range(n_new):
            logits = model(mx.array([ctx[-C:]]))
            ctx.append(int(mx.argmax(logits[0, -1]).item()))

    return n_new / seconds(decode_all)


def recompute_tokens(C: int) -> int:
    return 16 if C <= 256 else (6 if C <= 1024 else 2)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--presets", default="tiny")
    ap.add_argument("--contexts", default="16,256,1024,4096")
    ap.add_argument("--vocab", type=int, default=21075)
    ap.add_argument("--new-tokens", type=int, default=64, help="stateful tokens per run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-recompute", default="",
                    help="presets for which only stateful decoding is timed (e.g. a transformer "
                         "reference)")
    ap.add_argument("--out")
    args = ap.parse_args()
    contexts = [int(c) for c in args.contexts.split(",")]
    skip_re = set(filter(None, args.no_recompute.split(",")))
    result = {"part": "generation",
              "command": "python research/bench/generation.py " + " ".join(sys.argv[1:]),
              "machine": machine(), "vocab": args.vocab, "batch": 1,
              "stateful_new_tokens": args.new_tokens,
              "flatness": "steady-state tok/s at the longest context / at the shortest, per repeat",
              "recompute_new_tokens": {str(c): recompute_tokens(c) for c in contexts},
              "presets": {}}
    for preset in args.presets.split(","):
        model = build_model(preset, vocab_size=args.vocab, seed=0)
        rng = np.random.default_rng(0)
        prompts = {C: rng.integers(0, args.vocab, C).tolist() for C in contexts}
        stateful(model, prompts[contexts[0]], 4)  # warm-up
        m = {C: {"st": [], "pre": [], "re": [], "ratio": [], "steady": [], "first": []}
             for C in contexts}
        flat = []
        # repeats outside, contexts inside: every context sees the same machine conditions,
        # and the flatness ratio (longest / shortest context) is taken within one repeat
        for _ in range(args.repeats):
            for C in contexts:
                s, p = stateful(model, prompts[C], args.new_tokens)
                m[C]["st"].append(s)
                m[C]["pre"].append(p)
                steady, first = stateful_per_token(model, prompts[C], args.new_tokens)
                m[C]["steady"].append(steady)
                m[C]["first"].append(first * 1e3)
                if preset not in skip_re:
                    r = recompute(model, prompts[C], recompute_tokens(C))
                    m[C]["re"].append(r)
                    m[C]["ratio"].append(s / r)
            flat.append(m[contexts[-1]]["steady"][-1] / m[contexts[0]]["steady"][-1])
        rows = {}
        for C in contexts:
            rows[str(C)] = {"stateful_tokens_per_sec": summary(m[C]["st"]),
                            "steady_state_tokens_per_sec": summary(m[C]["steady"]),
                            "first_token_after_prefill_ms": summary(m[C]["first"]),
                            "prefill_tokens_per_sec": summary(m[C]["pre"])}
            if m[C]["re"]:
                rows[str(C)]["recompute_tokens_per_sec"] = summary(m[C]["re"])
                rows[str(C)]["ratio_stateful_over_recompute"] = summary(m[C]["ratio"])
            print(f"[generation] {preset} C={C}: stateful {statistics.median(m[C]['st']):.1f} tok/s"
                  + (f", recompute {statistics.median(m[C]['re']):.2f} tok/s" if m[C]["re"] else ""),
                  file=sys.stderr, flush=True)
        result["presets"][preset] = {
            "contexts": rows,
            f"stateful_tps_ratio_{contexts[-1]}_over_{contexts[0]}": summary(flat),
        }
    emit(result, args.out)


if __name__ == "__main__":
    main()
