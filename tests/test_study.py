"""`mlx-kssm study` end to end on a tiny corpus with the tiny presets, 2 seeds, 4 steps: every
run a normal run folder, the report, reuse of finished runs, continuation of a killed study,
and one `Error:` line (exit 1, nothing written) for each bad input."""

import json
import shutil
import sys

import pytest
from conftest import interrupt_training_at
from click.testing import CliRunner

import mlx_kssm  # noqa: F401  (BLAS before mlx)
from mlx_kssm.cli import main
from mlx_kssm.study import RANDOM_INIT, StudyConfig, default_models, run_state, run_study
from mlx_kssm.study import runner
from mlx_kssm.study.report import summarize, write_report
from mlx_kssm.train import TrainResult

STEPS = 4


def tiny_study(books_data, out, **kw) -> StudyConfig:
    base = dict(data=str(books_data), output_dir=str(out), preset="tiny", seeds=2,
                max_steps=STEPS, batch_size=4, seq_len=32, warmup_steps=1, steps_per_eval=2,
                steps_per_report=2, val_batches=1, save_every=2, eval_batches=2, sequences=8,
                samples=1)
    return StudyConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def study(books_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "s"
    logs = []
    result = run_study(tiny_study(books_data, out), echo=logs.append)
    return result, logs


def entries(result):
    return {(e["model"], e["seed"]): e for e in result.record["runs"]}


@pytest.mark.slow
def test_study_trains_and_evaluates_every_model_and_seed(study):
    result, logs = study
    assert result.status == "completed" and result.exit_code == 0
    models = default_models("tiny")
    assert models == ["tiny", "transformer-tiny", "control-bolted-tiny", "upstream-v3-tiny",
                      RANDOM_INIT]
    runs = entries(result)
    assert set(runs) == {(m, s) for m in models for s in (0, 1)}
    for (model, seed), e in runs.items():
        assert "evaluation" in e
        if model == RANDOM_INIT:
            assert e["kind"] == "untrained" and not (result.study_dir / e["run_dir"] /
                                                     "checkpoints").exists()
            continue
        run_dir = result.study_dir / e["run_dir"]  # a normal run folder, finished, unlocked
        assert run_state(run_dir, STEPS) == "done" and e["status"] == "completed"
        assert not (run_dir / "training.lock").exists()
        assert e["evaluation"]["model"].endswith(f"step_{STEPS}")  # the budget's weights
        assert e["tokens_per_sec"] > 0 and e["val_curve"][-1][0] == STEPS
    assert any(line.startswith("Iter ") for line in logs)  # the trainer's progress shows
    assert any("[10/10]" in line for line in logs)


@pytest.mark.slow
def test_every_model_sees_the_same_budget_and_batches(study):
    """Same seed -> the same trainer options but the preset: BatchSampler is a function of
    (data, batch size, seq len, seed, step), so every model trains on the same batches."""
    result, _ = study
    for seed in (0, 1):
        configs = []
        for model in ("tiny", "transformer-tiny", "control-bolted-tiny", "upstream-v3-tiny"):
            run_dir = result.study_dir / "runs" / model / f"seed_{seed}"
            train = json.loads((run_dir / "config.json").read_text())["train"]
            assert train["preset"] == model and train["seed"] == seed
            configs.append({k: v for k, v in train.items() if k not in ("preset", "output_dir")})
        assert all(c == configs[0] for c in configs)


@pytest.mark.slow
def test_random_init_is_the_trained_runs_step_zero(study):
    """Test 2's random-init comparison of a trained run is its own init: the random-init
    entry of the same seed measured the same per-window KL."""
    runs = entries(study[0])
    for seed in (0, 1):
        trained = runs[("tiny", seed)]["evaluation"]["causality"]["intervention"]
        untrained = runs[(RANDOM_INIT, seed)]["evaluation"]["causality"]["intervention"]
        assert trained["random_init"]["seed"] == seed
        assert trained["random_init"]["per_sequence_kl"] == untrained["per_sequence_kl"]


@pytest.mark.slow
def test_bolted_control_fails_test_2_on_every_seed(study):
    summary = study[0].record["summary"]
    assert summary["control-bolted-tiny"]["verdicts"]["intervention"] == ["FAIL", "FAIL"]
    assert summary["transformer-tiny"]["causality_applicable"] is False


@pytest.mark.slow
def test_study_json_records_the_environment_and_figures(study):
    result, _ = study
    record = json.loads((result.study_dir / "study.json").read_text())
    assert record == json.loads(json.dumps(result.record))  # the file is the final record
    command = record["commands"][-1]
    assert command["equivalent"].startswith("mlx-kssm study --data ")
    env = command["environment"]
    assert {"cpu", "cpu_count", "platform", "mlx", "backend", "packages"} <= set(env)
    assert {"active", "library", "reason"} <= set(env["blas"])
    e = entries(result)[("tiny", 1)]
    assert e["commands"]["train"].startswith("mlx-kssm train --preset tiny ")
    assert "--seed 1" in e["commands"]["train"]
    loss = record["summary"]["tiny"]["val_loss"]
    values = [entries(result)[("tiny", s)]["evaluation"]["val_loss"] for s in (0, 1)]
    assert loss["n"] == 2 and loss["mean"] == pytest.approx(sum(values) / 2)
    assert loss["ci"][0] < loss["mean"] < loss["ci"][1]  # Student-t over the seeds


@pytest.mark.slow
def test_study_md_has_the_tables(study):
    text = (study[0].study_dir / "study.md").read_text()
    for heading in ("## Validation loss and perplexity (mean ± 95% CI over seeds)",
                    "## Causality effect sizes (mean ± 95% CI over seeds)",
                    "## Causality verdicts, one letter per seed",
                    "## Speed (mean ± 95% CI over seeds)",
                    "## Every seed: effects with their bootstrap CIs"):
        assert heading in text
    assert "| control-bolted-tiny | P P | F F |" in text  # variance, intervention per seed
    assert "Student-t" in text


@pytest.mark.slow
def test_plots_or_a_note(study, tmp_path, monkeypatch):
    result, _ = study
    record = result.record
    if _has_matplotlib():
        for name in ("loss_curves.png", "effects.png"):
            assert (result.study_dir / "plots" / name).stat().st_size > 1000
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as without the `plot` extra
    notes = []
    written = write_report(tmp_path, record, echo=notes.append)
    assert [p.name for p in written] == ["study.md"]
    assert any(n.startswith("note: no plots") and "mlx-kssm[plot]" in n for n in notes)


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.slow
def test_running_again_reuses_finished_runs(study, books_data):
    result, _ = study
    histories = {p: p.read_bytes() for p in result.study_dir.glob("runs/*/seed_*/history.jsonl")}
    logs = []
    again = run_study(tiny_study(books_data, result.study_dir), echo=logs.append)
    assert not any(line.startswith("Iter ") for line in logs)  # nothing trained
    assert sum("finished earlier: reused" in line for line in logs) == 8
    assert {p: p.read_bytes() for p in histories} == histories
    assert again.record["runs"] == result.record["runs"]  # the same numbers, every one
    assert len(again.record["commands"]) == 2  # both invocations recorded


@pytest.mark.slow
@pytest.mark.parametrize("damage", [
    lambda r: r.pop("commands"), lambda r: r.update(commands={}),
    lambda r: r.update(runs=["x"]), lambda r: r.update(runs={"a": 1}),
    lambda r: r["runs"].__setitem__(0, {"model": "tiny"})])
def test_a_damaged_record_is_rebuilt_from_the_runs(study, books_data, tmp_path, damage):
    """A hand-damaged "commands" or "runs" in study.json crashed ("unexpected KeyError"):
    both are rebuilt as the study runs, from its intact run folders."""
    result, _ = study
    copy = tmp_path / "s"
    shutil.copytree(result.study_dir, copy)
    record = json.loads((copy / "study.json").read_text())
    damage(record)
    (copy / "study.json").write_text(json.dumps(record))
    logs = []
    again = run_study(tiny_study(books_data, copy), echo=logs.append)
    assert not any(line.startswith("Iter ") for line in logs)  # nothing trained again
    figures = lambda runs: [{k: v for k, v in e.items() if k != "commands"}  # noqa: E731
                            for e in runs]  # (the commands name the copy's folder)
    assert figures(again.record["runs"]) == figures(result.record["runs"])


@pytest.mark.slow
def test_killed_study_continues_where_it_stopped(study, books_data, tmp_path, monkeypatch):
    """A study killed in the middle of a run: run again, the finished run is reused, the
    killed one resumes from its checkpoint and ends exactly where an uninterrupted run did."""
    config = tiny_study(books_data, tmp_path / "s", models=["tiny", "control-bolted-tiny"],
                        seeds=1)
    # a checkpoint at step 2, no end
    interrupt_training_at(monkeypatch, 3, lambda loop: loop.run.config.preset
                          == "control-bolted-tiny")
    with pytest.raises(KeyboardInterrupt):
        run_study(config, echo=lambda m: None)
    monkeypatch.undo()
    killed = tmp_path / "s" / "runs" / "control-bolted-tiny" / "seed_0"
    assert run_state(killed, STEPS) == "resume"
    logs = []
    result = run_study(config, echo=logs.append)
    assert result.status == "completed"
    assert any("tiny seed 0: finished earlier: reused" in line for line in logs)
    assert any("resumed from" in line and "at step 2" in line for line in logs)
    for model in ("tiny", "control-bolted-tiny"):  # exact resume: the numbers of the
        assert (entries(result)[(model, 0)]["evaluation"]  # uninterrupted study
                == entries(study[0])[(model, 0)]["evaluation"] | {
                    "model": entries(result)[(model, 0)]["evaluation"]["model"]})


def test_interrupted_run_stops_the_study(books_data, tmp_path, monkeypatch):
    def interrupted(config, echo=print, explicit=None):
        return TrainResult("interrupted", 1, 130, config.output_dir)

    monkeypatch.setattr(runner, "train", interrupted)
    logs = []
    result = run_study(tiny_study(books_data, tmp_path / "s", models=["tiny"]), echo=logs.append)
    assert result.status == "interrupted" and result.exit_code == 130
    assert "run the same command to continue" in logs[-1]
    assert not (tmp_path / "s" / "training.lock").exists()


def _fake_run(run_dir, checkpoint_steps, events):
    for step in checkpoint_steps:
        folder = run_dir / "checkpoints" / f"step_{step}"
        folder.mkdir(parents=True)
        for name in ("config.json", "model.safetensors", "optimizer.safetensors",
                     "trainer_state.json"):
            (folder / name).write_text("{}")
    (run_dir / "history.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))


@pytest.mark.parametrize("checkpoints, events, state", [
    ([2, 4], [{"event": "start"}, {"event": "end", "status": "completed", "step": 4}], "done"),
    ([2, 4], [{"event": "start"}], "resume"),  # killed after its final save, before the end
    ([2], [{"event": "start"}, {"event": "end", "status": "completed", "step": 2}], "resume"),
    ([2], [{"event": "start"}, {"event": "end", "status": "nan", "step": 3}], "nan"),
    ([], [{"event": "start"}], "new"),  # killed before its first checkpoint
])
def test_run_state(tmp_path, checkpoints, events, state):
    _fake_run(tmp_path, checkpoints, events)
    assert run_state(tmp_path, 4) == state


def test_summary_leaves_out_diverged_seeds():
    ok = {"model": "m", "seed": 0, "tokens_per_sec": 100.0,
          "evaluation": {"val_loss": 2.0, "val_ppl": 7.4, "causality": None}}
    nan = {"model": "m", "seed": 1, "status": "nan"}
    s = summarize([ok, nan], ["m"])["m"]
    assert s["seeds"] == [0] and s["failed_seeds"] == [1]
    assert s["val_loss"]["mean"] == 2.0 and s["val_loss"]["ci"] is None  # one seed: no CI


# ---------------------------------------------------------------- bad input


def cli(*args):
    return CliRunner().invoke(main, ["study", *(str(a) for a in args)])


def one_error_line(res) -> str:
    assert res.exit_code == 1, res.output
    lines = [l for l in res.output.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    return lines[0]


@pytest.mark.parametrize("args, needle", [
    (["--data", "{missing}"], "meta.json"),
    (["--models", "tiny,no-such-model"], "unknown model 'no-such-model'"),
    (["--seeds", "0"], "--seeds must be at least 1"),
    (["--seq-len", "1500"], "too long for the val split"),
    (["--preset", "transformer-tiny"], "K-SSM preset"),
])
def test_bad_input_is_one_line_and_writes_nothing(books_data, tmp_path, args, needle):
    args = [a.format(missing=tmp_path / "missing") for a in args]
    if "--data" not in args:
        args = ["--data", books_data, *args]
    out = tmp_path / "out"
    assert needle in one_error_line(cli(*args, "--out", out, "--steps", 2))
    assert not out.exists()


@pytest.mark.slow
def test_other_budget_leaves_the_study_untouched(study, books_data):
    result, _ = study
    before = {p: p.read_bytes() for p in result.study_dir.rglob("*") if p.is_file()}
    line = one_error_line(cli("--data", books_data, "--out", result.study_dir, "--steps", 99,
                              "--batch-size", 4, "--seq-len", 32, "--warmup-steps", 1))
    assert "another budget" in line and "--steps 4 -> 99" in line
    assert {p: p.read_bytes() for p in before} == before


def test_not_a_study_folder_is_refused(books_data, tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert "not a study folder" in one_error_line(cli("--data", books_data, "--out",
                                                      tmp_path / "other"))
    assert [p.name for p in (tmp_path / "other").iterdir()] == ["notes.txt"]


def test_help_points_to_the_docs():
    res = cli("--help")
    assert res.exit_code == 0 and "Examples:" in res.output and "docs/causality.md" in res.output
