"""report.html of `mlx-kssm validate`: one self-contained file (no external URL, no script),
readable offline. With matplotlib (the `plot` extra) its figures are inline base64 PNGs;
without it, tables only (the report says so)."""

from __future__ import annotations

import base64
import html
import io

STYLE = """body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em}td,th{border:1px solid #bbb;padding:.2em .6em;
text-align:left;font-size:90%}.PASS{color:#1a7f37}.FAIL{color:#c62828}.INCONCLUSIVE{color:#b26a00}
.na{color:#666}code,pre{background:#f4f4f4;padding:.1em .3em}pre{white-space:pre-wrap}"""


def _e(x) -> str:
    return html.escape(str(x))


def _verdict(v) -> str:
    if v is None:
        return '<b class="na">not judged / n/a</b>'
    return f'<b class="{_e(v)}">{_e(v)}</b>'


def _ci(x, fmt=".4f") -> str:
    if not x:
        return "—"
    return f"{x['mean']:{fmt}} [{x['ci'][0]:{fmt}}, {x['ci'][1]:{fmt}}]"


def _table(head, rows) -> str:
    out = ["<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"]
    out += ["<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows]
    return "".join(out) + "</table>"


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="figure" src="data:image/png;base64,{data}">'


def _errorbar(ax, xs, cis, label):
    means = [c["mean"] for c in cis]
    err = [[m - c["ci"][0] for m, c in zip(means, cis)], [c["ci"][1] - m for m, c in zip(means, cis)]]
    ax.errorbar(xs, means, yerr=err, marker="o", capsize=3, label=label)


def _figures(result, plt) -> dict:
    """Part name -> list of <img> tags."""
    figs = {}
    rob, base = result["parts"]["robustness"], result["baseline_parts"].get("robustness")
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for part, label in ((rob, "model"), (base, "baseline")):
        if part is None:
            continue
        rows = part["noise"]["rows"]
        _errorbar(axes[0], [r["scale"] for r in rows], [r["loss"] for r in rows], label)
        if rows[0]["r"]:
            _errorbar(axes[1], [r["scale"] for r in rows], [r["r"] for r in rows], label)
    axes[0].set(xlabel="weight noise (x RMS)", ylabel="val loss (nats/token)")
    axes[1].set(xlabel="weight noise (x RMS)", ylabel="mean R")
    for ax in axes:
        ax.legend()
    figs["robustness"] = [_png(fig)]
    plt.close(fig)
    clamp = result["parts"]["clamp_sweep"]
    if clamp["applicable"]:
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        _errorbar(ax, [r["u_floor"] for r in clamp["rows"]], [r["loss"] for r in clamp["rows"]],
                  "model")
        ax.set(xlabel="u floor (inference)", ylabel="val loss (nats/token)", xscale="log")
        figs["clamp_sweep"] = [_png(fig)]
        plt.close(fig)
    imgs = []
    for row in result["parts"]["inference"]["prompts"]:
        rs = [t["r"] for t in row["trace"]]
        if not rs or rs[0] is None:
            continue
        fig, ax = plt.subplots(figsize=(9, 2.2))
        ax.plot(rs, marker=".", label="R (layer mean)")
        us = [t["u"] for t in row["trace"] if t["u"] is not None]
        if us:
            ax.plot(us, marker=".", label="u")
        ax.set(title=row["prompt"][:60], xlabel="generated token", ylim=(0, None))
        ax.legend()
        imgs.append(_png(fig))
        plt.close(fig)
    figs["inference"] = imgs
    return figs


def _causality(part) -> str:
    if not part.get("applicable", True):
        return f"<p>Not applicable: {_e(part.get('reason', ''))}</p>"
    i = part["intervention"]
    rows = [("1 variance: std(R)", f"{part['variance']['r_std']:.4f}",
             part["variance"]["ci"], part["variance"]["verdict"]),
            ("2 intervention: KL", f"{i['mean_kl']:.4g}", i["ci"], i["verdict"])]
    if i.get("random_init"):
        w, l = i["random_init"]["wired_in"], i["random_init"]["learned"]
        rows += [("2a wired in (random-init KL)", f"{w['mean_kl']:.4g}", w["ci"], w["verdict"]),
                 ("2b learned to use it (model - random-init KL)", f"{l['difference']:+.4g}",
                  l["ci"], l["verdict"])]
    for t in part["correlation"]["per_layer"]:
        rows.append((f"3 correlation, {t['name']}: r(R, entropy)", f"{t['r_within']:+.4f}",
                     t["ci"], t["verdict"]))
    body = "".join(f"<tr><td>{_e(n)}</td><td>{_e(v)}</td><td>[{ci[0]:.4g}, {ci[1]:.4g}]</td>"
                   f"<td>{_verdict(vd)}</td></tr>" for n, v, ci, vd in rows)
    return ("<table><tr><th>test</th><th>effect</th><th>95% CI</th><th>verdict</th></tr>"
            + body + "</table>")


def _robustness(part, base) -> str:
    noise = part["noise"]
    base_rows = {r["scale"]: r for r in base["noise"]["rows"]} if base else {}
    rows = [(r["scale"], _ci(r["loss"]), _ci(r["loss_rise"], "+.4f"),
             f"{r['relative_rise']['mean']:+.2%}", _ci(r["r"]),
             _ci(base_rows[r["scale"]]["loss_rise"], "+.4f") if r["scale"] in base_rows
             else "—") for r in noise["rows"]]
    text = (f"<p>Noise: {_e(noise['noise'])}; judged at scale {noise['judged_scale']}: the "
            f"loss rise must stay below {noise['max_rise']:g} nats/token.</p>")
    text += _table(("noise scale", "val loss", "loss rise (nats/token)", "relative rise",
                    "mean R", "baseline's rise"), rows)
    temps = [(r["temperature"], _ci(r["loss"]), _ci(r["generation_r"]),
              "—" if r["distinct_2"] is None else f"{r['distinct_2']:.2f}")
             for r in part["temperature"]["rows"]]
    return text + "<p>Temperature sweep (reported, not judged):</p>" + _table(
        ("temperature", "val loss of softmax(logits / T)", "generation R", "distinct-2"), temps)


def _behaviour(part, base) -> str:
    rows = [("model", f"{part['score']:.3f} [{part['score_ci'][0]:.3f}, {part['score_ci'][1]:.3f}]",
             f"{part['paired_difference']:.3f} [{part['paired_difference_ci'][0]:.3f}, "
             f"{part['paired_difference_ci'][1]:.3f}]")]
    if base:
        rows.append(("baseline", f"{base['score']:.3f} [{base['score_ci'][0]:.3f}, "
                     f"{base['score_ci'][1]:.3f}]", f"{base['paired_difference']:.3f}"))
    text = ("<p>A behavioural score of the generated text (share of completions with an action "
            "verb in their first words), not a measure of agency.</p>"
            + _table(("", "behavioural score", "paired prompts differ"), rows))
    if part.get("against_baseline"):
        c = part["against_baseline"]
        text += f"<p>model − baseline: {c['difference']:+.3f} [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}]</p>"
    else:
        text += "<p>Not judged: no baseline was given.</p>"
    examples = [(c["prompt"], c["text"], "yes" if c["action_verb"] else "no")
                for c in part["completions"][:10]]
    return text + _table(("prompt", "completion", "action verb"), examples)


def _clamp(part) -> str:
    if not part["applicable"]:
        return f"<p>{_e(part['reason'])}</p>"
    rows = [(r["u_floor"], f"{r['ppl']:.3f}", _ci(r["loss"]), f"{r['u']:.3f}",
             _ci(r["change"], "+.4f")) for r in part["rows"]]
    return _table(("u floor", "PPL", "val loss", "mean u", "loss change"), rows)


def _inference(part) -> str:
    out = []
    for row in part["prompts"]:
        out.append(f"<h3>{_e(row['prompt'])}</h3><pre>{_e(row['prompt'])}"
                   f"<b>{_e(row['text'])}</b></pre>")
        trace = [(i, repr(t["token"]), "—" if t["r"] is None else f"{t['r']:.3f}",
                  t["zone"] or "—", "—" if t["u"] is None else f"{t['u']:.3f}")
                 for i, t in enumerate(row["trace"])]
        out.append(_table(("#", "token", "R", "zone", "u"), trace))
    return "".join(out)


SECTIONS = (("causality", "Causality", lambda r: _causality(r["parts"]["causality"])),
            ("robustness", "Robustness", lambda r: _robustness(
                r["parts"]["robustness"], r["baseline_parts"].get("robustness"))),
            ("behaviour", "Behavioural probes", lambda r: _behaviour(
                r["parts"]["behaviour"], r["baseline_parts"].get("behaviour"))),
            ("clamp_sweep", "Clamp sweep (v3)", lambda r: _clamp(r["parts"]["clamp_sweep"])),
            ("inference", "Inference suite", lambda r: _inference(r["parts"]["inference"])))


def report_html(result: dict) -> str:
    """The report's text (module docstring)."""
    from .plot import PlotError, pyplot

    try:
        figures, note = _figures(result, pyplot()), ""
    except PlotError:
        figures, note = {}, "<p>Tables only: install the plot extra for figures.</p>"
    ev = result["evaluation"]
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>mlx-kssm "
             f"validate: {_e(result['model'])}</title><style>{STYLE}</style></head><body>",
             f"<h1>Validation report</h1><p>model <code>{_e(result['model'])}</code>, data "
             f"<code>{_e(result['data'])}</code>"
             + (f", baseline <code>{_e(result['baseline'])}</code>" if result["baseline"] else "")
             + f"</p><p>val loss {ev['val_loss']:.4f}, PPL {ev['val_ppl']:.2f}</p>",
             "".join(f"<p>warning: {_e(note)}</p>" for note in ev.get("notes", [])),
             f"<h2 id='overall'>Overall: {_verdict(result['verdict'])} (exit status "
             f"{result['exit_status']})</h2>", note]
    parts.append("<table><tr><th>part</th><th>verdict</th></tr>" + "".join(
        f"<tr><td><a href='#{key}'>{_e(title)}</a></td>"
        f"<td>{_verdict(result['parts'][key].get('verdict'))}</td></tr>"
        for key, title, _ in SECTIONS) + "</table>")
    for key, title, render in SECTIONS:
        parts.append(f"<h2 id='{key}'>{_e(title)}: "
                     f"{_verdict(result['parts'][key].get('verdict'))}</h2>")
        parts.append(render(result))
        parts += figures.get(key, [])
    parts.append("</body></html>\n")
    return "\n".join(parts)
