"""`train --report-to wandb,tensorboard`: the figures of each report and evaluation, sent to
Weights & Biases and/or TensorBoard as well as history.jsonl (rank 0 only).

Both come from optional extras (`pip install 'mlx-kssm[wandb]'`, `'mlx-kssm[tensorboard]'`),
imported only when asked for; `check_report_to` refuses a name whose package is missing
before anything is trained. TensorBoard's event files are written by tensorboardX (it needs
only numpy and protobuf; `tensorboard` itself, which brings a web server, is needed only to
view them) into RUN/tensorboard; wandb writes RUN/wandb (offline with WANDB_MODE=offline).

What is logged, at the step of the report (names as in mlx-lm's callbacks: one dict per
report, keyed by what it measures):
  train/loss, train/ce, train/reg, train/grad_norm, train/lr, train/tokens_per_sec,
  train/peak_mem_gb, train/R, train/R_zone (the index of R's zone in models.ZONES),
  train/R_layer_<i>, train/u, train/u_at_bound (v3), and R_zones/<zone>: the share of
  R values (per layer, per report, this run so far) that fell in each zone, what `monitor`
  shows as "R zone visits";
  val/loss, val/ppl, val/reg, val/R, val/R_std, val/R_zone, val/R_layer_<i>, val/u,
  val/u_at_bound at each evaluation.
"""

from __future__ import annotations

import importlib
import os
import time
from pathlib import Path

from ..models import ZONES, r_zone
from .health import zones_visited

# --report-to name -> (module it needs, the extra that installs it)
BACKENDS = {"wandb": ("wandb", "wandb"), "tensorboard": ("tensorboardX", "tensorboard")}
TENSORBOARD_DIR = "tensorboard"
DEFAULT_PROJECT = "mlx-kssm"
_TRAIN_KEYS = ("loss", "ce", "reg", "grad_norm", "lr", "tokens_per_sec", "peak_mem_gb", "R",
               "u", "u_at_bound")
_EVAL_KEYS = ("val_loss", "val_ppl", "val_reg", "val_R", "val_R_std", "val_u",
              "val_u_at_bound")
_ZONE_LABELS = [label for _, label in ZONES]


def parse_report_to(value: str | None) -> list:
    """"wandb, TensorBoard" -> ["wandb", "tensorboard"]; None, "" or "none": []. ValueError
    for a name that is no backend."""
    names = [n.strip().lower() for n in (value or "").split(",") if n.strip()]
    if names == ["none"]:
        return []
    unknown = [n for n in names if n not in BACKENDS]
    if unknown:
        raise ValueError(f"--report-to {value!r}: unknown {', '.join(map(repr, unknown))}; "
                         f"choose from {', '.join(BACKENDS)} (comma-separated)")
    return list(dict.fromkeys(names))


def check_report_to(value: str | None) -> list:
    """The backends `value` names, each one's package imported: ValueError naming the extra
    to install for one that is missing (before a run starts, so nothing trains in vain)."""
    names = parse_report_to(value)
    for name in names:
        module, extra = BACKENDS[name]
        try:
            importlib.import_module(module)
        except ImportError:
            raise ValueError(f"--report-to {name} needs {module}, which is not installed: "
                             f"pip install 'mlx-kssm[{extra}]'") from None
    return names


def zone_name(label: str) -> str:
    """"🌀 Goldilocks" -> "goldilocks", "☍ Over-sync" -> "over_sync": a tag every viewer takes."""
    return label.split(" ", 1)[-1].lower().replace("-", "_")


def zone_index(r: float) -> int:
    return _ZONE_LABELS.index(r_zone(r))


def train_scalars(report: dict, zone_counts: dict) -> dict:
    """The scalars of a "train" event (runlog.ReportWindow.summary), with the zone shares of
    `zone_counts` (zone label -> R values that fell in it)."""
    out = {f"train/{k}": float(report[k]) for k in _TRAIN_KEYS if report.get(k) is not None}
    if report.get("R") is not None:
        out["train/R_zone"] = zone_index(report["R"])
    for i, r in enumerate(report.get("R_layers") or []):
        out[f"train/R_layer_{i}"] = float(r)
    total = sum(zone_counts.values())
    if total:
        for label in _ZONE_LABELS:
            out[f"R_zones/{zone_name(label)}"] = zone_counts.get(label, 0) / total
    return out


