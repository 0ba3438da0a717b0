"""research/RESULTS.md's GPU section, rendered from the files a GPU session left in research/results/gpu/.

    python research/bench/gpu_report.py [--dir research/results/gpu] [--write research/RESULTS.md]

Without --write it prints the section. With it, the section replaces the one in RESULTS.md (or
goes before "## How to read these numbers"). run.py renders it too, so a full rebuild keeps it.
No GPU is needed: the measurements are the committed files, which this machine cannot redo.

What research/results/gpu/ holds (each file as the GPU machine wrote it):
  doctor.txt                   `mlx-kssm doctor` there
  parity_log.txt               research/bench/gpu.py's parity lines (fused CUDA vs reference)
  kernel_32x4.json, _8x16      research/bench/kernel.py, B8 x T512, fused vs op-graph scan
  torch_v2.json                research/bench/torch_kssm.py --device cuda (v2 train step)
  MODEL_sS.history.jsonl       `mlx-kssm train` histories of the quality runs (MODEL, seed S)
  solo_MODEL.out               150 steps of v2 / transformer alone on the GPU (tokens/s)
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
TITLE = "## 11. GPU: NVIDIA H100, MLX's CUDA build"
NEXT_TITLE = "## How to read these numbers"
QUALITY_MODELS = ("v2", "transformer", "control-bolted")
TRAIN_FLAGS = ("--data data/prepared/bpe --batch-size 64 --seq-len 256 --max-steps 1250 "
               "--steps-per-eval 125 --val-batches 20 --save-every 125 --seed S")


def _mean_sd(values: list, signed: bool = False) -> str:
    mean = f"{statistics.mean(values):+.3f}" if signed else f"{statistics.mean(values):.4f}"
    return f"{mean} ± {statistics.stdev(values):.{3 if signed else 4}f}"


def _mmm(stats: dict, nd: int = 0) -> str:
    """median [min–max], as the other RESULTS sections print them."""
    return f"{stats['median']:,.{nd}f} [{stats['min']:,.{nd}f}–{stats['max']:,.{nd}f}]"


def _ms(seconds: dict) -> str:
    return _mmm({k: 1e3 * seconds[k] for k in ("median", "min", "max")}, 3)


def _history(path: Path) -> dict:
    events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    start = next(e for e in events if e["event"] == "start")
    evals = [(e["step"], e["val_loss"]) for e in events if e["event"] == "eval"]
    best_step, best = min(evals, key=lambda sv: sv[1])
    return {"n_parameters": start["n_parameters"], "best": best, "best_step": best_step,
            "final": evals[-1][1], "final_step": evals[-1][0], "evals": evals}


def quality(folder: Path) -> dict:
    """model -> [per-seed history summaries, seeds 0, 1, 2 where present]."""
    out = {}
    for model in QUALITY_MODELS:
        runs = [_history(p) for s in range(3)
                if (p := folder / f"{model}_s{s}.history.jsonl").is_file()]
        if runs:
            out[model] = runs
    return out


def _solo_tokens_per_sec(path: Path) -> list:
    return [float(m) for m in re.findall(r"Tokens/sec ([0-9.]+)", path.read_text())]


def _parity_lines(folder: Path) -> list:
    p = folder / "parity_log.txt"
    return p.read_text().splitlines() if p.is_file() else []


def _kernel_rows(folder: Path) -> list:
    rows = []
    for name in ("kernel_32x4.json", "kernel_8x16.json"):
        p = folder / name
        if not p.is_file():
            continue
        d = json.loads(p.read_text())
        sh = d["shape"]
        ref, ker = d["reference"], d["kernel"]
        rows.append(f"| B{sh['batch']} × T{sh['seq']}, {sh['groups']} × {sh['oscillators']} "
                    f"| {_ms(ref['forward_s'])} | {_ms(ker['forward_s'])} "
                    f"| {d['kernel_vs_reference_speedup']['forward']:.1f}× "
                    f"| {_ms(ref['forward_backward_s'])} | {_ms(ker['forward_backward_s'])} "
                    f"| {d['kernel_vs_reference_speedup']['forward_backward']:.1f}× |")
    return rows


def _torch_lines(folder: Path) -> list:
    p = folder / "torch_v2.json"
    if not p.is_file():
        return []
    d = json.loads(p.read_text())
    row = d["presets"]["v2"]
    tps, ratio = row["tokens_per_sec"], row["ratio_mlx_over_torch"]
    # --out: where the GPU machine wrote it; the harness has moved since it ran
    command = re.sub(r" --out \S+", "", d["command"]).replace("scripts/bench/", "research/bench/")
    L = ["### A v2 training step: MLX (CUDA) vs the PyTorch twin on the same GPU", "",
         f"Command: `{command}`. Same seed-0 weights and batch (vocab {d['vocab']:,}, {row['n_parameters']:,} "
         f"parameters); losses agree to {row['parity']['max_abs_diff']:.1e}. torch "
         f"{d['torch']}. Median [min–max] over {tps['mlx']['runs']} rounds.", "",
         "| implementation | tokens/s | MLX / it |", "|---|---|---|",
         f"| MLX, fused CUDA scan | {_mmm(tps['mlx'])} | — |"]
    for v in ratio:
        L.append(f"| PyTorch, {v} scan | {_mmm(tps[v])} | {_mmm(ratio[v], 1)}× |")
    L += ["", "The PyTorch twin runs its scan as a Python (or TorchScript) loop over time, one "
          "small kernel launch per op per token; MLX runs the whole scan as one kernel. That is "
          "the likely cause of the gap (not profiled).", ""]
    return L


def _quality_lines(q: dict, folder: Path) -> list:
    if not q:
        return []
    k = q.get("v2")
    L = ["### v2 scale, compacted cl100k Shakespeare, 20.5M tokens per run", "",
         "Commands (one per model and seed S = 0, 1, 2): `mlx-kssm train --preset MODEL "
         f"{TRAIN_FLAGS}`: 1,250 steps × 64 × 256 = 20,480,000 tokens, the presets' LR (1e-3) "
         "and weight decay (0.01), warmup 100, cosine. The train split is 1.31M tokens, so "
         "each run sees it about 16 times: every model overfits, and the best validation "
         "loss comes early. Validation: 20 batches of 64 × 256 windows from the 75,729-token "
         "val split, every 125 steps (2M tokens). The runs of one seed (two or three models) "
         "ran at the same time on the one GPU, so their tokens/s are not comparable (see "
         "below for that).", "",
         "The parameter counts are at this vocabulary (21,075 compacted ids); the presets' "
         "listed sizes count the full cl100k vocabulary's embedding.", "",
         "| model | parameters | best val loss per seed (step) | best, mean ± sd "
         "| val loss at 20.5M tokens per seed | at 20.5M, mean ± sd |",
         "|---|---:|---|---|---|---|"]
    for model, runs in q.items():
        per_best = ", ".join(f"{r['best']:.4f} ({r['best_step']})" for r in runs)
        per_final = ", ".join(f"{r['final']:.4f}" for r in runs)
        L.append(f"| {model} | {runs[0]['n_parameters']:,} | {per_best} "
                 f"| {_mean_sd([r['best'] for r in runs])} | {per_final} "
                 f"| {_mean_sd([r['final'] for r in runs])} |")
    L.append("")
    for other in ("transformer", "control-bolted"):
        if k and other in q and len(q[other]) == len(k):
            diffs = [a["best"] - b["best"] for a, b in zip(k, q[other])]
            finals = [a["final"] - b["final"] for a, b in zip(k, q[other])]
            L.append(f"- v2 minus {other}, paired by seed: best "
                     + " ".join(f"{d:+.3f}" for d in diffs) + f" = {_mean_sd(diffs, True)}; at 20.5M "
                     "tokens " + " ".join(f"{d:+.3f}" for d in finals) + f" = {_mean_sd(finals, True)}.")
    L.append("")
    solo = {m: _solo_tokens_per_sec(p) for m in ("v2", "transformer")
            if (p := folder / f"solo_{m}.out").is_file()}
    if len(solo) == 2 and all(solo.values()):
        def mmm(v):
            return _mmm({"median": statistics.median(v), "min": min(v), "max": max(v)})
        ratio = statistics.median(solo["v2"]) / statistics.median(solo["transformer"])
        L += [f"Speed alone on the GPU (150 steps each, one after the other, batch 64 × 256; median "
              f"[min–max] of the report lines every 25 steps): v2 {mmm(solo['v2'])} tokens/s, "
              f"transformer {mmm(solo['transformer'])}; v2 / transformer "
              f"{ratio:.2f}× the throughput.", ""]
    return L


def summary(folder: Path) -> list:
    """Summary bullets for RESULTS.md's top, computed from the same files ([] if none)."""
    folder = Path(folder)
    L = []
    speedups = [json.loads((folder / n).read_text())["kernel_vs_reference_speedup"]
                ["forward_backward"] for n in ("kernel_32x4.json", "kernel_8x16.json")
                if (folder / n).is_file()]
    if speedups:
        L.append("- GPU (H100, section 11): fused CUDA scan forward+backward "
                 + " and ".join(f"{x:.1f}×" for x in speedups) + " the op-graph scan's speed "
                 "at B8 × T512 (banks 32 × 4 and 8 × 16; target >= 10×).")
    q = quality(folder)
    if "v2" in q and "transformer" in q:
        best = {m: [r["best"] for r in runs] for m, runs in q.items()}
        bits = [f"{m} {_mean_sd(v)}" for m, v in best.items()]
        gap = statistics.mean(best["v2"]) - statistics.mean(best["transformer"])
        L.append("- GPU, v2 scale, compacted cl100k, 20.5M tokens per run (3 seeds), best val "
                 "loss: " + ", ".join(bits) + f" (K-SSM {'behind' if gap > 0 else 'ahead of'} "
                 f"the transformer by {abs(gap):.3f}).")
    return L


