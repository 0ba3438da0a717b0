"""`mlx-kssm validate`: the final validation suite of one model in one call
(docs/causality.md, "Validation").

Five parts, each with a verdict (PASS / FAIL / INCONCLUSIVE) or None where it does not apply
or is reported without a verdict:

    causality    tests 1-3 and 2b of the causality suite (probe/causality.py), through
                 `evaluation.evaluate`, as `evaluate --causality` runs them
    robustness   weight-noise sweep (judged) and temperature sweep (reported), probe/robustness.py
    behaviour    the behavioural probes (probe/behaviour.py): judged against --baseline only
    clamp_sweep  v3 only: the loss with u's floor moved at inference (judged: does u act?)
    inference    generations from the prompts with their per-token R (and u) traces (reported)

overall: PASS when every judged part PASSes, FAIL when any FAILs, INCONCLUSIVE otherwise
(`stats.combine_verdicts`); `exit_status` maps it to 0 / 1 / 3.

`validate(model_dir, data_dir, ValidateConfig(...), baseline=..., prompts=[...])` returns one
JSON-able dict; `format_validation` prints it; probe/validate_report.py writes report.html.
Every input (folders, tokenizers, prompts) is checked before the first part runs.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._types import MAX_SEED, check_fields, check_positive_counts
from ..models.bistable import U_HI
from . import stats
from .robustness import (JUDGED_SCALE, MAX_RISE, NOISE_SCALES, TEMPERATURES, U_FLOORS,
                         clamp_sweep, heldout_windows, noise_sweep, temperature_sweep)

PARTS = ("causality", "robustness", "behaviour", "clamp_sweep", "inference")
# the prompts of the seed guides' final-validation checklist: used without --prompts
DEFAULT_PROMPTS = ("The nature of consciousness", "I think therefore", "To be or not")
EXIT_STATUS = {stats.PASS: 0, stats.FAIL: 1, stats.INCONCLUSIVE: 3}


@dataclass
class ValidateConfig:
    """What `validate` measures; saved with the numbers."""

    split: str = "val"
    seq_len: int = 128
    sequences: int = 32  # held-out windows: the units of every CI
    noise_scales: tuple = NOISE_SCALES
    judged_scale: float = JUDGED_SCALE
    max_rise: float = MAX_RISE
    temperatures: tuple = TEMPERATURES
    temperature_samples: int = 4
    u_floors: tuple = U_FLOORS
    probe_samples: int = 8  # sampling seeds per behavioural prompt
    probe_tokens: int = 24
    max_tokens: int = 60  # per inference-suite prompt
    temp: float = 0.8  # sampling temperature of the probes and the inference suite
    seed: int = 0
    random_init: bool = True  # causality test 2b
    kernel: str | None = None

    def validate(self) -> "ValidateConfig":
        check_fields(self)
        check_positive_counts(self, ("sequences", "probe_samples", "probe_tokens", "max_tokens",
                                     "temperature_samples"))
        if self.sequences < 3:
            raise ValueError(f"validate needs >= 3 sequences, got {self.sequences}")
        if self.seq_len < 2:
            raise ValueError(f"seq-len must be >= 2, got {self.seq_len}")
        if not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must lie in [0, {MAX_SEED}], got {self.seed}")
        if any(not s >= 0 for s in self.noise_scales):
            raise ValueError(f"noise scales must be >= 0, got {list(self.noise_scales)}")
        if any(not t > 0 for t in self.temperatures) or not self.temp >= 0:
            raise ValueError("temperatures must be > 0")
        if self.judged_scale not in {0.0, *self.noise_scales}:
            raise ValueError(f"the judged noise scale {self.judged_scale:g} is not among the "
                             f"noise scales {list(self.noise_scales)}")
        if any(not 0 < f < U_HI for f in self.u_floors):
            raise ValueError(f"u floors must lie in (0, {U_HI:g}), got {list(self.u_floors)}")
        return self

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}


def read_prompts(path) -> list:
    """The non-blank lines of a prompts file, one prompt each; ValueError when the file is
    missing, unreadable or holds none."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--prompts {path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"--prompts {path}: can't read it as UTF-8 text ({e})") from None
    prompts = [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"--prompts {path} is empty: give one prompt per line")
    return prompts


