"""What a run tells: printed lines (also appended to training.log), history.jsonl events, the
progress bar, the report of the steps since the last one, and the formatters. history.jsonl's
one reader, `read_history`, is mlx_kssm/history.py (re-exported here): plot and the benchmarks
read a run without importing the trainer's package.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx

from .._files import atomic_write_bytes, atomic_write_text, naming
from ..history import HISTORY, history_lines, parse_event, read_history  # noqa: F401
from ..models import r_zone

LOG = "training.log"
RUN_CONFIG = "config.json"  # the run's options, model and tokenizer, written when it starts
ETA_STEPS = 50  # the ETA averages this many recent step times


def _is_checkpoint_event(record, step: int) -> bool:
    return bool(record) and record.get("event") == "checkpoint" and record.get("step") == step


class RunLog:
    """Printed lines (also appended to training.log) and history.jsonl events; rank 0 only
    writes. `n_events` counts history lines so a checkpoint can record where it was."""

    def __init__(self, run_dir: Path, writer: bool, echo=print):
        self.run_dir, self.writer, self.echo = run_dir, writer, echo
        self.n_events = 0
        self.bar_shown = False

    def line(self, text: str) -> None:
        if not self.writer:
            return
        self.clear_bar()
        self.echo(text)
        with naming(self.run_dir / LOG), open(self.run_dir / LOG, "a") as f:
            f.write(text + "\n")

    def event(self, record: dict) -> None:
        if not self.writer:
            return
        record = {"time": round(time.time(), 3), **record}
        with naming(self.run_dir / HISTORY), open(self.run_dir / HISTORY, "a") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
        self.n_events += 1

    def failure(self, step: int, message: str) -> None:
        """Record why the run stopped, in training.log and as the history's end event (not
        echoed: the caller raises it). Best effort: on a full disk these writes may fail too."""
        if not self.writer:
            return
        try:
            with open(self.run_dir / LOG, "a") as f:
                f.write(f"ERROR: {message}\n")
            self.event({"event": "end", "step": step, "status": "error", "message": message})
        except OSError:
            pass

    def restart_history(self) -> None:
        """A new run starts with an empty history.jsonl. Events of an earlier attempt that
        died before its first checkpoint would otherwise count twice and shift the line
        offsets checkpoints record; training.log (append-only) keeps that attempt's record."""
        path = self.run_dir / HISTORY
        if self.writer and path.exists() and path.stat().st_size:
            dropped = len(history_lines(path))
            atomic_write_text(path, "")
            self.line(f"new run: {HISTORY} restarted; its {dropped} event(s) came from an "
                      "earlier attempt that saved no checkpoint (training.log keeps them)")
        self.n_events = 0

    def truncate_history(self, n_events: int, step: int) -> list:
        """Cut history.jsonl back to the checkpoint of `step` (events logged after it will be
        redone) and return the kept records. The checkpoint recorded `n_events`, its own event
        being the last; where that line is not its event (a history an earlier version let an
        aborted attempt append to), the cut follows the checkpoint's event instead."""
        path = self.run_dir / HISTORY
        lines = history_lines(path) if path.exists() else []
        records = [parse_event(line) for line in lines]
        keep = min(n_events, len(lines))
        if not _is_checkpoint_event(records[keep - 1] if keep else None, step):
            found = [i for i, r in enumerate(records) if _is_checkpoint_event(r, step)]
            keep = found[-1] + 1 if found else keep
        if self.writer and len(lines) != keep:
            atomic_write_bytes(path, b"".join(lines[:keep]))
        self.n_events = keep
        return [r for r in records[:keep] if r is not None]

    def bar(self, step: int, max_steps: int, eta_s: float) -> None:
        """A progress bar with ETA, on a terminal only (never in logs or pipes)."""
        if not (self.writer and sys.stderr.isatty()):
            return
        width = 30
        done = int(width * step / max(max_steps, 1))
        sys.stderr.write(f"\r[{'#' * done}{'.' * (width - done)}] {step}/{max_steps} "
                         f"ETA {format_duration(eta_s)} ")
        sys.stderr.flush()
        self.bar_shown = True

    def clear_bar(self) -> None:
        if self.bar_shown:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
            self.bar_shown = False


