"""Model folders in the mlx-lm layout: config.json + model.safetensors ({"format": "mlx"}).

A folder holds `config.json` (ModelArgs plus "tokenizer": the tokenizer spec) and the weights,
sharded with `model.safetensors.index.json` above `max_shard_bytes` as mlx-lm does. Every
file is written to a temporary name and renamed, config.json last, so a crash never leaves a
folder whose config points at half-written weights.

`resolve_model_dir` accepts an exported folder, a training run folder (its `best/`, else its
newest checkpoint), or a checkpoint folder, so every command takes any of them. best/ is
replaced by two renames (best/ -> .best.old, the new one -> best/): a reader that finds no
best/ in between, or after a kill there, uses .best.old, the complete previous best.

Weights that are not finite (NaN, Inf: a diverged run) are refused on load, naming the
tensors; `loading_options(allow_nonfinite=True)` (the CLI's --allow-nonfinite) loads them for
inspection.

Tokenizer files travel with the weights: a compaction map (`vocab_map.npy`) or a `.tiktoken`
ranks file named by the tokenizer spec is copied into the folder and the spec points at the
copy (relative to the folder), so an exported folder needs nothing else (`export_model`, mlx_kssm/export/exporter.py).
"""

from __future__ import annotations

import contextvars
import copy
import json
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from ._files import (atomic_open, atomic_write_text, describe_os_error, foreign_entries,
                     inside, replacing_folder, visible_entries, with_message)
from .data.loader import check_tokenizer
from .data.tokenizer import TIKTOKEN_FILE  # a custom BPE ranks file copied into a model folder
from .models import ModelArgs, build_model

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
MAX_SHARD_BYTES = 2 << 30
VOCAB_MAP = "vocab_map.npy"  # compaction map copied into a model folder
DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}
SHARD = re.compile(r"model-\d+-of-\d+\.safetensors")
# keys every saved config.json has (mlx-kssm 0.1's included): what marks a model config
MODEL_CONFIG_KEYS = ("vocab_size", "d_model", "n_layers")
BEST = "best"  # a training run's best model folder
BEST_OLD = f".{BEST}.old"  # the previous best/ while (or if a kill stopped) its replacement
STATE = "trainer_state.json"  # a checkpoint's trainer state (train/checkpoint.py), its seed too
NONFINITE_SHOWN = 3  # tensors a non-finite refusal names


class ModelLoadError(Exception):
    """A model folder that cannot be loaded; the message says what and where."""


class NonFiniteWeights(ModelLoadError):
    """Weights holding NaN or Inf: the folder reads, but the model computes nothing usable."""


# set for one command by `loading_options` (the CLI's --allow-nonfinite; where loads are noted)
_ALLOW_NONFINITE = contextvars.ContextVar("allow_nonfinite", default=False)
_NOTE = contextvars.ContextVar("load_note", default=None)


class _Notes:
    """Lines about what a load resolved to, held until the load succeeds (a failed one ends
    in its one error line alone), each said once."""

    def __init__(self, emit):
        self.emit, self.pending, self.said = emit, [], set()

    def add(self, line: str) -> None:
        if line not in self.said and line not in self.pending:
            self.pending.append(line)

    def flush(self) -> None:
        for line in self.pending:
            self.said.add(line)
            self.emit(line)
        self.pending = []


@contextmanager
def loading_options(allow_nonfinite: bool = False, note=None):
    """Within the block, every load accepts non-finite weights if `allow_nonfinite` (for
    forensic use), and `note(line)` hears, once a load succeeded, which folder a run folder
    resolved to."""
    tokens = (_ALLOW_NONFINITE.set(allow_nonfinite),
              _NOTE.set(None if note is None else _Notes(note)))
    try:
        yield
    finally:
        _NOTE.reset(tokens[1])
        _ALLOW_NONFINITE.reset(tokens[0])


def _note(line: str) -> None:
    notes = _NOTE.get()
    if notes is not None:
        notes.add(line)


def _notes_said() -> None:
    notes = _NOTE.get()
    if notes is not None:
        notes.flush()


