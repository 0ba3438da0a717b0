"""The training loop: `train(config)` runs (or resumes) one run folder.

Every step of the loop is visible here: get batch, forward/backward (compiled), accumulate,
average across processes, clip, update, log, evaluate, checkpoint. Exactness of resume rests
on four facts: batches are a pure function of (seed, step) (data position == step), the LR
is a pure function of the step (schedule.py), checkpoints hold the full optimizer state
(and the Grokfast EMA) bit for bit, and nothing random is drawn during a training step (the
RNG key is saved anyway and restored).

Exit status (TrainResult.exit_code): 0 finished or early-stopped; 130 stopped by SIGINT
(Ctrl-C) and 143 by SIGTERM, both after saving a checkpoint; 3 stopped by the NaN guard
(nothing saved after the last good checkpoint).
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_map

from ..data.loader import BatchSampler, TokenDataset, check_tokenizer, check_vocab, eval_batches
from ..evaluation import evaluate_loss
from .._files import atomic_write_text, naming
from ..io import apply_weights, load_model, resolve_model_dir
from ..kernels import check_kernel, use_kernel
from ..models import build_model, count_parameters, preset_train_defaults, r_zone
from ..models.presets import PRESETS
from . import checkpoint as ckpt
from . import lock
from .config import TRAJECTORY_FIELDS, TrainConfig, fill_preset_defaults
from .health import ExplosionDetector, format_verdict, is_finite, stage_verdict
from .optim import (Grokfast, build_optimizer, load_optimizer_arrays, optimizer_arrays,
                    set_learning_rate)
from .schedule import Schedule

HISTORY = "history.jsonl"
LOG = "training.log"
RUN_CONFIG = "config.json"
EXIT_NAN = 3
EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}
GROKFAST_PREFIX = "grokfast."
FALLBACK_DEFAULTS = dict(seq_len=256, batch_size=8, learning_rate=1e-3)


@dataclass
class TrainResult:
    status: str  # "completed", "early_stopped", "interrupted", "nan"
    step: int
    exit_code: int
    run_dir: Path
    best_val_loss: float | None = None
    message: str = ""


# ---------------------------------------------------------------- run folder output


class RunLog:
    """Printed lines (also appended to training.log) and history.jsonl events; rank 0 only
    writes. `n_events` counts history lines so a checkpoint can record where it was."""

    def __init__(self, run_dir: Path, writer: bool, echo=print):
        self.run_dir, self.writer, self.echo = run_dir, writer, echo
        self.n_events = 0
        self.bar_shown = False

    def line(self, text: str) -> None:
        if not self.writer:
            return
        self.clear_bar()
        self.echo(text)
        with naming(self.run_dir / LOG), open(self.run_dir / LOG, "a") as f:
            f.write(text + "\n")

    def event(self, record: dict) -> None:
        if not self.writer:
            return
        record = {"time": round(time.time(), 3), **record}
        with naming(self.run_dir / HISTORY), open(self.run_dir / HISTORY, "a") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
        self.n_events += 1

    def failure(self, step: int, message: str) -> None:
        """Record why the run stopped, in training.log and as the history's end event (not
        echoed: the caller raises it). Best effort: on a full disk these writes may fail too."""
        if not self.writer:
            return
        try:
            with open(self.run_dir / LOG, "a") as f:
                f.write(f"ERROR: {message}\n")
            self.event({"event": "end", "step": step, "status": "error", "message": message})
        except OSError:
            pass

    def restart_history(self) -> None:
        """A new run starts with an empty history.jsonl. Events of an earlier attempt that
        died before its first checkpoint would otherwise count twice and shift the line
        offsets checkpoints record; training.log (append-only) keeps that attempt's record."""
        path = self.run_dir / HISTORY
        if self.writer and path.exists() and path.stat().st_size:
            dropped = len(path.read_text().splitlines())
            atomic_write_text(path, "")
            self.line(f"new run: {HISTORY} restarted; its {dropped} event(s) came from an "
                      "earlier attempt that saved no checkpoint (training.log keeps them)")
        self.n_events = 0

    def truncate_history(self, n_events: int, step: int) -> list:
        """Cut history.jsonl back to the checkpoint of `step` (events logged after it will be
        redone) and return the kept records. The checkpoint recorded `n_events`, its own event
        being the last; where that line is not its event (a history an earlier version let an
        aborted attempt append to), the cut follows the checkpoint's event instead."""
        path = self.run_dir / HISTORY
        lines = path.read_text().splitlines(keepends=True) if path.exists() else []
        records = [_parse(line) for line in lines]
        keep = min(n_events, len(lines))
        if not _is_checkpoint_event(records[keep - 1] if keep else None, step):
            found = [i for i, r in enumerate(records) if _is_checkpoint_event(r, step)]
            keep = found[-1] + 1 if found else keep
        if self.writer and len(lines) != keep:
            atomic_write_text(path, "".join(lines[:keep]))
        self.n_events = keep
        return [r for r in records[:keep] if r is not None]

    def bar(self, step: int, max_steps: int, eta_s: float) -> None:
        """A progress bar with ETA, on a terminal only (never in logs or pipes)."""
        if not (self.writer and sys.stderr.isatty()):
            return
        width = 30
        done = int(width * step / max(max_steps, 1))
        sys.stderr.write(f"\r[{'#' * done}{'.' * (width - done)}] {step}/{max_steps} "
                         f"ETA {format_duration(eta_s)} ")
        sys.stderr.flush()
        self.bar_shown = True

    def clear_bar(self) -> None:
        if self.bar_shown:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
            self.bar_shown = False


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def format_report(r: dict) -> str:
    parts = [f"Iter {r['step']}: Train loss {r['loss']:.4f}", f"CE {r['ce']:.4f}",
             f"Reg {r['reg']:.4f}"]
    if r.get("R") is not None:
        parts.append(f"R {r['R']:.4f} ({r['zone']})")
    if r.get("u") is not None:
        parts.append(f"u {r['u']:.4f} (at bound {r['u_at_bound']:.1%})")
    parts += [f"Grad norm {r['grad_norm']:.3f}", f"LR {r['lr']:.3e}",
              f"Tokens/sec {r['tokens_per_sec']:.1f}", f"Peak mem {r['peak_mem_gb']:.3f} GB"]
    return ", ".join(parts)


