"""Export: a self-contained folder that loads anywhere and generates the same tokens."""

import errno
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import mlx_kssm
import mlx.core as mx
from mlx.utils import tree_flatten
from safetensors import safe_open
from safetensors.numpy import load_file

from mlx_kssm import build_model, save_model
from mlx_kssm.cli import main
from mlx_kssm.data.prepare import prepare
from mlx_kssm.export.exporter import export_model
from mlx_kssm.io import ModelLoadError, load, load_model
from mlx_kssm.probe.generate import generate_tokens

FIXTURES = __import__("pathlib").Path(__file__).parent / "fixtures" / "gutenberg"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A training-run-shaped folder whose tokenizer is a compacted cl100k_base, its checkpoint
    written as the trainer writes one (the vocab map copied in from the data folder)."""
    root = tmp_path_factory.mktemp("export")
    src = root / "texts"
    src.mkdir()
    for name in ("pg1342_2024.txt", "pg1661_2002.txt"):
        shutil.copy(FIXTURES / name, src / name)
    data = root / "data"
    prepare(src, data, tokenizer="cl100k_base", compact=True, val_fraction=0.3, log=lambda s: None)
    meta = json.loads((data / "meta.json").read_text())
    assert meta["tokenizer"]["compaction"]["map_file"]
    run = root / "run"
    model = build_model("tiny", vocab_size=meta["vocab_size"], seed=1)
    save_model(run / "checkpoints" / "step_10", model, tokenizer_spec=meta["tokenizer"],
               tokenizer_root=data)
    (run / "config.json").write_text(json.dumps({"train": {"data": str(data)}}))
    return run, data


def _tokens(path, prompt="It is a truth", seed=5):
    model, tok = load(path)
    return generate_tokens(model, tok.encode(prompt), max_tokens=20, temp=0.9, seed=seed).tokens


def test_export_load_generate_same_tokens(run_dir, tmp_path):
    run, data = run_dir
    before = _tokens(run)
    out = export_model(run, tmp_path / "exp")
    assert (out / "vocab_map.npy").exists()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["preset"] == "tiny" and cfg["tokenizer"]["compaction"]["map_file"] == "vocab_map.npy"
    # self-contained: works with the data folder gone
    moved = data.with_name("data_moved")
    data.rename(moved)
    try:
        assert _tokens(out) == before
    finally:
        moved.rename(data)


def test_exported_weights_open_with_plain_safetensors(run_dir, tmp_path):
    run, _ = run_dir
    out = export_model(run, tmp_path / "exp")
    arrays = load_file(str(out / "model.safetensors"))
    model, _ = load_model(out)
    assert set(arrays) == {k for k, _ in tree_flatten(model.parameters())}
    assert all(isinstance(v, np.ndarray) for v in arrays.values())
    with safe_open(str(out / "model.safetensors"), "np") as f:
        assert f.metadata() == {"format": "mlx"}


def test_sharded_export_with_index(run_dir, tmp_path):
    run, _ = run_dir
    before = _tokens(run)
    out = export_model(run, tmp_path / "sharded", max_shard_bytes=40_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and not (out / "model.safetensors").exists()
    for shard in shards:
        load_file(str(out / shard))
    assert _tokens(out) == before


def test_float16_export(run_dir, tmp_path):
    run, _ = run_dir
    out = export_model(run, tmp_path / "fp16", dtype="float16")
    arrays = load_file(str(out / "model.safetensors"))
    assert {v.dtype for v in arrays.values()} == {np.dtype("float16")}
    assert len(_tokens(out)) == 20
    with pytest.raises(ValueError):
        export_model(run, tmp_path / "bad", dtype="int3")


def test_wrong_shaped_tensor_is_named(run_dir, tmp_path):
    run, _ = run_dir
    out = export_model(run, tmp_path / "exp")
    weights = dict(mx.load(str(out / "model.safetensors")))
    weights["layers.0.bank.out_proj.weight"] = mx.zeros((3, 3))
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
    with pytest.raises(ModelLoadError, match=r"layers\.0\.bank\.out_proj\.weight: file \(3, 3\)"):
        load(out)
    res = CliRunner().invoke(main, ["generate", "--model", str(out), "--prompt", "Hi"])
    assert res.exit_code == 1
    assert "layers.0.bank.out_proj.weight" in res.output and "Traceback" not in res.output


def test_export_cli(run_dir, tmp_path):
    run, _ = run_dir
    res = CliRunner().invoke(main, ["export", "--model", str(run), "--out", str(tmp_path / "e"),
                                    "--dtype", "bfloat16", "--max-shard-size", "1MB"])
    assert res.exit_code == 0, res.output
    assert "exported tiny" in res.output and "vocab_map.npy" in res.output
    res = CliRunner().invoke(main, ["generate", "--model", str(tmp_path / "e"), "--prompt", "It",
                                    "-m", "5"])
    assert res.exit_code == 0, res.output


def test_export_cli_errors(run_dir, tmp_path):
    run, _ = run_dir
    res = CliRunner().invoke(main, ["export", "--model", str(tmp_path / "nope"), "--out",
                                    str(tmp_path / "e")])
    assert res.exit_code == 1 and res.output.strip().count("\n") == 0
    assert "does not exist" in res.output
    res = CliRunner().invoke(main, ["export", "--model", str(run), "--out", str(tmp_path / "e"),
                                    "--max-shard-size", "lots"])
    assert res.exit_code == 1 and "max-shard-size" in res.output


def _snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _other_model(root):
    """A model whose compaction map (another corpus, byte level) differs from run_dir's."""
    (root / "texts").mkdir(parents=True)
    (root / "texts" / "a.txt").write_text("a different corpus, " * 50)
    prepare(root / "texts", root / "data", tokenizer="bytes", compact=True, val_fraction=0.3,
            log=lambda s: None)
    meta = json.loads((root / "data" / "meta.json").read_text())
    return save_model(root / "model", build_model("tiny", vocab_size=meta["vocab_size"], seed=2),
                      tokenizer_spec=meta["tokenizer"], tokenizer_root=root / "data")


