"""The character-level scaling study: K-SSM against its matched transformer and its bolted
control at three sizes, on the same tokens, over seeds; then loss against evaluation length.

    python research/scaling.py --data data/prepared/g120-bytes --out runs/scaling-g120

One `mlx-kssm study` per size (runs/.../SIZE/), run seed by seed across the sizes so that a
stopped study has every size at its first seed early. Running the same command again reuses
finished runs and resumes unfinished ones (the study's own continuation). At the end it writes
the summary JSON (--summary) that the research record renders, and with `--plots` the two
plots (val loss against parameters, and against tokens seen).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import mlx_kssm  # noqa: F401  (OpenBLAS before mlx on Linux)
import numpy as np
from mlx_kssm.evaluation import EvalConfig, evaluate
from mlx_kssm.data.loader import TokenDataset
from mlx_kssm.models.presets import comparison_presets, preset_args
from mlx_kssm.study.runner import RANDOM_INIT, StudyConfig, run_study
from mlx_kssm.train import checkpoint as ckpt

SIZES = ("v1-char-xs", "v1-char-s", "v1-char")
LENGTH_FACTORS = (1, 2, 8, 32)  # evaluation length / training length
LENGTH_TOKENS = 131072  # scored tokens per evaluation length (windows x length)


def models_of(preset: str) -> list:
    kinds = comparison_presets(preset)
    return [preset, kinds["transformer"], kinds["control-bolted"], RANDOM_INIT]


def study_config(args, preset: str, seeds: int) -> StudyConfig:
    return StudyConfig(data=args.data, output_dir=str(Path(args.out) / preset), preset=preset,
                       models=models_of(preset), seeds=seeds, max_steps=args.steps,
                       batch_size=args.batch_size, seq_len=args.seq_len,
                       steps_per_eval=args.eval_every, steps_per_report=100,
                       save_every=500, eval_batches=args.eval_batches, samples=1)


def run_all(args) -> int:
    """Seed 0 of every size, then seed 1 of every size, ...: returns the first non-zero
    exit code (an interrupted study) or 0."""
    for seeds in range(1, args.seeds + 1):
        for preset in args.sizes:
            result = run_study(study_config(args, preset, seeds), echo=_echo,
                               argv=sys.argv)
            if result.exit_code:
                return result.exit_code
    return 0


def length_sweep(run_dir: Path, data: str, seq_len: int, cache: Path, label: str) -> dict:
    """Val loss at 1x, 2x, 8x and 32x the training length (cached in the run folder)."""
    if cache.exists():
        return json.loads(cache.read_text("utf-8"))
    losses = {}
    for factor in LENGTH_FACTORS:
        length = seq_len * factor
        windows = max(4, LENGTH_TOKENS // length)
        config = EvalConfig(batches=windows // 4, batch_size=4, seq_len=length, samples=0)
        losses[str(factor)] = evaluate(str(run_dir), data, config).val_loss
        _echo(f"   {label}: val loss at seq {length}: {losses[str(factor)]:.4f}")
    cache.write_text(json.dumps(losses), "utf-8")
    return losses


def summarize(args) -> dict:
    """The summary the research record renders: every run's figures, per size and model."""
    rows = []
    for preset in args.sizes:
        path = Path(args.out) / preset / "study.json"
        if not path.exists():
            _echo(f"{path}: not started yet, left out of the summary")
            continue
        for entry in json.loads(path.read_text("utf-8"))["runs"]:
            if entry.get("evaluation"):
                rows.append(run_row(args, preset, entry))
    return {"experiment": "scaling_char_g120", "data": args.data_label,
            "budget": {"steps": args.steps, "batch_size": args.batch_size,
                       "seq_len": args.seq_len,
                       "tokens": args.steps * args.batch_size * args.seq_len},
            "sizes": list(args.sizes), "length_factors": list(LENGTH_FACTORS),
            "command": " ".join(sys.argv), "runs": rows}