def exit_status(verdict) -> int:
    """0 PASS (or nothing judged), 1 FAIL, 3 INCONCLUSIVE."""
    return EXIT_STATUS.get(verdict, 0)


def overall_verdict(parts: dict):
    judged = [p["verdict"] for p in parts.values() if p.get("verdict") is not None]
    return stats.combine_verdicts(judged) if judged else None


# ---------------------------------------------------------------- loading


def _load(folder, dataset):
    """(model, tokenizer, folder) of a model folder that matches the data's tokenizer."""
    from ..data.loader import check_vocab
    from ..io import check_same_tokenizer, load_with_tokenizer

    folder, model, tokenizer = load_with_tokenizer(folder)
    check_same_tokenizer(folder, dataset)  # its message names the folder
    check_vocab(dataset, model.args.vocab_size)
    return model, tokenizer, folder


# ---------------------------------------------------------------- the parts


def _causality(model_dir, data_dir, config: ValidateConfig) -> tuple:
    """(the causality part, the evaluation's loss and R figures)."""
    from ..evaluation import EvalConfig, evaluate

    eval_config = EvalConfig(split=config.split, batches=4, batch_size=8, seq_len=config.seq_len,
                             seed=config.seed, samples=0, causality=True,
                             sequences=config.sequences, random_init=config.random_init,
                             kernel=config.kernel)
    result = evaluate(model_dir, data_dir, eval_config).to_dict()
    suite = result.pop("causality")
    part = {"verdict": suite["verdict"], "applicable": suite.get("applicable", True), **suite}
    return part, result


def _robustness(model, tokenizer, windows, config: ValidateConfig) -> dict:
    inputs, targets = windows
    noise = noise_sweep(model, inputs, targets, config.noise_scales, config.judged_scale,
                        config.max_rise, seed=config.seed)
    temps = temperature_sweep(model, tokenizer, inputs, targets, config.temperatures,
                              samples=config.temperature_samples, seed=config.seed)
    return {"verdict": noise["verdict"], "noise": noise, "temperature": temps}


def _behaviour(model, tokenizer, config: ValidateConfig) -> dict:
    from .behaviour import behaviour_probes
    return behaviour_probes(model, tokenizer, samples=config.probe_samples,
                            max_tokens=config.probe_tokens, temp=config.temp, seed=config.seed)


def inference_suite(model, tokenizer, prompts, max_tokens: int = 60, temp: float = 0.8,
                    seed: int = 0) -> dict:
    """Each prompt's seeded generation with its per-token R (and u) trace and R zones."""
    from ..models import r_zone
    from .generate import encode_prompt, generate_text, token_trace
    from .quality import sample_quality

    rows = []
    for prompt in prompts:
        gen = generate_text(model, tokenizer, encode_prompt(tokenizer, prompt),
                            max_tokens=max_tokens, temp=temp, seed=seed)
        trace = token_trace(gen, tokenizer)
        text = tokenizer.decode(gen.tokens)
        rs = [t["r"] for t in trace if t["r"] is not None]
        us = [t["u"] for t in trace if t["u"] is not None]
        r_mean = float(np.mean(rs)) if rs else None
        rows.append({"prompt": prompt, "text": text, "trace": trace, "r_mean": r_mean,
                     "zone": None if r_mean is None else r_zone(r_mean),
                     "u_mean": float(np.mean(us)) if us else None,
                     "quality": sample_quality(gen.tokens, text)})
    return {"verdict": None, "prompts": rows, "max_tokens": max_tokens, "temp": temp,
            "seed": seed}


# ---------------------------------------------------------------- the suite


def validate(model_dir, data_dir, config: ValidateConfig | None = None, baseline=None,
             prompts=None, progress=None) -> dict:
    """Run the five parts (module docstring) on the model folder `model_dir` with the prepared
    data folder `data_dir`; `baseline`: a model folder measured beside it (robustness and
    behaviour); `prompts`: the inference suite's (default DEFAULT_PROMPTS). `progress(text)`
    hears each part as it starts. Raises ValueError / DataError / ModelLoadError on bad input,
    before any part runs."""
    run = _inputs(model_dir, data_dir, config, baseline, prompts)
    result = {"model": str(run.folder), "data": str(data_dir),
              "baseline": str(run.base[2]) if run.base else None,
              "config": run.config.to_dict(), "parts": {}, "baseline_parts": {}, "seconds": {}}
    _run_parts(run, model_dir, data_dir, result, progress or (lambda text: None))
    result["verdict"] = overall_verdict(result["parts"])
    result["exit_status"] = exit_status(result["verdict"])
    return result


