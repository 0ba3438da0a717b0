"""`training.lock`: one trainer per run folder.

The lock is created with O_CREAT|O_EXCL (atomic: of two trainers racing, one wins) and holds
JSON: pid, host, start time, the command line and the process's kernel start tick (Linux), so
a pid reused by an unrelated process is not mistaken for the trainer. A lock whose process
is gone (same host; a zombie, killed but not yet reaped, counts as gone) is stale and is
taken over with a message; a live holder, or a holder on another host (which cannot be
checked from here), refuses the second trainer.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from .._files import pid_alive, temp_tag
from .._types import is_int

LOCK_NAME = "training.lock"
UNREADABLE_GRACE_S = 10.0  # an empty/corrupt lock younger than this may still be being written


class LockError(Exception):
    """Another trainer holds the run folder (the message names it)."""


def process_start_tick(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot (Linux /proc), None elsewhere."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def read_lock(run_dir) -> dict | None:
    """The holder's details; {} for an unreadable lock; None when there is no lock."""
    path = Path(run_dir) / LOCK_NAME
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    return _parse(text)


def _parse(text: bytes) -> dict:
    """A lock's JSON; {} where it is not a trainer's (torn, garbage, or a pid, host or start
    tick of the wrong kind), which then counts as unreadable: taken over once it is older than
    UNREADABLE_GRACE_S, like any other garbage."""
    try:
        info = json.loads(text)
    except ValueError:
        return {}
    if not isinstance(info, dict):
        return {}
    pid, host, tick = info.get("pid"), info.get("host"), info.get("start_tick")
    if not (is_int(pid) and isinstance(host, str) and (tick is None or is_int(tick))):
        return {}
    return info


def holder_alive(info: dict) -> bool | None:
    """True/False for a holder on this host; None when it runs elsewhere (unknown)."""
    if info.get("host") != socket.gethostname():
        return None
    pid = info.get("pid", -1)
    if pid <= 0 or not pid_alive(pid):
        return False
    tick = info.get("start_tick")
    now_tick = process_start_tick(pid)
    return not (tick is not None and now_tick is not None and tick != now_tick)


def describe(info: dict) -> str:
    return (f"pid {info.get('pid')} on {info.get('host')}, started {info.get('start_time')}"
            f" ({info.get('command', '?')})")


def acquire(run_dir, command: str | None = None, log=print) -> dict:
    """Take the lock or raise LockError; returns what was written."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "start_time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "start_tick": process_start_tick(os.getpid()),
            "command": command or " ".join(sys.argv)}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            _clear_if_stale(path, log)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(info))
            f.flush()
            os.fsync(f.fileno())
        return info
    raise LockError(f"could not take {path} (another trainer keeps racing for it)")


def _clear_if_stale(path: Path, log) -> None:
    holder = read_lock(path.parent)
    if holder is None:
        return  # released meanwhile: try again
    if holder == {}:
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return
        if age < UNREADABLE_GRACE_S:
            raise LockError(f"{path} is unreadable, perhaps being written by another trainer: "
                            f"try again in {UNREADABLE_GRACE_S:g}s (an unreadable lock that "
                            "old is taken over)")
        log(f"taking over unreadable lock {path} (it names no trainer)")
    else:
        alive = holder_alive(holder)
        if alive is None:
            raise LockError(f"{path} is held by a trainer on another host: {describe(holder)}; "
                            "remove the lock if that run is over")
        if alive:
            raise LockError(f"{path.parent} is already being trained by {describe(holder)}")
        log(f"taking over stale lock {path}: its trainer (pid {holder.get('pid')}) is gone")
    # rename first, so two trainers taking over the same stale lock cannot both delete a
    # fresh lock: only the O_EXCL create decides who holds it
    moved = path.with_name(f".{LOCK_NAME}.{temp_tag()}.stale")
    try:
        os.replace(path, moved)
    except FileNotFoundError:
        return
    try:
        taken = _parse(moved.read_bytes())
    except OSError:
        taken = {}
    if taken != holder:  # another trainer took over first and we moved its fresh lock
        try:
            os.link(moved, path)
        except FileExistsError:
            pass
        moved.unlink(missing_ok=True)
        raise LockError(f"{path.parent} was just taken over by {describe(taken)}")
    moved.unlink(missing_ok=True)


def release(run_dir) -> None:
    """Remove the lock if this process holds it."""
    path = Path(run_dir) / LOCK_NAME
    holder = read_lock(run_dir)
    if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        try:
            path.unlink()
        except FileNotFoundError:
            pass
