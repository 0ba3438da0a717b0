"""Loader: memmap checks against meta.json, deterministic windows, bounds, bad files."""

import json
import re

import numpy as np
import pytest

import mlx_kssm  # noqa: F401  (BLAS before mlx)
from mlx_kssm.data import (BatchSampler, DataError, EpochSampler, TokenDataset, check_vocab, eval_batches,
                           npy_header, write_token_file)
from mlx_kssm.data.loader import gather_windows


def write_dataset(folder, train, val, vocab_size=1000, dtype="uint16", meta_changes=None):
    """A prepared folder written with the package's own writer, tokens given directly."""
    folder.mkdir(parents=True, exist_ok=True)
    splits = {}
    for split, tokens in (("train", train), ("val", val)):
        tokens = np.asarray(tokens)
        max_id = write_token_file(folder / f"tokens_{split}.npy", iter([tokens]), tokens.size, dtype)
        splits[split] = {"file": f"tokens_{split}.npy", "tokens": int(tokens.size), "docs": 1, "max_id": max_id}
    meta = {"format_version": 1, "tokenizer": {"kind": "bytes"}, "vocab_size": vocab_size,
            "dtype": dtype, "data_offset": len(npy_header(dtype, len(train))), "splits": splits}
    meta.update(meta_changes or {})
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


@pytest.fixture
def data_dir(tmp_path):
    return write_dataset(tmp_path / "data", np.arange(1000) % 997, np.arange(300) % 250)


def test_dataset_opens_memmap(data_dir):
    ds = TokenDataset(data_dir, "train")
    assert isinstance(ds.tokens, np.memmap) and ds.tokens.offset == 128  # numpy's own header
    assert len(ds) == 1000 and ds.vocab_size == 1000 and ds.max_id == 996
    assert not ds.tokens.flags.writeable
    assert np.array_equal(np.load(data_dir / "tokens_train.npy", mmap_mode="r"), ds.tokens)
    ds.verify()


def _write_legacy_npy(path, tokens, dtype="<u2"):
    """A token file as mlx-kssm 0.2.0 wrote it: the header space-padded to 16 KiB."""
    text = repr({"descr": dtype, "fortran_order": False, "shape": (len(tokens),)})
    header = (text.ljust(16384 - 11) + "\n").encode("latin1")
    path.write_bytes(b"\x93NUMPY\x01\x00" + (16384 - 10).to_bytes(2, "little") + header
                     + np.asarray(tokens, dtype=dtype).tobytes())


def test_data_prepared_by_0_2_still_loads(tmp_path):
    """Folders prepared before the header went back to numpy's size (16 KiB headers, which
    np.load refuses by default) still train: same tokens, same batches."""
    train, val = np.arange(1000) % 997, np.arange(300) % 250
    new = write_dataset(tmp_path / "new", train, val)
    old = write_dataset(tmp_path / "old", train, val, meta_changes={"data_offset": 16384})
    for split, tokens in (("train", train), ("val", val)):
        _write_legacy_npy(old / f"tokens_{split}.npy", tokens)
    with pytest.raises(ValueError, match="Header info length"):
        np.load(old / "tokens_train.npy", mmap_mode="r")
    ds_old, ds_new = TokenDataset(old, "train"), TokenDataset(new, "train")
    assert ds_old.tokens.offset == 16384 and np.array_equal(ds_old.tokens, train)
    assert np.array_equal(BatchSampler(ds_old, 4, 32).batch(3)[0],
                          BatchSampler(ds_new, 4, 32).batch(3)[0])


def test_batches_are_pure_function_of_seed_step_rank(data_dir):
    ds = TokenDataset(data_dir, "train")
    a, b = BatchSampler(ds, 4, 32, seed=7), BatchSampler(ds, 4, 32, seed=7)
    for step in (0, 1, 500):
        xa, ya = a.batch(step)
        xb, yb = b.batch(step)
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
    # resuming: a fresh sampler asked for step 500 directly gives the same batch (no state)
    assert np.array_equal(BatchSampler(ds, 4, 32, seed=7).batch(500)[0], a.batch(500)[0])
    assert not np.array_equal(a.batch(0)[0], a.batch(1)[0])
    assert not np.array_equal(a.batch(0)[0], BatchSampler(ds, 4, 32, seed=8).batch(0)[0])


def test_inputs_and_targets_are_shifted_windows(data_dir):
    ds = TokenDataset(data_dir, "train")
    sampler = BatchSampler(ds, 8, 16, seed=0)
    x, y = sampler.batch(3)
    assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == np.int32
    assert np.array_equal(x[:, 1:], y[:, :-1])
    for row, start in zip(x, sampler.starts(3)):
        assert np.array_equal(row, ds.tokens[start:start + 16])