@dataclass
class _Inputs:
    """What validate's parts run on, every input checked."""
    config: ValidateConfig
    model: object
    tokenizer: object
    folder: object
    base: tuple | None  # (model, tokenizer, folder) of --baseline
    prompts: list
    windows: tuple


def _inputs(model_dir, data_dir, config, baseline, prompts) -> _Inputs:
    from ..data.loader import TokenDataset
    from ..kernels import use_kernel
    from .generate import encode_prompt

    if config is not None and not isinstance(config, ValidateConfig):
        raise ValueError(f"config must be a ValidateConfig, got {type(config).__name__}")
    config = (config or ValidateConfig()).validate()
    dataset = TokenDataset(data_dir, config.split)
    model, tokenizer, folder = _load(model_dir, dataset)
    base = _load(baseline, dataset) if baseline is not None else None
    prompts = list(DEFAULT_PROMPTS if prompts is None else prompts)
    if not prompts:
        raise ValueError("the inference suite needs at least one prompt")
    for prompt in prompts:
        encode_prompt(tokenizer, prompt)
    for m in (model, base[0] if base else None):
        if m is not None and config.kernel is not None:
            use_kernel(m, config.kernel)
    windows = heldout_windows(dataset.tokens, config.sequences, config.seq_len)
    return _Inputs(config, model, tokenizer, folder, base, prompts, windows)


def _timed(timings: dict, name: str, fn, *args):
    """fn(*args), its seconds added to timings[name]."""
    start = time.perf_counter()
    out = fn(*args)
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
    return out


def _run_parts(run: _Inputs, model_dir, data_dir, result: dict, say) -> None:
    config, base, parts, timings = run.config, run.base, result["parts"], result["seconds"]
    say(f"validate 1/5: causality suite on {config.sequences} windows of {config.seq_len}")
    parts["causality"], result["evaluation"] = _timed(timings, "causality", _causality,
                                                       model_dir, data_dir, config)
    say(f"validate 2/5: robustness: noise {list(config.noise_scales)}, temperatures "
        f"{list(config.temperatures)}" + (" (model and baseline)" if base else ""))
    parts["robustness"] = _timed(timings, "robustness", _robustness, run.model, run.tokenizer,
                                 run.windows, config)
    if base:
        result["baseline_parts"]["robustness"] = _timed(timings, "robustness", _robustness,
                                                        base[0], base[1], run.windows, config)
    say(f"validate 3/5: behavioural probes, {config.probe_samples} samples per prompt")
    parts["behaviour"] = _timed(timings, "behaviour", _behaviour, run.model, run.tokenizer,
                                config)
    parts["behaviour"]["verdict"] = None
    if base:
        from .behaviour import compare
        theirs = _timed(timings, "behaviour", _behaviour, base[0], base[1], config)
        result["baseline_parts"]["behaviour"] = theirs
        parts["behaviour"]["against_baseline"] = compare(parts["behaviour"], theirs)
        parts["behaviour"]["verdict"] = parts["behaviour"]["against_baseline"]["verdict"]
    say("validate 4/5: clamp sweep" + ("" if getattr(run.model.args, "bistable", False)
                                      else " (not applicable: no bistable core)"))
    parts["clamp_sweep"] = _timed(timings, "clamp_sweep", clamp_sweep, run.model, *run.windows,
                                  config.u_floors)
    say(f"validate 5/5: inference suite, {len(run.prompts)} prompts")
    parts["inference"] = _timed(timings, "inference", inference_suite, run.model, run.tokenizer,
                                run.prompts, config.max_tokens, config.temp, config.seed)


# ---------------------------------------------------------------- printing


def _tag(verdict) -> str:
    return "[n/a]" if verdict is None else f"[{verdict}]"


def _ci(x: dict, fmt: str = ".4f") -> str:
    return f"{x['mean']:{fmt}} [{x['ci'][0]:{fmt}}, {x['ci'][1]:{fmt}}]"


