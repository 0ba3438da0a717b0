"""End-to-end trainer tests on the tiny preset (seq 32, batch 4): exact resume, signals,
SIGKILL survival, NaN guard, lock refusal, stages, status/monitor, CLI errors."""

import errno
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import mlx_kssm  # noqa: F401
import mlx.core as mx
import numpy as np
import pytest
from conftest import tiny_config
from click.testing import CliRunner
from mlx.utils import tree_flatten

from mlx_kssm.cli import main
from mlx_kssm.data.prepare import prepare
from mlx_kssm.io import load_model
from mlx_kssm.models.presets import preset_train_defaults
from mlx_kssm.train import TrainConfig, read_history, train
from mlx_kssm.train import checkpoint as ckpt
from mlx_kssm.train import step as step_mod
from mlx_kssm.train import trainer as trainer_mod


@pytest.fixture(scope="module")
def data_dir(words_data):
    return words_data


TINY_LR = preset_train_defaults("tiny")["learning_rate"]  # tiny_config trains at it




def train_losses(run_dir):
    return {r["step"]: (r["loss"], r["ce"], r["grad_norm"], r["lr"])
            for r in read_history(run_dir) if r["event"] == "train"}


def cli(*args, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "mlx_kssm.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.slow
def test_resume_is_exact(data_dir, tmp_path):
    """2N steps in one go == N steps (of the same 2N-step plan) + --resume to 2N, at every
    step, with gradient accumulation and the Grokfast filter on (both carry state)."""
    kw = dict(grad_accum=2, grokfast=True)
    full = train(tiny_config(data_dir, tmp_path / "full", max_steps=12, **kw), echo=lambda m: None)
    assert full.status == "completed" and full.step == 12
    half = train(tiny_config(data_dir, tmp_path / "half", max_steps=6, schedule_steps=12,
                             save_every=100, **kw), echo=lambda m: None)
    assert half.step == 6
    logs = []
    res = train(tiny_config(data_dir, tmp_path / "half", max_steps=12, resume=True, **kw),
                echo=logs.append)
    assert res.step == 12 and not any("horizon" in m for m in logs)
    a, b = train_losses(tmp_path / "full"), train_losses(tmp_path / "half")
    assert a == b and sorted(a) == list(range(1, 13))  # loss, CE, grad norm, LR: all equal


@pytest.mark.slow
def test_extending_max_steps_replans_schedule(data_dir, tmp_path):
    train(tiny_config(data_dir, tmp_path / "r", max_steps=4, schedule_steps=8),
          echo=lambda m: None)
    logs = []
    train(tiny_config(data_dir, tmp_path / "r", max_steps=12, resume=True), echo=logs.append)
    assert any("horizon 8 -> 12" in m for m in logs)
    lrs = {s: v[3] for s, v in train_losses(tmp_path / "r").items()}
    assert lrs[4] * 0.8 < lrs[5] <= lrs[4]  # continues from the step-4 LR ...
    assert lrs[12] == pytest.approx(TINY_LR * 0.1) and lrs[8] > lrs[12]  # ... to the floor at 12


@pytest.mark.slow
def test_resume_with_a_new_learning_rate_scales_the_schedule(data_dir, tmp_path):
    """--learning-rate on --resume (what the NaN stop advises) takes effect: every later LR is
    the uninterrupted run's times new/old, the earlier ones are kept, and the log says so."""
    train(tiny_config(data_dir, tmp_path / "full", max_steps=8), echo=lambda m: None)
    train(tiny_config(data_dir, tmp_path / "r", max_steps=4, schedule_steps=8),
          echo=lambda m: None)
    logs = []
    train(tiny_config(data_dir, tmp_path / "r", max_steps=8, resume=True,
                      learning_rate=TINY_LR / 10),
          explicit={"learning_rate", "max_steps", "resume"}, echo=logs.append)
    assert any(f"learning rate {TINY_LR:g} -> {TINY_LR / 10:g}" in m for m in logs)
    full = {s: v[3] for s, v in train_losses(tmp_path / "full").items()}
    resumed = {s: v[3] for s, v in train_losses(tmp_path / "r").items()}
    assert [resumed[s] for s in range(1, 5)] == [full[s] for s in range(1, 5)]
    for s in range(5, 9):
        assert resumed[s] == pytest.approx(0.1 * full[s], rel=1e-6)


@pytest.mark.slow
def test_resume_same_horizon_is_bitwise_identical(data_dir, tmp_path):
    train(tiny_config(data_dir, tmp_path / "full", max_steps=8, save_every=100),
          echo=lambda m: None)
    # the same 8-step run, interrupted after step 4 (as by Ctrl-C), then resumed
    cfg = tiny_config(data_dir, tmp_path / "half", max_steps=8, save_every=100)
    original = trainer_mod._Loop.stop_requested
    trainer_mod._Loop.stop_requested = \
        lambda self: signal.SIGINT if self.state.step == 4 else None
    try:
        res = train(cfg, echo=lambda m: None)
    finally:
        trainer_mod._Loop.stop_requested = original
    assert (res.status, res.step, res.exit_code) == ("interrupted", 4, 130)
    train(cfg.replace(resume=True), echo=lambda m: None)
    a, b = train_losses(tmp_path / "full"), train_losses(tmp_path / "half")
    assert a == b and len(a) == 8  # loss, CE, grad norm and LR equal at every step
    va = [r["val_loss"] for r in read_history(tmp_path / "full") if r["event"] == "eval"]
    vb = [r["val_loss"] for r in read_history(tmp_path / "half") if r["event"] == "eval"]
    assert va[-1] == vb[-1]


@pytest.mark.slow
def test_v3_checkpoint_with_ten_core_projections_resumes_exactly(data_dir, tmp_path):
    """A v3 checkpoint saved with ten core projections (its weights, and AdamW's and
    Grokfast's state of them, with rows i and j) resumes: both are converted to the eight-row
    layout, and the resumed steps equal the uninterrupted run's."""
    import shutil

    from conftest import with_ten_core_projections
    from mlx_kssm import build_model, save_model
    folder = save_model(tmp_path / "v3", build_model("tiny", vocab_size=257, seed=0,
                                                     bistable=True),
                        tokenizer_spec={"kind": "bytes"})
    cfg = tiny_config(data_dir, tmp_path / "full", preset=None, model=str(folder), grokfast=True)
    assert train(cfg, echo=lambda m: None).step == 6
    old = shutil.copytree(tmp_path / "full", tmp_path / "old")
    step_3 = old / "checkpoints" / "step_3"
    with_ten_core_projections(step_3, seed=1)
    with_ten_core_projections(step_3, seed=2, file=ckpt.OPTIMIZER)
    rows = mx.load(str(folder / "model.safetensors"))["layers.0.bank.in_proj.bias"].shape[0]
    saved = mx.load(str(step_3 / ckpt.OPTIMIZER))
    assert saved["grokfast.layers.0.bank.in_proj.bias"].shape[0] == rows + 2
    assert saved["layers.0.bank.in_proj.weight.m"].shape[0] == rows + 2
    res = train(cfg.replace(output_dir=str(old)), echo=lambda m: None, resume_from=step_3)
    assert res.status == "completed" and res.step == 6
    assert train_losses(old) == train_losses(tmp_path / "full")


def test_existing_run_needs_resume_and_lock_refuses(data_dir, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(data_dir, out, max_steps=2), echo=lambda m: None)
    with pytest.raises(ValueError, match="--resume"):
        train(tiny_config(data_dir, out, max_steps=2), echo=lambda m: None)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / "training.lock").write_text(json.dumps(
            {"pid": holder.pid, "host": __import__("socket").gethostname(),
             "start_time": "2026-01-01T00:00:00+00:00", "command": "mlx-kssm train (other)"}))
        r = CliRunner().invoke(main, ["train", "--resume", "--output-dir", str(out),
                                      "--max-steps", "3"])
        assert r.exit_code == 1
        lines = [l for l in r.output.strip().splitlines() if l]
        assert len(lines) == 1 and f"pid {holder.pid}" in lines[0] and "Traceback" not in r.output
        s = CliRunner().invoke(main, ["status", str(out)])
        assert "ALIVE" in s.output and s.exit_code == 0
    finally:
        holder.kill()
        holder.wait()
    s = CliRunner().invoke(main, ["status", str(out)])
    assert "NOT RUNNING" in s.output and "stale lock" in s.output and s.exit_code == 1
    r = CliRunner().invoke(main, ["train", "--resume", "--output-dir", str(out),
                                  "--max-steps", "3"])
    assert r.exit_code == 0 and "taking over stale lock" in r.output
    assert not (out / "training.lock").exists()


