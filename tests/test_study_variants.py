"""`mlx-kssm study --variants FILE`: named variants (a preset with options changed) as models of
a study. A variant that changes nothing trains exactly like its preset; a changed one builds
what it says; a bad file is one `Error:` line with nothing written."""

import json

import pytest
from conftest import interrupt_training_at
from click.testing import CliRunner

import mlx_kssm  # noqa: F401  (BLAS before mlx)
from mlx_kssm.cli import main
from mlx_kssm.io import load_model
from mlx_kssm.study import StudyConfig, run_study
from mlx_kssm.study.runner import model_learning_rate, model_weight_decay
from mlx_kssm.study.variants import check_variants, load_variants

STEPS = 4
VARIANTS = """
[same]
preset = "tiny"
description = "the preset unchanged"

[wide]
preset = "tiny"
model = { n_groups = 32 }
train = { learning_rate = 1e-3, weight_decay = 0.0 }
"""


def variant_study(data, out, variants_file, **kw) -> StudyConfig:
    base = dict(data=str(data), output_dir=str(out), preset="tiny", seeds=1,
                max_steps=STEPS, batch_size=4, seq_len=32, warmup_steps=1, steps_per_eval=2,
                steps_per_report=2, val_batches=1, save_every=2, eval_batches=2, sequences=8,
                samples=0, variants_file=str(variants_file))
    return StudyConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def variants_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("variants") / "variants.toml"
    path.write_text(VARIANTS, "utf-8")
    return path


