"""Run the benchmarks (all or some parts), write one JSON per part and a draft report.

    python research/bench/run.py [--quick] [--only quality,torch,generation,data,kernel]
                                [--out-dir research/out] [--results research/out/RESULTS.md]

The draft (--results, in the git-ignored research/out/ by default) is for reading a fresh run;
the committed record, research/RESULTS.md, is rendered by research/render.py from the summaries
in research/results/ (research/README.md: how a finished experiment gets there).

Every part runs as its own child process (fresh MLX state, its own time limit) and writes
OUT_DIR/<part>.json; RESULTS.md is then rebuilt from every <part>.json found in OUT_DIR, so
parts can be rerun one at a time. --quick: tiny-scale only and fewer steps (< 15 min on
2 CPU cores); without it, the full run adds v2-scale quality and speed figures.

Parts:
  quality     same data, tokens, seed and trainer for K-SSM, transformer, upstream-v3,
              control-bolted (research/bench/quality.py)
  torch       train step tokens/s, MLX vs a PyTorch twin of the same model and weights
              (research/bench/torch_kssm.py; skipped if torch is not installed)
  generation  stateful decoding vs recompute-the-context (research/bench/generation.py)
  data        research/bench/data.py (data pipeline)
  kernel      research/bench/kernel.py (scan; CPU reference figures without a GPU)
  ablation    the quality path on char-level Shakespeare, one change per row (seed 0, from
              research/out/ablate/rows.jsonl) and the 0.1 design over 3 seeds (research/bench/
              ablate.py; reuses finished runs in research/out/table), and the three char
              presets at twice the steps (research/out/ablate_4k)
  screening   single changes tried first, summarized from their rows (research/bench/
              ablation_rows.py; measured by the code at 45f9fa4, see ablate.py)
  study       the final comparison: mlx-kssm study of v1-char and its controls, 3 seeds
              (research/bench/study.py; reuses finished runs)
  bpe         tiny vs transformer-tiny on compacted cl100k Shakespeare, >= 1M tokens each
  speed       K-SSM vs matched transformer training-step time (research/bench/speed.py)
  v3          v3's bistable core: regime use and gradient health (research/bench/v3_health.py)

RESULTS.md also carries the GPU section, rendered by research/bench/gpu_report.py from the files a
GPU session committed to research/results/gpu/ (this machine has no GPU to redo them).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
import gpu_report  # noqa: E402
PY = sys.executable
PARTS = ("quality", "torch", "generation", "data", "kernel", "ablation", "screening", "study",
         "bpe", "speed", "v3")
CHARS = "data/prepared/chars"  # bytes, --val-fraction 0.1: the quality issue's recipe
# the path from 0.1's v1-char to the preset, one change per row, as measured in
# research/out/ablate/rows.jsonl and (d1: 0.1's design) research/out/table/rows.jsonl
PATH_ROWS = ("d1,rotfix,rg,rg_algall,d2_h1,d2_g32n4h1,c4_l4,wide_g64,wide_g80,wide_g80_wd01,"
             "bolted_c4_l4,bolted_wide_g64,bolted_wide_g80_wd01,tf4_ffn512_lr1")
TABLE_ROWS = "research/out/table/rows.jsonl"
# The path's 4-layer rows over 3 seeds are the char studies' runs (a study trains and evaluates
# exactly as ablate.py does): v1-char with 32 groups and FFN 512 (studied at commit 07bb294,
# its folder kept as study_char_g32), with 64 groups and FFN 256 (at fb5bcac, kept as
# study_char_g64), and the current preset, 80 groups at weight decay 0.1 (study_char).
STUDY_ROWS_G32 = ["research/out/study_char_g32/study.json:v1-char=c4_l4",
                  "research/out/study_char_g32/study.json:control-bolted-char=bolted_c4_l4"]
STUDY_ROWS_G64 = ["research/out/study_char_g64/study.json:v1-char=wide_g64",
                  "research/out/study_char_g64/study.json:control-bolted-char=bolted_wide_g64"]
STUDY_ROWS_NOW = ["research/out/study_char/study.json:v1-char=wide_g80_wd01",
                  "research/out/study_char/study.json:control-bolted-char=bolted_wide_g80_wd01"]
SCREENING = "grp,gate,cayley,softsign,fnorm,lr3,rg_alg,rg_kinit,rg_loglam,rg_lr3,rg_h2"
SIDE_ROWS = ("d2_g16n8h1,d2_g64n2h1,d2_g16n8h2,d2_g32n4h2,d2_h2_l4,tf4_ffn512_lr2,"
             "wide_g64_lr3,wide_g64_lr14,wide_g64_wd01,bolted_wide_g64_wd01,tf_char_wd01,"
             "wide_g80_wd02")
# where the bolted control's lead lives: wide_g64 (v1-char when these ran), readouts that see
# more of the phases (one outside the contract), rest points, one frequency per group and a
# per-group drive (branch experiment-group-drive), and the controls (wide_g64's, at its own
# size and at wide_g64's, and the group drive's); then, at weight decay 0.1, the group drive and
# the readout of the state before each token (branch experiment-gdrive2) beside the preset
# (wide_g80_wd01) and its control, with two narrower reads of that earlier state and the
# isochron phase (branch experiment-isochron)
LEAD_ROWS = ("wide_g64,wide_g128n2,diag_g256n1,rest,rest05,omega_group,gdrive_g144,"
             "gdrive_g128n2,bolted_wide_g64,bolted_wide_g64_ffn95,bolted_gdrive_g144,"
             "wide_g80_wd01,gdrive_g144_wd01,gdrive_g144_r2_wd01,gdrive_g176n3_wd01,"
             "prev_wd01,prev_g67_wd01,prevr_g75_wd01,prevu_g75_wd01,iso_wd01,iso0_wd01,"
             "bolted_wide_g80_wd01")
ROWS = "research/out/ablate/rows.jsonl"
# compacted cl100k, tiny scale: the preset, its matched transformer, the preset with v1-char's
# proportions (a bank 2.5x as wide, the MLP narrowed to pay for it), with half the bank, and
# both tiny presets at weight decay 0.1 (their default since)
BPE_ROWS = "bpe_tiny,bpe_tf_tiny,bpe_tiny_g40,bpe_tiny_g8,bpe_tiny_wd01,bpe_tf_tiny_wd01"
# the two at weight decay 0.1 over 5 seeds, the same at LR 5e-3 (the presets' since), and at
# 8e-3 (3 seeds; tiny 5)
BPE_DEFAULT_ROWS = "bpe_tiny_wd01,bpe_tf_tiny_wd01"
BPE_LR_ROWS = "bpe_tiny_wd01_lr5,bpe_tf_tiny_wd01_lr5"
BPE_LR8_ROWS = "bpe_tiny_wd01_lr8,bpe_tf_tiny_wd01_lr8"
STUDY_MODELS = "v1-char,transformer-char,control-bolted-char,upstream-v3-char,random-init"
RAW = "data/raw/shakespeare"
BYTES = "data/prepared/shakespeare-bytes"
COMPACT = "data/prepared/shakespeare-compact"
TINY4 = "tiny,transformer-tiny,upstream-v3-tiny,control-bolted-tiny"
V2_4 = "v2,transformer,upstream-v3,control-bolted"


def log(msg: str) -> None:
    print(f"[run {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sh(cmd: list, timeout: float) -> tuple[int, str, str, float]:
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        return p.returncode, p.stdout, p.stderr, time.perf_counter() - t0
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        return 124, out, err + f"\n(timed out after {timeout:.0f} s)", time.perf_counter() - t0


def last_json(text: str):
    """The JSON object a script printed (the whole stdout, or its last top-level object)."""
    text = text.strip()
    try:
        return json.loads(text)
    except ValueError:
        pass
    start = text.rfind("\n{")
    while start != -1:
        try:
            return json.loads(text[start + 1:])
        except ValueError:
            start = text.rfind("\n{", 0, start)
    return json.loads(text[text.index("{"):]) if "{" in text else None


def ensure_data(tokenizer: str, out: str, compact: bool, val_fraction: float | None = None) -> dict:
    """Fetch + prepare the Shakespeare corpus if missing; returns what was done and timings."""
    done = {"dir": out}
    if not (ROOT / RAW / "manifest.json").is_file():
        cmd = ["mlx-kssm", "data", "fetch", "--source", "shakespeare", "--out", RAW]
        rc, o, e, s = sh(cmd, 900)
        done["fetch"] = {"command": " ".join(cmd), "rc": rc, "seconds": s, "tail": (o + e)[-300:]}
        if rc:
            raise RuntimeError(f"data fetch failed: {e[-500:]}")
    if not (ROOT / out / "meta.json").is_file():
        cmd = ["mlx-kssm", "data", "prepare", "--source", RAW, "--out", out,
               "--tokenizer", tokenizer] + (["--compact"] if compact else []) + (
                   ["--val-fraction", str(val_fraction)] if val_fraction else [])
        rc, o, e, s = sh(cmd, 900)
        done["prepare"] = {"command": " ".join(cmd), "rc": rc, "seconds": s, "tail": (o + e)[-300:]}
        if rc:
            raise RuntimeError(f"data prepare failed: {e[-500:]}")
    return done


def plan(quick: bool) -> dict:
    """part -> list of (label, command, timeout_s)."""
    p: dict = {}
    if quick:
        p["quality"] = [("tiny-bytes", [PY, "research/bench/quality.py", "--data", BYTES,
                                        "--presets", TINY4, "--steps", "200", "--batch", "16",
                                        "--seq", "128", "--val-batches", "8",
                                        "--label", "quick-tiny-bytes"], 420)]
        p["torch"] = [("tiny", [PY, "research/bench/torch_kssm.py", "--presets", "tiny",
                                "--repeats", "3", "--warmup", "2",
                                "--variants", "eager,script,eager@1"], 300)]
        p["generation"] = [("tiny", [PY, "research/bench/generation.py", "--presets", "tiny",
                                     "--repeats", "3"], 240)]
        p["data"] = [("data", [PY, "research/bench/data.py"], 300)]
        p["kernel"] = [("kernel", [PY, "research/bench/kernel.py", "--repeats", "3"], 240)]
    else:
        p["quality"] = [
            ("tiny-bytes", [PY, "research/bench/quality.py", "--data", BYTES, "--presets", TINY4,
                            "--steps", "600", "--batch", "16", "--seq", "128",
                            "--val-batches", "16", "--label", "full-tiny-bytes"], 1500),
            ("v2-bytes", [PY, "research/bench/quality.py", "--data", BYTES, "--presets", V2_4,
                          "--steps", "60", "--batch", "8", "--seq", "256",
                          "--val-batches", "4", "--label", "full-v2-bytes"], 1500),
            ("tiny-cl100k", [PY, "research/bench/quality.py", "--data", COMPACT,
                             "--presets", TINY4, "--steps", "100", "--batch", "8",
                             "--seq", "128", "--val-batches", "8",
                             "--label", "full-tiny-cl100k-compact"], 1500),
        ]
        p["torch"] = [
            ("tiny+v2", [PY, "research/bench/torch_kssm.py", "--presets", "tiny,v2",
                         "--repeats", "4", "--warmup", "2",
                         "--variants", "eager,script,eager@1"], 1500),
            # where the gap comes from: the same tiny model with a byte vocabulary (no 21k softmax)
            ("tiny-vocab257", [PY, "research/bench/torch_kssm.py", "--presets", "tiny",
                               "--vocab", "257", "--repeats", "4", "--warmup", "2",
                               "--variants", "eager,eager@1"], 600),
            # torch.compile of the per-token step (its compilation is in the untimed warmup)
            ("tiny-compile", [PY, "research/bench/torch_kssm.py", "--presets", "tiny",
                              "--repeats", "3", "--warmup", "2",
                              "--variants", "eager,compile"], 900),
        ]
        p["generation"] = [
            ("tiny+v2", [PY, "research/bench/generation.py", "--presets", "tiny,v2",
                         "--repeats", "3"], 1200),
            ("transformer-reference", [PY, "research/bench/generation.py", "--presets",
                                       "transformer-tiny", "--no-recompute", "transformer-tiny",
                                       "--repeats", "3"], 600),
        ]
        p["data"] = [("data", [PY, "research/bench/data.py"], 900)]
        p["kernel"] = [("kernel", [PY, "research/bench/kernel.py", "--repeats", "5"], 600)]
    p.update(quality_issue_parts())  # the same in --quick: they reuse finished runs
    return p


def _study_args(specs: list) -> list:
    """ablation_rows.py's --study options for these STUDY_JSON:MODEL=VARIANT specs."""
    return [a for spec in specs for a in ("--study", spec)]