def format_eval(e: dict) -> str:
    text = f"Iter {e['step']}: Val loss {e['val_loss']:.4f}, Val ppl {e['val_ppl']:.2f}"
    if e.get("val_R") is not None:
        layers = " ".join(f"{x:.3f}" for x in e["val_R_layers"])
        text += f", Val R {e['val_R']:.4f} ± {e['val_R_std']:.4f} [{layers}]"
    if e.get("val_u") is not None:
        text += f", Val u {e['val_u']:.4f}"
    return text + f", Val took {e['eval_s']:.2f}s" + (" (best)" if e.get("is_best") else "")


# ---------------------------------------------------------------- setup


def _load_data(config: TrainConfig):
    train_ds = TokenDataset(config.data, "train")
    val_ds = TokenDataset(config.data, "val")
    return train_ds, val_ds, train_ds.tokenizer()


def _resume_config(saved: dict, config: TrainConfig, explicit: set) -> tuple:
    """(the saved run config with the options the user set explicitly this time, the
    trajectory options that changed)."""
    saved = {**saved, "data": _absolute(saved.get("data")), "model": _absolute(saved.get("model"))}
    merged = TrainConfig.from_dict({**saved, **{k: getattr(config, k) for k in explicit}})
    merged = merged.replace(resume=True, output_dir=config.output_dir)
    changed = [k for k in TRAJECTORY_FIELDS if k in explicit and saved.get(k) != getattr(merged, k)]
    return merged, changed


def _absolute(path) -> str | None:
    return None if path is None else str(Path(path).resolve())


def _absolute_paths(config: TrainConfig) -> TrainConfig:
    """--data and --model as absolute paths: a run copied elsewhere, or resumed from another
    working directory, still finds them."""
    return config.replace(data=_absolute(config.data), model=_absolute(config.model))


def _saved_train_config(run_dir: Path) -> dict | None:
    """The "train" options of RUN/config.json (written when a run starts), or None. A run that
    died before its first checkpoint is resumed from these. A config.json of anything else
    (an exported model's) is refused: a new run would overwrite it."""
    path = run_dir / RUN_CONFIG
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        saved = None
    if not isinstance(saved, dict) or not isinstance(saved.get("train"), dict):
        raise ValueError(f"{path} is not a training run's config (a model folder?): choose "
                         "another --output-dir")
    return saved["train"]


