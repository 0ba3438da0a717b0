"""Messages that name the file or option at fault, for inputs that used to get a misleading
one, and .jsonl held to the text rules of .txt."""

import errno
import json
import os
import re

import mlx_kssm  # noqa: F401
import pytest
from click.testing import CliRunner

from mlx_kssm import build_model, save_model
from mlx_kssm.cli import main
from mlx_kssm.data.errors import DataError
from mlx_kssm.data.prepare import prepare
from mlx_kssm.train import TrainConfig, lock, read_history, train
from mlx_kssm.train import checkpoint as ckpt
from mlx_kssm.train.status import format_status, run_status


def run_cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def error_line(res) -> str:
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output and "unexpected" not in res.output, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, res.output
    return errors[0]


def quiet_prepare(source, out):
    return prepare(source, out, tokenizer="bytes", val_fraction=0.5, log=lambda m: None)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_model(tmp_path_factory.mktemp("m") / "m",
                      build_model("tiny", vocab_size=257, seed=0), tokenizer_spec={"kind": "bytes"})


@pytest.mark.parametrize("command", ["generate", "intervene"])
def test_a_prompt_that_is_not_utf8_names_the_option(model_dir, command):
    # Python hands a command-line byte that is not UTF-8 over as a lone surrogate
    line = error_line(run_cli(command, "--model", model_dir, "--prompt", "caf\udce9"))
    assert "--prompt is not valid UTF-8" in line and "0xe9" in line


def test_a_config_file_that_is_not_utf8_names_the_file(tmp_path):
    config = tmp_path / "run.toml"
    config.write_bytes(b"max_steps = 3\n# caf\xe9\n")
    line = error_line(run_cli("train", "--config", config, "--preset", "tiny",
                              "--data", tmp_path, "--output-dir", tmp_path / "run"))
    assert str(config) in line and "not UTF-8" in line


def test_a_symlink_loop_output_dir_says_so(tmp_path):
    os.symlink("loop", tmp_path / "loop")
    line = error_line(run_cli("train", "--preset", "tiny", "--data", tmp_path,
                              "--output-dir", tmp_path / "loop"))
    assert "--output-dir" in line and "a symbolic link that loops" in line and "loop" in line
    assert os.path.islink(tmp_path / "loop")


def test_a_fifo_named_txt_is_not_called_empty(tmp_path):
    os.mkfifo(tmp_path / "a.txt")
    line = error_line(run_cli("data", "prepare", "--source", tmp_path / "a.txt",
                              "--out", tmp_path / "out", "--tokenizer", "bytes"))
    assert "not a regular file" in line and "no .txt" not in line


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
def test_utf16_text_is_named_utf16(tmp_path, encoding):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_bytes(("It was a dark night. " * 20).encode(encoding))
    with pytest.raises(DataError, match="UTF-16 text: convert it to UTF-8"):
        quiet_prepare(tmp_path / "src", tmp_path / "out")


def test_binary_data_is_still_binary(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_bytes(bytes(range(256)) * 8)
    with pytest.raises(DataError, match="binary data"):
        quiet_prepare(tmp_path / "src", tmp_path / "out")


# ---------------------------------------------------------------- .jsonl as strict as .txt

def jsonl_source(tmp_path, *lines: bytes):
    (tmp_path / "src").mkdir()
    good = json.dumps({"text": "It was a dark and stormy night. " * 4}).encode()
    (tmp_path / "src" / "a.jsonl").write_bytes(b"\n".join([good, good, *lines]) + b"\n")
    return tmp_path / "src"


@pytest.mark.parametrize("line, says", [
    (b'{"text": "caf\xe9 au lait"}', "a.jsonl:3: not UTF-8 (byte 0xe9"),
    (b'{"text": "a\\u0000b"}', "a.jsonl:3: the text holds a NUL"),
    (b'{"text": "a\x00b"}', "a.jsonl:3: binary data (NUL bytes)"),
    (b'{"text": "a\\udc80b"}', "a.jsonl:3: the text holds a lone surrogate"),
    (json.dumps({"text": "\x01\x02\x03\x04" * 20}).encode(), "a.jsonl:3: binary data (over"),
])
def test_jsonl_lines_are_held_to_the_text_rules(tmp_path, line, says):
    source = jsonl_source(tmp_path, line)
    with pytest.raises(DataError, match=re.escape(says)):
        quiet_prepare(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    line = error_line(run_cli("data", "fetch", "--source", source, "--out", tmp_path / "f"))
    assert says in line


def test_good_jsonl_still_prepares(tmp_path):
    quiet_prepare(jsonl_source(tmp_path, json.dumps({"text": "caf\u00e9 \u2603"}).encode()),
                  tmp_path / "out")
    assert json.loads((tmp_path / "out" / "meta.json").read_text())["documents"] == 3


# ---------------------------------------------------------------- the trainer's record

def tiny_config(data, out, **kw):
    return TrainConfig(**{**dict(preset="tiny", data=str(data), output_dir=str(out),
                                 seq_len=32, batch_size=4, max_steps=4, warmup_steps=1,
                                 steps_per_report=1, steps_per_eval=100, val_batches=1,
                                 save_every=2, sample_tokens=4, sample_prompts=["The "]), **kw})


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    (root / "src").mkdir()
    for d in range(4):
        (root / "src" / f"doc{d}.txt").write_text(f"document {d}: " + "the fox runs far " * 80)
    quiet_prepare(root / "src", root / "prep")
    return root / "prep"


def test_a_failed_checkpoint_write_records_no_checkpoint_event(data_dir, tmp_path,
                                                               monkeypatch):
    real = ckpt.save_checkpoint

    def full_disk_at_step_4(run_dir, step, *args, **kw):
        if step == 4:
            raise OSError(errno.ENOSPC, "No space left on device", "model.safetensors")
        return real(run_dir, step, *args, **kw)

    monkeypatch.setattr(ckpt, "save_checkpoint", full_disk_at_step_4)
    with pytest.raises(OSError):
        train(tiny_config(data_dir, tmp_path / "run"), echo=lambda m: None)
    saved = [r["step"] for r in read_history(tmp_path / "run") if r["event"] == "checkpoint"]
    assert saved == [2]
    monkeypatch.setattr(ckpt, "save_checkpoint", real)
    # resuming cuts the history back to step 2's checkpoint, its event kept
    train(tiny_config(data_dir, tmp_path / "run", resume=True), echo=lambda m: None)
    events = [(r["event"], r["step"]) for r in read_history(tmp_path / "run")
              if r["event"] in ("checkpoint", "resume")]
    assert events == [("checkpoint", 2), ("resume", 2), ("checkpoint", 4)]


def test_status_before_the_first_report_says_starting(tmp_path):
    run = tmp_path / "run"
    lock.acquire(run, log=lambda m: None)
    try:
        (run / "config.json").write_text(json.dumps({"train": {"max_steps": 40}}))
        text = format_status(run_status(run))
    finally:
        lock.release(run)
    assert "starting" in text and "step 0/40" not in text
