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


def test_weight_decay_is_the_presets_unless_the_run_sets_it():
    from mlx_kssm.models import preset_train_defaults
    from mlx_kssm.models.presets import DEFAULT_WEIGHT_DECAY
    from mlx_kssm.train.config import fill_preset_defaults

    def decay(preset, **given):
        config = TrainConfig(preset=preset, data="d", **given)
        return fill_preset_defaults(config, preset_train_defaults(preset)).weight_decay
    # the char and tiny presets (K-SSM and its comparisons alike) recommend 0.1; v2's name none
    assert decay("v1-char") == decay("transformer-char") == decay("control-bolted-char") == 0.1
    assert decay("tiny") == decay("transformer-tiny") == decay("control-bolted-tiny") == 0.1
    assert decay("v2") == decay("transformer") == DEFAULT_WEIGHT_DECAY == 0.01
    assert decay("v1-char", weight_decay=0.0) == 0.0  # the run's own setting wins, 0 included
    with pytest.raises(ValueError, match="--weight-decay"):
        TrainConfig(preset="tiny", data="d", weight_decay=-0.1).validate()


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


GIBBERISH_SAMPLE = "o the ne uny ther UEAORRLNoiols"  # a v3 sample once rated "healthy, varied"
# a training corpus in miniature; its words include "o", "ne" and "ther", as a Gutenberg
# vocabulary does
CORPUS = ("It was the best of times, it was the worst of times. She said that she would not go "
          "to the house again, for the night was dark and the road was long. O my lord, ne "
          "yet ther be time enough: we shall go again to the old house by the river, and she "
          "will tell us of the best days she had there. ") * 3


def _vocabulary():
    from mlx_kssm.data.tokenizer import load_tokenizer
    from mlx_kssm.probe.quality import corpus_vocabulary
    tok = load_tokenizer("bytes")
    return corpus_vocabulary(tok.encode_array(CORPUS), tok.decode, chunks=4)


def _sample(text, vocabulary):
    from mlx_kssm.probe.quality import sample_quality
    return {"prompt": "The ", "text": text, **sample_quality(list(text.encode()), text, vocabulary)}


def test_samples_row_tells_words_from_gibberish():
    """The share of a sample's words found in the training corpus (probe.quality): real text
    passes, letter-shuffled text and the gibberish once rated healthy do not."""
    vocabulary = _vocabulary()
    real = "She was not at the old house by the river that night, and it was long and dark."
    shuffled = "Seh swa ton ta het dlo sueho yb het virre htat ghtni, dna ti swa nglo dan kard."
    base = [_train(i, 5 - 0.1 * i, layers=[0.05 + 0.1 * i] * 2) for i in range(8)]

    def row(*texts):
        samples = [_sample(t, vocabulary) for t in texts]
        r = [x for x in stage_verdict(3, base + [_eval(100, samples=samples)])["rows"]
             if x["metric"] == "samples"][0]
        return r["verdict"], r["detail"]

    assert row(real)[0] == HEALTHY and "words and phrases" in row(real)[1]
    assert row(shuffled) == (FAILURE, row(shuffled)[1]) and "gibberish" in row(shuffled)[1]
    assert row(GIBBERISH_SAMPLE) == (WARNING, "fragments: 67% of 6 words in the corpus")
    assert row(real, GIBBERISH_SAMPLE)[0] == HEALTHY  # pooled over an evaluation's samples
    # a last word cut short by the token limit counts when a corpus word begins with it
    from mlx_kssm.probe.quality import known_words
    assert known_words("she said that she would not go to the hou", vocabulary) == (10, 10)
    assert known_words("she said that she would not go to the xqz", vocabulary) == (9, 10)


def _u_history(us):
    return [_train(i, 5 - 0.1 * i, u=u) for i, u in enumerate(us)]


