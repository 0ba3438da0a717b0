"""`mlx-kssm export` as a library call: one model folder out, in either format.

    export(model_dir, out_dir)                        the mlx-kssm format (io.export_model)
    export(model_dir, out_dir, fmt="mlx-lm", ...)     also loads in mlx-lm (to_mlx_lm.py)
    export(..., quantize=4, group_size=64)            quantized weights (mlx_kssm/quantize.py)

`describe_export(out)` loads the written folder on its own and says what it holds.
"""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx

from ..io import (MAX_SHARD_BYTES, ModelLoadError, export_model, load, load_weights_dict,
                  read_config, resolve_model_dir)
from ..models import count_parameters

FORMATS = ("mlx-kssm", "mlx-lm")


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
    from ..evaluation import check_same_tokenizer
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
