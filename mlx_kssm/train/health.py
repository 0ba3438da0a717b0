"""Health gates: the NaN guard, the explosion flag, and the staged-training verdicts of the
decision matrix of docs/training.md ("Staged training").

Verdicts are computed from history records (the dicts written to history.jsonl), so the
same function judges a live run, a finished run and a synthetic test history.
"""

from __future__ import annotations

import math

from ..models import DEFAULT_ZONES, GOLDILOCKS_R, r_zone
from ..models.bistable import U_HI, U_LO
from ..probe.quality import GIBBERISH, KNOWN_WORDS

HEALTHY, WARNING, FAILURE, NA = "healthy", "warning", "failure", "n/a"
_RANK = {NA: 0, HEALTHY: 1, WARNING: 2, FAILURE: 3}

# stage -> (healthy below, failure above) for val PPL; between is the warning band
PPL_BANDS = {2: (1000, 2000), 3: (500, 1000), 4: (300, 500), 5: (300, 500)}
# stage -> (healthy at >= this many zones, warning at >= this many); fewer is a failure
ZONE_BANDS = {3: (2, 1), 4: (3, 2), 5: (3, 2)}
R_HEALTHY, R_FAILURE = 0.01, 0.001  # R > 0.01 healthy, 0.001-0.01 warning
U_NEAR = 1.2  # u within this factor of a bound is "near the clamps"
U_AT_BOUND_WARN, U_AT_BOUND_FAIL = 0.1, 0.5  # share of positions at the bound
FLAT_TOLERANCE = 0.02  # relative change of the train loss below which it is "flat"
GOLDILOCKS = (GOLDILOCKS_R, 0.20)  # stage 5: R >= 0.30 healthy, 0.20-0.30 warning
MIN_SAMPLE_WORDS = 5  # fewer words in an evaluation's samples are not judged for gibberish
# stage 4, u's course over the second half of the stage's reports (bistable models):
U_LOCKED = 0.01  # relative spread (max - min) / mean below this: locked
U_EDGE = 0.5  # u between the near-clamp band and this (within 5x of the floor): at the edge
U_EDGE_SHARE = 0.5  # reports at the edge needed for "edge-surfing"
MIN_U_REPORTS = 4
# stage 5's behavioural probe (probe/behaviour.py), run once where the stage ends: seeds per
# prompt and tokens per completion, few enough to take seconds (validate runs the full probe)
BEHAVIOUR_SAMPLES, BEHAVIOUR_TOKENS = 2, 16
# rows whose FAILURE stops a run at a mid-stage evaluation: no further step of the stage can
# be expected to repair them. The others (val PPL, zones, samples, Goldilocks) judge where a
# stage ends, so they act only at its end.
STOP_MIDSTAGE = ("loss", "u_val", "R")


def is_finite(x) -> bool:
    return x is not None and math.isfinite(float(x))


class ExplosionDetector:
    """Flags a loss above `factor` x the running minimum of reported losses."""

    def __init__(self, factor: float = 3.0):
        self.factor = factor
        self.minimum = math.inf

    def check(self, loss: float) -> str | None:
        flagged = None
        if self.minimum < math.inf and loss > self.factor * self.minimum:
            flagged = (f"loss exploding: {loss:.4f} > {self.factor:g} x running minimum "
                       f"{self.minimum:.4f}")
        self.minimum = min(self.minimum, loss)
        return flagged


def _row(metric, verdict, value, detail):
    return {"metric": metric, "verdict": verdict, "value": value, "detail": detail}


