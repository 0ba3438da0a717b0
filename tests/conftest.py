"""Fixtures and helpers shared by the test files.

Tiers: `python -m pytest -m "not slow" tests` is the fast tier for the edit loop; CI
(scripts/test.sh) runs every test. Mark a test `@pytest.mark.slow` when it takes more than a
few seconds (it trains, spawns processes, or loads mlx-lm).
"""

import random
import shutil
from pathlib import Path

import pytest

import mlx_kssm  # noqa: F401  (on Linux: OpenBLAS before mlx)
from mlx_kssm.data.prepare import prepare
from mlx_kssm.train import TrainConfig

FIXTURES = Path(__file__).parent / "fixtures"
BOOKS = FIXTURES / "gutenberg"
BOOK_FILES = ("pg1342_2024.txt", "pg1661_2002.txt", "pg84_2008_crlf.txt")
WORDS = "the quick brown fox jumps over lazy dog and cat runs far away into night sky".split()


def _quiet(message):
    pass


def copy_books(dest: Path) -> Path:
    """The three fixture books (cleaned Gutenberg texts, one CRLF) copied into dest."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in BOOK_FILES:
        shutil.copy(BOOKS / name, dest / name)
    return dest


def prepare_words(root: Path, words: list, docs: int, per_doc: int, val_fraction: float) -> Path:
    """root/src: `docs` documents of `per_doc` seeded random words; root/prep: their byte tokens."""
    rng = random.Random(0)
    (root / "src").mkdir(parents=True)
    for d in range(docs):
        (root / "src" / f"doc{d}.txt").write_text(" ".join(rng.choice(words) for _ in range(per_doc)))
    prepare(root / "src", root / "prep", tokenizer="bytes", val_fraction=val_fraction, log=_quiet)
    return root / "prep"


def with_ten_core_projections(folder: Path, seed: int = 0, file: str = "model.safetensors"
                              ) -> None:
    """Rewrite the saved K-SSM v3 folder `folder` (one model.safetensors, quantized or not; or
    `file`, a checkpoint's optimizer.safetensors, named after the weights) in the layout
    earlier versions saved: ten core projections a..j, whose unused i and j are two
    rows of in_proj right after h (before the gate), here random. Their place is worked out
    here from the layout, independently of the loader under test."""
    import json

    import mlx.core as mx
    config = json.loads((folder / "config.json").read_text())
    n = config["n_groups"] * config["osc_per_group"]
    after_h = (4 if config["rotation"] == "input" else 3) * n + 8  # delta?, damping, drive, a..h
    weights = mx.load(str(folder / file))
    key = mx.random.key(seed)
    for name, value in list(weights.items()):
        if ".bank.in_proj." not in name:
            continue
        key, sub = mx.random.split(key)
        shape = (2,) + tuple(value.shape[1:])
        packed = value.dtype == mx.uint32  # a quantized weight's rows
        extra = (mx.random.randint(0, 2 ** 31, shape, key=sub) if packed
                 else mx.random.normal(shape, key=sub)).astype(value.dtype)
        weights[name] = mx.concatenate([value[:after_h], extra, value[after_h:]])
    mx.save_safetensors(str(folder / file), weights, metadata={"format": "mlx"})


@pytest.fixture(scope="session")
def books_data(tmp_path_factory) -> Path:
    """The fixture books as byte tokens, one of three held out; the texts are in its
    parent's texts/. Shared by every test that asks for it: read it, do not write into it."""
    root = tmp_path_factory.mktemp("books")
    copy_books(root / "texts")
    prepare(root / "texts", root / "prepared", tokenizer="bytes", val_fraction=0.34, log=_quiet)
    return root / "prepared"


@pytest.fixture(scope="module")
def words_data(tmp_path_factory) -> Path:
    """Five documents of 600 seeded random words as byte tokens, one held out: the data of
    the tiny training runs (tiny_config)."""
    return prepare_words(tmp_path_factory.mktemp("data"), WORDS, docs=5, per_doc=600,
                         val_fraction=0.2)


def tiny_config(data_dir, out, **changes) -> TrainConfig:
    """A `tiny` run of 6 steps of 4 x 32 bytes: a report every step, an evaluation and a
    checkpoint every 3; `changes` override any field."""
    base = dict(preset="tiny", data=str(data_dir), output_dir=str(out), seq_len=32,
                batch_size=4, max_steps=6, warmup_steps=2, steps_per_report=1,
                steps_per_eval=3, val_batches=2, save_every=3, sample_tokens=8,
                sample_prompts=["The "])
    return TrainConfig(**{**base, **changes})


def interrupt_training_at(monkeypatch, step: int, only=lambda loop: True) -> None:
    """Make the trainer raise KeyboardInterrupt at `step` of the runs `only` picks: what a
    kill leaves (the last periodic checkpoint, no end event). monkeypatch.undo() ends it."""
    from mlx_kssm.train import trainer as trainer_mod

    real_step = trainer_mod._Loop.train_step

    def killed(loop):
        if only(loop) and loop.state.step == step:
            raise KeyboardInterrupt
        return real_step(loop)

    monkeypatch.setattr(trainer_mod._Loop, "train_step", killed)
