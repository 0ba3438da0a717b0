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

FIXTURES = Path(__file__).parent / "fixtures"
BOOKS = FIXTURES / "gutenberg"
BOOK_FILES = ("pg1342_2024.txt", "pg1661_2002.txt", "pg84_2008_crlf.txt")


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


@pytest.fixture(scope="session")
def books_data(tmp_path_factory) -> Path:
    """The fixture books as byte tokens, one of three held out; the texts are in its
    parent's texts/. Shared by every test that asks for it: read it, do not write into it."""
    root = tmp_path_factory.mktemp("books")
    copy_books(root / "texts")
    prepare(root / "texts", root / "prepared", tokenizer="bytes", val_fraction=0.34, log=_quiet)
    return root / "prepared"
