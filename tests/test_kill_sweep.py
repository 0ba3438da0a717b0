"""A process killed before any one file operation of a checkpoint write (and of best/'s)
leaves a run that resumes: the sweep kills a writer at the 1st, 2nd, ... operation until the
write completes, and after each kill the run's newest loadable checkpoint is either the
earlier one or the new one, whole, and best/ (if any) loads."""

import shutil
import subprocess
import sys

import mlx_kssm  # noqa: F401  (on Linux: OpenBLAS before mlx)
import mlx.core as mx
import pytest

from mlx_kssm import build_model
from mlx_kssm.io import load_model
from mlx_kssm.train import checkpoint as ckpt

# The writer: step_3 is already saved; it saves step_6 and best/ with other weights, its
# file operations counted, and dies with SIGKILL's status (os._exit: no cleanup runs) at
# operation K; K = 0 counts them and prints the total.
WRITER = r"""
import builtins, os, shutil, sys
import mlx_kssm, mlx.core as mx
from mlx_kssm import build_model
from mlx_kssm.train import checkpoint as ckpt

run, kill_at = sys.argv[1], int(sys.argv[2])
model = build_model("tiny", vocab_size=64, seed=1)
count = [0]

def counted(fn):
    def op(*args, **kwargs):
        count[0] += 1
        if count[0] == kill_at:
            os._exit(137)
        return fn(*args, **kwargs)
    return op

for name in ("replace", "rename", "fsync", "mkdir", "makedirs", "unlink", "rmdir", "open",
             "symlink"):
    setattr(os, name, counted(getattr(os, name)))
builtins.open = counted(builtins.open)
shutil.rmtree = counted(shutil.rmtree)
ckpt.save_checkpoint(run, 6, model, {"step": mx.array(6)}, {"step": 6}, keep_last=2)
ckpt.save_best(run, model, {"step": 6}, {"val_loss": 1.0}, None)
print("OPERATIONS", count[0])
"""


def _write(run, kill_at: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WRITER, str(run), str(kill_at)],
                          capture_output=True, text=True, timeout=120)


def _weights_of(seed: int):
    return build_model("tiny", vocab_size=64, seed=seed).embed.weight


@pytest.mark.slow
def test_a_kill_before_any_file_operation_of_a_checkpoint_leaves_a_resumable_run(tmp_path):
    base = tmp_path / "base"
    ckpt.save_checkpoint(base, 3, build_model("tiny", vocab_size=64, seed=0),
                         {"step": mx.array(3)}, {"step": 3}, keep_last=2)
    ckpt.save_best(base, build_model("tiny", vocab_size=64, seed=0), {"step": 3},
                   {"val_loss": 2.0}, None)
    counted = _write(shutil.copytree(base, tmp_path / "count"), 0)
    assert counted.returncode == 0, counted.stderr
    total = int(counted.stdout.split("OPERATIONS")[1])
    assert total >= 10  # the sweep covers a real write, not a stub
    expected = {3: _weights_of(0), 6: _weights_of(1)}
    for kill_at in range(1, total + 1):
        run = shutil.copytree(base, tmp_path / f"kill_{kill_at}")
        killed = _write(run, kill_at)
        assert killed.returncode == 137, (kill_at, killed.stderr)
        ckpt.recover(run)  # what the trainer does first on --resume
        notes = []
        resumed = ckpt.resumable_checkpoint(run, notes)
        step = resumed.state["step"]
        assert step in expected, (kill_at, step)
        loaded, _ = load_model(resumed.path)
        assert mx.array_equal(loaded.embed.weight, expected[step]), (kill_at, step)
        best, _ = load_model(run / "best")
        assert any(mx.array_equal(best.embed.weight, w) for w in expected.values()), kill_at
