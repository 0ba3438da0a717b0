"""Recovery from damaged or diverged model folders: non-finite weights refused on load,
--resume falling back past a checkpoint that does not load, --resume-from a chosen step, and
readers of best/ while it is swapped."""

import json
import os
import shutil

import mlx_kssm  # noqa: F401
import mlx.core as mx
import pytest
from conftest import tiny_config
from click.testing import CliRunner

from mlx_kssm import build_model, save_model
from mlx_kssm.cli import main
from mlx_kssm.io import (BEST_OLD, ModelLoadError, NonFiniteWeights, load_model, loading_options,
                         resolve_model_dir)
from mlx_kssm.train import read_history, train
from mlx_kssm.train import checkpoint as ckpt

QUIET = dict(echo=lambda m: None)



@pytest.fixture(scope="module")
def data_dir(words_data):
    return words_data




def train_losses(run_dir):
    return {r["step"]: (r["loss"], r["ce"], r["grad_norm"], r["lr"])
            for r in read_history(run_dir) if r["event"] == "train"}


def run_cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def error_lines(res):
    return [line for line in res.output.splitlines() if line.startswith("Error:")]


def plant_nan(folder, names=None):
    """Overwrite tensors of `folder`/model.safetensors with NaN (all floating ones, or
    `names`)."""
    path = folder / "model.safetensors"
    weights = dict(mx.load(str(path)))
    for name in names or list(weights):
        weights[name] = mx.full(weights[name].shape, float("nan"), weights[name].dtype)
    mx.save_safetensors(str(path), weights, metadata={"format": "mlx"})


@pytest.fixture
def model_dir(tmp_path):
    return save_model(tmp_path / "m", build_model("tiny", vocab_size=257, seed=0),
                      tokenizer_spec={"kind": "bytes"})


# ---------------------------------------------------------------- non-finite weights

def test_nonfinite_weights_are_refused_naming_the_tensors(model_dir):
    names = sorted(mx.load(str(model_dir / "model.safetensors")))
    plant_nan(model_dir, names[:5])
    with pytest.raises(NonFiniteWeights) as refused:
        load_model(model_dir)
    message = str(refused.value)
    assert "5 of" in message and names[0] in message and "--allow-nonfinite" in message
    assert names[4] not in message  # the first few, then the count
    model, _ = load_model(model_dir, allow_nonfinite=True)
    with loading_options(allow_nonfinite=True):
        load_model(model_dir)


@pytest.mark.parametrize("command", [
    ["generate", "--prompt", "It", "-m", "3"],
    ["intervene", "--prompt", "It", "--values", "0.5", "--max-tokens", "2"],
])
def test_commands_refuse_nonfinite_weights_unless_allowed(model_dir, command):
    plant_nan(model_dir)
    res = run_cli(command[0], "--model", model_dir, *command[1:])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert len(error_lines(res)) == 1 and "NaN or Inf" in error_lines(res)[0]
    res = run_cli(command[0], "--model", model_dir, "--allow-nonfinite", *command[1:])
    assert res.exit_code == 0, res.output


def test_evaluate_refuses_nonfinite_weights(model_dir, data_dir):
    plant_nan(model_dir)
    args = ["--data", data_dir, "--batches", "1", "--batch-size", "2", "--seq-len", "16",
            "--samples", "0"]
    res = run_cli("evaluate", "--model", model_dir, *args)
    assert res.exit_code == 1 and len(error_lines(res)) == 1
    assert "NaN or Inf" in res.output and "val loss" not in res.output.lower()
    res = run_cli("evaluate", "--model", model_dir, "--allow-nonfinite", *args)
    assert res.exit_code == 0, res.output


def test_export_refuses_nonfinite_weights(model_dir, tmp_path):
    plant_nan(model_dir)
    res = run_cli("export", "--model", model_dir, "--out", tmp_path / "out")
    assert res.exit_code == 1 and "NaN or Inf" in res.output
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- resume fallback

