"""prepare: split by document, separators, standard .npy files, meta.json, bad input."""

import io
import json
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mlx_kssm.cli import main
from mlx_kssm.data.errors import DataError
from mlx_kssm.data.loader import TokenDataset
from mlx_kssm.data.prepare import npy_header, prepare, token_dtype

QUIET = dict(log=lambda line: None)


def make_corpus(folder, n_docs=10, words=60):
    folder.mkdir(parents=True, exist_ok=True)
    docs = {}
    for i in range(n_docs):
        text = f"Document {i} begins.\n" + " ".join(f"w{i}x{j}" for j in range(words)) + f"\nEnd {i}.\n"
        (folder / f"doc{i:02d}.txt").write_text(text)
        docs[i] = text
    return docs


def split_documents(tokens, tok):
    """The documents of a token file: the text between separators."""
    text = tok.decode(np.asarray(tokens).tolist())
    parts = text.split("<|endoftext|>")
    assert parts[-1] == ""  # every document, the last included, ends with the separator
    return parts[:-1]


@pytest.mark.parametrize("tokenizer,compact", [("bytes", False), ("cl100k_base", False), ("cl100k_base", True)])
def test_split_by_document(tmp_path, tokenizer, compact):
    docs = make_corpus(tmp_path / "src", n_docs=10)
    result = prepare(tmp_path / "src", tmp_path / "out", tokenizer, compact, 0.2, 0, **QUIET)
    from mlx_kssm.data import TokenDataset

    train, val = TokenDataset(tmp_path / "out", "train"), TokenDataset(tmp_path / "out", "val")
    tok = train.tokenizer()
    train_docs, val_docs = split_documents(train.tokens, tok), split_documents(val.tokens, tok)
    assert len(val_docs) == 2 and len(train_docs) == 8
    assert sorted(train_docs + val_docs) == sorted(docs.values())  # no doc lost, split or merged
    meta = result.meta
    assert meta["splits"]["val"]["docs"] == 2 and meta["documents"] == 10
    assert meta["splits"]["train"]["tokens"] == len(train)
    assert meta["dtype"] == token_dtype(meta["vocab_size"]).name
    assert len(meta["sources"]) == 10 and all(len(s["sha256"]) == 64 for s in meta["sources"])


def test_split_is_deterministic_and_seeded(tmp_path):
    make_corpus(tmp_path / "src", n_docs=20)
    files = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        prepare(tmp_path / "src", tmp_path / name, "bytes", False, 0.1, seed, **QUIET)
        files[name] = (tmp_path / name / "tokens_val.npy").read_bytes()
    assert files["a"] == files["b"] and files["a"] != files["c"]


def test_at_least_one_doc_each_side(tmp_path):
    make_corpus(tmp_path / "src", n_docs=2)
    meta = prepare(tmp_path / "src", tmp_path / "out", "bytes", False, 0.01, 0, **QUIET).meta
    assert meta["splits"]["train"]["docs"] == 1 and meta["splits"]["val"]["docs"] == 1


def test_single_document_is_cut(tmp_path):
    text = "All the world's a stage.\n" * 100
    (tmp_path / "input.txt").write_text(text)
    meta = prepare(tmp_path / "input.txt", tmp_path / "out", "bytes", False, 0.1, 0, **QUIET).meta
    assert meta["split"] == "cut"
    assert meta["splits"]["val"]["tokens"] - 1 == round(0.1 * len(text))
    train = np.load(tmp_path / "out" / "tokens_train.npy")
    val = np.load(tmp_path / "out" / "tokens_val.npy")
    assert bytes(train[:-1].astype(np.uint8)) + bytes(val[:-1].astype(np.uint8)) == text.encode()


def test_token_files_open_with_numpy_defaults(tmp_path):
    """What researchers type: np.load(path, mmap_mode="r") with no other argument gives the
    tokens the loader trains on, and the file is byte for byte what np.save writes."""
    make_corpus(tmp_path / "src", n_docs=4)
    prepare(tmp_path / "src", tmp_path / "out", "bytes", False, 0.25, 0, **QUIET)
    for split in ("train", "val"):
        path = tmp_path / "out" / f"tokens_{split}.npy"
        tokens = np.load(path, mmap_mode="r")
        loaded = TokenDataset(tmp_path / "out", split).tokens
        assert isinstance(tokens, np.memmap) and tokens.dtype == np.uint16  # vocab 257: 16 bits
        assert np.array_equal(tokens, loaded) and tokens.offset == loaded.offset
        saved = io.BytesIO()
        np.save(saved, np.asarray(tokens), allow_pickle=False)
        assert path.read_bytes() == saved.getvalue()
    assert len(npy_header("<u4", 10**12)) == 128