def test_windows_never_cross_the_end(tmp_path):
    ds = TokenDataset(write_dataset(tmp_path / "d", np.arange(17), np.arange(17)), "train")
    sampler = BatchSampler(ds, 64, 16, seed=0)
    for step in range(20):  # with n = seq_len + 1 the only window is the whole file
        x, y = sampler.batch(step)
        assert (x == np.arange(16)).all() and (y == np.arange(1, 17)).all()
    ds = TokenDataset(write_dataset(tmp_path / "e", np.arange(100), np.arange(100)), "train")
    starts = np.concatenate([BatchSampler(ds, 64, 10, seed=1).starts(s) for s in range(50)])
    assert starts.min() >= 0 and starts.max() == 100 - 10 - 1


def test_ranks_get_disjoint_rows_of_one_global_batch(data_dir):
    ds = TokenDataset(data_dir, "train")
    whole = BatchSampler(ds, 8, 16, seed=3).starts(9)
    parts = [BatchSampler(ds, 4, 16, seed=3, rank=r, world_size=2).starts(9) for r in (0, 1)]
    assert np.array_equal(np.concatenate(parts), whole)


def test_epoch_sampler_sees_every_window_once_per_pass(data_dir):
    sampler = EpochSampler(TokenDataset(data_dir, "train"), batch_size=3, seq_len=10, seed=5)
    assert sampler.n_windows == 99  # (1000 - 1) // 10: each window reads 11 tokens
    first_pass = np.concatenate([sampler.starts(step) for step in range(33)])
    assert sorted(first_pass) == list(range(0, 990, 10))
    second_pass = np.concatenate([sampler.starts(step) for step in range(33, 66)])
    assert sorted(second_pass) == sorted(first_pass)
    assert not np.array_equal(second_pass, first_pass)  # a fresh order each pass
    inputs, targets = sampler.batch(0)
    assert inputs.shape == (3, 10) and np.array_equal(inputs[:, 1:], targets[:, :-1])


def test_epoch_sampler_is_a_pure_function_and_splits_ranks(data_dir):
    ds = TokenDataset(data_dir, "train")
    whole = EpochSampler(ds, batch_size=4, seq_len=10, seed=1)
    ranks = [EpochSampler(ds, batch_size=2, seq_len=10, seed=1, rank=r, world_size=2)
             for r in (0, 1)]
    for step in (0, 7, 30, 24):  # 24 crosses from the first pass into the second
        assert np.array_equal(np.concatenate([r.starts(step) for r in ranks]), whole.starts(step))
        assert np.array_equal(EpochSampler(ds, 4, 10, seed=1).starts(step), whole.starts(step))
    assert not np.array_equal(EpochSampler(ds, 4, 10, seed=2).starts(0), whole.starts(0))


def test_eval_batches_fixed(data_dir):
    ds = TokenDataset(data_dir, "val")
    a, b = eval_batches(ds, 3, 2, 8), eval_batches(ds, 3, 2, 8)
    assert len(a) == 3 and all(np.array_equal(x1, x2) and np.array_equal(y1, y2)
                               for (x1, y1), (x2, y2) in zip(a, b))
    assert a[0][0].shape == (2, 8)


def test_check_vocab(data_dir):
    ds = TokenDataset(data_dir, "train")
    check_vocab(ds, 997)
    with pytest.raises(DataError, match="token id 996 is beyond the model's vocab size 500"):
        check_vocab(ds, 500)


def test_check_vocab_reads_the_ids_not_meta(tmp_path):
    """A stale max_id in meta.json lets no id past the model's (or the data's) vocabulary."""
    folder = write_dataset(tmp_path / "d", [1, 2, 900] * 50, [1, 2, 3] * 50, vocab_size=1000)
    meta = json.loads((folder / "meta.json").read_text())
    meta["splits"]["train"]["max_id"] = 10
    (folder / "meta.json").write_text(json.dumps(meta))
    ds = TokenDataset(folder, "train")
    with pytest.raises(DataError, match="token id 900 is beyond the model's vocab size 500"):
        check_vocab(ds, 500)
    meta["vocab_size"] = 600
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="id 900, beyond the vocab size 600 its meta.json gives"):
        check_vocab(TokenDataset(folder, "train"), 1000)