def test_failed_export_leaves_the_earlier_export_loadable(run_dir, tmp_path, monkeypatch):
    """Disk full halfway through replacing an export: the old one is untouched, no temp left."""
    run, _ = run_dir
    out = export_model(run, tmp_path / "exports" / "exp")
    before, tokens = _snapshot(out), _tokens(out)
    other = _other_model(tmp_path / "other")

    def disk_full(file, arrays, metadata=None):
        if not isinstance(file, str):
            file.write(b"\0" * 4096)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(mx, "save_safetensors", disk_full)
    res = CliRunner().invoke(main, ["export", "--model", str(other), "--out", str(out)])
    monkeypatch.undo()
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1, res.output
    assert res.output.startswith(f"Error: export to {out} failed: No space left on device "
                                 "(writing model.safetensors)"), res.output
    assert _snapshot(out) == before and _tokens(out) == tokens
    assert [p.name for p in out.parent.iterdir()] == ["exp"]  # no temp folder or file left


def test_export_refuses_a_folder_holding_other_files(run_dir):
    """--out a run folder: refused, the run's config.json untouched (--model RUN still works)."""
    run, _ = run_dir
    before = _snapshot(run)
    res = CliRunner().invoke(main, ["export", "--model", str(run / "checkpoints" / "step_10"),
                                    "--out", str(run)])
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1, res.output
    assert res.output.startswith(f"Error: --out {run} holds files an export does not write "
                                 "(checkpoints)")
    assert _snapshot(run) == before
    load_model(run)


def test_export_removes_a_killed_exports_leftovers(run_dir, tmp_path):
    run, _ = run_dir
    out = export_model(run, tmp_path / "exp")
    dead = _dead_pid()
    (tmp_path / f".exp.pid{dead}.tmp").mkdir()  # killed while writing
    (tmp_path / f".exp.pid{dead}.tmp" / "model.safetensors").write_bytes(b"\0" * 1000)
    (tmp_path / ".exp.old").mkdir()  # killed after the swap, before deleting the old one
    export_model(run, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_model_folder_paths_never_leave_the_folder(run_dir, tmp_path):
    """config.json's map_file, or a shard index, naming a file outside the model folder."""
    run, data = run_dir
    model_dir = export_model(run, tmp_path / "exp")
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg["tokenizer"]["compaction"]["map_file"] = str(data / "vocab_map.npy")  # absolute
    (model_dir / "config.json").write_text(json.dumps(cfg))
    res = CliRunner().invoke(main, ["export", "--model", str(model_dir), "--out",
                                    str(tmp_path / "copy")])
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1, res.output
    assert "lies outside" in res.output and "refused" in res.output
    assert not (tmp_path / "copy").exists()
    sharded = export_model(run, tmp_path / "sharded", max_shard_bytes=40_000)
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    name = next(iter(index["weight_map"]))
    index["weight_map"][name] = "../exp/model.safetensors"
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match=r"names shards outside .*'\.\./exp/model"):
        load_model(sharded)