def run_row(args, preset: str, entry: dict) -> dict:
    run_dir = Path(args.out) / preset / "runs" / entry["model"] / f"seed_{entry['seed']}"
    evaluation = entry.get("evaluation") or {}
    row = {"size": preset, "model": entry["model"], "seed": entry["seed"],
           "val_loss": evaluation.get("val_loss"),
           "verdict": (evaluation.get("causality") or {}).get("verdict")}
    if entry["model"] == RANDOM_INIT:
        return row
    tokens_per_step = args.batch_size * args.seq_len
    row["params"] = entry.get("n_parameters")
    if row["params"]:  # the tied embedding is vocab x d_model
        vocab = TokenDataset(args.data, "train").vocab_size
        row["non_embedding_params"] = row["params"] - vocab * preset_args(entry["model"]).d_model
    row["tokens_per_sec"] = entry.get("tokens_per_sec")
    row["curve"] = [[step * tokens_per_step, loss] for step, loss in entry.get("val_curve", [])]
    if args.lengths and entry["model"] != comparison_presets(preset)["control-bolted"]:
        final = ckpt.step_dir(run_dir, args.steps)
        row["length_loss"] = length_sweep(final, args.data, args.seq_len,
                                          run_dir / "length_sweep.json",
                                          f"{entry['model']} seed {entry['seed']}")
    return row


KIND_STYLE = {"K-SSM": ("tab:blue", "o"), "transformer": ("tab:orange", "s"),
              "bolted control": ("tab:gray", "^")}


def kind_of(model: str) -> str:
    if model.startswith("transformer"):
        return "transformer"
    return "bolted control" if model.startswith("control-bolted") else "K-SSM"


def write_plots(summary: dict, folder: Path) -> list:
    """val loss against parameters (mean over seeds, each seed a dot) and
    against tokens seen (every run's validation curve); needs matplotlib (the plot extra)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trained = [r for r in summary["runs"] if r["model"] != RANDOM_INIT and r.get("params")]
    sizes = [s for s in summary["sizes"] if any(r["size"] == s for r in trained)]
    folder.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    for kind, (color, marker) in KIND_STYLE.items():
        rows = [r for r in trained if kind_of(r["model"]) == kind]
        counts = sorted({r["params"] for r in rows})
        means = [np.mean([r["val_loss"] for r in rows if r["params"] == n]) for n in counts]
        ax.plot(counts, means, color=color, marker=marker, label=kind)
        ax.scatter([r["params"] for r in rows], [r["val_loss"] for r in rows], color=color,
                   s=10, alpha=0.5)
    ax.set(xscale="log", xlabel="parameters", ylabel="val loss (nats/byte)",
           title=f"{summary['data']}: {summary['budget']['tokens']:,} tokens per run")
    ax.legend()
    paths = [_save(fig, folder / "scaling_params.png")]
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in trained:
        color, _ = KIND_STYLE[kind_of(r["model"])]
        size = sizes.index(r["size"])
        ax.plot(*zip(*r["curve"]), color=color, alpha=0.4 + 0.3 * size / max(1, len(sizes) - 1),
                linewidth=1 + size, label=f"{r['model']}" if r["seed"] == 0 else None)
    ax.set(xlabel="tokens seen", ylabel="val loss (nats/byte)", title="validation curves")
    ax.legend(fontsize=6, ncol=3)
    paths.append(_save(fig, folder / "scaling_tokens.png"))
    return paths


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _echo(line: str) -> None:
    print(line, flush=True)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="prepared bytes data (data prepare --tokenizer bytes)")
    p.add_argument("--data-label", default="gutenberg-120 bytes, 6 books held out",
                   help="how the summary names the data")
    p.add_argument("--out", required=True, help="folder of the per-size studies")
    p.add_argument("--summary", default="research/results/scaling_char_g120.json")
    p.add_argument("--sizes", default=",".join(SIZES), type=lambda s: tuple(s.split(",")))
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=24)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--eval-batches", type=int, default=50)
    p.add_argument("--no-lengths", dest="lengths", action="store_false",
                   help="skip the evaluation-length sweep")
    p.add_argument("--plots", default="research/results/plots",
                   help="folder for the two PNGs (needs matplotlib); '' for none")
    p.add_argument("--summary-only", action="store_true",
                   help="write the summary from the finished studies, train nothing")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    if not args.summary_only:
        code = run_all(args)
        if code:
            return code
    summary = summarize(args)
    Path(args.summary).parent.mkdir(parents=True, exist_ok=True)
    Path(args.summary).write_text(json.dumps(summary, indent=1) + "\n", "utf-8")
    _echo(f"summary -> {args.summary}")
    if args.plots:
        for path in write_plots(summary, Path(args.plots)):
            _echo(f"plot -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
