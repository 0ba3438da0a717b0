"""When things fail (docs/failures.md): linked output folders, temp folders on SIGTERM and
after dead writers, the resource guard on model sizes, the bounds on count options and
hyperparameters, a trainer that honours SIGTERM at any point, streaming decode."""

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import mlx_kssm  # noqa: F401
import numpy as np
import pytest
from click.testing import CliRunner

from mlx_kssm import build_model, save_model
from mlx_kssm import _files
from mlx_kssm.cli import main
from mlx_kssm.data.prepare import prepare
from mlx_kssm.export.exporter import export_model
from mlx_kssm.io import load




@pytest.fixture(scope="module")
def data_dir(words_data):
    return words_data


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, data_dir):
    meta = json.loads((data_dir / "meta.json").read_text())
    folder = tmp_path_factory.mktemp("model") / "m"
    save_model(folder, build_model("tiny", vocab_size=meta["vocab_size"], seed=0),
               tokenizer_spec=meta["tokenizer"], tokenizer_root=data_dir)
    return folder


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --------------------------------------------------------------------------- defect 1: links

def test_export_through_a_link_replaces_its_target_and_keeps_the_link(model_dir, tmp_path):
    target, link = tmp_path / "A", tmp_path / "L"
    export_model(model_dir, target)
    link.symlink_to(target)
    for _ in range(3):  # every later run works too: the path never gets stuck
        result = CliRunner().invoke(main, ["export", "--model", str(model_dir),
                                           "--out", str(link)])
        assert result.exit_code == 0, result.output
        assert link.is_symlink() and link.resolve() == target.resolve()
        assert not any(p.name.startswith(".") for p in tmp_path.iterdir())
        load(link)


def test_a_link_left_aside_by_an_earlier_version_is_unlinked_not_followed(tmp_path):
    """The stuck state an earlier version left: L a real folder, `.L.old` a link to the
    user's folder. The next swap removes the link only, and the folder it names stays."""
    kept = tmp_path / "A"
    kept.mkdir()
    (kept / "x").write_text("mine")
    final = tmp_path / "L"
    final.mkdir()
    (tmp_path / ".L.old").symlink_to(kept)
    with _files.replacing_folder(final) as tmp:
        (tmp / "new").write_text("new")
    assert (final / "new").exists() and (kept / "x").read_text() == "mine"
    assert not os.path.lexists(tmp_path / ".L.old")


