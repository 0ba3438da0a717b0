"""Study variants: named models that are a preset with a few options changed, read from a
TOML or JSON file so that an ablation is an input of `mlx-kssm study`, not a second harness.

    # variants.toml: each table is one model of the study, named by its header
    [wide]
    preset = "v1-char-s"                 # any preset (mlx-kssm train --list-presets)
    model = { n_groups = 100 }           # ModelArgs fields (docs/model.md), checked like a
                                         # preset's own
    train = { learning_rate = 3e-3 }     # learning_rate and/or weight_decay (optional)
    description = "twice the oscillators per layer"   # optional, shown in study.md

A variant trains exactly like a preset run: the study builds its initial weights with
`build_model(preset, seed=S, **model)` (so a variant that changes nothing starts from the
preset's own weights for seed S), saves them under STUDY/variants/NAME/seed_S, and trains
from that folder on the same batches as every other model.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from pathlib import Path

from ..models.presets import PRESETS, preset_args, preset_train_defaults

VARIANTS_DIR = "variants"  # STUDY/variants/NAME/seed_S: each variant's initial weights
TRAIN_KEYS = ("learning_rate", "weight_decay")
VARIANT_KEYS = ("preset", "model", "train", "description")
# a variant's name becomes a folder name: letters, digits and . _ - only, no leading dot
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")


def load_variants(path: str | Path) -> dict:
    """{name: {"preset", "model", "train", "description"}} from a .toml or .json file,
    checked (ValueError naming the file and the variant on anything wrong)."""
    path = Path(path)
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"--variants {path}: cannot read it ({e})") from None
    try:
        raw = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except ValueError as e:
        kind = "JSON" if path.suffix == ".json" else "TOML"
        raise ValueError(f"--variants {path}: not valid {kind} ({e})") from None
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"--variants {path}: names no variant (each is a [NAME] table with "
                         "a preset)")
    return check_variants(raw, source=str(path))


def check_variants(raw: dict, source: str = "variants") -> dict:
    """The variants of `raw`, each normalized to its four keys; raises ValueError on an unsafe
    or taken name, an unknown key or preset, a model option the preset cannot build, or a bad
    training value."""
    return {name: _check_variant(name, spec, source) for name, spec in raw.items()}


def _check_variant(name: str, spec, source: str) -> dict:
    where = f"{source}: variant {name!r}"
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"{where}: a name is letters, digits and . _ - (it names a folder)")
    if name in PRESETS or name == "random-init":
        raise ValueError(f"{where}: the name is taken by a preset; choose another")
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: must be a table with a preset")
    unknown = sorted(set(spec) - set(VARIANT_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; a variant has "
                         f"{', '.join(VARIANT_KEYS)}")
    preset = spec.get("preset")
    if preset not in PRESETS:
        raise ValueError(f"{where}: preset {preset!r} is not a preset (mlx-kssm train "
                         "--list-presets)")
    model, train = spec.get("model", {}), spec.get("train", {})
    if not isinstance(model, dict) or not isinstance(train, dict):
        raise ValueError(f"{where}: model and train are tables of options")
    try:
        preset_args(preset, **model)  # refuses unknown and invalid ModelArgs fields
    except (ValueError, TypeError) as e:
        raise ValueError(f"{where}: {e}") from None
    _check_train(where, train)
    return {"preset": preset, "model": dict(model), "train": dict(train),
            "description": str(spec.get("description", ""))}


def _check_train(where: str, train: dict) -> None:
    unknown = sorted(set(train) - set(TRAIN_KEYS))
    if unknown:
        raise ValueError(f"{where}: train option(s) {', '.join(unknown)} are not per-model; "
                         f"a variant may set {', '.join(TRAIN_KEYS)} (the budget is the "
                         "study's)")
    for key, value in train.items():
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        low = 0 if key == "weight_decay" else math.ulp(0)
        if not number or not low <= value < math.inf:
            raise ValueError(f"{where}: train.{key} must be a finite number "
                             f"{'>= 0' if key == 'weight_decay' else '> 0'}, got {value!r}")


def variant_train_value(variant: dict, key: str, study_value):
    """The variant's own learning rate or weight decay, else the study's, else its preset's."""
    if key in variant["train"]:
        return variant["train"][key]
    if study_value is not None:
        return study_value
    return preset_train_defaults(variant["preset"])[key]


def describe(name: str, variant: dict) -> str:
    """One line: name = preset + changes (the study report's variant list)."""
    changes = [f"{k}={v}" for k, v in {**variant["model"], **variant["train"]}.items()]
    text = f"{name} = {variant['preset']}" + (f" with {', '.join(changes)}" if changes else "")
    return text + (f": {variant['description']}" if variant["description"] else "")


def save_initial_weights(variant: dict, seed: int, vocab_size: int, folder: Path) -> Path:
    """The variant's step-0 model for `seed`, saved once (atomically) as a model folder."""
    from ..io import save_model
    from ..models import build_model

    if not (folder / "config.json").exists():
        model = build_model(variant["preset"], vocab_size=vocab_size, seed=seed,
                            **variant["model"])
        save_model(folder, model)
    return folder
