"""`status` and `monitor`: is a run alive, where is it, is it healthy — read from the run
folder only (lock, config.json, history.jsonl, checkpoints) plus a scan of running
processes, so they work from another terminal while the trainer runs."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from .._types import is_int
from ..models import DEFAULT_ZONES, r_zone
from . import checkpoint as ckpt
from .health import zones_visited
from .lock import LOCK_NAME, describe, holder_alive, read_lock
from .runlog import HISTORY, RUN_CONFIG, format_duration, read_history

RECENT_REPORTS = 5  # reports averaged for the ETA


def _output_dir_arg(args: list) -> str | None:
    for i, a in enumerate(args):
        if a == "--output-dir" and i + 1 < len(args):
            return args[i + 1]
        if a.startswith("--output-dir="):
            return a.split("=", 1)[1]
    return None


def trainer_processes(run_dir) -> list:
    """Running `mlx-kssm train` processes whose --output-dir is `run_dir` (Linux /proc;
    an empty list elsewhere)."""
    target = Path(run_dir).resolve()
    found = []
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if "train" not in args or not any("mlx-kssm" in a or "mlx_kssm" in a for a in args):
            continue
        out = _output_dir_arg(args)
        if out is not None and (Path(cwd) / out).resolve() == target:
            found.append({"pid": int(entry.name), "command": " ".join(a for a in args if a)})
    return found


def _fmt(record: dict, key: str, spec: str = "") -> str:
    """record[key] formatted by `spec`, or "?" where a hand-edited history lacks it
    (read_history has skipped reports whose figures are not numbers)."""
    value = record.get(key)
    return "?" if value is None else format(value, spec)


def _count(config: dict, key: str, default: int) -> int:
    """A whole number of config.json (or of its "train" options), else `default`."""
    value = config.get(key, default)
    return value if is_int(value) else default


def _eta(trains: list, train_cfg: dict, config: dict, step: int) -> float | None:
    """Seconds to --max-steps at the recent reports' token rate; None where unknown."""
    max_steps = _count(train_cfg, "max_steps", 0)
    rates = [r["tokens_per_sec"] for r in trains[-RECENT_REPORTS:]
             if r.get("tokens_per_sec") is not None]
    if not (max_steps and rates and sum(rates) > 0):
        return None
    tokens_per_step = (_count(train_cfg, "batch_size", 0) * _count(train_cfg, "seq_len", 0)
                       * _count(train_cfg, "grad_accum", 1) * _count(config, "world_size", 1))
    return (max_steps - step) * tokens_per_step / (sum(rates) / len(rates))


def _lock_warnings(run_dir: Path, holder: dict | None, alive: bool | None) -> list:
    """What the lock says that needs attention ({} = unreadable: garbage, as lock.read_lock
    reads it)."""
    if holder == {}:
        return [f"unreadable lock {run_dir / LOCK_NAME} (it names no trainer): the next "
                "trainer takes it over"]
    if holder is not None and alive is False:
        return [f"stale lock: {describe(holder)} is no longer running (the next trainer "
                "takes it over)"]
    if alive is None:
        return [f"lock held on another host: {describe(holder)} (cannot check it)"]
    return []


def _run_config(run_dir: Path) -> dict:
    try:
        config = json.loads((run_dir / RUN_CONFIG).read_text())
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


RUN_MARKS = (RUN_CONFIG, HISTORY, LOCK_NAME, ckpt.CHECKPOINTS)  # what a trainer writes first


def run_status(run_dir) -> dict:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"{run_dir}: no such run folder")
    if not any((run_dir / name).exists() for name in RUN_MARKS):
        raise ValueError(f"{run_dir} is not a training run folder (it holds none of "
                         f"{', '.join(RUN_MARKS)})")
    holder = read_lock(run_dir)
    alive = holder_alive(holder) if holder else False
    history = read_history(run_dir)
    config = _run_config(run_dir)
    train_cfg = config.get("train") if isinstance(config.get("train"), dict) else {}
    trains = [r for r in history if r.get("event") == "train" and r.get("step") is not None]
    evals = [r for r in history if r.get("event") == "eval"]
    verdicts = [r for r in history if r.get("event") == "verdict"]
    ends = [r for r in history if r.get("event") in ("end", "resume", "start")]
    last_ckpt = ckpt.latest_checkpoint(run_dir)
    step = trains[-1]["step"] if trains else 0
    max_steps = _count(train_cfg, "max_steps", 0) or None
    eta = _eta(trains, train_cfg, config, step)
    procs = trainer_processes(run_dir)
    warnings = _lock_warnings(run_dir, holder, alive)
    ranks = _count(config, "world_size", 1) if alive else 1  # mlx.launch ranks are one run
    if len(procs) > ranks:
        warnings.append(f"{len(procs)} trainer processes on this folder: "
                        + ", ".join(str(p["pid"]) for p in procs)
                        + " (they compete for memory; stop all but one)")
    elif procs and holder is None:
        warnings.append(f"trainer pid {procs[0]['pid']} runs on this folder without a lock")
    return {"run_dir": str(run_dir), "alive": bool(alive), "lock": holder,
            "state": ends[-1].get("status", "running") if ends and ends[-1]["event"] == "end"
            else ("running" if alive else "stopped"),
            "step": step, "max_steps": max_steps, "last_train": trains[-1] if trains else None,
            "last_eval": evals[-1] if evals else None,
            "last_verdict": verdicts[-1] if verdicts else None, "eta_s": eta if alive else None,
            "last_checkpoint": str(last_ckpt) if last_ckpt else None,
            "last_checkpoint_age_s": time.time() - last_ckpt.stat().st_mtime if last_ckpt else None,
            "processes": procs, "warnings": warnings, "preset": (config.get("model") or {}).get("preset")
            if isinstance(config.get("model"), (dict, type(None))) else None}


