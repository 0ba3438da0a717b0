"""Ablations for the quality issue: named model variants, each trained on the same data, the
same batches (same seeds) and the same budget through the real trainer; prints a table of
val loss mean ± std over seeds and writes JSON.

    python research/bench/ablate.py --data data/prepared/chars --variants base,l4 --seeds 0,1,2

Every run is a normal run folder under --out-dir/<variant>/seed<k>; a finished run is reused,
an unfinished one resumed, so the command can be stopped and run again.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import mlx_kssm  # noqa: E402,F401  (BLAS before mlx)

from _common import emit, machine  # noqa: E402
from mlx_kssm.train import read_history  # noqa: E402

# name -> (preset, ModelArgs overrides, TrainConfig overrides): the rows of research/RESULTS.md
# sections 6 and 8 that this package can still build.
DESIGN_1 = {"design": 1, "rotation": "input", "gate": False, "squash": "exp"}
EXP = {"squash": "exp"}
# v1-char as mlx-kssm 0.1 shipped it: 2 layers, 8 groups of 16, 4 harmonics, FFN 512 (spelled
# out, so the rows stay what they were when the preset moves)
V010 = {"n_layers": 2, "n_groups": 8, "osc_per_group": 16, "harmonics": 4, "ffn_hidden": 512}
# The v1-char preset's bank and MLP since the bank was widened (wide_g64), and the wider step
# after it (wide_g80), spelled out for the same reason
WIDE_G64 = {"n_groups": 64, "ffn_hidden": 256}
WIDE_G80 = {"n_groups": 80, "ffn_hidden": 128}
X2_G120 = {"d_model": 192, "n_groups": 120, "ffn_hidden": 192}
# tiny's bank and MLP (spelled out, so bpe_tiny stays what it was if the preset moves), the
# same parameters spent on a bank 2.5x as wide, and on one half as wide
TINY_G16 = {"n_groups": 16, "ffn_hidden": 256}
TINY_G40 = {"n_groups": 40, "ffn_hidden": 60}
TINY_G8 = {"n_groups": 8, "ffn_hidden": 321}
# transformer-tiny's FFN, matched to TINY_G16 (1,457,352 parameters at the compacted vocab),
# spelled out like TINY_G16 so its rows stay what they were if tiny's bank moves
TF_TINY = {"ffn_hidden": 292}
# transformer-char's FFN while it was matched to wide_g64 (896,028 parameters)
TF_G64 = {"ffn_hidden": 583}
# the recipe's AdamW weight decay: a variant that names none trains at this, whatever its
# preset recommends (the char presets: 0.1 since wide_g80_wd01; the tiny presets: 0.1 since
# bpe_tiny_wd01 and bpe_tf_tiny_wd01), so a row stays what it was
RECIPE_WEIGHT_DECAY = 0.01
# the tiny presets' LR when the cl100k rows were measured, spelled out for the same reason
# (the presets: 5e-3 since bpe_tiny_wd01_lr5 and bpe_tf_tiny_wd01_lr5)
BPE_LR = 3e-3
# The quality table (research/RESULTS.md): each row changes one thing from the row before.
VARIANTS: dict = {
    "d1": ("v1-char", {**V010, **DESIGN_1}, {}),
    "fixrot": ("v1-char", {**V010, "rotation": "fixed", "gate": False, **EXP}, {}),
    "fixrot_gate": ("v1-char", {**V010, "rotation": "fixed", "gate": True, **EXP}, {}),
    "d2": ("v1-char", V010, {}),
    "d2_h2": ("v1-char", {**V010, "harmonics": 2}, {}),
    "d2_h1": ("v1-char", {**V010, "harmonics": 1}, {}),
    "d2_g32n4h1": ("v1-char", {**V010, "n_groups": 32, "osc_per_group": 4, "harmonics": 1}, {}),
    "v1char": ("v1-char", {}, {}),  # the preset's model as it is now, at the recipe's decay
    # single changes beside the path
    "d1_gate": ("v1-char", {**V010, **DESIGN_1, "gate": True}, {}),
    "d2_g16n8h1": ("v1-char", {**V010, "n_groups": 16, "osc_per_group": 8, "harmonics": 1}, {}),
    "d2_g64n2h1": ("v1-char", {**V010, "n_groups": 64, "osc_per_group": 2, "harmonics": 1}, {}),
    "d2_g16n8h2": ("v1-char", {**V010, "n_groups": 16, "osc_per_group": 8, "harmonics": 2}, {}),
    "d2_g32n4h2": ("v1-char", {**V010, "n_groups": 32, "osc_per_group": 4, "harmonics": 2}, {}),
    "d2_h2_l4": ("v1-char", {**V010, "harmonics": 2, "n_layers": 4}, {}),
    "v1char_l2": ("v1-char", {"n_layers": 2}, {}),
    # controls and transformers at the preset's sizes
    "bolted": ("control-bolted-char", {}, {}),
    "tf_char": ("transformer-char", {}, {}),
    "tf4_ffn512_lr1": ("transformer-char", {"n_layers": 4, "ffn_hidden": 512}, {"learning_rate": 1e-3}),
    "tf4_ffn512_lr2": ("transformer-char", {"n_layers": 4, "ffn_hidden": 512}, {"learning_rate": 2e-3}),
    # compacted cl100k Shakespeare (run with --data data/prepared/bpe --steps 500 --batch 16
    # --seq 128 --val-batches 30): 1,024,000 tokens each, at LR 3e-3 (the tiny presets' own
    # until the _lr5 rows moved them to 5e-3) unless the row says
    "bpe_tiny_d1": ("tiny", {**DESIGN_1, "n_groups": 8, "osc_per_group": 8, "harmonics": 3},
                    {"learning_rate": BPE_LR}),
    "bpe_tiny": ("tiny", TINY_G16, {"learning_rate": BPE_LR}),
    # the char preset's proportions at tiny's width: a bank 2.5x as wide (40 groups of 4 at
    # d_model 64, as 80 at 128), its MLP narrowed to keep the parameter count (FFN 256 -> 60)
    "bpe_tiny_g40": ("tiny", TINY_G40, {"learning_rate": BPE_LR}),
    # and the other way: half the bank, its parameters given to the MLP (FFN 256 -> 321)
    "bpe_tiny_g8": ("tiny", TINY_G8, {"learning_rate": BPE_LR}),
    # tiny at the char presets' weight decay (0.1 instead of 0.01)
    "bpe_tiny_wd01": ("tiny", TINY_G16, {"weight_decay": 0.1, "learning_rate": BPE_LR}),
    # tiny at a higher LR, and below, its transformer at it too: the tiny presets' LR since
    "bpe_tiny_wd01_lr5": ("tiny", TINY_G16, {"weight_decay": 0.1, "learning_rate": 5e-3}),
    "bpe_tf_tiny": ("transformer-tiny", TF_TINY, {"learning_rate": BPE_LR}),
    # its matched transformer at 0.1 too: the weight decay moves both BPE tiny presets or neither
    "bpe_tf_tiny_wd01": ("transformer-tiny", TF_TINY, {"weight_decay": 0.1,
                                                    "learning_rate": BPE_LR}),
    "bpe_tf_tiny_wd01_lr5": ("transformer-tiny", TF_TINY, {"weight_decay": 0.1,
                                                        "learning_rate": 5e-3}),
    # above the presets' 5e-3 (seed 0 first, as a screen): is either one's best LR higher?
    "bpe_tiny_wd01_lr8": ("tiny", TINY_G16, {"weight_decay": 0.1, "learning_rate": 8e-3}),
    "bpe_tf_tiny_wd01_lr8": ("transformer-tiny", TF_TINY, {"weight_decay": 0.1,
                                                        "learning_rate": 8e-3}),
    "bpe_bolted_tiny": ("control-bolted-tiny", {}, {"learning_rate": BPE_LR}),
    # tiny's bolted control at the tiny presets' defaults (LR 5e-3, weight decay 0.1): the
    # price of the contract on cl100k, paired with bpe_tiny_wd01_lr5's seeds
    "bpe_bolted_tiny_wd01_lr5": ("control-bolted-tiny", TINY_G16, {"weight_decay": 0.1,
                                                                  "learning_rate": 5e-3}),
    # earlier screening names kept for research/out/ablate's single-seed rows
    "c4_l4": ("v1-char", {"n_groups": 32, "osc_per_group": 4, "harmonics": 1, "n_layers": 4,
                          "ffn_hidden": 512}, {}),
    "bolted_c4_l4": ("control-bolted-char", {"n_groups": 32, "osc_per_group": 4, "harmonics": 1,
                                             "n_layers": 4, "ffn_hidden": 512}, {}),
    # a wider bank at the same parameter count: 256 oscillators (64 groups of 4), FFN 512 -> 256
    # (wide_g64), or 320 and FFN 128 (wide_g80: with weight decay 0.1, the v1-char preset), and
    # the control
    "wide_g64": ("v1-char", WIDE_G64, {}),
    "wide_g80": ("v1-char", WIDE_G80, {}),
    "bolted_wide_g64": ("control-bolted-char", WIDE_G64, {}),
    # wide_g64's control at wide_g64's size: its raw-state readout costs 166k more parameters,
    # paid here by its MLP (FFN 256 -> 95: 896,384 vs wide_g64's 896,004), to tell whether its
    # lead comes from reading the amplitudes or from being bigger
    "bolted_wide_g64_ffn95": ("control-bolted-char", {"n_groups": 64, "ffn_hidden": 95}, {}),
    # wide_g64's training options, one at a time (LR 2e-3, weight decay 0.01 when it was the
    # preset)
    "wide_g64_lr3": ("v1-char", WIDE_G64, {"learning_rate": 3e-3}),
    "wide_g64_lr14": ("v1-char", WIDE_G64, {"learning_rate": 1.4e-3}),
    "wide_g64_wd01": ("v1-char", WIDE_G64, {"weight_decay": 0.1}),
    "bolted_wide_g64_wd01": ("control-bolted-char", WIDE_G64, {"weight_decay": 0.1}),
    "tf_char_wd01": ("transformer-char", TF_G64, {"weight_decay": 0.1}),
    # the two steps together, 80 groups with FFN 128 and weight decay 0.1: the v1-char preset
    # since (the char study's runs: its v1-char and control-bolted-char)
    "wide_g80_wd01": ("v1-char", WIDE_G80, {"weight_decay": 0.1}),
    "bolted_wide_g80_wd01": ("control-bolted-char", WIDE_G80, {"weight_decay": 0.1}),
    # depth at the preset's size: 6 thinner layers (53 groups, FFN 64: 894k); the residual's
    # width: d_model 160 (60 groups, FFN 96: 892k) or 96 (116 groups, FFN 128: 889k)
    "l6_g53_wd01": ("v1-char", {"n_layers": 6, "n_groups": 53, "ffn_hidden": 64},
                    {"weight_decay": 0.1}),
    "d160_g60_wd01": ("v1-char", {"d_model": 160, "n_groups": 60, "ffn_hidden": 96},
                      {"weight_decay": 0.1}),
    "d96_g116_wd01": ("v1-char", {"d_model": 96, "n_groups": 116, "ffn_hidden": 128},
                      {"weight_decay": 0.1}),
    # the rotation computed from x_t too (design 1's, with design 2's gate and squashes): the
    # damping's selectivity matters (fixd_g106_wd01), does the frequency's? 64 groups pay for
    # its N x d projection (897k)
    "rotin_g64_wd01": ("v1-char", {"n_groups": 64, "ffn_hidden": 128, "rotation": "input"},
                       {"weight_decay": 0.1}),
    # the preset's proportions at 1.5x its width (d_model 192, 120 groups of 4, FFN 192: 1.98M,
    # 2.2x the parameters) and its bolted control: does the contract's price shrink with size
    # at char level, as it does on cl100k (tiny 0.031, v2 on the GPU level)?
    "x2_g120_wd01": ("v1-char", X2_G120, {"weight_decay": 0.1}),
    "bolted_x2_g120_wd01": ("control-bolted-char", X2_G120, {"weight_decay": 0.1}),
    # is 0.1 near the best weight decay for it? (the preset at 0.2)
    "wide_g80_wd02": ("v1-char", WIDE_G80, {"weight_decay": 0.2}),
    # groups of 2 (a pair's Z_1 fixes both phases up to a swap) at the same parameter count, and
    # a diagnostic outside the contract: groups of 1 read every oscillator's phase (R is 1)
    "wide_g128n2": ("v1-char", {"n_groups": 128, "osc_per_group": 2, "ffn_hidden": 128}, {}),
    "diag_g256n1": ("v1-char", {"n_groups": 256, "osc_per_group": 1, "ffn_hidden": 256}, {}),
    # the experiments whose options were not kept are in research/archive/2026-11-RESULTS-0.1.md
}


def run_one(name: str, seed: int, args) -> dict:
    from mlx_kssm import build_model, save_model
    from mlx_kssm.train import TrainConfig, train

    preset, model_over, train_over = VARIANTS[name]
    run_dir = Path(args.out_dir) / name / f"seed{seed}"
    hist = read_history(run_dir)
    ends = [e for e in hist if e.get("event") == "end" and e.get("status") == "completed"]
    t0 = time.perf_counter()
    if not ends:
        init_dir = Path(args.out_dir) / name / f"init{seed}"
        if not (init_dir / "config.json").exists():
            from mlx_kssm.data import TokenDataset
            vocab = TokenDataset(args.data, "train").vocab_size
            model = build_model(preset, seed=seed, vocab_size=vocab, **model_over)
            save_model(init_dir, model)
        resume = (run_dir / "checkpoints").exists()
        config = TrainConfig(
            model=None if resume else str(init_dir), data=args.data, output_dir=str(run_dir),
            max_steps=args.steps, batch_size=args.batch, seq_len=args.seq,
            learning_rate=train_over.get("learning_rate", args.lr),
            warmup_steps=train_over.get("warmup_steps", args.warmup),
            weight_decay=train_over.get("weight_decay", RECIPE_WEIGHT_DECAY),
            steps_per_report=50, steps_per_eval=args.steps // 2, val_batches=args.val_batches,
            save_every=500, keep_last=1, seed=seed, resume=resume,
            sample_prompts=["ROMEO:"], sample_tokens=60)
        result = train(config, echo=lambda s: None)
        if result.status != "completed":
            raise RuntimeError(f"{name} seed {seed}: {result.status} {result.message}")
        hist = read_history(run_dir)
    evals = [e for e in hist if e.get("event") == "eval"]
    trains = [e for e in hist if e.get("event") == "train"]
    start = next(e for e in hist if e.get("event") == "start")
    final = evals[-1]
    tps = [e["tokens_per_sec"] for e in trains[1:]]
    return {"variant": name, "seed": seed, "val_loss": final["val_loss"],
            "val_loss_mid": evals[0]["val_loss"] if len(evals) > 1 else None,
            "val_R": final.get("val_R"), "val_R_layers": final.get("val_R_layers"),
            "n_parameters": start["n_parameters"],
            "tokens_per_sec": statistics.median(tps) if tps else None,
            "sample": (final.get("samples") or [{}])[0].get("text"),
            "wall_s": time.perf_counter() - t0}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", default="data/prepared/chars")
    ap.add_argument("--variants", required=True)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--lr", type=float, default=None, help="default: each preset's own")
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--val-batches", type=int, default=100)
    ap.add_argument("--out-dir", default="research/out/ablate")
    ap.add_argument("--json", default=None, help="also write the summary JSON here")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    for name in args.variants.split(","):
        if name not in VARIANTS:
            sys.exit(f"Error: unknown variant {name!r}; known: {', '.join(VARIANTS)}")
        for seed in seeds:
            row = run_one(name, seed, args)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
            with open(Path(args.out_dir) / "rows.jsonl", "a") as f:
                f.write(json.dumps({**row, "machine": machine()}) + "\n")
    summary = summarize(rows, args)
    for line in table(summary):
        print(line, file=sys.stderr)
    emit(summary, args.json)


def summarize(rows: list, args) -> dict:
    """The rows and, per variant, val loss mean and sample std over seeds (JSON-able)."""
    variants = {}
    for name in dict.fromkeys(r["variant"] for r in rows):
        rs = [r for r in rows if r["variant"] == name]
        vals = [r["val_loss"] for r in rs]
        preset, model_over, train_over = VARIANTS[name]
        variants[name] = {
            "preset": preset, "model_overrides": model_over, "train_overrides": train_over,
            "n_parameters": rs[0]["n_parameters"], "seeds": [r["seed"] for r in rs],
            "val_loss": vals, "mean": statistics.mean(vals),
            "std": statistics.stdev(vals) if len(vals) > 1 else None,
            "val_R": statistics.mean(r["val_R"] for r in rs) if rs[0]["val_R"] is not None else None,
            "tokens_per_sec_median": statistics.median(r["tokens_per_sec"] for r in rs)}
    return {"part": "ablation", "command": "python research/bench/ablate.py " + " ".join(sys.argv[1:]),
            "machine": machine(),
            "budget": {"data": args.data, "steps": args.steps, "batch": args.batch, "seq": args.seq,
                       "warmup": args.warmup, "val_batches": args.val_batches,
                       "learning_rate": args.lr or "each preset's own"},
            "variants": variants, "rows": rows}


def table(summary: dict) -> list:
    lines = ["| variant | params | val loss mean ± std | seeds | tok/s |", "|---|---:|---|---|---:|"]
    for name, v in summary["variants"].items():
        sd = "" if v["std"] is None else f" ± {v['std']:.4f}"
        lines.append(f"| {name} | {v['n_parameters']:,} | {v['mean']:.4f}{sd} | "
                     f"{' '.join(f'{x:.4f}' for x in v['val_loss'])} | "
                     f"{v['tokens_per_sec_median']:,.0f} |")
    return lines


if __name__ == "__main__":
    main()
