"""Tokenize a corpus into memmappable token files.

Output folder:
  tokens_train.npy, tokens_val.npy   standard .npy files (numpy's own header, 128 bytes), 1-D,
                                     smallest unsigned dtype that holds the vocabulary:
                                     np.load(path, mmap_mode="r") opens them with defaults
  vocab_map.npy                      with compaction: compact id k -> base tokenizer id
                                     (the default for BPE tokenizers: see compacts_by_default)
  meta.json                          tokenizer spec, vocab size, dtype, counts, sources...

Streaming: documents are read one at a time and tokenized in pieces of about a million
characters (cut before a space that follows a word, where a BPE pre-tokenizer starts a new
token anyway), the tokens appended to a raw uint32 temp file per split; at the end each temp
file is copied, in chunks (remapped when compacting, which needs the whole corpus's id set
first), into its .npy. Memory holds one document's text (twice, briefly, while it is
decoded) plus one piece's tokens, whatever the corpus size or the length of a line.

Sources: .txt files (one document each), .jsonl files (one per line: its "text" field) and
.parquet files (one per row: its "text" column, read a batch of rows at a time; needs the
optional `parquet` extra, pyarrow). `text_field` names another field or column.

Split: by document, deterministic in the seed. Each document is either train or val,
never both; with >= 2 documents each split gets at least one. A corpus of ONE document
(e.g. tinyshakespeare's input.txt) is split by a cut instead: its last `val_fraction`
of tokens become val (meta.json says "split": "cut").
Every document is followed by the separator token (sep_id), so both files end with it.
"""

from __future__ import annotations

import codecs
import dataclasses
import io
import json
import shutil
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .._files import (atomic_open, atomic_write_json, describe_os_error, foreign_entries,
                      inside, naming, replacing_folder, sha256_file, visible_entries)
from .._types import has_type, is_int
from .errors import DataError
from .fetch import (TEXT_SUFFIXES, check_control_share, check_text, decode_text, jsonl_texts,
                    list_text_files)
from .tokenizer import TIKTOKEN_FILE, compact_tokenizer, load_tokenizer

FORMAT = "mlx-kssm-tokens"  # meta.json's marker: what makes a folder a prepared one
FORMAT_VERSION = 1
SPLITS = ("train", "val")
CHUNK_TOKENS = 1 << 20
PIECE_CHARS = 1 << 20  # characters of a document tokenized at once
READ_BYTES = 1 << 20  # a text file is read and decoded in blocks of this size
MAP_FILE = "vocab_map.npy"
OUTPUT_FILES = ("tokens_train.npy", "tokens_val.npy", "meta.json", MAP_FILE, TIKTOKEN_FILE)
SOURCE_SUFFIXES = TEXT_SUFFIXES + (".parquet",)
TEXT_FIELD = "text"  # the JSONL field and Parquet column holding a document, unless told
PARQUET_BATCH_ROWS = 1024  # rows read at a time: memory holds one batch, not the file
PARQUET_EXTRA = "pip install 'mlx-kssm[parquet]'"

Log = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- .npy writer

