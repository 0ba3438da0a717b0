"""`mlx-kssm export --format mlx-lm`: a K-SSM folder that mlx-lm loads as a custom model.

    OUT/config.json        mlx_kssm's model args and tokenizer spec, plus what mlx-lm reads:
                           model_file, vocab_compaction (the base ids of a
                           compacted vocabulary, as a bitmap), force_r (optional)
    OUT/kssm.py            the model file (Model, ModelArgs): mlx_lm_kssm.py with mlx_kssm's
                           own code in place of its imports (model_file.py)
    OUT/model.safetensors  the weights, {"format": "mlx"}: the tensors mlx_kssm itself loads
    OUT/tokenizer.json, tokenizer_config.json   the base tokenizer for transformers, with a
                           base model's chat template ("role: text" lines)
    OUT/generation_config.json   the id generation stops at
    OUT/README.md          the model card
    OUT/vocab_map.npy      a compaction map: mlx_kssm's own loader reads the folder too

It is written like every export (exporter.export_model): in a temporary folder that replaces OUT
whole only once it loads in mlx_kssm and in mlx-lm, and mlx-lm's logits equal mlx_kssm's on a
probe text. Needs the `mlx-lm` extra (mlx-lm, and transformers/tokenizers with it).
"""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np

from .._files import atomic_write_text
from ..data.tokenizer import CompactTokenizer, describe_tokenizer
from ..io import MAX_SHARD_BYTES, load, read_config, resolve_model_dir
from ..models.force import ForceR
from .exporter import export_model
from .hf_tokenizer import PROBE_TEXT, ConversionError, base_tokenizer, tokenizer_files
from .model_card import model_card
from .model_file import model_source

MODEL_FILE = "kssm.py"
INSTALL = "pip install 'mlx-kssm[mlx-lm]' (in a checkout: pip install -e '.[mlx-lm]')"
PROBE_TOKENS = 24
# largest logit difference (relative to the largest logit) the export check accepts: the same
# arithmetic in float32; half-precision weights run in half precision under mlx-lm
TOLERANCE = {"float32": 1e-4, "float16": 5e-2, "bfloat16": 1e-1}


class ExportError(Exception):
    """A model this format cannot export, or a missing dependency; the message says which."""


def require_mlx_lm():
    """mlx-lm and the Hugging Face tokenizer libraries it loads tokenizers with."""
    try:
        import mlx_lm  # noqa: F401
        import tokenizers  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        raise ExportError(f"--format mlx-lm needs the mlx-lm extra ({e.name} is not "
                          f"installed; Python >= 3.11): {INSTALL}") from None


def export_mlx_lm(src, out, dtype: str | None = None, force_r=None, data_meta: dict | None = None,
                  evaluation: dict | None = None, max_shard_bytes: int = MAX_SHARD_BYTES,
                  log=None, quantize: tuple[int, int] | None = None) -> Path:
    """Export the K-SSM model in `src` (any folder `resolve_model_dir` accepts) to `out` for
    mlx-lm. `force_r`: a ForceR or any form ForceR.of takes, written to config.json;
    `data_meta` (a prepared folder's meta.json) and `evaluation` (what
    `mlx-kssm evaluate --json` wrote) describe the model in its card. `log(line)` hears of
    the slow steps (seconds each for cl100k_base). `quantize`: (bits, group size)."""
    log = log or (lambda line: None)
    require_mlx_lm()
    folder = resolve_model_dir(src)
    model, tokenizer = load(folder)
    _check_exportable(model, tokenizer, folder)
    force = ForceR.for_model(force_r, model)  # bad values fail before anything is written
    force_config = None if force is None else force.to_config()
    log(f"tokenizer: {describe_tokenizer(base_tokenizer(tokenizer).spec)} -> tokenizer.json")
    try:
        files = tokenizer_files(tokenizer)
    except ConversionError as e:
        raise ExportError(f"{folder}: {e}") from None
    files["README.md"] = model_card(Path(out).name, model, tokenizer, folder, data_meta,
                                    evaluation, force_config,
                                    quantize or read_config(folder).get("quantization"))
    config = mlx_lm_config(tokenizer, force_config)
    files[MODEL_FILE] = model_source()

    def add_files(tmp: Path) -> dict:
        for name, text in files.items():
            atomic_write_text(tmp / name, text)
        return config

    def check(tmp: Path) -> None:
        log("checking: mlx-lm loads the new folder, its logits against mlx_kssm's")
        # quantized: against mlx_kssm's load of the same quantized weights
        reference = model if quantize is None else load(tmp)[0]
        check_logits(tmp, reference, tokenizer, force, dtype or "float32")

    return export_model(src, out, dtype=dtype, max_shard_bytes=max_shard_bytes,
                        add_files=add_files, check=check, quantize=quantize)