def test_prepare_through_a_link_replaces_its_target(data_dir, tmp_path):
    target, link = tmp_path / "P", tmp_path / "PL"
    src = data_dir.parent / "src"
    prepare(src, target, tokenizer="bytes", val_fraction=0.2, log=lambda m: None)
    link.symlink_to(target)
    for _ in range(2):
        prepare(src, link, tokenizer="bytes", val_fraction=0.2, log=lambda m: None)
        assert link.is_symlink() and (target / "meta.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["P", "PL"]


def test_a_looping_link_is_refused_with_one_line(model_dir, tmp_path):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    result = CliRunner().invoke(main, ["export", "--model", str(model_dir), "--out", str(loop)])
    assert result.exit_code == 1
    assert "loops" in result.output and "Traceback" not in result.output


# --------------------------------------------------------------------------- defect 9: temps

# Runs the CLI with `target` (module:function) wrapped to SIGTERM its own process the first
# time it is called, then to wait: the signal arrives at a known point, no timing involved.
SELF_TERM = """
import importlib, os, signal, sys, time
module_name, name = sys.argv[1].split(":")
module = importlib.import_module(module_name)
real = getattr(module, name)
def wrapped(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)
    return real(*args, **kwargs)
setattr(module, name, wrapped)
from mlx_kssm.cli import main
main(sys.argv[2:], prog_name="mlx-kssm")
"""


def terminated_midway(target: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SELF_TERM, target, *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def hidden(folder: Path) -> list:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_sigterm_during_prepare_removes_its_temp_folder_and_exits_143(data_dir, tmp_path):
    result = terminated_midway("mlx_kssm.data.prepare:_write_tokens", "data", "prepare",
                               "--source", data_dir.parent / "src", "--out", tmp_path / "p",
                               "--tokenizer", "bytes")
    assert result.returncode == 143, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "terminated"
    assert hidden(tmp_path) == [] and not (tmp_path / "p").exists()


def test_sigterm_during_export_removes_its_temp_folder_and_keeps_the_earlier(model_dir,
                                                                             tmp_path):
    out = tmp_path / "exp"
    export_model(model_dir, out)
    before = sorted(p.name for p in out.iterdir())
    result = terminated_midway("mlx_kssm.export.exporter:write_model_folder", "export", "--model",
                               model_dir, "--out", out)
    assert result.returncode == 143, result.stderr
    assert hidden(tmp_path) == [] and sorted(p.name for p in out.iterdir()) == before


def test_sigterm_during_fetch_removes_its_temp_file_and_exits_143(data_dir, tmp_path):
    """Signalled while the first file (the manifest) is synced to disk."""
    out = tmp_path / "fetched"
    result = terminated_midway("os:fsync", "data", "fetch", "--source",
                               data_dir.parent / "src", "--out", out)
    assert result.returncode == 143, result.stderr
    assert hidden(out) == [] and hidden(tmp_path) == []


def test_dead_writers_temp_folders_are_swept_by_a_run_beside_them(model_dir, tmp_path):
    dead, live = dead_pid(), subprocess.Popen([sys.executable, "-c",
                                               "import time; time.sleep(60)"])
    try:
        for name in (f".other.pid{dead}.tmp", f".data.pid{live.pid}.tmp"):
            (tmp_path / name).mkdir()
            (tmp_path / name / "big.npy").write_bytes(b"0" * 100)
        (tmp_path / f".w.json.pid{dead}.x1.tmp").write_text("{}")
        (tmp_path / ".notes.tmp").write_text("a user's, no pid")
        export_model(model_dir, tmp_path / "another-out")
        assert hidden(tmp_path) == [".data.pid%d.tmp" % live.pid, ".notes.tmp"]
    finally:
        live.kill()
        live.wait()


def test_study_exits_143_on_sigterm_with_a_message(data_dir, tmp_path):
    result = terminated_midway("mlx_kssm.study.runner:evaluate", "study", "--data", data_dir,
                               "--preset", "tiny", "--models", "random-init", "--seeds", "1",
                               "--steps", "2", "--batch-size", "2", "--seq-len", "16",
                               "--eval-batches", "1", "--sequences", "3", "--samples", "0",
                               "--out", tmp_path / "s")
    assert result.returncode == 143, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "terminated"


# --------------------------------------------------------------------------- defect 2: guard

def model_with(tmp_path, model_dir, **sizes) -> Path:
    """A copy of `model_dir` whose config.json says `sizes` (its weights no longer match: the
    guard must refuse it before they are read)."""
    folder = tmp_path / "big"
    folder.mkdir()
    for name in ("model.safetensors",):
        (folder / name).write_bytes((model_dir / name).read_bytes())
    config = json.loads((model_dir / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **sizes}))
    return folder


@pytest.mark.parametrize("sizes, named", [
    ({"d_model": 10**9}, "d_model 1,000,000,000"),
    ({"n_layers": 10**6}, "n_layers 1,000,000"),
    ({"vocab_size": 10**12}, "vocab_size 1,000,000,000,000"),
    ({"ffn_hidden": 10**10}, "ffn_hidden 10,000,000,000"),
])
def test_absurd_sizes_in_config_json_are_refused_before_allocating(model_dir, tmp_path, sizes,
                                                                   named):
    folder = model_with(tmp_path, model_dir, **sizes)
    result = CliRunner().invoke(main, ["generate", "--model", str(folder), "--prompt", "a",
                                       "--max-tokens", "2"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and named in lines[0]
    assert "unexpected" not in lines[0]


def test_a_model_larger_than_the_memory_is_refused_naming_its_size(model_dir, tmp_path,
                                                                   monkeypatch):
    """At a small scale: 134 MB of weights against a machine said to have 50 MB."""
    monkeypatch.setenv("MLX_KSSM_MEMORY_BYTES", str(50_000_000))
    folder = model_with(tmp_path, model_dir, d_model=1024, ffn_hidden=4096, n_layers=4)
    result = CliRunner().invoke(main, ["generate", "--model", str(folder), "--prompt", "a",
                                       "--max-tokens", "2"])
    assert result.exit_code == 1
    assert "50.0 MB of memory" in result.output and "d_model 1,024" in result.output


def _memory_for_the_weights_alone(model_dir, monkeypatch) -> None:
    from mlx_kssm._resources import model_footprint
    from mlx_kssm.io import load_model

    args = load_model(model_dir)[0].args
    monkeypatch.setenv("MLX_KSSM_MEMORY_BYTES", str(model_footprint(args).parameters * 4
                                                     + 200_000))


def test_evaluate_seq_len_and_batches_are_checked_against_the_memory(model_dir, data_dir,
                                                                     monkeypatch):
    _memory_for_the_weights_alone(model_dir, monkeypatch)
    result = CliRunner().invoke(main, ["evaluate", "--model", str(model_dir), "--data",
                                       str(data_dir), "--seq-len", "256", "--batch-size", "16",
                                       "--batches", "1", "--samples", "0"])
    assert result.exit_code == 1, result.output
    assert "this evaluation needs" in result.output
    assert "4,096 tokens per forward pass" in result.output


def test_train_seq_len_and_val_batches_are_checked_against_the_memory(data_dir, tmp_path,
                                                                      monkeypatch):
    from mlx_kssm._resources import model_footprint

    weights = model_footprint(build_model("tiny", vocab_size=256).args).parameters * 4
    monkeypatch.setenv("MLX_KSSM_MEMORY_BYTES", str(weights * 4 + 300_000))
    result = CliRunner().invoke(main, ["train", "--preset", "tiny", "--data", str(data_dir),
                                       "--output-dir", str(tmp_path / "run"), "--seq-len",
                                       "64", "--batch-size", "64", "--max-steps", "1"])
    assert result.exit_code == 1, result.output
    assert "this run needs" in result.output and "training step" in result.output
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------- defects 5 and 6: bounds, values

@pytest.mark.parametrize("key, value, named", [
    ("sample_tokens", 100_000_000, "--sample-tokens must be at most 10,000"),
    ("val_batches", 10_000_000, "--val-batches must be at most 100,000"),
    ("grad_accum", 1_000_000_000, "--grad-accum must be at most 4,096"),
    ("muon_lr_scale", -10, "--muon-lr-scale"),
    ("grokfast_alpha", 5.0, "--grokfast-alpha"),
    ("grokfast_lambda", -1.0, "--grokfast-lambda"),
    ("explode_factor", -1, "explode_factor"),
    ("explode_factor", 1, "explode_factor"),
])
def test_config_file_counts_and_hyperparameters_are_bounded(data_dir, tmp_path, key, value,
                                                            named):
    # a one-step run otherwise, so that accepting the value shows as a finished run
    options = {"max_steps": 1, "batch_size": 2, "seq_len": 16, "val_batches": 1,
               "sample_tokens": 2, "optimizer": "muon", "grokfast": True, key: value}
    toml = tmp_path / "run.toml"
    toml.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in options.items()))
    result = CliRunner().invoke(main, ["train", "--preset", "tiny", "--data", str(data_dir),
                                       "--config", str(toml), "--output-dir",
                                       str(tmp_path / "run")])
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: ") and named in result.output
    assert not (tmp_path / "run").exists()


def test_val_batches_flag_is_bounded_too(data_dir, tmp_path):
    result = CliRunner().invoke(main, ["train", "--preset", "tiny", "--data", str(data_dir),
                                       "--val-batches", "10000000", "--output-dir",
                                       str(tmp_path / "run")])
    assert result.exit_code == 1 and "--val-batches must be at most" in result.output


def test_evaluate_and_generate_counts_are_bounded(model_dir, data_dir):
    from mlx_kssm.evaluation import EvalConfig

    with pytest.raises(ValueError, match="--batches must be at most"):
        EvalConfig(batches=10**7).validate()
    with pytest.raises(ValueError, match="--sample-tokens must be at most"):
        EvalConfig(sample_tokens=10**8).validate()
    result = CliRunner().invoke(main, ["generate", "--model", str(model_dir), "--prompt", "a",
                                       "--max-tokens", "100000000"])
    assert result.exit_code == 1 and "--max-tokens must be at most 1,000,000" in result.output


def test_sigterm_during_the_last_samples_stops_them_saves_and_exits_143(data_dir, tmp_path,
                                                                         monkeypatch):
    """The final evaluation's samples (10,000 tokens here) stop at the first SIGTERM: the
    run saves its last step, releases the lock and returns 143."""
    from mlx_kssm.probe import generate as generate_mod
    from mlx_kssm.train import TrainConfig, train
    from mlx_kssm.train import checkpoint as ckpt
    from mlx_kssm.train import lock

    real, calls = generate_mod.sample_next, {"n": 0, "after": 0}

    def counting(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            os.kill(os.getpid(), signal.SIGTERM)
        elif calls["n"] > 5:
            calls["after"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(generate_mod, "sample_next", counting)
    out = tmp_path / "run"
    config = TrainConfig(preset="tiny", data=str(data_dir), output_dir=str(out), seq_len=16,
                         batch_size=2, max_steps=2, warmup_steps=1, steps_per_eval=2,
                         val_batches=1, save_every=100, sample_tokens=10_000,
                         sample_prompts=["The ", "A "])
    result = train(config, echo=lambda line: None)
    assert result.exit_code == 143 and result.step == 2
    assert calls["after"] == 0  # not one more token after the signal
    assert ckpt.latest_checkpoint(out).name == "step_2"
    assert not (out / lock.LOCK_NAME).exists()


# --------------------------------------------------------------------------- defect 8: decode

def test_stream_decoder_decodes_a_bounded_window_and_the_same_text():
    """Each push decodes a few ids, not every id so far (0.3 / 2.1 / 23 ms per token at 1k /
    10k / 100k ids before), and the pieces add up to the whole decode."""
    from mlx_kssm.data.tokenizer import BytesTokenizer
    from mlx_kssm.probe.generate import StreamDecoder

    tok, longest = BytesTokenizer(), [0]

    def decode(ids):
        longest[0] = max(longest[0], len(ids))
        return tok.decode(ids)

    rng = random.Random(3)
    text = "".join(rng.choice(["a", " ", "é", "€", "𝄞", "\n", "z"]) for _ in range(3000))
    ids = tok.encode(text) + [0xE2, 0x82]  # ends in a cut character
    dec = StreamDecoder(decode)
    shown = "".join(dec.push(i) for i in ids) + dec.flush()
    assert shown == tok.decode(ids)
    assert longest[0] <= StreamDecoder.CONTEXT + StreamDecoder.MAX_PENDING


def test_the_r_trace_is_bounded_and_the_summary_covers_every_token(monkeypatch):
    from mlx_kssm.probe import generate as generate_mod

    monkeypatch.setattr(generate_mod, "R_TRACE_KEEP", 5)
    model = build_model("tiny", seed=0)
    gen = generate_mod.generate_tokens(model, [1, 2, 3], max_tokens=12, temp=0.0)
    assert len(gen.tokens) == 12 and len(gen.r_trace) == 5
    assert gen.r_stats.tokens == 12
    lines = generate_mod.format_r(gen, trace=True)
    assert "the first 5 of 12 tokens" in lines[0]
    monkeypatch.setattr(generate_mod, "R_TRACE_KEEP", 100)
    whole = generate_mod.generate_tokens(model, [1, 2, 3], max_tokens=12, temp=0.0)
    assert whole.tokens == gen.tokens and len(whole.r_trace) == 12
    assert gen.r_stats.mean() == pytest.approx(float(np.mean(whole.r_trace)), rel=1e-9)


def test_study_bounds_its_batch_counts_before_training(data_dir, tmp_path):
    from mlx_kssm.study import StudyConfig

    for field, flag in (("val_batches", "--val-batches"), ("eval_batches", "--eval-batches")):
        config = StudyConfig(data=str(data_dir), output_dir=str(tmp_path / "s"),
                             models=["tiny"], **{field: 10**7}).resolved()
        with pytest.raises(ValueError, match=f"{flag} must be at most"):
            config.validate()


def test_fetch_and_train_follow_a_link_that_points_nowhere_yet(data_dir, tmp_path):
    from mlx_kssm.data.fetch import fetch_source

    fetched = tmp_path / "fetched"
    (tmp_path / "fl").symlink_to(fetched)
    fetch_source(str(data_dir.parent / "src"), tmp_path / "fl", log=lambda m: None)
    assert (tmp_path / "fl").is_symlink() and (fetched / "manifest.json").exists()

    run = tmp_path / "run"
    (tmp_path / "rl").symlink_to(run)
    result = CliRunner().invoke(main, ["train", "--preset", "tiny", "--data", str(data_dir),
                                       "--output-dir", str(tmp_path / "rl"), "--max-steps", "1",
                                       "--batch-size", "2", "--seq-len", "16",
                                       "--val-batches", "1"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "rl").is_symlink() and (run / "checkpoints" / "step_1").is_dir()