@pytest.mark.slow
def test_nan_guard_keeps_last_good_checkpoint(data_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    train(tiny_config(data_dir, out, max_steps=4, save_every=2), echo=lambda m: None)
    original = step_mod.loss_fn

    def poisoned(model, inputs, targets):
        loss, metrics = original(model, inputs, targets)
        return loss * mx.array(float("nan")), metrics

    monkeypatch.setattr(step_mod, "loss_fn", poisoned)
    logs = []
    res = train(tiny_config(data_dir, out, max_steps=8, save_every=2, resume=True),
                echo=logs.append)
    assert (res.status, res.exit_code, res.step) == ("nan", 3, 5)
    assert "step_4" in res.message and any(m.startswith("ERROR: loss is nan") for m in logs)
    assert ckpt.latest_checkpoint(out).name == "step_4"
    model, _ = load_model(ckpt.latest_checkpoint(out))
    assert all(bool(mx.all(mx.isfinite(p))) for _, p in tree_flatten(model.parameters()))
    assert read_history(out)[-1]["status"] == "nan"
    assert not (out / "training.lock").exists()


@pytest.mark.slow
def test_stage_verdict_printed_and_stored(data_dir, tmp_path):
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", "--preset", "tiny", "--data", str(data_dir),
                                  "--output-dir", str(out), "--stage", "3", "--max-steps", "8",
                                  "--no-stop-on-failure",
                                  "--seq-len", "32", "--batch-size", "4", "--steps-per-eval", "4",
                                  "--steps-per-report", "2", "--val-batches", "2"])
    assert r.exit_code == 0, r.output
    assert "Stage 3 verdict" in r.output and "val_ppl" in r.output and "R_zones" in r.output
    verdicts = [e for e in read_history(out) if e["event"] == "verdict"]
    assert len(verdicts) == 2 and verdicts[-1]["stage"] == 3
    assert {row["metric"] for row in verdicts[-1]["rows"]} >= {"loss", "val_ppl", "R", "R_zones"}
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["train"]["stage"] == 3 and cfg["train"]["max_steps"] == 8
    m = CliRunner().invoke(main, ["monitor", str(out), "--once"])
    assert m.exit_code == 0 and "R zone visits" in m.output and "evaluations:" in m.output
    lines = (out / "training.log").read_text()
    assert "Iter 8: Train loss" in lines and "Tokens/sec" in lines and "Peak mem" in lines


@pytest.mark.slow
def test_sigint_and_sigterm_save_and_exit(data_dir, tmp_path):
    for sig, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        out = tmp_path / sig.name
        p = cli("train", "--preset", "tiny", "--data", str(data_dir), "--output-dir", str(out),
                "--seq-len", "32", "--batch-size", "4", "--max-steps", "100000",
                "--steps-per-report", "1", "--save-every", "100000", "--steps-per-eval", "100000")
        _wait_for_step(out, 3)
        p.send_signal(sig)
        stdout, stderr = p.communicate(timeout=60)
        assert p.returncode == code, stderr
        assert "Traceback" not in stderr
        last = ckpt.latest_checkpoint(out)
        state = json.loads((last / "trainer_state.json").read_text())
        assert state["step"] >= 3 and f"stopped by {sig.name}" in stdout
        assert not (out / "training.lock").exists()


