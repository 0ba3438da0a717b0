"""`run_study(StudyConfig(...))`: train every model on every seed through the ordinary trainer,
evaluate each with the shared evaluation and the causality suite, and write the report.

Layout of a study folder:

    STUDY/study.json                  config, commands, environment (versions, BLAS, machine),
                                      every run's figures, the per-model summary
    STUDY/study.md                    the tables (report.py)
    STUDY/plots/*.png                 with the `plot` extra
    STUDY/runs/MODEL/seed_S/          a normal training run folder (lock, checkpoints, exact
                                      resume) plus study_eval.json, its cached evaluation
    STUDY/runs/random-init/seed_S/    study_eval.json of the preset evaluated untrained

Continuing: running the same study again reuses finished runs (a complete final checkpoint
and a `completed` end event in history.jsonl) and their cached evaluations, and resumes
unfinished ones from their newest checkpoint (the trainer's --resume: exact). Every seed
gives every model the same batches: the trainer's BatchSampler is a pure function of
(seed, step), and the data and budget are the same for all.
"""

from __future__ import annotations

import json
import math
import shlex
import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .._files import atomic_write_json, sha256_file
from .._resources import check_count
from .._types import is_int
from ..data.loader import TokenDataset
from ..evaluation import EvalConfig, evaluate
from ..machine import environment
from ..models.presets import KSSM_PRESETS, PRESETS, comparison_presets, preset_train_defaults
from ..train import checkpoint as ckpt
from ..train import lock
from ..train.config import TrainConfig
from ..train.trainer import read_history, train
from .variants import (VARIANTS_DIR, check_variants, load_variants, save_initial_weights,
                       variant_train_value)

RANDOM_INIT = "random-init"
STUDY_JSON, STUDY_MD, RUNS = "study.json", "study.md", "runs"
RUN_EVAL = "study_eval.json"
FORMAT = "mlx-kssm study"
FORMAT_VERSION = 1
FLAGS = {"max_steps": "--steps", "steps_per_eval": "--eval-every",
         "steps_per_report": "--report-every"}  # StudyConfig fields named otherwise on the CLI
# what the runs' numbers depend on: a study folder continues only with the same values
BUDGET_FIELDS = ("data_fingerprint", "preset", "max_steps", "batch_size", "seq_len",
                 "learning_rate", "warmup_steps")


