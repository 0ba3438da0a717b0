"""Where a `--prompt` value's text comes from: the value itself, a file (`@FILE`, as curl
and many CLIs read one) or standard input (`-`, as mlx-lm's generate reads it).

The text is used as read, trailing newline included: the model continues after exactly what
the file holds. A prompt that really begins with "@" is written with "@@".
"""

from __future__ import annotations

import sys
from pathlib import Path

from .._cli import UsageProblem

STDIN = "-"


def resolve_prompt(value: str, stdin=None) -> str:
    """The prompt text `value` stands for: "-" reads `stdin` (sys.stdin by default) to its
    end, "@FILE" reads FILE as UTF-8, "@@text" is the literal "@text", anything else is the
    text itself. UsageProblem for a file that cannot be read or is not UTF-8 text."""
    if value == STDIN:
        return (stdin or sys.stdin).read()
    if value.startswith("@@"):
        return value[1:]
    if value.startswith("@"):
        return _read_prompt_file(Path(value[1:]), value)
    return value


def _read_prompt_file(path: Path, value: str) -> str:
    if not path.name:
        raise UsageProblem(f"--prompt {value!r}: name a file after '@' (a prompt starting "
                           "with '@' is written '@@...')")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UsageProblem(f"--prompt {value}: no such file {path} (a prompt starting with "
                           "'@' is written '@@...')") from None
    except IsADirectoryError:
        raise UsageProblem(f"--prompt {value}: {path} is a folder, not a file") from None
    except OSError as error:
        raise UsageProblem(f"--prompt {value}: cannot read {path}: "
                           f"{error.strerror or error}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UsageProblem(f"--prompt {value}: {path} is not UTF-8 text (byte "
                           f"{error.start})") from None
