"""Stateful sampling: the prompt runs through the model in chunks carrying the per-layer cache
(so its peak memory does not grow with its length), then one token at a time with that cache
(O(1) work per token for K-SSM). Same prompt + seed = same tokens.

`generate_tokens` works on ids; `generate_text` on text, streaming the decoded continuation
(what `mlx-kssm generate` prints); `format_r` and `format_speed` are its closing lines.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import mlx.core as mx
import numpy as np

from ..models import r_zone
from ..models.force import ForceR

PREFILL_CHUNK = 512  # prompt tokens per forward pass


@dataclass
class Generation:
    tokens: list  # generated ids (prompt excluded)
    prompt_tokens: int = 0
    r_trace: list = field(default_factory=list)  # per generated token: R per layer (list)
    prompt_r: list = field(default_factory=list)  # R per layer after the last prompt token
    prompt_tps: float = 0.0
    generation_tps: float = 0.0
    peak_memory_gb: float = 0.0


def sample_next(logits, temp: float, top_p: float, top_k: int, key):
    """One token id from logits (V,) with temperature, top-k and nucleus filtering."""
    if temp <= 0:
        return mx.argmax(logits, axis=-1)
    logits = logits.astype(mx.float32) / temp
    if top_k and top_k < logits.shape[-1]:
        kth = mx.sort(logits)[-top_k]
        logits = mx.where(logits < kth, -mx.inf, logits)
    if 0 < top_p < 1:
        ordered = -mx.sort(-logits)  # descending
        probs = mx.softmax(ordered)
        keep = (mx.cumsum(probs) - probs) < top_p  # always keeps the top token
        threshold = mx.min(mx.where(keep, ordered, mx.inf))
        logits = mx.where(logits < threshold, -mx.inf, logits)
    return mx.random.categorical(logits, key=key)


def prefill(model, prompt_ids, cache, force_r=None, chunk: int = PREFILL_CHUNK):
    """Run the prompt through `model` `chunk` tokens at a time, carrying `cache`. Returns
    (logits of the last position (V,), R per layer after it or None). One pass over a long
    prompt holds activations and logits for every position at once (a 100k-token prompt:
    gigabytes); chunks bound that by the chunk, and each chunk's cache is evaluated before the
    next so the lazy graph never spans the prompt."""
    ids = mx.array([list(prompt_ids)])
    for start in range(0, ids.shape[1], chunk):
        logits, r = model(ids[:, start:start + chunk], cache=cache, force_r=force_r,
                          return_r=True)
        last, r_last = logits[0, -1], None if r is None else r[0, -1]
        mx.eval(last, r_last, [getattr(layer, "__dict__", layer) for layer in cache])
    return last, r_last


def generate_tokens(model, prompt_ids, max_tokens: int = 100, temp: float = 0.8,
                    top_p: float = 1.0, top_k: int = 0, seed: int = 0, force_r=None,
                    stop_ids=(), on_token=None, prefill_chunk: int = PREFILL_CHUNK) -> Generation:
    """Generate up to `max_tokens` ids after `prompt_ids`. `on_token(id, r_layers)` streams.
    `force_r`: a ForceR or any form ForceR.of takes, checked once here."""
    if len(prompt_ids) == 0:
        raise ValueError("the prompt is empty: give at least one token")
    force_r = ForceR.for_model(force_r, model)
    key = mx.random.key(seed)
    cache = model.make_cache()
    mx.reset_peak_memory()
    t0 = time.perf_counter()
    last, r_last = prefill(model, prompt_ids, cache, force_r, prefill_chunk)
    prompt_time = time.perf_counter() - t0
    out = Generation(tokens=[], prompt_tokens=len(prompt_ids),
                     prompt_r=[] if r_last is None else np.array(r_last).tolist())
    t1 = time.perf_counter()
    for _ in range(max_tokens):
        key, sub = mx.random.split(key)
        token = sample_next(last, temp, top_p, top_k, sub)
        token_id = int(token.item())
        if token_id in stop_ids:
            break
        logits, r = model(mx.array([[token_id]]), cache=cache, force_r=force_r, return_r=True)
        r_layers = [] if r is None else np.array(r[0, -1]).tolist()
        out.tokens.append(token_id)
        out.r_trace.append(r_layers)
        if on_token is not None:
            on_token(token_id, r_layers)
        last = logits[0, -1]
    gen_time = time.perf_counter() - t1
    out.prompt_tps = len(prompt_ids) / max(prompt_time, 1e-9)
    out.generation_tps = len(out.tokens) / max(gen_time, 1e-9)
    out.peak_memory_gb = mx.get_peak_memory() / 1e9
    return out


class StreamDecoder:
    """Incremental text for streaming: `push(id)` returns the new characters. Text that ends
    in the replacement character (a multi-byte character cut between tokens) is held back
    until the next token completes it."""

    def __init__(self, decode):
        self.decode = decode
        self.ids: list = []
        self.shown = 0

    def push(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        text = self.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        new, self.shown = text[self.shown:], len(text)
        return new

    def flush(self) -> str:
        text = self.decode(self.ids)
        new, self.shown = text[self.shown:], len(text)
        return new


def check_prompt_text(prompt: str, option: str = "--prompt") -> str:
    """`prompt` if it is text; ValueError naming `option` where the command line held bytes
    that are not UTF-8 (Python keeps them as lone surrogates, which no tokenizer encodes)."""
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = ord(prompt[e.start])
        byte = f"byte 0x{bad - 0xDC00:02x}" if 0xDC80 <= bad <= 0xDCFF else f"U+{bad:04X}"
        raise ValueError(f"{option} is not valid UTF-8 text ({byte} at character {e.start}): "
                         "give the prompt as UTF-8") from None
    return prompt


def encode_prompt(tokenizer, prompt: str) -> list:
    """The prompt's ids; ValueError when it is not UTF-8 or encodes to none."""
    ids = tokenizer.encode(check_prompt_text(prompt))
    if not ids:
        raise ValueError("the prompt encodes to no tokens: give some text with --prompt")
    return ids


