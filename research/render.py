"""Rebuild research/RESULTS.md and README.md's results table from the committed results.

    python research/render.py           # rewrite both
    python research/render.py --check   # exit 1 (and say which) if either is out of date

The record is a list of sections (research/sections.toml). A section is a title, a prose file
(research/prose/*.md, hand-written narrative) and a list of tables, each reading one JSON file
under research/results/. A line `{{table NAME}}` in the prose places table NAME there; tables
the prose does not place follow it. research/README.md explains how to add a section.
Standard library only, so it runs in a clean clone without the package installed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import statistics
import sys
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS_MD = HERE / "RESULTS.md"
README = ROOT / "README.md"
README_BEGIN, README_END = "<!-- results:begin -->", "<!-- results:end -->"
PLACEHOLDER = re.compile(r"^\{\{table (\S+)\}\}$")


def load(name: str):
    """One results JSON, by its path under research/results/."""
    return json.loads((HERE / "results" / name).read_text())


# ---------------------------------------------------------------- table kinds

def _md_table(header: list, align: list, rows: list) -> list:
    sep = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
    return ["| " + " | ".join(header) + " |", sep] + ["| " + " | ".join(r) + " |" for r in rows]


def mean_sd(values: list, digits: int = 4) -> str:
    """'mean ± sd' (sample sd over seeds), or the one value."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _seeds_cell(row: dict) -> str:
    values = " ".join(f"{v:.4f}" for v in row["val_loss"])
    seeds = row["seeds"]
    if len(seeds) == 1:
        return f"{values} (seed {seeds[0]})"
    if seeds == [0, 1, 2]:
        return values
    return f"{values} (seeds {', '.join(map(str, seeds))})"


def _loss_cell(row: dict) -> str:
    """The measured mean ± sd where the JSON keeps it (computed from unrounded losses when the
    runs ended), else computed here from the per-seed losses it holds."""
    if "val_loss_mean" not in row:
        return mean_sd(row["val_loss"])
    if row.get("val_loss_sd") is None:
        return f"{row['val_loss_mean']:.4f}"
    return f"{row['val_loss_mean']:.4f} ± {row['val_loss_sd']:.4f}"


def runs_table(data: dict, spec: dict) -> list:
    """kind "runs": one row per variant, its val loss per seed and their mean ± sd."""
    header = ["row", "what changes", "params", "val loss (mean ± std over the seeds run)",
              "each seed", "val R"]
    rows = [[f"`{r['row']}`", r["what"], f"{r['params']:,}", _loss_cell(r),
             _seeds_cell(r), "—" if r.get("val_r") is None else f"{r['val_r']:.3f}"]
            for r in data["rows"]]
    return _md_table(header, ["l", "l", "r", "l", "l", "r"], rows)


def cells_table(data: dict, spec: dict) -> list:
    """kind "table": rows of records (dicts) or of cells (lists, under data["columns"]).

    With records, the spec's `columns` picks them: [header, key] or [header, key, format]
    (a str.format spec such as "{:.3f}"); without it every key of the first record is shown."""
    rows = data["rows"]
    if rows and isinstance(rows[0], dict):
        columns = spec.get("columns") or [[k, k] for k in rows[0]]
        header = [c[0] for c in columns]
        cells = [[_cell(r.get(c[1]), c[2] if len(c) > 2 else "{}") for c in columns] for r in rows]
    else:
        header, cells = data["columns"], [[str(c) for c in r] for r in rows]
    align = spec.get("align") or data.get("align") or ["l"] * len(header)
    return _md_table(header, align, cells)


def _cell(value, fmt: str) -> str:
    return "—" if value is None else fmt.format(value)


def json_block(data, spec: dict) -> list:
    """kind "json": the file itself, as a fenced block (a result with no table shape)."""
    return ["```json", json.dumps(data, indent=1), "```"]


def paired_lines(data: dict, spec: dict) -> list:
    """kind "pairs": per-seed differences of two "runs" rows, one line per pair.

    spec["pairs"]: [[row_a, row_b, label], ...]; row_b is read from spec["json_b"] when
    given (else the same file). Seeds are those of row_a that row_b also ran."""
    other = load(spec["json_b"]) if "json_b" in spec else data
    lines = []
    for name_a, name_b, label in spec["pairs"]:
        a, b = _run(data, name_a), _run(other, name_b)
        by_seed = dict(zip(b["seeds"], b["val_loss"]))
        diffs = [va - by_seed[s] for s, va in zip(a["seeds"], a["val_loss"]) if s in by_seed]
        lines += [f"Paired by seed (same batches), {label}: "
                  + ", ".join(f"{d:+.3f}" for d in diffs)
                  + f"; mean {statistics.mean(diffs):+.3f} ± {statistics.stdev(diffs):.3f} (sd).", ""]
    return lines[:-1]