def quality_issue_parts() -> dict:
    """The quality issue's parts: every run is a normal run folder that is reused when it has
    finished, so a rerun only collects (hours of training when the folders are gone)."""
    ablate = [PY, "research/bench/ablate.py", "--data", CHARS, "--steps", "2000", "--batch", "12",
              "--seq", "64"]
    def exp_rows(variants: str, commit: str = "several") -> list:
        """Summarize rows that ablate.py appended to research/out/ablate_exp (experiments)."""
        return [PY, "research/bench/ablation_rows.py", "--rows", "research/out/ablate_exp/rows.jsonl",
                "--variants", variants, "--commit", commit]
    # compacted cl100k at tiny scale: 1,024,000 tokens a run, 30 val batches
    ablate_bpe = [PY, "research/bench/ablate.py", "--data", "data/prepared/bpe", "--steps", "500",
                  "--batch", "16", "--seq", "128", "--val-batches", "30",
                  "--out-dir", "research/out/ablate_bpe"]
    return {
        # "d1" first: it (re)fills research/out/table, which the path's first row reads
        "ablation": [("d1", ablate + ["--variants", "d1", "--seeds", "0,1,2",
                                      "--out-dir", "research/out/table"], 36000),
                     ("path", [PY, "research/bench/ablation_rows.py", "--rows", ROWS, "--rows",
                               TABLE_ROWS,
                               *_study_args(STUDY_ROWS_G32 + STUDY_ROWS_G64 + STUDY_ROWS_NOW),
                               "--variants", PATH_ROWS, "--commit", "several"], 60),
                     ("side", [PY, "research/bench/ablation_rows.py", "--rows", ROWS,
                               "--variants", SIDE_ROWS, "--commit", "several"], 60),
                     ("lead", [PY, "research/bench/ablation_rows.py", "--rows", ROWS,
                               *_study_args(STUDY_ROWS_G64 + STUDY_ROWS_NOW),
                               "--variants", LEAD_ROWS, "--commit", "several"], 60),
                     # screens on experiment branches whose options were not kept: their
                     # rows are summarized, not rerun. The query readout (commit fa2925d)
                     ("query", exp_rows("qry_g56_wd01", "fa2925d"), 60),
                     # more short memories in the bank (branch experiment-short-damping)
                     ("short", exp_rows("short_wd01", "ab9c154"), 60),
                     # seed-0 screens of the drive, the initial state, the frequencies, the
                     # damping and rotation, the coupling's range, depth and width (branches
                     # experiment-drive .. experiment-combo and experiment-k2, and main)
                     ("screens", exp_rows("lru_wd01,z0s_wd01,gold_wd01,zg_wd01,fixd_g106_wd01,"
                                          "rotin_g64_wd01,k2_wd01,l6_g53_wd01,d160_g60_wd01,"
                                          "d96_g116_wd01"), 60),
                     # two readouts over 3 and 5 seeds (a feature gate, the state before the
                     # token), with the preset's seeds 3-4 that pair with the gate's
                     ("readouts", exp_rows("wide_g80_wd01,fg_g67_wd01,before_wd01,"
                                           "bolted_before_wd01"), 60),
                     # the preset's proportions at 2.2x its parameters, and its control: does
                     # the contract's price shrink with size at char level?
                     ("scale", exp_rows("x2_g120_wd01,bolted_x2_g120_wd01", "9697ff6"), 60),
                     # the three presets' models at the recipe's steps and at twice them
                     # (both at the recipe's weight decay 0.01): does the control's lead (or
                     # the transformer's deficit) shrink with training?
                     ("budget2k", [PY, "research/bench/ablate.py", "--data", CHARS, "--steps",
                                   "2000", "--batch", "12", "--seq", "64", "--variants",
                                   "v1char,bolted,tf_char", "--seeds", "0,1,2",
                                   "--out-dir", "research/out/ablate_2k"], 36000),
                     ("budget", [PY, "research/bench/ablate.py", "--data", CHARS, "--steps",
                                 "4000", "--batch", "12", "--seq", "64", "--variants",
                                 "v1char,bolted,tf_char", "--seeds", "0,1,2",
                                 "--out-dir", "research/out/ablate_4k"], 36000),
                     # where in the window the control's lead lives: loss by position, on
                     # the budget jobs' runs (both must have finished)
                     ("positions2k", [PY, "research/bench/position_loss.py", "--data", CHARS,
                                      "--runs-dir", "research/out/ablate_2k", "--models",
                                      "v1char,bolted,tf_char", "--seeds", "0,1,2"], 3600),
                     ("positions4k", [PY, "research/bench/position_loss.py", "--data", CHARS,
                                      "--runs-dir", "research/out/ablate_4k", "--models",
                                      "v1char,bolted,tf_char", "--seeds", "0,1,2"], 3600)],
        "screening": [("45f9fa4", [PY, "research/bench/ablation_rows.py", "--rows", ROWS,
                                   "--variants", SCREENING], 60)],
        "study": [("char", [PY, "research/bench/study.py", "--data", CHARS, "--preset", "v1-char",
                            "--seeds", "3", "--steps", "2000", "--batch", "12", "--seq", "64",
                            "--models", STUDY_MODELS, "--out", "research/out/study_char"], 36000)],
        "bpe": [("tiny", ablate_bpe + ["--variants", BPE_ROWS, "--seeds", "0,1,2"], 36000),
                # the defaults' comparison was a tie on 3 seeds: 2 more seeds each (0-2 reused)
                ("default", ablate_bpe + ["--variants", BPE_DEFAULT_ROWS,
                                          "--seeds", "0,1,2,3,4"], 36000),
                # both at LR 5e-3 (their own was 3e-3), on the same 5 seeds
                ("lr", ablate_bpe + ["--variants", BPE_LR_ROWS, "--seeds", "0,1,2,3,4"], 36000),
                # and above it: both on 3 seeds (seed 0 first, as a screen); tiny, which did
                # not lose there, on all 5
                ("lr8", ablate_bpe + ["--variants", BPE_LR8_ROWS, "--seeds", "0,1,2"], 36000),
                ("lr8_tiny", ablate_bpe + ["--variants", "bpe_tiny_wd01_lr8",
                                           "--seeds", "0,1,2,3,4"], 36000),
                # tiny's bolted control at the presets' defaults: the contract's price here
                ("bolted", ablate_bpe + ["--variants", "bpe_bolted_tiny_wd01_lr5",
                                         "--seeds", "0,1,2"], 36000),
                # where in the window tiny's differences live (the runs above)
                ("positions", [PY, "research/bench/position_loss.py", "--data",
                               "data/prepared/bpe", "--runs-dir", "research/out/ablate_bpe",
                               "--models", "bpe_tiny_wd01_lr5,bpe_bolted_tiny_wd01_lr5,"
                               "bpe_tf_tiny_wd01_lr5", "--seeds", "0,1,2", "--batch", "16",
                               "--seq", "128", "--batches", "30"], 3600)],
        "speed": [("v1-char", [PY, "research/bench/speed.py", "--preset", "v1-char",
                               "--rounds", "15"], 1800)],
        "v3": [("v3", [PY, "research/bench/v3_health.py", "--data", "data/prepared/bpe",
                       "--steps", "300", "--batch", "8", "--seq", "128"], 7200)],
    }