def test_stage4_u_course_edge_surfing_wandering_locked():
    def u_row(us):
        rows = stage_verdict(4, _u_history(us))["rows"]
        return [r for r in rows if r["metric"] == "u_course"][0]

    edge = u_row([0.5, 0.4, 0.3, 0.25, 0.2, 0.3, 0.22, 0.35])
    wander = u_row([1.0, 2.0, 3.0, 1.5, 2.5, 4.0, 3.2, 2.2])
    locked = u_row([1.0, 2.0, 3.0, 2.0, 2.0, 2.0, 2.0, 2.0])
    assert (edge["verdict"], wander["verdict"], locked["verdict"]) == (HEALTHY, WARNING, FAILURE)
    assert "edge-surfing" in edge["detail"] and "wandering" in wander["detail"]
    assert "locked" in locked["detail"]
    assert u_row([0.3, 0.2, 0.25])["verdict"] == NA  # too few reports
    no_u = [_train(i, 5 - 0.1 * i) for i in range(8)]
    assert [r for r in stage_verdict(4, no_u)["rows"] if r["metric"] == "u_course"][0][
        "verdict"] == NA
    assert "u_course" not in _verdicts(3, _u_history([0.3] * 8))


def test_stopping_rows_mid_stage_and_at_the_end():
    from mlx_kssm.train.health import stopping_rows
    base = [_train(i, 5 - 0.1 * i) for i in range(8)]
    high_ppl = stage_verdict(2, base + [_eval(5000)])
    assert stopping_rows(high_ppl, final=False) == []  # a stage's PPL is judged at its end
    assert stopping_rows(high_ppl, final=True) == ["val_ppl"]
    locked = stage_verdict(2, [_train(i, 5 - 0.1 * i, r=0.0, layers=[0.0, 0.0])
                               for i in range(8)] + [_eval(100, val_r=0.0)])
    assert stopping_rows(locked, final=False) == ["R"]


def _behaviour(score, ci, step=8):
    return {"event": "behaviour", "step": step, "score": score, "score_ci": ci,
            "paired_difference": 0.5, "paired_difference_ci": [0.0, 1.0], "completions": 10}


def test_stage5_behaviour_row_is_a_score_with_its_ci_and_never_a_failure():
    """Stage 5's behavioural probe row: healthy when the CI lies above 0, else a warning
    (no baseline in training to call it a failure); n/a until measured at the stage's end,
    and a measurement followed by more training no longer counts."""
    from mlx_kssm.train.health import stopping_rows
    base = [_train(i, 5 - 0.1 * i, layers=[0.05 + 0.1 * i] * 2) for i in range(8)]
    ok = base + [_eval(100, val_r=0.35)]

    def row(history):
        return [r for r in stage_verdict(5, history)["rows"] if r["metric"] == "behaviour"][0]

    present = row(ok + [_behaviour(0.4, [0.1, 0.7])])
    assert present["verdict"] == HEALTHY and present["value"] == 0.4
    assert "behavioural score 0.40 (95% CI 0.10-0.70" in present["detail"]
    assert "agency" not in present["detail"].lower()
    none = stage_verdict(5, ok + [_behaviour(0.0, [0.0, 0.0])])
    assert [r["verdict"] for r in none["rows"] if r["metric"] == "behaviour"] == [WARNING]
    assert none["overall"] == WARNING and stopping_rows(none, final=True) == []
    assert row(ok + [_behaviour(0.1, [0.0, 0.3])])["verdict"] == WARNING
    assert row(ok)["verdict"] == NA
    assert row(ok + [_behaviour(0.4, [0.1, 0.7]), _train(9, 4.0)])["verdict"] == NA
    assert "behaviour" not in _verdicts(4, ok + [_behaviour(0.4, [0.1, 0.7])])


def test_warmup_is_capped_on_a_short_run_unless_given():
    from mlx_kssm.train.setup import cap_warmup
    notes = []
    stage1 = TrainConfig(max_steps=STAGE_STEPS[1])  # warmup 100 by default: the LR peaked last
    capped = cap_warmup(stage1, set(), notes)
    assert capped.warmup_steps == 10 and "warmup 100 -> 10 steps" in notes[0]
    notes.clear()
    given = cap_warmup(stage1.replace(warmup_steps=50), {"warmup_steps"}, notes)
    assert given.warmup_steps == 50 and "--warmup-steps 50 is over 10%" in notes[0]
    notes.clear()
    long_run = TrainConfig(max_steps=5000)
    assert cap_warmup(long_run, set(), notes) == long_run and notes == []
    plan = TrainConfig(max_steps=100, schedule_steps=2000)  # the horizon, not max_steps
    assert cap_warmup(plan, set(), notes).warmup_steps == 100


