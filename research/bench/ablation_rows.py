"""Summarize ablation rows already measured (the runs of `mlx-kssm study` folders, or a
rows.jsonl that the earlier harness appended to) -> JSON on stdout: per variant, the val loss
of each seed, mean and sample std.

For the screening rows of research/RESULTS.md: they were run by the code at commit 45f9fa4
(branch ablation-snapshot), whose options (group dynamics, Cayley rotation, softsign drive,
feature norm, ...) the current code no longer has, so they are summarized, not rerun:

    python research/bench/ablation_rows.py --rows research/out/ablate/rows.jsonl \
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


def study_rows(spec: str) -> list:
    """Rows from a `mlx-kssm study` folder: spec is STUDY_JSON (every model a row of its own
    name) or STUDY_JSON:MODEL=VARIANT (MODEL's seeds as rows of VARIANT)."""
    path, _, mapping = spec.rpartition(":")
    if not path or "=" not in mapping:  # STUDY_JSON alone: every model is its own row
        path, mapping = spec, ""
    model, _, variant = mapping.partition("=")
    if mapping and (not model or not variant):
        sys.exit(f"Error: --study wants STUDY_JSON[:MODEL=VARIANT], got {spec!r}")
    try:
        with open(path) as f:
            runs = json.load(f)["runs"]
        return [{"variant": variant or r["model"], "seed": r["seed"],
                 "val_loss": r["evaluation"]["val_loss"], "n_parameters": r["n_parameters"]}
                for r in runs if (not model or r["model"] == model)
                and r.get("status") == "completed"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        sys.exit(f"Error: cannot read the study runs in {path}: {e!r}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", default=[], action="append",
                    help="a rows.jsonl; repeat to summarize rows from several out-dirs")
    ap.add_argument("--study", default=[], action="append", metavar="STUDY_JSON[:MODEL=VARIANT]",
                    help="also read the seeds of every model (or MODEL's, as rows of VARIANT) "
                         "from a study.json; these replace the rows.jsonl rows of the same "
                         "variant and seed; repeatable")
    ap.add_argument("--variants", required=True)
    ap.add_argument("--commit", default="45f9fa4", help="the code that measured the rows")
    args = ap.parse_args()
    if not args.rows and not args.study:
        sys.exit("Error: give at least one --rows or --study")
    rows = []
    for path in args.rows:
        with open(path) as f:
            rows += [json.loads(line) for line in f if line.strip()]
    for spec in args.study:
        rows += study_rows(spec)
    emit({"part": "screening", "rows_file": ", ".join(args.rows + args.study),
          "measured_at": args.commit,
          "variants": summarize(rows, args.variants.split(","))}, None)


if __name__ == "__main__":
    main()