def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned integer dtype that holds ids 0..vocab_size-1 (little endian)."""
    for dtype in ("<u1", "<u2", "<u4"):
        if vocab_size - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise DataError(f"vocab size {vocab_size} does not fit in uint32")


def npy_header(dtype, length: int) -> bytes:
    """The header np.save writes for a 1-D array of `length` items (numpy's own writer: 128
    bytes for any realistic length), so np.load opens the file with its default arguments.
    (mlx-kssm 0.2.0 padded it to 16 KiB, which np.load refuses by default; the loader still
    reads those files: see loader.MAX_HEADER_SIZE.)"""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {
        "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
        "shape": (int(length),)})
    return header.getvalue()


def write_token_file(path, chunks: Iterator[np.ndarray], length: int, dtype) -> int:
    """Write `length` tokens (given as chunks) as a .npy, atomically. Returns the max id
    (-1 if empty). A chunk count that disagrees with `length` is an error, not a short file."""
    dtype, written, max_id = np.dtype(dtype), 0, -1
    with atomic_open(path, "wb") as f:
        f.write(npy_header(dtype, length))
        for chunk in chunks:
            if chunk.size:
                max_id = max(max_id, int(chunk.max()))
                if max_id > np.iinfo(dtype).max:
                    raise DataError(f"token id {max_id} does not fit {dtype.name}")
                f.write(np.ascontiguousarray(chunk, dtype=dtype).tobytes())
                written += chunk.size
        if written != length:
            raise DataError(f"{path}: wrote {written} tokens, expected {length}")
    return max_id


def _raw_chunks(path: Path, transform=None) -> Iterator[np.ndarray]:
    with open(path, "rb") as f:
        while block := f.read(CHUNK_TOKENS * 4):
            ids = np.frombuffer(block, dtype=np.uint32)
            yield transform(ids) if transform else ids


# --------------------------------------------------------------------------- documents

@dataclass
class Source:
    path: Path
    name: str
    title: str = ""
    sha256: str = ""
    docs: int = 0
    text_field: str = TEXT_FIELD  # a .jsonl line's field / a .parquet file's column


def find_sources(source, text_field: str = TEXT_FIELD) -> list[Source]:
    """What `data fetch` wrote (its manifest.json names the files and titles), or any
    .txt/.jsonl/.parquet file or folder."""
    return [dataclasses.replace(s, text_field=text_field) for s in _find_sources(Path(source))]


def _find_sources(source: Path) -> list[Source]:
    manifest = source / "manifest.json" if source.is_dir() else None
    if manifest and manifest.exists():
        try:
            entries = json.loads(manifest.read_text("utf-8"))["files"]
            names = [(e["file"], e.get("title", "")) for e in entries]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DataError(f"{manifest}: unreadable manifest ({exc})") from None
        sources = [Source(_listed(source, name, manifest), name, title) for name, title in names]
        for s in sources:
            if not s.path.is_file():
                raise DataError(f"{s.path}: listed in {manifest} but missing")
        if not sources:
            raise DataError(f"{manifest}: lists no files")
        return sources
    root = source if source.is_dir() else source.parent
    return [Source(p, str(p.relative_to(root))) for p in list_text_files(source, SOURCE_SUFFIXES)]


def _listed(source: Path, name, manifest: Path) -> Path:
    """The file a manifest entry names, which must lie inside the source folder."""
    path = inside(source, name) if isinstance(name, str) else None
    if path is None:
        raise DataError(f"{manifest}: entry {name!r} is not a file inside {source}: refused")
    return path


def iter_documents(src: Source) -> Iterator[str]:
    """A .txt file is one document; a .jsonl file one document per line (its "text" field,
    or src.text_field); a .parquet file one document per row (its "text" column, or
    src.text_field). Blank and null documents are skipped."""
    try:
        if src.path.suffix == ".jsonl":
            yield from _jsonl_documents(src.path, src.text_field)
        elif src.path.suffix == ".parquet":
            yield from _parquet_documents(src.path, src.text_field)
        else:
            text = _read_text(src.path)
            if text and not text.isspace():  # (strip() would copy a long text)
                yield text
    except OSError as exc:
        raise DataError(f"{src.path}: cannot read: {exc.strerror or exc}") from None


def _read_text(path: Path) -> str:
    """A .txt file's text, checked by check_text's rules, newlines normalized. UTF-8 is
    decoded block by block, so at most the text and its parts are held at once (about twice
    its size), never the bytes beside them; other charsets (decode_text) read it whole."""
    try:
        text = _read_utf8(path)
    except UnicodeDecodeError:
        raw = path.read_bytes()
        text = decode_text(raw)
        del raw
        text = text.replace("\r\n", "\n")
    check_control_share(text, path)
    return text


def _read_utf8(path: Path) -> str:
    decoder = codecs.getincrementaldecoder("utf-8")()
    parts, carry = [], ""
    with path.open("rb") as f:
        block = f.read(READ_BYTES).removeprefix(b"\xef\xbb\xbf")
        while block:
            if b"\0" in block:
                check_text(block, path)  # raises: UTF-16, or binary data
            part = carry + decoder.decode(block)
            part, carry = (part[:-1], "\r") if part.endswith("\r") else (part, "")
            parts.append(part.replace("\r\n", "\n"))  # a CR LF cut between blocks: carried
            block = f.read(READ_BYTES)
    parts.append(carry + decoder.decode(b"", final=True))
    return "".join(parts)


def encode_pieces(tok, text: str, piece: int | None = None) -> Iterator[np.ndarray]:
    """`tok.encode_array(text)` in pieces of at most `piece` characters, so a long document
    never has all its tokens in memory at once. Each cut falls before a space that follows a
    non-space: the regex pre-tokenizers of BPE tokenizers start a token there anyway, so the
    ids equal one pass's (only a run of `piece` characters without such a space is cut
    blindly)."""
    start, piece = 0, piece or PIECE_CHARS
    while start < len(text):
        end = _cut_point(text, start, piece)
        yield tok.encode_array(text[start:end])
        start = end


def _cut_point(text: str, start: int, piece: int) -> int:
    end = start + piece
    if end >= len(text):
        return len(text)
    low = start + piece // 2
    cut = text.rfind(" ", low, end)
    while cut > low and text[cut - 1].isspace():
        cut = text.rfind(" ", low, cut)
    return cut if cut > low else end


def _jsonl_documents(path: Path, text_field: str = TEXT_FIELD) -> Iterator[str]:
    """One document per line (its `text_field`), checked as a .txt file is
    (fetch.jsonl_texts)."""
    with open(path, "rb") as f:
        yield from jsonl_texts(f, path, text_field)


def _parquet_documents(path: Path, text_field: str = TEXT_FIELD) -> Iterator[str]:
    """The non-blank strings of column `text_field`, read a batch of rows at a time."""
    pyarrow = _import_pyarrow()
    try:
        table = pyarrow.parquet.ParquetFile(path)
        _check_text_column(pyarrow, path, table.schema_arrow, text_field)
        for batch in table.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[text_field]):
            for text in batch.column(0).to_pylist():
                if text is not None and text.strip():
                    yield text
    except pyarrow.ArrowException as exc:  # not Parquet, or damaged
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None


def _import_pyarrow():
    """pyarrow with its parquet module, from the optional `parquet` extra (imported here
    only: plain text needs neither)."""
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401  (pyarrow.parquet)
    except ImportError:
        raise DataError("reading Parquet needs pyarrow, which is not installed: "
                        f"{PARQUET_EXTRA}") from None
    return pyarrow


def _check_text_column(pyarrow, path: Path, schema, text_field: str) -> None:
    if text_field not in schema.names:
        raise DataError(f"{path}: no column {text_field!r} (its columns: "
                        f"{', '.join(schema.names) or 'none'}); name the text column with "
                        "--text-field")
    kind = schema.field(text_field).type
    if not (pyarrow.types.is_string(kind) or pyarrow.types.is_large_string(kind)):
        raise DataError(f"{path}: column {text_field!r} holds {kind}, not text; name the text "
                        "column with --text-field")


def choose_val_docs(n_docs: int, val_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask over documents: True = validation. Deterministic in (n_docs, seed)."""
    n_val = min(max(int(round(val_fraction * n_docs)), 1), n_docs - 1)
    is_val = np.zeros(n_docs, dtype=bool)
    is_val[np.random.default_rng(seed).permutation(n_docs)[:n_val]] = True
    return is_val