@pytest.fixture(scope="module")
def finished_run(data_dir, tmp_path_factory):
    """A 6-step run with checkpoints at steps 3 and 6, and an uninterrupted 9-step twin."""
    root = tmp_path_factory.mktemp("runs")
    train(tiny_config(data_dir, root / "run", max_steps=6, schedule_steps=9), **QUIET)
    train(tiny_config(data_dir, root / "full", max_steps=9), **QUIET)
    return root


def copy_run(finished_run, tmp_path):
    shutil.copytree(finished_run / "run", tmp_path / "run")
    return tmp_path / "run"


def test_resume_falls_back_past_a_truncated_checkpoint(data_dir, finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path)
    with open(run / "checkpoints" / "step_6" / "model.safetensors", "r+b") as f:
        f.truncate(1000)
    notes = []
    chosen = ckpt.resumable_checkpoint(run, notes)
    assert chosen.path.name == "step_3"
    assert len(notes) == 1 and "step_6 skipped" in notes[0] and "nothing deleted" in notes[0]
    assert os.path.getsize(run / "checkpoints" / "step_6" / "model.safetensors") == 1000
    logs = []
    res = train(tiny_config(data_dir, run, max_steps=9, resume=True), echo=logs.append)
    assert res.status == "completed" and res.step == 9
    assert any("step_6 skipped" in line for line in logs)
    assert any("resumed from" in line and "step_3" in line for line in logs)
    # the steps redone from step 3 are those of the uninterrupted run, bit for bit
    assert train_losses(run) == train_losses(finished_run / "full")


def test_resume_skips_a_checkpoint_with_nan_weights(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path)
    plant_nan(run / "checkpoints" / "step_6", ["embed.weight"])
    notes = []
    assert ckpt.resumable_checkpoint(run, notes).path.name == "step_3"
    assert "embed.weight" in notes[0] and "NaN" in notes[0]
    assert "--allow-nonfinite" not in notes[0]  # train has no such option: never resumed


def test_resume_when_no_checkpoint_loads_is_one_error(data_dir, finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path)
    for step in (3, 6):
        plant_nan(run / "checkpoints" / f"step_{step}")
    res = run_cli("train", "--resume", "--output-dir", run, "--max-steps", "9")
    assert res.exit_code == 1 and len(error_lines(res)) == 1
    assert "no checkpoint" in res.output and "2 tried" in res.output


def test_a_skipped_later_checkpoint_does_not_rotate_good_ones_away(data_dir, finished_run,
                                                                   tmp_path):
    run = copy_run(finished_run, tmp_path)
    plant_nan(run / "checkpoints" / "step_6")
    # keep_last=1 and a save at step 5: counting the bad step_6 would delete step_5
    train(tiny_config(data_dir, run, max_steps=5, resume=True, save_every=5, keep_last=1),
          explicit={"max_steps", "resume", "save_every", "keep_last"}, **QUIET)
    assert (run / "checkpoints" / "step_5").is_dir()
    assert (run / "checkpoints" / "step_6").is_dir()  # left as it was


# ---------------------------------------------------------------- --resume-from

def test_resume_from_an_earlier_step_equals_the_uninterrupted_run(data_dir, finished_run,
                                                                  tmp_path):
    run = copy_run(finished_run, tmp_path)
    res = run_cli("train", "--output-dir", run, "--max-steps", "9",
                  "--resume-from", run / "checkpoints" / "step_3")
    assert res.exit_code == 0, res.output
    assert "not the latest checkpoint (step_6)" in res.output
    assert "moved to" in res.output
    assert train_losses(run) == train_losses(finished_run / "full")
    resumes = [r for r in read_history(run) if r["event"] == "resume"]
    assert [r["step"] for r in resumes] == [3]
    superseded = list((run / "checkpoints" / "superseded").glob("*/step_6"))
    assert len(superseded) == 1 and ckpt.is_complete(superseded[0])  # kept, not deleted
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_9"
    saved = json.loads((run / "config.json").read_text())["train"]
    assert "resume_from" not in saved  # a one-off choice: a later --resume takes the newest