def test_resume_inside_warmup_says_the_lr_keeps_rising():
    """Resumed at step 5 of a 10-step warmup with a new horizon, the LR rises to step 10: the
    note said the cosine decayed from step 5."""
    from mlx_kssm.train.setup import _trainer_state
    from mlx_kssm.train.state import TrainerState
    old = TrainConfig(learning_rate=1e-3, warmup_steps=10, max_steps=100)
    saved = TrainerState(config=old, schedule=Schedule(1e-3, 10, 100), step=5)
    notes = []
    state = _trainer_state(old.replace(max_steps=200), saved, 1, notes)
    assert state.schedule.lr(6) > state.schedule.lr(5)  # what the LR does
    assert "keeps rising to 1.000e-03 at the end of warmup (step 10)" in notes[0]
    assert "decays over the new horizon" in notes[0]  # after warmup
    past = TrainerState(config=old, schedule=Schedule(1e-3, 10, 100), step=50)
    notes.clear()
    _trainer_state(old.replace(max_steps=200), past, 1, notes)
    assert "keeps rising" not in notes[0] and "from step 50 (LR" in notes[0]


def test_monitor_and_status_name_zones_by_the_table_asked(tmp_path):
    from click.testing import CliRunner
    from mlx_kssm.cli import main
    events = [{"event": "train", "step": s, "loss": 5.0, "ce": 5.0, "R": 0.55,
               "R_layers": [0.55, 0.55], "lr": 1e-3, "tokens_per_sec": 1.0}
              for s in (10, 20)]
    (tmp_path / "history.jsonl").write_text("\n".join(json.dumps(e) for e in events) + "\n")
    default = CliRunner().invoke(main, ["monitor", str(tmp_path), "--once"])
    v2 = CliRunner().invoke(main, ["monitor", str(tmp_path), "--once", "--zones", "v2"])
    assert "🌀 Mystery" in default.output and "Goldilocks" not in default.output
    assert "🌀 Goldilocks" in v2.output and "Mystery" not in v2.output
    status = CliRunner().invoke(main, ["status", str(tmp_path), "--zones", "v2"])
    assert "R 0.5500 (🌀 Goldilocks)" in status.output


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
    from mlx_kssm.train.runlog import RunLog, read_history

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


# ------------------------------------------------------------------ trainer state, step, history

# trainer_state.json as mlx-kssm 0.2 (before TrainerState) wrote it, at step 12 of a run
STATE_0_2 = {
    "step": 12, "max_steps": 12,
    "schedule": {"base_lr": 0.003, "warmup_steps": 2, "total_steps": 12, "min_lr_ratio": 0.1,
                 "restarts": [], "first_total": None},
    "lr": 0.00030000000000000003, "best_val_loss": 0.8485361039638519, "best_step": 12,
    "evals_without_improvement": 0, "explosion_min": 0.9012945294380188,
    "rng_key": [2347835043, 840933761],
    "data": {"sampler": "BatchSampler", "seed": 0, "position": 24, "world_size": 1},
    "history_len": 18,
    "config": {"preset": "tiny", "model": None, "data": "/tmp/data/prep", "output_dir": "run",
               "batch_size": 4, "seq_len": 32, "learning_rate": 0.003, "max_steps": 12,
               "schedule_steps": None, "warmup_steps": 2, "min_lr_ratio": 0.1,
               "weight_decay": 0.01, "grad_accum": 2, "grad_clip": 1.0, "optimizer": "adamw",
               "muon_lr_scale": 10.0, "grokfast": True, "grokfast_alpha": 0.98,
               "grokfast_lambda": 2.0, "steps_per_report": 1, "steps_per_eval": 3,
               "val_batches": 2, "save_every": 100, "keep_last": 3, "patience": 0, "seed": 0,
               "resume": False, "kernel": "auto", "stage": None, "explode_factor": 3.0,
               "sample_prompts": ["The ", "To be, or not to be"], "sample_tokens": 40},
    "saved": "2026-11-21T19:36:44+00:00"}


