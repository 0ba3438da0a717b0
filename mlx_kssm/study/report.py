"""A study's summary (per model, over seeds), study.md and the plots.

Over seeds, every figure is a mean with a 95% Student-t CI (`stats.t_interval`: a few
independent training seeds are too few for a bootstrap); within one run, every causality
effect carries the suite's 95% bootstrap CI over held-out windows (docs/causality.md).
"""

from __future__ import annotations

import io
from pathlib import Path

from .._files import atomic_write_bytes, atomic_write_text
from ..probe import stats
from .variants import describe

# effect sizes of the causality suite: (key, column title, how to read it off a suite result)
EFFECTS = (
    ("r_std", "std(R)", lambda c: c["variance"]["r_std"]),
    ("kl", "KL forced (nats/token)", lambda c: c["intervention"]["mean_kl"]),
    ("kl_random_init", "random-init KL", lambda c: _random_init(c, "wired_in", "mean_kl")),
    ("kl_gain", "KL - random-init", lambda c: _random_init(c, "learned", "difference")),
    ("r_entropy_mean", "r(R, entropy), layer mean",
     lambda c: c["correlation"]["layer_mean"]["r_within"]),
)
# verdicts shown per seed: (key, column title, how to read it off a suite result)
VERDICTS = (
    ("variance", "1 variance", lambda c: c["variance"]["verdict"]),
    ("intervention", "2 intervention", lambda c: c["intervention"]["verdict"]),
    ("wired_in", "2a wired in", lambda c: _random_init(c, "wired_in", "verdict")),
    ("learned", "2b learned to use it", lambda c: _random_init(c, "learned", "verdict")),
    ("correlation", "3 correlation", lambda c: c["correlation"]["verdict"]),
    ("overall", "overall", lambda c: c["verdict"]),
)
SHORT = {"PASS": "P", "FAIL": "F", "INCONCLUSIVE": "I", None: "-"}


def _random_init(c: dict, part: str, key: str):
    base = c["intervention"].get("random_init")
    return None if base is None else base[part][key]


def _applicable(evaluation: dict) -> dict | None:
    c = evaluation.get("causality")
    return c if c and c.get("applicable") else None


# ---------------------------------------------------------------- summary


def summarize(entries: list, models: list) -> dict:
    """model -> seeds, failed seeds, mean + CI of val loss / PPL / tokens/s / each effect
    (each per-layer r too), and each seed's verdicts."""
    return {model: _summarize_model([e for e in entries if e["model"] == model])
            for model in models if any(e["model"] == model for e in entries)}


def _summarize_model(entries: list) -> dict:
    done = [e for e in entries if "evaluation" in e]
    out = {"seeds": [e["seed"] for e in done],
           "failed_seeds": [e["seed"] for e in entries if "evaluation" not in e],
           "n_parameters": next((e.get("n_parameters") for e in entries
                                 if e.get("n_parameters")), None),
           "learning_rate": next((e.get("learning_rate") for e in entries
                                  if e.get("learning_rate")), None),
           "weight_decay": next((e["weight_decay"] for e in entries
                                 if e.get("weight_decay") is not None), None)}
    for key in ("val_loss", "val_ppl"):
        out[key] = _interval([e["evaluation"][key] for e in done])
    out["tokens_per_sec"] = _interval([e["tokens_per_sec"] for e in done
                                       if e.get("tokens_per_sec")])
    suites = [_applicable(e["evaluation"]) for e in done]
    suites = [c for c in suites if c is not None]
    out["causality_applicable"] = bool(suites)
    out["effects"] = {key: _interval([get(c) for c in suites if get(c) is not None])
                      for key, _, get in EFFECTS}
    n_layers = max((len(c["correlation"]["per_layer"]) for c in suites), default=0)
    out["effects"].update({f"r_entropy_layer_{l}": _interval(
        [c["correlation"]["per_layer"][l]["r_within"] for c in suites]) for l in range(n_layers)})
    out["verdicts"] = {key: [get(c) for c in suites] for key, _, get in VERDICTS}
    return out