def _wait_until(condition, what, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"no {what} within {timeout}s")


def _wait_for_step(out, step):
    def reached():
        trains = [r for r in read_history(out) if r.get("event") == "train"]
        return trains and trains[-1]["step"] >= step
    _wait_until(reached, f"step {step} in {out}")


def _wait_for_checkpoint(out, step):
    def saved():
        newest = ckpt.latest_checkpoint(out)
        return newest is not None and int(newest.name[5:]) >= step
    _wait_until(saved, f"checkpoint of step {step} in {out}")


def _wait_for_lock(out, pid):
    def taken():
        try:
            return json.loads((out / "training.lock").read_text())["pid"] == pid
        except (OSError, ValueError, KeyError):
            return False
    _wait_until(taken, f"lock of pid {pid} on {out}")


@pytest.mark.slow
def test_sigkill_at_random_moments_leaves_loadable_checkpoint(data_dir, tmp_path):
    out = tmp_path / "run"
    rng = random.Random(1)
    args = ["train", "--preset", "tiny", "--data", str(data_dir), "--output-dir", str(out),
            "--seq-len", "32", "--batch-size", "4", "--max-steps", "100000",
            "--save-every", "1", "--keep-last", "2", "--steps-per-report", "1",
            "--steps-per-eval", "7", "--val-batches", "1", "--resume"]
    last_step = 0
    for attempt in range(3):
        p = cli(*args)
        _wait_for_lock(out, p.pid)  # the history may still show the killed attempt's steps
        _wait_for_checkpoint(out, last_step + 1)  # this attempt saved one: kill it anywhere
        time.sleep(rng.uniform(0.0, 0.6))
        p.kill()  # SIGKILL
        p.wait()
        newest = ckpt.latest_checkpoint(out)
        assert newest is not None
        model, config = load_model(newest)  # the model folder loads
        state = ckpt.load_checkpoint(newest).state  # and the full checkpoint
        assert state["step"] >= last_step
        last_step = state["step"]
    # the killed run resumes (the stale lock is taken over) and finishes
    final = cli(*[a if a != "100000" else str(last_step + 2) for a in args])
    stdout, stderr = final.communicate(timeout=120)
    assert final.returncode == 0, stderr
    assert "taking over stale lock" in stdout and "resumed from" in stdout
    steps = [r["step"] for r in read_history(out) if r["event"] == "train"]
    assert steps == list(range(1, last_step + 3))  # no step lost or repeated


def test_cli_bad_input_is_one_line(tmp_path):
    r = CliRunner().invoke(main, ["train", "--preset", "tiny", "--data", str(tmp_path / "nope"),
                                  "--output-dir", str(tmp_path / "o")])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1 and "meta.json" in r.output
    r = CliRunner().invoke(main, ["train", "--data", "x"])
    assert r.exit_code == 1 and "exactly one" in r.output
    r = CliRunner().invoke(main, ["train", "--help"])
    assert "Examples:" in r.output and "--resume" in r.output and "Exit status" in r.output
    r = CliRunner().invoke(main, ["status", str(tmp_path / "missing")])
    assert r.exit_code == 1 and "no such run folder" in r.output


@pytest.mark.slow
def test_list_presets():
    r = CliRunner().invoke(main, ["train", "--list-presets"])
    assert r.exit_code == 0
    lines = {l.split()[0]: l for l in r.output.splitlines()}
    assert {"tiny", "v2", "v3", "transformer"} <= set(lines) and "M " in lines["v2"]


def test_muon_optimizer_trains_and_resumes(data_dir, tmp_path):
    cfg = tiny_config(data_dir, tmp_path / "m", optimizer="muon", max_steps=4, save_every=2,
                      steps_per_eval=4, learning_rate=1e-3)
    full = train(cfg, echo=lambda m: None)
    assert full.status == "completed"
    losses = [v[0] for _, v in sorted(train_losses(tmp_path / "m").items())]
    assert all(l == l for l in losses) and losses[-1] < losses[0]
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "m"))
    assert any(k.startswith("states.0.") for k in state.optimizer)  # Muon's momentum saved