def generate_text(model, tokenizer, prompt_ids, on_text=None, **options) -> Generation:
    """`generate_tokens` after `prompt_ids`, stopping at the tokenizer's document separator;
    `on_text(text)` hears the decoded continuation as it grows (whole characters only).
    `options`: generate_tokens' (max_tokens, temp, top_p, top_k, seed, force_r)."""
    stream = StreamDecoder(tokenizer.decode)
    emit = on_text or (lambda text: None)
    gen = generate_tokens(model, prompt_ids, stop_ids=(tokenizer.sep_id,),
                          on_token=lambda token_id, r_layers: emit(stream.push(token_id)),
                          **options)
    emit(stream.flush())
    return gen


def _mean(xs) -> float:
    return sum(xs) / len(xs)


def format_r(gen: Generation, force=None, trace: bool = False) -> list:
    """What a generation's R did: the whole trace (`trace`, format_r_trace), else one line of
    the forced R and the mean R reached, else nothing."""
    if trace:
        return format_r_trace(gen.r_trace, force)
    if force is None or not gen.r_trace or not gen.r_trace[0]:
        return []
    mean = _mean([_mean(r) for r in gen.r_trace])
    return [f"R forced: {force.describe()}; mean R over generated tokens {mean:.3f} "
            f"({r_zone(mean)})"]


def format_r_trace(r_trace, force=None, per_line: int = 16) -> list:
    """Compact R trace: the layer-mean R per token, 16 to a line, then per-layer summary."""
    if not r_trace or not r_trace[0]:
        return ["R: this model has no oscillators (no R to show)"]
    means = [_mean(r) for r in r_trace]
    lines = [f"R per token (mean over {len(r_trace[0])} layers)"
             + (f", forced: {force.describe()}" if force is not None else "") + ":"]
    for i in range(0, len(means), per_line):
        chunk = means[i:i + per_line]
        lines.append(f"  {i:>4}: " + " ".join(f"{r:.3f}" for r in chunk))
    for layer in range(len(r_trace[0])):
        col = [r[layer] for r in r_trace]
        lines.append(f"  layer {layer}: mean {_mean(col):.3f}  min {min(col):.3f}  "
                     f"max {max(col):.3f}  zone {r_zone(_mean(col))}")
    lines.append(f"  all layers: mean {_mean(means):.3f}  zone {r_zone(_mean(means))}")
    return lines


def format_speed(gen: Generation) -> list:
    """Prompt and generation speed and peak memory, as mlx-lm prints them."""
    return [f"Prompt: {gen.prompt_tokens} tokens, {gen.prompt_tps:.3f} tokens-per-sec",
            f"Generation: {len(gen.tokens)} tokens, {gen.generation_tps:.3f} tokens-per-sec",
            f"Peak memory: {gen.peak_memory_gb:.3f} GB"]
