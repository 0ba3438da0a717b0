"""research/bench/position_loss.py: loss by position, whose mean is the trainer's val loss."""

import os
import sys

import mlx_kssm  # noqa: F401  (before mlx: loads OpenBLAS)

import numpy as np
import pytest

from mlx_kssm import build_model, save_model
from mlx_kssm.data import TokenDataset
from mlx_kssm.data.loader import eval_batches
from mlx_kssm.evaluation import evaluate_loss

from test_data_loader import write_dataset

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "research", "bench"))
import position_loss  # noqa: E402


def test_buckets_double_and_cover_the_window_once():
    assert position_loss.buckets(64) == [(0, 1), (1, 4), (4, 8), (8, 16), (16, 32), (32, 64)]
    spans = position_loss.buckets(10)
    assert spans[-1] == (8, 10)
    assert [p for lo, hi in spans for p in range(lo, hi)] == list(range(10))


def test_mean_over_positions_is_the_val_loss(tmp_path):
    rng = np.random.default_rng(0)
    data = write_dataset(tmp_path / "d", rng.integers(0, 50, 3000), rng.integers(0, 50, 2000),
                         vocab_size=50)
    model = build_model("tiny", vocab_size=50, seed=0)
    save_model(tmp_path / "m", model)
    windows = position_loss.val_windows(str(data), 3, 4, 16)
    losses, folder = position_loss.position_loss(tmp_path / "m", windows)
    assert losses.shape == (16,) and folder == tmp_path / "m"
    expected = evaluate_loss(model, eval_batches(TokenDataset(data, "val"), 3, 4, 16))["val_loss"]
    assert losses.mean() == pytest.approx(expected, rel=1e-5)
    assert len(set(np.round(losses, 6))) > 1  # a per-position figure, not one number repeated
