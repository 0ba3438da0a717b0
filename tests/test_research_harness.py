"""research/bench/run.py's model comparisons are `mlx-kssm study` jobs over the variant files in
research/variants/: every model a job names must be a preset or a variant of its file, and
every variant file must load (so `run.py` cannot drift from its inputs)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import mlx_kssm  # noqa: F401  (on Linux: OpenBLAS before mlx)
import pytest

from mlx_kssm.models.presets import PRESETS
from mlx_kssm.study.variants import load_variants

ROOT = Path(__file__).resolve().parents[1]


def _run_py():
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "research/bench/run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", sorted((ROOT / "research" / "variants").glob("*.toml")),
                         ids=lambda p: p.name)
def test_every_variant_file_loads(path):
    assert load_variants(path)


@pytest.mark.parametrize("quick", [False, True])
def test_every_study_job_names_known_models(quick):
    run = _run_py()
    jobs = [cmd for part in run.plan(quick).values() for _, cmd, _ in part
            if cmd[:2] == ["mlx-kssm", "study"]]
    assert len(jobs) >= 8  # the ablation's and the bpe part's comparisons
    for cmd in jobs:
        variants = load_variants(ROOT / cmd[cmd.index("--variants") + 1])
        models = cmd[cmd.index("--models") + 1].split(",")
        unknown = [m for m in models if m not in variants and m not in PRESETS]
        assert not unknown, f"{run.shown(cmd)} names {unknown}"


def test_ablation_rows_reads_every_model_of_a_study(tmp_path):
    record = {"runs": [{"model": m, "seed": s, "status": "completed", "n_parameters": 10,
                        "evaluation": {"val_loss": 1.0 + s}} for m in ("a", "b") for s in (0, 1)]}
    (tmp_path / "study.json").write_text(json.dumps(record))
    out = subprocess.run([sys.executable, str(ROOT / "research/bench/ablation_rows.py"),
                          "--study", str(tmp_path / "study.json"), "--variants", "a,b"],
                         capture_output=True, text=True, check=True).stdout
    summary = json.loads(out[out.index("{"):])["variants"]
    assert summary["a"]["val_loss"] == [1.0, 2.0] and summary["b"]["mean"] == 1.5