def test_verify_catches_ids_beyond_vocab(tmp_path):
    ds = TokenDataset(write_dataset(tmp_path / "d", [1, 2, 900], [1, 2], vocab_size=1000,
                                    meta_changes={"vocab_size": 500}), "train")
    with pytest.raises(DataError, match="max token id 900"):
        ds.verify()


def _corrupt(folder, how):
    path = folder / "tokens_train.npy"
    meta_path = folder / "meta.json"
    meta = json.loads(meta_path.read_text())
    if how == "missing_file":
        path.unlink()
    elif how == "empty_file":
        path.write_bytes(b"")
    elif how == "garbage":
        path.write_bytes(b"this is not an npy file at all" * 100)
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:-10])
    elif how == "trailing_bytes":
        path.write_bytes(path.read_bytes() + b"\0\0")
    elif how == "meta_length":
        meta["splits"]["train"]["tokens"] += 1
    elif how == "meta_dtype":
        meta["dtype"] = "uint32"
    elif how == "meta_offset":
        meta["data_offset"] = 64
    elif how == "legacy_npy":  # a 16 KiB header (mlx-kssm 0.2.0) where meta.json says 128
        _write_legacy_npy(path, np.load(path))
    elif how == "missing_meta":
        meta_path.unlink()
    elif how == "bad_meta":
        meta_path.write_text("{not json")
    elif how == "bad_vocab":
        meta["vocab_size"] = "many"
    elif how == "old_format":
        meta["format_version"] = 0
    elif how == "no_tokens":
        write_dataset(folder, np.zeros(0, np.uint16), [1, 2])
        return
    if meta_path.exists() and how not in ("bad_meta",):
        meta_path.write_text(json.dumps(meta))


@pytest.mark.parametrize("how,message", [
    ("missing_file", "missing token file"),
    ("empty_file", "empty file"),
    ("garbage", "not a valid .npy token file"),
    ("truncated", "not a valid .npy token file"),
    ("trailing_bytes", "bytes, expected"),
    ("meta_length", "meta.json says 1001"),
    ("meta_dtype", "dtype uint16, meta.json says uint32"),
    ("meta_offset", "token data at byte 128, meta.json says 64"),
    ("legacy_npy", "token data at byte 16384, meta.json says 128"),
    ("missing_meta", "meta.json: missing"),
    ("bad_meta", "meta.json: unreadable"),
    ("old_format", "format version 0"),
    ("bad_vocab", "bad vocab_size"),
    ("no_tokens", "no tokens"),
])
def test_bad_token_files_are_one_clear_error(data_dir, how, message):
    _corrupt(data_dir, how)
    with pytest.raises(DataError) as info:
        TokenDataset(data_dir, "train")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_too_short_for_seq_len(tmp_path):
    ds = TokenDataset(write_dataset(tmp_path / "d", np.arange(10), np.arange(10)), "train")
    with pytest.raises(DataError, match="too few for windows of seq_len 10"):
        BatchSampler(ds, 2, 10)


def test_gather_reads_only_windows(tmp_path):
    """Sampling from a memmap touches only the sampled pages (checked via a counting wrapper)."""
    class Counting:
        def __init__(self, arr):
            self.arr, self.read = arr, 0

        def __getitem__(self, key):
            out = self.arr[key]
            self.read += out.size
            return out

    tokens = Counting(np.arange(10**6, dtype=np.uint16))
    gather_windows(tokens, np.array([5, 70000, 999000]), 64)
    assert tokens.read == 3 * 65


# --------------------------------------------------------------------------- meta.json fields

@pytest.mark.parametrize("name", ["../other/tokens_val.npy", "{tmp}/other/tokens_val.npy"])
def test_split_file_outside_the_folder_is_refused(tmp_path, name):
    """meta.json never makes us read a token file elsewhere (another folder's data)."""
    write_dataset(tmp_path / "other", np.arange(100), np.arange(100))
    name = name.format(tmp=tmp_path)
    data = write_dataset(tmp_path / "data", np.arange(100), np.arange(100))
    meta = json.loads((data / "meta.json").read_text())
    meta["splits"]["val"]["file"] = name
    (data / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError) as info:
        TokenDataset(data, "val")
    assert str(info.value) == (f"{data / 'meta.json'}: splits.val.file {name!r} lies outside "
                               f"{data}: refused")


