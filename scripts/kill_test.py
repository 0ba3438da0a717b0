"""Random-kill test of the trainer: crash safety and exact resume (minutes: not in the suite).

A tiny run (tiny preset, byte-level synthetic data, seq 32, batch 4, a checkpoint every step,
2 kept, an evaluation and a best/ every 7 steps) is started with --resume and SIGKILLed at a
random moment (0 to --max-delay seconds after launch: during start-up, a step, a checkpoint,
best/, history or log writes) until --kills launches were killed, each started exactly as
before.
After every kill it checks that every complete checkpoint loads (model folder and full
checkpoint state) and best/ loads, and that history.jsonl has no torn line except possibly
the last (which the next start cuts). A start that exits with an error counts as a failed
resume (nothing is ever fixed by hand). Finally the run is finished and compared with an
uninterrupted run of the same command: history's train records (loss, CE, grad norm, LR),
the final evaluation, the final weights and optimizer state, bit for bit; and no temp file
may be left. Prints one JSON object.

    python scripts/kill_test.py [--kills 50] [--steps 1500] [--max-delay 4] [--seed 0]
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


def holds_lock(out: Path, pid: int) -> bool:
    """Whether `pid` got as far as taking the run's lock (else it dies in start-up: imports,
    argument parsing)."""
    try:
        return json.loads((out / "training.lock").read_text()).get("pid") == pid
    except (OSError, ValueError, AttributeError):
        return False


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


def kill_repeatedly(command: list, out: Path, kills: int, max_delay: float,
                    rng: random.Random) -> dict:
    """Launch `command` and SIGKILL it at a random moment until `kills` launches were killed,
    checking the run folder after each. Returns the counts, the failures and the newest
    checkpoint's step after each launch."""
    totals = {"kills": 0, "kills_in_startup": 0, "launches": 0, "failed_resumes": 0,
              "unloadable_checkpoints": 0, "unloadable_best": 0, "torn_history_lines": 0,
              "manual_steps": 0}  # manual_steps: the script never repairs anything
    steps_at_kill, failures = [], []
    while totals["kills"] < kills and totals["failed_resumes"] < 5:
        totals["launches"] += 1
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
        try:
            proc.wait(timeout=rng.uniform(0.0, max_delay))
        except subprocess.TimeoutExpired:
            totals["kills_in_startup"] += not holds_lock(out, proc.pid)
            proc.kill()  # SIGKILL
            proc.wait()
            totals["kills"] += 1
        stderr = proc.stderr.read()
        proc.stderr.close()
        if proc.returncode == 0:
            sys.exit(f"Error: the run finished after {totals['kills']} kills: give more --steps")
        if proc.returncode != -9:
            totals["failed_resumes"] += 1
            failures.append({"launch": totals["launches"], "returncode": proc.returncode,
                             "stderr": stderr.strip()[-500:]})
        for key, count in check_folder(out).items():
            totals[key] += count
        newest = ckpt.latest_checkpoint(out)
        steps_at_kill.append(int(newest.name[5:]) if newest else 0)
        print(f"[{totals['kills']}/{kills}] latest checkpoint step {steps_at_kill[-1]}",
              file=sys.stderr, flush=True)
    return {**totals, "failures": failures, "steps_reached_at_kills": steps_at_kill}


def compare(killed: Path, straight: Path, steps: int) -> dict:
    """The killed-and-resumed run against the uninterrupted one."""
    records, reference = train_records(killed), train_records(straight)
    seen = [r[0] for r in records]
    evals = [[(r["step"], r["val_loss"]) for r in read_history(run) if r["event"] == "eval"]
             for run in (killed, straight)]
    mine, theirs = final_state(killed), final_state(straight)
    unequal = sorted(k for k in theirs if k not in mine or not mx.array_equal(mine[k], theirs[k]))
    return {"duplicated_steps": len(seen) - len(set(seen)),
            "missing_steps": len(set(range(1, steps + 1)) - set(seen)),
            "train_records_equal_straight_run": records == reference,
            "evaluations_equal_straight_run": evals[0] == evals[1],
            "weights_and_optimizer_equal_straight_run": not unequal and set(mine) == set(theirs),
            "unequal_arrays": unequal[:10], "leftover_temp_files": leftover_temps(killed)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=50)
    ap.add_argument("--steps", type=int, default=1500, help="long enough not to finish "
                    "before the last kill")
    ap.add_argument("--max-delay", type=float, default=4.0, help="seconds after launch")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    root = Path(args.workdir or tempfile.mkdtemp(prefix="kill_test."))
    if root.exists() and any(root.iterdir()):
        sys.exit(f"Error: --workdir {root} is not empty: give a new or empty folder")
    data = make_data(root)
    killed, straight = root / "killed", root / "straight"
    command = train_command(data, killed, args.steps)
    t0 = time.time()
    result = kill_repeatedly(command, killed, args.kills, args.max_delay, random.Random(args.seed))
    finish = subprocess.run(command, capture_output=True, text=True)
    if finish.returncode != 0:
        result["failed_resumes"] += 1
        result["failures"].append({"launch": "final", "returncode": finish.returncode,
                                   "stderr": finish.stderr.strip()[-500:]})
    seconds = time.time() - t0
    done = subprocess.run(train_command(data, straight, args.steps), capture_output=True,
                          text=True)
    if done.returncode != 0:
        sys.exit(f"Error: the uninterrupted run failed: {done.stderr.strip()[-500:]}")
    result = {"bench": "kill_test", "steps": args.steps, "seed": args.seed, **result,
              **compare(killed, straight, args.steps), "seconds_with_kills": round(seconds, 1),
              "workdir": str(root)}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
