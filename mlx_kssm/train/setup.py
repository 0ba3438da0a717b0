"""Everything a run needs before its first step, read, checked and built before anything in
the run folder is written: the options (on --resume, the saved ones with the flags given
merged in), the data, the model (a preset, a model folder, or the checkpoint's), the
optimizer and Grokfast filter, and the trainer state (restored from the checkpoint)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.optimizers import Optimizer

from .._files import foreign_entries
from .._resources import WINDOW_BYTES_PER_TOKEN, check_fits
from ..data.loader import SAMPLERS, BatchSampler, TokenDataset, check_tokenizer, check_vocab, eval_batches
from ..io import (ModelLoadError, apply_weights, load_model, resolve_model_dir,
                  tokenizer_spec)
from ..kernels import check_kernel, use_kernel
from ..models import build_model, preset_train_defaults
from ..models.presets import DEFAULT_WEIGHT_DECAY, PRESETS, preset_args
from . import checkpoint as ckpt
from .config import MODEL_FIELDS, TRAJECTORY_FIELDS, TrainConfig, fill_preset_defaults
from .lock import LOCK_NAME
from .optim import Grokfast, build_optimizer, restore_checkpoint_arrays
from .runlog import HISTORY, LOG, RUN_CONFIG
from .schedule import Schedule
from .state import TrainerState

# a model not a preset
FALLBACK_DEFAULTS = dict(seq_len=256, batch_size=8, learning_rate=1e-3,
                         weight_decay=DEFAULT_WEIGHT_DECAY)
# what a trainer writes before config.json: all a folder that is not (yet) a run may hold
FIRST_WRITES = (LOCK_NAME, LOG, HISTORY)
# warmup not given explicitly is capped at this share of the LR schedule's horizon: a short
# run (stage 1's 100 steps against the default 100 warmup steps) would peak on its last step
WARMUP_SHARE = 0.1


@dataclass(kw_only=True)
class Run:
    """What a run is made of. The loop changes the arrays of the model, optimizer and filter;
    where the run stands is its TrainerState."""

    config: TrainConfig
    run_dir: Path
    world: int  # processes training together (data parallel)
    writer: bool  # rank 0: the only process that writes files
    model: nn.Module
    optimizer: Optimizer
    grokfast: Grokfast
    sampler: BatchSampler  # training batches: a pure function of (seed, step)
    val_set: list  # the fixed validation batches
    tokenizer: object
    tokenizer_spec: dict  # the data's tokenizer, saved into every checkpoint
    resumed_from: Path | None  # the checkpoint folder this process continues from
    notes: list  # lines for training.log, written once the run starts


def prepare(config: TrainConfig, explicit: set, run_dir: Path, rank: int,
            world: int, resume_from=None) -> tuple[Run, TrainerState]:
    """(the run, its state) for `train` (`resume_from`: a step_N folder to continue from
    instead of the newest). Raises ValueError, DataError, ModelLoadError or RuntimeError on
    bad input, having written nothing but the cleanup of the leftovers of a killed trainer
    (and, once all is checked, --resume-from's setting aside of the later checkpoints)."""
    writer = rank == 0
    notes = ckpt.recover(run_dir) if writer else []
    config = _absolute_paths(config)
    existing = ckpt.latest_checkpoint(run_dir)
    if existing is not None and not config.resume:
        raise ValueError(f"{run_dir} already holds a run (last checkpoint {existing.name}); "
                         "pass --resume to continue it, or choose another --output-dir")
    asked_step = resume_from is not None
    resume_from = _checkpoint_to_resume(config, resume_from, run_dir, existing, notes)
    saved = None if resume_from is None else \
        TrainerState.from_json(resume_from.state, str(resume_from.path / ckpt.STATE))
    config = _options(config, explicit, run_dir, saved, notes).validate()
    if saved is None:
        check_model_options(config, explicit)
        config = cap_warmup(config, explicit, notes)
    if saved is not None and config.max_steps < saved.step:
        raise ValueError(f"--max-steps {config.max_steps} is below the checkpoint's step "
                         f"{saved.step}")
    check_kernel(config.kernel)
    train_ds, val_ds = TokenDataset(config.data, "train"), TokenDataset(config.data, "val")
    model, config = _build_model(config, resume_from, train_ds)
    use_kernel(model, config.kernel)
    check_vocab(train_ds, model.args.vocab_size)
    check_vocab(val_ds, model.args.vocab_size)
    sampler = SAMPLERS[config.sampling](train_ds, config.batch_size, config.seq_len, config.seed,
                                        rank, world)
    _check_fits(model, config, world)  # after the data's own checks: their message is plainer
    # the global batch size: the same validation windows however the run is split
    val_set = eval_batches(val_ds, config.val_batches, config.batch_size * world, config.seq_len)
    optimizer, grokfast = _build_optimizer(config, model, resume_from)
    state = _trainer_state(config, saved, world, notes)
    run = Run(config=config, run_dir=run_dir, world=world, writer=writer, model=model,
              optimizer=optimizer, grokfast=grokfast, sampler=sampler, val_set=val_set,
              tokenizer=train_ds.tokenizer(), tokenizer_spec=train_ds.meta["tokenizer"],
              resumed_from=None if resume_from is None else resume_from.path, notes=notes)
    if asked_step and writer:  # last: nothing above failed, so the run does go on from there
        _set_aside_later(run_dir, saved.step, notes)
    return run, state


def _checkpoint_to_resume(config: TrainConfig, named, run_dir: Path, existing: Path | None,
                          notes: list):
    """The checkpoint to continue from: the one --resume-from `named`, else the newest good
    one (a damaged or non-finite newer one is skipped with a warning), else None (a new
    run)."""
    if named is None:
        return ckpt.resumable_checkpoint(run_dir, notes) if config.resume else None
    folder = ckpt.checkpoint_to_resume_from(run_dir, named)
    loaded = ckpt.load_checkpoint(folder)
    if existing is not None and existing.name != folder.name:
        notes.append(f"--resume-from {folder.name}: not the latest checkpoint "
                     f"({existing.name}); the run continues from {folder.name} and redoes "
                     "the steps after it")
    return loaded


def _set_aside_later(run_dir: Path, step: int, notes: list) -> None:
    moved = ckpt.set_aside_later(run_dir, step)
    if moved:
        notes.append(f"the later checkpoints ({', '.join(moved)}) were moved to "
                     f"{run_dir / ckpt.CHECKPOINTS / ckpt.SUPERSEDED}/ (kept, not deleted), "
                     "so that a later --resume continues this run, not theirs")


# ---------------------------------------------------------------- the run folder


def check_run_folder(run_dir: Path) -> None:
    """--output-dir is new, empty, or a run of this trainer (config.json a run's, or a
    complete checkpoint): a run writes config.json, history.jsonl, checkpoints/ and
    replaces best/ whole, so a folder holding anything else is refused before anything is
    written, as `export` and `data prepare` refuse theirs."""
    # checkpoints first: a run that has them resumes even with a damaged config.json
    if ckpt.list_checkpoints(run_dir) or _saved_train_config(run_dir) is not None:
        return
    foreign = foreign_entries(run_dir, lambda name: name in FIRST_WRITES)
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise ValueError(f"--output-dir {run_dir} is not a training run and holds files `train` "
                         f"does not write ({shown}): choose a new or empty folder, or a run "
                         "folder")


# ---------------------------------------------------------------- options


def _options(config: TrainConfig, explicit: set, run_dir: Path, saved: TrainerState | None,
             notes: list) -> TrainConfig:
    """The options to run with: on --resume, the saved run's with the ones given explicitly
    this time merged in (a note names those that change the trajectory)."""
    # without a checkpoint: the options of a run that died before its first one; this also
    # refuses a folder whose config.json is not a run's (a new run would overwrite it)
    saved_options = saved.config.to_dict() if saved is not None else _saved_train_config(run_dir)
    if config.resume and saved_options is None and not _starts_a_run(config):
        raise ValueError(f"--resume: no run to resume in {run_dir} (no checkpoint, no "
                         f"{RUN_CONFIG}); to start one there, give --preset NAME or --model "
                         "FOLDER, and --data DIR")
    if config.resume and saved_options is not None:
        config, changed = _resume_config(saved_options, config, explicit)
        if changed:
            notes.append(f"WARNING: resume changes {', '.join(changed)}: from here the run "
                         "leaves the trajectory an uninterrupted run would have followed")
    if config.resume and saved is None:
        notes.append(f"no checkpoint in {run_dir}: starting a new run")
    return config


def check_model_options(config: TrainConfig, explicit: set) -> None:
    """The model options (--d-model ... --lambda-reg) shape a model built from --preset; with
    --model FOLDER the folder's config.json decides, and they are refused."""
    given = [k for k in MODEL_FIELDS if k in explicit and getattr(config, k) is not None]
    if given and config.model is not None:
        raise ValueError(f"{_flags(given)} set(s) the model of a --preset run; --model "
                         f"{config.model} brings its own (leave {_flags(given)} out)")
    if config.lambda_reg is not None and config.preset in PRESETS \
            and not preset_args(config.preset).bistable:
        raise ValueError(f"--lambda-reg weighs v3's log barrier on u; preset {config.preset} "
                         "has no bistable core (use v3 or another bistable preset)")


def model_overrides(config: TrainConfig) -> dict:
    """The ModelArgs fields the run's model options set (for build_model)."""
    return {arg: getattr(config, k) for k, arg in MODEL_FIELDS.items()
            if getattr(config, k) is not None}


def _flags(names) -> str:
    return ", ".join(f"--{n.replace('_', '-')}" for n in names)


def cap_warmup(config: TrainConfig, explicit: set, notes: list) -> TrainConfig:
    """A new run's warmup: capped at WARMUP_SHARE of the horizon unless given explicitly (a
    note says so); an explicit one above that share is kept, and a note names the clash."""
    cap = int(WARMUP_SHARE * config.horizon)
    if config.warmup_steps <= cap:
        return config
    if "warmup_steps" in explicit:
        notes.append(f"note: --warmup-steps {config.warmup_steps} is over "
                     f"{WARMUP_SHARE:.0%} of the {config.horizon}-step LR schedule: the LR "
                     f"peaks at step {min(config.warmup_steps, config.horizon)}")
        return config
    notes.append(f"warmup {config.warmup_steps} -> {cap} steps ({WARMUP_SHARE:.0%} of the "
                 f"{config.horizon}-step LR schedule; set --warmup-steps to choose)")
    return config.replace(warmup_steps=cap)


def _starts_a_run(config: TrainConfig) -> bool:
    return config.data is not None and (config.preset is None) != (config.model is None)


def _resume_config(saved: dict, config: TrainConfig, explicit: set) -> tuple:
    """(the saved run config with the options the user set explicitly this time, the
    trajectory options that changed)."""
    saved = {**saved, "data": _absolute(saved.get("data")), "model": _absolute(saved.get("model"))}
    _check_same_model(saved, config, explicit)
    changed_model = [k for k in MODEL_FIELDS
                     if k in explicit and getattr(config, k) != saved.get(k)]
    if changed_model:
        raise ValueError(f"{_flags(changed_model)}: --resume continues the run's own model; "
                         "its sizes and regularizer are fixed when it starts (leave them out, "
                         "or start a new run in another --output-dir)")
    merged = TrainConfig.from_dict({**saved, **{k: getattr(config, k) for k in explicit}})
    merged = merged.replace(resume=True, output_dir=config.output_dir)
    changed = [k for k in TRAJECTORY_FIELDS if k in explicit and saved.get(k) != getattr(merged, k)]
    return merged, changed


def _check_same_model(saved: dict, config: TrainConfig, explicit: set) -> None:
    """--resume continues the run's own model: a --preset or --model naming another is refused
    (the run would go on training its own model while config.json claimed the other)."""
    given = {k: getattr(config, k) for k in ("preset", "model") if k in explicit}
    same = {"preset": lambda v: v == saved.get("preset"),
            "model": lambda v: _absolute(v) == saved.get("model")}  # saved's is absolute
    if not all(same[k](v) for k, v in given.items()):
        run = _describe_model(saved)
        asked = " and ".join(f"--{k} {v}" for k, v in given.items())
        raise ValueError(f"{asked} differs from the run's {run}: --resume continues the run's "
                         "own model; leave it out, or start a new run in another --output-dir")


def _describe_model(options: dict) -> str:
    if options.get("model") is not None:
        return f"model folder {options['model']}"
    return f"preset {options.get('preset')}"


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


# ---------------------------------------------------------------- building


def _build_model(config: TrainConfig, resume_from, train_ds):
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
        if model_config.get("quantization") is not None:  # frozen weights, unsaveable config
            raise ModelLoadError(f"--model {config.model} is quantized: train from its "
                                 "floating-point original")
        folder = resolve_model_dir(config.model)
        check_tokenizer(train_ds, tokenizer_spec(model_config, folder), folder, config.model)
    else:
        model = build_model(config.preset, vocab_size=train_ds.vocab_size, seed=config.seed,
                            **model_overrides(config))
    name = model.args.preset
    defaults = preset_train_defaults(name) if name in PRESETS else dict(FALLBACK_DEFAULTS)
    return model, fill_preset_defaults(config, defaults)


def _check_fits(model, config: TrainConfig, world: int) -> None:
    """--batch-size x --seq-len (a training step) and --val-batches (the validation windows,
    held for the whole run) must fit in memory beside the model: checked before either is
    allocated."""
    held = config.val_batches * config.batch_size * world * config.seq_len
    check_fits(model.args, tokens=config.batch_size * config.seq_len, training=True,
               held_bytes=held * WINDOW_BYTES_PER_TOKEN, what="this run")


def _build_optimizer(config: TrainConfig, model, resume_from):
    """(optimizer, Grokfast filter), with the checkpoint's state when resuming."""
    optimizer = build_optimizer(config.optimizer, config.learning_rate, config.weight_decay,
                                config.muon_lr_scale)
    optimizer.init(model.trainable_parameters())
    grokfast = Grokfast(model.trainable_parameters(), config.grokfast_alpha,
                        config.grokfast_lambda, enabled=config.grokfast)
    if resume_from is not None:
        # the state of weights saved in an earlier layout, converted as apply_weights converts
        # the weights (a v3 checkpoint's ten core rows), so it fits the parameters it updates
        restore_checkpoint_arrays(optimizer, grokfast, model.upgrade_saved(resume_from.optimizer),
                                  model.trainable_parameters())
    return optimizer, grokfast


def _lr_plan(schedule: Schedule, step: int, horizon: int) -> str:
    """What the LR does from `step` on, in words: still warming up, or decaying."""
    decay = (f"the cosine decays over the new horizon to {schedule.min_lr:.3e} at step "
             f"{horizon}")
    if step < schedule.warmup_steps and not schedule.restarts:
        return (f"from step {step} (LR {schedule.lr(step):.3e}) the LR keeps rising to "
                f"{schedule.base_lr:.3e} at the end of warmup (step {schedule.warmup_steps}), "
                f"then {decay}")
    return f"from step {step} (LR {schedule.lr(step):.3e}) {decay}"


def _trainer_state(config: TrainConfig, saved: TrainerState | None, world: int,
                   notes: list) -> TrainerState:
    """A fresh run's state, or the checkpoint's with the RNG key restored and the LR schedule
    re-planned where --learning-rate scaled it or --max-steps / --schedule-steps moved its
    horizon."""
    if saved is None:
        schedule = Schedule(config.learning_rate, config.warmup_steps, config.horizon,
                            config.min_lr_ratio)
        return TrainerState(config=config, schedule=schedule, world_size=world)
    saved.restore_rng_key()
    schedule, step = saved.schedule, saved.step
    if config.learning_rate != schedule.base_lr:
        old_lr, schedule = schedule.lr(step + 1), schedule.scaled(
            config.learning_rate / schedule.base_lr)
        notes.append(f"learning rate {saved.schedule.base_lr:g} -> {config.learning_rate:g}: "
                     f"from step {step + 1} every LR of the schedule is scaled by "
                     f"{config.learning_rate / saved.schedule.base_lr:.3g} (LR "
                     f"{old_lr:.3e} -> {schedule.lr(step + 1):.3e})")
    if config.horizon != schedule.total_steps:
        old, schedule = schedule.total_steps, schedule.with_horizon(config.horizon, step)
        notes.append(f"LR schedule horizon {old} -> {config.horizon} steps: the LR of steps "
                     f"1..{step} is kept; {_lr_plan(schedule, step, config.horizon)}")
    return dataclasses.replace(saved, config=config, schedule=schedule, world_size=world)
