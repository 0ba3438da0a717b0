"""A finished `mlx-kssm study` as a results JSON the record renders (kind "runs"): one row per
model, its val loss per seed, mean ± sd, parameters and val R; with --speed, a second JSON
(NAME_speed.json) of the CPU step-time ratios that research/bench/speed.py measured for each
model against the transformer.

    python research/study_rows.py --study runs/capacity-char-s/study.json \
        --experiment capacity_char_s --speed osc2x=/tmp/speed_osc2x.json \
        --out research/results/capacity_char_s.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import mlx_kssm  # noqa: F401  (OpenBLAS before mlx on Linux)
from mlx_kssm.models.presets import PRESETS
from mlx_kssm.study.variants import describe


def what(model: str, variants: dict) -> str:
    if model in variants:
        return describe(model, variants[model]).split(" = ", 1)[1]
    return PRESETS[model][0]


def rows_of(record: dict) -> list:
    variants = record["config"].get("variants") or {}
    rows = []
    for model in record["config"]["models"]:
        runs = sorted((r for r in record["runs"] if r["model"] == model
                       and r.get("status") == "completed"), key=lambda r: r["seed"])
        if not runs:
            continue
        losses = [r["evaluation"]["val_loss"] for r in runs]
        r_values = [r["evaluation"].get("val_R") for r in runs]
        rows.append({"row": model, "what": what(model, variants),
                     "params": runs[0]["n_parameters"], "seeds": [r["seed"] for r in runs],
                     "val_loss": [round(v, 4) for v in losses],
                     "val_loss_mean": round(statistics.mean(losses), 4),
                     "val_loss_sd": round(statistics.stdev(losses), 4) if len(losses) > 1
                     else None,
                     "val_r": None if None in r_values else round(statistics.mean(r_values), 3)})
    return rows


def speed_rows(specs: list) -> list:
    """NAME=speed.json -> the K-SSM / transformer step-time ratio at each sequence length."""
    rows = []
    for spec in specs:
        name, _, path = spec.partition("=")
        data = json.loads(Path(path).read_text("utf-8"))
        for result in data["results"]:
            ratio = result["kssm_over_transformer"]
            rows.append({"model": name, "seq_len": result["seq_len"],
                         "batch": result["batch"], "ratio_median": ratio["median"],
                         "ratio_min": ratio["min"], "ratio_max": ratio["max"],
                         "command": data["command"]})
    return rows


def write(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=1) + "\n", "utf-8")
    print(f"wrote {path}: {len(data['rows'])} rows", file=sys.stderr)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--study", required=True, help="a finished study's study.json")
    ap.add_argument("--experiment", required=True, help="the results JSON's experiment name")
    ap.add_argument("--speed", action="append", default=[], metavar="MODEL=SPEED_JSON")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    record = json.loads(Path(args.study).read_text("utf-8"))
    summary = {"experiment": args.experiment, "command": record["commands"][-1]["equivalent"],
               "rows": rows_of(record)}
    write(Path(args.out), summary)
    if args.speed:  # its own file: the record renders it as a second table
        out = Path(args.out)
        write(out.with_name(out.stem + "_speed.json"),
              {"experiment": args.experiment + "_speed", "rows": speed_rows(args.speed)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
