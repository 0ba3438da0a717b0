"""generate / intervene / evaluate / plot from the command line: output, determinism, and one
clear line with a non-zero exit for every bad input."""

import json
import re
import subprocess
import sys

import pytest
from click.testing import CliRunner

import mlx_kssm  # noqa: F401
from mlx_kssm import build_model, save_model
from mlx_kssm.cli import main
from mlx_kssm.data.prepare import prepare



def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(res):
    assert res.exit_code != 0, res.output
    assert "Traceback" not in res.output
    lines = [l for l in res.output.splitlines() if l.strip()]
    assert len(lines) == 1, res.output
    return lines[0]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    out = {}
    for preset in ("tiny", "control-bolted-tiny", "transformer-tiny"):
        out[preset] = save_model(root / preset, build_model(preset, vocab_size=257, seed=0),
                                 tokenizer_spec={"kind": "bytes"})
    return out


def test_generate_is_deterministic_and_has_footer(models):
    a = run("generate", "--model", models["tiny"], "--prompt", "It was", "-m", "30", "--seed", "4")
    b = run("generate", "--model", models["tiny"], "--prompt", "It was", "-m", "30", "--seed", "4")
    assert a.exit_code == 0, a.output
    assert a.output.split("Prompt:")[0] == b.output.split("Prompt:")[0]
    assert re.search(r"Prompt: \d+ tokens, [\d.]+ tokens-per-sec", a.output)
    assert re.search(r"Generation: 30 tokens, [\d.]+ tokens-per-sec", a.output)
    assert "Peak memory:" in a.output
    c = run("generate", "--model", models["tiny"], "--prompt", "It was", "-m", "30", "--seed", "5")
    assert c.output.split("Prompt:")[0] != a.output.split("Prompt:")[0]


def _sample_text(output: str) -> str:
    """What one generation printed between its ===== lines (prompt + continuation)."""
    return output.split("=" * 10 + "\n")[1].split("\n" + "=" * 10)[0]


def test_generate_num_samples_are_the_seeds_in_turn(models):
    """--num-samples 3 --seed 4 prints what --seed 4, 5 and 6 print alone, in that order."""
    res = run("generate", "--model", models["tiny"], "--prompt", "It was", "-m", "12",
              "--seed", "4", "--num-samples", "3")
    assert res.exit_code == 0, res.output
    samples = res.output.split("Sample ")[1:]
    assert [s.split("\n")[0] for s in samples] == [f"{i}/3 (seed {3 + i})" for i in (1, 2, 3)]
    for i, sample in enumerate(samples):
        alone = run("generate", "--model", models["tiny"], "--prompt", "It was", "-m", "12",
                    "--seed", str(4 + i))
        assert _sample_text(sample) == _sample_text(alone.output)
        assert "Generation: 12 tokens" in sample
    assert len({_sample_text(s) for s in samples}) == 3
    line = one_line_error(run("generate", "--model", models["tiny"], "--seed", str(2**32 - 1),
                              "--num-samples", "2"))
    assert "needs seeds up to 4294967296" in line


def test_generate_prompt_from_a_file_or_stdin(models, tmp_path):
    """@FILE and - give the text they hold, as read; @@ is a literal @."""
    (tmp_path / "prompt.txt").write_text("ROMEO:\nIt was", encoding="utf-8")
    direct = run("generate", "--model", models["tiny"], "--prompt", "ROMEO:\nIt was", "-m", "8")
    from_file = run("generate", "--model", models["tiny"], "--prompt",
                    f"@{tmp_path / 'prompt.txt'}", "-m", "8")
    from_stdin = CliRunner().invoke(main, ["generate", "--model", str(models["tiny"]),
                                           "--prompt", "-", "-m", "8"], input="ROMEO:\nIt was")
    assert direct.exit_code == from_file.exit_code == from_stdin.exit_code == 0
    assert _sample_text(direct.output).startswith("ROMEO:\nIt was")
    assert _sample_text(from_file.output) == _sample_text(direct.output)
    assert _sample_text(from_stdin.output) == _sample_text(direct.output)
    literal = run("generate", "--model", models["tiny"], "--prompt", "@@home", "-m", "2")
    assert _sample_text(literal.output).startswith("@home")