def _interval(values: list) -> dict | None:
    return stats.t_interval(values) if values else None


# ---------------------------------------------------------------- study.md


def _pm(interval: dict | None, fmt: str = ".4f") -> str:
    if interval is None:
        return "—"
    if interval["ci"] is None:
        return f"{interval['mean']:{fmt}} (1 seed)"
    return f"{interval['mean']:{fmt}} ± {interval['half_width']:{fmt.lstrip('+')}}"


def _table(header: list, rows: list) -> list:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(x) for x in row) + " |" for row in rows]


def loss_table(summary: dict) -> list:
    rows = [[m, len(s["seeds"]), _pm(s["val_loss"]), _pm(s["val_ppl"], ".2f"),
             format(s["learning_rate"], "g") if s.get("learning_rate") else "—",
             "—" if s.get("weight_decay") is None else format(s["weight_decay"], "g"),
             ", ".join(str(x) for x in s["failed_seeds"]) or "—"] for m, s in summary.items()]
    return _table(["model", "seeds", "val loss (nats/token)", "val PPL", "learning rate",
                   "weight decay", "diverged seeds"], rows)


def effects_table(summary: dict) -> list:
    n_layers = max((sum(k.startswith("r_entropy_layer_") for k in s["effects"])
                    for s in summary.values()), default=0)
    header = ["model"] + [title for _, title, _ in EFFECTS] + [
        f"r(R, entropy), layer {l}" for l in range(n_layers)]
    rows = []
    for model, s in summary.items():
        if not s["causality_applicable"]:
            rows.append([model] + ["n/a"] * (len(header) - 1))
            continue
        cells = [_pm(s["effects"][key], ".4g") for key, _, _ in EFFECTS]
        cells += [_pm(s["effects"].get(f"r_entropy_layer_{l}"), "+.3f") for l in range(n_layers)]
        rows.append([model] + cells)
    return _table(header, rows)


def verdicts_table(summary: dict) -> list:
    rows = [[m] + [" ".join(SHORT[v] for v in s["verdicts"][key]) if s["causality_applicable"]
                   else "n/a" for key, _, _ in VERDICTS] for m, s in summary.items()]
    return _table(["model"] + [title for _, title, _ in VERDICTS], rows)


def speed_table(summary: dict) -> list:
    rows = [[m, f"{s['n_parameters']:,}" if s["n_parameters"] else "—",
             _pm(s["tokens_per_sec"], ".0f")] for m, s in summary.items()]
    return _table(["model", "parameters", "training tokens/s"], rows)


def seed_table(entries: list) -> list:
    """Every seed's effects with the suite's bootstrap CIs, p-values and verdicts."""
    rows = []
    for e in entries:
        c = _applicable(e["evaluation"]) if "evaluation" in e else None
        if c is None:
            continue
        for name, effect, ci, p, verdict in _seed_rows(c):
            rows.append([e["model"], e["seed"], name, f"{effect:.4g}",
                         f"[{ci[0]:.4g}, {ci[1]:.4g}]", "—" if p is None else f"{p:.2g}", verdict])
    return _table(["model", "seed", "test", "effect", "95% CI (bootstrap)", "p", "verdict"], rows)


def _seed_rows(c: dict) -> list:
    v, i, corr = c["variance"], c["intervention"], c["correlation"]
    rows = [("1 std(R)", v["r_std"], v["ci"], None, v["verdict"]),
            ("2 KL forced", i["mean_kl"], i["ci"], i["p"], i["verdict"])]
    base = i.get("random_init")
    if base is not None:
        w, l = base["wired_in"], base["learned"]
        rows += [("2a random-init KL", w["mean_kl"], w["ci"], w["p"], w["verdict"]),
                 ("2b KL - random-init", l["difference"], l["ci"], l["p"], l["verdict"])]
    rows += [(f"3 r {t['name']}", t["r_within"], t["ci"], t["p"], t["verdict"])
             for t in corr["per_layer"]]
    return rows