def test_trainer_state_reads_0_2_checkpoints_and_writes_the_same_keys():
    from mlx_kssm.train.state import TrainerState

    state = TrainerState.from_json(STATE_0_2)
    assert (state.step, state.best_step, state.history_len, state.rng_key) == \
        (12, 12, 18, (2347835043, 840933761))
    assert state.config.grad_accum == 2 and state.schedule.total_steps == 12
    again = state.to_json()
    assert list(again) == list(STATE_0_2)  # the same keys, in the same order
    assert {k for k in STATE_0_2 if again[k] != STATE_0_2[k]} == {"saved", "config"}
    # the config: 0.2's options unchanged, options added since at their defaults
    old = STATE_0_2["config"]
    assert {k: again["config"][k] for k in old} == old
    assert all(v == getattr(TrainConfig(), k) for k, v in again["config"].items() if k not in old)
    fresh = TrainerState(config=TrainConfig(), schedule=Schedule(1e-3, 10, 100))
    assert fresh.to_json()["explosion_min"] is None  # no loss seen: JSON has no infinity
    assert TrainerState.from_json(fresh.to_json()).explosion_min == math.inf
    for key in ("history_len", "rng_key", "config"):
        with pytest.raises(ValueError, match=f"no '{key}'"):
            TrainerState.from_json({k: v for k, v in STATE_0_2.items() if k != key})
    with pytest.raises(ValueError, match="unreadable trainer state"):
        TrainerState.from_json({**STATE_0_2, "rng_key": "a"})


def _sgd_step(inputs, targets, accum: int, clip: float):
    """(grad norm, update per parameter) of one make_step step with plain SGD (lr 0.1)."""
    import mlx.optimizers as optim
    from mlx.utils import tree_flatten

    from mlx_kssm.train.optim import Grokfast
    from mlx_kssm.train.step import make_step

    model = _tiny()
    before = {k: np.array(v) for k, v in tree_flatten(model.trainable_parameters())}
    opt = optim.SGD(learning_rate=0.1)
    opt.init(model.trainable_parameters())
    step, state = make_step(model, opt, Grokfast(model.trainable_parameters(), enabled=False),
                            grad_accum=accum, grad_clip=clip, world=1)
    grads, size = None, len(inputs) // accum
    for i in range(accum):
        part = slice(i * size, (i + 1) * size)
        _, _, grads, norm = step(inputs[part], targets[part], grads, i == accum - 1)
    mx.eval(state)
    after = dict(tree_flatten(model.trainable_parameters()))
    return float(norm), {k: np.array(after[k]) - before[k] for k in before}


def test_make_step_accumulates_averages_and_clips():
    """grad_accum micro-batches give the update and grad norm of their concatenation; a clip
    caps the update's norm. make_step needs no TrainConfig; the benchmarks' helper runs it."""
    rng = np.random.default_rng(0)
    inputs = mx.array(rng.integers(0, 64, (4, 12)).astype(np.int32))
    targets = mx.array(rng.integers(0, 64, (4, 12)).astype(np.int32))
    norm_one, update_one = _sgd_step(inputs, targets, accum=1, clip=0.0)
    norm_two, update_two = _sgd_step(inputs, targets, accum=2, clip=0.0)
    assert norm_two == pytest.approx(norm_one, rel=1e-4)
    for name, u in update_one.items():
        assert np.allclose(u, update_two[name], atol=1e-6), name
    clip = norm_one / 10
    norm, update = _sgd_step(inputs, targets, accum=2, clip=clip)
    size = math.sqrt(sum(float(np.sum(u * u)) for u in update.values()))
    assert norm == pytest.approx(norm_one, rel=1e-4)  # the norm reported is before the clip
    assert size == pytest.approx(0.1 * clip, rel=1e-3)
    sys.path.insert(0, str(Path(__file__).parent.parent / "research" / "bench"))
    from _common import trainer_step

    run, _ = trainer_step(_tiny(), 2, 12)
    first = float(run(inputs[:2], targets[:2]))
    assert float(run(inputs[:2], targets[:2])) < first