def test_generate_prompt_file_bad_input(models, tmp_path):
    missing = tmp_path / "missing.txt"
    line = one_line_error(run("generate", "--model", models["tiny"], "--prompt", f"@{missing}"))
    assert line.startswith("Error: ") and f"no such file {missing}" in line
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    line = one_line_error(run("generate", "--model", models["tiny"], "--prompt",
                              f"@{tmp_path / 'latin1.txt'}"))
    assert "is not UTF-8 text (byte 3)" in line
    line = one_line_error(run("generate", "--model", models["tiny"], "--prompt", f"@{tmp_path}"))
    assert "is a folder, not a file" in line
    (tmp_path / "empty.txt").write_text("")
    line = one_line_error(run("generate", "--model", models["tiny"], "--prompt",
                              f"@{tmp_path / 'empty.txt'}"))
    assert "encodes to no tokens" in line


def test_generate_force_r_show_r(models):
    res = run("generate", "--model", models["tiny"], "--prompt", "The", "-m", "20",
              "--force-r", "0.3", "--show-r")
    assert res.exit_code == 0, res.output
    trace = [l for l in res.output.splitlines() if re.match(r"\s+\d+: ", l)]
    values = [float(v) for l in trace for v in l.split(":", 1)[1].split()]
    assert len(values) == 20 and all(v == 0.3 for v in values)
    assert "Balance" in res.output and "Intimacy" not in res.output  # 0.3 opens Balance
    v2 = run("generate", "--model", models["tiny"], "--prompt", "The", "-m", "20",
             "--force-r", "0.3", "--show-r", "--zones", "v2")
    assert v2.exit_code == 0 and "Unbound" in v2.output and "Balance" not in v2.output
    free = run("generate", "--model", models["tiny"], "--prompt", "The", "-m", "20", "--show-r")
    free_vals = [float(v) for l in free.output.splitlines() if re.match(r"\s+\d+: ", l)
                 for v in l.split(":", 1)[1].split()]
    assert len(set(free_vals)) > 1  # free R moves token to token


def test_generate_continues_every_prompt_given(models):
    """--prompt A --prompt B continues both, in turn (it used to continue B alone)."""
    both = run("generate", "--model", models["tiny"], "--prompt", "It was", "--prompt", "The end",
               "-m", "12", "--seed", "4")
    assert both.exit_code == 0, both.output
    assert both.output.count("Generation: 12 tokens") == 2
    blocks = both.output.split("==========\n")
    assert blocks[1].startswith("It was") and blocks[3].startswith("The end")
    alone = run("generate", "--model", models["tiny"], "--prompt", "The end", "-m", "12",
                "--seed", "4")
    assert alone.output.split("Prompt:")[0].split("==========\n")[1] == blocks[3]
    assert "encodes to no tokens" in one_line_error(
        run("generate", "--model", models["tiny"], "--prompt", "A", "--prompt", ""))


def test_generate_force_r_layer(models):
    res = run("generate", "--model", models["tiny"], "--prompt", "The", "-m", "5",
              "--force-r-layer", "1=0.9", "--show-r")
    assert res.exit_code == 0, res.output
    assert re.search(r"layer 1: mean 0\.900\s+min 0\.900\s+max 0\.900", res.output)


@pytest.mark.parametrize("args, needle", [
    (["--force-r", "1.5"], "[0, 1]"),
    (["--force-r", "abc"], "number"),
    (["--force-r-layer", "5=0.3"], "unknown layer 5"),
    (["--force-r-layer", "1:0.3"], "LAYER=R"),
    (["--force-r-layer", "0=2"], "[0, 1]"),
])
def test_generate_bad_force_values(models, args, needle):
    line = one_line_error(run("generate", "--model", models["tiny"], *args))
    assert needle in line


