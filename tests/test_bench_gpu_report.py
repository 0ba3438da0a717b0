"""research/bench/gpu_report.py: RESULTS.md's GPU section is computed from the committed files."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "research", "bench"))
import gpu_report  # noqa: E402


def _history(path, evals, n_parameters=1000):
    lines = [{"event": "start", "step": 0, "n_parameters": n_parameters}]
    lines += [{"event": "eval", "step": s, "val_loss": v} for s, v in evals]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")


@pytest.fixture
def folder(tmp_path):
    # v2's best is mid-run (overfitting after it), the transformer's at the first eval
    for s, off in enumerate((0.0, 0.01, 0.02)):
        _history(tmp_path / f"v2_s{s}.history.jsonl",
                 [(125, 5.6 + off), (250, 5.4 + off), (375, 5.5 + off)])
        _history(tmp_path / f"transformer_s{s}.history.jsonl",
                 [(125, 5.3 + off), (250, 5.35 + off), (375, 6.0 + off)])
    return tmp_path


def test_best_and_final_per_seed(folder):
    q = gpu_report.quality(folder)
    assert [r["best"] for r in q["v2"]] == pytest.approx([5.4, 5.41, 5.42])
    assert [r["best_step"] for r in q["v2"]] == [250, 250, 250]
    assert [r["final"] for r in q["transformer"]] == pytest.approx([6.0, 6.01, 6.02])
    assert "control-bolted" not in q


def test_section_pairs_by_seed_and_the_summary_says_who_is_behind(folder):
    text = "\n".join(gpu_report.markdown(folder))
    assert "v2 minus transformer, paired by seed: best +0.100 +0.100 +0.100 = +0.100" in text
    assert "at 20.5M tokens -0.500 -0.500 -0.500 = -0.500" in text
    (line,) = [s for s in gpu_report.summary(folder) if "v2 scale" in s]
    assert "K-SSM behind the transformer by 0.100" in line


def test_write_replaces_the_section_and_the_summary_bullets(folder, tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# r\n\n## Summary\n\n- a\n\n## 1. Quality\n\nx\n\n"
                       "## How to read these numbers\n\n- y\n")
    for _ in range(2):  # a second write replaces, it does not add
        gpu_report.write(results, gpu_report.markdown(folder), gpu_report.summary(folder))
    text = results.read_text()
    assert text.count(gpu_report.TITLE) == 1 and text.count("- GPU, v2 scale") == 1
    assert text.index("## 1. Quality") < text.index(gpu_report.TITLE) < text.index("## How to read")
    assert text.index("- a") < text.index("- GPU, v2 scale") < text.index("## 1. Quality")


def test_an_empty_folder_renders_nothing(tmp_path):
    assert gpu_report.markdown(tmp_path) == [] and gpu_report.summary(tmp_path) == []