def run_part(part: str, jobs: list, out_dir: Path, quick: bool) -> dict:
    result = {"part": part, "mode": "quick" if quick else "full", "runs": []}
    if part == "torch" and importlib.util.find_spec("torch") is None:
        result["skipped"] = "torch is not installed (pip install -e .[bench])"
        return result
    for label, cmd, timeout in jobs:
        script = ROOT / cmd[1]
        if not script.is_file():
            result["runs"].append({"label": label, "skipped": f"{cmd[1]} does not exist yet"})
            continue
        log(f"{part}/{label}: {' '.join(cmd[1:])}")
        rc, out, err, secs = sh(cmd, timeout)
        run = {"label": label, "command": "python " + " ".join(cmd[1:]), "rc": rc,
               "seconds": secs}
        try:
            run["result"] = last_json(out)
        except ValueError:
            run["result"] = None
        if rc or run["result"] is None:
            run["error_tail"] = (err or out)[-1500:]
        result["runs"].append(run)
        log(f"{part}/{label}: rc={rc} in {secs:.0f} s")
    return result


# ------------------------------------------------------------------ RESULTS.md


def fmt(x, nd=2):
    if x is None:
        return "—"
    if isinstance(x, float):
        if abs(x) >= 1000:
            return f"{x:,.0f}"
        return f"{x:.{nd}f}"
    return str(x)


def mmm(d, nd=2):
    """median [min–max]"""
    if not d:
        return "—"
    return f"{fmt(d['median'], nd)} [{fmt(d['min'], nd)}–{fmt(d['max'], nd)}]"


def md_quality(part: dict) -> list:
    L = ["## 1. Quality at equal budget", "",
         "Every model: the same prepared Shakespeare data, the same batches (BatchSampler, seed), "
         "the same number of tokens, the same trainer (`mlx_kssm.train.train`) and schedule, "
         "each preset's own learning rate (5e-3 at tiny scale, 3e-3 until the cl100k LR rows of "
         "section 8; 1e-3 at v2 scale). Byte-level "
         "runs (vocab 257) are there because on this 2-core CPU the softmax over the 21k-token "
         "compacted cl100k vocabulary costs most of a step (MLX's CPU elementwise ops are "
         "single-threaded); they make a few hundred steps of four models fit the budget. These "
         "are SHORT runs: they rank the designs early in training, they do not give their "
         "converged quality.", ""]
    for run in part["runs"]:
        r = run.get("result")
        if not r:
            L += [f"`{run.get('command', run['label'])}`: not available "
                  f"({run.get('skipped') or 'rc %s' % run.get('rc')})", ""]
            if run.get("error_tail"):
                L += ["```", run["error_tail"][-600:], "```", ""]
            continue
        b, d, base = r["budget"], r["data"], r["baselines"]
        tok = d["tokenizer"]
        tok_name = tok.get("name", tok.get("kind")) if isinstance(tok, dict) else tok
        L += [f"### {r.get('label') or run['label']}", "",
              f"Data: {d['dir']} (tokenizer {tok_name}, vocab {d['vocab_size']:,}; "
              f"{d['train_tokens']:,} train / {d['val_tokens']:,} val tokens). Budget: "
              f"{b['steps']} steps × batch {b['batch']} × seq {b['seq_len']} = "
              f"{b['tokens']:,} tokens, seed {b['seed']}, {b['trainer']}, LR {b['learning_rate']}; "
              f"val = the same {b['val_windows']} fixed windows for every model. "
              f"Wall time {run['seconds']:.0f} s.", "",
              f"Count baselines on the same val windows: unigram {base['unigram_loss']:.3f}, "
              f"bigram {base['bigram_loss']:.3f} nats/token (α={base['bigram_alpha']}, picked on "
              f"val: optimistic).", "",
              "| model | params | val loss | val PPL | Δ vs bigram | val R mean ± std | "
              "train tok/s median [min–max] | wall s |",
              "|---|---:|---:|---:|---:|---|---|---:|"]
        for m in r["models"]:
            if m.get("status") == "error":
                L.append(f"| {m['preset']} | error: {m['error'][:80]} | | | | | | |")
                continue
            vr = (f"{m['val_R']:.3f} ± {m['val_R_std']:.3f}" if m.get("val_R") is not None
                  else "— (no oscillators)")
            dv = (m["val_loss"] - base["bigram_loss"]) if m.get("val_loss") is not None else None
            L.append(f"| {m['preset']} | {m['n_parameters']:,} | {fmt(m['val_loss'], 3)} | "
                     f"{fmt(m['val_ppl'], 1)} | {'+' if dv and dv > 0 else ''}{fmt(dv, 3)} | {vr} | "
                     f"{mmm(m['train_tokens_per_sec'], 0)} | {fmt(m['wall_s'], 0)} |")
        L += ["", "Samples (prompt `ROMEO:`, temp 0.8, after training):", ""]
        for m in r["models"]:
            if m.get("sample", {}).get("text") is not None:
                L.append(f"- {m['preset']}: `{m['sample']['text'][:100]!r}`")
        L.append("")
    return L


def md_torch(part: dict) -> list:
    L = ["## 2. Train-step speed: MLX vs PyTorch (CPU), same model and weights", ""]
    if part.get("skipped"):
        return L + [f"Skipped: {part['skipped']}", ""]
    for run in part["runs"]:
        r = run.get("result")
        if not r:
            L += [f"`{run.get('command')}`: failed (rc {run.get('rc')})", "```",
                  (run.get("error_tail") or "")[-600:], "```", ""]
            continue
        L += [f"Command: `{run['command']}` — batch {r['batch']} × seq {r['seq_len']}, "
              f"vocab {r['vocab']:,} (the compacted cl100k vocab of the Shakespeare corpus), "
              f"torch {r['torch']} with torch.set_num_threads({r['torch_threads']}) unless the "
              f"variant says `@1` (1 thread); {r['mlx_threads']}.", "",
              f"Method: {r['method']}.", "",
              "MLX: the trainer's form (mx.compile'd value_and_grad + AdamW, clip 1.0). "
              "PyTorch `eager`: Python loop over time; `script`: the scan loop as TorchScript; "
              "same AdamW + clip.", "",
              "| preset | params | loss parity (max abs diff) | impl | tokens/s median [min–max] | "
              "MLX / this, per-round ratio median [min–max] |",
              "|---|---:|---:|---|---|---|"]
        for preset, row in r["presets"].items():
            for impl, tps in row["tokens_per_sec"].items():
                ratio = row["ratio_mlx_over_torch"].get(impl)
                L.append(f"| {preset} | {row['n_parameters']:,} | "
                         f"{row['parity']['max_abs_diff']:.1e} | {impl} | {mmm(tps, 0)} | "
                         f"{mmm(ratio) if ratio else '(MLX)'} |")
        L.append("")
    return L


def md_generation(part: dict) -> list:
    L = ["## 3. Generation: stateful decoding vs recomputing the context", ""]
    for run in part["runs"]:
        r = run.get("result")
        if not r:
            L += [f"`{run.get('command')}`: failed (rc {run.get('rc')})", ""]
            continue
        L += [f"Command: `{run['command']}` — batch 1, vocab {r['vocab']:,}, random seed-0 "
              f"weights, greedy; stateful = `generate_tokens` ({r['stateful_new_tokens']} new "
              f"tokens, prefill excluded); recompute = full forward over the last C tokens per "
              f"new token ({r['recompute_new_tokens']} tokens per context).", "",
              "Steady state = the same stateful path timed per token (1 / median); the first "
              "token after the prompt is shown apart (a one-off: it releases the prefill's "
              "buffers).", "",
              "| preset | context C | stateful tok/s (generate_tokens) | steady-state tok/s | "
              "first token after prefill, ms | recompute tok/s | stateful / recompute "
              "(per repeat) | prefill tok/s |", "|---|---:|---|---|---|---|---|---|"]
        for preset, pr in r["presets"].items():
            for C, row in pr["contexts"].items():
                L.append(f"| {preset} | {C} | {mmm(row['stateful_tokens_per_sec'], 1)} | "
                         f"{mmm(row.get('steady_state_tokens_per_sec'), 1)} | "
                         f"{mmm(row.get('first_token_after_prefill_ms'), 1)} | "
                         f"{mmm(row.get('recompute_tokens_per_sec'), 2)} | "
                         f"{mmm(row.get('ratio_stateful_over_recompute'), 1)} | "
                         f"{mmm(row['prefill_tokens_per_sec'], 0)} |")
            flat = [v for k, v in pr.items() if k.startswith("stateful_tps_ratio")]
            if flat:
                f0 = flat[0] if isinstance(flat[0], dict) else {"median": flat[0], "min": flat[0],
                                                                "max": flat[0]}
                L.append(f"| {preset} | flatness: stateful tok/s at the longest / shortest "
                         f"context (steady state), per repeat = {mmm(f0)} | | | | | | |")
        L.append("")
    return L


def md_json_part(part: dict, title: str, note: str) -> list:
    L = [title, "", note, ""]
    for run in part["runs"]:
        if run.get("skipped"):
            L += [f"Not available: {run['skipped']}", ""]
            continue
        L += [f"Command: `{run.get('command')}` (rc {run.get('rc')}, {run.get('seconds', 0):.0f} s)", ""]
        res = run.get("result")
        if res is None:
            L += ["```", (run.get("error_tail") or "")[-800:], "```", ""]
            continue
        res = {k: v for k, v in res.items() if k != "machine"}
        L += ["```json", json.dumps(res, indent=1)[:6000], "```", ""]
    return L