def variant_lines(variants: dict) -> list:
    """The variants (models that are a preset with options changed), one line each."""
    if not variants:
        return []
    return ["## Variants", "", *(f"- {describe(name, v)}" for name, v in variants.items()), ""]


def study_markdown(record: dict) -> str:
    config, summary = record["config"], record["summary"]
    env = record["commands"][-1]["environment"] if record["commands"] else {}
    lr = config["learning_rate"]
    lr_text = "each model's preset default" if lr is None else format(lr, "g")
    # a study sets no weight decay; a variant may set its own
    lr_text += ", weight decay each model's preset default (a variant's own where it names one)"
    lines = [f"# Study: {config['preset']} and its comparisons", "",
             f"- data: `{config['data']}` (meta.json sha256 {config['data_fingerprint'][:12]})",
             f"- budget: {config['max_steps']} steps x batch {config['batch_size']} x seq "
             f"{config['seq_len']}, learning rate {lr_text}, warmup "
             f"{config['warmup_steps']}; seeds 0..{config['seeds'] - 1} (init and batches)",
             f"- evaluation: {config['eval_batches']} x {config['batch_size']} val windows of "
             f"{config['seq_len']} tokens; causality suite on {config['sequences']} held-out "
             "windows (docs/causality.md)",
             f"- machine: {machine_line(env)}",
             f"- command: `{record['commands'][-1]['equivalent']}`" if record["commands"] else "",
             f"- statistics: {record['statistics']}", ""]
    lines += variant_lines(config.get("variants") or {})
    lines += ["## Validation loss and perplexity (mean ± 95% CI over seeds)", ""]
    lines += loss_table(summary)
    lines += ["", "## Causality effect sizes (mean ± 95% CI over seeds)", "",
              "KL: next-token KL between R forced low and high; random-init: the same "
              "architecture at its step-0 weights, on the same windows; r: within-sequence "
              "correlation of R with next-token entropy (negative: high R, confident).", ""]
    lines += effects_table(summary)
    lines += ["", "## Causality verdicts, one letter per seed (P PASS, F FAIL, "
              "I INCONCLUSIVE)", ""]
    lines += verdicts_table(summary)
    lines += ["", "## Speed (mean ± 95% CI over seeds)", ""]
    lines += speed_table(summary)
    lines += ["", "## Every seed: effects with their bootstrap CIs over held-out windows", ""]
    lines += seed_table(record["runs"])
    return "\n".join(lines) + "\n"


def machine_line(env: dict) -> str:
    blas = env.get("blas", {})
    blas_text = blas.get("library") if blas.get("active") else f"MLX's bundled ({blas.get('reason')})"
    return (f"{env.get('cpu', '?')} ({env.get('cpu_count', '?')} cores), {env.get('platform', '?')}"
            f"; MLX {env.get('mlx', '?')} on {env.get('backend', '?')}; BLAS {blas_text}")


# ---------------------------------------------------------------- writing


def write_report(study_dir: Path, record: dict, echo=print) -> list:
    """study.md, and the plots when matplotlib is installed; the paths written."""
    path = study_dir / "study.md"
    text = study_markdown(record)
    atomic_write_text(path, text)
    written = [path]
    from ..probe.plot import PlotError
    try:
        written += plot_study(record, study_dir / "plots")
    except PlotError as e:
        echo(f"note: no plots ({e})")
    echo(text)
    for p in written:
        echo(f"wrote {p}")
    return written


def plot_study(record: dict, out_dir: Path) -> list:
    from ..probe.plot import pyplot
    plt = pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    return [plot_loss_curves(record, out_dir / "loss_curves.png", plt),
            plot_effects(record, out_dir / "effects.png", plt)]


