"""Checkpoints: RUN/checkpoints/step_N/{config.json, model.safetensors, optimizer.safetensors,
trainer_state.json}, RUN/checkpoints/latest (the newest step folder's name) and RUN/best/.

Crash safety: a checkpoint is written whole under a temporary folder name, fsynced, then
renamed to step_N (a rename is atomic), and only then is `latest` replaced (atomically) and
older folders rotated away (renamed out of sight before deletion). So a SIGKILL at any moment
leaves `latest`, or failing that the newest complete step folder, loadable. No pickle: arrays
in safetensors, everything else JSON.

Resume (`resumable_checkpoint`) takes the newest checkpoint that loads and whose arrays are
finite; one that does not (a damaged disk, a NaN written by a diverging run) is skipped with
a warning naming it, and left in place. `--resume-from` names the step folder itself; the
checkpoints after it are moved to checkpoints/superseded/ (kept, out of the way of a later
--resume).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx

from .._files import (atomic_write_text, fsync_dir, inside, recover_swap, remove_stale_temps,
                      replacing_folder, temp_tag)
from ..io import (BEST, CONFIG, STATE, WEIGHTS, ModelLoadError, atomic_save_safetensors,
                  check_finite, load_weights_dict, read_config, write_model_folder)

CHECKPOINTS = "checkpoints"
LATEST = "latest"
OPTIMIZER = "optimizer.safetensors"
SUPERSEDED = "superseded"  # checkpoints/superseded/: later checkpoints --resume-from set aside
METRICS = "metrics.json"
STEP_NAME = re.compile(r"step_\d+")  # what `latest` may hold: a folder of this run's checkpoints


@dataclass
class Checkpoint:
    path: Path
    config: dict  # the model folder's config.json
    weights: dict  # model parameters
    optimizer: dict  # optimizer (and Grokfast) arrays, flat names
    state: dict  # trainer_state.json


def step_dir(run_dir, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step_{step}"


def _remove_dir(path: Path) -> None:
    """Rename out of sight first, so a half-deleted folder never looks like a checkpoint."""
    if not path.exists():
        return
    trash = path.with_name(f".{path.name}.{temp_tag()}.trash")
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _write_folder(tmp: Path, model, optimizer_arrays: dict | None, state: dict,
                  tokenizer_spec: dict | None, metrics: dict | None = None,
                  tokenizer_root=None) -> None:
    """Write a checkpoint under the temporary name `tmp`; on any failure (a full disk) the
    partial folder is removed at once, so it does not hold the space until the next start."""
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        # the tokenizer's files (vocabulary map) are copied in: every folder is self-contained.
        # Not save_model: `tmp` is the trainer's own fresh folder and its tokenizer was checked
        # against the data when the run started, so save_model's checks would only reload it
        write_model_folder(tmp, model, tokenizer_spec=tokenizer_spec,
                           tokenizer_root=tokenizer_root)
        if optimizer_arrays is not None:
            atomic_save_safetensors(tmp / OPTIMIZER, optimizer_arrays)
        if metrics is not None:
            atomic_write_text(tmp / METRICS, json.dumps(metrics, indent=2))
        atomic_write_text(tmp / STATE, json.dumps(state, indent=2))  # last: marks it complete
        fsync_dir(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_checkpoint(run_dir, step: int, model, optimizer_arrays: dict, state: dict,
                    tokenizer_spec: dict | None = None, keep_last: int = 3,
                    tokenizer_root=None) -> Path:
    """Write step_N atomically, point `latest` at it, keep the newest `keep_last`."""
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = step_dir(run_dir, step)
    tmp = root / f".step_{step}.{temp_tag()}.tmp"
    _write_folder(tmp, model, optimizer_arrays, state, tokenizer_spec,
                  tokenizer_root=tokenizer_root)
    if final.exists():  # the same step saved again (e.g. at exit right after a periodic save)
        _remove_dir(final)
    os.replace(tmp, final)
    fsync_dir(root)
    atomic_write_text(root / LATEST, final.name + "\n")
    rotate(run_dir, keep_last, up_to=step)
    return final


def save_best(run_dir, model, state: dict, metrics: dict, tokenizer_spec: dict | None,
              tokenizer_root=None) -> Path:
    """RUN/best/: a model folder plus the trainer state and eval metrics that made it best,
    replaced whole (the previous best/ stays until the new one is complete)."""
    best = Path(run_dir) / BEST
    with replacing_folder(best) as tmp:
        _write_folder(tmp, model, None, state, tokenizer_spec, metrics, tokenizer_root)
    return best


def is_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in (CONFIG, WEIGHTS, OPTIMIZER, STATE))


def list_checkpoints(run_dir) -> list:
    """Complete step folders, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    folders = [p for p in root.glob("step_*") if p.is_dir() and p.name[5:].isdigit()]
    return sorted((p for p in folders if is_complete(p)), key=lambda p: int(p.name[5:]))


def latest_checkpoint(run_dir) -> Path | None:
    """The folder `latest` names if complete, else the newest complete step folder.
    ModelLoadError when `latest` names anything but a step folder of this run."""
    root = Path(run_dir) / CHECKPOINTS
    named = _latest_pointer(root)
    folders = list_checkpoints(run_dir)
    if named is not None and is_complete(named) and folders:
        # a kill between rename and pointer update leaves a newer complete folder
        return folders[-1] if int(folders[-1].name[5:]) > int(named.name[5:]) else named
    return folders[-1] if folders else None


