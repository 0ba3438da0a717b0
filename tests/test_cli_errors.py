"""One way to fail, for every command (mlx_kssm/_cli.py, README "Exit status"): bad input is
one `Error:` line on stderr and exit status 1, a usage mistake click's message and exit 2,
never a traceback; an unexpected exception is one line too (its traceback on demand), and
Ctrl-C exits 130."""

import shutil
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import mlx_kssm  # noqa: F401  (BLAS before mlx)
from mlx_kssm import build_model, save_model
from mlx_kssm.cli import main
from mlx_kssm.data.prepare import prepare

FIXTURES = __import__("pathlib").Path(__file__).parent / "fixtures" / "gutenberg"


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_errors")
    (root / "texts").mkdir()
    shutil.copy(FIXTURES / "pg1661_2002.txt", root / "texts" / "a.txt")
    shutil.copy(FIXTURES / "pg84_2008_crlf.txt", root / "texts" / "b.txt")
    prepare(root / "texts", root / "data", tokenizer="bytes", val_fraction=0.5,
            log=lambda s: None)
    save_model(root / "model", build_model("tiny", vocab_size=257, seed=0),
               tokenizer_spec={"kind": "bytes"})
    (root / "a_file").write_text("not a folder")
    return {"root": root, "texts": root / "texts", "data": root / "data",
            "model": root / "model", "missing": root / "missing", "file": root / "a_file"}


# (command line, exit status, what the Error line says); {name} is a path of the fixture
CASES = {
    "data fetch: missing source": (
        "data fetch --source {missing} --out {root}/raw", 1, "no such file or directory"),
    "data fetch: --ids that are not integers": (
        "data fetch --source gutenberg --ids 12,ab --out {root}/raw", 1, "--ids '12,ab'"),
    "data fetch: --ids without gutenberg": (
        "data fetch --source shakespeare --ids 12 --out {root}/raw", 1, "gutenberg only"),
    "data fetch: --out under a file": (
        "data fetch --source {texts} --out {file}/raw", 1, "a_file"),
    "data prepare: missing source": (
        "data prepare --source {missing} --out {root}/prepared", 1, "missing"),
    "train: missing data": (
        "train --preset tiny --data {missing} --output-dir {root}/run", 1, "meta.json"),
    "status: no run": ("status {missing}", 1, "no such run folder"),
    "monitor: not a run": ("monitor {texts} --once", 1, "is not a training run folder"),
    "evaluate: missing data": (
        "evaluate --model {model} --data {missing}", 1, "meta.json"),
    "study: empty --models": (
        "study --data {data} --out {root}/study --models ,", 1, "--models is empty"),
    "generate: --force-r out of range": (
        "generate --model {model} --force-r 1.5", 1, "--force-r must lie in [0, 1]"),
    "intervene: --values out of range": (
        "intervene --model {model} --values 0.1,1.2", 1, "[0, 1]"),
    "export: bad --max-shard-size": (
        "export --model {model} --out {root}/export --max-shard-size lots", 1,
        "--max-shard-size must look like"),
    "plot: not a folder": ("plot {missing}", 1, "not a folder"),
    # --json is checked before the work, not after it
    "evaluate: --json is a folder": (
        "evaluate --model {model} --data {data} --json {texts}", 1, "is a folder"),
    "intervene: --json under a file": (
        "intervene --model {model} --prompt To --json {file}/sweep.json", 1,
        "a_file is not a folder"),
    # seeds MLX and NumPy take; numbers that are numbers (nan passes every range check)
    "generate: negative --seed (usage)": (
        "generate --model {model} --seed -1", 2, "'--seed': -1 is not in the range"),
    "evaluate: --random-init-seed 2**64 (usage)": (
        "evaluate --model {model} --data {data} --random-init-seed 18446744073709551616", 2,
        "'--random-init-seed'"),
    "generate: --temp nan (usage)": (
        "generate --model {model} --temp nan", 2, "'nan' is not a finite number"),
    "intervene: --top-p nan (usage)": (
        "intervene --model {model} --top-p nan", 2, "'nan' is not a finite number"),
    "doctor: unknown option (usage)": ("doctor --bogus", 2, "No such option"),
    "generate: no --model (usage)": ("generate", 2, "Missing option '--model'"),
}


def test_a_config_value_of_the_wrong_type_is_named(paths, tmp_path):
    """config.json is user input: "257" is not 257, and true is not 1 (bool is an int)."""
    import json
    for key, value, says in (("vocab_size", "257", "vocab_size must be an integer"),
                             ("d_model", True, "d_model must be an integer"),
                             ("gate", 1, "gate must be true or false")):
        folder = tmp_path / key
        shutil.copytree(paths["model"], folder)
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, key: value}))
        res = invoke(["generate", "--model", str(folder), "--max-tokens", "1"])
        assert res.exit_code == 1 and res.stderr.strip().splitlines() == [
            f"Error: {folder / 'config.json'}: {says}, got {value!r}"], res.stderr


def invoke(args, **kwargs):
    return CliRunner().invoke(main, args, **kwargs)


@pytest.mark.parametrize("case", list(CASES))
def test_every_command_fails_the_one_way(paths, case):
    line, status, fragment = CASES[case]
    res = invoke([part.format(**paths) for part in line.split()])
    assert res.exit_code == status, (res.exit_code, res.output)
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    errors = [l for l in res.stderr.splitlines() if l.startswith("Error:")]
    assert len(errors) == 1 and fragment in errors[0], res.stderr
    if status == 1:  # bad input: that one line is all of stderr
        assert res.stderr.strip().splitlines() == errors
    assert not (paths["root"] / "raw").exists() and not (paths["root"] / "run").exists()


def _commands(group, prefix=()):
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _commands(command, prefix + (name,))
        else:
            yield " ".join(prefix + (name,)), command


def test_every_command_has_the_wrapper():
    names = {name: getattr(command.callback, "one_line_errors", False)
             for name, command in _commands(main)}
    assert len(names) == 13 and all(names.values()), names


def test_the_package_text_does_not_lean_on_lab_history():
    """Comments, docstrings and help speak for themselves: no "the earlier project" (a name a
    user has never met) anywhere in the package's source or data files."""
    package = Path(mlx_kssm.__file__).parent
    hits = [f"{path.relative_to(package)}:{n}" for path in sorted(package.rglob("*"))
            if path.suffix in (".py", ".json") for n, line in
            enumerate(path.read_text("utf-8").splitlines(), 1) if "earlier project" in line]
    assert hits == []


def test_an_unexpected_exception_is_one_line_with_its_traceback_on_demand(monkeypatch):
    from mlx_kssm import doctor

    def broken(measure=True):
        raise TypeError("a bug")
    monkeypatch.setattr(doctor, "report", broken)
    res = invoke(["doctor"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert res.stderr.strip().splitlines() == [
        "Error: unexpected TypeError: a bug (set MLX_KSSM_DEBUG=1 for the traceback)"]
    res = invoke(["doctor"], env={"MLX_KSSM_DEBUG": "1"})
    assert isinstance(res.exception, TypeError)  # raised, traceback and all


def test_ctrl_c_exits_130(monkeypatch):
    from mlx_kssm import doctor

    def interrupted(measure=True):
        raise KeyboardInterrupt
    monkeypatch.setattr(doctor, "report", interrupted)
    res = invoke(["doctor"])
    assert res.exit_code == 130 and res.stderr.strip() == "interrupted"