def test_generate_bad_model_folder(tmp_path, models):
    assert "does not exist" in one_line_error(run("generate", "--model", tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    assert "holds no model" in one_line_error(run("generate", "--model", tmp_path / "empty"))
    line = one_line_error(run("generate", "--model", models["transformer-tiny"], "--force-r", "0.3"))
    assert "transformer" in line


def _generate_interactive(model, stdin: str):
    """`generate --interactive` as a process with its stdin piped (not a terminal)."""
    return subprocess.run([sys.executable, "-m", "mlx_kssm.cli", "generate", "--model",
                           str(model), "--interactive", "-m", "6", "--seed", "2"],
                          input=stdin, capture_output=True, text=True, timeout=120)


def test_generate_interactive_with_piped_stdin(models):
    res = _generate_interactive(models["tiny"], "It was\nThe king\n:q\nnever read\n")
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("==========") == 4  # two generations, each framed
    assert "It was" in res.stdout and "The king" in res.stdout and "never" not in res.stdout
    trace = re.findall(r"^\s+(\d+) .+ R (\d\.\d{3})  (\S.*)$", res.stdout, re.MULTILINE)
    assert len(trace) == 12  # one line per generated token: index, R, zone
    assert all(0 <= float(r) <= 1 for _, r, _ in trace)
    assert "2 prompts answered" in res.stderr and "> " not in res.stderr  # no terminal: no prompt
    # the same prompt and seed as a one-shot generate: the same text
    once = run("generate", "--model", models["tiny"], "--prompt", "It was", "-m", "6",
               "--seed", "2")
    assert once.output.split("==========")[1] == res.stdout.split("==========")[1]


def test_generate_interactive_stops_at_an_empty_line_or_eof(models):
    res = _generate_interactive(models["tiny"], "It was\n\nThe king\n")
    assert res.returncode == 0 and "The king" not in res.stdout and "1 prompt answered" in res.stderr
    res = _generate_interactive(models["transformer-tiny"], "It was")  # EOF, no newline
    assert res.returncode == 0 and "no oscillators" in res.stdout
    assert _generate_interactive(models["tiny"], "").stderr.strip() == "0 prompts answered"


def test_transformer_generates_without_r(models):
    res = run("generate", "--model", models["transformer-tiny"], "-m", "5", "--show-r")
    assert res.exit_code == 0 and "no oscillators" in res.output


def test_intervene_table_and_json(models, tmp_path):
    out = tmp_path / "sweep.json"
    res = run("intervene", "--model", models["tiny"], "--prompt", "It was", "--prompt", "The",
              "--values", "0.1,0.5,0.9", "--max-tokens", "12", "--json", out)
    assert res.exit_code == 0, res.output
    assert "KL(forced||free)" in res.output and "free" in res.output
    sweep = json.loads(out.read_text())
    rows = {r["force_r"]: r for r in sweep["summary"]}
    assert set(rows) == {None, 0.1, 0.5, 0.9}
    assert rows[None]["kl_to_free"] == 0.0
    assert rows[0.1]["kl_to_free"] > 0 and rows[0.1]["r_mean"] == pytest.approx(0.1)
    run_r = sweep["prompts"][0]["runs"][1]
    assert run_r["r_achieved"] == pytest.approx([0.1, 0.1])
    assert {"distinct_2", "repetition", "entropy", "changed", "text"} <= set(run_r)


def test_intervene_bolted_changes_nothing(models):
    res = run("intervene", "--model", models["control-bolted-tiny"], "--prompt", "It was",
              "--values", "0.1,0.9", "--max-tokens", "10", "--temp", "0")
    assert res.exit_code == 0, res.output
    assert re.search(r"0\.10 .* 0%$", res.output, re.MULTILINE)  # text unchanged


def test_intervene_bad_values(models):
    assert "[0, 1]" in one_line_error(run("intervene", "--model", models["tiny"],
                                          "--values", "0.1,1.2"))
    assert "R" in one_line_error(run("intervene", "--model", models["transformer-tiny"]))


@pytest.mark.slow
def test_intervene_with_heldout_windows(models, books_data):
    res = run("intervene", "--model", models["tiny"], "--data", books_data, "--n-prompts", "2",
              "--prompt-len", "16", "--values", "0.2,0.8", "--max-tokens", "5")
    assert res.exit_code == 0, res.output
    assert "2 prompts" in res.output


def test_intervene_refuses_more_prompts_than_the_split_holds(models, books_data):
    """100000 x 400000 tokens died of a MemoryError (149 GiB) after a long wait."""
    line = one_line_error(run("intervene", "--model", models["tiny"], "--data", books_data,
                              "--n-prompts", "100000", "--prompt-len", "400000"))
    assert "more than the val split" in line and "lower either" in line


@pytest.mark.slow
def test_evaluate_with_causality(models, books_data, tmp_path):
    out = tmp_path / "eval.json"
    res = run("evaluate", "--model", models["control-bolted-tiny"], "--data", books_data,
              "--batches", "2", "--batch-size", "4", "--seq-len", "32", "--causality",
              "--sequences", "12", "--samples", "2", "--sample-tokens", "20", "--json", out)
    assert res.exit_code == 1, res.output  # the overall verdict FAIL, no Error: line
    assert "Error:" not in res.output and "overall: FAIL" in res.output
    assert "PPL" in res.output and "zone occupancy" in res.output
    assert "[FAIL] 2 intervention" in res.output  # the bolted control
    assert "wired in" in res.output and "learned to use it" in res.output
    assert "sample quality:" in res.output
    report = json.loads(out.read_text())
    assert report["causality"]["intervention"]["verdict"] == "FAIL"
    assert report["causality"]["intervention"]["random_init"]["seed"] == 0
    assert len(report["samples"]) == 2 and "collapsed" in report["samples"][0]
    assert report["val_loss"] > 0 and len(report["R"]["per_layer_mean"]) == 2


def test_evaluate_names_zones_by_the_table_asked(models, books_data):
    from mlx_kssm.models import ZONE_TABLES
    args = ["--model", models["tiny"], "--data", books_data, "--batches", "1", "--batch-size",
            "2", "--seq-len", "16", "--samples", "0"]

    def labels(res):
        assert res.exit_code == 0, res.output
        line = [l for l in res.output.splitlines() if "zone occupancy:" in l][0]
        shown = re.findall(r"(\S+ [A-Z][\w-]+) [\d.]+%", line.split(":", 1)[1])
        layer_zones = re.findall(r"layer \d+: mean [\d.]+  std [\d.]+  (.+)", res.output)
        assert shown and layer_zones
        return set(shown) | set(layer_zones)

    v3 = {label for _, label in ZONE_TABLES["v3"]}
    v2 = {label for _, label in ZONE_TABLES["v2"]}
    assert labels(run("evaluate", *args)) <= v3
    assert labels(run("evaluate", *args, "--zones", "v2")) <= v2


def test_evaluate_cli_presents_the_library_result(models, books_data, tmp_path):
    """`mlx-kssm evaluate --json` writes what mlx_kssm.evaluate returns, number for number,
    and a second run gives the same numbers (evaluation is deterministic)."""
    out = tmp_path / "eval.json"
    args = ["--batches", "1", "--batch-size", "2", "--seq-len", "16", "--sequences", "6",
            "--samples", "1", "--sample-tokens", "8", "--random-init-seed", "3"]
    res = run("evaluate", "--model", models["tiny"], "--data", books_data, "--causality",
              "--json", out, *args)
    verdict = json.loads(out.read_text())["causality"]["verdict"]
    assert res.exit_code == {"PASS": 0, "FAIL": 1, "INCONCLUSIVE": 3}[verdict], res.output
    config = mlx_kssm.EvalConfig(batches=1, batch_size=2, seq_len=16, sequences=6, samples=1,
                                 sample_tokens=8, causality=True, random_init_seed=3)
    result = mlx_kssm.evaluate(models["tiny"], books_data, config)
    assert json.loads(out.read_text()) == json.loads(result.to_json())
    assert result.causality["intervention"]["random_init"]["seed"] == 3
    assert mlx_kssm.evaluate(models["tiny"], books_data, config).to_json() == result.to_json()


def test_evaluate_transformer_not_applicable(models, books_data):
    res = run("evaluate", "--model", models["transformer-tiny"], "--data", books_data,
              "--batches", "1", "--batch-size", "2", "--seq-len", "16", "--causality",
              "--sequences", "4", "--samples", "0")
    assert res.exit_code == 0, res.output
    assert "not applicable" in res.output


def test_evaluate_bad_data(models, tmp_path):
    line = one_line_error(run("evaluate", "--model", models["tiny"], "--data", tmp_path / "none"))
    assert "meta.json" in line


def test_evaluate_and_intervene_name_both_tokenizers(models, books_data, tmp_path):
    """Data compacted from the same base tokenizer: the message says what differs."""
    compacted = tmp_path / "compacted"
    prepare(books_data.parent / "texts", compacted, tokenizer="bytes", compact=True,
            val_fraction=0.34, log=lambda s: None)
    for command in ("evaluate", "intervene"):
        line = one_line_error(run(command, "--model", models["tiny"], "--data", compacted))
        assert "another tokenizer" in line and "(bytes vs bytes compacted to" in line, line
    # the mlx-lm export's card would describe that data as the model's training data
    pytest.importorskip("mlx_lm")
    out = tmp_path / "export"
    line = one_line_error(run("export", "--model", models["tiny"], "--out", out,
                              "--format", "mlx-lm", "--data", compacted))
    assert "another tokenizer" in line and "(bytes vs bytes compacted to" in line, line
    assert not out.exists()


@pytest.mark.slow
def test_ids_beyond_the_vocabulary_are_refused(models, tmp_path):
    """meta.json claims the byte vocabulary but the file holds id 300: one line, no crash
    (evaluate used to segfault, intervene to print garbage). Run as processes: a crash must
    fail the test, not end the test session."""
    import numpy as np
    from mlx_kssm.data.prepare import npy_header, write_token_file

    folder = tmp_path / "stale"
    folder.mkdir()
    splits = {}
    for split in ("train", "val"):
        tokens = np.tile(np.array([65, 66, 300], dtype=np.uint16), 200)
        write_token_file(folder / f"tokens_{split}.npy", iter([tokens]), tokens.size, "uint16")
        splits[split] = {"file": f"tokens_{split}.npy", "tokens": tokens.size, "max_id": 66}
    (folder / "meta.json").write_text(json.dumps({
        "format_version": 1, "tokenizer": {"kind": "bytes"}, "vocab_size": 257,
        "dtype": "uint16", "data_offset": len(npy_header("uint16", 600)), "splits": splits}))
    for args in (["evaluate", "--batches", "1", "--samples", "0", "--model", models["tiny"]],
                 ["intervene", "--n-prompts", "1", "--max-tokens", "2", "--model", models["tiny"]],
                 ["train", "--preset", "tiny", "--output-dir", tmp_path / "run"]):
        res = subprocess.run([sys.executable, "-m", "mlx_kssm.cli", *map(str, args), "--data",
                              str(folder)], capture_output=True, text=True)
        assert res.returncode == 1, (res.returncode, res.stdout, res.stderr)
        assert res.stderr.startswith("Error:") and "token id 300" in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_help_has_examples():
    for cmd in ("generate", "intervene", "evaluate", "export", "plot"):
        res = run(cmd, "--help")
        assert res.exit_code == 0 and "Examples:" in res.output


def _history(run_dir):
    events = []
    for step in range(10, 210, 10):
        events.append({"event": "train", "step": step, "loss": 5 - step / 100, "ce": 5 - step / 100,
                       "reg": 0.01, "R_layers": [0.2 + step / 1000, 0.5 - step / 2000],
                       "R": 0.35, "u": 1 + step / 200, "u_at_bound": 0.02})
        if step % 50 == 0:
            events.append({"event": "eval", "step": step, "val_loss": 5.2 - step / 110,
                           "val_ppl": 2.7 ** (5.2 - step / 110), "val_R": 0.36, "val_u": 1.5})
    (run_dir / "history.jsonl").write_text("\n".join(json.dumps(e) for e in events) + "\n{torn")


@pytest.mark.slow
def test_plot_writes_pngs(models, tmp_path):
    pytest.importorskip("matplotlib")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    _history(run_dir)
    sweep = run_dir / "intervene.json"
    assert run("intervene", "--model", models["tiny"], "--prompt", "The", "--values", "0.1,0.5,0.9",
               "--max-tokens", "8", "--json", sweep).exit_code == 0
    res = run("plot", run_dir)
    assert res.exit_code == 0, res.output
    for name in ("loss.png", "r_layers.png", "u.png", "intervene.png"):
        assert (run_dir / "plots" / name).stat().st_size > 1000


def test_plot_u_share_axis_is_never_negative(tmp_path):
    """With no position ever at the bound, u.png's right axis (a share in %) ran -5%..5%."""
    pytest.importorskip("matplotlib")
    from mlx_kssm.probe.plot import _plot_u, pyplot
    plt = pyplot()
    trains = [{"event": "train", "step": s, "u": 1.0 + s / 100, "u_at_bound": 0.0}
              for s in range(10, 60, 10)]
    fig = _plot_u(trains, [], plt)
    assert fig.axes[1].get_ylim()[0] >= 0
    plt.close(fig)
    trains[-1]["u_at_bound"] = 0.3
    fig = _plot_u(trains, [], plt)
    low, high = fig.axes[1].get_ylim()
    assert low >= 0 and high >= 30
    plt.close(fig)


def test_plot_zone_table_option(tmp_path):
    pytest.importorskip("matplotlib")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    _history(run_dir)
    assert run("plot", run_dir, "--zones", "v2").exit_code == 0
    assert (run_dir / "plots" / "r_layers.png").stat().st_size > 1000
    res = run("plot", run_dir, "--zones", "v9")
    assert res.exit_code == 2 and "'v9' is not one of 'v3', 'v2'" in res.output


def test_plot_errors(tmp_path, monkeypatch):
    assert "not a folder" in one_line_error(run("plot", tmp_path / "nope"))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if the extra were not installed
    line = one_line_error(run("plot", tmp_path))
    assert "pip install 'mlx-kssm[plot]'" in line


@pytest.mark.parametrize("kwargs, says", [
    ({"batches": "1"}, "batches must be an integer, got '1'"),
    ({"seq_len": 16.5}, "seq_len must be an integer, got 16.5"),
    ({"seed": -1}, "seed must lie in [0, 4294967295], got -1"),
    ({"random_init_seed": 1.5}, "random_init_seed must be an integer, got 1.5"),
    ({"values": 0.5}, "values must be a sequence of numbers, got 0.5"),
    ({"causality": 1}, "causality must be true or false, got 1")])
def test_eval_config_types_are_checked(kwargs, says):
    with pytest.raises(ValueError, match=re.escape(says)):
        mlx_kssm.EvalConfig(**kwargs).validate()


def test_evaluate_refuses_a_dict_for_its_config(models, books_data):
    with pytest.raises(ValueError, match="config must be an EvalConfig, got dict"):
        mlx_kssm.evaluate(models["tiny"], books_data, {"batches": 1})