def _snapshot(folder):
    """Every file under `folder` with its bytes (what a refused command must leave alone)."""
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_resume_refuses_data_of_another_tokenizer(data_dir, tmp_path):
    """A compacted byte vocabulary fits the model's 257 ids but means other text: refused."""
    other = tmp_path / "other"
    prepare(data_dir.parent / "src", other, tokenizer="bytes", compact=True, val_fraction=0.2,
            log=lambda m: None)
    out = tmp_path / "run"
    train(tiny_config(data_dir, out, max_steps=3), echo=lambda m: None)
    before = _snapshot(out)
    r = CliRunner().invoke(main, ["train", "--resume", "--output-dir", str(out), "--data",
                                  str(other), "--max-steps", "6"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    lines = [l for l in r.output.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), r.output
    assert "another tokenizer" in lines[0] and "bytes vs bytes compacted to" in lines[0]
    assert _snapshot(out) == before  # checkpoints, config, history and log untouched


def test_resume_from_a_damaged_trainer_state_is_one_error_line(data_dir, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(data_dir, out, max_steps=3), echo=lambda m: None)
    path = ckpt.latest_checkpoint(out) / "trainer_state.json"
    state = json.loads(path.read_text())
    del state["history_len"]
    path.write_text(json.dumps(state))
    before = _snapshot(out)
    r = CliRunner().invoke(main, ["train", "--resume", "--output-dir", str(out),
                                  "--max-steps", "6"])
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit)  # no traceback
    lines = [l for l in r.output.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"Error: {path}: no 'history_len'"), r.output
    assert _snapshot(out) == before


class _Crash(Exception):
    """Stands for a trainer dying (power cut, OOM kill) at a chosen step."""


def _crash_at(monkeypatch, step):
    original = trainer_mod._Loop.train_step

    def train_step(self):
        record = original(self)
        if self.state.step == step:
            raise _Crash(f"died at step {step}")
        return record

    monkeypatch.setattr(trainer_mod._Loop, "train_step", train_step)


@pytest.mark.slow
def test_early_crash_then_rerun_keeps_history_exact(data_dir, tmp_path, monkeypatch):
    """An attempt that dies before its first checkpoint, the same command again (interrupted
    after its first checkpoint), then --resume: every step once, equal to a straight run."""
    train(tiny_config(data_dir, tmp_path / "straight"), echo=lambda m: None)
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        _crash_at(m, 3)  # just before the first checkpoint (save_every 3)
        with pytest.raises(_Crash):
            train(tiny_config(data_dir, out), echo=lambda m: None)
    assert ckpt.latest_checkpoint(out) is None and sorted(train_losses(out)) == [1, 2]
    with monkeypatch.context() as m:
        m.setattr(trainer_mod._Loop, "stop_requested",
                  lambda self: signal.SIGINT if self.state.step == 4 else None)
        assert train(tiny_config(data_dir, out), echo=lambda m: None).step == 4
    train(tiny_config(data_dir, out, resume=True), echo=lambda m: None)
    steps = [r["step"] for r in read_history(out) if r["event"] == "train"]
    assert steps == list(range(1, 7))
    assert train_losses(out) == train_losses(tmp_path / "straight")


@pytest.mark.slow
def test_plain_resume_after_crash_before_first_checkpoint(data_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        _crash_at(m, 2)
        with pytest.raises(_Crash):
            train(tiny_config(data_dir, out), echo=lambda m: None)
    r = CliRunner().invoke(main, ["train", "--resume", "--output-dir", str(out)])
    assert r.exit_code == 0, r.output
    assert f"no checkpoint in {out}: starting a new run" in r.output
    assert [r["step"] for r in read_history(out) if r["event"] == "train"] == list(range(1, 7))


def test_resuming_a_finished_run_repeats_nothing(data_dir, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(data_dir, out, max_steps=4, save_every=4, steps_per_eval=4),
          echo=lambda m: None)
    saved = (ckpt.latest_checkpoint(out) / "model.safetensors").stat().st_mtime_ns
    res = train(tiny_config(data_dir, out, max_steps=4, resume=True), echo=lambda m: None)
    assert (res.status, res.step, res.exit_code) == ("completed", 4, 0)
    events = [(r["event"], r["step"]) for r in read_history(out)]
    for event in ("eval", "checkpoint", "end"):
        assert events.count((event, 4)) == 1, events
    assert (ckpt.latest_checkpoint(out) / "model.safetensors").stat().st_mtime_ns == saved


def test_refused_start_leaves_no_run_folder(data_dir, tmp_path):
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", "--preset", "tiny", "--data", str(data_dir),
                                  "--output-dir", str(out), "--seq-len", "100000"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert r.output.startswith("Error:") and "too few for windows" in r.output
    assert len(r.output.strip().splitlines()) == 1 and not out.exists()


def test_output_dir_that_is_a_file(data_dir, tmp_path):
    out = tmp_path / "notes.txt"
    out.write_text("keep me")
    r = CliRunner().invoke(main, ["train", "--preset", "tiny", "--data", str(data_dir),
                                  "--output-dir", str(out)])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1
    assert r.output.startswith(f"Error: --output-dir {out} exists and is not a folder")
    assert out.read_text() == "keep me"


@pytest.mark.slow
def test_run_records_absolute_data_path(data_dir, tmp_path, monkeypatch):
    """A relative --data works from any working directory later (and from a copied run)."""
    monkeypatch.chdir(data_dir.parent)
    train(tiny_config(data_dir.name, tmp_path / "run", max_steps=2), echo=lambda m: None)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["train"]["data"]
    assert saved == str(data_dir.resolve())
    monkeypatch.chdir(tmp_path)
    res = train(TrainConfig(output_dir=str(tmp_path / "run"), max_steps=3, resume=True),
                echo=lambda m: None)
    assert res.step == 3


def _disk_full_at(monkeypatch, marker):
    """mx.save_safetensors into a file whose temp path contains `marker` writes part of it and
    then fails as a full disk does (the OS's ENOSPC from the write)."""
    original = mx.save_safetensors

    def save(file, arrays, metadata=None):
        if marker in (file if isinstance(file, str) else file.name):
            if not isinstance(file, str):
                file.write(b"\0" * 4096)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(file, arrays, metadata=metadata)

    monkeypatch.setattr(mx, "save_safetensors", save)


@pytest.mark.slow
def test_disk_full_while_writing_a_checkpoint(data_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    args = ["train", "--preset", "tiny", "--data", str(data_dir), "--output-dir", str(out),
            "--seq-len", "32", "--batch-size", "4", "--max-steps", "6", "--save-every", "3",
            "--steps-per-eval", "100", "--steps-per-report", "1"]
    with monkeypatch.context() as m:
        _disk_full_at(m, "step_6")
        r = CliRunner().invoke(main, args)
    assert r.exit_code == 1 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    line = r.stderr.strip()
    assert line.startswith(f"Error: checkpoint {out / 'checkpoints' / 'step_6'} not saved: "
                           "No space left on device (writing model.safetensors)"), line
    assert "step_3 is kept" in line
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step_3"]
    assert "ERROR: checkpoint" in (out / "training.log").read_text()
    assert read_history(out)[-1]["status"] == "error"
    assert not (out / "training.lock").exists()
    load_model(ckpt.latest_checkpoint(out))
    resumed = CliRunner().invoke(main, ["train", "--resume", "--output-dir", str(out)])
    assert resumed.exit_code == 0, resumed.output
    assert [r["step"] for r in read_history(out) if r["event"] == "train"] == list(range(1, 7))


@pytest.mark.slow
def test_disk_full_while_writing_best(data_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    train(tiny_config(data_dir, out, max_steps=3), echo=lambda m: None)  # best/ at step 3
    best = _snapshot(out / "best")
    with monkeypatch.context() as m:
        _disk_full_at(m, f"{os.sep}.best.pid")
        with pytest.raises(OSError, match=r"best \(step 6\) not saved: No space left on device"):
            train(tiny_config(data_dir, out, max_steps=6, resume=True), echo=lambda m: None)
    assert _snapshot(out / "best") == best
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp.best")]
    assert "ERROR:" in (out / "training.log").read_text()


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.slow
def test_next_start_removes_stale_temp_files(data_dir, tmp_path):
    """What killed writers leave (this version's names with a dead pid, and an earlier
    version's names) goes at the next start; a live writer's temp file stays."""
    out = tmp_path / "run"
    train(tiny_config(data_dir, out, max_steps=3), echo=lambda m: None)
    dead = _dead_pid()
    stale_files = [out / ".history.jsonl.k2j4h5g6.tmp", out / ".config.json.x8d7f6s5.tmp",
                   out / "checkpoints" / ".latest.a1b2c3d4.tmp", out / ".training.lock.stale.4242",
                   out / f".config.json.pid{dead}.q8w7e6r5.tmp"]
    stale_dirs = [out / "checkpoints" / f".step_4.pid{dead}.tmp", out / f".best.pid{dead}.tmp",
                  out / "checkpoints" / f".step_1.pid{dead}.trash"]
    for path in stale_files:
        path.write_text("{}")
    for path in stale_dirs:
        path.mkdir()
        (path / "model.safetensors").write_bytes(b"\0" * 1000)
    stale = stale_files + stale_dirs
    live = out / f".intervene.json.pid{os.getpid()}.z.tmp"  # another command writing now
    live.write_text("{}")
    logs = []
    train(tiny_config(data_dir, out, max_steps=4, resume=True), echo=logs.append)
    assert not [p for p in stale if p.exists()] and live.exists()
    assert sum(m.startswith("removed leftover") for m in logs) == len(stale)


def test_status_of_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "notes.txt").write_text("not a run")
    for args in (["status", str(tmp_path)], ["monitor", str(tmp_path), "--once"]):
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1, r.output
        assert r.output.startswith(f"Error: {tmp_path} is not a training run folder")


@pytest.mark.slow
def test_config_json_that_is_a_list(data_dir, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(data_dir, out, max_steps=2), echo=lambda m: None)
    for folder in (out, out / "checkpoints" / "step_2", out / "best"):
        (folder / "config.json").write_text("[1, 2]")
    r = CliRunner().invoke(main, ["generate", "--model", str(out), "--prompt", "a"])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1, r.output
    assert "config.json holds a JSON list, not an object" in r.output
    assert "unexpected" not in r.output
    s = CliRunner().invoke(main, ["status", str(out)])
    assert "NOT RUNNING" in s.output and "Traceback" not in s.output


def test_output_dir_that_is_a_model_folder_is_refused(data_dir, tmp_path):
    """A new run would overwrite an exported model's config.json: refused."""
    from mlx_kssm import build_model, save_model

    folder = save_model(tmp_path / "export", build_model("tiny", vocab_size=257, seed=0),
                        tokenizer_spec={"kind": "bytes"})
    before = _snapshot(folder)
    r = CliRunner().invoke(main, ["train", "--preset", "tiny", "--data", str(data_dir),
                                  "--output-dir", str(folder)])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1, r.output
    assert "is not a training run's config (a model folder?)" in r.output
    assert _snapshot(folder) == before


def _one_error_line(r) -> str:
    lines = [l for l in r.output.splitlines() if l.strip()]
    assert r.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error:"), r.output
    assert "unexpected" not in lines[0], lines[0]
    return lines[0]


def test_output_dir_that_is_not_a_run_is_refused(data_dir, tmp_path, monkeypatch):
    """A folder holding anything but a run (a user's best/notes.txt) is never trained into:
    best/ would be replaced whole. An empty --output-dir would train into the working
    directory."""
    out = tmp_path / "d"
    (out / "best").mkdir(parents=True)
    (out / "best" / "notes.txt").write_text("keep me")
    args = ["train", "--preset", "tiny", "--data", str(data_dir), "--max-steps", "2",
            "--seq-len", "32", "--batch-size", "4"]
    for extra in ([], ["--resume"]):
        line = _one_error_line(CliRunner().invoke(main, args + extra + ["--output-dir", str(out)]))
        assert f"--output-dir {out} is not a training run" in line and "(best)" in line
        assert _snapshot(out) == {"best/notes.txt": b"keep me"}
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for extra in ([], ["--resume"]):
        line = _one_error_line(CliRunner().invoke(main, args + extra + ["--output-dir", ""]))
        assert "--output-dir must name a folder, got an empty path" in line
        assert not list(work.iterdir())


@pytest.mark.slow
def test_a_run_folder_still_takes_a_run(data_dir, tmp_path):
    """What a trainer writes before config.json (lock, log, history) does not make a folder
    foreign: the attempt that died there is rerun."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "training.log").write_text("an attempt that died early\n")
    (out / "history.jsonl").write_text('{"event": "start", "step": 0}\n')
    assert train(tiny_config(data_dir, out, max_steps=2), echo=lambda m: None).step == 2
    (out / "config.json").write_text("{")  # damaged: the checkpoints still make it a run
    assert train(tiny_config(data_dir, out, max_steps=3, resume=True),
                 echo=lambda m: None).step == 3


@pytest.mark.slow
def test_latest_pointing_into_another_run_is_refused(data_dir, tmp_path):
    """`latest` = another run's complete checkpoint: resuming from it trained that model on
    that run's data and rotated this run's checkpoints away."""
    out, other = tmp_path / "run", tmp_path / "other"
    train(tiny_config(data_dir, out, max_steps=3), echo=lambda m: None)
    train(tiny_config(data_dir, other, max_steps=6), echo=lambda m: None)
    pointer = out / "checkpoints" / "latest"
    pointer.write_text("../../other/checkpoints/step_6\n")
    before, theirs = _snapshot(out), _snapshot(other)
    for args in (["train", "--resume", "--output-dir", str(out), "--max-steps", "9"],
                 ["status", str(out)]):
        line = _one_error_line(CliRunner().invoke(main, args))
        assert f"{pointer} names '../../other/checkpoints/step_6', not a checkpoint of this " \
               "run" in line
    assert _snapshot(out) == before and _snapshot(other) == theirs


@pytest.mark.slow
def test_resume_with_another_preset_or_model_is_refused(data_dir, tmp_path):
    """--resume kept training the run's own model but wrote the preset given into
    config.json; a --preset / --model naming another model is an error naming both."""
    from mlx_kssm import build_model, save_model

    out = tmp_path / "run"
    train(tiny_config(data_dir, out, max_steps=3), echo=lambda m: None)
    folder = save_model(tmp_path / "m", build_model("tiny", vocab_size=257, seed=1),
                        tokenizer_spec={"kind": "bytes"})
    before = _snapshot(out)
    for given, shown in ((["--preset", "v2"], "--preset v2"),
                         (["--model", str(folder)], f"--model {folder}")):
        line = _one_error_line(CliRunner().invoke(
            main, ["train", "--resume", "--output-dir", str(out), "--max-steps", "4", *given]))
        assert f"{shown} differs from the run's preset tiny" in line
        assert _snapshot(out) == before
    r = CliRunner().invoke(main, ["train", "--resume", "--output-dir", str(out), "--preset",
                                  "tiny", "--max-steps", "4"])  # the run's own: fine
    assert r.exit_code == 0, r.output


@pytest.mark.slow
def test_resume_with_the_runs_own_model_folder_given_relative(data_dir, tmp_path, monkeypatch):
    """The run records --model as an absolute path: the same folder given relative is the
    run's own model, not another."""
    from mlx_kssm import build_model, save_model

    save_model(tmp_path / "m", build_model("tiny", vocab_size=257, seed=1),
               tokenizer_spec={"kind": "bytes"})
    monkeypatch.chdir(tmp_path)
    args = ["train", "--model", "m", "--data", str(data_dir), "--output-dir", "run",
            "--batch-size", "2", "--seq-len", "16", "--steps-per-eval", "100"]
    r = CliRunner().invoke(main, [*args, "--max-steps", "2"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, [*args, "--resume", "--max-steps", "3"])
    assert r.exit_code == 0, r.output


def test_resume_where_there_is_no_run(tmp_path):
    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "missing", tmp_path / "empty"):
        line = _one_error_line(CliRunner().invoke(
            main, ["train", "--resume", "--output-dir", str(folder)]))
        assert f"--resume: no run to resume in {folder}" in line
    assert not (tmp_path / "missing").exists() and not list((tmp_path / "empty").iterdir())


@pytest.mark.parametrize("option, value", [
    ("--seed", "-1"), ("--seed", str(2**32)), ("--learning-rate", "inf"),
    ("--learning-rate", "0"), ("--grad-clip", "nan"), ("--weight-decay", "inf")])
def test_out_of_range_flags_are_usage_errors(data_dir, tmp_path, option, value):
    """--seed -1 ended in "unexpected TypeError", --learning-rate inf in a NaN loss (exit 3):
    refused while parsing, as generate's and evaluate's are."""
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", "--preset", "tiny", "--data", str(data_dir),
                                  "--output-dir", str(out), "--max-steps", "2", option, value])
    assert r.exit_code == 2 and f"Invalid value for '{option}'" in r.output, r.output
    assert not out.exists()


@pytest.mark.parametrize("line, message", [
    ("seed = -1", "--seed must lie in [0, 4294967295], got -1"),
    ("learning_rate = inf", "--learning-rate must be a finite number, got inf"),
    ("grad_clip = nan", "--grad-clip must be a finite number, got nan"),
    # reached only through --config (the flags' own ranges refuse them while parsing): a
    # negative min_delta or lambda_reg trained without a word, groups = 0 was refused as
    # "n_groups", a name the user never wrote
    ("min_delta = -0.5", "--min-delta must be >= 0, got -0.5"),
    ("lambda-reg = -1.0", "--lambda-reg must be >= 0, got -1.0"),
    ("groups = 0", "--groups must be >= 1, got 0"),
    ("d_model = 0", "--d-model must be >= 1, got 0"),
    ("n_layers = -2", "--n-layers must be >= 1, got -2"),
    ("osc_per_group = 0", "--osc-per-group must be >= 1, got 0"),
    ("ffn_hidden = 0", "--ffn-hidden must be >= 1, got 0"),
    ("harmonics = 0", "--harmonics must be >= 1, got 0")])
def test_out_of_range_config_values_are_one_error_line(data_dir, tmp_path, line, message):
    toml = tmp_path / "run.toml"
    toml.write_text(line + "\n")
    out = tmp_path / "run"
    assert _one_error_line(CliRunner().invoke(main, [
        "train", "--preset", "tiny", "--data", str(data_dir), "--output-dir", str(out),
        "--max-steps", "2", "--config", str(toml)])) == f"Error: {message}"
    assert not out.exists()


def test_config_file_of_the_wrong_type_is_one_error_line(data_dir, tmp_path):
    """`seq_len = true` trained with sequences of length 1 (rc 0)."""
    toml = tmp_path / "run.toml"
    toml.write_text("seq_len = true\n")
    out = tmp_path / "run"
    line = _one_error_line(CliRunner().invoke(main, [
        "train", "--preset", "tiny", "--data", str(data_dir), "--output-dir", str(out),
        "--max-steps", "2", "--config", str(toml)]))
    assert line == f"Error: --config {toml}: seq_len must be an integer, got True"
    assert not out.exists()


def test_muon_and_grokfast_help_says_they_are_unmeasured():
    """No run here measured Muon or Grokfast on a K-SSM: each of their options says so."""
    helps = {p.opts[0]: p.help for p in main.commands["train"].params if p.opts}
    for option in ("--optimizer", "--muon-lr-scale", "--grokfast", "--grokfast-lambda",
                   "--grokfast-alpha"):
        assert "not measured here" in helps[option] and "docs/training.md" in helps[option], option
    assert "not measured here" not in helps["--learning-rate"]
    r = CliRunner().invoke(main, ["train", "--help"])
    assert r.exit_code == 0 and "not measured here" in r.output


def test_optimizer_has_help():
    r = CliRunner().invoke(main, ["train", "--help"])
    option = r.output[r.output.index("--optimizer"):r.output.index("--grokfast")]
    assert "adamw = AdamW" in option and "muon = Muon" in option and "[default: adamw]" in option


@pytest.mark.parametrize("field, value, says", [
    ("max_steps", "2", "max_steps must be an integer, got '2'"),
    ("batch_size", 2.5, "batch_size must be an integer, got 2.5"),
    ("seed", True, "seed must be an integer, got True"),  # trained, then could not resume
    ("learning_rate", "1e-3", "learning_rate must be a number, got '1e-3'"),
    ("max_steps", np.int64(2), "max_steps must be an integer"),  # JSON can't hold it
    ("sample_prompts", "The ", "sample_prompts must be a list of strings, got 'The '")])
def test_a_config_built_in_python_is_type_checked(data_dir, tmp_path, field, value, says):
    """from_dict checked types; a TrainConfig built in Python reached the trainer unchecked
    (deep TypeErrors, or a run trained on one-character prompts that could not resume)."""
    out = tmp_path / "run"
    for resume in (False, True):
        config = TrainConfig(**{**tiny_config(data_dir, out).to_dict(), field: value,
                                "resume": resume})
        with pytest.raises(ValueError, match=re.escape(says)):
            train(config, echo=lambda m: None)
        assert not out.exists()


# ------------------------------------------------------------------ stage gates that act

def _stage_run(data_dir, out, *extra):
    return CliRunner().invoke(main, [
        "train", "--preset", "tiny", "--data", str(data_dir), "--output-dir", str(out),
        "--stage", "2", "--max-steps", "6", "--seq-len", "32", "--batch-size", "4",
        "--steps-per-eval", "2", "--steps-per-report", "1", "--val-batches", "2",
        "--save-every", "100", *extra])


def test_stage_failure_stops_the_run_with_exit_4_and_a_loadable_checkpoint(data_dir, tmp_path,
                                                                           monkeypatch):
    """Planted: every R counts as "locked at 0", a stage 2 FAILURE that stops a run at its
    first evaluation; --no-stop-on-failure reports it and trains on."""
    from mlx_kssm.train import health
    monkeypatch.setattr(health, "R_HEALTHY", 10.0)
    monkeypatch.setattr(health, "R_FAILURE", 5.0)
    out = tmp_path / "run"
    r = _stage_run(data_dir, out)
    assert r.exit_code == 4, r.output
    assert "stage 2 verdict FAILURE at step 2 of stage 2 (R)" in r.output
    end = read_history(out)[-1]
    assert (end["event"], end["status"], end["step"]) == ("end", "stage_failed", 2)
    step_2 = ckpt.latest_checkpoint(out)
    assert step_2.name == "step_2" and ckpt.is_complete(step_2)
    model, _ = load_model(step_2)
    assert model.args.preset == "tiny"
    r = CliRunner().invoke(main, ["train", "--resume", "--output-dir", str(out),
                                  "--no-stop-on-failure"])
    assert r.exit_code == 0, r.output
    assert "Stage 2 verdict: FAILURE" in r.output and read_history(out)[-1]["step"] == 6


def test_stage_failure_at_the_end_of_the_stage(data_dir, tmp_path, monkeypatch):
    """Planted: a val PPL band no model meets; judged at the stage's end only."""
    from mlx_kssm.train import health
    monkeypatch.setitem(health.PPL_BANDS, 2, (1.0, 1.5))
    out = tmp_path / "run"
    r = _stage_run(data_dir, out)
    assert r.exit_code == 4, r.output
    assert "FAILURE at the end of stage 2 (val_ppl)" in r.output
    assert read_history(out)[-1]["status"] == "stage_failed"
    assert ckpt.latest_checkpoint(out).name == "step_6"
    assert _stage_run(data_dir, tmp_path / "b", "--no-stop-on-failure").exit_code == 0


def test_stage5_end_runs_the_behavioural_probe_as_a_warning_level_row(data_dir, tmp_path):
    """Stage 5's end runs the behavioural probe at cheap settings, logs its score with the CI
    and judges it in the verdict; a tiny model's weak score warns and does not stop the run."""
    from mlx_kssm.train.health import BEHAVIOUR_SAMPLES, BEHAVIOUR_TOKENS
    out = tmp_path / "run"
    r = CliRunner().invoke(main, [
        "train", "--preset", "tiny", "--data", str(data_dir), "--output-dir", str(out),
        "--stage", "5", "--max-steps", "2", "--seq-len", "32", "--batch-size", "4",
        "--steps-per-eval", "100", "--steps-per-report", "1", "--val-batches", "1",
        "--no-stop-on-failure"])
    assert r.exit_code == 0, r.output
    history = read_history(out)
    [probe] = [e for e in history if e["event"] == "behaviour"]
    assert (probe["samples"], probe["max_tokens"]) == (BEHAVIOUR_SAMPLES, BEHAVIOUR_TOKENS)
    assert probe["completions"] == 5 * BEHAVIOUR_SAMPLES and len(probe["score_ci"]) == 2
    assert "Behavioural score" in r.output
    verdict = [e for e in history if e["event"] == "verdict"][-1]
    [row] = [x for x in verdict["rows"] if x["metric"] == "behaviour"]
    assert row["verdict"] in ("healthy", "warning") and "behavioural score" in row["detail"]


# ------------------------------------------------------------------ trainer flags

NEW_FLAGS = ["--lambda-reg", "0.1", "--grokfast-lambda", "0.02", "--grokfast-alpha", "0.9",
             "--muon-lr-scale", "5", "--min-delta", "0.01", "--d-model", "32", "--n-layers", "3",
             "--groups", "4", "--osc-per-group", "2", "--ffn-hidden", "48", "--harmonics", "2",
             "--no-stop-on-failure"]


def test_new_train_flags_reach_the_config(monkeypatch):
    seen = {}

    def fake_train(config, explicit, echo, resume_from=None):
        seen.update(config=config, explicit=explicit)
        return trainer_mod.TrainResult("completed", 0, 0, None)

    monkeypatch.setattr(trainer_mod, "train", fake_train)
    r = CliRunner().invoke(main, ["train", "--preset", "v3", "--data", "d", *NEW_FLAGS])
    assert r.exit_code == 0, r.output
    c = seen["config"]
    assert (c.lambda_reg, c.grokfast_lambda, c.grokfast_alpha, c.muon_lr_scale, c.min_delta) == \
        (0.1, 0.02, 0.9, 5.0, 0.01)
    assert (c.d_model, c.n_layers, c.groups, c.osc_per_group, c.ffn_hidden, c.harmonics) == \
        (32, 3, 4, 2, 48, 2)
    assert c.stop_on_failure is False and {"lambda_reg", "groups", "min_delta"} <= seen["explicit"]


@pytest.mark.parametrize("option, value", [
    ("--grokfast-alpha", "1"), ("--grokfast-lambda", "-1"), ("--muon-lr-scale", "0"),
    ("--min-delta", "nan"), ("--lambda-reg", "-0.1"), ("--d-model", "0"), ("--groups", "0")])
def test_new_train_flags_out_of_range_are_usage_errors(data_dir, tmp_path, option, value):
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", "--preset", "tiny", "--data", str(data_dir),
                                  "--output-dir", str(out), "--max-steps", "2", option, value])
    assert r.exit_code == 2 and f"Invalid value for '{option}'" in r.output, r.output
    assert not out.exists()


