"""The harness's one entry point: run the benchmark parts (all or some), one JSON per part.

    python research/bench/run.py [--quick] [--only PART,PART] [--out-dir research/out]
    python research/bench/run.py --list

Every part is a list of jobs, each a script of research/bench/ run as its own child process
(fresh MLX state, its own time limit); a part writes OUT_DIR/<part>.json with each job's
command, exit status, seconds and the last JSON object it printed. Training jobs keep their run
folders under research/out/ and reuse finished ones, so a rerun only collects. --quick:
tiny-scale only and fewer steps; without it, the full run adds v2-scale figures.

The committed record is not written here: summarize a finished part into
research/results/NAME.json and run research/render.py (research/README.md).

Parts (PARTS below is the registry):
  quality     same data, tokens, seed and trainer for K-SSM, transformer, upstream-v3,
              control-bolted (quality.py)
  torch       train step tokens/s, MLX vs a PyTorch twin of the same model and weights
              (torch_kssm.py; skipped if torch is not installed)
  generation  stateful decoding vs recompute-the-context (generation.py)
  data        the data pipeline (data.py)
  kernel      the scan; CPU reference figures without a GPU (kernel.py)
  ablation    the path from 0.1's v1-char to the preset, the rows beside it, the preset at 2.2x
              its size, and the three char presets at 2,000 and 4,000 steps with loss by
              position (mlx-kssm study --variants research/variants/char-ablation.toml,
              ablation_rows.py, position_loss.py)
  study       the final comparison: mlx-kssm study of v1-char and its controls (study.py)
  bpe         tiny vs transformer-tiny on compacted cl100k Shakespeare (mlx-kssm study
              --variants research/variants/bpe-tiny.toml)
  speed       K-SSM vs matched transformer training-step time (speed.py)
  v3          v3's bistable core: regime use and gradient health (v3_health.py)
  gpu         on a GPU machine only: parity, kernel and PyTorch figures (gpu.py); the committed
              ones are research/results/gpu/, which gpu_report.py turns into section 11
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PY = sys.executable
PARTS = ("quality", "torch", "generation", "data", "kernel", "ablation", "study", "bpe", "speed",
         "v3", "gpu")
CHARS = "data/prepared/chars"  # bytes, --val-fraction 0.1: the quality issue's recipe
# the path from 0.1's v1-char to the preset, one change per row (research/variants/
# char-ablation.toml names each)
PATH_ROWS = ("d1,d2_h1,d2_g32n4h1,c4_l4,wide_g64,wide_g80,wide_g80_wd01,"
             "bolted_c4_l4,bolted_wide_g64,bolted_wide_g80_wd01,tf4_ffn512_lr1")
# The path's 4-layer rows over 3 seeds are also the char studies' runs: v1-char with 32 groups and FFN 512 (studied at commit 07bb294,
# its folder kept as study_char_g32), with 64 groups and FFN 256 (at fb5bcac, kept as
# study_char_g64), and the current preset, 80 groups at weight decay 0.1 (study_char).
STUDY_ROWS_G32 = ["research/out/study_char_g32/study.json:v1-char=c4_l4",
                  "research/out/study_char_g32/study.json:control-bolted-char=bolted_c4_l4"]
STUDY_ROWS_G64 = ["research/out/study_char_g64/study.json:v1-char=wide_g64",
                  "research/out/study_char_g64/study.json:control-bolted-char=bolted_wide_g64"]
STUDY_ROWS_NOW = ["research/out/study_char/study.json:v1-char=wide_g80_wd01",
                  "research/out/study_char/study.json:control-bolted-char=bolted_wide_g80_wd01"]
SIDE_ROWS = ("d2_g16n8h1,d2_g64n2h1,d2_g16n8h2,d2_g32n4h2,d2_h2_l4,tf4_ffn512_lr2,"
             "wide_g64_lr3,wide_g64_lr14,wide_g64_wd01,bolted_wide_g64_wd01,tf_char_wd01,"
             "wide_g80_wd02")
ROWS_STUDY = "research/out/ablate"  # the study that trains the path's and the side rows
ROWS_STUDY_JSON = ROWS_STUDY + "/study.json"
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
CHAR_VARIANTS = "research/variants/char-ablation.toml"
BPE_VARIANTS = "research/variants/bpe-tiny.toml"
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
               "--tokenizer", tokenizer, "--compact" if compact else "--no-compact"] + (
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


def study(data: str, preset: str, variants: str, steps: str, batch: str, seq: str) -> list:
    """`mlx-kssm study` of named variants (research/variants/*.toml) at one budget; the
    caller adds --models, --seeds and --out."""
    return ["mlx-kssm", "study", "--data", data, "--preset", preset, "--variants", variants,
            "--steps", steps, "--batch-size", batch, "--seq-len", seq, "--warmup-steps", "100",
            "--eval-every", str(int(steps) // 2), "--samples", "1"]


def _study_args(specs: list) -> list:
    """ablation_rows.py's --study options for these STUDY_JSON:MODEL=VARIANT specs."""
    return [a for spec in specs for a in ("--study", spec)]


def quality_issue_parts() -> dict:
    """The quality issue's parts: every run is a normal run folder that is reused when it has
    finished, so a rerun only collects (hours of training when the folders are gone)."""
    ablate = study(CHARS, "v1-char", CHAR_VARIANTS, "2000", "12", "64") + [
        "--val-batches", "100", "--eval-batches", "100"]
    def exp_rows(variants: str, commit: str = "several") -> list:
        """Summarize rows that ablate.py appended to research/out/ablate_exp (experiments)."""
        return [PY, "research/bench/ablation_rows.py", "--rows", "research/out/ablate_exp/rows.jsonl",
                "--variants", variants, "--commit", commit]
    # compacted cl100k at tiny scale: 1,024,000 tokens a run, 30 val batches
    ablate_bpe = study("data/prepared/bpe", "tiny", BPE_VARIANTS, "500", "16", "128") + [
        "--val-batches", "30", "--eval-batches", "30", "--out", "research/out/ablate_bpe"]
    return {
        # "d1" first: it (re)fills research/out/table, which the path's first row reads
        # every row of the path and beside it, 3 seeds, in one study (reused when finished)
        "ablation": [("rows", ablate + ["--models", f"{PATH_ROWS},{SIDE_ROWS}", "--seeds", "3",
                                        "--out", ROWS_STUDY], 36000 * 8),
                     ("path", [PY, "research/bench/ablation_rows.py", "--study", ROWS_STUDY_JSON,
                               *_study_args(STUDY_ROWS_G32 + STUDY_ROWS_G64 + STUDY_ROWS_NOW),
                               "--variants", PATH_ROWS, "--commit", "several"], 60),
                     ("side", [PY, "research/bench/ablation_rows.py", "--study", ROWS_STUDY_JSON,
                               "--variants", SIDE_ROWS, "--commit", "several"], 60),
                     # the preset's proportions at 2.2x its parameters, and its control: does
                     # the contract's price shrink with size at char level?
                     ("scale", exp_rows("x2_g120_wd01,bolted_x2_g120_wd01", "9697ff6"), 60),
                     # the three presets' models at the recipe's steps and at twice them
                     # (both at the recipe's weight decay 0.01): does the control's lead (or
                     # the transformer's deficit) shrink with training?
                     ("budget2k", ablate + ["--models", "v1char,bolted,tf_char", "--seeds", "3",
                                            "--out", "research/out/ablate_2k"], 36000),
                     ("budget", study(CHARS, "v1-char", CHAR_VARIANTS, "4000", "12", "64") + [
                         "--val-batches", "100", "--eval-batches", "100", "--models", "v1char,bolted,tf_char", "--seeds", "3",
                         "--out", "research/out/ablate_4k"], 36000),
                     # where in the window the control's lead lives: loss by position, on
                     # the budget jobs' runs (both must have finished)
                     ("positions2k", [PY, "research/bench/position_loss.py", "--data", CHARS,
                                      "--runs-dir", "research/out/ablate_2k/runs", "--models",
                                      "v1char,bolted,tf_char", "--seeds", "0,1,2"], 3600),
                     ("positions4k", [PY, "research/bench/position_loss.py", "--data", CHARS,
                                      "--runs-dir", "research/out/ablate_4k/runs", "--models",
                                      "v1char,bolted,tf_char", "--seeds", "0,1,2"], 3600)],
        "study": [("char", [PY, "research/bench/study.py", "--data", CHARS, "--preset", "v1-char",
                            "--seeds", "3", "--steps", "2000", "--batch", "12", "--seq", "64",
                            "--models", STUDY_MODELS, "--out", "research/out/study_char"], 36000)],
        "bpe": [("tiny", ablate_bpe + ["--models", BPE_ROWS, "--seeds", "3"], 36000),
                # the defaults' comparison was a tie on 3 seeds: 2 more seeds each (0-2 reused)
                ("default", ablate_bpe + ["--models", BPE_DEFAULT_ROWS,
                                          "--seeds", "5"], 36000),
                # both at LR 5e-3 (their own was 3e-3), on the same 5 seeds
                ("lr", ablate_bpe + ["--models", BPE_LR_ROWS, "--seeds", "5"], 36000),
                # and above it: both on 3 seeds (seed 0 first, as a screen); tiny, which did
                # not lose there, on all 5
                ("lr8", ablate_bpe + ["--models", BPE_LR8_ROWS, "--seeds", "3"], 36000),
                ("lr8_tiny", ablate_bpe + ["--models", "bpe_tiny_wd01_lr8",
                                           "--seeds", "5"], 36000),
                # tiny's bolted control at the presets' defaults: the contract's price here
                ("bolted", ablate_bpe + ["--models", "bpe_bolted_tiny_wd01_lr5",
                                         "--seeds", "3"], 36000),
                # where in the window tiny's differences live (the runs above)
                ("positions", [PY, "research/bench/position_loss.py", "--data",
                               "data/prepared/bpe", "--runs-dir",
                               "research/out/ablate_bpe/runs",
                               "--models", "bpe_tiny_wd01_lr5,bpe_bolted_tiny_wd01_lr5,"
                               "bpe_tf_tiny_wd01_lr5", "--seeds", "0,1,2", "--batch", "16",
                               "--seq", "128", "--batches", "30"], 3600)],
        "speed": [("v1-char", [PY, "research/bench/speed.py", "--preset", "v1-char",
                               "--rounds", "15"], 1800)],
        "v3": [("v3", [PY, "research/bench/v3_health.py", "--data", "data/prepared/bpe",
                       "--steps", "300", "--batch", "8", "--seq", "128"], 7200)],
        "gpu": [("gpu", [PY, "research/bench/gpu.py", "--torch"], 3600)],
    }


def shown(cmd: list) -> str:
    """The command as a reader would type it (python for this interpreter)."""
    return " ".join(["python", *cmd[1:]] if cmd[0] == PY else cmd)


def study_summary(cmd: list) -> dict:
    """What a `mlx-kssm study` job measured: the per-model summary of its study.json."""
    out = Path(cmd[cmd.index("--out") + 1])
    record = json.loads((ROOT / out / "study.json").read_text("utf-8"))
    return {"study": str(out), "summary": record["summary"]}


def run_part(part: str, jobs: list, out_dir: Path, quick: bool) -> dict:
    result = {"part": part, "mode": "quick" if quick else "full", "runs": []}
    if part == "torch" and importlib.util.find_spec("torch") is None:
        result["skipped"] = "torch is not installed (pip install -e .[bench])"
        return result
    for label, cmd, timeout in jobs:
        script = ROOT / cmd[1]
        if cmd[0] == PY and not script.is_file():
            result["runs"].append({"label": label, "skipped": f"{cmd[1]} does not exist yet"})
            continue
        log(f"{part}/{label}: {shown(cmd)}")
        rc, out, err, secs = sh(cmd, timeout)
        run = {"label": label, "command": shown(cmd), "rc": rc,
               "seconds": secs}
        try:
            run["result"] = study_summary(cmd) if cmd[:2] == ["mlx-kssm", "study"] else \
                last_json(out)
        except (OSError, ValueError):
            run["result"] = None
        if rc or run["result"] is None:
            run["error_tail"] = (err or out)[-1500:]
        result["runs"].append(run)
        log(f"{part}/{label}: rc={rc} in {secs:.0f} s")
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny scale, fewer steps")
    ap.add_argument("--only", default=",".join(p for p in PARTS if p != "gpu"),
                    help="comma-separated parts (default: all but gpu)")
    ap.add_argument("--out-dir", default="research/out", help="where each <part>.json goes")
    ap.add_argument("--list", action="store_true", help="print each part's jobs and exit")
    args = ap.parse_args()
    only = [p for p in args.only.split(",") if p]
    bad = sorted(set(only) - set(PARTS))
    if bad:
        ap.error(f"unknown part(s) {bad}; choose from {', '.join(PARTS)}")
    jobs = plan(args.quick)
    if args.list:
        for part in only:
            for label, cmd, _ in jobs[part]:
                print(f"{part}/{label}: {shown(cmd)}")
        return
    out_dir = (ROOT / args.out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    invocation = "python research/bench/run.py " + " ".join(sys.argv[1:])
    t_all = time.perf_counter()
    prep = prepare_inputs(only, args.quick)
    for part in only:
        t0 = time.perf_counter()
        res = run_part(part, jobs[part], out_dir, args.quick)
        if part == "quality":
            res["data_preparation"] = prep
        res["seconds"] = time.perf_counter() - t0
        res["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        res["invocation"] = invocation
        (out_dir / f"{part}.json").write_text(json.dumps(res, indent=2) + "\n")
    log(f"total {time.perf_counter() - t_all:.0f} s")


def prepare_inputs(only: list, quick: bool) -> list:
    """Prepare the corpora the chosen parts read (each once; a prepared folder is reused)."""
    prep = []
    if "quality" in only:
        prep.append(ensure_data("bytes", BYTES, False))
        if not quick:
            prep.append(ensure_data("cl100k_base", COMPACT, True))
    if set(only) & {"ablation", "study", "speed"}:
        ensure_data("bytes", CHARS, False, val_fraction=0.1)
    if set(only) & {"bpe", "v3"}:
        ensure_data("cl100k_base", "data/prepared/bpe", True)
    return prep


if __name__ == "__main__":
    main()