def test_integer_weights_are_refused_not_cast(run_dir, tmp_path):
    run, _ = run_dir
    out = export_model(run, tmp_path / "exp")
    weights = dict(mx.load(str(out / "model.safetensors")))
    weights["norm.weight"] = weights["norm.weight"].astype(mx.int32)
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
    res = CliRunner().invoke(main, ["generate", "--model", str(out), "--prompt", "Hi"])
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1, res.output
    assert "norm.weight: file dtype mlx.core.int32 vs model mlx.core.float32" in res.output


def test_a_tokenizer_path_string_is_bundled_or_refused(tmp_path):
    """config.json's tokenizer as a plain .tiktoken path: a file inside the folder is copied
    into the export (which then loads on its own); one outside is refused, naming it."""
    import base64
    model_dir = tmp_path / "model"
    ranks = [bytes([b]) for b in range(256)] + [b"th", b"the"]
    save_model(model_dir, build_model("tiny", vocab_size=259, seed=0))
    for folder in (model_dir, tmp_path):
        (folder / "tok.tiktoken").write_text(
            "".join(f"{base64.b64encode(t).decode()} {rank}\n" for rank, t in enumerate(ranks)))
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "tokenizer": "tok.tiktoken"}))
    out = export_model(model_dir, tmp_path / "exp")
    (model_dir / "tok.tiktoken").unlink()  # the export must not need the source's file
    _, tokenizer = load(out)
    assert tokenizer.vocab_size == 259 and (out / "tokenizer.tiktoken").is_file()
    (model_dir / "config.json").write_text(
        json.dumps({**config, "tokenizer": str(tmp_path / "tok.tiktoken")}))
    with pytest.raises(ModelLoadError, match="outside"):
        export_model(model_dir, tmp_path / "exp2")
    assert not (tmp_path / "exp2").exists()


# ------------------------------------------------------------- save_model / export refusals

def _tiny():
    return build_model("tiny", vocab_size=257, seed=0)


def _user_folder(folder, files):
    folder.mkdir(parents=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return {name: (folder / name).read_bytes() for name in files}


@pytest.mark.parametrize("files", [
    {"config.json": '{"app": 1}', "model_final.safetensors": "mine",
     "model.safetensors.index.json": "{}"},
    {"config.json": '{"app": 1}'},  # names a save writes, content it does not
    {"model.safetensors.index.json": "{}"},
])
def test_save_model_refuses_a_folder_that_is_not_a_saved_model(tmp_path, files):
    """A user's config.json and other model*.safetensors are never replaced or unlinked."""
    before = _user_folder(tmp_path / "d", files)
    with pytest.raises(ValueError, match=str(tmp_path / "d")):
        save_model(tmp_path / "d", _tiny())
    assert {p.name: p.read_bytes() for p in (tmp_path / "d").iterdir()} == before


def test_save_model_refuses_an_empty_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="empty"):
        save_model("", _tiny())
    assert list(tmp_path.iterdir()) == []


def test_save_model_replaces_an_earlier_save(tmp_path):
    """An earlier save (sharded, with a tokenizer) is replaced whole by a new layout."""
    out = save_model(tmp_path / "m", _tiny(), tokenizer_spec="bytes", max_shard_bytes=50_000)
    assert (out / "model.safetensors.index.json").exists()
    save_model(out, build_model("tiny", vocab_size=257, seed=1))
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["m"]
    load_model(out)


@pytest.mark.parametrize("kwargs,match", [
    (dict(dtype=mx.int32), "floating dtype"),
    (dict(dtype="fp16"), "dtype must be one of"),
    (dict(tokenizer_spec={"kind": "nope"}), "unknown tokenizer kind"),
    (dict(tokenizer_spec=123), "tokenizer spec"),
    (dict(tokenizer_spec="cl100k_base"), "100277 ids but the model's vocab_size is 257"),
    (dict(extra_config={"vocab_size": 5}), "may not override.*'vocab_size'"),
    (dict(extra_config={"tokenizer": "gpt2"}), "may not override.*'tokenizer'"),
])
def test_save_model_refuses_what_would_not_load_before_writing(tmp_path, kwargs, match):
    """Arguments that would write a folder `load` rejects fail first, leaving nothing."""
    with pytest.raises((ValueError, ModelLoadError), match=match) as info:
        save_model(tmp_path / "m", _tiny(), **kwargs)
    assert str(tmp_path / "m") in str(info.value)
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("files", [
    {"config.json": '{"important": 1}', "README.md": "my notes", "kssm.py": "print(1)"},
    {"README.md": "my notes"},
])
def test_export_refuses_files_named_like_an_exports_but_not_one(run_dir, tmp_path, files):
    """--out holding only names an export writes, but no model config.json: refused, kept."""
    run, _ = run_dir
    before = _user_folder(tmp_path / "out", files)
    with pytest.raises(ModelLoadError, match=f"--out {tmp_path / 'out'} is not an earlier "
                                             "model folder"):
        export_model(run, tmp_path / "out")
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before