def _result(part: dict, label: str | None = None):
    for run in part.get("runs", []):
        if label is None or run.get("label") == label:
            return run.get("result"), run
    return None, {}


def _mean_sd(v: dict) -> str:
    return f"{v['mean']:.4f}" + ("" if v.get("std") is None else f" ± {v['std']:.4f}")


def _ablation_rows(variants: dict, notes: dict) -> list:
    rows = ["| row | what changes | params | val loss (mean ± std over the seeds run) | each seed | val R |",
            "|---|---|---:|---|---|---:|"]
    for name, v in variants.items():
        r = v.get("val_R")
        seeds = v.get("seeds")
        which = "" if seeds in (None, [0, 1, 2]) else f" (seed{'s' if len(seeds) > 1 else ''} " \
            f"{', '.join(map(str, seeds))})"
        rows.append(f"| `{name}` | {notes.get(name, '')} | {v['n_parameters']:,} | {_mean_sd(v)} | "
                    f"{' '.join(f'{x:.4f}' for x in v['val_loss'])}{which} | "
                    f"{'—' if r is None else f'{r:.3f}'} |")
    return rows


PATH_NOTES = {
    "d1": "v1-char as 0.1 shipped it: design 1, 2 layers, 8 groups x 16, 4 harmonics",
    "fixrot": "fixed rotation per oscillator (no input-dependent frequency)",
    "fixrot_gate": "+ output gate from the current layer input",
    "d2": "+ algebraic squashes (no exp): design 2",
    "d2_h2": "2 harmonics instead of 4",
    "d2_h1": "1 harmonic: Re Z_1, Im Z_1, R per group",
    "d2_g32n4h1": "32 groups of 4 (same 128 oscillators)",
    "v1char": "4 layers: the v1-char preset",
    "d2_g16n8h1": "16 groups of 8, 1 harmonic", "d2_g64n2h1": "64 groups of 2, 1 harmonic",
    "d2_g16n8h2": "16 groups of 8, 2 harmonics", "d2_g32n4h2": "32 groups of 4, 2 harmonics",
    "d2_h2_l4": "8 x 16, 2 harmonics, 4 layers",
    "tf4_ffn512_lr1": "transformer 4 x 128, FFN 512, LR 1e-3 (the issue's reference, 0.82M)",
    "tf4_ffn512_lr2": "the same transformer at LR 2e-3",
    "base": "v1-char as 0.1 shipped it: design 1, 2 layers, 8 groups x 16, 4 harmonics",
    "rg_algall": "+ algebraic squashes, gate included (no exp): design 2",
    "c4_l4": "4 layers (893k parameters): the v1-char preset until the bank was widened",
    "wide_g64": "a bank twice as wide (64 groups of 4), FFN 512 -> 256 (896k): the v1-char "
                "preset until 80 groups",
    "wide_g80": "80 groups of 4, FFN 256 -> 128 (897k)",
    "wide_g80_wd01": "+ weight decay 0.1 instead of 0.01: the v1-char preset (897k)",
    "wide_g128n2": "128 groups of 2 (a pair's Z_1 fixes both phases up to a swap), FFN 128 (896k)",
    "diag_g256n1": "outside the contract: groups of 1, so the readout is every oscillator's "
                   "unit phasor (R = 1), FFN 256 (1.29M)",
    "rest": "each oscillator relaxes toward a learned rest point rho (from 0) instead of 0",
    "gdrive_g144": "damping, rotation and drive per group, shared by its 4 oscillators, which "
                   "differ by rest points (start 0.5 e^{2 pi i j/4}): 144 groups (893k)",
    "rest05": "rest points as in `gdrive_g144` (start 0.5 e^{2 pi i j/4}), each oscillator "
              "still driven on its own",
    "omega_group": "a group's 4 oscillators start at one frequency (R is then invariant to "
                   "their common rotation)",
    "gdrive_g128n2": "the per-group drive at wide_g64's cost: 128 groups of 2 (256 "
                     "oscillators, rest points +-0.5), FFN 320 (896k)",
    "bolted_gdrive_g144": "gdrive_g144's bolted control: reads the raw state of its 576 "
                          "oscillators (1.27M)",
    "gdrive_g144_wd01": "gdrive_g144 at weight decay 0.1 (893k)",
    "gdrive_g144_r2_wd01": "its rest points 4x as far out (start 2 e^{2 pi i j/4}): Z_1 stays "
                           "near-linear in the driven state (R ~0.25 instead of ~0.7)",
    "gdrive_g176n3_wd01": "gdrive_g144_wd01 with groups of 3 (the fewest whose Z_1 reads the "
                          "driven state in every direction) and the MLP's share spent on "
                          "them: 176 groups, FFN 128 (876k)",
    "prev_wd01": "the preset (wide_g80_wd01), its readout also taking Z_1 and R of the state "
                 "before the current token: how far the token turned the phases depends on "
                 "the amplitudes it met (1.02M)",
    "prev_g67_wd01": "the same at the preset's size: 67 groups pay for the second readout "
                     "(892k)",
    "prevr_g75_wd01": "only R of the state before the token, not its phase: the phase step "
                      "between the two states stays hidden (75 groups, 894k)",
    "prevu_g75_wd01": "R of each group's 8 phasors, its 4 now and its 4 before the token: the "
                      "phase step reaches the readout only through that R (75 groups, 894k)",
    "iso_wd01": "the preset reading each oscillator's isochron phase theta - c ln a (a its "
                "amplitude, c learned, starting spread over [-1, 1] in each group), so a "
                "group's R depends on its amplitudes, as a Stuart-Landau oscillator's with "
                "shear c (899k)",
    "iso0_wd01": "the same with c starting at 0 (the preset's readout at step 0)",
    "bolted_c4_l4": "c4_l4's bolted control: the output reads the raw state (R bypassed)",
    "bolted_wide_g64": "wide_g64's bolted control (control-bolted-char until 80 groups, 1.06M)",
    "bolted_wide_g64_ffn95": "the same control at wide_g64's size: its MLP pays for the "
                             "raw-state readout (FFN 256 -> 95, 896k)",
    "wide_g64_lr3": "wide_g64 (v1-char then) at LR 3e-3 (its own: 2e-3)",
    "wide_g64_lr14": "wide_g64 at LR 1.4e-3",
    "wide_g64_wd01": "wide_g64 at weight decay 0.1 (its own: 0.01)",
    "bolted_wide_g64_wd01": "its bolted control at weight decay 0.1",
    "tf_char_wd01": "its matched transformer (transformer-char then: FFN 583, 896k, LR 1e-3) at "
                    "weight decay 0.1",
    "wide_g80_wd02": "wide_g80 at weight decay 0.2 (the v1-char preset: 0.1)",
    "bolted_wide_g80_wd01": "wide_g80_wd01's bolted control = control-bolted-char (80 groups, "
                            "FFN 128, weight decay 0.1, 1.10M)",
    "rg_alg": "rg, algebraic drive and damping (gate still silu)",
    "rg_h2": "rg, 2 harmonics", "grp": "damping, rotation, coupling per group",
    "gate": "+ gate (silu)", "rotfix": "fixed rotation per oscillator (no input-dependent frequency)", "cayley": "input rotation, Cayley form",
    "softsign": "drive bound softsign", "fnorm": "RMSNorm on the features",
    "lr3": "LR 3e-3", "rg": "+ output gate from the current layer input", "rg_kinit": "rg, coupling starts at K = 0.12",
    "rg_loglam": "rg, damping spread log-uniform in 1 - lambda", "rg_lr3": "rg, LR 3e-3",
}


def _rows_section(result: tuple, intro: str, command_note: str = "",
                  notes: dict = PATH_NOTES) -> list:
    """An intro, the rows of one ablation result, and the command that produced them."""
    res, run = result
    if not res:
        return []
    return ([intro, ""] + _ablation_rows(res["variants"], notes)
            + ["", f"Command: `{run['command']}`{command_note}", ""])


BUDGET_INTRO = (
    "Does the bolted control's lead (or the transformer's deficit) shrink with training? The "
    "three char presets' models, each at its preset's LR but all at the recipe's weight decay "
    "0.01 (the presets recommend 0.1), trained for the recipe's 2,000 steps and then, from "
    "scratch, for twice that: 4,000 steps x 12 x 64 (3.07M tokens, the cosine over 4,000 "
    "steps), everything else the recipe's, the same seeds. At 2,000 steps:")
BUDGET_4K_INTRO = "At 4,000 steps:"
BUDGET_NOTES = {"v1char": "the v1-char preset's model (80 groups of 4, FFN 128, LR 2e-3)",
                "bolted": "control-bolted-char, its bolted control (1.10M)",
                "tf_char": "transformer-char, its matched transformer (LR 1e-3)"}
BUDGET_PAIRS = [("v1char", "bolted", "v1-char minus control-bolted-char"),
                ("v1char", "tf_char", "v1-char minus transformer-char")]

LEAD_INTRO = (
    "Where the bolted control's lead lives (4 layers, ~0.9M unless the row says; measured "
    "while `wide_g64` was the preset, at weight decay 0.01). The control "
    "reads each oscillator's raw state, amplitude and phase. `diag_g256n1` reads each "
    "oscillator's phase and nothing else (groups of 1: outside the contract, since R is "
    "always 1): if the averaging in a group were what costs, it would come near the control. "
    "The `rest*` and `gdrive_*` rows let amplitude reach the phases: a rest point rho makes "
    "the phase of z tell how far z is from rho; with a drive shared by a group, the group's "
    "oscillators differ only by their rest points, so its R grows with the strength of its "
    "driven state (a strong common drive synchronizes them). `bolted_gdrive_g144` is "
    "`gdrive_g144`'s own control. The rows from `rest` on, but for wide_g64's control, were "
    "measured by code in main's history whose options were not kept: `rest` at commit "
    "934bf6c, `gdrive_g144` at 20ba43c (branch `experiment-group-drive`; its `rest_radius` 0 "
    "is 934bf6c's `rest_point`), `rest05`, `omega_group`, `gdrive_g128n2` and "
    "`bolted_gdrive_g144` at f85c198, the branch's head, which defines them. `wide_g64` and "
    "its control take their 3 seeds from its char study (commit fb5bcac). From "
    "`wide_g80_wd01` on, at weight decay 0.1: the preset and its control (their char study, "
    "section 7) beside the group drive, measured at 7b620ea, and the readout of the state "
    "before each token (`prev_*`), measured at 3327f57 (branch `experiment-gdrive2`: the "
    "options on the main of 2026-11-22, which defines them), `prevr_g75_wd01` at b1615d6 and "
    "`prevu_g75_wd01` at 1d349dd (the same branch), and the isochron phase (`iso*`) at 4b146e5 "
    "(branch `experiment-isochron`).")