def markdown(folder: Path) -> list:
    """The section's lines, or [] where the folder holds no GPU results."""
    folder = Path(folder)
    parity, kernel, q = _parity_lines(folder), _kernel_rows(folder), quality(folder)
    if not (parity or kernel or q):
        return []
    L = [TITLE, ""]
    doctor = folder / "doctor.txt"
    if doctor.is_file():
        d = doctor.read_text()
        L += ["Measured on one NVIDIA H100 80GB HBM3 (driver 580.159.04, CUDA 13), 16 CPU cores, "
              "Python 3.12, MLX 0.32.4 from the `mlx` and `mlx-cuda-13` wheels, on 2026-11-22. "
              "`mlx-kssm doctor` there:", "", "```", d.strip(), "```", "",
              "The matmul line's `matches NumPy: False` was seen and not followed up: the "
              "parity and training figures below do not depend on it, but a float32 matmul "
              "on that build is not NumPy's to the doctor's tolerance.", ""]
    if parity:
        L += ["### Parity: the fused CUDA kernel vs the reference, both on the GPU", "",
              "Command: `python research/bench/gpu.py` (its parity part). Each line compares the "
              "states, every gradient (free runs), the decode step and forced R; errors are "
              "max |kernel − reference| / max(1, max |reference|), tolerance 2e-4. The first "
              "seven shapes are the CPU-emulation tests' (tests/test_kernel_harness.py).", "",
              "```", *parity, "```", ""]
    if kernel:
        L += ["### Fused scan vs the op-graph scan (what runs without the kernel)", "",
              "Command: `python research/bench/kernel.py --batch 8 --seq 512 --groups G --osc N "
              "--repeats 3 --no-emulation`. Milliseconds, median [min–max] of 3 timed calls "
              "after a warm-up; the op-graph scan is kernels.cpu.scan_free under mx.compile. "
              "Target (issue): forward+backward ≥ 10× at B8 × T512 with the v2 bank (32 × 4).",
              "", "| shape, bank | op-graph fwd ms | fused fwd ms | speed-up "
              "| op-graph fwd+bwd ms | fused fwd+bwd ms | speed-up |",
              "|---|---|---|---|---|---|---|", *kernel, ""]
    L += _torch_lines(folder)
    L += _quality_lines(q, folder)
    return L


