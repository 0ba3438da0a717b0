"""Data pipeline: fetch public-domain text, tokenize it into memory-mapped .npy token
files, and sample training windows from them deterministically."""

from .errors import DataError, FetchError
from .fetch import fetch_gutenberg, fetch_local, fetch_shakespeare, read_catalog, strip_gutenberg
from .loader import (BatchSampler, EpochSampler, TokenDataset, check_tokenizer, check_vocab, eval_batches,
                     read_meta)
from .prepare import npy_header, prepare, token_dtype, write_token_file
from .tokenizer import load_tokenizer

__all__ = [
    "DataError", "FetchError",
    "fetch_gutenberg", "fetch_local", "fetch_shakespeare", "read_catalog", "strip_gutenberg",
    "prepare", "write_token_file", "token_dtype", "npy_header",
    "load_tokenizer",
    "TokenDataset", "BatchSampler", "EpochSampler", "eval_batches", "check_vocab", "check_tokenizer",
    "read_meta",
]
