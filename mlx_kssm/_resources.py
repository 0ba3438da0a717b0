"""Bounds checked before anything is allocated: how much memory a model config, a batch of
windows and the windows an evaluation holds would take (`check_fits`), and the largest value
of each count option (`check_count`).

A config.json is user input: `d_model: 1000000000` would otherwise end in a segfault deep
inside MLX, `n_layers: 1000000` in running out of memory, `vocab_size: 10**12` in an
OverflowError. The estimate is arithmetic on the config (Python integers: nothing
overflows) and errs low, so a refusal means the work cannot fit in this machine's memory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

MEMORY_ENV = "MLX_KSSM_MEMORY_BYTES"  # overrides the machine's memory (tests, a smaller share)
FLOAT_BYTES = 4  # weights and activations are float32 while computed
MAX_DIMENSION = 2**31 - 1  # MLX holds an array's every dimension as a 32-bit integer
# what training keeps per weight: the weight, its gradient, AdamW's two moments
TRAINING_WEIGHT_COPIES = 4
# backward keeps every layer's forward activations and builds a gradient for each
TRAINING_ACTIVATION_COPIES = 2
WINDOW_BYTES_PER_TOKEN = 12  # a held window: int32 input and target, and the gathered row

# option -> the largest value accepted: above it, the time (or memory) it implies is never
# what one means (the sizes that matter for memory are checked by check_fits as well)
COUNT_LIMITS = {
    "sample_tokens": 10_000,  # per prompt, after every evaluation of a training run
    "max_tokens": 1_000_000,  # one generation
    "val_batches": 100_000,  # held in memory for the whole run
    "batches": 100_000,  # evaluate's loss windows
    "grad_accum": 4_096,  # micro-batches per optimizer step: signals are seen between steps
}


class ResourceError(ValueError):
    """A size or count that cannot fit, refused before anything is allocated."""


def check_count(name: str, value: int, flag: str | None = None) -> None:
    """ResourceError unless `value` is at most COUNT_LIMITS[name]; the message names the
    option (`flag`, else --name)."""
    limit = COUNT_LIMITS[name]
    if value > limit:
        flag = flag or "--" + name.replace("_", "-")
        raise ResourceError(f"{flag} must be at most {limit:,}, got {value:,}")


def machine_memory() -> int | None:
    """Bytes of memory this machine has ($MLX_KSSM_MEMORY_BYTES when set), or None when the
    system does not say."""
    override = os.environ.get(MEMORY_ENV)
    if override:
        try:
            return int(override)
        except ValueError:
            raise ResourceError(f"{MEMORY_ENV} must be a number of bytes, got "
                                f"{override!r}") from None
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


@dataclass(frozen=True)
class Footprint:
    """What a model config takes: its parameter count, and the float32 activations one token
    position keeps alive in one layer and in the head."""

    parameters: int
    n_layers: int
    layer_activations: int  # floats per token in one layer
    head_activations: int  # floats per token: the embedding and the logits

    def bytes_needed(self, tokens: int = 0, training: bool = False) -> int:
        """Weights, plus `tokens` positions in one pass: a forward pass holds one layer's
        activations at a time, training every layer's and their gradients."""
        weights = self.parameters * FLOAT_BYTES
        if training:
            per_token = (self.head_activations + self.n_layers * self.layer_activations) \
                * TRAINING_ACTIVATION_COPIES
            return weights * TRAINING_WEIGHT_COPIES + tokens * per_token * FLOAT_BYTES
        per_token = self.head_activations + self.layer_activations
        return weights + tokens * per_token * FLOAT_BYTES


def model_footprint(args) -> Footprint:
    """The parameters of the model `args` (a ModelArgs) describes, counted as its modules
    create them, and its activations per token, without building anything."""
    d, f, vocab, layers = args.d_model, args.ffn_hidden, args.vocab_size, args.n_layers
    mlp = 2 * d * f + f + 2 * d  # norm, up, down (with biases)
    mixer, mixer_acts = _mixer(args)
    head = 0 if args.tie_embeddings else vocab * d
    parameters = vocab * d + head + d + layers * (mlp + mixer)
    return Footprint(parameters, layers, 2 * d + f + mixer_acts, vocab + d)


def _mixer(args) -> tuple:
    """(parameters, activations per token) of one layer's token mixer."""
    from .models.kssm import projection_sizes
    from .models.upstream_v3 import UPSTREAM_PROJECTIONS as CORE

    d, G, H, N = args.d_model, args.n_groups, args.harmonics, args.n_oscillators
    if args.model_type == "transformer":
        # qkv, out, norm; attention scores left out (a fused kernel need not hold them)
        return 4 * d * d + d, 5 * d
    if args.model_type == "upstream_v3":
        parameters = d + (d + 1) + (d + 1) * CORE + 2 * N + 1 + (3 * H + 1) * d
        return parameters, 2 * d + CORE + 8 * N + 3 * H
    width = sum(projection_sizes(args))
    readout = (2 * N * d + d + 2 * N) if args.readout == "bolted" else (3 * H * G * d + d)
    parameters = d + (d + 1) * width + 4 * N + 1 + readout
    return parameters, 2 * d + width + 6 * N + 3 * H * G


def check_fits(args, tokens: int = 0, training: bool = False, held_bytes: int = 0,
               what: str = "this model") -> Footprint:
    """ResourceError, naming the config's sizes, when `args` (a ModelArgs) with `tokens`
    positions in one forward pass (batch x seq_len; `training`: with backward and optimizer
    state) and `held_bytes` more held at once cannot fit in this machine's memory, or
    has a dimension MLX cannot hold. Returns the footprint."""
    sizes = {name: getattr(args, name) for name in
             ("vocab_size", "d_model", "n_layers", "ffn_hidden", "n_groups", "osc_per_group")}
    for name, value in sizes.items():
        if value > MAX_DIMENSION:
            raise ResourceError(f"{name} {value:,} is larger than any array dimension MLX "
                                f"holds ({MAX_DIMENSION:,})")
    footprint = model_footprint(args)
    needed = footprint.bytes_needed(tokens, training) + held_bytes
    memory = machine_memory()
    if memory is not None and needed > memory:
        named = ", ".join(f"{name} {value:,}" for name, value in sizes.items())
        raise ResourceError(
            f"{what} needs at least {format_bytes(needed)} ({footprint.parameters:,} "
            f"parameters; {named}{_work(tokens, training, held_bytes)}), more than this "
            f"machine's {format_bytes(memory)} of memory: refused before allocating anything")
    return footprint


def _work(tokens: int, training: bool, held_bytes: int) -> str:
    parts = [f"{tokens:,} tokens per {'training step' if training else 'forward pass'}"
             ] if tokens else []
    if held_bytes:
        parts.append(f"{format_bytes(held_bytes)} of windows held")
    return "".join("; " + p for p in parts)


def format_bytes(count: int) -> str:
    """1.5 GB, 3.2 TB: decimal units, as memory is sold."""
    value = float(count)
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if value < 1000 or unit == "PB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1000
    return f"{value:.1f} PB"
