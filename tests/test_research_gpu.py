"""research/gpu_g120.py, the prepared GPU script: its dry run (toy sizes, any device) goes
through the parts it names and writes each part's JSON, so the script is known to work before
GPU time is spent on it."""

import importlib.util
import json
import math
from pathlib import Path

import mlx_kssm  # noqa: F401  (on Linux: OpenBLAS before mlx)
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "research" / "gpu_g120.py"


def _gpu_script():
    spec = importlib.util.spec_from_file_location("gpu_g120", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_dry_run_writes_each_part(books_data, tmp_path):
    out = tmp_path / "out"
    code = _gpu_script().main(["--data", str(books_data), "--out", str(out), "--runs",
                               str(tmp_path / "runs"), "--parts", "quality1,decode",
                               "--dry-run"])
    assert code == 0
    quality = json.loads((out / "quality1.json").read_text())
    assert [r["model"] for r in quality["runs"]] == ["tiny", "transformer-tiny"]
    for run in quality["runs"]:
        assert run["exit_code"] == 0 and run["steps"] == 6 and len(run["val_curve"]) == 2
        assert math.isfinite(run["best_val_loss"]) and run["tokens"] == 6 * 4 * 32
    decode = json.loads((out / "decode.json").read_text())
    rates = decode["tokens_per_sec"]
    assert set(rates) == {"tiny", "transformer-tiny"}
    assert all(r > 0 for model in rates.values() for per_context in model.values()
               for r in per_context)
    assert (out / "environment.json").exists()


def test_unknown_part_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _gpu_script().parse(["--data", "d", "--out", "o", "--parts", "quality1,warp"])
    assert exit_info.value.code == 2 and "unknown part(s) warp" in capsys.readouterr().err


@pytest.mark.slow
def test_dry_run_capacity_trains_every_variant_with_its_change(books_data, tmp_path):
    out = tmp_path / "out"
    code = _gpu_script().main(["--data", str(books_data), "--out", str(out), "--runs",
                               str(tmp_path / "runs"), "--parts", "capacity", "--dry-run"])
    assert code == 0
    result = json.loads((out / "capacity.json").read_text())
    names = [r["model"] for r in result["runs"]]
    assert names == list(result["variants"]) and "osc2x" in names
    assert all(r["exit_code"] == 0 and math.isfinite(r["best_val_loss"])
               for r in result["runs"])
    saved = json.loads((tmp_path / "runs" / "osc2x_s0" / "config.json").read_text())
    assert saved["model"]["n_groups"] == 64  # the variant's change, on the dry run's tiny
    lr2 = json.loads((tmp_path / "runs" / "lr2_s0" / "config.json").read_text())
    assert lr2["train"]["learning_rate"] == 2e-3