@pytest.fixture(scope="module")
def study(books_data, variants_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("vstudy") / "s"
    return run_study(variant_study(books_data, out, variants_file), echo=lambda s: None)


@pytest.mark.slow
def test_default_models_are_the_preset_then_every_variant(study):
    assert study.status == "completed"
    assert study.record["config"]["models"] == ["tiny", "same", "wide"]
    assert set(study.record["config"]["variants"]) == {"same", "wide"}


@pytest.mark.slow
def test_an_unchanged_variant_trains_exactly_like_its_preset(study):
    runs = {e["model"]: e for e in study.record["runs"]}
    assert runs["same"]["val_curve"] == runs["tiny"]["val_curve"]
    assert runs["same"]["evaluation"]["val_loss"] == runs["tiny"]["evaluation"]["val_loss"]
    assert runs["same"]["n_parameters"] == runs["tiny"]["n_parameters"]


@pytest.mark.slow
def test_a_changed_variant_builds_and_trains_what_it_names(study):
    runs = {e["model"]: e for e in study.record["runs"]}
    wide = runs["wide"]
    assert wide["learning_rate"] == 1e-3 and wide["weight_decay"] == 0.0
    assert wide["n_parameters"] > runs["tiny"]["n_parameters"]
    init, _ = load_model(study.study_dir / "variants" / "wide" / "seed_0")
    assert init.args.n_groups == 32 and init.args.preset == "tiny"
    saved = json.loads((study.study_dir / wide["run_dir"] / "config.json").read_text())
    assert saved["train"]["learning_rate"] == 1e-3 and saved["train"]["weight_decay"] == 0.0
    assert saved["model"]["n_groups"] == 32
    assert "--model" in wide["commands"]["train"]
    assert "- wide = tiny with n_groups=32, learning_rate=0.001, weight_decay=0.0" in (
        study.study_dir / "study.md").read_text()


@pytest.mark.slow
def test_rerun_reuses_variant_runs_and_refuses_a_changed_definition(study, books_data,
                                                                      tmp_path):
    logs = []
    again = run_study(variant_study(books_data, study.study_dir,
                                    study.record["config"]["variants_file"]), echo=logs.append)
    assert again.status == "completed"
    assert sum("earlier: reused" in line for line in logs) == 3
    changed = tmp_path / "changed.toml"
    changed.write_text(VARIANTS.replace("n_groups = 32", "n_groups = 24"), "utf-8")
    before = (study.study_dir / "study.json").read_bytes()
    with pytest.raises(ValueError, match="trained variant 'wide'"):
        run_study(variant_study(books_data, study.study_dir, changed), echo=lambda s: None)
    assert (study.study_dir / "study.json").read_bytes() == before


def test_training_values_a_variant_leaves_out_come_from_the_study_then_its_preset(books_data):
    variants = check_variants({"own": {"preset": "tiny", "train": {"learning_rate": 1e-4}},
                               "plain": {"preset": "tiny"}})
    config = StudyConfig(data=str(books_data), output_dir="x", variants=variants,
                         learning_rate=2e-3).resolved()
    assert model_learning_rate("own", config) == 1e-4  # its own wins over the study's
    assert model_learning_rate("plain", config) == 2e-3  # the study's over the preset's
    assert model_weight_decay("plain", config) == 0.1  # tiny's preset default


@pytest.mark.parametrize("text, message", [
    ("[x]\npreset = \"nope\"\n", "preset 'nope' is not a preset"),
    ("[x]\npreset = \"tiny\"\nmodel = { n_grups = 3 }\n", "unknown model option"),
    ("[x]\npreset = \"tiny\"\nmodel = { n_groups = 0 }\n", "n_groups must be >= 1"),
    ("[x]\npreset = \"tiny\"\ntrain = { max_steps = 3 }\n", "are not per-model"),
    ("[x]\npreset = \"tiny\"\ntrain = { learning_rate = -1 }\n", "must be a finite number"),
    ("[x]\npreset = \"tiny\"\ncolour = 1\n", "unknown key"),
    ("[tiny]\npreset = \"tiny\"\n", "taken by a preset"),
    ("['../up']\npreset = \"tiny\"\n", "names a folder"),
    ("[x\n", "not valid TOML"),
    ("", "names no variant"),
])
def test_a_bad_variant_file_is_refused_naming_the_problem(tmp_path, text, message):
    path = tmp_path / "v.toml"
    path.write_text(text, "utf-8")
    with pytest.raises(ValueError, match=message):
        load_variants(path)


def test_cli_bad_variant_file_is_one_error_line_and_writes_nothing(books_data, tmp_path):
    path = tmp_path / "v.toml"
    path.write_text("[x]\npreset = \"tiny\"\nmodel = { n_grups = 3 }\n", "utf-8")
    out = tmp_path / "study"
    result = CliRunner().invoke(main, ["study", "--data", str(books_data), "--out", str(out),
                                       "--variants", str(path), "--steps", "2"])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and "n_grups" in lines[0]
    assert not out.exists()


def test_cli_unknown_model_lists_the_variant_names(books_data, tmp_path, variants_file):
    result = CliRunner().invoke(main, ["study", "--data", str(books_data), "--out",
                                       str(tmp_path / "s"), "--variants", str(variants_file),
                                       "--models", "tiny,wider", "--steps", "2"])
    assert result.exit_code == 1
    assert "unknown model 'wider'" in result.output and "same, wide" in result.output


@pytest.mark.slow
def test_a_killed_variant_run_resumes_exactly(study, books_data, variants_file, tmp_path,
                                              monkeypatch):
    """Killed after its step-2 checkpoint, the variant resumes and ends where the
    uninterrupted study's run did."""
    config = variant_study(books_data, tmp_path / "s", variants_file, models=["wide"])
    interrupt_training_at(monkeypatch, 3)  # a checkpoint at step 2, no end
    with pytest.raises(KeyboardInterrupt):
        run_study(config, echo=lambda m: None)
    monkeypatch.undo()
    logs = []
    result = run_study(config, echo=logs.append)
    assert any("resumed from" in line and "at step 2" in line for line in logs)
    resumed = {e["model"]: e for e in result.record["runs"]}["wide"]
    whole = {e["model"]: e for e in study.record["runs"]}["wide"]
    assert resumed["val_curve"] == whole["val_curve"]
    assert resumed["evaluation"]["val_loss"] == whole["evaluation"]["val_loss"]