def format_validation(result: dict) -> list:
    """Terminal lines: per part its verdict and headline figures, then the overall verdict."""
    from .causality import format_causality

    parts = result["parts"]
    ev = result["evaluation"]
    lines = [f"validate {result['model']} on {result['data']}"
             + (f" (baseline {result['baseline']})" if result["baseline"] else ""),
             f"  loss {ev['val_loss']:.4f}  PPL {ev['val_ppl']:.2f}"]
    lines += format_causality(parts["causality"])
    lines += _format_robustness(parts["robustness"], result["baseline_parts"].get("robustness"))
    lines += _format_behaviour(parts["behaviour"], result["baseline_parts"].get("behaviour"))
    lines += _format_clamp(parts["clamp_sweep"])
    lines += _format_inference(parts["inference"])
    lines.append(f"overall: {result['verdict'] or 'nothing judged'} (PASS if every judged part "
                 f"PASSes, FAIL if any FAILs, else INCONCLUSIVE); exit status "
                 f"{result['exit_status']}")
    return lines


def _format_robustness(part, baseline) -> list:
    noise = part["noise"]
    lines = [f"{_tag(part['verdict'])} robustness: loss rise at noise {noise['judged_scale']} "
             f"must stay below {noise['max_rise']:g} nats/token ({noise['noise']})"]
    base_rows = {r["scale"]: r for r in baseline["noise"]["rows"]} if baseline else {}
    for row in noise["rows"]:
        r = f"  R {_ci(row['r'])}" if row["r"] else ""
        line = (f"    noise {row['scale']:<5g} loss {_ci(row['loss'])}  rise "
                f"{_ci(row['loss_rise'], '+.4f')} ({100 * row['relative_rise']['mean']:+.2f}%)"
                f"{r}")
        other = base_rows.get(row["scale"])
        if other:
            line += f"  | baseline rise {other['loss_rise']['mean']:+.4f}"
        lines.append(line)
    for row in part["temperature"]["rows"]:
        r = f"  generation R {_ci(row['generation_r'])}" if row["generation_r"] else ""
        lines.append(f"    temperature {row['temperature']:<4g} loss {_ci(row['loss'])}{r}")
    return lines


def _format_behaviour(part, baseline) -> list:
    tag = _tag(part["verdict"])
    lines = [f"{tag} behavioural probes (a score of the text, not a measure of agency): "
             f"action-verb share {part['score']:.3f} [{part['score_ci'][0]:.3f}, "
             f"{part['score_ci'][1]:.3f}]; paired prompts differ {part['paired_difference']:.3f} "
             f"[{part['paired_difference_ci'][0]:.3f}, {part['paired_difference_ci'][1]:.3f}]"]
    if baseline:
        cmp_ = part["against_baseline"]
        lines.append(f"    baseline: action-verb share {baseline['score']:.3f}; model - baseline "
                     f"{cmp_['difference']:+.3f} [{cmp_['ci'][0]:+.3f}, {cmp_['ci'][1]:+.3f}]")
    else:
        lines.append("    not judged: give --baseline to compare the score with a baseline's")
    return lines


def _format_clamp(part) -> list:
    if not part["applicable"]:
        return [f"[n/a] clamp sweep: {part['reason']}"]
    e = part["u_effect"]
    lines = [f"{_tag(part['verdict'])} clamp sweep: |loss change| from u floor {e['floors'][0]:g} "
             f"to {e['floors'][1]:g} = {_ci(e, '.4g')} nats/token (threshold {e['threshold']})"]
    for row in part["rows"]:
        lines.append(f"    u floor {row['u_floor']:<4g} PPL {row['ppl']:.3f}  loss "
                     f"{_ci(row['loss'])}  mean u {row['u']:.3f}")
    return lines


def _format_inference(part) -> list:
    lines = [f"[n/a] inference suite (reported): {len(part['prompts'])} prompts, "
             f"{part['max_tokens']} tokens at temperature {part['temp']}"]
    for row in part["prompts"]:
        r = (f"  R {row['r_mean']:.3f} {row['zone']}" if row["r_mean"] is not None else "")
        u = f"  u {row['u_mean']:.3f}" if row["u_mean"] is not None else ""
        lines.append(f"    {row['prompt']!r} -> {row['text'][:60]!r}{r}{u}")
    return lines
