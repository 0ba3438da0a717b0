"""Summarize ablation rows already measured (a rows.jsonl that scripts/bench/ablate.py appends
to) -> JSON on stdout: per variant, the val loss of each seed, mean and sample std.

For the screening rows of bench/RESULTS.md: they were run by the code at commit 45f9fa4
(branch ablation-snapshot), whose options (group dynamics, Cayley rotation, softsign drive,
feature norm, ...) the current code no longer has, so they are summarized, not rerun:

    python scripts/bench/ablation_rows.py --rows bench/out/ablate/rows.jsonl \
        --variants base,grp,gate,rotfix,cayley,softsign,fnorm,lr3,rg,rg_kinit,rg_loglam,rg_lr3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import emit  # noqa: E402


def summarize(rows: list, variants: list) -> dict:
    latest = {(r["variant"], r["seed"]): r for r in rows}  # a rerun that reused a run repeats it
    out = {}
    for name in variants:
        rs = sorted((r for (v, _), r in latest.items() if v == name), key=lambda r: r["seed"])
        if not rs:
            continue
        vals = [r["val_loss"] for r in rs]
        out[name] = {"n_parameters": rs[0]["n_parameters"], "seeds": [r["seed"] for r in rs],
                     "val_loss": vals, "mean": statistics.mean(vals),
                     "std": statistics.stdev(vals) if len(vals) > 1 else None}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", required=True, action="append",
                    help="a rows.jsonl; repeat to summarize rows from several out-dirs")
    ap.add_argument("--variants", required=True)
    ap.add_argument("--commit", default="45f9fa4", help="the code that measured the rows")
    args = ap.parse_args()
    rows = []
    for path in args.rows:
        with open(path) as f:
            rows += [json.loads(line) for line in f if line.strip()]
    emit({"part": "screening", "rows_file": ", ".join(args.rows), "measured_at": args.commit,
          "variants": summarize(rows, args.variants.split(","))}, None)


if __name__ == "__main__":
    main()
