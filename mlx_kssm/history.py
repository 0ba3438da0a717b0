"""history.jsonl, a training run's event log: its name and its one reader, `read_history` (the
trainer, status, monitor, plot, the study and the benchmarks all use it; the writer is
train/runlog.py).

history.jsonl holds one JSON object per line, appended as things happen ("start", "train",
"eval", "checkpoint", "verdict", "resume", "warning", "nan", "end"). A kill can tear its last
line; readers skip lines that are not JSON objects, and reports whose figures are not numbers
(a hand-edited file), so every reader can format what it gets.
"""

from __future__ import annotations

import json
from pathlib import Path

from ._types import has_type, is_int

HISTORY = "history.jsonl"
# figures of "train" and "eval" reports that readers format as numbers (where present)
NUMBERS = ("loss", "ce", "reg", "grad_norm", "lr", "tokens_per_sec", "peak_mem_gb", "R", "u",
           "u_at_bound", "max_steps", "val_loss", "val_ppl", "val_R", "val_R_std", "val_u",
           "val_u_at_bound", "val_reg", "n_tokens", "eval_s")
NUMBER_LISTS = ("R_layers", "val_R_layers")


def read_history(run_dir) -> list:
    """history.jsonl as a list of dicts; a line that is not a JSON object (the torn last line
    a kill leaves, bytes that are not UTF-8) or a report with a figure that is not a number
    is skipped."""
    path = Path(run_dir) / HISTORY
    if not path.exists():
        return []
    return [r for r in map(parse_event, history_lines(path)) if r is not None and _usable(r)]


def history_lines(path: Path) -> list:
    """The file's lines as bytes, each with its newline. Split at b"\\n" only: the events are
    written with ensure_ascii=False, so a sample's text may hold U+2028 or U+0085, at which
    str.splitlines would also split."""
    lines = path.read_bytes().split(b"\n")
    return [line + b"\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])


def parse_event(line: bytes) -> dict | None:
    try:
        record = json.loads(line)  # bytes that are not UTF-8 raise a ValueError too
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _is_number(value) -> bool:
    return has_type(value, float)


def _usable(record: dict) -> bool:
    """A report's step and figures are numbers; other events are used as they are (a "nan"
    event's loss is the string "nan" by design)."""
    if record.get("event", "train") not in ("train", "eval"):  # plot: no event = a report
        return True
    if not is_int(record.get("step", 0)):  # shown as a whole number
        return False
    if any(record.get(k) is not None and not _is_number(record[k]) for k in NUMBERS):
        return False
    lists = [record.get(k) or [] for k in NUMBER_LISTS]
    return all(isinstance(v, list) and all(map(_is_number, v)) for v in lists)