def test_resume_from_the_latest_step_says_nothing_more(data_dir, finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path)
    res = run_cli("train", "--output-dir", run, "--max-steps", "7",
                  "--resume-from", run / "checkpoints" / "step_6")
    assert res.exit_code == 0, res.output
    assert "not the latest" not in res.output and "superseded" not in res.output


@pytest.mark.parametrize("where", ["outside", "missing", "not_a_step"])
def test_resume_from_a_folder_not_of_this_run_is_one_error(finished_run, tmp_path, where):
    run = copy_run(finished_run, tmp_path)
    named = {"outside": finished_run / "full" / "checkpoints" / "step_9",
             "missing": run / "checkpoints" / "step_4",
             "not_a_step": run / "best"}[where]
    res = run_cli("train", "--output-dir", run, "--resume-from", named)
    assert res.exit_code == 1 and len(error_lines(res)) == 1, res.output
    assert "--resume-from" in error_lines(res)[0]
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_3", "step_6"]


# ---------------------------------------------------------------- best/ while swapped

def test_best_mid_swap_still_loads(finished_run, tmp_path):
    """A kill between best/'s two renames leaves only .best.old: RUN/best and RUN load it,
    and the note names it."""
    run = copy_run(finished_run, tmp_path)
    os.replace(run / "best", run / BEST_OLD)
    notes = []
    with loading_options(note=notes.append):
        assert resolve_model_dir(run / "best") == run / BEST_OLD
        assert resolve_model_dir(run) == run / BEST_OLD
        load_model(run / "best")
    assert any("previous best" in n for n in notes)
    res = run_cli("generate", "--model", run / "best", "-m", "2")
    assert res.exit_code == 0, res.output


def test_model_run_names_what_it_loaded(finished_run):
    res = run_cli("generate", "--model", finished_run / "run", "-m", "2")
    assert res.exit_code == 0, res.output
    assert f"loading its best checkpoint, {finished_run / 'run' / 'best'}" in res.output


def test_model_run_without_best_names_the_checkpoint(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path)
    shutil.rmtree(run / "best")
    notes = []
    with loading_options(note=notes.append):
        assert resolve_model_dir(run).name == "step_6"
        assert notes == []  # said once the load succeeded: a failed one says only its error
        load_model(run)
    assert len(notes) == 1 and "without a complete best/" in notes[0] and "step_6" in notes[0]


def test_a_missing_best_without_a_previous_one_is_an_error(tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_model_dir(tmp_path / "run" / "best")


def test_the_nan_stop_never_calls_a_skipped_checkpoint_the_last_good_one(data_dir, finished_run,
                                                                         tmp_path, monkeypatch):
    from mlx_kssm.train import step as step_mod
    run = copy_run(finished_run, tmp_path)
    plant_nan(run / "checkpoints" / "step_6")
    real = step_mod.loss_fn

    def poisoned(model, inputs, targets):
        loss, metrics = real(model, inputs, targets)
        return loss * mx.array(float("nan")), metrics

    monkeypatch.setattr(step_mod, "loss_fn", poisoned)
    res = train(tiny_config(data_dir, run, max_steps=9, resume=True), **QUIET)
    assert (res.status, res.step) == ("nan", 4)
    assert "last good checkpoint" in res.message and "step_3" in res.message
    assert "step_6" not in res.message


def test_best_renamed_while_it_is_read_is_read_again(finished_run, tmp_path, monkeypatch):
    """The trainer renames best/ aside (the first of its two renames) after a reader found
    it and before the reader got its weights: the read is retried, from .best.old."""
    import mlx_kssm.io as io_mod
    run = copy_run(finished_run, tmp_path)
    real, calls = io_mod.load_weights_dict, []

    def renamed_underneath(folder):
        calls.append(folder)
        if len(calls) == 1:
            os.replace(run / "best", run / BEST_OLD)
        return real(folder)  # the first: best/ is gone, ModelLoadError

    monkeypatch.setattr(io_mod, "load_weights_dict", renamed_underneath)
    load_model(run / "best")
    assert calls == [run / "best", run / BEST_OLD]