# --------------------------------------------------------------------------- prepare

@dataclass
class SplitStats:
    tokens: int = 0
    docs: int = 0
    max_id: int = -1


@dataclass
class PrepareResult:
    out_dir: Path
    meta: dict
    seconds: float = 0.0
    splits: dict = field(default_factory=dict)
    base_vocab_size: int = 0  # the tokenizer's own vocabulary, before any compaction


class _RawSplit:
    """Append-only uint32 temp file of base-tokenizer ids for one split."""

    def __init__(self, path: Path):
        self.path, self.stats = path, SplitStats()
        self.file = open(path, "wb")

    def write(self, ids: np.ndarray) -> None:
        """Part of a document's tokens."""
        with naming(self.path):
            self.file.write(np.ascontiguousarray(ids, dtype=np.uint32).tobytes())
        self.stats.tokens += ids.size

    def end_document(self, sep_id: int) -> None:
        with naming(self.path):
            self.file.write(np.uint32(sep_id).tobytes())
        self.stats.tokens += 1
        self.stats.docs += 1

    def append(self, ids: np.ndarray, sep_id: int) -> None:
        self.write(ids)
        self.end_document(sep_id)

    def move_tail(self, start: int, other: "_RawSplit") -> None:
        """Move this file's tokens from index `start` on to the end of `other`, in chunks."""
        offset = start * 4
        with naming(self.path):
            self.file.flush()
            with open(self.path, "rb") as f:
                f.seek(offset)
                while block := f.read(CHUNK_TOKENS * 4):
                    other.write(np.frombuffer(block, dtype=np.uint32))
            moved = self.stats.tokens - start
            self.file.truncate(offset)
            self.file.seek(offset)
        self.stats.tokens -= moved


