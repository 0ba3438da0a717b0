"""Read prepared token files: memory-mapped, checked against meta.json, sampled as windows.

Batches are a pure function of (seed, step, rank): no sampler state to save, so a run
resumed at step N sees exactly the batches an uninterrupted run would (data position ==
step). Only the sampled windows are read from the map, never the whole file.
"""

from __future__ import annotations

import json
import mmap
from pathlib import Path

import numpy as np

from .._files import inside
from .._types import check_seed, is_int
from .errors import DataError
from .prepare import FORMAT_VERSION, SPLITS, token_dtype
from .tokenizer import load_tokenizer, normalize_spec, tokenizer_mismatch

__all__ = ["DataError", "TokenDataset", "BatchSampler", "eval_batches", "check_vocab",
           "check_tokenizer", "read_meta", "open_token_file"]

# np.load refuses headers above 10,000 bytes unless told. `prepare` writes numpy's own
# 128-byte header now; folders prepared by mlx-kssm 0.2.0 and earlier have 16 KiB headers
# (padding for a zero-copy adoption on Metal that no code used), and still load.
MAX_HEADER_SIZE = 32768
_REQUIRED_META = ("format_version", "tokenizer", "vocab_size", "dtype", "data_offset", "splits")


def read_meta(data_dir) -> dict:
    """meta.json of a prepared folder, checked for the keys the loader relies on."""
    path = Path(data_dir) / "meta.json"
    if not path.is_file():
        raise DataError(f"{path}: missing (prepare the data with `mlx-kssm data prepare`)")
    try:
        meta = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable ({exc})") from None
    missing = [k for k in _REQUIRED_META if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise DataError(f"{path}: lacks {', '.join(missing)}")
    if not (isinstance(meta["vocab_size"], int) and meta["vocab_size"] > 0
            and meta["dtype"] in ("uint8", "uint16", "uint32") and isinstance(meta["data_offset"], int)
            and isinstance(meta["splits"], dict)):
        raise DataError(f"{path}: bad vocab_size, dtype, data_offset or splits")
    if meta["format_version"] != FORMAT_VERSION:
        raise DataError(f"{path}: format version {meta['format_version']}, this mlx-kssm reads "
                        f"{FORMAT_VERSION}; prepare the data again")
    # in its dict form, checked here, so that a name or path string obeys the dict's rules
    # (files inside the folder, compared with the model's) and errors name meta.json
    if meta["tokenizer"] is None:
        raise DataError(f"{path}: tokenizer is null (prepare the data again)")
    meta["tokenizer"] = _named(path, lambda: normalize_spec(meta["tokenizer"], data_dir))
    return meta


def _named(path, check):
    """check(), its DataError prefixed with the file the spec came from."""
    try:
        return check()
    except DataError as exc:
        raise DataError(f"{path}: tokenizer: {exc}") from None


def _split_file(meta_path: Path, data_dir: Path, split: str, info: dict) -> tuple[Path, int]:
    """(token file, token count) of a split as meta.json gives them: the file must lie inside
    the data folder (meta.json never makes us read a file elsewhere) and the count be an
    integer (a string "22727" is not the file's 22727 tokens)."""
    name, length = info["file"], info["tokens"]
    if not isinstance(name, str):
        raise DataError(f"{meta_path}: splits.{split}.file must be a file name, got {name!r}")
    path = inside(data_dir, name)
    if path is None:
        raise DataError(f"{meta_path}: splits.{split}.file {name!r} lies outside {data_dir}: "
                        "refused")
    if not is_int(length) or length < 0:
        raise DataError(f"{meta_path}: splits.{split}.tokens must be a non-negative integer, "
                        f"got {length!r}")
    return path, length


def open_token_file(path, dtype: str, length: int, offset: int) -> np.memmap:
    """Memory-map a token .npy and check it is what meta.json says: dtype, length, data
    offset and file size. Any disagreement is a DataError (never a reinterpretation)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: missing token file")
    size = path.stat().st_size
    if size == 0:
        raise DataError(f"{path}: empty file")
    try:
        tokens = np.load(path, mmap_mode="r", allow_pickle=False, max_header_size=MAX_HEADER_SIZE)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: not a valid .npy token file ({exc})") from None
    if not isinstance(tokens, np.memmap) or tokens.ndim != 1:
        raise DataError(f"{path}: not a 1-D token array")
    expected = np.dtype(dtype)
    if tokens.dtype != expected:
        raise DataError(f"{path}: dtype {tokens.dtype}, meta.json says {expected}")
    if tokens.offset != offset:
        raise DataError(f"{path}: token data at byte {tokens.offset}, meta.json says {offset}")
    if tokens.shape[0] != length:
        raise DataError(f"{path}: holds {tokens.shape[0]} tokens, meta.json says {length}")
    if size != offset + length * expected.itemsize:
        raise DataError(f"{path}: {size} bytes, expected {offset + length * expected.itemsize}")
    if length == 0:
        raise DataError(f"{path}: no tokens")
    return tokens


class TokenDataset:
    """One split of a prepared folder: `.tokens` (read-only memmap), `.meta`, `.vocab_size`."""

    def __init__(self, data_dir, split: str = "train"):
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r} (expected one of {', '.join(SPLITS)})")
        self.data_dir, self.split = Path(data_dir), split
        self.meta = read_meta(data_dir)
        info = self.meta["splits"].get(split)
        if not isinstance(info, dict) or not {"file", "tokens"} <= info.keys():
            raise DataError(f"{self.data_dir / 'meta.json'}: no '{split}' split")
        self.info = info
        self.path, length = _split_file(self.data_dir / "meta.json", self.data_dir, split, info)
        if token_dtype(self.meta["vocab_size"]).itemsize > np.dtype(self.meta["dtype"]).itemsize:
            raise DataError(f"{self.data_dir / 'meta.json'}: vocab size {self.meta['vocab_size']} "
                            f"does not fit dtype {self.meta['dtype']}")
        self.tokens = open_token_file(self.path, self.meta["dtype"], length,
                                      self.meta["data_offset"])
        self._max_id = None  # read from the file on first use (`max_id`)

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def max_id(self) -> int:
        """The largest token id in this split, read from the file itself (once): meta.json's
        max_id is what `prepare` wrote, and a stale or edited one must not let an id past the
        model's embedding through (that reads out of bounds: garbage, NaN or a crash)."""
        if self._max_id is None:
            self._max_id = scan_max_id(self.path, self.tokens.dtype, self.tokens.offset, len(self))
        return self._max_id

    def tokenizer(self):
        """The tokenizer the data was made with (compaction map included)."""
        return load_tokenizer(self.meta["tokenizer"], root=self.data_dir)

    def verify(self) -> None:
        """Every id below vocab_size and the max id equal to meta.json's."""
        recorded = self.info.get("max_id")
        if self.max_id >= self.vocab_size or self.max_id != recorded:
            raise DataError(f"{self.path}: max token id {self.max_id}, meta.json says {recorded} "
                            f"(vocab size {self.vocab_size})")


def scan_max_id(path, dtype, offset: int, length: int, chunk_bytes: int = 16 << 20) -> int:
    """The largest id of a token file, read in chunks with plain reads (pages a memory map
    touches would stay resident: see `_release_window`)."""
    dtype, max_id = np.dtype(dtype), -1
    per_chunk = max(chunk_bytes // dtype.itemsize, 1)
    with open(path, "rb") as f:
        f.seek(offset)
        for start in range(0, length, per_chunk):
            block = np.fromfile(f, dtype=dtype, count=min(per_chunk, length - start))
            if block.size == 0:
                raise DataError(f"{path}: ends before its {length} tokens")
            max_id = max(max_id, int(block.max()))
    return max_id


def check_vocab(dataset: TokenDataset, vocab_size: int) -> None:
    """Refuse data whose ids do not all fit the model's embedding of `vocab_size` rows, or
    the data's own vocabulary (the ids in the file are checked, not meta.json's claim)."""
    if dataset.max_id >= dataset.vocab_size:
        raise DataError(f"{dataset.path}: holds token id {dataset.max_id}, beyond the vocab size "
                        f"{dataset.vocab_size} its meta.json gives: prepare the data again")
    if dataset.max_id >= vocab_size:
        raise DataError(f"{dataset.path}: token id {dataset.max_id} is beyond the model's vocab "
                        f"size {vocab_size} (the data's vocab is {dataset.vocab_size})")


def check_tokenizer(dataset: TokenDataset, spec, root, source) -> None:
    """Refuse data prepared with another tokenizer than the model `source` uses (`spec`, from
    `root`/config.json, its files under `root`): the same id would stand for other text. No
    spec: nothing to check. A name string is compared as the dict it stands for."""
    data_spec = dataset.meta.get("tokenizer")
    if spec is None or data_spec is None:
        return
    spec = _named(Path(root) / "config.json", lambda: normalize_spec(spec, root))
    differs = tokenizer_mismatch(spec, root, data_spec, dataset.data_dir)
    if differs:
        raise DataError(f"{source} uses another tokenizer than {dataset.data_dir} was prepared "
                        f"with ({differs}): the ids would not match")


def gather_windows(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets), int32 (len(starts), seq_len), targets shifted by one. Reads only
    the windows from a memmap, and unmaps each window's pages once copied (see
    `_release_window`)."""
    windows = np.empty((len(starts), seq_len + 1), dtype=np.int32)
    for row, start in enumerate(starts):
        windows[row] = tokens[start:start + seq_len + 1]
        _release_window(tokens, int(start), int(start) + seq_len + 1)
    return np.ascontiguousarray(windows[:, :-1]), np.ascontiguousarray(windows[:, 1:])


# Page-cache folios are at most this large (PMD size) and aligned to it in the file.
_FOLIO_BYTES = 2 << 20


def _release_window(tokens: np.ndarray, start: int, stop: int) -> None:
    """Drop the pages just read from this process's mapping (MADV_DONTNEED; the data stays in
    the OS page cache). Why: recent Linux kernels map a whole large folio (up to 2 MiB) on a
    read fault, so 1000 random windows from a 1 GB file left ~1 GB resident in the process
    (measured: 1043 MB vs 71 MB for a 10 MB file). Releasing each window's folio-aligned
    block keeps RSS flat whatever the file size. A no-op for plain arrays or without madvise."""
    mm = getattr(tokens, "_mmap", None)
    if mm is None or not hasattr(mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return
    map_start = tokens.offset - tokens.offset % mmap.ALLOCATIONGRANULARITY  # as np.memmap maps
    first = (tokens.offset + start * tokens.itemsize) // _FOLIO_BYTES * _FOLIO_BYTES
    last = -(-(tokens.offset + stop * tokens.itemsize) // _FOLIO_BYTES) * _FOLIO_BYTES
    lo, hi = max(first - map_start, 0), min(last - map_start, len(mm))
    if hi > lo:
        mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)


def _window_starts(rng: np.random.Generator, n_tokens: int, seq_len: int, count: int) -> np.ndarray:
    # a window reads seq_len + 1 tokens, so the last start is n_tokens - seq_len - 1
    return rng.integers(0, n_tokens - seq_len, size=count, dtype=np.int64)


def _check_window(dataset: TokenDataset, seq_len: int) -> None:
    if len(dataset) < seq_len + 1:
        raise DataError(f"{dataset.path}: {len(dataset)} tokens, too few for windows of "
                        f"seq_len {seq_len} (+1 for the shifted targets)")


class BatchSampler:
    """Random windows; `batch(step)` depends only on (seed, step, rank, world_size).

    Each step draws one global batch of batch_size * world_size windows from
    default_rng([seed, step]); rank r takes rows r*batch_size .. (r+1)*batch_size - 1, so
    ranks never share a draw and the global batch does not depend on how it is split."""

    def __init__(self, dataset: TokenDataset, batch_size: int, seq_len: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        _check_counts(batch_size=batch_size, seq_len=seq_len, world_size=world_size)
        if not (is_int(rank) and 0 <= rank < world_size):
            raise DataError(f"rank {rank!r} outside world_size {world_size}")
        check_seed(seed, DataError)
        _check_window(dataset, seq_len)
        self.dataset, self.batch_size, self.seq_len = dataset, batch_size, seq_len
        self.seed, self.rank, self.world_size = seed, rank, world_size

    def starts(self, step: int) -> np.ndarray:
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        rng = np.random.default_rng([self.seed, step])
        starts = _window_starts(rng, len(self.dataset), self.seq_len, self.batch_size * self.world_size)
        return starts[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        return gather_windows(self.dataset.tokens, self.starts(step), self.seq_len)


class EpochSampler(BatchSampler):
    """Every token once per pass: the split cut into non-overlapping windows of seq_len
    tokens (each reads one more for its last target), visited in a seeded random order, one
    pass after another with a fresh order. `batch(step)` still depends only on (seed, step,
    rank, world_size), so resume is exact; the global batch's windows are consecutive in the
    pass's order, so ranks never share a window."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.n_windows = (len(self.dataset) - 1) // self.seq_len
        self._order = (None, None)  # (pass, its permutation): one pass is reused for many steps

    def starts(self, step: int) -> np.ndarray:
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        per_step = self.batch_size * self.world_size
        first = step * per_step + self.rank * self.batch_size
        passes, slots = np.divmod(np.arange(first, first + self.batch_size), self.n_windows)
        windows = np.array([self._pass_order(int(p))[s] for p, s in zip(passes, slots)],
                           dtype=np.int64)
        return windows * self.seq_len

    def _pass_order(self, pass_index: int) -> np.ndarray:
        if self._order[0] != pass_index:
            rng = np.random.default_rng([self.seed, EPOCH_STREAM, pass_index])
            self._order = (pass_index, rng.permutation(self.n_windows))
        return self._order[1]


SAMPLERS = {"random": BatchSampler, "epoch": EpochSampler}
EPOCH_STREAM = 1  # keeps the pass orders' random streams apart from BatchSampler's (seed, step)


def _check_counts(**counts) -> None:
    """Each of `counts` a whole number >= 1 (numpy would take -1 for a shape, or 2.5 as 2)."""
    for name, value in counts.items():
        if not (is_int(value) and value >= 1):
            raise DataError(f"{name} must be an integer >= 1, got {value!r}")


def eval_batches(dataset: TokenDataset, n_batches: int, batch_size: int, seq_len: int,
                 seed: int = 1234) -> list[tuple[np.ndarray, np.ndarray]]:
    """A fixed list of (inputs, targets) windows for validation: the same for every call with
    the same arguments, so evaluations are comparable across a run and across resumes."""
    _check_counts(n_batches=n_batches, batch_size=batch_size, seq_len=seq_len)
    check_seed(seed, DataError)
    _check_window(dataset, seq_len)
    starts = _window_starts(np.random.default_rng(seed), len(dataset), seq_len, n_batches * batch_size)
    return [gather_windows(dataset.tokens, starts[i * batch_size:(i + 1) * batch_size], seq_len)
            for i in range(n_batches)]
