"""The Gutenberg-120 corpus from its archive to token files, timed: what `data fetch` and
`data prepare` take and give on this machine.

    python research/g120_data.py --archive ../shared/data/gutenberg-120.tar.xz \
        --work data/g120-timing [--out research/results/g120-data.json]

Runs the documented commands (the CLI, as a user would) into --work, which it replaces, and
writes their wall times, the token counts and the vocabulary sizes to one JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

PREPARES = {"cl100k_base": [], "bytes": []}  # tokenizer -> extra flags


def timed(cmd: list) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archive", required=True)
    ap.add_argument("--work", required=True, help="scratch folder (replaced)")
    ap.add_argument("--out", default="research/results/g120-data.json")
    args = ap.parse_args(argv)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    raw = work / "raw"
    fetch = ["mlx-kssm", "data", "fetch", "--source", args.archive, "--out", str(raw)]
    rows = [{"step": "fetch (strip headers)", "command": " ".join(fetch), "seconds": timed(fetch)}]
    manifest = json.loads((raw / "manifest.json").read_text("utf-8"))
    rows[0].update(books=len(manifest["files"]), characters=sum(w["chars"] for w in manifest["files"]))
    for tokenizer, extra in PREPARES.items():
        out = work / tokenizer
        cmd = ["mlx-kssm", "data", "prepare", "--source", str(raw), "--out", str(out),
               "--tokenizer", tokenizer, "--val-fraction", "0.05", *extra]
        seconds = timed(cmd)
        meta = json.loads((out / "meta.json").read_text("utf-8"))
        splits = meta["splits"]
        rows.append({"step": f"prepare {tokenizer}", "command": " ".join(cmd), "seconds": seconds,
                     "train_tokens": splits["train"]["tokens"], "val_tokens": splits["val"]["tokens"],
                     "val_books": splits["val"]["docs"], "vocab_size": meta["vocab_size"],
                     "dtype": meta["dtype"]})
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                         f"load average {os.getloadavg()[0]:.1f} at the end",
              "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n", "utf-8")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
