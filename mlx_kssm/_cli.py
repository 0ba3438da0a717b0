"""What every `mlx-kssm` command shares: its click settings and one way to fail.

Exit status of every command (README, "Exit status"):

    0    done
    1    bad input, or something could not be read or written: one `Error: ...` line on
         stderr, no traceback, and nothing that existed before is damaged
    2    a usage mistake click finds while parsing (unknown option, missing or ill-typed
         value): click's usage message
    130  interrupted (Ctrl-C)
    143  terminated (SIGTERM): the same cleanup as Ctrl-C (temp folders removed, locks
         released, what existed before left as it was); a second SIGTERM ends it at once

A command with statuses of its own lists them in its --help: `train` (3 NaN loss; 4 a stage
verdict FAILURE; 130 / 143 after saving a checkpoint), `status` (1 when the trainer is not
running), `study` (the trainer's, for the run that stopped it).

An unexpected exception (a bug) still ends in one `Error:` line, naming its type; with
MLX_KSSM_DEBUG=1 it raises, with its traceback.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import re
import signal
import sys
import tempfile
from pathlib import Path

import click

from ._types import MAX_SEED
from .kernels import KERNEL_MODES

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
EXIT_ERROR = 1
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143
DEBUG_ENV = "MLX_KSSM_DEBUG"


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, as Ctrl-C raises KeyboardInterrupt: every
    cleanup that runs for Ctrl-C (a temp folder removed, a lock released) runs for it too,
    where SIGTERM's default action killed the process and left them."""


def _raise_terminated(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends it at once
    raise Terminated()


@contextlib.contextmanager
def sigterm_raises():
    """While entered (in the main thread), SIGTERM raises Terminated. The trainer installs
    its own handler inside (finish the step, save, exit 143) and restores this one after."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread: signals are not ours to handle
        previous = None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class UsageProblem(Exception):
    """Bad command-line input found after parsing (values, layers, files, combinations)."""


def expected_errors() -> tuple:
    """The exceptions that mean bad input or a failed read or write; their message says what
    and where. (Imported here, when a command failed, to keep `mlx-kssm --help` fast.)"""
    from .data.errors import DataError
    from .export.to_mlx_lm import ExportError
    from .io import ModelLoadError
    from .probe.plot import PlotError
    from .train.lock import LockError
    return (UsageProblem, DataError, ExportError, ModelLoadError, PlotError, LockError,
            ValueError, RuntimeError, OSError)


def one_line_errors(command):
    """Wrap a command's callback so that it fails the one way the module docstring states.
    click's own exceptions (usage errors, --help, ctx.exit) and sys.exit pass through."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            with sigterm_raises():
                return command(*args, **kwargs)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Terminated:
            click.echo("terminated", err=True)
            sys.exit(EXIT_TERMINATED)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except Exception as e:  # noqa: BLE001 - every failure becomes one line
            fail(e)
    wrapper.one_line_errors = True  # tests check that every command has it
    return wrapper


def fail(error: Exception):
    """Print `error` as one `Error:` line and exit 1 (an unexpected one names its type, or
    raises under MLX_KSSM_DEBUG=1)."""
    if isinstance(error, expected_errors()):
        click.echo(f"Error: {error}", err=True)
    elif os.environ.get(DEBUG_ENV):
        raise error
    else:
        click.echo(f"Error: unexpected {type(error).__name__}: {error} (set {DEBUG_ENV}=1 "
                   "for the traceback)", err=True)
    sys.exit(EXIT_ERROR)


SEED = click.IntRange(0, MAX_SEED)


class FiniteFloatRange(click.FloatRange):
    """click.FloatRange that also refuses nan and inf (nan passes every < or > check)."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


def check_output_file(path: str, option: str) -> None:
    """Fail before the work, not after it, if `path` (a file an option names) can't be written:
    it is a folder, or the folder it would go in is a file or refuses a new file."""
    target = Path(path)
    if target.is_dir():
        raise UsageProblem(f"{option} {path} is a folder: give the file to write")
    parent = target.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent  # the writer creates missing folders below the nearest one
    if not parent.is_dir():
        raise UsageProblem(f"{option} {path}: {parent} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-check.", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UsageProblem(f"{option} {path}: can't write in {parent} ({e.strerror})") from None


def model_loading_options(command):
    """--allow-nonfinite for a command that loads a model, and a note on stderr naming the
    folder a run folder resolved to (its best/ or newest checkpoint). Goes above
    @one_line_errors."""
    @functools.wraps(command)
    def wrapper(*args, allow_nonfinite=False, **kwargs):
        from .io import loading_options
        with loading_options(allow_nonfinite, note=lambda line: click.echo(line, err=True)):
            return command(*args, **kwargs)
    return click.option(
        "--allow-nonfinite", is_flag=True,
        help="load weights holding NaN or Inf (refused otherwise: a diverged run), to "
             "inspect them")(wrapper)


KERNEL_HELP = ("scan implementation: auto = the fused Metal or CUDA kernel of the GPU present "
               "(checked against the reference on first use), or the pure-MLX reference")
kernel_option = click.option("--kernel", type=click.Choice(KERNEL_MODES), default="auto",
                             show_default=True, help=KERNEL_HELP)


def zones_option(command):
    """--zones v3|v2: the R zone table the command names zones by (docs/model.md)."""
    from .models.base import DEFAULT_ZONES, ZONE_TABLES
    return click.option("--zones", type=click.Choice(tuple(ZONE_TABLES)), default=DEFAULT_ZONES,
                        show_default=True,
                        help="R zone table: v3 (Goldilocks = R >= 0.30), or v2, the earlier "
                             "table, for runs judged by it")(command)


def options(*decorators):
    """Several click options as one decorator, listed in --help in the order given."""
    def apply(command):
        for decorator in reversed(decorators):
            command = decorator(command)
        return command
    return apply


def force_r_options(scope: str = "", every_layer: str = "in every layer, for every token"):
    """--force-r R and --force-r-layer L=R, as ForceR.from_options reads them; `scope` opens
    their help (as "mlx-lm: ")."""
    return options(
        click.option("--force-r", default=None, metavar="R",
                     help=f"{scope}clamp R to this value in [0, 1] {every_layer}"),
        click.option("--force-r-layer", multiple=True, metavar="L=R",
                     help=f"{scope}clamp R in layer L only (repeatable; overrides --force-r "
                          "there)"))


def parse_values(text: str, what: str = "--values") -> list:
    """Comma- or space-separated forced R values (each checked to lie in [0, 1])."""
    from .models.force import check_r
    parts = [p for p in re.split(r"[,\s]+", text.strip()) if p]
    if not parts:
        raise UsageProblem(f"{what} is empty: give values like 0.1,0.5,0.9")
    return [check_r(p, f"{what} entry") for p in parts]
