"""`mlx-kssm export` as a library call: one model folder out, in either format.

    export(model_dir, out_dir)                        the mlx-kssm format (export_model)
    export(model_dir, out_dir, fmt="mlx-lm", ...)     also loads in mlx-lm (to_mlx_lm.py)
    export(..., quantize=4, group_size=64)            quantized weights (mlx_kssm/quantize.py)

`export_model(src, out)` writes the folder every format starts from (the mlx-kssm format; the
mlx-lm format adds its files through `add_files`); `describe_export(out)` loads the written
folder on its own and says what it holds.
"""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx

from .._files import describe_os_error, replacing_folder, with_message
from ..io import (MAX_SHARD_BYTES, ModelLoadError, check_dtype, check_replaceable,
                  check_same_tokenizer, is_saved_file, load, load_model, load_weights_dict,
                  read_config, resolve_model_dir, tokenizer_spec, write_model_folder)
from ..models import count_parameters

FORMATS = ("mlx-kssm", "mlx-lm")

# what `export --format mlx-lm` adds (mlx_kssm/export/to_mlx_lm.py): the model file, the
# Hugging Face tokenizer files and the model card
MLX_LM_FILES = ("kssm.py", "tokenizer.json", "tokenizer_config.json", "generation_config.json",
                "README.md")
# and the config.json keys it adds (written afresh by each mlx-lm export, never carried over)
MLX_LM_KEYS = ("model_file", "vocab_compaction", "force_r")


def export(model_dir, out_dir, fmt: str = "mlx-kssm", dtype: str | None = None,
           max_shard_bytes: int = MAX_SHARD_BYTES, force_r=None, data=None, evaluation=None,
           log=None, quantize: int | None = None, group_size: int | None = None) -> Path:
    """Export the model in `model_dir` (any folder io.resolve_model_dir accepts) to `out_dir`
    in format `fmt`. mlx-lm only: `force_r` (a ForceR or any form ForceR.of takes), `data`
    (the prepared folder it was trained on) and `evaluation` (an `mlx-kssm evaluate --json`
    file) go into its config.json and model card; `log(line)` hears of the slow steps.
    `quantize` (bits) and `group_size` (default 64) quantize the weights as mlx-lm does."""
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {FORMATS}, got {fmt!r}")
    quantization = _quantization(quantize, group_size)
    if fmt == "mlx-lm":
        return _export_mlx_lm(model_dir, out_dir, dtype, max_shard_bytes, force_r, data,
                              evaluation, log, quantization)
    given = [name for name, value in (("--force-r", force_r), ("--data", data),
                                      ("--evaluation", evaluation)) if value is not None]
    if given:
        raise ValueError(f"{', '.join(given)} apply to --format mlx-lm only")
    return export_model(model_dir, out_dir, dtype=dtype, max_shard_bytes=max_shard_bytes,
                        quantize=quantization)


def is_model_file(name: str) -> bool:
    """A file an export writes, in either format (what an exported folder may hold)."""
    return is_saved_file(name) or name in MLX_LM_FILES


def export_model(src, out, dtype: str | None = None,
                 max_shard_bytes: int = MAX_SHARD_BYTES, add_files=None, check=None,
                 quantize: tuple[int, int] | None = None) -> Path:
    """Write the model in `src` (any folder `resolve_model_dir` accepts) as a self-contained
    folder `out`: config.json (model args, preset, tokenizer spec), model.safetensors (sharded
    with an index above `max_shard_bytes`), and the tokenizer's files. `quantize`: (bits,
    group size) quantizes the weights in mlx-lm's format (quantize.py). `add_files(folder)`
    writes more files into the new folder and returns keys for its config.json; `check(folder)`
    must pass on the complete new folder before it replaces anything (another format's loader).

    `out` is new, empty, or an earlier export, which is replaced whole once the new folder is
    written and loads; a failure (a full disk) leaves it as it was. A folder holding anything
    else (a run folder, a checkpoint, data) is refused, never overwritten."""
    folder = resolve_model_dir(src)
    out = Path(out)
    if out.exists() and out.resolve() == folder.resolve():
        raise ModelLoadError(f"--out {out} is the source folder itself: choose another folder")
    check_replaceable(out, is_model_file, "an export", label="--out ")
    cast = check_dtype(dtype, out)  # before anything is written
    model, config = load_model(folder)
    extra = {k: v for k, v in config.items()
             if k not in model.args.to_dict() and k not in ("tokenizer", *MLX_LM_KEYS)}
    extra["dtype"] = dtype or "float32"
    if quantize is not None:
        from ..quantize import quantize_model
        extra["quantization"] = extra["quantization_config"] = quantize_model(model, *quantize)
    try:
        with replacing_folder(out) as tmp:
            if add_files is not None:
                extra.update(add_files(tmp))
            # `tmp` is fresh but already holds what add_files wrote: not save_model's checks
            write_model_folder(tmp, model, tokenizer_spec(config, folder), cast,
                               max_shard_bytes, extra, folder)
            load(tmp)  # the new folder must load on its own before it replaces anything
            if check is not None:
                check(tmp)
    except OSError as e:
        raise with_message(e, f"export to {out} failed: {describe_os_error(e)}; {out} is left "
                              "as it was") from None
    return out