def eval_scalars(evaluation: dict) -> dict:
    """The scalars of an "eval" event."""
    out = {f"val/{k[4:]}": float(evaluation[k]) for k in _EVAL_KEYS
           if evaluation.get(k) is not None}
    if evaluation.get("val_R") is not None:
        out["val/R_zone"] = zone_index(evaluation["val_R"])
    for i, r in enumerate(evaluation.get("val_R_layers") or []):
        out[f"val/R_layer_{i}"] = float(r)
    return out


class Reporters:
    """The backends of one run (none: every call does nothing). A backend that fails while
    logging is dropped with a warning: the run trains on, history.jsonl keeps everything."""

    def __init__(self, backends: list | None = None, warn=print):
        self.backends = backends or []
        self.warn = warn
        self.zone_counts: dict = {}

    def count_zones(self, reports) -> None:
        """Add the R values of earlier "train" events (a resumed run's kept history)."""
        for label, n in zones_visited(list(reports)).items():
            self.zone_counts[label] = self.zone_counts.get(label, 0) + n

    def train(self, report: dict) -> None:
        self.count_zones([report])
        self._log(report["step"], train_scalars(report, self.zone_counts))

    def eval(self, evaluation: dict) -> None:
        self._log(evaluation["step"], eval_scalars(evaluation))

    def _log(self, step: int, scalars: dict) -> None:
        for backend in list(self.backends):
            try:
                backend.log(step, scalars)
            except Exception as error:  # noqa: BLE001 - logging must not stop training
                self.backends.remove(backend)
                self.warn(f"WARNING: --report-to {backend.name} failed at step {step} "
                          f"({type(error).__name__}: {error}); no longer reporting to it "
                          "(history.jsonl has every figure)")

    def close(self, failed: bool = False) -> None:
        for backend in self.backends:
            try:
                backend.close(failed)
            except Exception as error:  # noqa: BLE001 - the run's own result stands
                self.warn(f"WARNING: --report-to {backend.name}: closing failed ({error})")
        self.backends = []


class TensorBoardBackend:
    name = "tensorboard"

    def __init__(self, run_dir: Path):
        from tensorboardX import SummaryWriter

        # the event file is named by the second and host: a resume within the same second
        # would reopen (and truncate) the first run's file without a suffix of its own
        suffix = f".{os.getpid()}.{time.time_ns()}"
        self.writer = SummaryWriter(logdir=str(Path(run_dir) / TENSORBOARD_DIR),
                                    filename_suffix=suffix)

    def log(self, step: int, scalars: dict) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, global_step=step)
        self.writer.flush()  # a killed run keeps what it reported

    def close(self, failed: bool = False) -> None:
        self.writer.close()


class WandbBackend:
    name = "wandb"

    def __init__(self, run_dir: Path, project: str | None, run_config: dict):
        import wandb

        try:
            self.run = wandb.init(project=project or DEFAULT_PROJECT, name=Path(run_dir).name,
                                  dir=str(run_dir), config=run_config)
        except Exception as error:  # not logged in, no network in online mode, ...
            raise ValueError(f"--report-to wandb: wandb.init failed: {error} (WANDB_MODE="
                             "offline logs locally; `wandb sync` uploads later)") from None

    def log(self, step: int, scalars: dict) -> None:
        self.run.log(scalars, step=step)

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)


def open_reporters(names: list, run_dir: Path, project: str | None, run_config: dict,
                   warn=print) -> Reporters:
    """The backends `names` (check_report_to's), opened on `run_dir`."""
    backends = []
    try:
        for name in names:
            backends.append(TensorBoardBackend(run_dir) if name == "tensorboard"
                            else WandbBackend(run_dir, project, run_config))
    except Exception:
        Reporters(backends, warn).close(failed=True)
        raise
    return Reporters(backends, warn)
