"""The shared evaluation.

- `evaluate_loss`: validation loss, perplexity and R statistics on fixed batches. Used by the
  trainer at every evaluation and by `evaluate`, so a number printed during training and one
  printed afterwards come from the same code.
- `evaluate(model, data, EvalConfig(...))`: what `mlx-kssm evaluate` reports, as a library
  call: loss / PPL, R statistics, sample-quality checks and (optionally) the causality suite
  (docs/causality.md), returned as an `EvalResult` that serializes to JSON. `mlx-kssm study`
  calls it for every model and seed.

Deterministic: the models have no dropout or other training noise, the windows and sampling
seeds are fixed, reductions run in float32 in a fixed order, and the suite's bootstrap uses a
fixed seed: the same weights give the same numbers.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .._resources import WINDOW_BYTES_PER_TOKEN, check_count, check_fits
from .._types import MAX_SEED, check_fields, check_positive_counts
from ..data.loader import TokenDataset, check_vocab, eval_batches
from ..io import STATE, check_same_tokenizer, load_with_tokenizer
from ..kernels import kernel_of, use_kernel
from ..models import DEFAULT_ZONES, r_zone
from ..probe.causality import (causality_suite, format_causality, r_statistics, spread_windows,
                               windows_overlap)
from ..probe.generate import generate_tokens
from ..probe.quality import sample_quality


def _batch_stats(model, inputs, targets):
    logits, r, aux = model(inputs, return_r=True, return_aux=True)
    ce = nn.losses.cross_entropy(logits.astype(mx.float32), targets, reduction="sum")
    stats = {"ce_sum": ce, "reg": aux["reg"]}
    if r is not None:
        r = r.astype(mx.float32)
        stats.update(r=r, r_sum=mx.sum(r), r_sq_sum=mx.sum(r * r),
                     r_layer_sum=mx.sum(r, axis=(0, 1)))
    if aux.get("u") is not None:
        stats.update(u=aux["u"], u_at_bound=aux["u_at_bound"])
    return stats


def _compiled_stats(model):
    """The forward pass compiled for one evaluation (the scan is a long chain of small ops;
    uncompiled, rebuilding its graph per batch costs more than the arithmetic). Built per
    call, not cached: a compiled graph freezes the model's kernel choice (use_kernel)."""
    return mx.compile(lambda inputs, targets: _batch_stats(model, inputs, targets),
                      inputs=[model.state])


def evaluate_loss(model, batches, keep_r: bool = False) -> dict:
    """Metrics over `batches` (a list of (inputs, targets) int arrays, numpy or mx).

    Returns val_loss (mean cross-entropy per token, nats; the regularizer is NOT included),
    val_ppl, val_reg (mean regularizer), n_tokens, and for oscillator models val_R (mean over
    tokens and layers), val_R_std, val_R_layers (per layer); for v3, val_u and val_u_at_bound.
    With `keep_r`, also "R": R per position and layer, a numpy (N, T, L) array (None for a
    model without R), from the same forward passes.
    """
    if not batches:
        raise ValueError("evaluate_loss needs at least one batch")
    totals: dict = {}
    kept_r = []
    n_tokens = n_r = 0
    batch_stats = _compiled_stats(model)
    for inputs, targets in batches:
        inputs, targets = mx.array(inputs), mx.array(targets)
        stats = batch_stats(inputs, targets)
        mx.eval(stats)
        if "r" in stats:
            r = stats.pop("r")
            if keep_r:
                kept_r.append(np.array(r))
        for k, v in stats.items():
            v = np.array(v, dtype=np.float64)
            totals[k] = totals.get(k, 0.0) + v
        n_tokens += targets.size
        n_r += targets.size * stats["r_layer_sum"].shape[0] if "r_sum" in stats else 0
    n_batches = len(batches)
    val_loss = float(totals["ce_sum"]) / n_tokens
    out = {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 700.0)),
           "val_reg": float(totals["reg"]) / n_batches, "n_tokens": n_tokens,
           "val_R": None, "val_R_std": None, "val_R_layers": None}
    if "r_sum" in totals:
        mean = float(totals["r_sum"]) / n_r
        out["val_R"] = mean
        out["val_R_std"] = math.sqrt(max(float(totals["r_sq_sum"]) / n_r - mean * mean, 0.0))
        out["val_R_layers"] = [float(x) / n_tokens for x in totals["r_layer_sum"]]
    if keep_r:
        out["R"] = np.concatenate(kept_r) if kept_r else None
    if "u" in totals:
        out["val_u"] = float(totals["u"]) / n_batches
        out["val_u_at_bound"] = float(totals["u_at_bound"]) / n_batches
    return out