def compacts_by_default(base) -> bool:
    """Whether `prepare` compacts `base` when not told: a BPE vocabulary (100k ids for
    cl100k_base) is mostly ids a corpus never uses, and the model's embedding and output
    layer are sized to it; the 257 byte ids are already small, and kept whole every byte
    stays encodable."""
    return base.spec.get("kind") != "bytes"


def prepare(source, out_dir, tokenizer: str = "cl100k_base", compact: bool | None = None,
            val_fraction: float = 0.05, seed: int = 0, log: Log = _stderr,
            text_field: str = TEXT_FIELD) -> PrepareResult:
    """Tokenize `source` into `out_dir` (see the module docstring). Returns the meta dict.
    `compact`: renumber the ids the corpus uses to 0..K-1 (+1 unknown id); None compacts
    BPE tokenizers and keeps the bytes tokenizer whole (compacts_by_default). `text_field`:
    the .jsonl field and .parquet column that holds each document.

    `out_dir` is new, empty or an earlier prepared folder; the new files are written to a
    temporary folder beside it that replaces it whole at the end, so a failure (bad input
    found halfway, a full disk, a kill) leaves the earlier data intact and usable."""
    import time

    started = time.perf_counter()
    if not has_type(val_fraction, float):  # "0.1" or None would fail the comparison below
        raise DataError(f"--val-fraction must be a number, got {val_fraction!r}")
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if not is_int(seed) or seed < 0:
        raise DataError(f"--seed must be a non-negative integer, got {seed!r}")
    if not (isinstance(text_field, str) and text_field):
        raise DataError(f"--text-field must name a field, got {text_field!r}")
    if compact is not None and not isinstance(compact, bool):
        raise DataError(f"compact must be True, False or None, got {compact!r}")
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    base = load_tokenizer(tokenizer)
    if compact is None:
        compact = compacts_by_default(base)
    sources = find_sources(source, text_field)
    n_docs = _count_documents(sources)
    if n_docs == 0:
        raise DataError(f"{source}: no non-empty documents")
    try:
        with replacing_folder(out_dir) as folder:
            _bundle_ranks_file(base, folder)
            tok, dtype, stats = _write_tokens(folder, sources, base, n_docs, compact,
                                              val_fraction, seed, log)
            meta = _meta(tok, dtype, stats, sources, n_docs, source, tokenizer, compact,
                         val_fraction, seed, text_field)
            atomic_write_json(folder / "meta.json", meta)
    except OSError as e:
        raise DataError(f"prepare into {out_dir} failed: {describe_os_error(e)}; {out_dir} is "
                        "left as it was") from None
    return PrepareResult(out_dir, meta, time.perf_counter() - started, stats, base.vocab_size)


def _bundle_ranks_file(tok, folder: Path) -> None:
    """A .tiktoken tokenizer's ranks file travels with the data: copied in, and the spec in
    meta.json names the copy (paths in meta.json stay inside the folder)."""
    if tok.spec.get("kind") == "tiktoken_file":
        shutil.copyfile(tok.spec["path"], folder / TIKTOKEN_FILE)
        tok.spec = {**tok.spec, "path": TIKTOKEN_FILE}


def _check_out_dir(out_dir: Path) -> None:
    """--out is new, empty or an earlier prepared folder: anything else is never replaced."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"--out {out_dir} exists and is not a folder")
    foreign = foreign_entries(out_dir, lambda name: name in OUTPUT_FILES)
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise DataError(f"--out {out_dir} holds files `data prepare` does not write ({shown}): "
                        "choose a new or empty folder, or an earlier prepared folder to replace")
    if visible_entries(out_dir) and not is_prepared_meta(out_dir / "meta.json"):
        raise DataError(f"--out {out_dir} is not an earlier prepared folder ({out_dir}/meta.json "
                        "is missing or not one `data prepare` wrote): it will not be replaced; "
                        "choose a new or empty folder")


def is_prepared_meta(path: Path) -> bool:
    """Whether `path` is a meta.json `prepare` wrote (its format marker and version): file
    names alone prove nothing, a user's own meta.json must never be replaced."""
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return (isinstance(meta, dict) and meta.get("format") == FORMAT
            and is_int(meta.get("format_version")))