@dataclass
class StudyConfig:
    """One study: data, budget, seeds, models. None fields take the preset's defaults."""

    data: str
    output_dir: str
    preset: str = "tiny"  # the K-SSM preset; its comparisons make the default model list
    models: list | None = None  # preset names, variant names and/or "random-init";
    # None: default_models, or with variants the preset and then every variant
    variants: dict | None = None  # name -> {"preset", "model", "train", ...} (variants.py)
    variants_file: str | None = None  # a .toml/.json variant file, read when variants is None
    seeds: int = 3  # seeds 0 .. seeds-1: the init and the batches of every model
    max_steps: int = 1000
    batch_size: int | None = None
    seq_len: int | None = None
    learning_rate: float | None = None  # None: each model's own preset default (see presets.py)
    warmup_steps: int = 100
    steps_per_eval: int = 200
    steps_per_report: int = 50
    val_batches: int = 20  # the trainer's validation during training
    save_every: int = 500
    eval_batches: int = 20  # the study's final evaluation: loss windows (batch_size x seq_len)
    sequences: int = 32  # held-out windows of the causality suite
    samples: int = 3  # generations checked for mode collapse per evaluation
    kernel: str = "auto"
    data_fingerprint: str | None = None  # sha256 of the data's meta.json (filled in)

    def to_dict(self) -> dict:
        return asdict(self)

    def resolved(self) -> "StudyConfig":
        """A copy with the preset's defaults filled in (checked first: bad input raises)."""
        if self.preset not in KSSM_PRESETS:
            raise ValueError(f"--preset must be a K-SSM preset ({', '.join(KSSM_PRESETS)}), got "
                             f"{self.preset!r}")
        defaults = preset_train_defaults(self.preset)
        # batch and sequence length make the budget, the same for every model; the learning
        # rate stays each model's own unless given (a transformer and a K-SSM differ in it)
        fill = {k: defaults[k] for k in ("batch_size", "seq_len") if getattr(self, k) is None}
        variants = self.variants
        if variants is None and self.variants_file is not None:
            variants = load_variants(self.variants_file)
        variants = check_variants(variants, "variants") if variants else None
        if self.models:
            models = list(self.models)
        else:
            models = [self.preset, *variants] if variants else default_models(self.preset)
        return StudyConfig(**{**self.to_dict(), **fill, "models": models, "variants": variants})

    def validate(self) -> "StudyConfig":
        """Check everything before anything is written: names, counts, the data and that the
        sequence length fits both splits."""
        if self.seeds < 1:
            raise ValueError(f"--seeds must be at least 1, got {self.seeds}")
        for name in ("max_steps", "batch_size", "seq_len", "steps_per_eval", "steps_per_report",
                     "val_batches", "save_every", "eval_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{flag(name)} must be >= 1, got {getattr(self, name)}")
        if self.sequences < 3:
            raise ValueError(f"--sequences must be >= 3, got {self.sequences}")
        check_count("val_batches", self.val_batches)
        check_count("batches", self.eval_batches, "--eval-batches")
        lr_bad = self.learning_rate is not None and not 0 < self.learning_rate < math.inf
        if lr_bad or self.warmup_steps < 0 or self.samples < 0:
            raise ValueError("--learning-rate must be > 0 and finite, --warmup-steps and "
                             "--samples >= 0")
        variants = self.variants or {}
        unknown = [m for m in self.models
                   if m not in PRESETS and m not in variants and m != RANDOM_INIT]
        if unknown:
            named = f", variant names ({', '.join(variants)})" if variants else ""
            raise ValueError(f"unknown model {unknown[0]!r}: give preset names "
                             f"({', '.join(PRESETS)}){named} or {RANDOM_INIT}")
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"--models lists a model twice: {', '.join(self.models)}")
        for split in ("val", "train"):
            check_seq_len(TokenDataset(self.data, split), self.seq_len)
        return self

    def seed_list(self) -> list:
        return list(range(self.seeds))

    def budget(self) -> dict:
        return {k: getattr(self, k) for k in BUDGET_FIELDS}

    def variant(self, model: str) -> dict | None:
        return (self.variants or {}).get(model)

    def train_config(self, model: str, seed: int, run_dir: Path, resume: bool) -> TrainConfig:
        """A preset trains from its preset; a variant from its saved initial weights, with
        its learning rate and weight decay given explicitly (a model folder has no preset's
        training defaults to fall back on)."""
        start = dict(preset=model)
        if self.variant(model) is not None:
            start = dict(model=str(variant_init_dir(Path(self.output_dir), model, seed)),
                         learning_rate=model_learning_rate(model, self),
                         weight_decay=model_weight_decay(model, self))
        return TrainConfig(**{"learning_rate": self.learning_rate, **start},
                           data=self.data, output_dir=str(run_dir),
                           batch_size=self.batch_size, seq_len=self.seq_len,
                           max_steps=self.max_steps,
                           warmup_steps=self.warmup_steps, steps_per_eval=self.steps_per_eval,
                           steps_per_report=self.steps_per_report, val_batches=self.val_batches,
                           save_every=self.save_every, seed=seed, resume=resume,
                           kernel=self.kernel)

    def eval_config(self, seed: int, random_init: bool) -> EvalConfig:
        """The same windows for every model and seed (EvalConfig's fixed window seed);
        test 2's random-init comparison uses the run's own seed: its step-0 weights."""
        return EvalConfig(batches=self.eval_batches, batch_size=self.batch_size,
                          seq_len=self.seq_len, samples=self.samples, causality=True,
                          sequences=self.sequences, random_init=random_init,
                          random_init_seed=seed)


def model_learning_rate(model: str, config: StudyConfig) -> float:
    """The learning rate `model` trains with in this study: a variant's own, else the
    study's, else its preset's."""
    if config.variant(model) is not None:
        return variant_train_value(config.variant(model), "learning_rate", config.learning_rate)
    if config.learning_rate is not None:
        return config.learning_rate
    preset = config.preset if model == RANDOM_INIT else model
    return preset_train_defaults(preset)["learning_rate"]