def _colors(models: list, plt) -> dict:
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {m: cycle[i % len(cycle)] for i, m in enumerate(models)}


def plot_loss_curves(record: dict, path: Path, plt) -> Path:
    """Validation loss against step, one line per seed, one color per model; models
    evaluated untrained as a dashed level."""
    models = list(record["summary"])
    colors = _colors(models, plt)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for model in models:
        for i, e in enumerate(e for e in record["runs"] if e["model"] == model):
            label = model if i == 0 else None
            if e.get("val_curve"):
                steps, losses = zip(*e["val_curve"])
                ax.plot(steps, losses, "o-", ms=3, lw=1.2, color=colors[model], label=label)
            elif "evaluation" in e:
                ax.axhline(e["evaluation"]["val_loss"], ls="--", lw=1, color=colors[model],
                           label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("val loss (nats/token)")
    ax.set_title("Validation loss per model (one line per seed)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_png(fig, path, plt)


def plot_effects(record: dict, path: Path, plt) -> Path:
    """Per model, each seed's effect with its bootstrap CI: intervention KL (log scale, with
    its threshold), KL gain over random init (threshold 0), r(R, entropy) per layer (+-0.05)."""
    colors = _colors(list(record["summary"]), plt)  # the same colors as the loss curves
    models = [m for m, s in record["summary"].items() if s["causality_applicable"]]
    suites = {m: [c for e in record["runs"] if e["model"] == m and "evaluation" in e
                  for c in [_applicable(e["evaluation"])] if c] for m in models}
    first = next((c for cs in suites.values() for c in cs), None)
    kl_min = first["intervention"]["threshold"] if first else 0.0
    r_min = first["correlation"]["threshold"] if first else 0.0
    panels = (("KL forced (nats/token)", _kl_points, (kl_min,), "log"),
              ("KL - random-init KL", _gain_points, (0.0,), "symlog"),
              ("r(R, entropy), each layer", _corr_points, (-r_min, r_min), "linear"))
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.5))
    for ax, (title, points, thresholds, scale) in zip(axes, panels):
        for x, model in enumerate(models):
            pts = [p for c in suites[model] for p in points(c)]
            for j, (value, (lo, hi), layer) in enumerate(pts):
                xpos = x + (j - (len(pts) - 1) / 2) * 0.08
                ax.errorbar(xpos, value, yerr=[[value - lo], [hi - value]], ms=4, capsize=2,
                            fmt=MARKERS[layer % len(MARKERS)], color=colors[model])
        for threshold in thresholds:
            ax.axhline(threshold, color="tab:red", ls=":", lw=1)
        ax.set_yscale(scale, **({"linthresh": 1e-3} if scale == "symlog" else {}))
        ax.set_xticks(range(len(models)))
        ax.set_xticklabels(models, rotation=20, ha="right", fontsize=8)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[2].set_xlabel("marker: " + ", ".join(f"{m} layer {i}" for i, m in enumerate(MARKERS)),
                       fontsize=8)
    fig.suptitle("Causality effects: each seed with its 95% bootstrap CI (red: thresholds)")
    return save_png(fig, path, plt)


MARKERS = ("o", "s", "^", "D")  # per layer in the correlation panel


def save_png(fig, path: Path, plt) -> Path:
    """Render in memory, then write atomically: a killed study never leaves half a PNG."""
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _kl_points(c: dict) -> list:
    return [(c["intervention"]["mean_kl"], c["intervention"]["ci"], 0)]


def _gain_points(c: dict) -> list:
    base = c["intervention"].get("random_init")
    return [] if base is None else [(base["learned"]["difference"], base["learned"]["ci"], 0)]


def _corr_points(c: dict) -> list:
    return [(t["r_within"], t["ci"], l) for l, t in enumerate(c["correlation"]["per_layer"])]