def test_model_dimension_flags_build_the_model(data_dir, tmp_path):
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", "--preset", "tiny", "--data", str(data_dir),
                                  "--output-dir", str(out), "--max-steps", "2", "--seq-len", "32",
                                  "--batch-size", "4", "--val-batches", "1", "--d-model", "32",
                                  "--n-layers", "1", "--groups", "4",
                                  "--osc-per-group", "2", "--ffn-hidden", "48",
                                  "--harmonics", "2"])
    assert r.exit_code == 0, r.output
    m = json.loads((out / "config.json").read_text())["model"]
    assert (m["d_model"], m["n_layers"], m["n_groups"], m["osc_per_group"], m["ffn_hidden"],
            m["harmonics"]) == (32, 1, 4, 2, 48, 2)
    model, _ = load_model(out / "best")
    assert model.args.d_model == 32 and len(model.layers) == 1
    line = _one_error_line(CliRunner().invoke(main, ["train", "--resume", "--output-dir", str(out),
                                                     "--max-steps", "4", "--d-model", "64"]))
    assert "--d-model: --resume continues the run's own model" in line


@pytest.mark.parametrize("args, says", [
    (["--preset", "tiny", "--lambda-reg", "0.1"], "preset tiny has no bistable core"),
    (["--model", "MODEL", "--groups", "4"], "--groups set(s) the model of a --preset run")])