def nonfinite_tensors(arrays: dict) -> list:
    """Names of the floating arrays holding NaN or Inf, in name order."""
    names = sorted(k for k, v in arrays.items() if mx.issubdtype(v.dtype, mx.floating))
    if not names:
        return []
    flags = mx.stack([mx.all(mx.isfinite(arrays[k])) for k in names])
    return [k for k, ok in zip(names, flags.tolist()) if not ok]


def check_finite(arrays: dict, source, what: str = "weight",
                 allow: bool | None = None) -> None:
    """NonFiniteWeights naming the first tensors (and their count) that hold NaN or Inf,
    unless `allow` (default: what `loading_options` set)."""
    if _ALLOW_NONFINITE.get() if allow is None else allow:
        return
    bad = nonfinite_tensors(arrays)
    if bad:
        shown = ", ".join(bad[:NONFINITE_SHOWN]) + (", ..." if len(bad) > NONFINITE_SHOWN else "")
        # the option is named only where it governs the load (a resume never takes NaN)
        hint = " (--allow-nonfinite loads it anyway, for inspection)" if allow is None else ""
        raise NonFiniteWeights(
            f"{source}: {len(bad)} of {len(arrays)} {what} tensors hold NaN or Inf ({shown}): "
            f"the model diverged or the file is damaged; refused{hint}")


def atomic_save_safetensors(path: Path, arrays: dict, metadata: dict | None = None) -> None:
    # through a Python file: a failed write raises the OS's error (ENOSPC: "No space left on
    # device", naming the file), where MLX's own writer only says "Unable to write N bytes"
    with atomic_open(path, "wb") as f:
        mx.save_safetensors(f, arrays, metadata=metadata or {})


def bundle_tokenizer(spec, folder, root=None):
    """Copy the files a tokenizer spec names (compaction map, .tiktoken file) into `folder`
    and return the spec rewritten to name the copies (relative to `folder`). `root` is where
    the spec's relative names live now (the prepared data folder, or the source model folder);
    a named file that is not there is an error, never a folder that points at nothing."""
    if isinstance(spec, str):  # a name or a .tiktoken path: its dict form names the file
        from .data.errors import DataError
        from .data.tokenizer import normalize_spec
        try:
            spec = normalize_spec(spec, root)
        except DataError as e:
            raise ModelLoadError(f"tokenizer spec {spec!r}: {e}") from None
    if not isinstance(spec, dict):
        return spec
    spec = copy.deepcopy(spec)
    folder = Path(folder)
    if (spec.get("compaction") or {}).get("map_file"):
        spec["compaction"]["map_file"] = _copy_into(root, spec["compaction"]["map_file"],
                                                    folder / VOCAB_MAP, "vocabulary map")
    if spec.get("kind") == "tiktoken_file":
        spec["path"] = _copy_into(root, spec["path"], folder / TIKTOKEN_FILE, "tokenizer file")
    return spec


def _copy_into(root, name, dest: Path, what: str) -> str:
    """Copy the file `name` (relative to `root`; a spec read from a folder may not name a file
    outside it) to `dest`; returns the name the spec gives the copy."""
    src = Path(name) if root is None else inside(root, name)
    if src is None:
        raise ModelLoadError(f"the {what} {name!r} named by the tokenizer spec lies outside "
                             f"{root}: refused")
    if not src.is_file():
        raise ModelLoadError(f"the {what} {src} named by the tokenizer spec does not exist")
    if src.resolve() != dest.resolve():
        with open(src, "rb") as source, atomic_open(dest, "wb") as target:
            shutil.copyfileobj(source, target)
    return dest.name