def _defaults_for(model_args) -> dict:
    name = model_args.preset
    return preset_train_defaults(name) if name in PRESETS else dict(FALLBACK_DEFAULTS)


def _build(config: TrainConfig, resume_from, train_ds):
    """(model, config with preset defaults filled). Seeds the global RNG exactly as a fresh
    run does, so the key after model construction is the same on resume."""
    if resume_from is not None:
        # --data may name another folder on resume: its ids must mean what the model learned
        check_tokenizer(train_ds, resume_from.config.get("tokenizer"), resume_from.path,
                        f"the checkpoint {resume_from.path}")
        model = build_model(resume_from.config, seed=config.seed)
        apply_weights(model, resume_from.weights, source=str(resume_from.path))
    elif config.model is not None:
        mx.random.seed(config.seed)
        model, model_config = load_model(config.model)
        check_tokenizer(train_ds, model_config.get("tokenizer"), resolve_model_dir(config.model),
                        config.model)
    else:
        model = build_model(config.preset, vocab_size=train_ds.vocab_size, seed=config.seed)
    return model, fill_preset_defaults(config, _defaults_for(model.args))


def _loss(model, inputs, targets):
    logits, r, aux = model(inputs, return_r=True, return_aux=True)
    ce = nn.losses.cross_entropy(logits.astype(mx.float32), targets, reduction="mean")
    reg = aux["reg"]
    metrics = {"ce": ce, "reg": reg}
    if r is not None:
        metrics["R_layers"] = mx.mean(r.astype(mx.float32), axis=(0, 1))
    if aux.get("u") is not None:
        metrics["u"], metrics["u_at_bound"] = aux["u"], aux["u_at_bound"]
    return ce + reg, metrics


def make_step(model, optimizer, grokfast, config: TrainConfig, world: int):
    """The compiled step (mlx-lm style: model, optimizer, filter and RNG state are inputs and
    outputs of the compiled graph). `step(inputs, targets, prev_grads, do_update)` returns
    (loss, metrics, grads-or-None, grad_norm-or-None); grads accumulate (summed) across
    micro-batches and are averaged, clipped and applied when `do_update`."""
    loss_and_grad = nn.value_and_grad(model, _loss)
    state = [model.state, optimizer.state, grokfast.state, mx.random.state]
    accum, clip = config.grad_accum, config.grad_clip

    @partial(mx.compile, inputs=state, outputs=state)
    def step(inputs, targets, prev_grads, do_update):
        (loss, metrics), grads = loss_and_grad(model, inputs, targets)
        if prev_grads is not None:
            grads = tree_map(lambda a, b: a + b, grads, prev_grads)
        if not do_update:
            return loss, metrics, grads, None
        if accum > 1:
            grads = tree_map(lambda g: g / accum, grads)
        if world > 1:
            grads = nn.average_gradients(grads)
            loss = mx.distributed.all_sum(loss) / world
            metrics = tree_map(lambda m: mx.distributed.all_sum(m) / world, metrics)
        grad_norm = optim.clip_grad_norm(grads, float("inf"))[1]
        grads = grokfast(grads)
        if clip > 0:
            grads, _ = optim.clip_grad_norm(grads, clip)
        optimizer.update(model, grads)
        return loss, metrics, None, grad_norm

    return step, state


# ---------------------------------------------------------------- the run