QUERY_INTRO = (
    "A readout with a query, seed 0 (compare the preset's seed 0, `wide_g80_wd01` above). "
    "Each group's readout also takes the order parameter of the phasors p_j conj(q_j), where "
    "q_j is a unit phasor computed from the current layer input: how well the group's phase "
    "pattern matches the one the current token asks for, as attention's query reads its keys. "
    "It stays inside the contract (the only-path and cached-decoding tests cover it); R is "
    "still the plain |Z_1|. Measured at commit fa2925d (branch `experiment-query`, which "
    "defines it); the option was not kept.")
QUERY_NOTES = {"qry_g56_wd01": "the preset with the query readout, at its size: 56 groups of 4 "
               "pay for the query's projection (900k), weight decay 0.1"}


SHORT_INTRO = (
    "More short memories, seed 0 (compare the preset's seed 0, `wide_g80_wd01` above). The "
    "control's lead is in the last few characters (the position table below), so: does a bank "
    "whose initial damping starts at 0.2 instead of 0.6 (memories from ~1.25 tokens, half "
    "of the oscillators below the preset's fastest) read them better? Measured at commit "
    "ab9c154 (branch `experiment-short-damping`, which defines `damping_init=\"short\"`); the "
    "option was not kept.")
SHORT_NOTES = {"short_wd01": "the preset with its damping spread linear from 0.2 (not 0.6) to "
               "0.995, weight decay 0.1"}


SCREENS_INTRO = (
    "Ten more single changes, seed 0 (compare the preset's seed 0, `wide_g80_wd01` above: "
    "1.6887; the seed sd is ~0.007). Two test the hypothesis that a slow oscillator's phase is "
    "held by its initial state rather than moved by its input (LRU drive normalization, a small "
    "z0), one that the preset ties each group's frequency to its damping (`omega_init`: "
    "the slowest groups turn by ~pi a token, the middle ones not at all), two whether the "
    "damping and the rotation should be selective, one the coupling's range, three depth and width at the "
    "same size. Measured at commits 4cd8910 (`lru_wd01`, `z0s_wd01`, branch "
    "`experiment-drive`), 2836f8c (`gold_wd01`, `experiment-omega`), 9798acb "
    "(`fixd_g106_wd01`, `experiment-fixdamp`), 7862e8a (`zg_wd01`, `experiment-combo`; each "
    "branch holds the options of the one before), bc4994f (`k2_wd01`, `experiment-k2`) and "
    "main (`rotin_g64_wd01`, `l6_g53_wd01`, `d160_g60_wd01`, `d96_g116_wd01`: preset options "
    "only, defined since 00c178e and 90f2e2d); the options were not kept.")
SCREENS_NOTES = {
    "lru_wd01": "the drive c = sqrt(1 - lambda^2) b (the LRU's normalization) instead of "
                "(1 - lambda) b: 20x the input for the slowest oscillators",
    "z0s_wd01": "the learned initial state z0 starts at amplitude 0.05 instead of 1",
    "gold_wd01": "each group's frequency from a golden-ratio sequence, independent of its "
                 "damping (the 4 oscillators of a group still adjacent)",
    "zg_wd01": "z0s and gold together",
    "fixd_g106_wd01": "lambda a learned constant per oscillator, not computed from x_t (the "
                      "LRU's choice); the N x d projection saved buys 106 groups (895k)",
    "rotin_g64_wd01": "the rotation computed from x_t too (design 1's, with design 2's gate and "
                      "squashes); 64 groups pay for its projection (897k)",
    "k2_wd01": "coupling K = 2 sigmoid(.) in [0, 2] instead of [0, 1]: a group's deviations "
               "from its mean may flip sign (anti-phase), still inside the bound",
    "l6_g53_wd01": "6 thinner layers: 53 groups, FFN 64 (894k)",
    "d160_g60_wd01": "a wider residual stream: d_model 160, 60 groups, FFN 96 (892k)",
    "d96_g116_wd01": "a narrower one: d_model 96, 116 groups, FFN 128 (889k)",
}

READOUTS_INTRO = (
    "Two readouts over 3 and 5 seeds (compare the preset's seeds 0-2, `wide_g80_wd01` above: "
    "1.6887 1.6752 1.6841; its seeds 3 and 4 were trained for the feature gate's and are the "
    "`wide_g80_wd01` row here). `fg_g67_wd01` scales each order-parameter feature by 2 sigmoid(W x_t) "
    "from the current layer input before out_proj: which groups' order parameters this token "
    "reads (commit 82aca40, branch `experiment-fgate`). `before_wd01` reads the order "
    "parameters of z_{t-1}, the state before the current token, instead of z_t's: the bank "
    "then reports only context, and the current token reaches the output through the residual "
    "and the gate (commit 0b0a771, branch `experiment-before`, and its bolted control at the "
    "branch's head, 2be029d). Both stay inside the contract, as checked on their branches "
    "(tiny, 2 x 10 tokens): with the features zeroed, earlier tokens change nothing; forcing "
    "gives R = r exactly; token-by-token cached decoding matches the full forward to 3e-6. "
    "Neither was kept: the causality suite "
    "on these runs is in docs/model.md (\"What the contract costs\").")
SCALE_INTRO = (
    "The same recipe at 2.2x the preset's size (compare the preset's seeds, `wide_g80_wd01` "
    "and `bolted_wide_g80_wd01` above): d_model 192, 120 groups of 4, FFN 192, weight decay "
    "0.1, the preset's LR. On cl100k the control's lead is about half the char-level one at "
    "tiny scale and nil at v2 scale on the GPU (section 8, section 11): is it the size?")
SCALE_NOTES = {
    "x2_g120_wd01": "v1-char's proportions at 1.5x its width: d_model 192, 120 groups of 4, "
                    "FFN 192 (1.98M)",
    "bolted_x2_g120_wd01": "its bolted control (2.45M)",
}
SCALE_PAIRS = [("x2_g120_wd01", "bolted_x2_g120_wd01", "x2_g120_wd01 minus its bolted control")]
READOUTS_NOTES = {
    "wide_g80_wd01": "the preset (v1-char), seeds 3 and 4",
    "fg_g67_wd01": "the preset with the feature gate, 67 groups to keep its size (893k)",
    "before_wd01": "the preset reading z_{t-1} instead of z_t (897k)",
    "bolted_before_wd01": "its bolted control: the raw state before the token (1.10M)",
}


def positions_intro(unit: str) -> str:
    return ("Where in the window the differences live: the same runs' val loss (the same "
            f"windows) averaged per position t, t {unit} of context before the prediction, then "
            "over positions on a doubling scale; paired by seed, mean ± sd over the 3 seeds. The "
            "mean over all positions is each run's val loss above.")


POSITIONS_LABELS = {"bolted": "v1-char minus control-bolted-char",
                    "tf_char": "v1-char minus transformer-char"}
BPE_POSITIONS_LABELS = {"bpe_bolted_tiny_wd01_lr5": "tiny minus its bolted control",
                        "bpe_tf_tiny_wd01_lr5": "tiny minus transformer-tiny"}


def md_positions(part: dict, jobs=(("positions2k", "2,000"), ("positions4k", "4,000")),
                 labels: dict = POSITIONS_LABELS, unit: str = "characters") -> list:
    """The position-bucket table of the positions jobs (label, steps trained) that ran, one
    row per compared model and job; nothing unless one ran."""
    results = [(label, steps, *_result(part, label)) for label, steps in jobs]
    results = [r for r in results if r[2]]
    if not results:
        return []
    spans = results[0][2]["buckets"]
    head = " | ".join(f"t = {lo}" if hi == lo + 1 else f"t = {lo}–{hi - 1}" for lo, hi in spans)
    L = [positions_intro(unit), "", f"| difference | steps | {head} |",
         "|---|---:|" + "---:|" * len(spans)]
    for other, what in labels.items():
        for _, steps, res, _ in results:
            d = res["minus"].get(other)
            if d:
                cells = " | ".join(f"{m:+.3f} ± {sd:.3f}" if sd is not None else f"{m:+.3f}"
                                   for m, sd in zip(d["mean"], d["sd"]))
                L.append(f"| {what} | {steps} | {cells} |")
    L.append("")
    for _, _, _, run in results:
        L += [f"Command: `{run['command']}`", ""]
    return L