def test_smallest_dtype():
    assert [token_dtype(v).name for v in (2, 256, 257, 65536, 65537, 100277)] == \
        ["uint8", "uint8", "uint16", "uint16", "uint32", "uint32"]


def test_compact_map_saved_and_small_dtype(tmp_path):
    make_corpus(tmp_path / "src", n_docs=4, words=5)
    meta = prepare(tmp_path / "src", tmp_path / "out", "cl100k_base", True, 0.25, 0, **QUIET).meta
    assert meta["tokenizer"]["compaction"]["map_file"] == "vocab_map.npy"
    ids = np.load(tmp_path / "out" / "vocab_map.npy", allow_pickle=False)
    assert meta["vocab_size"] == ids.size + 1 < 256 and meta["dtype"] == "uint8"


@pytest.mark.parametrize("tokenizer,flag,compacted", [
    ("cl100k_base", None, True), ("cl100k_base", "--no-compact", False),
    ("cl100k_base", "--compact", True), ("bytes", None, False), ("bytes", "--compact", True)])
def test_prepare_compacts_bpe_by_default(tmp_path, tokenizer, flag, compacted):
    """A BPE vocabulary is compacted unless --no-compact; bytes stays whole unless --compact."""
    make_corpus(tmp_path / "src", n_docs=4, words=5)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["data", "prepare", "--source", str(tmp_path / "src"),
                                       "--out", str(out), "--tokenizer", tokenizer]
                                + ([flag] if flag else []))
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "meta.json").read_text())
    assert meta["params"]["compact"] is compacted
    assert (out / "vocab_map.npy").is_file() is compacted
    base_vocab = 257 if tokenizer == "bytes" else 100277
    assert (meta["vocab_size"] < base_vocab) is compacted
    assert (f"compacted from {base_vocab:,} ids" in result.output) is compacted
    # a large vocabulary kept whole is pointed out, with the command that shows its cost
    assert ("--list-presets --data" in result.output) is (not compacted and base_vocab > 257)


def test_list_presets_at_the_prepared_vocabulary(tmp_path):
    """--list-presets --data DIR counts each preset at DIR's vocabulary, as training builds it."""
    from mlx_kssm.models import build_model, count_parameters

    make_corpus(tmp_path / "src", n_docs=4, words=5)
    meta = prepare(tmp_path / "src", tmp_path / "out", "cl100k_base", **QUIET).meta
    shown = CliRunner().invoke(main, ["train", "--list-presets", "--data", str(tmp_path / "out")])
    assert shown.exit_code == 0, shown.output
    assert f"vocabulary of {tmp_path / 'out'} ({meta['vocab_size']:,} ids)" in shown.output
    rows = {l.split()[0]: l.split()[1] for l in shown.output.splitlines()[1:]}
    for name in ("tiny", "v2", "transformer-tiny"):
        n_params = count_parameters(build_model(name, vocab_size=meta["vocab_size"]))
        assert rows[name] == f"{n_params / 1e6:.2f}M", (name, rows[name])
    missing = CliRunner().invoke(main, ["train", "--list-presets", "--data", str(tmp_path / "x")])
    assert missing.exit_code == 1 and missing.output.startswith("Error: ")
    assert len(missing.output.strip().splitlines()) == 1 and "meta.json" in missing.output


def test_jsonl_documents_and_fetch_manifest(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "docs.jsonl").write_text("\n".join(json.dumps({"text": f"jsonl doc {i}\n", "id": i}) for i in range(5)) + "\n")
    (src / "manifest.json").write_text(json.dumps({"files": [{"file": "docs.jsonl", "title": "Docs"}]}))
    (src / "stray.txt").write_text("not in the manifest")
    meta = prepare(src, tmp_path / "out", "bytes", False, 0.2, 0, **QUIET).meta
    assert meta["documents"] == 5 and meta["sources"][0]["title"] == "Docs"


def _parquet():
    return pytest.importorskip("pyarrow.parquet",
                               reason="the parquet extra (pyarrow) is not installed")


def write_parquet(path, columns: dict):
    parquet = _parquet()  # skips the test before pyarrow itself is imported
    import pyarrow
    parquet.write_table(pyarrow.table(columns), path, row_group_size=2)