def save_model(path, model, tokenizer_spec: dict | None = None, dtype=None,
               max_shard_bytes: int = MAX_SHARD_BYTES, extra_config: dict | None = None,
               tokenizer_root=None) -> Path:
    """Write `model` as a self-contained folder; returns its path. `dtype` (an mx dtype or
    "float16"/"bfloat16"/"float32") casts the floating-point weights; files the tokenizer spec
    names are copied in from `tokenizer_root` (see `bundle_tokenizer`); `extra_config` adds
    keys to config.json (never a model argument's).

    `path` is new, empty or an earlier saved model (replaced); a folder holding anything else
    is refused. Every argument is checked before anything is created, so a folder this writes
    always loads back."""
    if not os.fspath(path):  # Path("") is ".": an empty string would write into the cwd
        raise ValueError("save_model: the folder path is empty: name a folder")
    path = Path(path)
    dtype = check_dtype(dtype, path)
    _check_extra_config(extra_config, model, path)
    _check_tokenizer_spec(tokenizer_spec, model, tokenizer_root, path)
    check_replaceable(path, is_saved_file, "save_model", ValueError, label="save_model: ")
    args = (model, tokenizer_spec, dtype, max_shard_bytes, extra_config, tokenizer_root)
    # an earlier save is replaced whole, so a failure (a full disk) leaves it loadable rather
    # than new shards under the old config; the current folder cannot be renamed away
    # under the process, so it alone is written in place (config.json last)
    if not visible_entries(path) or path.resolve() == Path.cwd().resolve():
        return write_model_folder(path, *args)
    try:
        with replacing_folder(path.resolve()) as tmp:
            write_model_folder(tmp, *args)
    except OSError as e:
        raise with_message(e, f"save_model to {path} failed: {describe_os_error(e)}; {path} "
                              "is left as it was") from None
    return path


def check_dtype(dtype, path: Path):
    """The mx dtype to cast to, or None. Only floating dtypes: integer weights fail to load."""
    if dtype is None:
        return None
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"save_model {path}: dtype must be one of {', '.join(DTYPES)}, "
                             f"got {dtype!r}")
        return DTYPES[dtype]
    if not any(dtype == d for d in DTYPES.values()):
        raise ValueError(f"save_model {path}: dtype must be a floating dtype "
                         f"({', '.join(DTYPES)}), got {dtype!r}")
    return dtype


def _check_extra_config(extra_config, model, path: Path) -> None:
    """Extra keys may not override the model's arguments (the weights would not fit the
    config) nor the tokenizer spec (checked separately), and must be JSON."""
    if extra_config is None:
        return
    if not isinstance(extra_config, dict):
        raise ValueError(f"save_model {path}: extra_config must be a dict, got "
                         f"{type(extra_config).__name__}")
    clash = sorted(k for k in extra_config if k in model.args.to_dict() or k == "tokenizer")
    if clash:
        raise ValueError(f"save_model {path}: extra_config may not override the model's "
                         f"own config keys: {', '.join(map(repr, clash))}")
    try:
        json.dumps(extra_config)
    except (TypeError, ValueError) as e:
        raise ValueError(f"save_model {path}: extra_config is not JSON: {e}") from None


def _check_tokenizer_spec(spec, model, root, path: Path) -> None:
    """The spec must name a tokenizer that loads and fits the model's embedding, as `load`
    will demand of the folder."""
    if spec is None:
        return
    from .data.errors import DataError
    from .data.tokenizer import load_tokenizer, normalize_spec
    try:
        normalize_spec(spec, root)  # the fields, before any file is read
        vocab_size = load_tokenizer(spec, root).vocab_size
    except DataError as e:
        raise ModelLoadError(f"save_model {path}: tokenizer spec {spec!r}: {e}") from None
    if vocab_size > model.args.vocab_size:
        raise ModelLoadError(f"save_model {path}: the tokenizer has {vocab_size} ids but the "
                             f"model's vocab_size is {model.args.vocab_size}")


def is_model_config(folder) -> bool:
    """Whether `folder`/config.json is one a save wrote: a JSON object with the model's core
    arguments that ModelArgs.from_config accepts. The name alone proves nothing: a user's own
    config.json ({"app": 1}) must never be replaced."""
    try:
        config = read_config(folder)
        ModelArgs.from_config(config)
    except (ModelLoadError, OSError, TypeError, ValueError):
        return False
    return all(key in config for key in MODEL_CONFIG_KEYS)