@pytest.mark.parametrize("field,value,message", [
    ("file", 5, "splits.val.file must be a file name, got 5"),
    ("tokens", "300", "splits.val.tokens must be a non-negative integer, got '300'"),
    ("tokens", 300.0, "splits.val.tokens must be a non-negative integer, got 300.0"),
    ("tokens", True, "splits.val.tokens must be a non-negative integer, got True"),
])
def test_split_fields_of_the_wrong_type_are_named(data_dir, field, value, message):
    meta = json.loads((data_dir / "meta.json").read_text())
    meta["splits"]["val"][field] = value
    (data_dir / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError) as info:
        TokenDataset(data_dir, "val")
    assert str(info.value) == f"{data_dir / 'meta.json'}: {message}"


@pytest.mark.parametrize("spec,message", [
    ({"kind": "tiktoken"}, "tokenizer: 'name' must be the encoding's name"),
    ({"kind": "tiktoken", "name": 5}, "tokenizer: 'name' must be the encoding's name"),
    ({"kind": "bytes", "compaction": {"base_ids": ["a"]}},
     "tokenizer: 'compaction.base_ids' must be a list of integers, got ['a']"),
    ({"kind": "bytes", "compaction": [1, 2]}, "tokenizer: 'compaction' must be an object"),
    ({"kind": "bytes", "compaction": {"map_file": "vocab_map.npy", "size": "3"}},
     "tokenizer: 'compaction.size' must be an integer, got '3'"),
    ("/etc/passwd", "tokenizer: the tokenizer file '/etc/passwd' named by the tokenizer spec "
                    "lies outside"),
    ("../tok.tiktoken", "lies outside"),
    (None, "tokenizer is null"),
])
def test_bad_tokenizer_spec_in_meta_names_the_file_and_field(data_dir, spec, message):
    meta = json.loads((data_dir / "meta.json").read_text())
    meta["tokenizer"] = spec
    (data_dir / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError) as info:
        TokenDataset(data_dir, "train")
    assert str(info.value).startswith(f"{data_dir / 'meta.json'}: ")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_tokenizer_check_compares_the_string_form(tmp_path, data_dir):
    """A name string in meta.json or config.json is the spec it stands for: compared, never
    skipped; a path string obeys the folder rule."""
    from mlx_kssm.data import check_tokenizer
    meta = json.loads((data_dir / "meta.json").read_text())
    meta["tokenizer"] = "cl100k_base"
    (data_dir / "meta.json").write_text(json.dumps(meta))
    model = tmp_path / "model"
    model.mkdir()
    ds = TokenDataset(data_dir, "train")
    assert ds.meta["tokenizer"] == {"kind": "tiktoken", "name": "cl100k_base"}
    with pytest.raises(DataError, match=r"another tokenizer .* \(bytes vs cl100k_base\)"):
        check_tokenizer(ds, {"kind": "bytes"}, model, "the model")
    with pytest.raises(DataError, match=r"\(bytes vs cl100k_base\)"):
        check_tokenizer(ds, "bytes", model, "the model")
    check_tokenizer(ds, "cl100k_base", model, "the model")
    check_tokenizer(ds, {"kind": "tiktoken", "name": "cl100k_base"}, model, "the model")
    with pytest.raises(DataError) as info:
        check_tokenizer(ds, "/etc/passwd", model, "the model")
    assert str(info.value).startswith(f"{model / 'config.json'}: tokenizer: the tokenizer file "
                                      "'/etc/passwd' named by the tokenizer spec lies outside")


@pytest.mark.parametrize("args, says", [
    ((2, 2, 0), "seq_len must be an integer >= 1, got 0"),  # was: windows of shape (2, 0)
    ((2, 2, -5), "seq_len must be an integer >= 1, got -5"),
    ((-1, 2, 8), "n_batches must be an integer >= 1, got -1"),
    ((2, 2.5, 8), "batch_size must be an integer >= 1, got 2.5"),
    ((2, True, 8), "batch_size must be an integer >= 1, got True")])
def test_eval_batches_checks_its_counts(data_dir, args, says):
    with pytest.raises(DataError, match=re.escape(says)):
        eval_batches(TokenDataset(data_dir, "val"), *args)


@pytest.mark.parametrize("kwargs, says", [
    ({"batch_size": "4"}, "batch_size must be an integer >= 1, got '4'"),
    ({"seed": 1.5}, "seed must be an integer in [0, 4294967295], got 1.5"),
    ({"seed": -1}, "seed must be an integer in [0, 4294967295], got -1"),
    ({"rank": 2, "world_size": 2}, "rank 2 outside world_size 2")])
def test_batch_sampler_checks_its_arguments(data_dir, kwargs, says):
    args = {"batch_size": 4, "seq_len": 32, **kwargs}
    with pytest.raises(DataError, match=re.escape(says)):
        BatchSampler(TokenDataset(data_dir, "train"), **args)