def md_ablation(part: dict, screening: dict | None) -> list:
    L = ["## 6. Quality: the ablation path (char-level Shakespeare)", "",
         "Recipe: bytes tokenizer, the `shakespeare` corpus prepared with `--val-fraction 0.1` "
         "(4 plays held out: 4.61M train / 444k val bytes), the project's trainer, 2,000 steps x "
         "batch 12 x seq 64 (1.54M tokens), AdamW, warmup 100, cosine to 0.1x, clip 1.0, each "
         "preset's own LR (K-SSM 2e-3, transformer 1e-3), weight decay 0.01 unless the row "
         "says; val loss over the same 100 fixed batches of the val split at the end.", ""]
    path_intro = ("The path from 0.1's `v1-char` to the 0.2 preset, one change per row from the "
                  "row above, each row over the seeds its `each seed` column lists (0, 1, 2 "
                  "unless it says otherwise; the same seeds, so the same batches, for every "
                  "row). The last four rows are the bolted controls of `c4_l4`, `wide_g64` and "
                  "`wide_g80_wd01` and the issue's 0.82M transformer (seed 0). "
                  "`wide_g80_wd01` is the `v1-char` preset, `wide_g64` and `c4_l4` the presets "
                  "before it: their rows and their controls' take their 3 seeds from the char "
                  "studies (section 7 now; the earlier ones at commits fb5bcac and 07bb294), "
                  "which train and evaluate exactly as ablate.py does. The rows "
                  "were measured by the code of their time (`rotfix`, `rg`, `rg_algall` by the "
                  "screening code at commit 45f9fa4, the others by main); `rows.jsonl` records "
                  "each run's machine.")
    rows_note = (" (summarizes research/out/ablate/rows.jsonl and research/out/table/rows.jsonl, which "
                 "`research/bench/ablate.py --variants NAME --seeds 0,1,2 --out-dir ...` appended, "
                 "and the three studies' study.json)")
    L += _rows_section(_result(part, "path"), path_intro, rows_note)
    L += _rows_section(_result(part, "side"), "Beside the path (seed 0 unless the row says): "
                       "banks and harmonics at 2 layers, the transformer's LR, and `wide_g64`'s "
                       "LR and weight decay, with its control and its matched transformer at "
                       "the same weight decay, and the preset at a higher weight decay.")
    L += _rows_section(_result(part, "lead"), LEAD_INTRO)
    L += _rows_section(_result(part, "query"), QUERY_INTRO, notes=QUERY_NOTES)
    L += _rows_section(_result(part, "short"), SHORT_INTRO, notes=SHORT_NOTES)
    L += _rows_section(_result(part, "screens"), SCREENS_INTRO, notes=SCREENS_NOTES)
    L += _rows_section(_result(part, "readouts"), READOUTS_INTRO, notes=READOUTS_NOTES)
    L += _job_section(part, "scale", "scale", SCALE_INTRO, SCALE_NOTES, SCALE_PAIRS)
    L += _job_section(part, "budget2k", "budget2k", BUDGET_INTRO, BUDGET_NOTES, BUDGET_PAIRS)
    L += _job_section(part, "budget", "budget", BUDGET_4K_INTRO, BUDGET_NOTES, BUDGET_PAIRS)
    L += md_positions(part)
    if screening:
        res, _ = screen = _result(screening)
        if res:
            L += _rows_section(screen, "Screening (seed 0): single changes on the 0.1 design, "
                               f"tried first, measured by the code at commit {res['measured_at']}"
                               " (branch `ablation-snapshot`: the options that lost were removed "
                               "afterwards). Compare with `base` above; the `rg_*` rows change "
                               "one thing from `rg`.")
    return L


def md_study(part: dict) -> list:
    res, run = _result(part)
    if not res:
        return []
    L = ["## 7. Quality: the final comparison (`mlx-kssm study`)", "",
         f"Command: `{run['command']}` ({res['seconds']:.0f} s this invocation; "
         f"finished runs are reused). Study folder `{res['study_dir']}` (study.md, study.json).", ""]
    md = Path(res["study_dir"]) / "study.md"
    if md.is_file():
        text = md.read_text().split("\n", 1)[1]  # its own title goes
        L += [line.replace("## ", "### ", 1) if line.startswith("## ") else line
              for line in text.splitlines()]
    return L + [""]


def _paired_lines(variants: dict, pairs: list) -> list:
    """One line per (row, base, what): row minus base on the seeds both ran, with the mean and
    sd of those differences where there are two or more (the seeds are named where one of the
    two ran others too)."""
    lines = []
    for row, base, what in pairs:
        k, t = variants.get(row), variants.get(base)
        if not (k and t):
            continue
        base_loss = dict(zip(t["seeds"], t["val_loss"]))
        both = [(s, loss - base_loss[s]) for s, loss in zip(k["seeds"], k["val_loss"])
                if s in base_loss]
        if not both:
            continue
        seeds, diffs = [s for s, _ in both], [d for _, d in both]
        same = seeds == k["seeds"] == t["seeds"]
        which = "" if same else f" (seed{'s' if len(seeds) > 1 else ''} " \
            f"{', '.join(map(str, seeds))})"
        spread = (f"; mean {statistics.mean(diffs):+.3f} ± {statistics.stdev(diffs):.3f} (sd)"
                  if len(diffs) > 1 else "")  # a one-seed screen has no spread to give
        lines += [f"Paired by seed (same batches), {what}{which}: "
                  f"{', '.join(f'{d:+.3f}' for d in diffs)}{spread}.", ""]
    return lines


def _job_variants(part: dict, *labels: str) -> dict:
    """The variants of these jobs of `part` (None: its first), merged; those that did not run
    add nothing."""
    merged = {}
    for label in labels:
        res, _ = _result(part, label)
        merged.update((res or {}).get("variants") or {})
    return merged


def _job_section(part: dict, label: str, base_label: str, intro: str, notes: dict,
                 pairs: list) -> list:
    """Job `label`'s rows and its paired lines against the rows of job `base_label` (the same
    label: within the job; nothing unless both ran)."""
    result = _result(part, label)
    if not (result[0] and _result(part, base_label)[0]):
        return []
    return (_rows_section(result, intro, notes=notes)
            + _paired_lines(_job_variants(part, base_label, label), pairs))


BPE_NOTES = {
    "bpe_tiny": "tiny (design 2, 16 groups of 4, 1 harmonic, FFN 256), weight decay 0.01",
    "bpe_tf_tiny": "transformer-tiny (parameter-matched), weight decay 0.01",
    "bpe_tiny_g40": "tiny with v1-char's proportions: 40 groups of 4, FFN 60",
    "bpe_tiny_g8": "tiny with half the bank: 8 groups of 4, FFN 321",
    "bpe_tiny_wd01": "tiny at weight decay 0.1 (the tiny presets' default since)",
    "bpe_tf_tiny_wd01": "transformer-tiny at weight decay 0.1",
    "bpe_tiny_wd01_lr5": "tiny at weight decay 0.1 and LR 5e-3",
    "bpe_tf_tiny_wd01_lr5": "transformer-tiny at weight decay 0.1 and LR 5e-3",
    "bpe_tiny_wd01_lr8": "tiny at weight decay 0.1 and LR 8e-3",
    "bpe_tf_tiny_wd01_lr8": "transformer-tiny at weight decay 0.1 and LR 8e-3",
    "bpe_tiny_d1": "tiny as 0.1 shipped it (design 1, 8 x 8, 3 harmonics)",
    "bpe_bolted_tiny_wd01_lr5": "control-bolted-tiny at weight decay 0.1 and LR 5e-3"}

BPE_BOLTED_INTRO = (
    "tiny's bolted control (its output reads the raw oscillator state: R bypassed) at the "
    "presets' defaults, LR 5e-3 and weight decay 0.1, on seeds 0-2: what the contract costs "
    "on cl100k. Paired with the LR 5e-3 rows above.")
BPE_BOLTED_PAIRS = [
    ("bpe_tiny_wd01_lr5", "bpe_bolted_tiny_wd01_lr5", "tiny minus its bolted control"),
    ("bpe_bolted_tiny_wd01_lr5", "bpe_tf_tiny_wd01_lr5",
     "the bolted control minus transformer-tiny")]


def md_bpe(part: dict) -> list:
    notes = BPE_NOTES
    result = _result(part)
    rows = _rows_section(result, "cl100k_base compacted to the 21,075 ids the corpus "
                         "uses; 500 steps x 16 x 128 = 1,024,000 tokens each, LR 3e-3 (the tiny "
                         "presets' own until the LR 5e-3 rows below), val over 30 fixed batches, "
                         "weight decay 0.01 unless the row says (the tiny presets' default was "
                         "0.01 until the last two rows, 0.1 since).", notes=notes)
    if not rows:
        return []
    rows += _paired_lines(result[0]["variants"], [
        ("bpe_tiny", "bpe_tf_tiny", "tiny minus transformer-tiny"),
        ("bpe_tiny_g40", "bpe_tiny", "40 groups minus 16 (tiny)"),
        ("bpe_tiny_g8", "bpe_tiny", "8 groups minus 16 (tiny)"),
        ("bpe_tiny_wd01", "bpe_tiny", "weight decay 0.1 minus 0.01 (tiny)"),
        ("bpe_tf_tiny_wd01", "bpe_tf_tiny", "weight decay 0.1 minus 0.01 (transformer-tiny)"),
        ("bpe_tiny_wd01", "bpe_tf_tiny_wd01",
         "tiny minus transformer-tiny, both at weight decay 0.1 (the presets' default)")])
    rows += _job_section(part, "default", "default", "Weight decay 0.1 (the presets' default) at "
                         "LR 3e-3, over 5 seeds: the 3-seed comparison above was a tie, so seeds "
                         "3 and 4 were added (seeds 0-2 are the runs above, reused).", notes, [
        ("bpe_tiny_wd01", "bpe_tf_tiny_wd01", "tiny minus transformer-tiny, 5 seeds")])
    rows += _job_section(part, "lr", "default", "Both tiny presets at LR 5e-3 instead of 3e-3 "
                         "(weight decay 0.1), on the same 5 seeds: the presets' defaults since.",
                         notes, [
        ("bpe_tiny_wd01_lr5", "bpe_tiny_wd01", "LR 5e-3 minus 3e-3 (tiny)"),
        ("bpe_tf_tiny_wd01_lr5", "bpe_tf_tiny_wd01", "LR 5e-3 minus 3e-3 (transformer-tiny)"),
        ("bpe_tiny_wd01_lr5", "bpe_tf_tiny_wd01_lr5",
         "tiny minus transformer-tiny, both at LR 5e-3 (the presets' default)")])
    rows += _job_section(part, "lr8", "lr", "Both at LR 8e-3, above the presets' 5e-3, on seeds "
                         "0-2 (seed 0 first, as a screen): is either one's best LR higher?",
                         notes, [
        ("bpe_tf_tiny_wd01_lr8", "bpe_tf_tiny_wd01_lr5", "LR 8e-3 minus 5e-3 (transformer-tiny)"),
        ("bpe_tiny_wd01_lr8", "bpe_tf_tiny_wd01_lr8",
         "tiny minus transformer-tiny, both at LR 8e-3")])
    rows += _job_section(part, "lr8_tiny", "lr", "tiny at LR 8e-3 on all 5 seeds "
                         "(transformer-tiny ran seeds 0-2 only, above).", notes, [
        ("bpe_tiny_wd01_lr8", "bpe_tiny_wd01_lr5", "LR 8e-3 minus 5e-3 (tiny)"),
        ("bpe_tiny_wd01_lr8", "bpe_tf_tiny_wd01_lr5",
         "tiny at LR 8e-3 minus transformer-tiny at 5e-3 (its best LR measured)")])
    rows += _job_section(part, "bolted", "lr", BPE_BOLTED_INTRO, notes, BPE_BOLTED_PAIRS)
    rows += md_positions(part, (("positions", "500"),), BPE_POSITIONS_LABELS, "tokens")
    return ["## 8. Quality: compacted cl100k Shakespeare, tiny scale", ""] + rows


