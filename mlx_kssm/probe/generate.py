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

from .._resources import check_count
from ..models import DEFAULT_ZONES, r_zone
from ..models.force import ForceR

PREFILL_CHUNK = 512  # prompt tokens per forward pass
R_TRACE_KEEP = 4096  # generated tokens whose R per layer is kept; RStats covers them all


@dataclass
class RStats:
    """R per layer summed over every generated token, with its minimum and maximum: what
    the closing lines report, in memory independent of the generation's length."""

    tokens: int = 0
    sums: list = field(default_factory=list)
    mins: list = field(default_factory=list)
    maxs: list = field(default_factory=list)
    mean_sum: float = 0.0  # sum over tokens of the mean over layers

    def add(self, r_layers: list) -> None:
        if not r_layers:
            return
        if not self.tokens:
            self.sums, self.mins, self.maxs = [0.0] * len(r_layers), list(r_layers), \
                list(r_layers)
        self.tokens += 1
        self.mean_sum += _mean(r_layers)
        for i, r in enumerate(r_layers):
            self.sums[i] += r
            self.mins[i], self.maxs[i] = min(self.mins[i], r), max(self.maxs[i], r)

    def mean(self) -> float | None:
        """R averaged over tokens and layers; None when nothing was added (no R)."""
        return self.mean_sum / self.tokens if self.tokens else None

    def layer_means(self) -> list:
        return [total / self.tokens for total in self.sums]


@dataclass
class Generation:
    tokens: list  # generated ids (prompt excluded)
    prompt_tokens: int = 0
    # per generated token: R per layer (a list), for the first R_TRACE_KEEP tokens
    r_trace: list = field(default_factory=list)
    r_stats: RStats = field(default_factory=RStats)  # R over every generated token
    prompt_r: list = field(default_factory=list)  # R per layer after the last prompt token
    u_trace: list = field(default_factory=list)  # v3 only: per generated token, u (layer mean)
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
                    stop_ids=(), on_token=None, prefill_chunk: int = PREFILL_CHUNK,
                    should_stop=None) -> Generation:
    """Generate up to `max_tokens` ids after `prompt_ids`. `on_token(id, r_layers)` streams.
    `force_r`: a ForceR or any form ForceR.of takes, checked once here. `should_stop()`,
    asked before each token, ends the generation early when true (a signal arrived)."""
    if len(prompt_ids) == 0:
        raise ValueError("the prompt is empty: give at least one token")
    check_count("max_tokens", max_tokens)
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
        if should_stop is not None and should_stop():
            break
        key, sub = mx.random.split(key)
        token = sample_next(last, temp, top_p, top_k, sub)
        token_id = int(token.item())
        if token_id in stop_ids:
            break
        logits, r, aux = model(mx.array([[token_id]]), cache=cache, force_r=force_r,
                               return_r=True, return_aux=True)
        r_layers = [] if r is None else np.array(r[0, -1]).tolist()
        if aux.get("u") is not None:
            out.u_trace.append(float(aux["u"].item()))
        out.tokens.append(token_id)
        if len(out.r_trace) < R_TRACE_KEEP:
            out.r_trace.append(r_layers)
        out.r_stats.add(r_layers)
        if on_token is not None:
            on_token(token_id, r_layers)
        last = logits[0, -1]
    gen_time = time.perf_counter() - t1
    out.prompt_tps = len(prompt_ids) / max(prompt_time, 1e-9)
    out.generation_tps = len(out.tokens) / max(gen_time, 1e-9)
    out.peak_memory_gb = mx.get_peak_memory() / 1e9
    return out


class StreamDecoder:
    """Incremental text for streaming: `push(id)` returns the new characters, at a cost
    independent of how many came before. Only the ids not shown yet are decoded, after a
    few shown ones whose text is subtracted again (a tokenizer may render a token by what
    precedes it, as a leading space). Text that ends in the replacement character (a
    multi-byte character cut between tokens) is held back until a later token completes it,
    or MAX_PENDING ids have waited (then it is invalid and shown as it is)."""

    CONTEXT = 4  # shown ids decoded again before the new ones
    MAX_PENDING = 16  # longer than any character's bytes in any tokenizer

    def __init__(self, decode):
        self.decode = decode
        self.context: list = []  # the last CONTEXT ids shown
        self.pending: list = []  # ids not shown yet

    def push(self, token_id: int) -> str:
        self.pending.append(int(token_id))
        prefix = self.decode(self.context)
        text = self.decode(self.context + self.pending)
        if text.endswith("\ufffd") and len(self.pending) < self.MAX_PENDING:
            return ""
        return self._show(prefix, text)

    def flush(self) -> str:
        if not self.pending:
            return ""
        return self._show(self.decode(self.context), self.decode(self.context + self.pending))

    def _show(self, prefix: str, text: str) -> str:
        self.context = (self.context + self.pending)[-self.CONTEXT:]
        self.pending = []
        return text[len(prefix):]


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


