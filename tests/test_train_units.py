"""Unit tests of the trainer's parts: schedule, config, lock, health verdicts, checkpoints,
evaluation determinism, status/monitor rendering."""

import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlx_kssm  # noqa: F401
import mlx.core as mx
import numpy as np
import pytest

from mlx_kssm import build_model
from mlx_kssm.evaluation import evaluate_loss
from mlx_kssm.io import load_model
from mlx_kssm.train import checkpoint as ckpt
from mlx_kssm.train import lock
from mlx_kssm.train.config import STAGE_STEPS, TrainConfig, build_config, read_config_file
from mlx_kssm.train.health import (FAILURE, HEALTHY, NA, WARNING, ExplosionDetector,
                                   format_verdict, stage_verdict)
from mlx_kssm.train.schedule import Schedule


# ------------------------------------------------------------------ schedule

def test_schedule_warmup_then_cosine_is_pure():
    s = Schedule(1e-3, 10, 100, 0.1)
    assert s.lr(5) == pytest.approx(5e-4)
    assert s.lr(10) == pytest.approx(1e-3)
    assert s.lr(100) == pytest.approx(1e-4)
    assert [s.lr(i) for i in range(1, 101)] == [s.lr(i) for i in range(1, 101)]
    lrs = [s.lr(i) for i in range(10, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_schedule_extension_keeps_past_and_is_continuous():
    s = Schedule(1e-3, 10, 100, 0.1)
    ext = s.with_horizon(200, 60)
    assert [ext.lr(i) for i in range(1, 61)] == [s.lr(i) for i in range(1, 61)]
    assert ext.lr(61) == pytest.approx(s.lr(60), rel=1e-3)  # no jump
    assert ext.lr(200) == pytest.approx(1e-4)
    assert ext.lr(150) > s.lr(100)
    # extension during warmup: simply the longer schedule
    assert s.with_horizon(200, 5) == Schedule(1e-3, 10, 200, 0.1)
    assert Schedule.from_dict(ext.to_dict()) == ext


# ------------------------------------------------------------------ config

def test_config_precedence_and_files(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('preset = "tiny"\ndata = "d"\nmax-steps = 50\nlearning_rate = 0.01\n')
    opts = read_config_file(toml)
    cfg = build_config(opts, {"max_steps": 7, "seed": None})
    assert (cfg.preset, cfg.max_steps, cfg.learning_rate) == ("tiny", 7, 0.01)
    js = tmp_path / "run.json"
    js.write_text(json.dumps({"preset": "tiny", "data": "d", "stage": 2}))
    assert build_config(read_config_file(js)).max_steps == STAGE_STEPS[2]
    with pytest.raises(ValueError, match="unknown training option"):
        build_config({"bogus": 1})
    with pytest.raises(ValueError, match="exactly one"):
        TrainConfig(data="d").validate()
    with pytest.raises(ValueError, match="--stage"):
        TrainConfig(preset="tiny", data="d", stage=9).validate()
    assert TrainConfig.from_dict(TrainConfig(preset="tiny").to_dict()) == TrainConfig(preset="tiny")


# ------------------------------------------------------------------ lock

def test_lock_refuses_live_holder_and_takes_over_stale(tmp_path):
    info = lock.acquire(tmp_path, command="first")
    assert info["pid"] == os.getpid()
    with pytest.raises(lock.LockError, match=f"pid {os.getpid()}"):
        lock.acquire(tmp_path, command="second")
    lock.release(tmp_path)
    assert lock.read_lock(tmp_path) is None
    # a holder that has exited: taken over, with a message
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / lock.LOCK_NAME).write_text(json.dumps(
        {"pid": dead.pid, "host": socket.gethostname(), "start_time": "x", "command": "old"}))
    messages = []
    lock.acquire(tmp_path, log=messages.append)
    assert "stale" in messages[0] and lock.read_lock(tmp_path)["pid"] == os.getpid()
    lock.release(tmp_path)
    # another host: refused (cannot be checked from here)
    (tmp_path / lock.LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    with pytest.raises(lock.LockError, match="another host"):
        lock.acquire(tmp_path)


def test_lock_pid_reuse_is_stale(tmp_path):
    # our own pid with a different process start tick: a reused pid, not the trainer
    (tmp_path / lock.LOCK_NAME).write_text(json.dumps(
        {"pid": os.getpid(), "host": socket.gethostname(), "start_tick": -5}))
    if lock.process_start_tick(os.getpid()) is None:
        pytest.skip("no /proc start ticks on this platform")
    lock.acquire(tmp_path, log=lambda m: None)
    lock.release(tmp_path)


# ------------------------------------------------------------------ health

def _train(step, loss, r=0.2, u=None, at=0.0, layers=None):
    rec = {"event": "train", "step": step, "loss": loss, "R": r,
           "R_layers": layers if layers is not None else [r, r]}
    if u is not None:
        rec.update(u=u, u_at_bound=at)
    return rec


def _eval(ppl, val_r=0.2, samples=None):
    return {"event": "eval", "val_ppl": ppl, "val_R": val_r, "samples": samples or []}


def _verdicts(stage, history):
    return {r["metric"]: r["verdict"] for r in stage_verdict(stage, history)["rows"]}


def test_stage1_loss_trend_each_outcome():
    down = [_train(i, 5 - 0.1 * i) for i in range(8)]
    flat = [_train(i, 5.0) for i in range(8)]
    up = [_train(i, 5 + 0.2 * i) for i in range(8)]
    nan = down[:-1] + [_train(8, float("nan"))]
    assert _verdicts(1, down)["loss"] == HEALTHY
    assert _verdicts(1, flat)["loss"] == WARNING
    assert _verdicts(1, up)["loss"] == FAILURE
    assert _verdicts(1, nan)["loss"] == FAILURE
    assert _verdicts(1, down[:1])["loss"] == NA


@pytest.mark.parametrize("stage,ppl,expected", [
    (2, 900, HEALTHY), (2, 1500, WARNING), (2, 2500, FAILURE),
    (3, 400, HEALTHY), (3, 700, WARNING), (3, 1200, FAILURE),
    (4, 250, HEALTHY), (4, 400, WARNING), (4, 600, FAILURE), (4, float("nan"), FAILURE)])
def test_val_ppl_bands(stage, ppl, expected):
    history = [_train(i, 5 - 0.1 * i) for i in range(8)] + [_eval(ppl)]
    assert _verdicts(stage, history)["val_ppl"] == expected


@pytest.mark.parametrize("u,at,expected", [(0.5, 0.0, HEALTHY), (0.11, 0.0, WARNING),
                                           (0.5, 0.2, WARNING), (0.1, 0.0, FAILURE),
                                           (0.5, 0.8, FAILURE), (9.99, 0.0, FAILURE)])
def test_u_val_rows(u, at, expected):
    history = [_train(i, 5 - 0.1 * i, u=u, at=at) for i in range(8)] + [_eval(500)]
    assert _verdicts(2, history)["u_val"] == expected
    assert _verdicts(2, [_train(i, 5 - 0.1 * i) for i in range(8)])["u_val"] == NA


@pytest.mark.parametrize("r,expected", [(0.2, HEALTHY), (0.005, WARNING), (0.0001, FAILURE)])
def test_r_rows(r, expected):
    history = [_train(i, 5 - 0.1 * i, r=r) for i in range(8)] + [_eval(500, val_r=r)]
    assert _verdicts(2, history)["R"] == expected


def test_zone_rows_stage3_and_4():
    def run(values):
        return [_train(i, 5 - 0.1 * i, layers=[v, v]) for i, v in enumerate(values)] + [_eval(300)]
    three = run([0.05, 0.2, 0.4, 0.4])  # unformed, intimacy, unbound
    two = run([0.05, 0.2, 0.2, 0.2])
    one = run([0.2, 0.21, 0.22, 0.2])
    locked = run([0.2] * 4)
    assert _verdicts(3, two)["R_zones"] == HEALTHY
    assert _verdicts(3, one)["R_zones"] == WARNING
    assert _verdicts(3, locked)["R_zones"] == FAILURE
    assert _verdicts(4, three)["R_zones"] == HEALTHY
    assert _verdicts(4, two)["R_zones"] == WARNING
    assert _verdicts(4, one)["R_zones"] == FAILURE


def test_samples_goldilocks_and_overall():
    good = {"collapsed": False, "distinct_2": 0.9, "reason": ""}
    rep = {"collapsed": False, "distinct_2": 0.4, "reason": ""}
    bad = {"collapsed": True, "distinct_2": 0.1, "reason": "punctuation run"}
    base = [_train(i, 5 - 0.1 * i, layers=[0.05 + 0.1 * i] * 2) for i in range(8)]
    assert _verdicts(3, base + [_eval(100, samples=[good])])["samples"] == HEALTHY
    assert _verdicts(3, base + [_eval(100, samples=[rep])])["samples"] == WARNING
    assert _verdicts(3, base + [_eval(100, samples=[bad])])["samples"] == FAILURE
    assert _verdicts(5, base + [_eval(100, val_r=0.35)])["goldilocks"] == HEALTHY
    assert _verdicts(5, base + [_eval(100, val_r=0.25)])["goldilocks"] == WARNING
    assert _verdicts(5, base + [_eval(100, val_r=0.1)])["goldilocks"] == FAILURE
    v = stage_verdict(3, base + [_eval(100, samples=[bad])])
    assert v["overall"] == FAILURE and "FAILURE" in format_verdict(v)
    assert stage_verdict(1, base)["overall"] == HEALTHY


def test_explosion_detector():
    d = ExplosionDetector(3.0)
    assert d.check(5.0) is None and d.check(2.0) is None and d.check(5.9) is None
    assert "exploding" in d.check(6.5)


# ------------------------------------------------------------------ checkpoints

def _tiny():
    return build_model("tiny", vocab_size=64, seed=0)


def test_checkpoint_atomic_layout_rotation_and_latest(tmp_path):
    model = _tiny()
    for step in (1, 2, 3, 4):
        ckpt.save_checkpoint(tmp_path, step, model, {"step": mx.array(step)},
                             {"step": step}, keep_last=2)
    names = [p.name for p in ckpt.list_checkpoints(tmp_path)]
    assert names == ["step_3", "step_4"]
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_4"
    c = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path))
    assert c.state["step"] == 4 and int(c.optimizer["step"]) == 4
    # killed mid-write: a temp folder and a complete step_5 not yet pointed to
    (tmp_path / "checkpoints" / ".tmp.step_6.123").mkdir()
    ckpt.save_checkpoint(tmp_path, 5, model, {}, {"step": 5}, keep_last=5)
    (tmp_path / "checkpoints" / "latest").write_text("step_4\n")
    assert ckpt.latest_checkpoint(tmp_path).name == "step_5"
    # a torn newest folder (no trainer_state.json) is ignored
    (tmp_path / "checkpoints" / "step_9").mkdir()
    assert ckpt.latest_checkpoint(tmp_path).name == "step_5"
    assert ckpt.recover(tmp_path) and not (tmp_path / "checkpoints" / ".tmp.step_6.123").exists()
    loaded, _ = load_model(ckpt.latest_checkpoint(tmp_path))
    assert mx.array_equal(loaded.embed.weight, model.embed.weight)


def test_best_swap_is_recovered(tmp_path):
    model = _tiny()
    ckpt.save_best(tmp_path, model, {"step": 1}, {"val_loss": 1.0}, None)
    os.replace(tmp_path / "best", tmp_path / ".best.old")  # killed between the renames
    ckpt.recover(tmp_path)
    assert (tmp_path / "best" / "model.safetensors").exists()
    assert json.loads((tmp_path / "best" / "metrics.json").read_text())["val_loss"] == 1.0


# ------------------------------------------------------------------ evaluation

def test_evaluate_loss_deterministic_and_shaped():
    model = _tiny()
    rng = np.random.default_rng(0)
    batches = [(rng.integers(0, 64, (2, 16)).astype(np.int32),
                rng.integers(0, 64, (2, 16)).astype(np.int32)) for _ in range(3)]
    a, b = evaluate_loss(model, batches), evaluate_loss(model, batches)
    assert a == b
    assert a["val_ppl"] == pytest.approx(math.exp(a["val_loss"]))
    assert a["n_tokens"] == 96 and len(a["val_R_layers"]) == 2 and 0 <= a["val_R"] <= 1
    assert abs(a["val_loss"] - math.log(64)) < 1.0
    v3 = build_model("v3", vocab_size=64, seed=0, d_model=32, n_layers=1, ffn_hidden=32,
                     n_groups=2, osc_per_group=4, harmonics=2)
    m = evaluate_loss(v3, batches[:1])
    assert m["val_u"] is not None and m["val_reg"] > 0
    tr = build_model("transformer-tiny", vocab_size=64, seed=0)
    assert evaluate_loss(tr, batches[:1])["val_R"] is None


def test_history_cut_follows_the_checkpoint_event(tmp_path):
    """A history an aborted attempt appended to: the count a checkpoint recorded is off, the
    cut still lands right after that checkpoint's own event."""
    from mlx_kssm.train.trainer import RunLog, read_history

    events = ([{"event": "train", "step": s} for s in (1, 2)]  # the aborted attempt
              + [{"event": "train", "step": s} for s in (1, 2, 3)]
              + [{"event": "checkpoint", "step": 3}, {"event": "train", "step": 4}])
    (tmp_path / "history.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    log = RunLog(tmp_path, writer=True, echo=lambda m: None)
    kept = log.truncate_history(4, step=3)  # the checkpoint counted only its own process's 4
    assert kept == events[:6] and read_history(tmp_path) == events[:6] and log.n_events == 6


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states in /proc")
def test_zombie_trainer_does_not_hold_the_lock(tmp_path):
    """A trainer killed but not yet reaped by its parent (a zombie) is gone: its lock is
    taken over."""
    zombie = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        zombie.kill()
        deadline = time.time() + 10
        while _state(zombie.pid) != "Z" and time.time() < deadline:
            time.sleep(0.05)
        assert _state(zombie.pid) == "Z"  # killed, not reaped: os.kill(pid, 0) still works
        (tmp_path / "training.lock").write_text(json.dumps(
            {"pid": zombie.pid, "host": socket.gethostname(), "start_time": "t",
             "start_tick": lock.process_start_tick(zombie.pid), "command": "mlx-kssm train"}))
        notes = []
        lock.acquire(tmp_path, log=notes.append)
        assert any("taking over stale lock" in n for n in notes)
        lock.release(tmp_path)
    finally:
        zombie.wait()


def _state(pid):
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