def _write_tokens(folder: Path, sources, base, n_docs, compact, val_fraction, seed, log):
    """Tokenize into raw temp files per split, then write the .npy files (and the vocabulary
    map when compacting) into `folder`. Returns (tokenizer, dtype, SplitStats per split)."""
    raw = {s: _RawSplit(folder / f".tokens_{s}.raw.tmp") for s in SPLITS}
    try:
        used = _tokenize_all(sources, base, raw, n_docs, val_fraction, seed, log)
        for r in raw.values():
            r.file.close()
        tok = base
        if compact:
            tok = compact_tokenizer(base, np.flatnonzero(used), map_file=MAP_FILE)
            with atomic_open(folder / MAP_FILE, "wb") as f:
                np.save(f, tok.base_ids.astype(np.uint32), allow_pickle=False)
        dtype = token_dtype(tok.vocab_size)
        remap = tok.to_compact if compact else None
        for split, r in raw.items():
            r.stats.max_id = write_token_file(folder / f"tokens_{split}.npy",
                                              _raw_chunks(r.path, remap), r.stats.tokens, dtype)
    finally:
        for r in raw.values():
            r.file.close()
            r.path.unlink(missing_ok=True)
    return tok, dtype, {s: r.stats for s, r in raw.items()}


def _count_documents(sources: list[Source]) -> int:
    """First pass: count documents (the split needs the total) and hash each source."""
    total = 0
    for s in sources:
        s.docs = sum(1 for _ in iter_documents(s))
        try:
            s.sha256 = sha256_file(s.path)
        except OSError as exc:
            raise DataError(f"{s.path}: cannot read: {exc.strerror or exc}") from None
        total += s.docs
    return total


def _tokenize_all(sources, base, raw, n_docs, val_fraction, seed, log) -> np.ndarray:
    """Second pass: tokenize each document into its split. Returns the used-id mask."""
    used = np.zeros(base.vocab_size, dtype=bool)
    used[base.sep_id] = True
    is_val = choose_val_docs(n_docs, val_fraction, seed) if n_docs >= 2 else None
    doc_index = 0
    for n, src in enumerate(sources, 1):
        file_tokens = 0
        for text in iter_documents(src):
            split = raw["train" if is_val is None or not is_val[doc_index] else "val"]
            start = split.stats.tokens
            for ids in encode_pieces(base, text):
                used[ids] = True
                split.write(ids)
            file_tokens += split.stats.tokens - start
            if is_val is not None:
                split.end_document(base.sep_id)
            doc_index += 1
        log(f"[{n}/{len(sources)}] {src.name}: {src.docs} doc(s), {file_tokens:,} tokens")
    text = None  # the last document's text is let go before the cut below copies tokens
    if is_val is None:  # the one document
        _cut_single_document(raw, 0, base.sep_id, val_fraction)
    return used


def _cut_single_document(raw, start: int, sep_id: int, val_fraction: float) -> None:
    """The one document, written to train from token `start` on: its last `val_fraction`
    of tokens move to val, and each split counts the document once."""
    n = raw["train"].stats.tokens - start
    if n < 4:
        raise DataError("a single document needs at least 4 tokens to split into train and val")
    cut = n - max(1, int(round(val_fraction * n)))
    raw["train"].move_tail(start + cut, raw["val"])
    raw["train"].end_document(sep_id)
    raw["val"].end_document(sep_id)


def _meta(tok, dtype, stats, sources, n_docs, source, tokenizer, compact, val_fraction,
          seed, text_field) -> dict:
    from .. import __version__

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "tokenizer": tok.spec,
        "vocab_size": tok.vocab_size,
        "sep_id": tok.sep_id,
        "dtype": np.dtype(dtype).name,
        # where the token data starts in both files (numpy's header: the same size for both)
        "data_offset": len(npy_header(dtype, stats["train"].tokens)),
        "split": "documents" if n_docs >= 2 else "cut",
        "splits": {s: {"file": f"tokens_{s}.npy", "tokens": st.tokens, "docs": st.docs,
                       "max_id": st.max_id} for s, st in stats.items()},
        "documents": n_docs,
        "sources": [{"file": s.name, "title": s.title, "sha256": s.sha256, "docs": s.docs}
                    for s in sources],
        "params": {"source": str(Path(source).resolve()), "tokenizer": tokenizer,
                   "compact": compact, "val_fraction": val_fraction, "seed": seed,
                   "text_field": text_field},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "mlx_kssm_version": __version__,
    }