# ----------------------------------------------------------------------- quantization

@pytest.fixture(scope="module")
def bytes_run(tmp_path_factory):
    """A bytes-tokenizer tiny model (its readout 48 wide: no group size divides it) and a
    prepared bytes data folder for evaluate."""
    root = tmp_path_factory.mktemp("quantized")
    (root / "texts").mkdir()
    shutil.copy(FIXTURES / "pg1342_2024.txt", root / "texts" / "pg1342_2024.txt")
    prepare(root / "texts", root / "data", tokenizer="bytes", val_fraction=0.3,
            log=lambda s: None)
    save_model(root / "model", build_model("tiny", vocab_size=257, seed=2),
               tokenizer_spec={"kind": "bytes"})
    return root / "model", root / "data"


def _quantized(bytes_run, tmp_path, bits, *extra):
    out = tmp_path / f"q{bits}"
    res = CliRunner().invoke(main, ["export", "--model", str(bytes_run[0]), "--out", str(out),
                                    "--quantize", str(bits), *extra])
    assert res.exit_code == 0, res.output
    assert f"{bits}-bit" in res.output
    return out


@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_export_loads_and_stays_close(bytes_run, tmp_path, bits):
    """The folder holds mlx-lm's quantization config; every layer is quantized, the 48-wide
    readout padded to 64 (named in the config), and the logits stay near the float model's."""
    import mlx.nn as nn
    from mlx_kssm.models.quantized import PaddedQuantizedLinear

    out = _quantized(bytes_run, tmp_path, bits)
    config = json.loads((out / "config.json").read_text())
    assert config["quantization"]["bits"] == bits and config["quantization"]["group_size"] == 64
    assert config["quantization"]["layers.0.bank.out_proj"] == {"group_size": 64, "bits": bits}
    assert config["quantization_config"] == config["quantization"]
    model, tokenizer = load(out)
    bank = model.layers[0].bank
    assert isinstance(bank.out_proj, PaddedQuantizedLinear) and bank.out_proj.input_dims == 48
    assert isinstance(bank.in_proj, nn.QuantizedLinear)
    assert isinstance(model.embed, nn.QuantizedEmbedding)
    assert isinstance(model.layers[0].mlp.down, nn.QuantizedLinear)
    assert mlx_kssm.count_parameters(model) == mlx_kssm.count_parameters(load(bytes_run[0])[0])
    assert (out / "model.safetensors").stat().st_size < \
        (bytes_run[0] / "model.safetensors").stat().st_size / (2 if bits == 8 else 3.5)
    ids = mx.array([tokenizer.encode("It is a truth universally acknowledged")])
    ours, theirs = np.array(model(ids)).ravel(), np.array(load(bytes_run[0])[0](ids)).ravel()
    assert np.corrcoef(ours, theirs)[0, 1] > (0.999 if bits == 8 else 0.9)


def test_padded_quantized_layer_is_the_unpadded_layer():
    """Zero columns padded onto the weight meet zeros padded onto the input: the layer
    computes x @ W.T + b with W the dequantized weight cut back to its own width."""
    from mlx_kssm.models.quantized import QuantizableLinear

    mx.random.seed(0)
    linear = QuantizableLinear(48, 16)
    layer = linear.to_quantized(group_size=64, bits=4)
    x = mx.random.normal((3, 48))
    weight = mx.dequantize(layer.weight, layer.scales, layer.biases, 64, 4)[:, :48]
    assert np.allclose(np.array(layer(x)), np.array(x @ weight.T + linear.bias), atol=1e-5)
    assert type(QuantizableLinear(64, 16).to_quantized(group_size=64, bits=4)).__name__ == \
        "QuantizedLinear"  # a width the group size divides: no padding


