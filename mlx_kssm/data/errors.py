"""Errors of the data pipeline. Every bad input ends as one of these; the CLI prints its
message on one line and exits 1 (no traceback)."""


class DataError(Exception):
    """Bad or inconsistent data: missing/empty/corrupt token file, meta that disagrees with
    the file, a vocab id beyond the model's range, an unreadable source, a bad tokenizer."""


class FetchError(DataError):
    """A corpus download failed (names the book and every URL tried)."""