def test_model_flags_that_do_not_apply_are_one_error_line(data_dir, tmp_path, args, says):
    folder = tmp_path / "model"
    from mlx_kssm import save_model
    from mlx_kssm.models import build_model
    save_model(folder, build_model("tiny", vocab_size=257, seed=0),
               tokenizer_spec={"kind": "bytes"})
    args = [str(folder) if a == "MODEL" else a for a in args]
    out = tmp_path / "run"
    line = _one_error_line(CliRunner().invoke(main, [
        "train", "--data", str(data_dir), "--output-dir", str(out), "--max-steps", "2", *args]))
    assert says in line
    assert not out.exists()


def test_lambda_reg_sets_the_log_barrier_of_a_bistable_model():
    from mlx_kssm.models import build_model
    from mlx_kssm.train.setup import model_overrides
    overrides = model_overrides(TrainConfig(lambda_reg=0.1, groups=4))
    assert overrides == {"lambda_logu": 0.1, "n_groups": 4}
    args = build_model("v3", vocab_size=300, seed=0, d_model=32, **overrides).args
    assert (args.lambda_logu, args.n_groups) == (0.1, 4)
    with pytest.raises(ValueError, match="n_groups must be >= 1"):
        build_model("v3", vocab_size=300, **model_overrides(TrainConfig(groups=0)))


def test_min_delta_counts_only_large_improvements_for_patience(data_dir, tmp_path):
    kw = dict(max_steps=8, steps_per_eval=2, patience=1, save_every=100)
    plain = train(tiny_config(data_dir, tmp_path / "a", **kw), echo=lambda m: None)
    assert plain.status == "completed" and plain.step == 8  # it improves at every evaluation
    strict = train(tiny_config(data_dir, tmp_path / "b", min_delta=100.0, **kw),
                   echo=lambda m: None)
    assert (strict.status, strict.step) == ("early_stopped", 4)
    assert "no val improvement > 100 in 1 evaluations" in strict.message