def _check_exportable(model, tokenizer, folder) -> None:
    kind = model.args.model_type
    if kind != "kssm":
        raise ExportError(f"{folder} holds a {kind} model ({model.args.preset or kind}): "
                          "--format mlx-lm exports K-SSM models only; export it with "
                          "--format mlx-kssm")
    if tokenizer is None:
        raise ExportError(f"{folder}/config.json names no tokenizer: mlx-lm needs one to turn "
                          "text into ids")


def mlx_lm_config(tokenizer, force_r) -> dict:
    """The config.json keys the model file reads beyond mlx_kssm's model args (`force_r`:
    ForceR.to_config's value, or None)."""
    # (the end-of-sequence token is tokenizer_config.json's eos_token; an "eos_token_id" here
    # would be checked by transformers against the compacted vocab_size and warned about)
    config = {"model_file": MODEL_FILE}
    if isinstance(tokenizer, CompactTokenizer):
        config["vocab_compaction"] = vocab_compaction(tokenizer)
    if force_r is not None:
        config["force_r"] = force_r
    return config


def vocab_compaction(tokenizer: CompactTokenizer) -> dict:
    """The base ids a compacted vocabulary keeps, as a bitmap over the base vocabulary (bit i
    of byte i // 8, little-endian bit order) in base64: 12.5 KB for cl100k_base whatever the
    corpus, where a list of ids would run to hundreds of KB of config.json."""
    used = np.zeros(tokenizer.base.vocab_size, dtype=bool)
    used[tokenizer.base_ids] = True
    bitmap = base64.b64encode(np.packbits(used, bitorder="little").tobytes()).decode("ascii")
    return {"base_vocab_size": int(tokenizer.base.vocab_size),
            "unknown_id": int(tokenizer.unk_id), "base_ids_bitmap": bitmap}


def check_logits(folder: Path, model, tokenizer, force_r, dtype: str) -> None:
    """Load `folder` with mlx-lm and compare its logits with mlx_kssm's on a probe text: the
    tokenizer must give the base ids, every id the model knows the same logit (to
    TOLERANCE[dtype]), every other id no probability."""
    import mlx.core as mx
    from mlx_lm import load as mlx_lm_load
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # not "a model of type kssm" (unknown to transformers)
    try:
        lm, hf = mlx_lm_load(str(folder), trust_remote_code=True)
    finally:
        hf_logging.set_verbosity(verbosity)
    base_ids = base_tokenizer(tokenizer).encode(PROBE_TEXT)[:PROBE_TOKENS]
    if hf.encode(PROBE_TEXT, add_special_tokens=False)[:PROBE_TOKENS] != base_ids:
        raise ExportError("mlx-lm's tokenizer (tokenizer.json) gives other ids than mlx_kssm's")
    compact = isinstance(tokenizer, CompactTokenizer)
    model_ids = tokenizer.to_compact(base_ids).tolist() if compact else base_ids
    ours = np.array(model(mx.array([model_ids]), force_r=force_r).astype(mx.float32))
    theirs = np.array(lm(mx.array([base_ids])).astype(mx.float32))
    columns = tokenizer.base_ids if compact else np.arange(ours.shape[-1])
    rest = np.setdiff1d(np.arange(theirs.shape[-1]), columns)
    diff = np.abs(theirs[..., columns] - ours[..., :len(columns)]).max()
    scale = max(1.0, float(np.abs(ours).max()))
    unseen = np.exp(theirs[..., rest] - theirs.max(axis=-1, keepdims=True))
    if not diff <= TOLERANCE[dtype] * scale or np.any(unseen != 0):
        raise ExportError(f"the mlx-lm model file disagrees with mlx_kssm on a probe text (max "
                          f"logit difference {diff:.3g}): not exported")