def test_parquet_rows_are_documents(tmp_path):
    """A folder of Parquet shards: each non-blank row of the text column is one document,
    read across row groups; --text-field names another column."""
    src = tmp_path / "shards"
    src.mkdir()
    texts = [f"Parquet document {i}: caf\u00e9 \U0001F600\n" for i in range(7)]
    write_parquet(src / "train-00000.parquet", {"text": texts[:4] + [None, "  "],
                                                "id": list(range(6))})
    write_parquet(src / "train-00001.parquet", {"text": texts[4:], "id": [6, 7, 8]})
    meta = prepare(src, tmp_path / "out", "cl100k_base", None, 0.3, 0, **QUIET).meta
    assert meta["documents"] == 7 and [s["docs"] for s in meta["sources"]] == [4, 3]
    train, val = TokenDataset(tmp_path / "out", "train"), TokenDataset(tmp_path / "out", "val")
    tok = train.tokenizer()
    docs = split_documents(train.tokens, tok) + split_documents(val.tokens, tok)
    assert sorted(docs) == sorted(texts)
    write_parquet(tmp_path / "code.parquet", {"content": texts[:3]})
    result = CliRunner().invoke(main, ["data", "prepare", "--source", str(tmp_path / "code.parquet"),
                                       "--out", str(tmp_path / "code"), "--text-field", "content",
                                       "--tokenizer", "bytes", "--val-fraction", "0.34"])
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "code" / "meta.json").read_text())
    assert meta["documents"] == 3 and meta["params"]["text_field"] == "content"


@pytest.mark.parametrize("columns,flags,message", [
    ({"content": ["a b c d"], "id": [1]}, [],
     "code.parquet: no column 'text' (its columns: content, id); name the text column with "
     "--text-field"),
    ({"text": [1, 2]}, [], "column 'text' holds int64, not text"),
    ({"text": ["a b c d"]}, ["--text-field", "body"], "no column 'body' (its columns: text)"),
])
def test_parquet_without_a_text_column(tmp_path, columns, flags, message):
    write_parquet(tmp_path / "code.parquet", columns)
    result = CliRunner().invoke(main, ["data", "prepare", "--source", str(tmp_path / "code.parquet"),
                                       "--out", str(tmp_path / "out")] + flags)
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
    assert result.output.startswith("Error: ") and message in result.output
    assert not (tmp_path / "out").exists()