class _Signals:
    """SIGINT/SIGTERM set a flag the loop checks after each step; a second signal stops
    at once (the last checkpoint on disk stays valid: writes are atomic)."""

    def __init__(self):
        self.received = None
        self.previous = {}

    def __enter__(self):
        for sig in EXIT_SIGNAL:
            try:
                self.previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no handlers, the loop still runs
                pass
        return self

    def _handle(self, signum, frame):
        if self.received is not None:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        self.received = signum

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def train(config: TrainConfig, explicit: set | None = None, echo=print) -> TrainResult:
    """Run or resume the training run `config.output_dir`.

    `explicit`: the option names the user set (flags or config file); on --resume those
    override the saved run config and everything else comes from it. None means: every
    option that differs from TrainConfig's default.
    Raises ValueError, DataError, ModelLoadError or lock.LockError on bad input.
    """
    defaults = TrainConfig()
    if explicit is None:
        explicit = {k for k, v in config.to_dict().items() if getattr(defaults, k) != v}
    if not config.resume:
        config.validate()
    group = mx.distributed.init()
    rank, world = group.rank(), group.size()
    run_dir = Path(config.output_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"--output-dir {run_dir} exists and is not a folder")
    writer = rank == 0
    created = writer and not run_dir.exists()
    started = False
    if writer:
        lock.acquire(run_dir, log=echo)
    try:
        with _Signals() as signals:
            setup = _setup(config, explicit, run_dir, rank, world, writer)
            started = True
            return _run(setup, run_dir, world, writer, signals, echo)
    finally:
        if writer:
            lock.release(run_dir)
        if created and not started:  # refused before writing: leave no empty run folder
            shutil.rmtree(run_dir, ignore_errors=True)


@dataclass
class _Setup:
    """What `_setup` checked and built before anything in the run folder is written."""

    config: TrainConfig
    resume_from: object  # ckpt.Checkpoint or None
    train_ds: TokenDataset
    tokenizer: object
    model: nn.Module
    sampler: BatchSampler
    val_set: list
    notes: list  # lines for training.log, written once the run starts


def _setup(config, explicit, run_dir, rank, world, writer) -> _Setup:
    """Read and check everything a run needs (checkpoint, options, data, model, windows);
    raises on bad input having written nothing but the cleanup of a killed trainer's leftovers."""
    notes = ckpt.recover(run_dir) if writer else []
    config = _absolute_paths(config)
    existing = ckpt.latest_checkpoint(run_dir)
    if existing is not None and not config.resume:
        raise ValueError(f"{run_dir} already holds a run (last checkpoint {existing.name}); "
                         "pass --resume to continue it, or choose another --output-dir")
    resume_from = ckpt.load_checkpoint(existing) if (config.resume and existing) else None
    # without a checkpoint: the options of a run that died before its first one; this also
    # refuses a folder whose config.json is not a run's (a new run would overwrite it)
    saved = (resume_from.state["config"] if resume_from is not None
             else _saved_train_config(run_dir))
    if config.resume and saved is not None:
        config, changed = _resume_config(saved, config, explicit)
        if changed:
            notes.append(f"WARNING: resume changes {', '.join(changed)}: from here the run "
                         "leaves the trajectory an uninterrupted run would have followed")
    if config.resume and resume_from is None:
        notes.append(f"no checkpoint in {run_dir}: starting a new run")
    config.validate()
    start_step = resume_from.state["step"] if resume_from is not None else 0
    if config.max_steps < start_step:
        raise ValueError(f"--max-steps {config.max_steps} is below the checkpoint's step "
                         f"{start_step}")
    check_kernel(config.kernel)
    train_ds, val_ds, tokenizer = _load_data(config)
    model, config = _build(config, resume_from, train_ds)
    use_kernel(model, config.kernel)
    check_vocab(train_ds, model.args.vocab_size)
    check_vocab(val_ds, model.args.vocab_size)
    sampler = BatchSampler(train_ds, config.batch_size, config.seq_len, config.seed, rank, world)
    # the global batch size: the same validation windows however the run is split
    val_set = eval_batches(val_ds, config.val_batches, config.batch_size * world, config.seq_len)
    return _Setup(config, resume_from, train_ds, tokenizer, model, sampler, val_set, notes)