def _quantization(bits, group_size) -> tuple[int, int] | None:
    """(bits, group size) to quantize with, or None; checked before anything is read."""
    from ..quantize import DEFAULT_GROUP_SIZE, check_settings
    if bits is None:
        if group_size is not None:
            raise ValueError("--group-size applies with --quantize only")
        return None
    group_size = DEFAULT_GROUP_SIZE if group_size is None else group_size
    check_settings(bits, group_size, "--quantize/--group-size")
    return bits, group_size


def _export_mlx_lm(model_dir, out_dir, dtype, max_shard_bytes, force_r, data, evaluation, log,
                   quantization):
    from .to_mlx_lm import export_mlx_lm, require_mlx_lm

    require_mlx_lm()
    evaluation_json = None if evaluation is None else _evaluation_of(model_dir, evaluation, log)
    meta = _training_data_meta(model_dir, data) if data is not None else None
    return export_mlx_lm(model_dir, out_dir, dtype=dtype, force_r=force_r, data_meta=meta,
                         evaluation=evaluation_json, max_shard_bytes=max_shard_bytes, log=log,
                         quantize=quantization)


def _evaluation_of(model_dir, evaluation, log) -> dict:
    """The `mlx-kssm evaluate --json` file whose figures the card will quote: refused if it is
    another kind of file (an intervene sweep), or if it evaluated other weights than the ones
    exported (another checkpoint's figures would describe another model)."""
    from .model_card import read_json
    result = read_json(evaluation)
    if not (isinstance(result, dict) and isinstance(result.get("val_loss"), (int, float))
            and isinstance(result.get("config"), dict)):
        raise ValueError(f"--evaluation {evaluation}: not a file written by `mlx-kssm evaluate "
                         "--json` (it has no val_loss and config)")
    exported = resolve_model_dir(model_dir)
    try:
        evaluated = resolve_model_dir(result.get("model"))
    except (ModelLoadError, TypeError):
        log(f"warning: --evaluation {evaluation} evaluated {result.get('model')!r}, which is "
            "not here to compare: its figures go into the card unchecked")
        return result
    if evaluated.resolve() != exported.resolve() and not _same_weights(evaluated, exported):
        raise ValueError(f"--evaluation {evaluation} evaluated {evaluated}, whose weights are "
                         f"not those of {exported}: evaluate the model you export")
    return result


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = load_weights_dict(a), load_weights_dict(b)
    return wa.keys() == wb.keys() and all(mx.array_equal(wa[k], wb[k]).item() for k in wa)


def _training_data_meta(model_dir, data) -> dict:
    """meta.json of `data`, which the card will describe as the model's training data: refused,
    as evaluate refuses it, if it was prepared with another tokenizer than the model's."""
    from ..data.loader import TokenDataset
    dataset = TokenDataset(data, "train")
    check_same_tokenizer(resolve_model_dir(model_dir), dataset)
    return dataset.meta


def describe_export(out, dtype: str | None = None) -> str:
    """One line: what the exported folder `out` holds, once it has loaded on its own."""
    model, _ = load(out)
    out = Path(out)
    files = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    size = sum((out / f).stat().st_size for f in files)
    config = read_config(out)
    quantization = config.get("quantization")
    bits = (f", {quantization.get('bits')}-bit (group size {quantization.get('group_size')})"
            if isinstance(quantization, dict) else "")
    return (f"exported {config.get('preset') or config.get('model_type')} "
            f"({count_parameters(model):,} parameters, {dtype or 'float32'}{bits}) to {out}: "
            f"{', '.join(files)} ({size / 1e6:.2f} MB)")