@dataclass
class ReportWindow:
    """The steps since the last report: their records (step.step_record) and compute time,
    and the recent step times the ETA averages. The first step of a process traces and
    compiles the graph: it is kept out of both, so tokens/s and the ETA are the steady rate."""

    records: list = field(default_factory=list)
    seconds: float = 0.0  # compute time of the timed steps among `records`
    timed_steps: int = 0
    recent_step_s: list = field(default_factory=list)
    compiled: bool = False  # the first step has run

    def add(self, record: dict, seconds: float) -> bool:
        """Add one step's record; True if it was the first (compiling) step."""
        self.records.append(record)
        if not self.compiled:
            self.compiled = True
            return True
        self.seconds += seconds
        self.timed_steps += 1
        self.recent_step_s = (self.recent_step_s + [seconds])[-ETA_STEPS:]
        return False

    def eta(self, steps_left: int, last_step_s: float) -> float:
        recent = self.recent_step_s or [last_step_s]
        return sum(recent) / len(recent) * steps_left

    def summary(self, step: int, tokens_per_step: int) -> dict:
        """The "train" event of these steps (means; the LR of the last), then an empty window."""
        w, n = self.records, len(self.records)
        avg = lambda k: sum(r[k] for r in w) / n  # noqa: E731
        r = {"event": "train", "step": step, "loss": avg("loss"), "ce": avg("ce"),
             "reg": avg("reg"), "grad_norm": avg("grad_norm"), "lr": w[-1]["lr"]}
        if "R_layers" in w[-1]:
            r["R_layers"] = [sum(x["R_layers"][i] for x in w) / n
                             for i in range(len(w[-1]["R_layers"]))]
            r["R"] = sum(r["R_layers"]) / len(r["R_layers"])
            r["zone"] = r_zone(r["R"])
        if "u" in w[-1]:
            r["u"], r["u_at_bound"] = avg("u"), avg("u_at_bound")
        tokens = self.timed_steps * tokens_per_step
        r["tokens_per_sec"] = tokens / self.seconds if self.seconds > 0 else 0.0
        r["peak_mem_gb"] = mx.get_peak_memory() / 1e9
        self.records, self.seconds, self.timed_steps = [], 0.0, 0
        return r


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def format_report(r: dict) -> str:
    parts = [f"Iter {r['step']}: Train loss {r['loss']:.4f}", f"CE {r['ce']:.4f}",
             f"Reg {r['reg']:.4f}"]
    if r.get("R") is not None:
        parts.append(f"R {r['R']:.4f} ({r['zone']})")
    if r.get("u") is not None:
        parts.append(f"u {r['u']:.4f} (at bound {r['u_at_bound']:.1%})")
    parts += [f"Grad norm {r['grad_norm']:.3f}", f"LR {r['lr']:.3e}",
              f"Tokens/sec {r['tokens_per_sec']:.1f}", f"Peak mem {r['peak_mem_gb']:.3f} GB"]
    return ", ".join(parts)


def format_eval(e: dict) -> str:
    text = f"Iter {e['step']}: Val loss {e['val_loss']:.4f}, Val ppl {e['val_ppl']:.2f}"
    if e.get("val_R") is not None:
        layers = " ".join(f"{x:.3f}" for x in e["val_R_layers"])
        text += f", Val R {e['val_R']:.4f} ± {e['val_R_std']:.4f} [{layers}]"
    if e.get("val_u") is not None:
        text += f", Val u {e['val_u']:.4f}"
    return text + f", Val took {e['eval_s']:.2f}s" + (" (best)" if e.get("is_best") else "")