def test_damaged_parquet_file(tmp_path):
    _parquet()
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    result = CliRunner().invoke(main, ["data", "prepare", "--source", str(tmp_path / "bad.parquet"),
                                       "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
    assert "bad.parquet: not a readable Parquet file" in result.output


def test_parquet_without_its_extra(tmp_path, monkeypatch):
    """Without pyarrow, a Parquet source is one Error line naming the extra to install."""
    (tmp_path / "x.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # `import pyarrow` raises ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    result = CliRunner().invoke(main, ["data", "prepare", "--source", str(tmp_path / "x.parquet"),
                                       "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
    assert result.output.strip() == ("Error: reading Parquet needs pyarrow, which is not "
                                     "installed: pip install 'mlx-kssm[parquet]'")


@pytest.mark.slow
def test_memory_does_not_grow_with_corpus(tmp_path):
    """Peak Python/numpy allocation for 40 books ~ the same as for 10 (streaming)."""
    peaks = {}
    for n in (10, 40):
        make_corpus(tmp_path / f"src{n}", n_docs=n, words=20000)
        tracemalloc.start()
        prepare(tmp_path / f"src{n}", tmp_path / f"out{n}", "bytes", False, 0.1, 0, **QUIET)
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peaks[40] < 1.5 * peaks[10]


@pytest.mark.parametrize("setup,args,message", [
    (None, ["--source", "{tmp}/missing"], "no such file or directory"),
    ("empty_dir", ["--source", "{tmp}/src"], "no .txt, .jsonl or .parquet files"),
    ("blank_docs", ["--source", "{tmp}/src"], "no non-empty documents"),
    ("bad_jsonl", ["--source", "{tmp}/src"], "not a JSON object with a \"text\" field"),
    ("corpus", ["--source", "{tmp}/src", "--tokenizer", "nonsense"], "unknown tokenizer"),
    ("corpus", ["--source", "{tmp}/src", "--val-fraction", "0"], "--val-fraction must be between"),
    ("corpus", ["--source", "{tmp}/src", "--seed", "-1"],
     "--seed must be a non-negative integer, got -1"),
    ("unreadable", ["--source", "{tmp}/src"], "doc01.txt: cannot read: Permission denied"),
    ("wrong_type", ["--source", "{tmp}/src/a.csv"], "not a .txt, .jsonl or .parquet file"),
])
def test_bad_input_is_one_line(tmp_path, monkeypatch, setup, args, message):
    src = tmp_path / "src"
    if setup:
        src.mkdir()
    if setup == "blank_docs":
        (src / "a.txt").write_text("  \n\n")
    elif setup == "bad_jsonl":
        (src / "a.jsonl").write_text('{"text": "fine"}\n{"title": "no text"}\n')
    elif setup == "corpus":
        make_corpus(src, 3)
    elif setup == "unreadable":
        make_corpus(src, 3)
        real_read_bytes, real_open = Path.read_bytes, Path.open

        def read_bytes(path):  # tests run as root, where chmod 000 does not stop a read
            if path.name == "doc01.txt":
                raise PermissionError(13, "Permission denied")
            return real_read_bytes(path)

        def open_path(path, *args, **kwargs):
            if path.name == "doc01.txt":
                raise PermissionError(13, "Permission denied")
            return real_open(path, *args, **kwargs)
        monkeypatch.setattr(Path, "read_bytes", read_bytes)
        monkeypatch.setattr(Path, "open", open_path)
    elif setup == "wrong_type":
        (src / "a.csv").write_text("a,b\n")
    argv = ["data", "prepare", "--out", str(tmp_path / "out")] + [a.format(tmp=tmp_path) for a in args]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 1, result.output
    lines = [l for l in result.output.splitlines() if l.startswith("Error:")]
    assert len(lines) == 1 and message in lines[0], result.output
    assert "Traceback" not in result.output


def test_cli_prints_token_counts(tmp_path):
    make_corpus(tmp_path / "src", 5)
    result = CliRunner().invoke(main, ["data", "prepare", "--source", str(tmp_path / "src"),
                                       "--out", str(tmp_path / "out"), "--tokenizer", "bytes"])
    assert result.exit_code == 0, result.output
    assert "train: " in result.output and "val: " in result.output and "tokens/s" in result.output


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _prepared(tmp_path):
    make_corpus(tmp_path / "src", 4)
    prepare(tmp_path / "src", tmp_path / "data" / "out", "bytes", False, 0.25, 0, **QUIET)
    return tmp_path / "data" / "out"


def test_failed_prepare_keeps_the_earlier_data(tmp_path):
    """Bad input found halfway (a single document too short to split): the folder prepared
    before is untouched and loads; nothing temporary is left."""
    out = _prepared(tmp_path)
    before = _snapshot(out)
    (tmp_path / "short.txt").write_text("ab")
    result = CliRunner().invoke(main, ["data", "prepare", "--source", str(tmp_path / "short.txt"),
                                       "--out", str(out), "--tokenizer", "bytes"])
    assert result.exit_code == 1 and "at least 4 tokens" in result.output
    assert _snapshot(out) == before and [p.name for p in out.parent.iterdir()] == ["out"]
    from mlx_kssm.data import TokenDataset
    TokenDataset(out, "train")


def test_disk_full_during_prepare(tmp_path, monkeypatch):
    import errno
    import importlib
    import os
    from mlx_kssm._files import atomic_open
    prepare_mod = importlib.import_module("mlx_kssm.data.prepare")  # the package's name is the function

    out = _prepared(tmp_path)
    before = _snapshot(out)

    def disk_full(path, chunks, length, dtype):
        with atomic_open(path, "wb") as f:
            f.write(b"\0" * 4096)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(prepare_mod, "write_token_file", disk_full)
    result = CliRunner().invoke(main, ["data", "prepare", "--source", str(tmp_path / "src"),
                                       "--out", str(out), "--tokenizer", "bytes"])
    lines = [l for l in result.output.splitlines() if l.startswith("Error:")]
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert lines[0] == (f"Error: prepare into {out} failed: No space left on device (writing "
                        f"tokens_train.npy); {out} is left as it was")
    assert _snapshot(out) == before and [p.name for p in out.parent.iterdir()] == ["out"]


def test_prepare_refuses_an_out_folder_holding_other_files(tmp_path):
    make_corpus(tmp_path / "src", 3)
    before = _snapshot(tmp_path / "src")
    result = CliRunner().invoke(main, ["data", "prepare", "--source", str(tmp_path / "src"),
                                       "--out", str(tmp_path / "src"), "--tokenizer", "bytes"])
    assert result.exit_code == 1
    assert "holds files `data prepare` does not write (doc00.txt, doc01.txt, doc02.txt)" in \
        result.output
    assert _snapshot(tmp_path / "src") == before


@pytest.mark.parametrize("entry", ["../private.txt", "{tmp}/private.txt"])
def test_manifest_entry_leaving_the_source_is_refused(tmp_path, entry):
    src = tmp_path / "src"
    make_corpus(src, 2)
    (tmp_path / "private.txt").write_text("a file outside the corpus")
    name = entry.format(tmp=tmp_path)
    (src / "manifest.json").write_text(json.dumps({"files": [{"file": "doc00.txt"},
                                                             {"file": name}]}))
    result = CliRunner().invoke(main, ["data", "prepare", "--source", str(src), "--out",
                                       str(tmp_path / "out"), "--tokenizer", "bytes"])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert f"entry {name!r} is not a file inside {src}: refused" in result.output
    assert not (tmp_path / "out").exists()


def test_tiktoken_file_travels_with_the_data(tmp_path):
    """The ranks file is copied into the data folder; meta.json names no path outside it."""
    import base64
    from mlx_kssm.data import TokenDataset

    ranks = tmp_path / "mine.tiktoken"
    ranks.write_text("".join(f"{base64.b64encode(bytes([b])).decode()} {b}\n" for b in range(256)))
    make_corpus(tmp_path / "src", 3)
    meta = prepare(tmp_path / "src", tmp_path / "out", str(ranks), False, 0.34, 0, **QUIET).meta
    assert meta["tokenizer"]["path"] == "tokenizer.tiktoken"
    ranks.unlink()
    tok = TokenDataset(tmp_path / "out", "train").tokenizer()
    assert tok.decode(tok.encode("Document 1")) == "Document 1"
    meta["tokenizer"]["path"] = str(tmp_path / "src" / "doc00.txt")  # a path out of the folder
    (tmp_path / "out" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(Exception, match="lies outside .*: refused"):
        TokenDataset(tmp_path / "out", "train").tokenizer()


@pytest.mark.parametrize("content", ["elf", "random"])
def test_binary_files_are_refused(tmp_path, content):
    """An executable or random bytes named .txt: refused by prepare and by fetch."""
    make_corpus(tmp_path / "src", 2)
    rng = np.random.default_rng(0)
    data = (b"\x7fELF\x02\x01\x01" + bytes(9) + rng.bytes(2000) if content == "elf"
            else bytes(rng.integers(1, 256, 3000, dtype=np.uint8)))  # no NUL at all
    (tmp_path / "src" / "prog.txt").write_bytes(data)
    for argv in (["data", "prepare", "--tokenizer", "bytes"], ["data", "fetch"]):
        result = CliRunner().invoke(main, argv + ["--source", str(tmp_path / "src"), "--out",
                                                  str(tmp_path / "out")])
        assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
        assert result.output.startswith(f"Error: {tmp_path / 'src' / 'prog.txt'}: binary data")
        assert not (tmp_path / "out").exists()


def test_prepare_reads_what_fetch_wrote(tmp_path):
    """fetch's manifest (with the "written" list its ownership check keeps) is prepare's
    source: its works, not the other files a fetch wrote there earlier."""
    from mlx_kssm.data.fetch import fetch_local
    make_corpus(tmp_path / "src", 3)
    fetch_local(tmp_path / "src", tmp_path / "raw", **QUIET)
    (tmp_path / "src" / "doc00.txt").unlink()
    fetch_local(tmp_path / "src", tmp_path / "raw", **QUIET)  # doc00.txt stays, unlisted
    manifest = json.loads((tmp_path / "raw" / "manifest.json").read_text())
    assert [f["file"] for f in manifest["files"]] == ["doc01.txt", "doc02.txt"]
    assert manifest["written"] == ["doc00.txt", "doc01.txt", "doc02.txt"]
    meta = prepare(tmp_path / "raw", tmp_path / "out", "bytes", False, 0.5, 0, **QUIET).meta
    assert [s["file"] for s in meta["sources"]] == ["doc01.txt", "doc02.txt"]


@pytest.mark.parametrize("files", [
    {"meta.json": '{"mine": 1}'},
    {"vocab_map.npy": "not a map"},
    {"meta.json": '{"format": "mlx-kssm-tokens"}', "tokens_train.npy": "x"},  # no version
])
def test_prepare_refuses_names_without_a_prepared_meta(tmp_path, files):
    """--out holding only names prepare writes, but no meta.json prepare wrote: refused."""
    make_corpus(tmp_path / "src", 3)
    out = tmp_path / "out"
    out.mkdir()
    for name, text in files.items():
        (out / name).write_text(text)
    before = _snapshot(out)
    with pytest.raises(DataError, match=f"--out {out} is not an earlier prepared folder"):
        prepare(tmp_path / "src", out, "bytes", **QUIET)
    assert _snapshot(out) == before


def test_prepare_replaces_an_earlier_prepared_folder(tmp_path):
    make_corpus(tmp_path / "src", 3)
    prepare(tmp_path / "src", tmp_path / "out", "bytes", **QUIET)
    prepare(tmp_path / "src", tmp_path / "out", "bytes", compact=True, **QUIET)
    assert (tmp_path / "out" / "vocab_map.npy").is_file()


@pytest.mark.parametrize("value", ["0.1", None, True, [0.1]])
def test_prepare_checks_the_val_fraction_type(tmp_path, value):
    make_corpus(tmp_path / "src", 3)
    with pytest.raises(DataError, match="--val-fraction must be a number, got"):
        prepare(tmp_path / "src", tmp_path / "out", "bytes", val_fraction=value, **QUIET)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- long lines, in pieces

def _long_line(n_words: int) -> str:
    import random
    rng = random.Random(0)
    words = ["the", "night,", "fox", "(dark)", "ran", "12345", "don't", "  far", "\tsky", "é"]
    return " ".join(rng.choice(words) for _ in range(n_words))


@pytest.mark.parametrize("tokenizer", ["bytes", "cl100k_base"])
@pytest.mark.parametrize("n_docs", [1, 3])
def test_long_documents_tokenize_in_pieces_as_in_one_pass(tmp_path, monkeypatch, tokenizer,
                                                          n_docs):
    import sys
    from mlx_kssm.data.tokenizer import load_tokenizer
    prepare_mod = sys.modules["mlx_kssm.data.prepare"]  # the package exports the function
    (tmp_path / "src").mkdir()
    for d in range(n_docs):
        (tmp_path / "src" / f"d{d}.txt").write_text(_long_line(3000 + 100 * d))
    prepare(tmp_path / "src", tmp_path / "whole", tokenizer, False, 0.3, 0, **QUIET)
    seen = []
    cls = type(load_tokenizer(tokenizer))
    real = cls.encode_array
    monkeypatch.setattr(cls, "encode_array", lambda self, text: seen.append(len(text)) or
                        real(self, text))
    monkeypatch.setattr(prepare_mod, "PIECE_CHARS", 1000)
    prepare(tmp_path / "src", tmp_path / "pieces", tokenizer, False, 0.3, 0, **QUIET)
    assert max(seen) <= 1000 and len(seen) > 10 * n_docs  # the documents went in pieces
    for split in ("train", "val"):
        assert np.array_equal(np.load(tmp_path / "whole" / f"tokens_{split}.npy"),
                              np.load(tmp_path / "pieces" / f"tokens_{split}.npy"))
    a, b = (json.loads((tmp_path / f / "meta.json").read_text()) for f in ("whole", "pieces"))
    assert a["splits"] == b["splits"]


def test_a_long_line_costs_about_twice_its_size(tmp_path, monkeypatch):
    """Peak memory of preparing one 8 MB line stays near 2x its size (its bytes and its text,
    while decoding; then the text and one piece's tokens), not the ~7x one pass took. (Pieces
    of 64k characters here: the default million's tokens would dominate so small a line.)"""
    import sys
    monkeypatch.setattr(sys.modules["mlx_kssm.data.prepare"], "PIECE_CHARS", 1 << 16)
    size = 8 << 20
    (tmp_path / "src").mkdir()
    line = _long_line(size // 4)
    (tmp_path / "src" / "one.txt").write_text(line[:size])
    del line
    tracemalloc.start()
    try:
        prepare(tmp_path / "src", tmp_path / "out", "bytes", False, 0.1, 0, **QUIET)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2.3 * size, f"peak {peak / size:.2f}x the line"
