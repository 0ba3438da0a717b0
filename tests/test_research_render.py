"""research/render.py: the committed record and README table are what the renderer writes."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _render():
    spec = importlib.util.spec_from_file_location("render", ROOT / "research" / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_record_and_readme_table_are_current():
    render = _render()
    for path, text in render.rendered().items():
        assert path.read_text() == text, (
            f"{path.relative_to(ROOT)} is out of date: run python research/render.py")


def test_every_results_json_is_read_by_the_record():
    """No orphan summaries: each research/results/*.json feeds a table or the README."""
    toml = (ROOT / "research" / "sections.toml").read_text()
    for path in (ROOT / "research" / "results").glob("*.json"):
        json.loads(path.read_text())
        assert f'"{path.name}"' in toml, f"{path.name} is not used by research/sections.toml"


def test_runs_table_and_placeholder():
    render = _render()
    data = {"rows": [{"row": "a", "what": "x", "params": 1234, "seeds": [0, 1],
                      "val_loss": [1.0, 1.2]},
                     {"row": "b", "what": "y", "params": 5, "seeds": [3], "val_loss": [2.0],
                      "val_r": 0.5}]}
    lines = render.runs_table(data, {})
    assert lines[2] == "| `a` | x | 1,234 | 1.1000 ± 0.1414 | 1.0000 1.2000 (seeds 0, 1) | — |"
    assert lines[3] == "| `b` | y | 5 | 2.0000 | 2.0000 (seed 3) | 0.500 |"


def test_records_table_picks_and_formats_columns():
    render = _render()
    data = {"rows": [{"model": "m", "loss": 1.23456, "n": 1000}, {"model": "t", "loss": None}]}
    spec = {"columns": [["model", "model"], ["val loss", "loss", "{:.3f}"], ["n", "n", "{:,}"]]}
    assert render.cells_table(data, spec)[2:] == ["| m | 1.235 | 1,000 |", "| t | — | — |"]
