"""When things fail (docs/failures.md): linked output folders, temp folders on SIGTERM and
after dead writers, the resource guard on model sizes, the bounds on count options and
hyperparameters, a trainer that honours SIGTERM at any point, streaming decode."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlx_kssm  # noqa: F401
import pytest
from click.testing import CliRunner

from mlx_kssm import build_model, save_model
from mlx_kssm import _files
from mlx_kssm.cli import main
from mlx_kssm.data.prepare import prepare
from mlx_kssm.io import export_model, load

WORDS = "the quick brown fox jumps over lazy dog and cat runs far away into night sky".split()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    rng = random.Random(0)
    (root / "src").mkdir()
    for d in range(3):
        (root / "src" / f"doc{d}.txt").write_text(" ".join(rng.choice(WORDS) for _ in range(400)))
    prepare(root / "src", root / "prep", tokenizer="bytes", val_fraction=0.2, log=lambda m: None)
    return root / "prep"


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
    result = terminated_midway("mlx_kssm.io:write_model_folder", "export", "--model",
                               model_dir, "--out", out)
    assert result.returncode == 143, result.stderr
    assert hidden(tmp_path) == [] and sorted(p.name for p in out.iterdir()) == before


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