# ---------------------------------------------------------------- evaluate(): the whole report


@dataclass
class EvalConfig:
    """What `evaluate` measures, on which windows; saved with the numbers."""

    split: str = "val"
    batches: int = 20  # loss windows: batches x batch_size, fixed by `seed`
    batch_size: int = 8
    seq_len: int = 128
    seed: int = 1234  # the loss windows and the sample prompts / sampling
    samples: int = 3  # generations checked for mode collapse
    sample_tokens: int = 60
    causality: bool = False
    sequences: int = 32  # held-out windows of the causality suite, spread over the split
    values: tuple = (0.2, 0.8)  # forced R values the intervention test compares
    random_init: bool = True  # test 2 beside a random-init model of the same architecture
    random_init_seed: int | None = None  # None: the run's training seed if recorded, else 0
    kernel: str | None = None  # the scan: auto|metal|cuda|reference; None: the model's own

    def validate(self) -> "EvalConfig":
        self._check_types()
        check_positive_counts(self, ("batches", "batch_size", "sequences", "sample_tokens"))
        if self.seq_len < 2:
            raise ValueError(f"seq-len must be >= 2, got {self.seq_len}")
        if self.samples < 0:
            raise ValueError(f"samples must be >= 0, got {self.samples}")
        if self.causality and self.sequences < 3:
            raise ValueError(f"the causality suite needs >= 3 sequences, got {self.sequences}")
        check_count("batches", self.batches)
        check_count("sample_tokens", self.sample_tokens)
        return self

    def _check_types(self) -> None:
        """Each field holds its type (bool is no count); a seed is what NumPy and MLX take."""
        check_fields(self)
        for name in ("seed", "random_init_seed"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= MAX_SEED:
                raise ValueError(f"{name} must lie in [0, {MAX_SEED}], got {value}")

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "values": list(self.values)}


@dataclass
class EvalResult:
    """Everything `evaluate` measured; `to_dict()` is what `evaluate --json` writes."""

    model: str  # the folder evaluated, or a label for an in-memory model
    data: str
    config: dict  # the EvalConfig used
    val_loss: float
    val_ppl: float
    val_reg: float
    n_tokens: int
    val_R: float | None = None
    val_R_std: float | None = None
    val_R_layers: list | None = None
    val_u: float | None = None
    val_u_at_bound: float | None = None
    R: dict | None = None  # r_statistics over the loss windows; None without oscillators
    samples: list = field(default_factory=list)
    causality: dict | None = None
    notes: list = field(default_factory=list)  # warnings worth printing (e.g. overlap)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=_json_default) + "\n"


def _json_default(x):
    return x.tolist() if hasattr(x, "tolist") else str(x)


def evaluate(model, data, config: EvalConfig | None = None, tokenizer=None, label=None,
             progress=None) -> EvalResult:
    """Evaluate `model` on the prepared data folder `data` (see the module docstring).

    `model` is a model folder (exported, run or checkpoint folder: its tokenizer must match
    the data's) or a model object (then `tokenizer` defaults to the data's). `progress(text)`
    hears what is being computed. Raises ValueError / DataError / ModelLoadError on bad input.
    """
    if config is not None and not isinstance(config, EvalConfig):
        raise ValueError(f"config must be an EvalConfig, got {type(config).__name__}")
    config = (config or EvalConfig()).validate()
    dataset = TokenDataset(data, config.split)
    model, tokenizer, name, training_seed = _resolve_model(model, dataset, tokenizer, label)
    if config.kernel is not None:
        use_kernel(model, config.kernel)
    config = dataclasses.replace(config, kernel=kernel_of(model))  # recorded as it ran
    check_vocab(dataset, model.args.vocab_size)
    say = progress or (lambda text: None)
    _check_fits(model, config)
    say(f"{name}: loss on {config.batches} x {config.batch_size} windows of {config.seq_len}")
    batches = eval_batches(dataset, config.batches, config.batch_size, config.seq_len,
                           seed=config.seed)
    metrics = evaluate_loss(model, batches, keep_r=True)
    r = metrics.pop("R")
    result = EvalResult(model=name, data=str(data), config=config.to_dict(), **metrics)
    if r is not None:
        result.R = r_statistics(r)
    result.samples = _sample_checks(model, tokenizer, batches, config)
    if config.causality:
        say(f"{name}: causality suite on {config.sequences} windows")
        result.causality = _causality(model, dataset, config, training_seed, result.notes)
    return result