def test_one_read_history_skips_a_torn_last_line(tmp_path):
    """The trainer, status, plot and the quality benchmark read history.jsonl with one
    function, which skips the torn last line a kill leaves (and lines that are not objects)."""
    import importlib.util

    from mlx_kssm.probe import plot
    from mlx_kssm.train import read_history

    events = [{"event": "train", "step": 1}, {"event": "eval", "step": 1}]
    (tmp_path / "history.jsonl").write_text(
        "".join(json.dumps(e) + "\n" for e in events) + "[1, 2]\n" + '{"event": "tra')
    bench_dir = Path(__file__).parent.parent / "research" / "bench"
    spec = importlib.util.spec_from_file_location("bench_quality", bench_dir / "quality.py")
    quality = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quality)
    for reader in (read_history, plot.read_history, quality.read_history):
        assert reader(tmp_path) == events


@pytest.mark.slow
def test_status_imports_neither_the_trainer_nor_optimizers():
    code = ("import sys, mlx_kssm.train.status, mlx_kssm.train.commands; "
            "print(sorted(m for m in sys.modules if m in "
            "('mlx_kssm.train.trainer', 'mlx.optimizers', 'mlx_kssm.train.optim')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


# ------------------------------------------------------------------ bad input in run files

def _toml_value(line):
    import tomllib
    return next(iter(tomllib.loads(line).values()))


@pytest.mark.parametrize("line, key, shown", [
    ('max_steps = "two"', "max_steps", "'two'"), ("batch_size = 2.5", "batch_size", "2.5"),
    ("seq_len = true", "seq_len", "True"), ('resume = "no"', "resume", "'no'"),
    ("grokfast = 1", "grokfast", "1"), ("data = 5", "data", "5"),
    ("sample_prompts = [1]", "sample_prompts", "[1]"), ("stage = 2.0", "stage", "2.0")])
def test_config_file_values_are_type_checked(tmp_path, line, key, shown):
    """bool is an int in Python (`seq_len = true` trained with length 1) and a string is
    truthy (`resume = "no"` resumed): each value must have its option's type."""
    path = tmp_path / "run.toml"
    path.write_text(f'preset = "tiny"\n{line}\n')
    with pytest.raises(ValueError) as e:
        read_config_file(path)
    message = str(e.value)
    assert message.startswith(f"--config {path}: {key} must be ") and f"got {shown}" in message
    with pytest.raises(ValueError, match=f"training option {key} must be"):
        TrainConfig.from_dict({key: _toml_value(line)})


def test_config_file_float_takes_an_int_and_json_null_only_where_optional(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"learning_rate": 1, "weight_decay": None, "grad_clip": 0}))
    opts = read_config_file(path)
    assert opts == {"learning_rate": 1.0, "weight_decay": None, "grad_clip": 0.0}
    assert isinstance(opts["learning_rate"], float)
    path.write_text(json.dumps({"max_steps": None}))
    with pytest.raises(ValueError, match="max_steps must be an integer, got None"):
        read_config_file(path)


@pytest.mark.parametrize("option, value", [
    ("learning_rate", math.inf), ("learning_rate", math.nan), ("grad_clip", math.nan),
    ("weight_decay", math.inf), ("grad_clip", math.inf), ("muon_lr_scale", math.nan)])
def test_non_finite_floats_are_refused(option, value):
    """inf passes `> 0` and nan every comparison: both trained to a NaN loss."""
    flag = "--" + option.replace("_", "-")
    with pytest.raises(ValueError, match=f"{flag} must be a finite number"):
        TrainConfig(preset="tiny", data="d", **{option: value}).validate()


@pytest.mark.parametrize("seed, ok", [(-1, False), (2**32, False), (0, True), (2**32 - 1, True)])
def test_seed_range(seed, ok):
    config = TrainConfig(preset="tiny", data="d", seed=seed)
    if ok:
        config.validate()
    else:
        with pytest.raises(ValueError, match=r"--seed must lie in \[0, 4294967295\]"):
            config.validate()