def format_status(s: dict, zones: str = DEFAULT_ZONES) -> str:
    """run_status's dict as lines, R zones named by table `zones`."""
    alive = "ALIVE" if s["alive"] else "NOT RUNNING"
    who = f" ({describe(s['lock'])})" if s["alive"] and s["lock"] else ""
    lines = [f"{s['run_dir']}: {alive}{who}; state {s['state']}", "  " + _progress(s)]
    t = s["last_train"]
    if t:
        r = f", R {t['R']:.4f} ({r_zone(t['R'], zones)})" if t.get("R") is not None else ""
        u = f", u {t['u']:.4f}" if t.get("u") is not None else ""
        lines.append(f"  last report: loss {_fmt(t, 'loss', '.4f')}, CE {_fmt(t, 'ce', '.4f')}"
                     f"{r}{u}, LR {_fmt(t, 'lr', '.3e')}, {_fmt(t, 'tokens_per_sec', '.1f')} "
                     "tok/s")
    e = s["last_eval"]
    if e:
        vr = f", val R {e['val_R']:.4f}" if e.get("val_R") is not None else ""
        lines.append(f"  last eval (step {_fmt(e, 'step')}): val loss "
                     f"{_fmt(e, 'val_loss', '.4f')}, val ppl {_fmt(e, 'val_ppl', '.2f')}{vr}")
    if s["last_checkpoint"]:
        lines.append(f"  last checkpoint: {s['last_checkpoint']} "
                     f"({format_duration(s['last_checkpoint_age_s'])} ago)")
    else:
        lines.append("  last checkpoint: none")
    if s["last_verdict"]:
        v = s["last_verdict"]
        lines.append(f"  stage {v.get('stage', '?')} verdict: {v.get('overall', '?')}")
    lines += [f"  WARNING: {w}" for w in s["warnings"]]
    return "\n".join(lines)


def _progress(s: dict) -> str:
    """"step 120/1000, ETA 3m20s"; before the first report of a live run, "starting" (it
    loads data, builds and compiles: step 0 would read as stuck)."""
    if s["last_train"] is None and s["alive"]:
        return f"starting (no step reported yet; {s['max_steps'] or '?'} steps planned)"
    return (f"step {s['step']}/{s['max_steps'] or '?'}"
            + (f", ETA {format_duration(s['eta_s'])}" if s["eta_s"] is not None else ""))


def monitor_frame(run_dir, recent: int = 10, zones: str = DEFAULT_ZONES) -> str:
    """One screen: status, the last reports, R zone visits (zones of table `zones`), u at the
    bound, last eval."""
    run_dir = Path(run_dir)
    s = run_status(run_dir)
    history = read_history(run_dir)
    trains = [r for r in history if r.get("event") == "train"]
    lines = [format_status(s, zones), "", f"{'step':>7} {'loss':>8} {'CE':>8} {'R':>7} {'zone':<14}"
             f" {'u':>7} {'grad':>7} {'LR':>9} {'tok/s':>9}"]
    for r in trains[-recent:]:
        R = f"{r['R']:.4f}" if r.get("R") is not None else "-"
        u = f"{r['u']:.4f}" if r.get("u") is not None else "-"
        zone = r_zone(r["R"], zones) if r.get("R") is not None else "-"
        lines.append(f"{_fmt(r, 'step'):>7} {_fmt(r, 'loss', '.4f'):>8} "
                     f"{_fmt(r, 'ce', '.4f'):>8} {R:>7} {zone:<14} {u:>7} "
                     f"{_fmt(r, 'grad_norm', '.3f'):>7} {_fmt(r, 'lr', '.2e'):>9} "
                     f"{_fmt(r, 'tokens_per_sec', '.1f'):>9}")
    visits = zones_visited(trains, zones)
    if visits:
        total = sum(visits.values())
        lines.append("")
        lines.append("R zone visits (per layer, per report): " + ", ".join(
            f"{z} {n} ({n / total:.0%})" for z, n in sorted(visits.items(), key=lambda kv: -kv[1])))
    with_u = [r for r in trains if r.get("u") is not None and r.get("u_at_bound") is not None]
    if with_u:
        at = [r["u_at_bound"] for r in with_u]
        lines.append(f"u at bound: latest {at[-1]:.1%} of positions, mean {sum(at) / len(at):.1%},"
                     f" reports with any at bound {sum(1 for a in at if a > 0)}/{len(at)}")
    evals = [r for r in history if r.get("event") == "eval"]
    if evals:
        lines.append("")
        lines.append("evaluations: " + "  ".join(
            f"{_fmt(e, 'step')}:{_fmt(e, 'val_loss', '.3f')}" + ("*" if e.get("is_best") else "")
            for e in evals[-8:]) + "   (* = best)")
        if evals[-1].get("val_R") is not None:
            val_r = evals[-1]["val_R"]
            lines.append(f"  latest val R {val_r:.4f} ({r_zone(val_r, zones)})")
    return "\n".join(lines)