def md_speed(part: dict) -> list:
    res, run = _result(part)
    if not res:
        return []
    L = ["## 9. Speed: K-SSM vs its matched transformer (training step, this CPU)", "",
         f"Command: `{run['command']}`. {res['presets']['kssm']} vs "
         f"{res['presets']['transformer']}, vocab {res['vocab']}, the trainer's compiled step "
         "(AdamW, clip 1.0); rounds alternate one step of each; the ratio is taken round by round.",
         "", "| seq len | batch | K-SSM step s | transformer step s | K-SSM / transformer |",
         "|---:|---:|---|---|---|"]
    for r in res["results"]:
        s = r["step_s"]
        L.append(f"| {r['seq_len']} | {r['batch']} | {mmm(s['kssm'], 3)} | "
                 f"{mmm(s['transformer'], 3)} | {mmm(r['kssm_over_transformer'], 3)} |")
    return L + [""]


def md_v3(part: dict) -> list:
    res, run = _result(part)
    if not res:
        return []
    L = ["## 10. v3: is the bistable regime used, is training healthy?", "",
         f"Command: `{run['command']}`. \"Boxed core\" is the preset (a..j squashed to +-0.45 "
         "around u = 1, Delta = 1, so u lies in [0.1, 10] by construction: docs/model.md §7); "
         "\"raw projections\" is the same model with core_box 0, as the preset was before the box.",
         "",
         "| run | val loss | raw u outside [0.1, 10], first -> last report | report windows "
         "with mean grad norm > clip | median grad norm | u at the end: inside the regime; "
         "near an end (u < 0.12 or u > 8.3); quantiles 1/10/50/90/99% | u per layer: median "
         "[10%–90%] |", "|---|---:|---|---:|---:|---|---|"]
    for r in res["runs"]:
        fu = r.get("final_u") or {}
        bound = (f"{r['u_at_bound'][0]:.0%} -> {r['u_at_bound'][-1]:.0%}"
                 if r.get("u_at_bound") else "—")
        q = fu.get("quantiles_1_10_50_90_99")
        ends = f"{fu['near_ends']:.0%}; " if "near_ends" in fu else ""
        layers = "; ".join(f"{m:.2f} [{lo:.2f}–{hi:.2f}]"
                           for m, lo, hi in fu.get("layers_median_10_90", [])) or "—"
        L.append(f"| {r['label']} | {fmt(r['val_loss'], 3)} | {bound} | "
                 f"{r['windows_clipped']:.0%} | {r['grad_norm_median']:.2f} | "
                 + (f"{fu['inside_regime']:.1%}; {ends}" + " / ".join(f"{x:.2f}" for x in q)
                    if q else "—") + f" | {layers} |")
    clipped = [r["label"] for r in res["runs"] if r["windows_clipped"] > 0.5]
    if clipped:
        L += ["", f"Sustained clipping (the mean gradient norm above the clip in more than half "
              f"the report windows): {', '.join(clipped)}. Those runs are not healthy."]
    at_ends = [r["label"] for r in res["runs"]
               if ((r.get("final_u") or {}).get("near_ends") or 0) > 0.5]
    if at_ends:
        L += ["", "Most positions near an end of the regime (u < 0.12 or u > 8.3): "
              f"{', '.join(at_ends)}. Near u = 10 (u > 8.3), K = 2 sigma(u) is within 5e-4 of 2 and barely moves with u: u is "
              "inside the regime there, but the coupling it gives is close to a constant."]
    return L + [""]


def _sd(interval: dict | None) -> str:
    if not interval:
        return "—"
    sd = interval.get("sd")
    return f"{interval['mean']:.3f}" + ("" if sd is None else f" ± {sd:.3f}")


def summary_quality_issue(parts: dict) -> list:
    """The quality issue's parts in one line each: the 3-seed study, cl100k tiny, speed, v3."""
    L = []
    res, _ = _result(parts.get("study", {}))
    summary = (res or {}).get("summary") or {}
    k, t = summary.get("v1-char"), summary.get("transformer-char")
    if k and t:
        c, u = summary.get("control-bolted-char"), summary.get("upstream-v3-char")
        verdicts = k["verdicts"].get("overall") or []
        L.append(f"- Char-level study ({len(k['seeds'])} seeds, 2,000 x 12 x 64): v1-char "
                 f"{_sd(k['val_loss'])} vs transformer-char {_sd(t['val_loss'])} nats/token "
                 "(mean ± sd over seeds)"
                 + (f"; control-bolted-char {_sd(c['val_loss'])}" if c else "")
                 + (f"; upstream-v3-char {_sd(u['val_loss'])}" if u else "")
                 + f"; v1-char causality verdicts per seed: {', '.join(verdicts) or '—'}.")
    v = _job_variants(parts.get("bpe", {}), None, "default", "lr")  # later jobs: more seeds
    for kssm, tf, recipe in [
            ("bpe_tiny_wd01_lr5", "bpe_tf_tiny_wd01_lr5",
             "LR 5e-3, weight decay 0.1 (the presets' defaults)"),
            ("bpe_tiny_wd01", "bpe_tf_tiny_wd01", "LR 3e-3, weight decay 0.1"),
            ("bpe_tiny", "bpe_tf_tiny", "LR 3e-3, weight decay 0.01")]:
        if kssm in v and tf in v:
            L.append(f"- Compacted cl100k, tiny, 1,024,000 tokens each, {recipe} "
                     f"(seeds {', '.join(map(str, v[kssm]['seeds']))}): tiny "
                     f"{_mean_sd(v[kssm])} vs transformer-tiny {_mean_sd(v[tf])} nats/token.")
    bolted = _job_variants(parts.get("bpe", {}), "bolted").get("bpe_bolted_tiny_wd01_lr5")
    if bolted:
        L.append(f"- Compacted cl100k, tiny's bolted control at the presets' defaults (seeds "
                 f"{', '.join(map(str, bolted['seeds']))}): {_mean_sd(bolted)} nats/token.")
    res, _ = _result(parts.get("speed", {}))
    for r in (res or {}).get("results", []):
        q = r["kssm_over_transformer"]
        L.append(f"- Step time ratio, {res['presets']['kssm']} / {res['presets']['transformer']} "
                 f"at seq {r['seq_len']}: {mmm(q, 3)} (median [min–max] over rounds; target "
                 "<= 1.25).")
    return L


def md_summary(parts: dict) -> list:
    """Conclusions computed from the numbers (so they can never disagree with the tables)."""
    L = ["## Summary (computed from the tables below)", ""]
    L += summary_quality_issue(parts)
    for run in parts.get("quality", {}).get("runs", []):
        r = run.get("result")
        if not r:
            continue
        ms = {m["preset"]: m for m in r["models"] if m.get("val_loss") is not None}
        big = r["baselines"]["bigram_loss"]
        k = next((ms[p] for p in ("tiny", "v2") if p in ms), None)
        t = next((ms[p] for p in ("transformer-tiny", "transformer") if p in ms), None)
        u = next((ms[p] for p in ("upstream-v3-tiny", "upstream-v3") if p in ms), None)
        c = next((ms[p] for p in ("control-bolted-tiny", "control-bolted") if p in ms), None)
        label = r.get("label") or run["label"]
        bits = []
        if k and t:
            d = k["val_loss"] - t["val_loss"]
            bits.append(f"K-SSM {k['val_loss']:.3f} vs transformer {t['val_loss']:.3f} nats/token "
                        f"({'K-SSM behind by' if d > 0 else 'K-SSM ahead by'} {abs(d):.3f})")
        if k:
            bits.append(f"K-SSM {'below' if k['val_loss'] < big else 'above'} the bigram "
                        f"({big:.3f}) by {abs(k['val_loss'] - big):.3f}")
        if u:
            bits.append(f"upstream-v3 (per-position) {u['val_loss']:.3f}, "
                        f"{'above' if u['val_loss'] > big else 'below'} the bigram by "
                        f"{abs(u['val_loss'] - big):.3f}")
        if c and k:
            bits.append(f"control-bolted {c['val_loss']:.3f}")
        if bits:
            L.append(f"- Quality, {label} ({r['budget']['tokens']:,} tokens each): "
                     + "; ".join(bits) + ".")
    for run in parts.get("torch", {}).get("runs", []):
        r = run.get("result")
        if not r:
            continue
        for preset, row in r["presets"].items():
            ratios = ", ".join(f"{impl} {v['median']:.2f} [{v['min']:.2f}–{v['max']:.2f}]"
                               for impl, v in row["ratio_mlx_over_torch"].items())
            L.append(f"- Train step {preset} (batch {r['batch']} × {r['seq_len']}, vocab "
                     f"{r['vocab']:,}): MLX tokens/s ÷ PyTorch tokens/s = {ratios} "
                     f"(> 1: MLX faster); loss parity {row['parity']['max_abs_diff']:.1e}.")
    for run in parts.get("generation", {}).get("runs", []):
        r = run.get("result")
        if not r:
            continue
        for preset, pr in r["presets"].items():
            rows = pr["contexts"]
            longest = list(rows)[-1]
            ratio = rows[longest].get("ratio_stateful_over_recompute")
            flat = next((v for k2, v in pr.items() if k2.startswith("stateful_tps_ratio")), None)
            text = (f"- Generation {preset}: stateful "
                    f"{rows[longest]['stateful_tokens_per_sec']['median']:.0f} tok/s at context "
                    f"{longest}")
            if ratio:
                text += (f", {ratio['median']:.0f}× [{ratio['min']:.0f}–{ratio['max']:.0f}] the "
                         f"recompute-the-context rate")
            if flat is not None:
                f0 = flat if isinstance(flat, dict) else {"median": flat, "min": flat, "max": flat}
                text += (f"; steady-state stateful rate at {longest} ÷ at {list(rows)[0]} = "
                         f"{mmm(f0)} (1.0 = flat)")
            L.append(text + ".")
    L += gpu_report.summary(ROOT / "research" / "results" / "gpu")
    L.append("")
    return L