def check_replaceable(folder: Path, belongs, writer: str, error=ModelLoadError,
                      label: str = "") -> None:
    """`folder` is new, empty, or an earlier model folder: only names `belongs` claims, and a
    config.json that is a model config. Anything else is refused with `error`, never replaced.
    `label` starts the message (the option that named the folder)."""
    where = f"{label}{folder}"
    if folder.exists() and not folder.is_dir():
        raise error(f"{where} exists and is not a folder")
    foreign = foreign_entries(folder, belongs)
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise error(f"{where} holds files {writer} does not write ({shown}): choose a new or "
                    "empty folder, or an earlier one to replace")
    if visible_entries(folder) and not is_model_config(folder):
        raise error(f"{where} is not an earlier model folder ({folder / CONFIG} is missing or "
                    f"not a model config): {writer} will not replace it; choose a new or "
                    "empty folder")


def write_model_folder(path: Path, model, tokenizer_spec=None, dtype=None,
                       max_shard_bytes: int = MAX_SHARD_BYTES, extra_config=None,
                       tokenizer_root=None) -> Path:
    """Write the folder, unchecked: for a fresh folder its caller owns and arguments it has
    checked (save_model's own, an export's or a checkpoint's temporary folder)."""
    path.mkdir(parents=True, exist_ok=True)
    if tokenizer_spec is not None:
        tokenizer_spec = bundle_tokenizer(tokenizer_spec, path, tokenizer_root)
    weights = dict(tree_flatten(model.parameters()))
    if dtype is not None:
        weights = {k: v.astype(dtype) if mx.issubdtype(v.dtype, mx.floating) else v
                   for k, v in weights.items()}
    shards, current, size = [], {}, 0
    for name, value in weights.items():
        if current and size + value.nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = value
        size += value.nbytes
    shards.append(current)
    meta = {"format": "mlx"}
    names = [WEIGHTS] if len(shards) == 1 else [
        f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for name, shard in zip(names, shards):
        atomic_save_safetensors(path / name, shard, meta)
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(v.nbytes for v in weights.values())},
                 "weight_map": {k: name for name, shard in zip(names, shards) for k in shard}}
        atomic_write_text(path / INDEX, json.dumps(index, indent=2))
    elif (path / INDEX).exists():  # an earlier sharded save: its index must not win
        (path / INDEX).unlink()
    config = {**model.args.to_dict(), **(extra_config or {})}
    if tokenizer_spec is not None:
        config["tokenizer"] = tokenizer_spec
    atomic_write_text(path / CONFIG, json.dumps(config, indent=2))
    # only now drop the shards an earlier save left that the new layout does not use (the
    # folder was checked to be a saved model: these are its files)
    for stale in path.glob("model*.safetensors"):
        if stale.name not in names and is_saved_file(stale.name):
            stale.unlink()
    return path


def read_config(path) -> dict:
    cfg = Path(path) / CONFIG
    if not cfg.exists():
        raise ModelLoadError(f"{cfg} not found: not a model folder")
    try:
        config = json.loads(cfg.read_text())
    except ValueError as e:
        raise ModelLoadError(f"{cfg} is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{cfg} holds a JSON {type(config).__name__}, not an object of "
                             "model settings: not a model config")
    return config


def load_weights_dict(path) -> dict:
    path = Path(path)
    if (path / INDEX).exists():
        files = _shard_files(path)
    elif (path / WEIGHTS).exists():
        files = [WEIGHTS]
    else:
        raise ModelLoadError(f"no {WEIGHTS} (or {INDEX}) in {path}")
    weights = {}
    for name in files:
        try:
            weights.update(mx.load(str(path / name)))
        except Exception as e:  # corrupt or truncated file
            raise ModelLoadError(f"{path / name} could not be read: {e}") from None
    return weights


