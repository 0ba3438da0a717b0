"""train --report-to: TensorBoard event files and wandb's offline run file are read back and
hold what history.jsonl holds; a missing extra or an unknown name is one Error line."""

import json
import struct
import sys

import pytest
from conftest import tiny_config
from click.testing import CliRunner

import mlx_kssm  # noqa: F401
from mlx_kssm.cli import main
from mlx_kssm.models import ZONES
from mlx_kssm.train import read_history, train
from mlx_kssm.train.health import zones_visited
from mlx_kssm.train.reporting import eval_scalars, train_scalars, zone_name




@pytest.fixture(scope="module")
def data_dir(words_data):
    return words_data


def short_config(data_dir, out, **changes):
    """tiny_config shortened to 4 steps, an evaluation and a checkpoint every 2."""
    return tiny_config(data_dir, out, **{**dict(max_steps=4, warmup_steps=1, steps_per_eval=2,
                                                val_batches=1, save_every=2, sample_tokens=4),
                                         **changes})


def expected_scalars(history) -> dict:
    """tag -> {step: value}, as the reporters should have logged history.jsonl's events."""
    expected, trains = {}, []
    for record in history:
        if record["event"] == "train":
            trains.append(record)
            scalars = train_scalars(record, zones_visited(trains))
        elif record["event"] == "eval":
            scalars = eval_scalars(record)
        else:
            continue
        for tag, value in scalars.items():
            expected.setdefault(tag, {})[record["step"]] = value
    return expected


def check_logged(logged: dict, history: list, rel: float) -> None:
    expected = expected_scalars(history)
    assert set(logged) == set(expected)
    for tag, by_step in expected.items():
        assert set(logged[tag]) == set(by_step), tag
        for step, value in by_step.items():
            assert logged[tag][step] == pytest.approx(value, rel=rel, abs=1e-7), (tag, step)


# ---------------------------------------------------------------- the mapping itself

def test_scalars_of_a_report_and_an_evaluation():
    """Every figure of an Iter line and an evaluation, R per layer, the zone shares, u."""
    report = {"event": "train", "step": 5, "loss": 2.5, "ce": 2.4, "reg": 0.1, "grad_norm": 1.5,
              "lr": 1e-3, "tokens_per_sec": 900.0, "peak_mem_gb": 0.2, "R_layers": [0.2, 0.6],
              "R": 0.4, "zone": "⚖ Balance", "u": 1.5, "u_at_bound": 0.25}
    counts = zones_visited([report, {"R_layers": [0.6, 0.97]}])
    scalars = train_scalars(report, counts)
    assert scalars["train/loss"] == 2.5 and scalars["train/lr"] == 1e-3
    assert scalars["train/tokens_per_sec"] == 900.0 and scalars["train/u"] == 1.5
    assert scalars["train/u_at_bound"] == 0.25 and scalars["train/R"] == 0.4
    assert scalars["train/R_layer_0"] == 0.2 and scalars["train/R_layer_1"] == 0.6
    assert scalars["train/R_zone"] == 2  # Balance, the third of ZONES (the v3 table)
    assert scalars["R_zones/intimacy"] == 0.25 and scalars["R_zones/mystery"] == 0.5
    assert scalars["R_zones/ache"] == 0.25 and scalars["R_zones/unformed"] == 0.0
    assert {f"R_zones/{zone_name(label)}" for _, label in ZONES} <= set(scalars)
    evaluation = {"event": "eval", "step": 5, "val_loss": 2.0, "val_ppl": 7.39, "val_reg": 0.0,
                  "val_R": 0.85, "val_R_std": 0.01, "val_R_layers": [0.8, 0.9], "val_u": None,
                  "n_tokens": 100, "is_best": True}
    scalars = eval_scalars(evaluation)
    assert scalars == {"val/loss": 2.0, "val/ppl": 7.39, "val/reg": 0.0, "val/R": 0.85,
                       "val/R_std": 0.01, "val/R_zone": 5, "val/R_layer_0": 0.8,
                       "val/R_layer_1": 0.9}


# ---------------------------------------------------------------- TensorBoard

def read_tensorboard(folder) -> dict:
    """tag -> {step: value} of every scalar in the event files under `folder` (TFRecord
    framing: length, its CRC, the Event proto, its CRC)."""
    from tensorboardX.proto.event_pb2 import Event

    logged = {}
    files = sorted(folder.glob("events.out.tfevents.*"))
    assert files, f"no event files in {folder}"
    for path in files:
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                logged.setdefault(value.tag, {})[event.step] = value.simple_value
    return logged