def model_weight_decay(model: str, config: StudyConfig) -> float:
    """The weight decay `model` trains with in this study: a variant's own, else its
    preset's (a study sets none)."""
    if config.variant(model) is not None:
        return variant_train_value(config.variant(model), "weight_decay", None)
    preset = config.preset if model == RANDOM_INIT else model
    return preset_train_defaults(preset)["weight_decay"]


def flag(name: str) -> str:
    return FLAGS.get(name, "--" + name.replace("_", "-"))


def default_models(preset: str) -> list:
    """The K-SSM preset, its three comparisons and the preset evaluated untrained."""
    return [preset, *comparison_presets(preset).values(), RANDOM_INIT]


def variant_init_dir(study_dir: Path, model: str, seed: int) -> Path:
    return study_dir / VARIANTS_DIR / model / f"seed_{seed}"


def check_seq_len(dataset: TokenDataset, seq_len: int) -> None:
    if len(dataset) < seq_len + 1:
        raise ValueError(f"--seq-len {seq_len} is too long for the {dataset.split} split of "
                         f"{dataset.data_dir}: it holds {len(dataset)} tokens and a window needs "
                         f"{seq_len + 1}")


@dataclass
class PlannedRun:
    model: str
    seed: int
    folder: Path

    @property
    def trained(self) -> bool:
        return self.model != RANDOM_INIT

    @property
    def label(self) -> str:
        return f"{self.model} seed {self.seed}"


def plan_runs(config: StudyConfig, study_dir: Path) -> list:
    """Seed by seed, every model: a killed study has comparable results early."""
    return [PlannedRun(model, seed, study_dir / RUNS / model / f"seed_{seed}")
            for seed in config.seed_list() for model in config.models]


@dataclass
class StudyResult:
    status: str  # "completed" or "interrupted"
    exit_code: int
    study_dir: Path
    record: dict = field(default_factory=dict)  # what study.json holds
    written: list = field(default_factory=list)  # report files


# ---------------------------------------------------------------- the study


def run_study(config: StudyConfig, echo=print, argv=None) -> StudyResult:
    """Run (or continue) the study; returns when every run is trained and evaluated, or when
    a run was interrupted (Ctrl-C / SIGTERM: the trainer saved a checkpoint; run again to
    continue). Raises ValueError / DataError / LockError on bad input, before writing."""
    config = config.resolved()
    config.validate()
    config.data_fingerprint = sha256_file(Path(config.data) / "meta.json")
    study_dir = Path(config.output_dir)
    record = open_record(study_dir, config)
    lock.acquire(study_dir, command=" ".join(argv or sys.argv), log=echo)
    try:
        record["commands"].append(command_entry(config, argv))
        record["config"] = config.to_dict()
        save_record(study_dir, record)
        return run_plan(config, study_dir, record, echo)
    finally:
        lock.release(study_dir)


def run_plan(config: StudyConfig, study_dir: Path, record: dict, echo) -> StudyResult:
    """Every planned run in order, study.json saved after each; then the report."""
    from .report import summarize, write_report

    runs = plan_runs(config, study_dir)
    echo(f"== study {study_dir}: {len(config.models)} models x {config.seeds} seeds = "
         f"{len(runs)} runs, {config.max_steps} steps x batch {config.batch_size} x seq "
         f"{config.seq_len} each")
    # earlier invocations' entries stand until this one redoes (or reuses) their run
    entries = {(e["model"], e["seed"]): e for e in record["runs"]}
    for i, run in enumerate(runs, 1):
        entry = do_run(run, config, study_dir, f"[{i}/{len(runs)}]", echo)
        if isinstance(entry, int):
            echo(f"== study interrupted at {run.label}: run the same command to continue")
            return StudyResult("interrupted", entry, study_dir, record)
        entries[(run.model, run.seed)] = entry
        record["runs"] = [entries[(r.model, r.seed)] for r in runs
                          if (r.model, r.seed) in entries]
        record["summary"] = summarize(record["runs"], config.models)
        save_record(study_dir, record)
    written = write_report(study_dir, record, echo)
    return StudyResult("completed", 0, study_dir, record, written)


