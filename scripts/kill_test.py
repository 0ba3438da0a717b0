"""Random-kill test of the trainer: crash safety and exact resume (minutes: not in the suite).

A tiny run (tiny preset, byte-level synthetic data, seq 32, batch 4, a checkpoint every step,
2 kept, an evaluation and a best/ every 7 steps) is started with --resume and SIGKILLed at a
random moment (0 to --max-delay seconds after launch: during start-up, a step, a checkpoint,
best/, history or log writes), --kills times, each time started again exactly as before.
After every kill it checks that every complete checkpoint loads (model folder and full
checkpoint state) and best/ loads, and that history.jsonl has no torn line except possibly
the last (which the next start cuts). A start that exits with an error counts as a failed
resume (nothing is ever fixed by hand). Finally the run is finished and compared with an
uninterrupted run of the same command: history's train records (loss, CE, grad norm, LR),
the final evaluation, the final weights and optimizer state, bit for bit; and no temp file
may be left. Prints one JSON object.

    python scripts/kill_test.py [--kills 50] [--steps 400] [--max-delay 4] [--seed 0]
        [--workdir DIR] [--out kill_test.json]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlx_kssm  # noqa: F401  (BLAS before mlx)
import mlx.core as mx

from mlx_kssm._files import is_temp_name
from mlx_kssm.data.prepare import prepare
from mlx_kssm.io import load_model
from mlx_kssm.train import checkpoint as ckpt
from mlx_kssm.train import read_history

WORDS = "the quick brown fox jumps over lazy dog and cat runs far away into night sky".split()


def make_data(root: Path) -> Path:
    rng = random.Random(0)
    (root / "src").mkdir(parents=True)
    for d in range(5):
        (root / "src" / f"doc{d}.txt").write_text(" ".join(rng.choice(WORDS) for _ in range(600)))
    prepare(root / "src", root / "prep", tokenizer="bytes", val_fraction=0.2, log=lambda m: None)
    return root / "prep"


def train_command(data: Path, out: Path, steps: int) -> list:
    return [sys.executable, "-m", "mlx_kssm.cli", "train", "--preset", "tiny", "--data",
            str(data), "--output-dir", str(out), "--seq-len", "32", "--batch-size", "4",
            "--max-steps", str(steps), "--save-every", "1", "--keep-last", "2",
            "--steps-per-report", "1", "--steps-per-eval", "7", "--val-batches", "1",
            "--resume"]


def check_folder(out: Path) -> dict:
    """What a kill left: unloadable checkpoints, an unloadable best/, torn history lines."""
    problems = {"unloadable_checkpoints": 0, "unloadable_best": 0, "torn_history_lines": 0}
    for folder in ckpt.list_checkpoints(out):
        try:
            load_model(folder)
            ckpt.load_checkpoint(folder)
        except Exception:  # noqa: BLE001  (any failure to load counts)
            problems["unloadable_checkpoints"] += 1
    if (out / ckpt.BEST).exists():
        try:
            load_model(out / ckpt.BEST)
        except Exception:  # noqa: BLE001
            problems["unloadable_best"] += 1
    path = out / "history.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    for line in lines[:-1]:  # a kill mid-write may tear the last line only
        try:
            json.loads(line)
        except ValueError:
            problems["torn_history_lines"] += 1
    return problems


def train_records(out: Path) -> list:
    return [(r["step"], r["loss"], r["ce"], r["grad_norm"], r["lr"])
            for r in read_history(out) if r["event"] == "train"]


def final_state(out: Path) -> dict:
    final = ckpt.load_checkpoint(ckpt.latest_checkpoint(out))
    return {**{f"model.{k}": v for k, v in final.weights.items()},
            **{f"optimizer.{k}": v for k, v in final.optimizer.items()}}


def leftover_temps(out: Path) -> list:
    return [str(p.relative_to(out)) for p in list(out.iterdir()) + list((out / "checkpoints").iterdir())
            if is_temp_name(p.name) or p.name.endswith(".old")]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=50)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--max-delay", type=float, default=4.0, help="seconds after launch")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    root = Path(args.workdir or tempfile.mkdtemp(prefix="kill_test."))
    if root.exists() and any(root.iterdir()):
        sys.exit(f"Error: --workdir {root} is not empty: give a new or empty folder")
    data = make_data(root)
    killed_run, straight_run = root / "killed", root / "straight"
    command = train_command(data, killed_run, args.steps)
    rng = random.Random(args.seed)
    totals = {"kills": 0, "exited_before_kill": 0, "failed_resumes": 0, "unloadable_checkpoints": 0,
              "unloadable_best": 0, "torn_history_lines": 0, "manual_steps": 0}
    steps_at_kill, failures = [], []
    t0 = time.time()
    for attempt in range(args.kills):
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
        try:
            proc.wait(timeout=rng.uniform(0.0, args.max_delay))
        except subprocess.TimeoutExpired:
            proc.kill()  # SIGKILL
            proc.wait()
            totals["kills"] += 1
        stderr = proc.stderr.read()
        proc.stderr.close()
        if proc.returncode not in (0, -9):
            totals["failed_resumes"] += 1
            failures.append({"attempt": attempt, "returncode": proc.returncode,
                             "stderr": stderr.strip()[-500:]})
        elif proc.returncode == 0:
            totals["exited_before_kill"] += 1  # the run had already finished
        for key, count in check_folder(killed_run).items():
            totals[key] += count
        newest = ckpt.latest_checkpoint(killed_run)
        steps_at_kill.append(int(newest.name[5:]) if newest else 0)
        print(f"[{attempt + 1}/{args.kills}] latest checkpoint step {steps_at_kill[-1]}",
              file=sys.stderr, flush=True)
    finish = subprocess.run(command, capture_output=True, text=True)
    if finish.returncode != 0:
        totals["failed_resumes"] += 1
        failures.append({"attempt": "final", "returncode": finish.returncode,
                         "stderr": finish.stderr.strip()[-500:]})
    kill_seconds = time.time() - t0
    straight = subprocess.run(train_command(data, straight_run, args.steps), capture_output=True,
                              text=True)
    assert straight.returncode == 0, straight.stderr
    records, reference = train_records(killed_run), train_records(straight_run)
    steps = [r[0] for r in records]
    evals = [[r["step"], r["val_loss"]] for r in read_history(killed_run) if r["event"] == "eval"]
    evals_ref = [[r["step"], r["val_loss"]] for r in read_history(straight_run)
                 if r["event"] == "eval"]
    mine, theirs = final_state(killed_run), final_state(straight_run)
    unequal = sorted(k for k in theirs if k not in mine or not mx.array_equal(mine[k], theirs[k]))
    result = {
        "bench": "kill_test", "steps": args.steps, "seed": args.seed, **totals,
        "steps_reached_at_kills": steps_at_kill,
        "duplicated_steps": len(steps) - len(set(steps)),
        "missing_steps": len(set(range(1, args.steps + 1)) - set(steps)),
        "train_records_equal_straight_run": records == reference,
        "evaluations_equal_straight_run": evals == evals_ref,
        "weights_and_optimizer_equal_straight_run": not unequal and set(mine) == set(theirs),
        "unequal_arrays": unequal[:10],
        "leftover_temp_files": leftover_temps(killed_run),
        "failures": failures, "seconds_with_kills": round(kill_seconds, 1),
        "workdir": str(root)}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