@pytest.mark.parametrize("content", [{"pid": "abc"}, {"pid": [1]}, {"pid": True},
                                     {"pid": 1, "host": 5}, {"pid": 1, "start_tick": "x"}])
def test_lock_of_the_wrong_kind_is_unreadable_garbage(tmp_path, content):
    """A lock whose pid, host or start tick is of the wrong kind is garbage, as a lock that is
    not JSON is: refused while young (naming the file, saying what to do), then taken over."""
    path = tmp_path / lock.LOCK_NAME
    path.write_text(json.dumps({"host": socket.gethostname(), **content}))
    assert lock.read_lock(tmp_path) == {}
    with pytest.raises(lock.LockError, match=f"{path} is unreadable.*try again in 10s"):
        lock.acquire(tmp_path)
    old = time.time() - 60
    os.utime(path, (old, old))
    notes = []
    lock.acquire(tmp_path, log=notes.append)
    assert notes == [f"taking over unreadable lock {path} (it names no trainer)"]
    assert lock.read_lock(tmp_path)["pid"] == os.getpid()
    lock.release(tmp_path)


def test_status_of_a_run_with_a_garbage_lock(tmp_path):
    from click.testing import CliRunner

    from mlx_kssm.cli import main

    (tmp_path / lock.LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(),
                                                        "pid": "abc"}))
    r = CliRunner().invoke(main, ["status", str(tmp_path)])
    assert r.exit_code == 1 and "Error" not in r.output, r.output
    assert f"WARNING: unreadable lock {tmp_path / lock.LOCK_NAME}" in r.output


def _damaged_history(run_dir):
    """A history with a report whose loss is a string, an eval whose val_loss is a string,
    a line that is not UTF-8, and a good eval whose sample holds U+2028 and U+0085 (written as
    the trainer writes, ensure_ascii=False)."""
    good = [{"event": "train", "step": 1, "loss": 5.0, "ce": 5.0, "reg": 0.0, "grad_norm": 1.0,
             "lr": 1e-3, "tokens_per_sec": 100.0, "R": 0.2, "R_layers": [0.2, 0.2]},
            {"event": "eval", "step": 1, "val_loss": 4.0, "val_ppl": 54.6, "is_best": True,
             "samples": [{"prompt": "a", "text": "x\u2028y\x85z"}]}]
    bad = [{**good[0], "step": 2, "loss": "x"}, {**good[1], "step": 2, "val_loss": "3.5"},
           {**good[0], "step": 3, "R_layers": ["0.2"]}, {**good[0], "step": 4.0}]
    _write_history(run_dir, good + bad, tail=b"\xff\xfe not utf-8\n")
    return good


def _write_history(run_dir, events, tail=b""):
    text = b"".join(json.dumps(e, ensure_ascii=False).encode() + b"\n" for e in events)
    (run_dir / "history.jsonl").write_bytes(text + tail)


def test_damaged_history_records_are_skipped_by_every_reader(tmp_path):
    """status, monitor and plot formatted a string as a number ("Unknown format code 'f'")
    and died on bytes that are not UTF-8; such records are skipped, as a torn line is."""
    from mlx_kssm.train import read_history
    from mlx_kssm.train.status import format_status, monitor_frame, run_status

    good = _damaged_history(tmp_path)
    assert read_history(tmp_path) == good
    (tmp_path / "config.json").write_text(json.dumps(  # and numbers that are not numbers here
        {"train": {"max_steps": "two", "batch_size": True}, "world_size": "x"}))
    assert "last eval (step 1): val loss 4.0000" in format_status(run_status(tmp_path))
    frame = monitor_frame(tmp_path)
    assert "evaluations: 1:4.000*" in frame and "5.0000" in frame