def open_record(study_dir: Path, config: StudyConfig) -> dict:
    """study.json of an existing study with the same budget, or a new record. Refuses (and
    leaves untouched) a folder that is not a study, or a study with another budget."""
    if study_dir.exists() and not study_dir.is_dir():
        raise ValueError(f"--out {study_dir} exists and is not a folder")
    path = study_dir / STUDY_JSON
    if not path.exists():
        leftovers = [p.name for p in study_dir.iterdir()] if study_dir.exists() else []
        if set(leftovers) - {lock.LOCK_NAME}:  # a lock alone: a study killed at its start
            raise ValueError(f"--out {study_dir} holds files but no {STUDY_JSON}: not a study "
                             "folder; choose a new or empty folder")
        return new_record()
    try:
        record = json.loads(path.read_text("utf-8"))
        saved = StudyConfig(**record["config"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is unreadable ({e}): it holds the study's settings; restore "
                         f"it, or choose another --out (the finished runs under "
                         f"{study_dir / RUNS} stay as they are)") from None
    record = _rebuildable_parts(record)
    changed = [k for k in BUDGET_FIELDS if getattr(saved, k) != getattr(config, k)]
    if changed and (study_dir / RUNS).exists():
        diffs = ", ".join(f"{flag(k)} {getattr(saved, k)} -> {getattr(config, k)}"
                          for k in changed)
        raise ValueError(f"{study_dir} holds a study with another budget ({diffs}): its runs "
                         "would not be comparable; use the same options or another --out")
    _check_same_variants(record, config, study_dir)
    return record


def _check_same_variants(record: dict, config: StudyConfig, study_dir: Path) -> None:
    """A variant name that the study has trained must keep its definition: its runs and
    initial weights were made from it."""
    saved = record.get("config", {}).get("variants") or {}
    for name, variant in (config.variants or {}).items():
        if name in saved and saved[name] != variant and (study_dir / RUNS / name).exists():
            raise ValueError(f"{study_dir} trained variant {name!r} as {saved[name]}, and "
                             f"the variant file now says {variant}: its runs would not match; "
                             "give the changed variant a new name, or use another --out")


def _rebuildable_parts(record: dict) -> dict:
    """`record` with a damaged "commands" or "runs" (a hand-edited study.json) reset or
    pruned rather than trusted: both are rebuilt as the study runs (every planned run's entry
    is redone or reused from its run folder), so dropping a malformed entry loses nothing."""
    if not isinstance(record.get("commands"), list):
        record["commands"] = []
    runs = record.get("runs") if isinstance(record.get("runs"), list) else []
    record["runs"] = [e for e in runs if isinstance(e, dict)
                      and isinstance(e.get("model"), str) and is_int(e.get("seed"))]
    return record


def new_record() -> dict:
    return {"format": FORMAT, "format_version": FORMAT_VERSION,
            "created": _now(), "commands": [], "runs": [], "summary": {},
            "statistics": ("val loss, PPL, tokens/s and effect sizes: mean over seeds with a "
                           "95% Student-t CI (t_{0.975, n-1} sd / sqrt(n)); within a run, each "
                           "causality effect has a 95% percentile-bootstrap CI over held-out "
                           "windows (docs/causality.md)")}


def save_record(study_dir: Path, record: dict) -> None:
    record["updated"] = _now()
    atomic_write_json(study_dir / STUDY_JSON, record)


def command_entry(config: StudyConfig, argv) -> dict:
    return {"started": _now(), "argv": list(argv or sys.argv),
            "equivalent": study_command(config), "environment": environment()}


def study_command(config: StudyConfig) -> str:
    """The `mlx-kssm study` command line that reproduces this study."""
    args = ["mlx-kssm", "study", "--data", config.data, "--out", config.output_dir,
            "--preset", config.preset, "--models", ",".join(config.models),
            "--seeds", config.seeds, "--steps", config.max_steps, "--batch-size",
            config.batch_size, "--seq-len", config.seq_len,
            *(["--learning-rate", config.learning_rate] if config.learning_rate else []),
            *(["--variants", config.variants_file] if config.variants_file else []),
            "--warmup-steps", config.warmup_steps, "--eval-every",
            config.steps_per_eval, "--report-every", config.steps_per_report, "--val-batches",
            config.val_batches, "--save-every", config.save_every, "--eval-batches",
            config.eval_batches, "--sequences", config.sequences, "--samples", config.samples,
            "--kernel", config.kernel]
    return shlex.join(str(a) for a in args)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------- one run


def do_run(run: PlannedRun, config: StudyConfig, study_dir: Path, tag: str, echo) -> dict | int:
    """Train (or reuse, or resume) and evaluate one model-seed: its study.json entry, or the
    trainer's exit status when a signal interrupted training."""
    entry = {"model": run.model, "seed": run.seed, "kind": "trained" if run.trained else "untrained",
             "run_dir": str(run.folder.relative_to(study_dir))}
    if run.trained:
        entry["learning_rate"] = model_learning_rate(run.model, config)
        entry["weight_decay"] = model_weight_decay(run.model, config)
        if config.variant(run.model) is not None:
            entry["variant"] = config.variant(run.model)
            save_initial_weights(config.variant(run.model), run.seed,
                                 TokenDataset(config.data, "train").vocab_size,
                                 variant_init_dir(study_dir, run.model, run.seed))
        status, exit_code = train_run(run, config, tag, echo)
        if status == "interrupted":
            return exit_code
        entry.update(run_figures(run.folder, config))
        entry["commands"] = run_commands(run, config)
        if status == "nan":
            echo(f"== {tag} {run.label}: training diverged (NaN): left out of the summary")
            return entry
        source = final_checkpoint(run.folder, config.max_steps)
    else:
        entry["status"], source = "untrained", None
    entry["evaluation"] = evaluate_run(run, config, source, tag, echo)
    echo(f"== {tag} {run.label}: {one_line(entry['evaluation'])}")
    return entry


def run_state(run_dir: Path, max_steps: int) -> str:
    """"done", "nan" (finished by the NaN guard), "resume" (a checkpoint to continue from) or
    "new". Done = the final checkpoint is complete and history.jsonl ends the run."""
    ends = [e for e in read_history(run_dir) if e.get("event") == "end"]
    last = ends[-1] if ends else {}
    final = ckpt.step_dir(run_dir, max_steps)
    if last.get("status") in ("completed", "early_stopped") and ckpt.is_complete(final):
        return "done"
    if last.get("status") == "nan":
        return "nan"
    return "resume" if ckpt.latest_checkpoint(run_dir) is not None else "new"


def train_run(run: PlannedRun, config: StudyConfig, tag: str, echo) -> tuple:
    """Train the run to the budget unless it is done: (the trainer's status, exit code)."""
    state = run_state(run.folder, config.max_steps)
    if state in ("done", "nan"):
        how = "finished" if state == "done" else "stopped by the NaN guard"
        echo(f"== {tag} {run.label}: {how} earlier: reused")
        return ("completed", 0) if state == "done" else ("nan", 0)
    verb = "resuming" if state == "resume" else "training"
    echo(f"== {tag} {run.label}: {verb} {config.max_steps} steps in {run.folder}")
    run_config = config.train_config(run.model, run.seed, run.folder, state == "resume")
    # the study's --warmup-steps is given to every run as it is reported: never capped
    defaults = TrainConfig()
    explicit = {k for k, v in run_config.to_dict().items() if getattr(defaults, k) != v}
    result = train(run_config, explicit=explicit | {"warmup_steps"}, echo=echo)
    return result.status, result.exit_code


def final_checkpoint(run_dir: Path, max_steps: int) -> Path:
    final = ckpt.step_dir(run_dir, max_steps)
    return final if ckpt.is_complete(final) else ckpt.latest_checkpoint(run_dir)


def run_figures(run_dir: Path, config: StudyConfig) -> dict:
    """Status, parameters, tokens/s and the validation curve from the run's own files. Only
    events after the last `start` count (a run restarted from scratch appends a new start)."""
    history = read_history(run_dir)
    starts = [i for i, e in enumerate(history) if e.get("event") == "start"]
    events = history[starts[-1]:] if starts else history
    ends = [e for e in events if e.get("event") == "end"]
    rates = [e["tokens_per_sec"] for e in events
             if e.get("event") == "train" and e.get("tokens_per_sec")]
    curve = {e["step"]: e["val_loss"] for e in events if e.get("event") == "eval"}
    start = events[0] if events else {}
    return {"status": ends[-1]["status"] if ends else "unknown",
            "steps": ends[-1]["step"] if ends else None,
            "n_parameters": start.get("n_parameters"),
            "tokens_per_sec": sum(rates) / len(rates) if rates else None,
            "val_curve": sorted([s, v] for s, v in curve.items())}


def run_commands(run: PlannedRun, config: StudyConfig) -> dict:
    """The single commands that redo this run by hand."""
    c = config
    start = ["--preset", run.model]
    if c.variant(run.model) is not None:
        start = ["--model", variant_init_dir(Path(c.output_dir), run.model, run.seed)]
    train_cmd = ["mlx-kssm", "train", *start, "--data", c.data, "--output-dir",
                 run.folder, "--max-steps", c.max_steps, "--batch-size", c.batch_size,
                 "--seq-len", c.seq_len, "--learning-rate", model_learning_rate(run.model, c),
                 "--weight-decay", model_weight_decay(run.model, c), "--warmup-steps",
                 c.warmup_steps, "--steps-per-eval", c.steps_per_eval, "--steps-per-report",
                 c.steps_per_report, "--val-batches", c.val_batches, "--save-every",
                 c.save_every, "--seed", run.seed]
    eval_cmd = ["mlx-kssm", "evaluate", "--model", ckpt.step_dir(run.folder, c.max_steps),
                "--data", c.data, "--batches", c.eval_batches, "--batch-size", c.batch_size,
                "--seq-len", c.seq_len, "--samples", c.samples, "--causality", "--sequences",
                c.sequences, "--random-init-seed", run.seed]
    return {"train": shlex.join(str(a) for a in train_cmd),
            "evaluate": shlex.join(str(a) for a in eval_cmd)}


def evaluate_run(run: PlannedRun, config: StudyConfig, source: Path | None, tag: str,
                 echo) -> dict:
    """The run's evaluation, from its cache when the weights and the settings are the same."""
    eval_config = config.eval_config(run.seed, random_init=run.trained)
    key = {"weights": source.name if source else f"init seed {run.seed}",
           "eval_config": eval_config.to_dict(), "data_fingerprint": config.data_fingerprint}
    cached = read_cached_eval(run.folder / RUN_EVAL, key)
    if cached is not None:
        return cached
    echo(f"== {tag} {run.label}: evaluating (loss, samples, causality suite)")
    progress = lambda text: echo(f"   {text}")  # noqa: E731
    if run.trained:
        result = evaluate(source, config.data, eval_config, progress=progress)
    else:
        result = evaluate(untrained_model(config, run.seed), config.data, eval_config,
                          label=f"{RANDOM_INIT} {config.preset} seed {run.seed}",
                          progress=progress)
    for note in result.notes:
        echo(f"warning: {note}")
    figures = result.to_dict()
    atomic_write_json(run.folder / RUN_EVAL, {**key, "result": figures})
    return figures


def untrained_model(config: StudyConfig, seed: int):
    """The preset as the trainer builds it for `seed` before its first step."""
    from ..models import build_model
    vocab = TokenDataset(config.data, "train").vocab_size
    return build_model(config.preset, vocab_size=vocab, seed=seed)


def read_cached_eval(path: Path, key: dict) -> dict | None:
    try:
        cached = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    same = isinstance(cached, dict) and all(cached.get(k) == v for k, v in key.items())
    return cached.get("result") if same else None


def one_line(evaluation: dict) -> str:
    text = f"val loss {evaluation['val_loss']:.4f}, PPL {evaluation['val_ppl']:.2f}"
    c = evaluation.get("causality")
    if not c or not c.get("applicable"):
        return text + "; causality: not applicable"
    i = c["intervention"]
    parts = [f"variance {c['variance']['verdict']}", f"intervention {i['verdict']}"]
    if "random_init" in i:
        parts[-1] += (f" (wired in {i['random_init']['wired_in']['verdict']}, learned "
                      f"{i['random_init']['learned']['verdict']})")
    parts.append(f"correlation {c['correlation']['verdict']}")
    return text + "; causality: " + ", ".join(parts) + f" -> {c['verdict']}"