def _check_fits(model, config: EvalConfig) -> None:
    """--batch-size x --seq-len (one forward pass) and --batches (the windows and their R,
    held until the end) must fit in memory: checked before either is allocated."""
    held_per_token = WINDOW_BYTES_PER_TOKEN + 4 * model.args.n_layers  # ids, R per layer
    held = config.batches * config.batch_size * config.seq_len * held_per_token
    check_fits(model.args, tokens=config.batch_size * config.seq_len, held_bytes=held,
               what="this evaluation")


def _resolve_model(model, dataset, tokenizer, label):
    """(model, tokenizer, name, training seed or None) for a folder or a model object."""
    if isinstance(model, (str, Path)):
        folder, model, tokenizer = load_with_tokenizer(model)
        check_same_tokenizer(folder, dataset)
        return model, tokenizer, label or str(folder), training_seed(folder)
    return model, tokenizer or dataset.tokenizer(), label or "model", None


def training_seed(folder) -> int | None:
    """The seed a run folder's checkpoint (or best/) was trained with, if it records one."""
    try:
        state = json.loads((Path(folder) / STATE).read_text())
        return int(state["config"]["seed"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _sample_checks(model, tokenizer, batches, config: EvalConfig) -> list:
    """Seeded generations from the first windows' first 8 tokens, checked for collapse."""
    out = []
    for i in range(min(config.samples, len(batches[0][0]))):
        prompt = batches[0][0][i][:8].tolist()
        gen = generate_tokens(model, prompt, max_tokens=config.sample_tokens, temp=0.8,
                              seed=config.seed + i, stop_ids=(tokenizer.sep_id,))
        text = tokenizer.decode(gen.tokens)
        out.append({"prompt": tokenizer.decode(prompt), "text": text,
                    **sample_quality(gen.tokens, text)})
    return out


def _causality(model, dataset, config: EvalConfig, training_seed, notes) -> dict:
    if windows_overlap(len(dataset), config.sequences, config.seq_len):
        notes.append(f"the {dataset.split} split holds {len(dataset)} tokens, fewer than "
                     f"{config.sequences} x {config.seq_len}: causality windows overlap")
    windows = spread_windows(dataset.tokens, config.sequences, config.seq_len)
    seed = None
    if config.random_init:
        seed = config.random_init_seed
        seed = seed if seed is not None else (training_seed if training_seed is not None else 0)
    return causality_suite(model, windows, values=config.values, random_init_seed=seed)


def format_evaluation(result: EvalResult, zones: str | None = None) -> list:
    """Terminal lines for an EvalResult: loss, R (zones named by table `zones`, default the
    default table), samples, the causality suite."""
    lines = [f"{result.model}: {result.config['split']} loss {result.val_loss:.4f}  "
             f"PPL {result.val_ppl:.2f}  ({result.n_tokens:,} tokens)"]
    rs, zones = result.R, zones or DEFAULT_ZONES
    if rs is None:
        lines.append("R: not applicable (the model has no oscillators)")
    else:
        lines.append(f"R: mean {rs['mean']:.4f}  std {rs['std']:.4f}  range [{rs['min']:.3f}, "
                     f"{rs['max']:.3f}]  zone {r_zone(rs['mean'], zones)}")
        for i, (m, s) in enumerate(zip(rs["per_layer_mean"], rs["per_layer_std"])):
            lines.append(f"  layer {i}: mean {m:.4f}  std {s:.4f}  {r_zone(m, zones)}")
        occupancy = rs.get("zone_occupancy_by_table", {}).get(zones, rs["zone_occupancy"])
        occupied = [f"{k} {100 * v:.1f}%" for k, v in occupancy.items() if v > 0]
        lines.append("  zone occupancy: " + ", ".join(occupied))
    if result.val_u is not None:
        lines.append(f"u: mean {result.val_u:.4f}  at bound {100 * result.val_u_at_bound:.1f}%")
    for i, s in enumerate(result.samples):
        flag = f"  [COLLAPSED: {s['reason']}]" if s["collapsed"] else ""
        lines.append(f"sample {i + 1}: {s['prompt']!r} -> {s['text'][:80]!r}  "
                     f"distinct-2 {s['distinct_2']:.2f}{flag}")
    if result.samples:
        n_bad = sum(s["collapsed"] for s in result.samples)
        lines.append(f"sample quality: {n_bad}/{len(result.samples)} collapsed")
    if result.causality is not None:
        lines += format_causality(result.causality)
    return lines
