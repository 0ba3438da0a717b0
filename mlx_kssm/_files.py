"""Small file helpers: atomic writes (temp file in the same folder + os.replace, so a reader
or a crashed run never sees half a file), whole-folder replacement, the cleanup of temp files
a killed process left, and hashing.

Temp names: every temporary file or folder the package writes is hidden (a leading dot),
carries a `tmp`, `trash` or `stale` part and the writer's pid as `pidN`, e.g.
`.config.json.pid4242.k2x9.tmp`, so the next start can tell a dead writer's leftovers
(removed) from a live one's (kept): `remove_stale_temps`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

TEMP_PARTS = frozenset({"tmp", "trash", "stale"})
_OWNER = re.compile(r"\.pid(\d+)(?:\.|$)")


@contextmanager
def naming(path):
    """Re-raise an OSError that names no file (a failed write: "No space left on device")
    as one that names `path`, so the message says where."""
    try:
        yield
    except OSError as e:
        if e.filename is not None or e.errno is None:
            raise
        raise OSError(e.errno, e.strerror or str(e), str(path)) from None


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb"):
    """Open a temp file beside `path`; on success fsync and rename it over `path`. A failure
    (a full disk included) removes the temp file and raises an OSError naming `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{temp_tag()}.", suffix=".tmp",
                               dir=path.parent)
    os.close(fd)  # reopened by name: the file's .name is then its path
    try:
        with naming(path):
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
            with open(tmp, mode) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def inside(root, name) -> Path | None:
    """root / name when it stays inside `root` once '..' and symbolic links are resolved,
    else None: a path read from a file in a folder must not reach outside that folder."""
    path = Path(root) / name
    return path if path.resolve().is_relative_to(Path(root).resolve()) else None


def describe_os_error(error: OSError) -> str:
    """"No space left on device (writing model.safetensors)": why, and which file."""
    where = f" (writing {Path(error.filename).name})" if error.filename else ""
    return f"{error.strerror or error}{where}"


def with_message(error: OSError, message: str) -> OSError:
    """An OSError that reads `message` and keeps `error`'s errno."""
    failure = OSError(message)
    failure.errno = error.errno
    return failure


# --------------------------------------------------------------------------- temp names

def temp_tag() -> str:
    """The part of a temp name that says which process writes it."""
    return f"pid{os.getpid()}"


def is_temp_name(name: str) -> bool:
    return name.startswith(".") and not TEMP_PARTS.isdisjoint(name.split("."))


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs. A zombie (killed, not yet reaped by its parent) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    except OverflowError:
        return False
    return _process_state(pid) != "Z"


def _process_state(pid: int) -> str | None:
    """The state letter of `pid` ("R", "S", "Z" ...): /proc on Linux, ps elsewhere."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        pass
    if sys.platform.startswith("linux"):
        return None
    try:
        out = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True,
                             text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out[:1] or None


def remove_stale_temps(folder, prefix: str = "") -> list:
    """Remove the temp files and folders (see the module docstring) that dead processes left
    in `folder`; a name without a pid (an earlier version's) counts as dead. In folders the
    package does not own, `prefix` limits this to names starting with "." + prefix, and
    `sweep_dead_writers` covers the other names there. Returns the names removed."""
    try:
        entries = sorted(Path(folder).iterdir())
    except OSError:  # no such folder (yet)
        return []
    removed = []
    for entry in entries:
        if not (entry.name.startswith("." + prefix) and is_temp_name(entry.name)):
            continue
        owner = _OWNER.search(entry.name)
        if owner and pid_alive(int(owner.group(1))):
            continue  # a live writer's
        remove_path(entry)
        removed.append(entry.name)
    return removed


def sweep_dead_writers(folder) -> list:
    """Remove what dead writers of this package left in `folder`, whatever output they were
    writing: only names that carry a writer's pid (`.NAME.pidN....tmp`), so nothing a user
    named is touched, and only when that process is gone. Returns the names removed."""
    try:
        entries = sorted(Path(folder).iterdir())
    except OSError:
        return []
    removed = []
    for entry in entries:
        owner = _OWNER.search(entry.name)
        if (owner is None or not is_temp_name(entry.name) or int(owner.group(1)) == os.getpid()
                or pid_alive(int(owner.group(1)))):
            continue
        remove_path(entry)
        removed.append(entry.name)
    return removed


def remove_path(path) -> None:
    """Remove a file, a folder or a symbolic link (the link only, never what it points to:
    shutil.rmtree refuses a link, and ignoring that error left the link in place)."""
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- whole folders

def visible_entries(folder) -> list:
    """Names in `folder`, hidden ones aside (Finder's .DS_Store, temp files); [] when it is
    not a folder."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def foreign_entries(folder, belongs) -> list:
    """Names in `folder` that `belongs(name)` does not claim (hidden ones aside): what
    replacing the folder would destroy. Names alone prove nothing: callers also check the
    content of the file that marks their folder (a model's config.json, a meta.json)."""
    return [name for name in visible_entries(folder) if not belongs(name)]


def output_folder(path) -> Path:
    """Where an output folder named `path` really is. A symbolic link is followed: its target
    is what gets written or replaced, and the link stays as it was (every command that writes
    a folder -- export, data prepare, data fetch, train -- treats a linked output alike). A
    link that loops is refused, naming it."""
    path = Path(path)
    if not path.is_symlink():
        return path
    target = Path(os.path.realpath(path))
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise OSError(e.errno, "a symbolic link that loops: give a folder",
                          str(path)) from None
        # a dangling link: its target is created
    return target


@contextmanager
def replacing_folder(final):
    """Yield a fresh temporary folder beside `final`; on success it replaces `final` whole
    (the old version renamed aside, the new one renamed in, the old one deleted); on any
    failure it is removed and `final` stays as it was. A kill between the two renames
    leaves `.NAME.old`, which the next call (or `recover_swap`) renames back. When `final`
    is a symbolic link, its target is replaced and the link kept (`output_folder`). Temp
    folders that dead writers left beside it are removed first (`sweep_dead_writers`). The
    caller checks first that `final` holds nothing else worth keeping (`foreign_entries`)."""
    final = output_folder(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    old = recover_swap(final)
    remove_stale_temps(final.parent, prefix=f"{final.name}.")
    sweep_dead_writers(final.parent)
    tmp = final.with_name(f".{final.name}.{temp_tag()}.tmp")
    remove_path(tmp)
    tmp.mkdir()
    try:
        yield tmp
        fsync_dir(tmp)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        fsync_dir(final.parent)
    except BaseException:
        remove_path(tmp)
        recover_swap(final)  # failed between the two renames: the old version goes back
        raise
    remove_path(old)


def recover_swap(final) -> Path:
    """Undo a `replacing_folder` swap a kill interrupted: `.NAME.old` back to NAME when NAME
    is missing, else drop it (a link only unlinked: what it points to stays). Returns the
    `.NAME.old` path."""
    final = Path(final)
    old = final.with_name(f".{final.name}.old")
    if os.path.lexists(old):
        if os.path.lexists(final):
            remove_path(old)
        else:
            os.replace(old, final)
    return old


def fsync_dir(path) -> None:
    """Make renames inside `path` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