def test_quantized_folder_runs_every_command(bytes_run, tmp_path):
    """generate, evaluate (the causality suite included) and intervene take the quantized
    folder; forcing R stays exact."""
    out = _quantized(bytes_run, tmp_path, 4)
    model, tokenizer = load(out)
    ids = mx.array([tokenizer.encode("To be, or not to be")])
    _, r = model(ids, force_r=0.3, return_r=True)
    assert np.array_equal(np.array(r), np.full(r.shape, 0.3, dtype=np.float32))
    runner = CliRunner()
    res = runner.invoke(main, ["generate", "--model", str(out), "--prompt", "It is", "-m", "8",
                               "--temp", "0"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["intervene", "--model", str(out), "--prompt", "It is",
                               "--values", "0.1,0.9", "--max-tokens", "4"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["evaluate", "--model", str(out), "--data", str(bytes_run[1]),
                               "--batches", "2", "--batch-size", "2", "--seq-len", "32",
                               "--causality", "--sequences", "4", "--samples", "1",
                               "--sample-tokens", "4", "--json", str(tmp_path / "e.json")])
    result = json.loads((tmp_path / "e.json").read_text())
    # the suite ran: its exit status is its verdict's (0 PASS, 1 FAIL, 3 INCONCLUSIVE)
    verdict_status = {"PASS": 0, "FAIL": 1, "INCONCLUSIVE": 3}[result["causality"]["verdict"]]
    assert res.exit_code == verdict_status, res.output
    assert np.isfinite(result["val_loss"]) and "intervention" in result["causality"]


def test_group_size_takes_the_largest_size_that_divides(bytes_run, tmp_path):
    """--group-size 128: 64-wide layers take 64, named in the config; the readout pads."""
    out = _quantized(bytes_run, tmp_path, 8, "--group-size", "128")
    quantization = json.loads((out / "config.json").read_text())["quantization"]
    assert quantization["group_size"] == 128
    assert quantization["layers.0.bank.in_proj"] == {"group_size": 64, "bits": 8}
    assert "layers.0.mlp.down" not in quantization  # 256 wide: the top-level 128 divides it
    assert quantization["layers.0.bank.out_proj"] == {"group_size": 128, "bits": 8}
    layer = load(out)[0].layers[0]
    assert (layer.mlp.down.group_size, layer.bank.in_proj.group_size) == (128, 64)
    assert layer.bank.out_proj.scales.shape[-1] == 1  # 48 inputs padded to one group of 128


def _one_error_line(res, *fragments):
    assert res.exit_code == 1, res.output
    lines = res.output.strip().splitlines()
    assert [line for line in lines if line.startswith("Error:")] == lines[-1:], res.output
    for fragment in fragments:
        assert fragment in lines[-1], res.output


def test_wrong_group_size_in_config_is_one_error_line(bytes_run, tmp_path):
    out = _quantized(bytes_run, tmp_path, 4)
    config = json.loads((out / "config.json").read_text())
    config["quantization"]["group_size"] = 32
    (out / "config.json").write_text(json.dumps(config))
    res = CliRunner().invoke(main, ["generate", "--model", str(out), "--prompt", "It is"])
    _one_error_line(res, "group size 32", "quantized with other settings")
    config["quantization"]["group_size"] = 48
    (out / "config.json").write_text(json.dumps(config))
    res = CliRunner().invoke(main, ["generate", "--model", str(out), "--prompt", "It is"])
    _one_error_line(res, "group_size must be one of 32, 64, 128")


def test_quantize_errors(bytes_run, tmp_path):
    out = _quantized(bytes_run, tmp_path, 4)
    res = CliRunner().invoke(main, ["export", "--model", str(out), "--out",
                                    str(tmp_path / "again"), "--quantize", "8"])
    _one_error_line(res, "quantized already")
    assert not (tmp_path / "again").exists()
    res = CliRunner().invoke(main, ["train", "--model", str(out), "--data", str(bytes_run[1]),
                                    "--output-dir", str(tmp_path / "run"), "--max-steps", "1"])
    _one_error_line(res, "is quantized: train from its floating-point original")
    assert not (tmp_path / "run").exists()
    res = CliRunner().invoke(main, ["export", "--model", str(bytes_run[0]), "--out",
                                    str(tmp_path / "g"), "--group-size", "32"])
    _one_error_line(res, "--group-size applies with --quantize only")
    res = CliRunner().invoke(main, ["export", "--model", str(out), "--out",
                                    str(tmp_path / "plain"), "--dtype", "float16"])
    assert res.exit_code == 0, res.output  # a quantized folder re-exports as it is
    assert json.loads((tmp_path / "plain" / "config.json").read_text())["quantization"]
    load(tmp_path / "plain")
