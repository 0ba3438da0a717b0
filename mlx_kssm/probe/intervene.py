"""The R-intervention sweep: what forcing R to each value does to the output.

For every prompt and forced value (and the free run): the next-token distribution after the
prompt (KL to the free run's, entropy, top token), the R achieved, and a seeded generation
(distinct-1/2, repetition, whether the text differs from the free run's). Every generation
of one prompt uses the same seed, so a difference in text is caused by the forcing alone.

`intervention_sweep(model, prompt ids, values)` is the measurement; `intervene(folder, ...)`
what `mlx-kssm intervene` runs (prompts from text, held-out windows or defaults);
`format_intervention` what it prints.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from ..models.force import ForceR
from .causality import POSITION_CHUNK, chunked_log_probs, entropy, kl_divergence
from .generate import generate_tokens
from .quality import sample_quality

DEFAULT_VALUES = (0.1, 0.3, 0.5, 0.7, 0.9)
DEFAULT_PROMPTS = ("It was the best of times", "To be, or not to be", "The ")
HELDOUT_SEED_OFFSET = 1234  # held-out prompt windows: drawn apart from the sampling seed


def repetition_rate(tokens, n: int = 3) -> float:
    """Share of n-grams that already occurred earlier in the same sample (0 = none repeat)."""
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    if not grams:
        return 0.0
    seen, repeats = set(), 0
    for g in grams:
        repeats += g in seen
        seen.add(g)
    return repeats / len(grams)


def _next_token(model, prompt_ids, force_r, chunk: int | None = None):
    """(log-probabilities after the prompt, R per layer at its last token, mean R over its
    positions and layers). The prompt runs in chunks through the model's cache, so a long
    one costs memory of a chunk, not of its length."""
    r_sum, r_count, r = 0.0, 0, None
    chunk = chunk or POSITION_CHUNK
    for logp, r in chunked_log_probs(model, [list(prompt_ids)], force_r, chunk):
        last = logp[0, -1]
        if r is not None:
            r_sum += float(mx.sum(r.astype(mx.float32)).item())
            r_count += r.size
        mx.eval(last)
    r_last = None if r is None else np.array(r[0, -1].astype(mx.float32)).tolist()
    r_mean = None if r is None else r_sum / r_count
    return last, r_last, r_mean


def intervention_sweep(model, prompts, values=DEFAULT_VALUES, max_tokens: int = 40,
                       seed: int = 0, temp: float = 0.8, top_p: float = 1.0, top_k: int = 0,
                       decode=None) -> dict:
    """Sweep forced R over `values` for each prompt (a list of token-id lists).

    Returns {"values", "prompts": [{"prompt", "runs": [...]}], "summary": [...]} where each
    run (force_r None = the free run) holds kl_to_free, entropy, top_token, r_achieved (per
    layer at the last prompt token), r_mean (over prompt positions and layers), tokens, text,
    distinct_1, distinct_2, repetition, collapsed, changed (text differs from the free run).
    """
    forces = [ForceR.for_model(v, model) for v in values]  # refuses a model without R
    values = [force.layers[0] for force in forces]
    if not prompts:
        raise ValueError("no prompts to sweep")
    decode = decode or (lambda ids: " ".join(str(i) for i in ids))
    out = {"values": values, "max_tokens": max_tokens, "seed": seed, "temp": temp,
           "top_p": top_p, "top_k": top_k, "prompts": []}
    for prompt in prompts:
        runs, free_tokens, logp_free = [], None, None
        # the free run first: the others are compared with it
        for v, force in zip([None] + values, [None] + forces):
            logp, r_last, r_mean = _next_token(model, prompt, force)
            logp_free = logp if v is None else logp_free
            kl = float(kl_divergence(logp, logp_free).item())
            ent = float(entropy(logp).item())
            gen = generate_tokens(model, prompt, max_tokens=max_tokens, temp=temp, top_p=top_p,
                                  top_k=top_k, seed=seed, force_r=force,
                                  prefill_chunk=POSITION_CHUNK)
            text = decode(gen.tokens)
            quality = sample_quality(gen.tokens, text)
            if v is None:
                free_tokens = gen.tokens
            runs.append({"force_r": v, "kl_to_free": max(0.0, kl), "entropy": ent,
                         "top_token": int(mx.argmax(logp).item()), "r_achieved": r_last,
                         "r_mean": r_mean,
                         "r_generation": gen.r_stats.mean(),  # every token's
                         "tokens": gen.tokens, "text": text,
                         "distinct_1": quality["distinct_1"], "distinct_2": quality["distinct_2"],
                         "repetition": repetition_rate(gen.tokens),
                         "collapsed": quality["collapsed"],
                         "changed": gen.tokens != free_tokens})
        out["prompts"].append({"prompt": list(map(int, prompt)), "prompt_text": decode(prompt),
                               "runs": runs})
    out["summary"] = _summarize(out["prompts"], [None] + values)
    return out


def _summarize(prompts, values) -> list:
    rows = []
    for i, v in enumerate(values):
        runs = [p["runs"][i] for p in prompts]

        def mean(key):
            xs = [r[key] for r in runs if r[key] is not None]
            return float(np.mean(xs)) if xs else None

        rows.append({"force_r": v, "r_mean": mean("r_mean"), "r_generation": mean("r_generation"),
                     "kl_to_free": mean("kl_to_free"), "entropy": mean("entropy"),
                     "distinct_1": mean("distinct_1"), "distinct_2": mean("distinct_2"),
                     "repetition": mean("repetition"),
                     "changed": float(np.mean([r["changed"] for r in runs])),
                     "collapsed": float(np.mean([r["collapsed"] for r in runs]))})
    return rows


def _fmt(x, spec):
    return "-" if x is None else format(x, spec)


def format_sweep(res: dict) -> list:
    """The terminal table: one row per forced value (averaged over prompts)."""
    lines = [f"{'force R':>8} {'R achieved':>10} {'R in gen':>8} {'KL(forced||free)':>16} "
             f"{'entropy':>8} {'distinct-2':>10} {'repetition':>10} {'text changed':>12}"]
    for row in res["summary"]:
        label = "free" if row["force_r"] is None else f"{row['force_r']:.2f}"
        lines.append(f"{label:>8} {_fmt(row['r_mean'], '.3f'):>10} "
                     f"{_fmt(row['r_generation'], '.3f'):>8} {_fmt(row['kl_to_free'], '.4f'):>16} "
                     f"{_fmt(row['entropy'], '.3f'):>8} {_fmt(row['distinct_2'], '.3f'):>10} "
                     f"{_fmt(row['repetition'], '.3f'):>10} {100 * row['changed']:>11.0f}%")
    return lines


def intervene(model_dir, prompts=(), data=None, split: str = "val", n_prompts: int = 4,
              prompt_len: int = 32, values=DEFAULT_VALUES, kernel: str = "auto",
              seed: int = 0, **sweep_options) -> dict:
    """`intervention_sweep` for the model in `model_dir` (any folder io.resolve_model_dir
    accepts): over the text `prompts`, plus `n_prompts` held-out windows of `prompt_len`
    tokens from the prepared folder `data` (its tokenizer must be the model's), or
    DEFAULT_PROMPTS when neither is given. The result also names the model folder.
    `sweep_options`: intervention_sweep's max_tokens, temp, top_p, top_k."""
    from ..io import load_with_tokenizer
    from ..kernels import use_kernel

    folder, model, tokenizer = load_with_tokenizer(model_dir)
    use_kernel(model, kernel)
    from .generate import check_prompt_text
    prompt_ids = [tokenizer.encode(check_prompt_text(p)) for p in prompts]
    if data is not None:
        prompt_ids += heldout_prompts(data, split, model, folder, n_prompts, prompt_len,
                                      seed + HELDOUT_SEED_OFFSET)
    if not prompt_ids:
        prompt_ids = [tokenizer.encode(p) for p in DEFAULT_PROMPTS]
    if any(len(p) == 0 for p in prompt_ids):
        raise ValueError("a prompt encodes to no tokens")
    res = intervention_sweep(model, prompt_ids, values, seed=seed, decode=tokenizer.decode,
                             **sweep_options)
    res["model"] = str(folder)
    return res


def heldout_prompts(data, split: str, model, folder, n: int, prompt_len: int,
                    seed: int) -> list:
    """`n` windows of `prompt_len` tokens from the `split` of the prepared folder `data`, as
    token-id lists, checked against the model's vocabulary and tokenizer (model `folder`)."""
    from ..data.loader import DataError, TokenDataset, check_vocab, eval_batches
    from ..io import check_same_tokenizer
    dataset = TokenDataset(data, split)
    if n * prompt_len > len(dataset):  # before n x prompt_len ids are allocated (GiBs)
        raise DataError(f"--n-prompts {n} x --prompt-len {prompt_len} = {n * prompt_len:,} "
                        f"tokens, more than the {split} split of {data} holds "
                        f"({len(dataset):,}): lower either")
    check_vocab(dataset, model.args.vocab_size)
    check_same_tokenizer(folder, dataset)
    (inputs, _), = eval_batches(dataset, 1, n, prompt_len, seed=seed)
    return [row.tolist() for row in inputs]


def format_intervention(res: dict) -> list:
    """What `mlx-kssm intervene` prints: a header, the table (format_sweep), and the first
    prompt's generations, free and forced."""
    lines = [f"R intervention sweep: {len(res['prompts'])} prompts, {res['max_tokens']} tokens "
             f"each, seed {res['seed']} ({res.get('model', 'model')})", *format_sweep(res)]
    first = res["prompts"][0]
    lines.append(f"\nPrompt 1: {first['prompt_text'][-60:]!r}")
    for run in first["runs"]:
        label = "free" if run["force_r"] is None else f"R={run['force_r']:.2f}"
        flag = "  [collapsed]" if run["collapsed"] else ""
        lines.append(f"  {label:>6}: {run['text'][:70]!r}{flag}")
    return lines