def test_tensorboard_events_hold_the_history(data_dir, tmp_path):
    """A run and its resume both log to RUN/tensorboard (the resumed run keeps the saved
    choice); read back, every scalar equals history.jsonl's figure at its step, the zone
    shares counted over the whole run."""
    pytest.importorskip("tensorboardX", reason="the tensorboard extra (tensorboardX) is not "
                        "installed")
    run = tmp_path / "run"
    first = train(short_config(data_dir, run, max_steps=2, schedule_steps=4,
                              report_to="tensorboard"), echo=lambda m: None)
    assert first.status == "completed"
    resumed = train(short_config(data_dir, run, max_steps=4, resume=True), echo=lambda m: None,
                    explicit={"max_steps", "resume"})
    assert resumed.status == "completed"
    history = read_history(run)
    logged = read_tensorboard(run / "tensorboard")
    assert sorted(logged["train/loss"]) == [1, 2, 3, 4] and sorted(logged["val/loss"]) == [2, 4]
    check_logged(logged, history, rel=1e-6)  # TensorBoard keeps float32
    assert sum(logged[f"R_zones/{zone_name(label)}"][4] for _, label in ZONES) == \
        pytest.approx(1.0)
    # --report-to none on a later resume stops it: nothing more reaches the event files
    files = sorted((run / "tensorboard").iterdir())
    stopped = train(short_config(data_dir, run, max_steps=5, resume=True, report_to="none"),
                    echo=lambda m: None, explicit={"max_steps", "resume", "report_to"})
    assert stopped.step == 5 and sorted((run / "tensorboard").iterdir()) == files
    assert read_tensorboard(run / "tensorboard") == logged


# ---------------------------------------------------------------- Weights & Biases

def read_wandb(run_dir) -> dict:
    """key -> {step: value} of the history records in wandb's offline run file (LevelDB log
    framing in 32 KiB blocks after a 7-byte header; each record a wandb Record proto)."""
    from wandb.proto.wandb_internal_pb2 import Record

    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    data, block, pos, part, logged = path.read_bytes(), 32768, 7, b"", {}
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = block - pos % block
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if left < 7 or kind == 0:  # the rest of a block is padding
            pos += left
            continue
        part, pos = part + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = Record.FromString(part)
            part = b""
            if record.WhichOneof("record_type") == "history":
                for item in record.history.item:
                    key = item.key or "/".join(item.nested_key)
                    if not key.startswith("_"):  # wandb's own _step, _runtime, _timestamp
                        logged.setdefault(key, {})[record.history.step.num] = \
                            json.loads(item.value_json)
    return logged


@pytest.mark.slow
def test_wandb_offline_run_holds_the_history(data_dir, tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="the wandb extra (wandb) is not installed")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_home"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    result = train(short_config(data_dir, run, report_to="wandb", project_name="kssm-test"),
                   echo=lambda m: None)
    assert result.status == "completed"
    logged = read_wandb(run)
    assert sorted(logged["train/loss"]) == [1, 2, 3, 4] and sorted(logged["val/loss"]) == [2, 4]
    check_logged(logged, read_history(run), rel=1e-12)  # JSON: exact


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("name,module,extra", [("tensorboard", "tensorboardX", "tensorboard"),
                                               ("wandb", "wandb", "wandb")])
def test_report_to_without_its_extra(data_dir, tmp_path, monkeypatch, name, module, extra):
    """One Error line naming the extra, before anything is trained or written."""
    monkeypatch.setitem(sys.modules, module, None)  # `import module` raises ImportError
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--preset", "tiny", "--data", str(data_dir),
                                       "--output-dir", str(out), "--report-to", name])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
    assert result.output.strip() == (f"Error: --report-to {name} needs {module}, which is not "
                                     f"installed: pip install 'mlx-kssm[{extra}]'")
    assert not out.exists()


def test_report_to_an_unknown_name(data_dir, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--preset", "tiny", "--data", str(data_dir),
                                       "--output-dir", str(out), "--report-to",
                                       "tensorboard,mlflow"])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
    assert "unknown 'mlflow'; choose from wandb, tensorboard" in result.output
    assert not out.exists()
