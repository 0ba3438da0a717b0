"""`mlx-kssm validate`, the final validation suite (docs/causality.md, "Validation"): every part
runs, the JSON holds every field, the exit status follows the verdict, the bolted control
fails, a planted fragile model is less robust than a trained one, bad input gets one Error:
line, and report.html renders in headless Chromium (where it is installed)."""

import json
import re
import shutil
import subprocess

import mlx_kssm  # noqa: F401  (BLAS before mlx)

import mlx.core as mx
import numpy as np
import pytest
from click.testing import CliRunner

from mlx_kssm import build_model, save_model
from mlx_kssm.cli import main
from mlx_kssm.data.prepare import prepare
from mlx_kssm.io import load_with_tokenizer
from mlx_kssm.models.bistable import FORCED_U_FLOOR, forced_u_floor
from mlx_kssm.probe import behaviour, robustness
from mlx_kssm.probe.validate import EXIT_STATUS, PARTS, read_prompts
from mlx_kssm.probe.validate_report import report_html
from mlx_kssm.train.config import TrainConfig
from mlx_kssm.train.trainer import train

FIXTURES = __import__("pathlib").Path(__file__).parent / "fixtures" / "gutenberg"
# small enough for seconds per part on a CPU, large enough for CIs over windows
FAST = ["--seq-len", "32", "--sequences", "8", "--probe-samples", "2", "--max-tokens", "8",
        "--temperatures", "0.5,1,1.5"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(res):
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    lines = [l for l in res.output.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    return lines[0]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    src = root / "texts"
    src.mkdir()
    for name in ("pg1342_2024.txt", "pg1661_2002.txt", "pg84_2008_crlf.txt"):
        shutil.copy(FIXTURES / name, src / name)
    prepare(src, root / "prepared", tokenizer="bytes", val_fraction=0.34, log=lambda s: None)
    return root / "prepared"


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    """A tiny K-SSM trained for a few steps by the trainer itself: its run folder."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    train(TrainConfig(preset="tiny", data=str(data_dir), output_dir=str(out), seq_len=32,
                      batch_size=4, max_steps=20, warmup_steps=2, steps_per_report=10,
                      steps_per_eval=20, val_batches=1, save_every=20, sample_tokens=4,
                      sample_prompts=["The "]), echo=lambda m: None)
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    out = {}
    for preset, extra in (("control-bolted-tiny", {}), ("transformer-tiny", {}),
                          ("v3-tiny", {"bistable": True})):
        base = "tiny" if preset == "v3-tiny" else preset
        out[preset] = save_model(root / preset, build_model(base, vocab_size=257, seed=0, **extra),
                                 tokenizer_spec={"kind": "bytes"})
    # the same byte vocabulary, compacted: another tokenizer than the data's
    spec = {"kind": "bytes", "compaction": {"size": 102, "unknown_id": 101,
                                            "base_ids": list(range(100)) + [256]}}
    out["other-tokenizer"] = save_model(root / "other", build_model("tiny", vocab_size=102,
                                                                    seed=0),
                                        tokenizer_spec=spec)
    return out


@pytest.fixture(scope="module")
def validated(trained, data_dir, models, tmp_path_factory):
    """The CLI on the trained run, beside the transformer as baseline: (result, json, html)."""
    root = tmp_path_factory.mktemp("validate")
    prompts = root / "prompts.txt"
    prompts.write_text("It was\n\nThe king\n")
    res = run("validate", "--model", trained, "--data", data_dir, "--baseline",
              models["transformer-tiny"], "--prompts", prompts, "--json", root / "v.json",
              "--report", root / "report.html", *FAST)
    return res, json.loads((root / "v.json").read_text()), root / "report.html"


@pytest.mark.slow
def test_every_part_runs_and_the_json_has_every_field(validated):
    res, out, _ = validated
    assert set(out) >= {"model", "data", "baseline", "config", "parts", "baseline_parts",
                        "evaluation", "seconds", "verdict", "exit_status"}
    assert tuple(out["parts"]) == PARTS and set(out["seconds"]) == set(PARTS)
    for name in PARTS:
        assert "verdict" in out["parts"][name], name
    causality = out["parts"]["causality"]
    assert {"variance", "intervention", "correlation"} <= set(causality)
    assert "learned" in causality["intervention"]["random_init"]
    noise = out["parts"]["robustness"]["noise"]
    assert [r["scale"] for r in noise["rows"]] == [0.0, 0.01, 0.05, 0.1]
    for row in noise["rows"]:
        assert row["loss"]["ci"][0] <= row["loss"]["mean"] <= row["loss"]["ci"][1]
        assert row["r"] is not None and set(row) >= {"loss_rise", "relative_rise"}
    temps = out["parts"]["robustness"]["temperature"]["rows"]
    assert [r["temperature"] for r in temps] == [0.5, 1.0, 1.5]
    beh = out["parts"]["behaviour"]
    assert 0 <= beh["score_ci"][0] <= beh["score"] <= beh["score_ci"][1] <= 1
    assert len(beh["completions"]) == 5 * 2 and len(beh["pairs"]) == 2 * 2
    assert beh["verdict"] == beh["against_baseline"]["verdict"]  # judged: a baseline was given
    assert set(out["baseline_parts"]) == {"robustness", "behaviour"}
    assert out["baseline_parts"]["robustness"]["noise"]["rows"][0]["r"] is None  # transformer
    clamp = out["parts"]["clamp_sweep"]
    assert clamp["applicable"] is False and clamp["verdict"] is None
    assert "[n/a] clamp sweep: not applicable" in res.output
    inference = out["parts"]["inference"]["prompts"]
    assert [p["prompt"] for p in inference] == ["It was", "The king"]  # the blank line skipped
    for p in inference:
        assert len(p["trace"]) == len(p["trace"]) and p["trace"]
        assert all(t["zone"] and 0 <= t["r"] <= 1 for t in p["trace"])


@pytest.mark.slow
def test_exit_status_follows_the_verdict(validated):
    res, out, _ = validated
    judged = [p["verdict"] for p in out["parts"].values() if p["verdict"] is not None]
    expected = ("PASS" if all(v == "PASS" for v in judged)
                else "FAIL" if "FAIL" in judged else "INCONCLUSIVE")
    assert out["verdict"] == expected
    assert res.exit_code == out["exit_status"] == EXIT_STATUS[expected], res.output
    assert f"overall: {expected}" in res.output


@pytest.mark.slow
def test_bolted_control_fails_with_exit_1(models, data_dir):
    res = run("validate", "--model", models["control-bolted-tiny"], "--data", data_dir, *FAST)
    assert res.exit_code == 1, res.output
    assert "[FAIL] 2 intervention" in res.output and "overall: FAIL" in res.output
    assert "Error:" not in res.output


@pytest.mark.slow
def test_evaluate_causality_exit_status(models, data_dir):
    args = ["--data", data_dir, "--batches", "1", "--batch-size", "2", "--seq-len", "16",
            "--sequences", "6", "--samples", "0"]
    bolted = run("evaluate", "--model", models["control-bolted-tiny"], "--causality", *args)
    assert bolted.exit_code == 1 and "overall: FAIL" in bolted.output, bolted.output
    assert run("evaluate", "--model", models["transformer-tiny"], "--causality",
               *args).exit_code == 0  # not applicable
    assert run("evaluate", "--model", models["control-bolted-tiny"], *args).exit_code == 0


@pytest.mark.slow  # the trained fixture: a short training run
def test_planted_fragile_model_drops_more(trained):
    """Tied embeddings scaled up make the logits over-sharp: the same relative noise then
    moves the loss far more than on the trained weights."""
    _, model, _ = load_with_tokenizer(trained)
    tokens = np.array(list(b"It was the best of times, it was the worst of times. " * 40),
                      dtype=np.int32)
    inputs, targets = robustness.heldout_windows(tokens, 8, 32)
    healthy = robustness.noise_sweep(model, inputs, targets, scales=(0.0, 0.05),
                                     judged_scale=0.05, n_resamples=500)
    model.embed.weight = model.embed.weight * 40.0
    fragile = robustness.noise_sweep(model, inputs, targets, scales=(0.0, 0.05),
                                     judged_scale=0.05, n_resamples=500)
    rise = {name: s["rows"][1]["loss_rise"] for name, s in (("healthy", healthy),
                                                            ("fragile", fragile))}
    assert rise["fragile"]["ci"][0] > rise["healthy"]["ci"][1], rise
    assert healthy["verdict"] == "PASS" and fragile["verdict"] == "FAIL"


@pytest.mark.slow  # the trained fixture: a short training run
def test_weight_noise_restores_the_clean_weights(trained):
    _, model, _ = load_with_tokenizer(trained)
    before = np.array(model.embed.weight)
    with robustness.weight_noise(model, 0.1, seed=3):
        assert not np.allclose(np.array(model.embed.weight), before)
    assert np.array_equal(np.array(model.embed.weight), before)


def test_clamp_sweep_on_v3_only(models):
    tokens = np.array(list(b"To be, or not to be, that is the question. " * 30), dtype=np.int32)
    inputs, targets = robustness.heldout_windows(tokens, 6, 24)
    _, v3, _ = load_with_tokenizer(models["v3-tiny"])
    sweep = robustness.clamp_sweep(v3, inputs, targets, floors=(0.1, 1.0, 2.0),
                                   n_resamples=500)
    assert sweep["applicable"] and [r["u_floor"] for r in sweep["rows"]] == [0.1, 1.0, 2.0]
    assert sweep["rows"][-1]["u"] >= 2.0 - 1e-3 > sweep["rows"][0]["u"]  # the floor acts
    assert sweep["verdict"] == "PASS"  # u sets the coupling: moving its floor moves the output
    assert FORCED_U_FLOOR == []  # inference only: the trained floor is back
    _, plain, _ = load_with_tokenizer(models["transformer-tiny"])
    na = robustness.clamp_sweep(plain, inputs, targets)
    assert na["applicable"] is False and "not applicable" in na["reason"]


def test_forced_u_floor_is_checked_and_undone():
    with pytest.raises(ValueError, match="u floor"):
        with forced_u_floor(20.0):
            pass
    model = build_model("tiny", vocab_size=257, seed=0, bistable=True)
    x = mx.array([[1, 2, 3, 4]])
    free = model(x)
    with forced_u_floor(3.0):
        assert float(model(x, return_aux=True)[1]["u"].item()) >= 3.0 - 1e-3
    assert mx.array_equal(model(x), free)


def test_behaviour_probes_file_and_scoring():
    probes = behaviour.load_probes()
    assert probes["action_prompts"] == ["I will", "I want to", "I am going to", "I think that",
                                        "I believe"]
    assert ["I like", "I do not like"] in probes["paired_prompts"]
    verbs = set(probes["action_verbs"])
    assert behaviour.is_action_verb("walking", verbs) and behaviour.is_action_verb("went", verbs)
    assert not behaviour.is_action_verb("table", verbs)
    assert behaviour.first_words(" go, to the sea!", 2) == ["go", "to"]


def test_behaviour_against_baseline_is_paired():
    mine = {"completions": [{"action_verb": v} for v in (1, 1, 1, 0) * 4]}
    theirs = {"completions": [{"action_verb": v} for v in (0, 0, 0, 0) * 4]}
    assert behaviour.compare(mine, theirs, n_resamples=500)["verdict"] == "PASS"
    assert behaviour.compare(theirs, theirs, n_resamples=500)["verdict"] == "FAIL"


@pytest.mark.parametrize("content, needle", [(None, "no such file"), ("", "is empty"),
                                             ("\n  \n", "is empty")])
def test_bad_prompts_file(models, data_dir, tmp_path, content, needle):
    path = tmp_path / "prompts.txt"
    if content is not None:
        path.write_text(content)
    line = one_line_error(run("validate", "--model", models["transformer-tiny"], "--data",
                              data_dir, "--prompts", path, "--json", tmp_path / "v.json"))
    assert needle in line and not (tmp_path / "v.json").exists()


def test_baseline_with_another_tokenizer(models, data_dir, tmp_path):
    line = one_line_error(run("validate", "--model", models["transformer-tiny"], "--data",
                              data_dir, "--baseline", models["other-tokenizer"],
                              "--report", tmp_path / "r.html"))
    assert "another tokenizer" in line and not (tmp_path / "r.html").exists()


@pytest.mark.parametrize("args, needle", [
    (["--noise-scales", "0,abc"], "not a number"),
    (["--judged-scale", "0.2"], "not among"),
    (["--u-floors", "0.1,50"], "u floors"),
    (["--temperatures", "0,1"], "> 0")])
def test_bad_options(models, data_dir, args, needle):
    line = one_line_error(run("validate", "--model", models["transformer-tiny"], "--data",
                              data_dir, *args))
    assert needle in line


def test_read_prompts_keeps_lines(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("one\n\n  two words \n")
    assert read_prompts(path) == ["one", "  two words "]


def test_help_documents_exit_statuses():
    for cmd in ("validate", "evaluate"):
        res = run(cmd, "--help")
        assert res.exit_code == 0 and "Examples:" in res.output
        assert re.search(r"1 FAIL,\s+3 INCONCLUSIVE", res.output), res.output
        assert "Error: line" in res.output


@pytest.mark.slow
def test_report_without_matplotlib_has_tables(validated, monkeypatch):
    from mlx_kssm.probe import plot
    _, out, _ = validated

    def missing():
        raise plot.PlotError("plotting needs matplotlib")
    monkeypatch.setattr(plot, "pyplot", missing)
    text = report_html(out)
    assert "Tables only" in text and "<img" not in text and "<table>" in text


@pytest.mark.slow
def test_report_html_renders_in_headless_chromium(validated, tmp_path):
    _, out, report = validated
    text = report.read_text()
    assert "http://" not in text and "https://" not in text and "<script" not in text
    for key in PARTS:
        assert f"id='{key}'" in text
    pytest.importorskip("matplotlib")
    assert text.count("data:image/png;base64,") >= 2
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    shot = tmp_path / "report.png"
    res = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                          "--enable-logging=stderr", "--v=0", "--virtual-time-budget=2000",
                          "--dump-dom", f"--screenshot={shot}", report.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "CONSOLE" not in res.stderr and "Uncaught" not in res.stderr, res.stderr[-2000:]
    for title in ("Causality", "Robustness", "Behavioural probes", "Clamp sweep (v3)",
                  "Inference suite"):
        assert f">{title}: " in res.stdout, title
    assert shot.exists() and shot.stat().st_size > 10_000


@pytest.mark.parametrize("fields, needle", [({"sequences": 2}, ">= 3 sequences"),
                                            ({"judged_scale": 0.3}, "not among"),
                                            ({"seq_len": "32"}, "seq_len")])
def test_library_config_is_checked(data_dir, fields, needle):
    with pytest.raises(ValueError, match=needle):
        mlx_kssm.validate("unused", data_dir, mlx_kssm.ValidateConfig(**fields))