def format_r(gen: Generation, force=None, trace: bool = False, zones: str = DEFAULT_ZONES) -> list:
    """What a generation's R did: the whole trace (`trace`, format_r_trace), else one line of
    the forced R and the mean R reached, else nothing. Zones are named by table `zones`."""
    if trace:
        return format_r_trace(gen.r_trace, force, gen.r_stats, zones=zones)
    mean = gen.r_stats.mean()
    if force is None or mean is None:
        return []
    return [f"R forced: {force.describe()}; mean R over generated tokens {mean:.3f} "
            f"({r_zone(mean, zones)})"]


def format_r_trace(r_trace, force=None, stats: RStats | None = None,
                   per_line: int = 16, zones: str = DEFAULT_ZONES) -> list:
    """Compact R trace: the layer-mean R per token, 16 to a line (the tokens `r_trace`
    kept), then the per-layer summary over every token (`stats`; else over `r_trace`), its
    zones named by table `zones`."""
    if not r_trace or not r_trace[0]:
        return ["R: this model has no oscillators (no R to show)"]
    if stats is None:
        stats = RStats()
        for r in r_trace:
            stats.add(r)
    means = [_mean(r) for r in r_trace]
    shown = (f", the first {len(r_trace):,} of {stats.tokens:,} tokens"
             if stats.tokens > len(r_trace) else "")
    lines = [f"R per token (mean over {len(r_trace[0])} layers{shown})"
             + (f", forced: {force.describe()}" if force is not None else "") + ":"]
    for i in range(0, len(means), per_line):
        chunk = means[i:i + per_line]
        lines.append(f"  {i:>4}: " + " ".join(f"{r:.3f}" for r in chunk))
    for layer, mean in enumerate(stats.layer_means()):
        lines.append(f"  layer {layer}: mean {mean:.3f}  min {stats.mins[layer]:.3f}  "
                     f"max {stats.maxs[layer]:.3f}  zone {r_zone(mean, zones)}")
    lines.append(f"  all layers: mean {stats.mean():.3f}  zone {r_zone(stats.mean(), zones)}")
    return lines


def format_speed(gen: Generation) -> list:
    """Prompt and generation speed and peak memory, as mlx-lm prints them."""
    return [f"Prompt: {gen.prompt_tokens} tokens, {gen.prompt_tps:.3f} tokens-per-sec",
            f"Generation: {len(gen.tokens)} tokens, {gen.generation_tps:.3f} tokens-per-sec",
            f"Peak memory: {gen.peak_memory_gb:.3f} GB"]


def token_trace(gen: Generation, tokenizer, zones: str = DEFAULT_ZONES) -> list:
    """Per generated token: its text, R (layer mean; None without R), R per layer, its R zone
    (named by table `zones`) and, for v3, u (layer mean)."""
    rows = []
    for i, token_id in enumerate(gen.tokens):
        r_layers = gen.r_trace[i] if i < len(gen.r_trace) else []
        r = _mean(r_layers) if r_layers else None
        rows.append({"token": tokenizer.decode([token_id]), "id": int(token_id), "r": r,
                     "r_layers": list(r_layers), "zone": None if r is None else r_zone(r, zones),
                     "u": gen.u_trace[i] if i < len(gen.u_trace) else None})
    return rows


def format_token_trace(rows: list) -> list:
    """One line per generated token: its text, R and zone (and u for v3)."""
    if not rows or rows[0]["r"] is None:
        return ["R: this model has no oscillators (no R to show)"]
    lines = []
    for i, row in enumerate(rows):
        u = f"  u {row['u']:.3f}" if row["u"] is not None else ""
        lines.append(f"  {i:>4} {row['token']!r:<10} R {row['r']:.3f}  {row['zone']}{u}")
    return lines