def _run(data: dict, name: str) -> dict:
    return next(r for r in data["rows"] if r["row"] == name)


KINDS = {"runs": runs_table, "table": cells_table, "json": json_block, "pairs": paired_lines}


# ---------------------------------------------------------------- sections

def _gpu_report():
    """research/bench/gpu_report.py, which computes the GPU figures from their raw files."""
    spec = importlib.util.spec_from_file_location("gpu_report", HERE / "bench" / "gpu_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _gpu_section(section: dict) -> list:
    return _gpu_report().markdown(HERE / "results" / "gpu")[2:]  # its own title line dropped


def _scaling_section(section: dict) -> list:
    """The scaling study's tables from its summary (research/scaling.py writes it)."""
    data = load(section["json"])
    trained = [r for r in data["runs"] if r.get("params")]
    sizes = [s for s in data["sizes"] if any(r["size"] == s for r in trained)]
    return (_scaling_runs(trained, sizes) + [""] + _scaling_gaps(trained, sizes) + [""]
            + _scaling_lengths(data, trained, sizes) + [""])


def _by_model(trained: list, size: str) -> dict:
    models = {}
    for r in sorted(trained, key=lambda r: r["seed"]):
        if r["size"] == size:
            models.setdefault(r["model"], []).append(r)
    return models


def _scaling_runs(trained: list, sizes: list) -> list:
    rows = []
    for size in sizes:
        for model, runs in _by_model(trained, size).items():
            rows.append([model, f"{runs[0]['params']:,}", f"{runs[0]['non_embedding_params']:,}",
                         " ".join(f"{r['val_loss']:.4f}" for r in runs),
                         mean_sd([r["val_loss"] for r in runs]),
                         " ".join((r.get("verdict") or "n/a")[0] if r.get("verdict") else "n/a"
                                  for r in runs)])
    header = ["model", "parameters", "non-embedding", "val loss per seed", "mean ± sd",
              "causality per seed"]
    return _md_table(header, ["l", "r", "r", "l", "l", "l"], rows)


def _paired(a: list, b: list) -> str:
    pairs = {r["seed"]: r["val_loss"] for r in b}
    diffs = [r["val_loss"] - pairs[r["seed"]] for r in a if r["seed"] in pairs]
    if not diffs:
        return "—"
    each = " ".join(f"{d:+.3f}" for d in diffs)
    if len(diffs) == 1:
        return f"{each} (one seed)"
    return f"{each}; {statistics.mean(diffs):+.3f} ± {statistics.stdev(diffs):.3f}"


def _scaling_gaps(trained: list, sizes: list) -> list:
    rows = []
    for size in sizes:
        models = list(_by_model(trained, size).values())
        kssm = next((m for m in models if not m[0]["model"].startswith(("transformer", "control"))), [])
        attn = next((m for m in models if m[0]["model"].startswith("transformer")), [])
        control = next((m for m in models if m[0]["model"].startswith("control")), [])
        rows.append([size, f"{kssm[0]['non_embedding_params']:,}" if kssm else "—",
                     _paired(kssm, attn), _paired(kssm, control)])
    header = ["size", "K-SSM non-embedding", "K-SSM minus transformer, paired by seed",
              "K-SSM minus bolted control (+: the control's lead, the contract's price)"]
    return _md_table(header, ["l", "r", "l", "l"], rows)


def _scaling_lengths(data: dict, trained: list, sizes: list) -> list:
    seq = data["budget"]["seq_len"]
    factors = [str(f) for f in data["length_factors"]]
    rows = []
    for size in sizes:
        for model, runs in _by_model(trained, size).items():
            runs = [r for r in runs if r.get("length_loss")]
            if runs:
                rows.append([model] + [mean_sd([r["length_loss"][f] for r in runs], 3)
                                       for f in factors])
    header = ["model"] + [f"seq {seq * int(f)} ({f}x)" for f in factors]
    return _md_table(header, ["l"] + ["l"] * len(factors), rows)


GENERATORS = {"gpu_report": _gpu_section, "scaling": _scaling_section}


def render_table(spec: dict) -> list:
    return KINDS[spec.get("kind", "table")](load(spec["json"]), spec)


def render_section(section: dict) -> list:
    level = "#" * section.get("level", 2)
    lines = [f"{level} {section['title']}", ""]
    if "generator" in section:
        prose = (HERE / section["prose"]).read_text().rstrip("\n").split("\n") + [""] \
            if "prose" in section else []
        return lines + prose + GENERATORS[section["generator"]](section)
    tables = {t["name"]: t for t in section.get("table", [])}
    placed = set()
    prose = (HERE / section["prose"]).read_text().rstrip("\n").split("\n") if "prose" in section else []
    for line in prose:
        m = PLACEHOLDER.match(line.strip())
        if m:
            lines += render_table(tables[m.group(1)])
            placed.add(m.group(1))
        else:
            lines.append(line)
    for name, spec in tables.items():
        if name not in placed:
            lines += ["", *render_table(spec)]
    return lines + [""]


def render_record(config: dict) -> str:
    lines = [f"# {config['title']}", ""]
    if "intro" in config:
        lines += (HERE / config["intro"]).read_text().rstrip("\n").split("\n") + [""]
    for section in config["section"]:
        lines += render_section(section)
    return "\n".join(lines).rstrip("\n") + "\n"


# ---------------------------------------------------------------- README's table

def _summary_loss(entry: dict) -> str:
    """One model's val loss, read as the entry's `from` says:
    "runs": a "runs" JSON's row, mean ± sd (with the seed count);
    "field": a record's field as printed (the study's mean ± 95% CI), then `suffix`;
    "gpu": the best val loss of the GPU histories in results/gpu, mean ± sd;
    "scaling": one model's runs in the scaling summary, mean ± sd over seeds."""
    if entry["from"] == "scaling":
        runs = _scaling_runs_of(entry)
        if not runs:
            return "— (not run yet)"
        spread = "sd, " if len(runs) > 1 else ""
        return mean_sd([r["val_loss"] for r in runs], 3) + \
            f" ({spread}{len(runs)} seed{'s' if len(runs) > 1 else ''})"
    if entry["from"] == "gpu":
        runs = _gpu_report().quality(HERE / "results" / "gpu")[entry["key"]]
        return mean_sd([r["best"] for r in runs], 3) + f" (sd, {len(runs)} seeds, best)"
    data = load(entry["json"])
    if entry["from"] == "runs":
        row = _run(data, entry["key"])
        stat = (f"{row['val_loss_mean']:.3f} ± {row['val_loss_sd']:.3f}" if "val_loss_mean" in row
                else mean_sd(row["val_loss"], 3))
        return stat + f" (sd, {len(row['seeds'])} seeds)"
    record = next(r for r in data["rows"] if r["model"] == entry["key"])
    return record[entry["field"]] + entry.get("suffix", "")


def _scaling_runs_of(entry: dict) -> list:
    return sorted((r for r in load(entry["json"])["runs"]
                   if r["model"] == entry["key"] and r.get("val_loss") is not None),
                  key=lambda r: r["seed"])


def _summary_causality(entry: dict) -> str:
    if entry["from"] == "scaling":
        verdicts = [r.get("verdict") for r in _scaling_runs_of(entry)]
        return " ".join(v[0] for v in verdicts if v) or "n/a"
    if "causality_json" not in entry:
        return "—"
    data = load(entry["causality_json"])
    return next(r for r in data["rows"] if r["model"] == entry["key"])["overall"]


def summary_table(config: dict) -> str:
    """README's results table, one row per [[summary]] entry of sections.toml."""
    rows = [[e["setting"], e["label"], _summary_loss(e), _summary_causality(e)]
            for e in config.get("summary", [])]
    header = ["setting", "model", "val loss (nats/token)", "causality, per seed"]
    return "\n".join(_md_table(header, ["l"] * 4, rows)) + "\n"


def readme_with_table(readme: str, table: str) -> str:
    if README_BEGIN not in readme or README_END not in readme:
        raise SystemExit(f"Error: README.md lacks the {README_BEGIN} ... {README_END} markers")
    head, rest = readme.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    return f"{head}{README_BEGIN}\n{table}{README_END}{tail}"


# ---------------------------------------------------------------- main

def rendered() -> dict:
    """path -> the text this renderer writes there."""
    config = tomllib.loads((HERE / "sections.toml").read_text())
    out = {RESULTS_MD: render_record(config)}
    if README.is_file():
        out[README] = readme_with_table(README.read_text(), summary_table(config))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true",
                    help="write nothing; exit 1 if a rendered file differs from the committed one")
    args = ap.parse_args(argv)
    stale = []
    for path, text in rendered().items():
        current = path.read_text() if path.is_file() else None
        if current != text:
            stale.append(path)
            if not args.check:
                path.write_text(text)
    for path in stale:
        print(f"{'out of date' if args.check else 'rewrote'}: {path.relative_to(ROOT)}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