def _shard_files(path: Path) -> list:
    """The shard files the index names, each a file inside the model folder."""
    try:
        names = set(json.loads((path / INDEX).read_text())["weight_map"].values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ModelLoadError(f"{path / INDEX} is not a shard index: {e}") from None
    outside = sorted(repr(n) for n in names if not isinstance(n, str) or inside(path, n) is None)
    if outside:
        raise ModelLoadError(f"{path / INDEX} names shards outside {path}: "
                             f"{', '.join(outside[:3])}: refused")
    return sorted(names)


def apply_weights(model, weights: dict, source: str = "weights") -> None:
    """Load `weights` into `model`, naming every tensor that is missing, extra or misshapen."""
    # Every folder and checkpoint load passes here: weights an earlier version saved in
    # another layout (K-SSM v3's ten core projections) are converted to this one's, so old
    # folders keep loading and computing what they did
    weights = model.upgrade_saved(weights)
    expected = dict(tree_flatten(model.parameters()))
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    bad = [f"{k}: file {tuple(weights[k].shape)} vs model {tuple(v.shape)}"
           for k, v in expected.items() if k in weights and weights[k].shape != v.shape]
    # float16/bfloat16 <-> float32 is a cast; integer (or bool) weights are not weights at all
    floating = lambda a: mx.issubdtype(a.dtype, mx.floating)  # noqa: E731
    bad += [f"{k}: file dtype {weights[k].dtype} vs model {v.dtype}"
            for k, v in expected.items() if k in weights and floating(weights[k]) != floating(v)]
    problems = ([f"missing {k}" for k in missing] + [f"unexpected {k}" for k in extra] + bad)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; ... {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ModelLoadError(f"{source} does not fit the model config: {shown}")
    model.update(tree_unflatten([(k, v.astype(expected[k].dtype)) for k, v in weights.items()]))
    mx.eval(model.parameters())


def resolve_model_dir(path) -> Path:
    """An exported folder, a run folder (best/, else newest checkpoint) or a checkpoint. A
    run folder's choice is noted (see `loading_options`)."""
    path = Path(path)
    if path.name == BEST and not _is_model_folder(path):
        previous = _previous_best(path.parent)  # best/ caught between its two renames
        if previous is not None:
            _note(f"{path} is being replaced (or a kill stopped its replacement): loading the "
                  f"previous best, {previous}")
            return previous
    if not path.exists():
        raise ModelLoadError(f"{path} does not exist")
    if _is_model_folder(path):
        return path
    best = _run_best(path)
    if best is not None:
        _note(f"{path} is a training run: loading its best checkpoint, {best}")
        return best
    ckpts = sorted((p for p in path.glob("checkpoints/step_*") if (p / CONFIG).exists()),
                   key=lambda p: int(p.name.split("_")[-1]))
    if ckpts:
        _note(f"{path} is a training run without a complete best/: loading its newest "
              f"checkpoint, {ckpts[-1]}")
        return ckpts[-1]
    raise ModelLoadError(f"{path} holds no model: expected config.json + {WEIGHTS}, "
                         "a run folder with best/ or checkpoints/step_N/")


def _is_model_folder(path: Path) -> bool:
    return (path / CONFIG).exists() and ((path / WEIGHTS).exists() or (path / INDEX).exists())


def _previous_best(run: Path) -> Path | None:
    old = run / BEST_OLD
    return old if _is_model_folder(old) else None


def _run_best(run: Path) -> Path | None:
    """RUN/best, or while it is swapped RUN/.best.old; the swap may complete between two
    looks, so a few are taken before concluding the run has no best."""
    for _ in range(3):
        if _is_model_folder(run / BEST):
            return run / BEST
        previous = _previous_best(run)
        if previous is not None:
            return previous
        if not (run / BEST).exists():
            return None
    return None


def load_model(path, allow_nonfinite: bool | None = None):
    """(model, config dict) from any folder `resolve_model_dir` accepts. Weights holding NaN
    or Inf are refused (NonFiniteWeights) unless `allow_nonfinite` (default: what
    `loading_options` set)."""
    _, model, config = _load_resolved(path, allow_nonfinite)
    return model, config


def _load_resolved(path, allow_nonfinite: bool | None = None):
    """(folder, model, config), and the notes on what `path` resolved to said."""
    loaded = _load_resolved_once(path, allow_nonfinite)
    _notes_said()
    return loaded


def _load_resolved_once(path, allow_nonfinite: bool | None = None):
    """(folder, model, config). A best/ that the trainer replaced while it was read (its
    files renamed away) is resolved and read again, once."""
    folder = resolve_model_dir(path)
    try:
        return folder, *_load_model(folder, allow_nonfinite)
    except ModelLoadError:
        if folder.name not in (BEST, BEST_OLD) or _is_model_folder(folder):
            raise
    if folder.name == BEST_OLD:
        path = folder.parent / BEST
    folder = resolve_model_dir(path)
    return folder, *_load_model(folder, allow_nonfinite)


def _load_model(folder: Path, allow_nonfinite: bool | None):
    config = read_config(folder)
    try:
        model = build_model(ModelArgs.from_config(config))
    except (TypeError, ValueError) as e:
        raise ModelLoadError(f"{folder / CONFIG}: {e}") from None
    weights = load_weights_dict(folder)
    check_finite(weights, folder, allow=allow_nonfinite)
    if config.get("quantization") is not None:  # ours or mlx_lm.convert -q's (quantize.py)
        from .quantize import apply_quantization
        try:
            apply_quantization(model, config["quantization"], weights)
        except ValueError as e:
            raise ModelLoadError(f"{folder / CONFIG}: {e}") from None
    apply_weights(model, weights, source=str(folder))
    return model, config


def load(path, allow_nonfinite: bool | None = None):
    """(model, tokenizer) from a model folder; tokenizer is None if the folder names none."""
    _, model, tokenizer = _load_with_folder(path, allow_nonfinite)
    return model, tokenizer


def _load_with_folder(path, allow_nonfinite: bool | None = None):
    folder, model, config = _load_resolved(path, allow_nonfinite)
    tokenizer = None
    if config.get("tokenizer") is not None:
        from .data.errors import DataError
        from .data.tokenizer import load_tokenizer
        try:
            tokenizer = load_tokenizer(tokenizer_spec(config, folder), root=folder)
        except DataError as e:
            raise ModelLoadError(f"{folder / CONFIG}: tokenizer: {e}") from None
        if tokenizer.vocab_size > model.args.vocab_size:
            raise ModelLoadError(f"{folder / CONFIG}: the tokenizer has {tokenizer.vocab_size} "
                                 f"ids but the model's vocab_size is {model.args.vocab_size}")
    return folder, model, tokenizer


def tokenizer_spec(config: dict, folder):
    """The tokenizer spec of the model folder `folder` (config.json read as `config`), its
    compaction's ids read from the mlx-lm export's bitmap ("vocab_compaction") where the map
    file it names is absent: mlx_lm.convert and mlx_lm.fuse copy config.json but not
    vocab_map.npy."""
    folder = Path(folder)
    spec = config.get("tokenizer")
    compaction = spec.get("compaction") if isinstance(spec, dict) else None
    bitmap = config.get("vocab_compaction")
    if not (isinstance(compaction, dict) and isinstance(compaction.get("map_file"), str)
            and isinstance(bitmap, dict) and not (folder / compaction["map_file"]).exists()):
        return spec
    import base64

    import numpy as np
    try:
        bits = np.frombuffer(base64.b64decode(bitmap["base_ids_bitmap"]), dtype=np.uint8)
        used = np.unpackbits(bits, bitorder="little")[:int(bitmap["base_vocab_size"])]
    except (KeyError, TypeError, ValueError) as e:
        raise ModelLoadError(f"{folder / CONFIG}: vocab_compaction is not a bitmap of ids: "
                             f"{e}") from None
    ids = np.flatnonzero(used).tolist()
    rest = {k: v for k, v in compaction.items() if k != "map_file"}
    return {**spec, "compaction": {**rest, "base_ids": ids}}


def check_same_tokenizer(folder, dataset) -> None:
    """Refuse a model folder whose tokenizer differs from the one the data was prepared with
    (the compaction map included: the same id would stand for other text)."""
    check_tokenizer(dataset, tokenizer_spec(read_config(folder), folder), folder, folder)


def load_with_tokenizer(path, allow_nonfinite: bool | None = None):
    """(folder, model, tokenizer) from any folder `resolve_model_dir` accepts, for work that
    turns text into ids: a folder that names no tokenizer is a ModelLoadError."""
    folder, model, tokenizer = _load_with_folder(path, allow_nonfinite)
    if tokenizer is None:
        raise ModelLoadError(f"{folder}/config.json names no tokenizer: cannot turn text into ids")
    return folder, model, tokenizer


def is_saved_file(name: str) -> bool:
    """A file `save_model` writes (what a saved model folder may hold)."""
    return (name in (CONFIG, WEIGHTS, INDEX, VOCAB_MAP, TIKTOKEN_FILE)
            or SHARD.fullmatch(name) is not None)