def _latest_pointer(root: Path) -> Path | None:
    """The folder RUN/checkpoints/latest names; None without one (missing or empty). A name
    this trainer never writes ("../../other/checkpoints/step_9", a link out of the folder) is
    refused: resuming from it would train another run's model and rotate this run's own
    checkpoints away."""
    path = root / LATEST
    try:
        name = path.read_bytes().decode("utf-8", errors="replace").strip()
    except OSError:
        return None
    if not name:
        return None
    named = inside(root, name) if STEP_NAME.fullmatch(name) else None
    if named is None:
        raise ModelLoadError(f"{path} names {name[:80]!r}, not a checkpoint of this run (a "
                             f"step_N folder in {root}): remove it (the newest complete "
                             "checkpoint is used then) or write such a folder's name into it")
    return named


def step_of(folder: Path) -> int:
    return int(folder.name[5:])


def rotate(run_dir, keep_last: int, up_to: int | None = None) -> None:
    """Keep the newest `keep_last` checkpoints up to step `up_to`. Later ones (one a resume
    skipped as unreadable) are left alone: counting them could rotate the good ones away."""
    folders = [f for f in list_checkpoints(run_dir) if up_to is None or step_of(f) <= up_to]
    for old in folders[:-keep_last] if keep_last > 0 else []:
        _remove_dir(old)


def recover(run_dir) -> list:
    """Tidy what a killed trainer left: temp files and folders (checkpoints, best/, history,
    config, `latest`, trash), a best/ caught mid-swap. Returns messages saying what was done."""
    run_dir = Path(run_dir)
    notes = []
    had_best = (run_dir / BEST).exists()
    recover_swap(run_dir / BEST)
    if not had_best and (run_dir / BEST).exists():
        notes.append("restored best/ from an interrupted update")
    for folder in (run_dir, run_dir / CHECKPOINTS):
        notes += [f"removed leftover {name}" for name in remove_stale_temps(folder)]
    return notes


def load_checkpoint(folder) -> Checkpoint:
    folder = Path(folder)
    if not is_complete(folder):
        raise ModelLoadError(f"{folder} is not a complete checkpoint (needs {CONFIG}, {WEIGHTS}, "
                             f"{OPTIMIZER}, {STATE})")
    try:
        state = json.loads((folder / STATE).read_text())
        optimizer = mx.load(str(folder / OPTIMIZER))
    except Exception as e:  # corrupt JSON or safetensors
        raise ModelLoadError(f"{folder}: checkpoint unreadable: {e}") from None
    if not isinstance(state, dict):
        raise ModelLoadError(f"{folder / STATE} is not a JSON object: checkpoint unreadable")
    weights = load_weights_dict(folder)
    # never resumed from, even for inspection: the run would only go on computing NaN
    check_finite(weights, folder / WEIGHTS, allow=False)
    check_finite(optimizer, folder / OPTIMIZER, what="optimizer", allow=False)
    return Checkpoint(folder, read_config(folder), weights, optimizer, state)


def resumable_checkpoint(run_dir, notes: list) -> Checkpoint | None:
    """The newest checkpoint that loads with finite arrays (the one `latest_checkpoint`
    names first), or None when the run has none. Each skipped one gets a WARNING in `notes`
    (it is not deleted); when none loads, the newest one's error is raised."""
    first = latest_checkpoint(run_dir)
    if first is None:
        return None
    candidates = [first] + [f for f in reversed(list_checkpoints(run_dir)) if f != first]
    skipped = []
    for folder in candidates:
        try:
            loaded = load_checkpoint(folder)
        except ModelLoadError as e:
            skipped.append((folder, e))
            continue
        for bad, error in skipped:
            notes.append(f"WARNING: checkpoint {bad} skipped, it cannot be resumed from: "
                         f"{error}. Resuming from {folder.name}, the newest good one; "
                         f"{bad.name} is left as it is (nothing deleted)")
        return loaded
    first_error = skipped[0][1]
    raise type(first_error)(f"no checkpoint in {Path(run_dir) / CHECKPOINTS} can be resumed "
                            f"from ({len(skipped)} tried); the newest: {first_error}")


def checkpoint_to_resume_from(run_dir, named) -> Path:
    """The folder --resume-from names, which must be a step_N folder of this run's
    checkpoints/ (resolved, so a link or '..' cannot reach another run)."""
    root = (Path(run_dir) / CHECKPOINTS).resolve()
    folder = Path(named)
    if not folder.is_dir():
        raise ModelLoadError(f"--resume-from {named}: no such folder (give a step_N folder in "
                             f"{Path(run_dir) / CHECKPOINTS})")
    folder = folder.resolve()
    if folder.parent != root or not STEP_NAME.fullmatch(folder.name):
        raise ModelLoadError(f"--resume-from {named} is not a checkpoint of this run: give a "
                             f"step_N folder in {Path(run_dir) / CHECKPOINTS}")
    return Path(run_dir) / CHECKPOINTS / folder.name


def set_aside_later(run_dir, step: int) -> list:
    """Move the step folders after `step` to checkpoints/superseded/<time>/ and point
    `latest` at step_`step`: the run goes on from there, and a later --resume must not jump
    back to the abandoned branch. Returns the names moved."""
    root = Path(run_dir) / CHECKPOINTS
    later = [f for f in root.glob("step_*") if f.is_dir() and f.name[5:].isdigit()
             and step_of(f) > step]
    if later:
        aside = root / SUPERSEDED / time.strftime("%Y%m%d-%H%M%S")
        aside.mkdir(parents=True, exist_ok=True)
        for folder in sorted(later, key=step_of):
            os.replace(folder, aside / folder.name)
        fsync_dir(root)
    atomic_write_text(root / LATEST, f"step_{step}\n")
    return sorted((f.name for f in later), key=lambda n: int(n[5:]))