def test_history_is_split_at_newlines_only(tmp_path):
    """A sample's U+2028 / U+0085 (kept raw by ensure_ascii=False) are no line ends: the
    history cut keeps the line whole."""
    from mlx_kssm.train.runlog import RunLog

    events = [{"event": "eval", "step": 1, "samples": [{"text": "a\u2028b\x85c"}]},
              {"event": "checkpoint", "step": 1}, {"event": "train", "step": 2}]
    (tmp_path / "history.jsonl").write_text(
        "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in events))
    log = RunLog(tmp_path, writer=True, echo=lambda m: None)
    assert log.truncate_history(2, step=1) == events[:2] and log.n_events == 2


@pytest.mark.slow
def test_plot_skips_damaged_records_and_refuses_a_file_as_out(tmp_path):
    pytest.importorskip("matplotlib")
    from mlx_kssm.probe.plot import PlotError, plot_run

    _damaged_history(tmp_path)
    assert [p.name for p in plot_run(tmp_path)] == ["loss.png", "r_layers.png"]
    out = tmp_path / "t.sh"
    out.write_text("keep me")
    with pytest.raises(PlotError, match=f"{out} exists and is not a folder.*choose another --out"):
        plot_run(tmp_path, out)
    assert out.read_text() == "keep me"
    with pytest.raises(PlotError, match="cannot create the plot folder"):
        plot_run(tmp_path, out / "sub")


@pytest.mark.slow
def test_plot_writes_each_png_atomically(tmp_path, monkeypatch):
    """A figure that fails half-written (a full disk) leaves the earlier PNG whole and no
    temp file; a failed plot into a new folder leaves no folder."""
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    from mlx_kssm.probe.plot import plot_run

    _write_history(tmp_path, _damaged_history(tmp_path))  # the good records only
    plot_run(tmp_path)
    before = (tmp_path / "plots" / "loss.png").read_bytes()

    def savefig(self, fname, **kw):  # a full disk: half a PNG, then the failure
        if isinstance(fname, (str, os.PathLike)):
            Path(fname).write_bytes(b"\x89PNG half")
        else:
            fname.write(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", savefig)
    with pytest.raises(OSError, match="No space left"):
        plot_run(tmp_path)
    assert (tmp_path / "plots" / "loss.png").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["loss.png", "r_layers.png"]
    with pytest.raises(OSError):
        plot_run(tmp_path, tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_latest_pointer_must_name_a_step_folder_of_the_run(tmp_path):
    """`latest` naming another run's checkpoint ("../../other/...") or a step folder that
    links out of the run is refused, naming the pointer; a missing or empty one is not."""
    model = _tiny()
    run, other = tmp_path / "run", tmp_path / "other"
    ckpt.save_checkpoint(run, 2, model, {}, {"step": 2})
    ckpt.save_checkpoint(other, 9, model, {}, {"step": 9})
    pointer = run / "checkpoints" / "latest"
    (run / "checkpoints" / "step_9").symlink_to(other / "checkpoints" / "step_9")
    for name in ("../../other/checkpoints/step_9", str(other / "checkpoints" / "step_9"),
                 "step_9", "..", "step_2/../../../other/checkpoints/step_9"):
        pointer.write_text(name + "\n")
        with pytest.raises(ckpt.ModelLoadError, match=f"{pointer} names .*not a checkpoint of "
                                                      "this run"):
            ckpt.latest_checkpoint(run)
    (run / "checkpoints" / "step_9").unlink()
    pointer.write_text("")
    assert ckpt.latest_checkpoint(run).name == "step_2"
    pointer.unlink()
    assert ckpt.latest_checkpoint(run).name == "step_2"


def test_monitor_interval_is_checked_before_any_frame(tmp_path):
    from click.testing import CliRunner

    from mlx_kssm.cli import main

    for value in ("-1", "nan", "0", "inf", "0.05"):
        r = CliRunner().invoke(main, ["monitor", str(tmp_path), "--interval", value])
        assert r.exit_code == 2 and "--interval" in r.output and "step" not in r.output, value
    r = CliRunner().invoke(main, ["monitor", str(tmp_path), "--recent", "0"])
    assert r.exit_code == 2 and "--recent" in r.output


def test_sampling_must_be_a_known_sampler():
    with pytest.raises(ValueError, match="--sampling must be one of random, epoch, got 'shuffle'"):
        TrainConfig(preset="tiny", data="d", sampling="shuffle").validate()