def _run(setup: _Setup, run_dir, world, writer, signals, echo) -> TrainResult:
    config, resume_from, model = setup.config, setup.resume_from, setup.model
    log = RunLog(run_dir, writer, echo)
    for note in setup.notes:
        log.line(note)
    if config.patience and config.steps_per_eval > config.max_steps:
        log.line("note: --patience has no effect: no evaluation before --max-steps")

    optimizer = build_optimizer(config.optimizer, config.learning_rate, config.weight_decay,
                                config.muon_lr_scale)
    optimizer.init(model.trainable_parameters())
    grokfast = Grokfast(model.trainable_parameters(), config.grokfast_alpha,
                        config.grokfast_lambda, enabled=config.grokfast)
    schedule = Schedule(config.learning_rate, config.warmup_steps, config.horizon,
                        config.min_lr_ratio)
    detector = ExplosionDetector(config.explode_factor)
    # state and step_fn come last: the compiled step must capture the restored optimizer state
    loop = _Loop(config, model, optimizer, grokfast, state=[], step_fn=None,
                 sampler=setup.sampler, val_set=setup.val_set, tokenizer=setup.tokenizer,
                 tokenizer_spec=setup.train_ds.meta["tokenizer"], schedule=schedule, log=log,
                 run_dir=run_dir, writer=writer, world=world, signals=signals, detector=detector)
    if resume_from is not None:
        _restore(loop, resume_from)
    else:
        log.restart_history()
    loop.step_fn, loop.state = make_step(model, optimizer, grokfast, config, world)

    n_params = count_parameters(model)
    if writer:
        run_config = {"train": config.to_dict(), "model": model.args.to_dict(),
                      "tokenizer": setup.train_ds.meta["tokenizer"], "world_size": world,
                      "n_parameters": n_params, "host": socket.gethostname(),
                      "updated": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        atomic_write_text(run_dir / RUN_CONFIG, json.dumps(run_config, indent=2))
        if resume_from is None:
            log.event({"event": "start", "step": 0, "max_steps": config.max_steps,
                       "n_parameters": n_params, "world_size": world,
                       "preset": model.args.preset})
    log.line(f"Training {model.args.preset or model.args.model_type} ({n_params:,} parameters) "
             f"on {config.data}: {config.max_steps} steps, batch {config.batch_size} x seq "
             f"{config.seq_len} x accum {config.grad_accum} x {world} process(es), "
             f"{config.optimizer}{' + grokfast' if config.grokfast else ''}, "
             f"lr {config.learning_rate:g}")
    return loop.run()


def _restore(loop: "_Loop", resume_from) -> None:
    """Put the loop where the checkpoint left it: optimizer and Grokfast state, step, best
    val, RNG key, LR schedule, and history.jsonl cut back to the checkpoint's own event."""
    st, arrays, config = resume_from.state, resume_from.optimizer, loop.config
    load_optimizer_arrays(loop.optimizer, {k: v for k, v in arrays.items()
                                           if not k.startswith(GROKFAST_PREFIX)})
    loop.optimizer.init(loop.model.trainable_parameters())
    loop.grokfast.load_arrays({k[len(GROKFAST_PREFIX):]: v for k, v in arrays.items()
                               if k.startswith(GROKFAST_PREFIX)})
    loop.step, loop.best_val, loop.best_step = st["step"], st["best_val_loss"], st["best_step"]
    loop.stale_evals = st["evals_without_improvement"]
    loop.detector.minimum = st.get("explosion_min") or math.inf
    hi, lo = st["rng_key"]
    mx.random.seed((hi << 32) | lo)
    schedule = Schedule.from_dict(st["schedule"])
    if config.horizon != schedule.total_steps:
        old = schedule.total_steps
        schedule = schedule.with_horizon(config.horizon, loop.step)
        loop.log.line(f"LR schedule horizon {old} -> {config.horizon} steps: the LR of steps "
                      f"1..{loop.step} is kept; from step {loop.step} (LR "
                      f"{schedule.lr(loop.step):.3e}) the cosine decays over the new horizon "
                      f"to {schedule.min_lr:.3e} at step {config.horizon}")
    loop.schedule = schedule
    kept = loop.log.truncate_history(st["history_len"], loop.step)
    # the checkpoint is on disk and its evaluation (if one was due) in the kept history: a
    # finished run resumed again must not repeat them
    loop.last_saved = loop.step
    loop.last_eval_step = loop.step if any(
        r.get("event") == "eval" and r.get("step") == loop.step for r in kept) else None
    loop.log.line(f"resumed from {resume_from.path} at step {loop.step}")
    loop.log.event({"event": "resume", "step": loop.step, "checkpoint": str(resume_from.path),
                    "max_steps": config.max_steps})


@dataclass
class _Loop:
    """Everything one training run carries between steps."""

    config: TrainConfig
    model: nn.Module
    optimizer: optim.Optimizer
    grokfast: Grokfast
    state: list  # [model.state, optimizer.state, ...]: the compiled step's implicit state
    step_fn: object
    sampler: BatchSampler
    val_set: list
    tokenizer: object
    tokenizer_spec: dict
    schedule: Schedule
    log: object
    run_dir: Path
    writer: bool  # rank 0: the only process that writes files
    world: int
    signals: object
    detector: ExplosionDetector
    step: int = 0
    best_val: float | None = None
    best_step: int | None = None
    stale_evals: int = 0  # evaluations without improvement (--patience)
    window: list = field(default_factory=list)  # per-step metrics since the last report
    window_time: float = 0.0  # compute time of the window's steps
    timed_steps: int = 0
    first_step: bool = True
    recent_step_s: list = field(default_factory=list)  # for the ETA
    last_saved: int | None = None
    last_eval_step: int | None = None

    # -- one optimizer step (grad_accum micro-batches)
    def train_step(self):
        c = self.config
        set_learning_rate(self.optimizer, self.schedule.lr(self.step + 1))
        grads, losses, metrics = None, [], []
        for micro in range(c.grad_accum):
            inputs, targets = self.sampler.batch(self.step * c.grad_accum + micro)
            last = micro == c.grad_accum - 1
            loss, m, grads, grad_norm = self.step_fn(mx.array(inputs), mx.array(targets),
                                                     grads, last)
            losses.append(loss)
            metrics.append(m)
        mx.eval(self.state, losses, metrics, grad_norm)
        self.step += 1
        def mean(values):
            values = [float(x) for x in values]
            return sum(values) / len(values)

        record = {"loss": mean(losses), "ce": mean(m["ce"] for m in metrics),
                  "reg": mean(m["reg"] for m in metrics), "grad_norm": float(grad_norm),
                  "lr": self.schedule.lr(self.step)}
        if "R_layers" in metrics[0]:
            per_micro = [m["R_layers"].tolist() for m in metrics]
            record["R_layers"] = [sum(col) / len(col) for col in zip(*per_micro)]
        if "u" in metrics[0]:
            record["u"] = mean(m["u"] for m in metrics)
            record["u_at_bound"] = mean(m["u_at_bound"] for m in metrics)
        return record

    def report(self):
        w = self.window
        n = len(w)
        avg = lambda k: sum(r[k] for r in w) / n  # noqa: E731
        r = {"event": "train", "step": self.step, "loss": avg("loss"), "ce": avg("ce"),
             "reg": avg("reg"), "grad_norm": avg("grad_norm"), "lr": w[-1]["lr"]}
        if "R_layers" in w[-1]:
            r["R_layers"] = [sum(x["R_layers"][i] for x in w) / n
                             for i in range(len(w[-1]["R_layers"]))]
            r["R"] = sum(r["R_layers"]) / len(r["R_layers"])
            r["zone"] = r_zone(r["R"])
        if "u" in w[-1]:
            r["u"], r["u_at_bound"] = avg("u"), avg("u_at_bound")
        c = self.config
        tokens = self.timed_steps * c.batch_size * c.seq_len * c.grad_accum * self.world
        r["tokens_per_sec"] = tokens / self.window_time if self.window_time > 0 else 0.0
        r["peak_mem_gb"] = mx.get_peak_memory() / 1e9
        r["max_steps"] = self.config.max_steps
        self.log.line(format_report(r))
        flagged = self.detector.check(r["loss"])
        if flagged:
            self.log.line(f"WARNING: {flagged} at step {self.step}")
            self.log.event({"event": "warning", "step": self.step, "kind": "explosion",
                            "message": flagged})
        self.log.event(r)
        self.window, self.window_time, self.timed_steps = [], 0.0, 0

    # -- evaluation, samples, best/
    def evaluate(self):
        t0 = time.perf_counter()
        metrics = evaluate_loss(self.model, self.val_set)
        e = {"event": "eval", "step": self.step, **metrics}
        e["is_best"] = self.best_val is None or metrics["val_loss"] < self.best_val
        if e["is_best"]:
            self.best_val, self.best_step, self.stale_evals = metrics["val_loss"], self.step, 0
        else:
            self.stale_evals += 1
        if self.writer:
            e["samples"] = self.samples()
        e["eval_s"] = time.perf_counter() - t0
        self.log.line(format_eval(e))
        for s in e.get("samples", []):
            flag = f"  [collapsed: {s['reason']}]" if s["collapsed"] else ""
            self.log.line(f"  Sample {s['prompt']!r} -> {s['text']!r}{flag}")
        if e["is_best"] and self.writer:
            try:
                ckpt.save_best(self.run_dir, self.model, self.trainer_state(), metrics,
                               self.tokenizer_spec, tokenizer_root=self.config.data)
            except OSError as error:
                raise self.write_failed(f"{self.run_dir / ckpt.BEST} (step {self.step})",
                                        error) from None
        self.log.event(e)
        if self.config.stage is not None and self.step < self.config.max_steps:
            self.verdict()  # the end of the run prints its own
        return e

    def samples(self):
        from ..probe.generate import generate_tokens
        from ..probe.quality import sample_quality

        out = []
        for i, prompt in enumerate(self.config.sample_prompts):
            ids = self.tokenizer.encode(prompt)
            if not ids:
                continue
            # a seed per prompt: with one shared noise stream, the contractive state lets
            # two continuations fall into the same text once a few tokens coincide
            gen = generate_tokens(self.model, ids, max_tokens=self.config.sample_tokens,
                                  temp=0.8, seed=self.config.seed + i)
            text = self.tokenizer.decode(gen.tokens)
            out.append({"prompt": prompt, "text": text, **sample_quality(gen.tokens, text)})
        return out

    def verdict(self):
        history = read_history(self.run_dir) if self.writer else []
        v = stage_verdict(self.config.stage, history)
        self.log.line(format_verdict(v))
        self.log.event({"event": "verdict", "step": self.step, **v})
        return v

    # -- checkpoints
    def trainer_state(self) -> dict:
        key = [int(x) for x in mx.random.state[0].tolist()]
        return {"step": self.step, "max_steps": self.config.max_steps,
                "schedule": self.schedule.to_dict(), "lr": self.schedule.lr(max(self.step, 1)),
                "best_val_loss": self.best_val, "best_step": self.best_step,
                "evals_without_improvement": self.stale_evals,
                "explosion_min": (self.detector.minimum
                                  if math.isfinite(self.detector.minimum) else None),
                "rng_key": key,
                "data": {"sampler": "BatchSampler", "seed": self.config.seed,
                         "position": self.step * self.config.grad_accum,
                         "world_size": self.world},
                "history_len": self.log.n_events,  # events up to this checkpoint's own
                "config": self.config.to_dict(),
                "saved": datetime.now(timezone.utc).isoformat(timespec="seconds")}

    def save(self, reason: str):
        if self.last_saved == self.step or not self.writer:
            self.last_saved = self.step
            return
        t0 = time.perf_counter()
        arrays = optimizer_arrays(self.optimizer)
        arrays.update({GROKFAST_PREFIX + k: v for k, v in self.grokfast.arrays().items()})
        self.log.event({"event": "checkpoint", "step": self.step, "reason": reason,
                        "path": str(ckpt.step_dir(self.run_dir, self.step))})
        state = self.trainer_state()
        try:
            path = ckpt.save_checkpoint(self.run_dir, self.step, self.model, arrays, state,
                                        self.tokenizer_spec, self.config.keep_last,
                                        tokenizer_root=self.config.data)
        except OSError as error:
            raise self.write_failed(f"checkpoint {ckpt.step_dir(self.run_dir, self.step)}",
                                    error) from None
        self.last_saved = self.step
        self.log.line(f"Iter {self.step}: saved {path} ({reason}, "
                      f"{time.perf_counter() - t0:.2f}s)")

    def write_failed(self, what: str, error: OSError) -> OSError:
        """The error a failed checkpoint or best/ write stops the run with (a full disk:
        training on could never be saved), recorded in training.log and history.jsonl."""
        last = ckpt.latest_checkpoint(self.run_dir)
        where = f" (writing {Path(error.filename).name})" if error.filename else ""
        kept = (f"the last good checkpoint {last} is kept" if last
                else "no checkpoint was saved before")
        fix = "free some space" if error.errno == errno.ENOSPC else "fix that"
        message = (f"{what} not saved: {error.strerror or error}{where}; {kept}; {fix}, then "
                   "continue with --resume")
        self.log.failure(self.step, message)
        failure = OSError(message)
        failure.errno = error.errno
        return failure

    # -- the loop
    def stop_requested(self) -> int | None:
        flag = self.signals.received or 0
        if self.world > 1:  # every rank stops together
            flag = int(mx.distributed.all_sum(mx.array(flag)).item())
        return flag or None

    def run(self) -> TrainResult:
        c = self.config
        status, exit_code, message = "completed", 0, ""
        while self.step < c.max_steps:
            t0 = time.perf_counter()
            record = self.train_step()
            dt = time.perf_counter() - t0
            if not (is_finite(record["loss"]) and is_finite(record["grad_norm"])):
                return self.nan_stop(record)
            self.window.append(record)
            if self.first_step:  # traces and compiles the step: keep it out of tokens/s
                self.first_step = False
                self.log.line(f"Iter {self.step}: first step (compiles the graph) took {dt:.1f}s")
            else:
                self.window_time += dt
                self.timed_steps += 1
                self.recent_step_s = (self.recent_step_s + [dt])[-50:]
            if self.step % c.steps_per_report == 0 or self.step == c.max_steps:
                self.report()
            recent = self.recent_step_s or [dt]
            eta = sum(recent) / len(recent) * (c.max_steps - self.step)
            self.log.bar(self.step, c.max_steps, eta)
            if self.step % c.steps_per_eval == 0 or self.step == c.max_steps:
                self.evaluate()
                self.last_eval_step = self.step
                if c.patience and self.stale_evals >= c.patience:
                    status = "early_stopped"
                    message = (f"early stop at step {self.step}: no val improvement in "
                               f"{c.patience} evaluations (best {self.best_val:.4f} at step "
                               f"{self.best_step})")
                    break
            if self.step % c.save_every == 0:
                self.save("periodic")
            signum = self.stop_requested()
            if signum:
                status, exit_code = "interrupted", EXIT_SIGNAL.get(signum, 130)
                message = (f"stopped by {signal.Signals(signum).name} at step {self.step}; "
                           f"resume with --resume")
                break
        if self.window:
            self.report()
        if status == "completed" and self.last_eval_step != self.step:
            self.evaluate()
        self.save("exit" if status != "completed" else "final")
        if c.stage is not None and status != "interrupted":
            self.verdict()
        if status == "completed":
            message = f"finished {self.step} steps"
        if self.best_val is not None:
            message += f"; best val loss {self.best_val:.4f} at step {self.best_step}"
        self.log.event({"event": "end", "step": self.step, "status": status,
                        "best_val_loss": self.best_val})
        self.log.line(message)
        return TrainResult(status, self.step, exit_code, self.run_dir, self.best_val, message)

    def nan_stop(self, record) -> TrainResult:
        last = ckpt.latest_checkpoint(self.run_dir)
        where = (f"last good checkpoint {last} (resume with --resume and a lower "
                 "--learning-rate)" if last else "no checkpoint was saved before it")
        message = (f"loss is {record['loss']} (grad norm {record['grad_norm']}) at step "
                   f"{self.step}: stopped without saving; {where}")
        self.log.event({"event": "nan", "step": self.step, "loss": str(record["loss"]),
                        "grad_norm": str(record["grad_norm"]),
                        "last_checkpoint": str(last) if last else None})
        self.log.event({"event": "end", "step": self.step, "status": "nan",
                        "best_val_loss": self.best_val})
        self.log.line("ERROR: " + message)
        return TrainResult("nan", self.step, EXIT_NAN, self.run_dir, self.best_val, message)


def read_history(run_dir) -> list:
    """history.jsonl as a list of dicts (a torn last line from a kill is skipped)."""
    path = Path(run_dir) / HISTORY
    if not path.exists():
        return []
    return [r for r in map(_parse, path.read_text().splitlines()) if r is not None]


def _parse(line: str) -> dict | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _is_checkpoint_event(record, step: int) -> bool:
    return bool(record) and record.get("event") == "checkpoint" and record.get("step") == step