def write(results: Path, lines: list, summary_lines: list) -> None:
    """Put the section (and the summary's GPU bullets) into RESULTS.md, replacing old ones."""
    text = results.read_text()
    head, sep, rest = text.partition("\n## 1. ")
    if sep:  # the summary ends where section 1 begins: drop old GPU bullets, add the new ones
        kept = [line for line in head.rstrip("\n").split("\n") if not line.startswith("- GPU")]
        text = "\n".join(kept + summary_lines) + "\n" + sep + rest
    section = "\n".join(lines) + "\n"
    if TITLE in text:
        head, rest = text.split(TITLE, 1)
        tail = rest[rest.index(NEXT_TITLE):] if NEXT_TITLE in rest else ""
        text = head + section + tail
    elif NEXT_TITLE in text:
        head, tail = text.split(NEXT_TITLE, 1)
        text = head + section + NEXT_TITLE + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section
    results.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=str(ROOT / "research" / "results" / "gpu"))
    ap.add_argument("--write", help="RESULTS.md to update in place")
    args = ap.parse_args()
    lines = markdown(Path(args.dir))
    if not lines:
        raise SystemExit(f"Error: no GPU results in {args.dir}")
    if args.write:
        write(Path(args.write), lines, summary(Path(args.dir)))
    else:
        print("\n".join(lines))


if __name__ == "__main__":
    main()