# parts whose section a rebuild keeps from the previous RESULTS.md when their JSON is gone:
# (section heading, prefix of their summary lines)
CARRIED = {"quality": ("## 1. ", "- Quality, "), "torch": ("## 2. ", "- Train step "),
           "generation": ("## 3. ", "- Generation "), "data": ("## 4. ", None),
           "kernel": ("## 5. ", None)}


def carried_over(previous: str, parts: dict) -> dict:
    """What the previous RESULTS.md said for the CARRIED parts that have no JSON now:
    {"header": [...], "summary": [...], "sections": {part: [...]}, "versions": line}.
    Nothing is recomputed: the lines are kept as they were, under a note saying so."""
    lines = previous.splitlines()
    kept = {"header": [], "summary": [], "sections": {}, "versions": ""}
    for line in lines:
        if line.startswith("- Versions: "):
            kept["versions"] = line[len("- Versions: "):]
    for name, (heading, summary_prefix) in CARRIED.items():
        if name in parts:
            continue
        kept["header"] += [l for l in lines if l.startswith(f"- `{name}`: ")]
        if summary_prefix:
            kept["summary"] += [l for l in lines if l.startswith(summary_prefix)]
        start = next((i for i, l in enumerate(lines) if l.startswith(heading)), None)
        if start is not None:
            end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
                       len(lines))
            kept["sections"][name] = lines[start:end]
    return kept


CARRIED_MARK = " (carried over)"


def _mark(lines: list) -> list:
    return [l if l.endswith(CARRIED_MARK) else l + CARRIED_MARK for l in lines]


def _carried_section(kept: dict, name: str) -> list:
    section = kept["sections"].get(name)
    if not section:
        return []
    if any(l.startswith("*Carried over") for l in section):  # carried before: keep its note
        return section
    return [section[0], "", f"*Carried over unchanged from the previous RESULTS.md ({kept['versions'].rstrip('.')}): "
            "its JSON is not in research/out, so this part was not rerun for this version; its "
            "K-SSM rows are that version's design.*", *section[1:]]


def write_results(out_dir: Path, results_path: Path, invocation: str) -> None:
    parts = {}
    for name in PARTS:
        f = out_dir / f"{name}.json"
        if f.is_file():
            parts[name] = json.loads(f.read_text())
    previous = results_path.read_text() if results_path.is_file() else ""
    kept = carried_over(previous, parts)
    sys.path.insert(0, str(HERE))
    import mlx_kssm  # noqa: F401
    from _common import machine

    m = machine()
    versions = {"mlx_kssm": mlx_kssm.__version__, "mlx": m["mlx"], "python": m["python"]}
    try:
        import numpy
        versions["numpy"] = numpy.__version__
    except ImportError:
        pass
    if importlib.util.find_spec("torch"):
        import torch
        versions["torch"] = torch.__version__
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True).stdout.strip()
    except OSError:
        rev = "?"
    L = ["# mlx-kssm benchmarks", "",
         f"Regenerated {datetime.now(timezone.utc).isoformat(timespec='seconds')} by "
         f"`{invocation}` (parts rerun one at a time keep their own date below).", "",
         f"- Machine: {m['platform']} ({m['machine']}), {os.cpu_count()} CPU cores, "
         f"device {m['device']}, BLAS {m['blas']}; no GPU lent to this run.",
         "- Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + f"; git {rev} "
         f"(+ uncommitted work).",
         "- The CPU was shared with other jobs while these ran: absolute numbers are noisy. Each "
         "figure is a median with [min–max]; ratios are taken pair by pair in the same run.", ""]
    for name in PARTS:
        if name in parts:
            p = parts[name]
            L.append(f"- `{name}`: {p.get('mode')} run, finished {p.get('finished', '?')}, "
                     f"{p.get('seconds', 0):.0f} s, by `{p.get('invocation', '?')}`")
    L += _mark(kept["header"])
    L.append("")
    L += md_summary(parts)
    if kept["summary"]:
        L[-1:-1] = _mark(kept["summary"])
    L += md_quality(parts["quality"]) if "quality" in parts else _carried_section(kept, "quality")
    L += md_torch(parts["torch"]) if "torch" in parts else _carried_section(kept, "torch")
    L += (md_generation(parts["generation"]) if "generation" in parts
          else _carried_section(kept, "generation"))
    if "data" in parts:
        L += md_json_part(parts["data"], "## 4. Data pipeline",
                          "From research/bench/data.py (owned by the data issue), included verbatim.")
    else:
        L += _carried_section(kept, "data")
    if "kernel" not in parts:
        L += _carried_section(kept, "kernel")
    else:
        L += md_json_part(parts["kernel"], "## 5. Scan kernel (CPU reference figures)",
                          "From research/bench/kernel.py. No GPU in this run: these are the pure-MLX "
                          "reference scan on the CPU (and the Metal source's CPU emulation as an "
                          "agreement check, not a speed figure); no GPU figures.")
    if "ablation" in parts:
        L += md_ablation(parts["ablation"], parts.get("screening"))
    if "study" in parts:
        L += md_study(parts["study"])
    if "bpe" in parts:
        L += md_bpe(parts["bpe"])
    if "speed" in parts:
        L += md_speed(parts["speed"])
    if "v3" in parts:
        L += md_v3(parts["v3"])
    L += gpu_report.markdown(ROOT / "research" / "results" / "gpu")  # committed: no GPU here to redo it
    L += ["## How to read these numbers", "",
          "- Quality runs are short (hundreds of steps at most, on 2 CPU cores). They say which "
          "designs learn from context early in training, not where each converges. The v2-scale "
          "runs (60 steps) and the cl100k runs (about 100k tokens for a 21k-token vocabulary: "
          "every model is still above the bigram) are the weakest evidence here.",
          "- The count bigram is the ceiling of any model that sees only the current token (and "
          "its position): a model below it is using context. upstream-v3 (the earlier design) is "
          "built that way and stays at or above it.",
          "- control-bolted reads the raw oscillator state (amplitudes and phases), K-SSM only "
          "the phases' order parameters; a lower loss for the control is the price of the "
          "'R is the only path' contract, and the control exists to fail the causality suite, "
          "not to be a worse language model.",
          "- Quality-table tokens/s come from runs one after another on a shared CPU: compare them "
          "loosely. The speed ratios in sections 2 and 3 are taken pair by pair, round by round.",
          ""]
    notes = out_dir / "NOTES.md"
    if notes.is_file():
        L += ["## Reading the numbers", "", notes.read_text().strip(), ""]
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.write_text("\n".join(L) + "\n")
    log(f"wrote {results_path}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default=",".join(PARTS))
    ap.add_argument("--out-dir", default="research/out")
    ap.add_argument("--results", default="research/out/RESULTS.md")
    ap.add_argument("--report-only", action="store_true",
                    help="rebuild RESULTS.md from the JSON already in --out-dir")
    args = ap.parse_args()
    only = [p for p in args.only.split(",") if p]
    bad = sorted(set(only) - set(PARTS))
    if bad:
        ap.error(f"unknown part(s) {bad}; choose from {', '.join(PARTS)}")
    out_dir = (ROOT / args.out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    invocation = "python research/bench/run.py " + " ".join(sys.argv[1:])
    t_all = time.perf_counter()
    if not args.report_only:
        jobs = plan(args.quick)
        if "quality" in only:
            prep = [ensure_data("bytes", BYTES, False)]
            if not args.quick:
                prep.append(ensure_data("cl100k_base", COMPACT, True))
        if set(only) & {"ablation", "study", "speed"}:
            ensure_data("bytes", CHARS, False, val_fraction=0.1)
        if set(only) & {"bpe", "v3"}:
            ensure_data("cl100k_base", "data/prepared/bpe", True)
        for part in only:
            t0 = time.perf_counter()
            res = run_part(part, jobs[part], out_dir, args.quick)
            if part == "quality":
                res["data_preparation"] = prep
            res["seconds"] = time.perf_counter() - t0
            res["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            res["invocation"] = invocation
            (out_dir / f"{part}.json").write_text(json.dumps(res, indent=2) + "\n")
    write_results(out_dir, ROOT / args.results, invocation)
    log(f"total {time.perf_counter() - t_all:.0f} s")


if __name__ == "__main__":
    main()