def loss_trend(train: list) -> dict:
    losses = [r.get("loss") for r in train]
    if any(not is_finite(x) for x in losses):
        return _row("loss", FAILURE, None, "NaN/inf loss")
    if len(losses) < 2:
        return _row("loss", NA, None, "fewer than 2 reports")
    q = max(1, len(losses) // 4)
    first, last = sum(losses[:q]) / q, sum(losses[-q:]) / q
    change = (last - first) / max(abs(first), 1e-12)
    value = round(change, 4)
    if change < -FLAT_TOLERANCE:
        return _row("loss", HEALTHY, value, f"descending {first:.3f} -> {last:.3f}")
    if change <= FLAT_TOLERANCE:
        return _row("loss", WARNING, value, f"flat {first:.3f} -> {last:.3f}")
    return _row("loss", FAILURE, value, f"increasing {first:.3f} -> {last:.3f}")


def val_ppl_row(stage: int, evals: list) -> dict:
    if not evals:
        return _row("val_ppl", NA, None, "not evaluated yet")
    ppl = evals[-1].get("val_ppl")
    healthy, failure = PPL_BANDS[stage]
    if not is_finite(ppl) or ppl > failure:
        return _row("val_ppl", FAILURE, ppl, f"> {failure}")
    if ppl >= healthy:
        return _row("val_ppl", WARNING, ppl, f"{healthy}-{failure}")
    return _row("val_ppl", HEALTHY, ppl, f"< {healthy}")


def r_row(train: list, evals: list) -> dict:
    source = evals[-1].get("val_R") if evals else (train[-1].get("R") if train else None)
    if source is None:
        return _row("R", NA, None, "model has no oscillators")
    if source > R_HEALTHY:
        return _row("R", HEALTHY, source, f"> {R_HEALTHY}")
    if source >= R_FAILURE:
        return _row("R", WARNING, source, f"{R_FAILURE}-{R_HEALTHY}")
    return _row("R", FAILURE, source, "locked at 0")


def u_row(train: list) -> dict:
    reports = [r for r in train if r.get("u") is not None]
    if not reports:
        return _row("u_val", NA, None, "model has no bistable core")
    u, at_bound = reports[-1]["u"], reports[-1].get("u_at_bound") or 0.0
    if not is_finite(u) or at_bound >= U_AT_BOUND_FAIL or u <= U_LO * 1.005 or u >= U_HI * 0.995:
        return _row("u_val", FAILURE, u, f"hitting clamps ({at_bound:.0%} of positions at bound)")
    if at_bound >= U_AT_BOUND_WARN or u < U_LO * U_NEAR or u > U_HI / U_NEAR:
        return _row("u_val", WARNING, u, f"near clamps ({at_bound:.0%} at bound)")
    return _row("u_val", HEALTHY, u, f"within [{U_LO:g}, {U_HI:g}]")


def zones_visited(records: list, zones: str = DEFAULT_ZONES) -> dict:
    """Zone (of table `zones`) -> how many R values (per layer, per report) fell in it."""
    counts: dict = {}
    for r in records:
        for value in r.get("R_layers") or ([r["R"]] if r.get("R") is not None else []):
            zone = r_zone(value, zones)
            counts[zone] = counts.get(zone, 0) + 1
    return counts


def zones_row(stage: int, train: list) -> dict:
    values = [v for r in train for v in (r.get("R_layers") or [])]
    if not values:
        return _row("R_zones", NA, None, "model has no oscillators")
    n = len(zones_visited(train))
    healthy, warning = ZONE_BANDS[stage]
    locked = max(values) - min(values) < 1e-3
    if n >= healthy:
        return _row("R_zones", HEALTHY, n, f">= {healthy} zones")
    if n >= warning and not locked:
        return _row("R_zones", WARNING, n, f"{n} zone(s)")
    return _row("R_zones", FAILURE, n, "locked" if locked else f"< {warning} zones")


def samples_row(evals: list) -> dict:
    samples = [s for s in (evals[-1].get("samples") or [])] if evals else []
    if not samples:
        return _row("samples", NA, None, "no samples yet")
    collapsed = [s for s in samples if s.get("collapsed")]
    if collapsed:
        return _row("samples", FAILURE, len(collapsed), f"collapsed: {collapsed[0].get('reason')}")
    judged = [s for s in samples if s.get("words") is not None]
    n_words = sum(s["words"] for s in judged)
    if n_words >= MIN_SAMPLE_WORDS:
        share = round(sum(s["known_words"] for s in judged) / n_words, 3)
        if share < GIBBERISH:
            return _row("samples", FAILURE, share,
                        f"gibberish: {share:.0%} of {n_words} words in the corpus")
        if share < KNOWN_WORDS:
            return _row("samples", WARNING, share,
                        f"fragments: {share:.0%} of {n_words} words in the corpus")
    d2 = min(s.get("distinct_2", 1.0) for s in samples)
    if d2 < 0.5:
        return _row("samples", WARNING, round(d2, 3), "repetitive fragments")
    known = f"{share:.0%} of words in the corpus, " if n_words >= MIN_SAMPLE_WORDS else ""
    return _row("samples", HEALTHY, round(d2, 3), f"words and phrases: {known}varied")


def u_dynamics_row(train: list) -> dict:
    """Stage 4's u row: edge-surfing (u moves, mostly near the floor of its regime without
    reaching it), wandering (u moves, elsewhere), locked (u has stopped moving)."""
    us = [r["u"] for r in train if is_finite(r.get("u"))]
    if not us:
        return _row("u_course", NA, None, "model has no bistable core")
    if len(us) < MIN_U_REPORTS:
        return _row("u_course", NA, None, f"fewer than {MIN_U_REPORTS} reports of u")
    recent = us[len(us) // 2:]
    mean = sum(recent) / len(recent)
    spread = (max(recent) - min(recent)) / max(abs(mean), 1e-12)
    if spread < U_LOCKED:
        return _row("u_course", FAILURE, round(spread, 4), f"locked: u stays at {mean:.3g}")
    at_edge = sum(U_LO * U_NEAR <= u < U_EDGE for u in recent) / len(recent)
    band = f"[{U_LO * U_NEAR:g}, {U_EDGE:g})"
    if at_edge >= U_EDGE_SHARE:
        return _row("u_course", HEALTHY, round(spread, 4),
                    f"edge-surfing: {at_edge:.0%} of reports in {band}")
    return _row("u_course", WARNING, round(spread, 4),
                f"wandering: mean {mean:.3g}, {at_edge:.0%} of reports in {band}")


def goldilocks_row(evals: list) -> dict:
    r = evals[-1].get("val_R") if evals else None
    if r is None:
        return _row("goldilocks", NA, None, "not evaluated yet")
    healthy, warning = GOLDILOCKS
    if r >= healthy:
        return _row("goldilocks", HEALTHY, r, f"R >= {healthy}")
    if r >= warning:
        return _row("goldilocks", WARNING, r, f"R {warning}-{healthy}")
    return _row("goldilocks", FAILURE, r, f"R < {warning}")


def behaviour_row(history: list) -> dict:
    """Stage 5's behavioural probe: the share of completions of the action prompts with an
    action verb, with its CI (a score of the text, not a measure of agency). At most a
    WARNING: training has no baseline to hold the score against (`validate --baseline`
    has), so the row never stops a run. Only a "behaviour" event after the last report
    counts: one from before a resume describes other weights."""
    latest = None
    for record in history:
        if record.get("event") == "behaviour":
            latest = record
        elif record.get("event") == "train":
            latest = None
    if latest is None:
        return _row("behaviour", NA, None, "measured where the stage ends")
    score, (lo, hi) = latest["score"], latest["score_ci"]
    found = "action verbs present" if lo > 0 else ("few action verbs" if score > 0
                                                   else "no action verbs")
    detail = (f"{found}: behavioural score {score:.2f} (95% CI {lo:.2f}-{hi:.2f}, "
              f"{latest['completions']} completions), paired prompts differ "
              f"{latest['paired_difference']:.0%}; no baseline here (validate --baseline)")
    return _row("behaviour", HEALTHY if lo > 0 else WARNING, score, detail)


def stage_verdict(stage: int, history: list) -> dict:
    """The staged-training decision matrix (docs/training.md) for `stage` over history records. Returns
    {"stage", "overall", "rows": [{metric, verdict, value, detail}]}."""
    train = [r for r in history if r.get("event") == "train"]
    evals = [r for r in history if r.get("event") == "eval"]
    rows = [loss_trend(train)]
    if stage >= 2:
        rows += [val_ppl_row(stage, evals), u_row(train), r_row(train, evals)]
    if stage >= 3:
        rows += [zones_row(stage, train), samples_row(evals)]
    if stage >= 4:
        rows.append(u_dynamics_row(train))
    if stage >= 5:
        rows += [goldilocks_row(evals), behaviour_row(history)]
    overall = max((r["verdict"] for r in rows), key=_RANK.get)
    return {"stage": stage, "overall": HEALTHY if overall == NA else overall, "rows": rows}


def stopping_rows(verdict: dict, final: bool) -> list:
    """The metrics of `verdict`'s FAILURE rows that stop a run: every one at the end of the
    stage (`final`), those of STOP_MIDSTAGE at an evaluation before it."""
    return [r["metric"] for r in verdict["rows"]
            if r["verdict"] == FAILURE and (final or r["metric"] in STOP_MIDSTAGE)]


def format_verdict(verdict: dict) -> str:
    lines = [f"Stage {verdict['stage']} verdict: {verdict['overall'].upper()}"]
    for r in verdict["rows"]:
        value = r["value"]
        shown = f"{value:.4g}" if isinstance(value, float) else ("-" if value is None else str(value))
        lines.append(f"  {r['metric']:<10} {r['verdict']:<8} {shown:>10}  {r['detail']}")
    return "\n".join(lines)
