"""PNG figures of a training run and of an R-intervention sweep (the optional `[plot]` extra).

    loss.png       training loss (and CE) and validation loss / perplexity against step
    r_layers.png   R per layer over training (and validation R) over the R zone bands (docs/model.md)
    u.png          u_val over training, with the bistable bounds (v3 models only)
    intervene.png  forced R vs KL(forced || free) and entropy, from `intervene --json`
"""

from __future__ import annotations

import json
import shutil
from functools import partial
from pathlib import Path

from .._files import atomic_open
from ..history import read_history
from ..models import DEFAULT_ZONES, zone_table

ZONE_COLORS = ("#d9d9d9", "#c6dbef", "#c7e9c0", "#fdd0a2", "#fcbba1", "#dadaeb", "#f2d7e6")


class PlotError(Exception):
    """Nothing to plot, or matplotlib missing."""


def pyplot():
    """matplotlib.pyplot on the Agg backend, or PlotError naming the extra to install."""
    try:
        import matplotlib
    except ImportError:
        raise PlotError("plotting needs matplotlib: pip install 'mlx-kssm[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _series(events, key):
    pts = [(e["step"], e[key]) for e in events if e.get(key) is not None and "step" in e]
    return [p[0] for p in pts], [p[1] for p in pts]


def zone_bands(ax, zones: str = DEFAULT_ZONES) -> None:
    """Shade the R zones of table `zones` (docs/model.md) behind an R axis, labelled at the
    right edge."""
    table = zone_table(zones)
    bounds = [lo for lo, _ in table] + [1.0]
    for i, (lo, label) in enumerate(table):
        hi = bounds[i + 1]
        ax.axhspan(lo, hi, color=ZONE_COLORS[i % len(ZONE_COLORS)], alpha=0.45, lw=0, zorder=0)
        ax.text(1.01, (lo + hi) / 2, label.split(" ", 1)[-1], transform=ax.get_yaxis_transform(),
                va="center", fontsize=8, color="#444444")
    ax.set_ylim(0, 1)


def plot_training(events, out_dir: Path, plt, zones: str = DEFAULT_ZONES) -> list:
    """loss.png, r_layers.png (over the bands of zone table `zones`) and u.png in out_dir,
    each where the run logged what it shows; returns the paths written."""
    trains = [e for e in events if e.get("event", "train") == "train"]
    evals = [e for e in events if e.get("event") == "eval"]
    plots = ((_plot_loss, "loss.png"), (partial(_plot_r_layers, zones=zones), "r_layers.png"),
             (_plot_u, "u.png"))
    written = []
    for draw, name in plots:
        fig = draw(trains, evals, plt)
        if fig is not None:
            written.append(_save(fig, out_dir / name, plt))
    return written


def _plot_loss(trains, evals, plt):
    """Train loss (and CE where a regularizer makes them differ), val loss and PPL; None
    without any loss."""
    if not any("loss" in e for e in trains) and not evals:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for key, style in (("loss", "-"), ("ce", ":")):
        x, y = _series(trains, key)
        if x and (key == "loss" or any(e.get("reg") for e in trains)):
            ax.plot(x, y, style, lw=1.2, label=f"train {key}")
    x, y = _series(evals, "val_loss")
    if x:
        ax.plot(x, y, "o-", lw=1.8, ms=4, label="val loss")
        best = min(range(len(y)), key=y.__getitem__)
        ax.annotate(f"best {y[best]:.3f}", (x[best], y[best]), textcoords="offset points",
                    xytext=(5, 8), fontsize=8)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    x, y = _series(evals, "val_ppl")
    if x:
        ax2 = ax.twinx()
        ax2.plot(x, y, "s--", color="tab:red", ms=3, lw=1, alpha=0.6, label="val PPL")
        ax2.set_yscale("log")
        ax2.set_ylabel("val perplexity", color="tab:red")
        ax2.legend(loc="upper center", fontsize=8)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title("Loss")
    fig.tight_layout()
    return fig


def _plot_r_layers(trains, evals, plt, zones: str = DEFAULT_ZONES):
    """R per layer over training over the zone bands; None without R."""
    layers = [e for e in trains if e.get("R_layers") and "step" in e]
    if not layers:
        return None
    # one line per layer: reports of another layer count (a hand-edited history) are left out
    layers = [e for e in layers if len(e["R_layers"]) == len(layers[0]["R_layers"])]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    zone_bands(ax, zones)
    steps = [e["step"] for e in layers]
    for i in range(len(layers[0]["R_layers"])):
        ax.plot(steps, [e["R_layers"][i] for e in layers], lw=1.3, label=f"layer {i}")
    x, y = _series(evals, "val_R")
    if x:
        ax.plot(x, y, "ko--", ms=3, lw=1, label="val R (mean)")
    ax.set_xlabel("step")
    ax.set_ylabel("R (order parameter)")
    ax.set_title("R per layer over training, with zones")
    ax.legend(loc="upper left", fontsize=8, ncol=2)
    fig.tight_layout()
    return fig


def _plot_u(trains, evals, plt):
    """v3's u over training, its bounds, and the share of positions at a bound; None
    without u."""
    x, y = _series(trains, "u")
    if not x:
        return None
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot(x, y, lw=1.3, label="u_val (train)")
    xv, yv = _series(evals, "val_u")
    if xv:
        ax.plot(xv, yv, "o--", ms=3, label="u (val)")
    for bound in (0.1, 10.0):
        ax.axhline(bound, color="tab:red", ls=":", lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("u (bistable regime 0.1 .. 10)")
    xb, yb = _series(trains, "u_at_bound")
    if xb:
        ax2 = ax.twinx()
        shares = [100 * v for v in yb]
        ax2.plot(xb, shares, color="tab:gray", lw=0.8, alpha=0.7)
        # a share is never negative: with every value 0 matplotlib would centre the axis on 0
        ax2.set_ylim(0, max(1.0, 1.05 * max(shares)))
        ax2.set_ylabel("% positions at the bound", color="tab:gray")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title("u_val")
    fig.tight_layout()
    return fig


def plot_intervention(sweep: dict, path: Path, plt, title: str = "") -> Path:
    rows = [r for r in sweep["summary"] if r["force_r"] is not None]
    free = next((r for r in sweep["summary"] if r["force_r"] is None), None)
    if not rows:
        raise PlotError("the intervene JSON has no forced values")
    x = [r["force_r"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(x, [r["kl_to_free"] for r in rows], "o-", lw=1.8)
    ax1.set_xlabel("forced R")
    ax1.set_ylabel("KL(forced || free)  (nats)")
    ax1.set_title("Next-token change")
    if free and free.get("r_mean") is not None:
        ax1.axvline(free["r_mean"], color="tab:gray", ls="--", lw=1, label="free-run R")
        ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    ax2.plot(x, [r["entropy"] for r in rows], "o-", lw=1.8, label="entropy (nats)")
    if free:
        ax2.axhline(free["entropy"], color="tab:gray", ls="--", lw=1, label="free-run entropy")
    ax2.plot(x, [r["distinct_2"] for r in rows], "s:", lw=1.2, label="distinct-2 of samples")
    ax2.plot(x, [r["changed"] for r in rows], "^:", lw=1.2, label="share of samples changed")
    ax2.set_xlabel("forced R")
    ax2.set_title("Entropy and samples")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    n = len(sweep.get("prompts", []))
    fig.suptitle(f"R intervention sweep{': ' + title if title else ''} ({n} prompts)")
    fig.tight_layout()
    return _save(fig, path, plt)


def _save(fig, path: Path, plt) -> Path:
    """Write the PNG atomically: a failure (a full disk) leaves any earlier one whole."""
    try:
        with atomic_open(path, "wb") as f:
            fig.savefig(f, dpi=120, format="png")
    finally:
        plt.close(fig)
    return path


def plot_run(run_dir, out_dir=None, intervene_files=(), zones: str = DEFAULT_ZONES) -> list:
    """Write every figure the run folder (and intervene JSON files) can give, R over the bands
    of zone table `zones`; their paths."""
    zone_table(zones)  # an unknown table is refused before anything is written
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PlotError(f"{run_dir} is not a folder")
    plt = pyplot()
    out_dir = Path(out_dir) if out_dir else run_dir / "plots"
    created = _make_out_dir(out_dir)
    try:
        written = _plot_all(run_dir, out_dir, intervene_files, plt, zones)
    except BaseException:
        if created:  # nothing plotted: leave no empty folder behind
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    return written


def _make_out_dir(out_dir: Path) -> bool:
    """Create the PNGs' folder; True if it is new. PlotError naming it where it cannot be one
    (a file of that name is never replaced)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise PlotError(f"{out_dir} exists and is not a folder (plot writes its PNGs into a "
                        "folder): choose another --out, or remove that file")
    created = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PlotError(f"cannot create the plot folder {out_dir}: {e.strerror or e}") from None
    return created


def _plot_all(run_dir: Path, out_dir: Path, intervene_files, plt, zones: str) -> list:
    written = plot_training(read_history(run_dir), out_dir, plt, zones)
    files = [Path(f) for f in intervene_files] or sorted(run_dir.glob("*intervene*.json"))
    for i, f in enumerate(files):
        try:
            sweep = json.loads(Path(f).read_text())
        except (OSError, ValueError) as e:
            raise PlotError(f"cannot read intervene JSON {f}: {e}") from None
        if not isinstance(sweep, dict) or "summary" not in sweep:
            raise PlotError(f"{f} is not an `mlx-kssm intervene --json` file (no 'summary')")
        name = "intervene.png" if len(files) == 1 else f"intervene_{i + 1}.png"
        written.append(plot_intervention(sweep, out_dir / name, plt, Path(f).stem))
    if not written:
        raise PlotError(f"nothing to plot in {run_dir}: no history.jsonl with training events "
                        "and no intervene JSON")
    return written
