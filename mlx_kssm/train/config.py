"""TrainConfig: every knob of a training run, one dataclass, saved as the run's config.json.

Precedence when a run starts: the dataclass defaults < the preset's training defaults
(batch size, sequence length, learning rate, weight decay) < `--config run.toml|json` <
explicit flags.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .._resources import check_count
from .._types import MAX_SEED, check_value, field_types
from ..data.loader import SAMPLERS

# --stage N trains this many steps and judges the run with stage N's rows (docs/training.md).
STAGE_STEPS = {1: 100, 2: 500, 3: 1500, 4: 5000, 5: 10000}
OPTIMIZERS = ("adamw", "muon")
# the options a preset may recommend (presets.py); the run's own setting wins
PRESET_TRAIN_FIELDS = ("batch_size", "seq_len", "learning_rate", "weight_decay")
# Flags whose change on --resume makes the run leave the uninterrupted trajectory.
TRAJECTORY_FIELDS = ("data", "batch_size", "seq_len", "grad_accum", "seed", "optimizer",
                     "learning_rate", "warmup_steps", "weight_decay", "grad_clip", "grokfast",
                     "min_lr_ratio", "schedule_steps", "muon_lr_scale", "grokfast_alpha",
                     "grokfast_lambda")
# TrainConfig field -> the ModelArgs field it sets on a model built from --preset
# (presets.preset_args checks them as it checks a preset's own)
MODEL_FIELDS = {"d_model": "d_model", "n_layers": "n_layers", "groups": "n_groups",
                "osc_per_group": "osc_per_group", "ffn_hidden": "ffn_hidden",
                "harmonics": "harmonics", "lambda_reg": "lambda_logu"}
MODEL_DIMENSIONS = tuple(name for name in MODEL_FIELDS if name != "lambda_reg")  # each >= 1


@dataclass
class TrainConfig:
    preset: Optional[str] = None  # a preset name (mlx-kssm train --list-presets) ...
    model: Optional[str] = None  # ... or a model folder to start from (weights + config)
    data: Optional[str] = None  # what `mlx-kssm data prepare --out` wrote
    output_dir: str = "runs/run"
    # None: the preset's training default
    batch_size: Optional[int] = None
    seq_len: Optional[int] = None
    learning_rate: Optional[float] = None
    max_steps: int = 1000
    # the cosine's horizon; None = max_steps. Set it above max_steps to train the first
    # part of a longer plan (then --resume --max-steps <plan> continues it exactly)
    schedule_steps: Optional[int] = None
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # cosine decays to learning_rate * min_lr_ratio
    weight_decay: Optional[float] = None  # None: the preset's (presets.DEFAULT_WEIGHT_DECAY)
    grad_accum: int = 1
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    optimizer: str = "adamw"
    # Muon's LR relative to --learning-rate: the seed guides' 5e-3 beside AdamW's 5e-4
    muon_lr_scale: float = 10.0
    grokfast: bool = False
    grokfast_alpha: float = 0.98  # EMA decay of the slow gradient
    # amplification of the slow gradient: g + lambda * ema(g), the Grokfast paper's form and
    # its default (Lee et al. 2024)
    grokfast_lambda: float = 2.0
    steps_per_report: int = 10
    steps_per_eval: int = 200
    val_batches: int = 20
    save_every: int = 500
    keep_last: int = 3
    patience: int = 0  # evaluations without improvement before stopping; 0 = never stop
    min_delta: float = 0.0  # an evaluation improves only if it lowers the best val loss by more
    seed: int = 0
    # training windows: "random" (drawn anew each step) or "epoch" (every token once per pass)
    sampling: str = "random"
    resume: bool = False
    kernel: str = "auto"
    stage: Optional[int] = None
    stop_on_failure: bool = True  # a stage verdict FAILURE stops the run (exit 4)
    # the model of a --preset run, set instead of the preset's (None: the preset's)
    d_model: Optional[int] = None
    n_layers: Optional[int] = None
    groups: Optional[int] = None
    osc_per_group: Optional[int] = None
    ffn_hidden: Optional[int] = None
    harmonics: Optional[int] = None
    lambda_reg: Optional[float] = None  # v3's log-barrier weight on u (ModelArgs.lambda_logu)
    explode_factor: float = 3.0  # loss above this x the running minimum is flagged
    sample_prompts: list = field(default_factory=lambda: ["The ", "To be, or not to be"])
    sample_tokens: int = 40
    # also log reports and evaluations to: "wandb", "tensorboard" or both, comma-separated
    # (train/reporting.py); None: history.jsonl and training.log only
    report_to: Optional[str] = None
    project_name: Optional[str] = None  # the wandb project; None: reporting.DEFAULT_PROJECT

    @classmethod
    def from_dict(cls, params: dict, source: str = "training option") -> "TrainConfig":
        """The config of `params` (keys as the fields, dashes allowed); ValueError naming
        `source` and the key for an unknown key or a value of the wrong type."""
        params = {k.replace("-", "_"): v for k, v in params.items()}
        unknown = sorted(set(params) - set(FIELD_TYPES))
        if unknown:
            raise ValueError(f"unknown training option(s): {', '.join(unknown)}")
        return cls(**{k: checked_value(k, v, source) for k, v in params.items()})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def check_types(self) -> "TrainConfig":
        """Each field holds its type: a config built in Python was not read by from_dict."""
        for f in dataclasses.fields(self):
            checked_value(f.name, getattr(self, f.name), "training option")
        return self

    def validate(self) -> "TrainConfig":
        self.check_types()
        if (self.preset is None) == (self.model is None) and not self.resume:
            raise ValueError("give exactly one of --preset NAME or --model FOLDER")
        if self.data is None:
            raise ValueError("--data DIR is required (the folder `mlx-kssm data prepare` wrote)")
        self._check_finite()
        if not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"--seed must lie in [0, {MAX_SEED}], got {self.seed}")
        if self.stage is not None and self.stage not in STAGE_STEPS:
            raise ValueError(f"--stage must be 1..5, got {self.stage}")
        if self.sampling not in SAMPLERS:
            raise ValueError(f"--sampling must be one of {', '.join(SAMPLERS)}, got "
                             f"{self.sampling!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"--optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        for name in ("max_steps", "grad_accum", "steps_per_report", "steps_per_eval",
                     "val_batches", "save_every", "keep_last", "sample_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        # None: the preset's. Checked here as well as by the click flags: a --config file
        # reaches these fields without them
        for name in ("batch_size", "seq_len", "schedule_steps", *MODEL_DIMENSIONS):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ValueError(f"--learning-rate must be > 0, got {self.learning_rate}")
        for name in ("weight_decay", "warmup_steps", "patience", "grad_clip", "min_delta",
                     "lambda_reg"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {value}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}")
        self._check_hyperparameters()
        for name in ("sample_tokens", "val_batches", "grad_accum"):
            check_count(name, getattr(self, name))
        return self

    def _check_hyperparameters(self) -> None:
        """Values that train without an error but not as meant: a negative Muon scale is
        gradient ascent, an EMA decay outside [0, 1) diverges, a factor <= 1 flags every
        report as an explosion."""
        if not self.muon_lr_scale > 0:
            raise ValueError(f"--muon-lr-scale (Muon's LR as a multiple of --learning-rate) "
                             f"must be > 0, got {self.muon_lr_scale}")
        if not 0 <= self.grokfast_alpha < 1:
            raise ValueError(f"--grokfast-alpha (the EMA decay of the slow gradient) must lie "
                             f"in [0, 1), got {self.grokfast_alpha}")
        if not self.grokfast_lambda >= 0:
            raise ValueError(f"--grokfast-lambda (the slow gradient's amplification) must be "
                             f">= 0, got {self.grokfast_lambda}")
        if not self.explode_factor > 1:
            raise ValueError(f"explode_factor (a loss above this x its running minimum is "
                             f"flagged) must be > 1, got {self.explode_factor}")

    def _check_finite(self) -> None:
        # inf passes every "> 0" check and nan every comparison: both would train to NaN
        for name, (kind, _) in FIELD_TYPES.items():
            value = getattr(self, name)
            if kind is float and value is not None and not math.isfinite(value):
                raise ValueError(f"--{name.replace('_', '-')} must be a finite number, got "
                                 f"{value}")

    @property
    def horizon(self) -> int:
        """Steps the LR schedule spans: max_steps, or schedule_steps when larger."""
        return max(self.max_steps, self.schedule_steps or 0)


FIELD_TYPES = field_types(TrainConfig)  # name -> (type, None allowed: the preset's, or unset)


def checked_value(name: str, value, source: str):
    """`value` for field `name` if it has the field's type (None where the field allows it; an
    int where a float is due, as a float), else ValueError naming `source` and `name`."""
    kind, optional = FIELD_TYPES[name]
    check_value(name, value, kind, optional, f"{source} ")
    return float(value) if kind is float and value is not None else value


def read_config_file(path) -> dict:
    """Options from a .toml or .json file (keys as in TrainConfig; dashes allowed)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--config {path}: no such file")
    try:
        if path.suffix == ".toml":
            raw = tomllib.loads(path.read_text("utf-8"))
        elif path.suffix == ".json":
            raw = json.loads(path.read_text("utf-8"))
        else:
            raise ValueError(f"--config {path}: expected a .toml or .json file")
    except UnicodeDecodeError as e:
        raise ValueError(f"--config {path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at "
                         f"offset {e.start}): save it as UTF-8") from None
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"--config {path}: {e}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"--config {path}: expected a table of options")
    options = {k.replace("-", "_"): v for k, v in raw.items()}
    unknown = sorted(set(options) - set(FIELD_TYPES))
    if unknown:
        raise ValueError(f"--config {path}: unknown training option(s): {', '.join(unknown)}")
    return {k: checked_value(k, v, f"--config {path}:") for k, v in options.items()}


def build_config(file_options: dict | None = None, flags: dict | None = None) -> TrainConfig:
    """Defaults < config file < flags (flags given as None are 'not given')."""
    merged = dict(file_options or {})
    merged.update({k: v for k, v in (flags or {}).items() if v is not None})
    config = TrainConfig.from_dict(merged)
    if config.stage is not None and "max_steps" not in merged:
        config.max_steps = STAGE_STEPS.get(config.stage, config.max_steps)
    return config


def config_from_options(config_file, flags: dict) -> tuple:
    """(TrainConfig, the option names the user set) from a run.toml / run.json (or None) and
    the command line's flags (None = not given). The names set are what --resume takes from
    the command line instead of the saved run."""
    file_options = read_config_file(config_file) if config_file else {}
    explicit = set(file_options) | {k for k, v in flags.items() if v is not None}
    return build_config(file_options, flags), explicit


def fill_preset_defaults(config: TrainConfig, defaults: dict) -> TrainConfig:
    """Batch size, sequence length, learning rate and weight decay the preset recommends,
    where not set."""
    return config.replace(**{k: defaults[k] for k in PRESET_TRAIN_FIELDS
                             if getattr(config, k) is None and k in defaults})
