"""Safe file writes and directory locks: every writer of the package goes through here (the io
wing; may import: the standard library only; imported by every other wing).

- `atomic_open`/`write_atomic`: a uniquely named temp file `.<name>.<random>.tmp` beside the
  target, fsync, then os.replace, so a reader never sees half a file and a user's own `x.tmp` is
  never touched. Only a regular file (or a new path) is replaced: a symlink, a directory, a fifo
  or a device at the path is refused with `UnsafePathError` (as root, `--export /dev/null` would
  otherwise replace /dev/null). An OSError while writing becomes `WriteError` naming the path;
  the temp file is removed on every failure. A temp left by a killed writer is removed by
  `remove_stale_temps`, which its owner calls under `locked`.
- `locked(directory)`: an exclusive flock on the directory itself (no lock file left behind),
  re-entrant within a process, so a stage can lock its run directory and call `train`, which
  locks the same directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import tempfile
import threading
from pathlib import Path

_UMASK = os.umask(0)
os.umask(_UMASK)
_KINDS = {
    stat.S_ISLNK: "symlink",
    stat.S_ISDIR: "directory",
    stat.S_ISFIFO: "fifo",
    stat.S_ISCHR: "device",
    stat.S_ISBLK: "device",
    stat.S_ISSOCK: "socket",
}
_HELD: dict = {}  # realpath -> [fd, depth] of the directory locks this process holds
_HELD_GUARD = threading.Lock()


class UnsafePathError(ValueError):
    """A write to a path that holds something other than a regular file."""


class WriteError(OSError, ValueError):
    """An OSError while writing a file (read-only directory, name too long, ...): names the path."""


def env_path(name: str, default) -> Path:
    """The directory $`name` names, else `default`; set but empty is an error (it would silently
    mean the current directory)."""
    value = os.environ.get(name)
    if value is None:
        return Path(default)
    if not value.strip():
        raise ValueError(f"${name} is set but empty: set it to a directory, or unset it for the "
                         f"default ({default})")  # fmt: skip
    return Path(value)


def check_writable_path(path) -> Path:
    """`path` if it is a new path or a regular file; else UnsafePathError naming what it is."""
    path = Path(path)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return path
    except OSError as err:
        raise WriteError(f"cannot write {path}: {err.strerror}") from None
    for test, kind in _KINDS.items():
        if test(mode):
            raise UnsafePathError(
                f"{path} is a {kind}: refusing to replace it "
                f"(allowed: a regular file or a new path)"
            )
    return path


def read_bytes(path) -> bytes:
    """The bytes of `path`, a regular file (or a link to one); UnsafePathError for a fifo, device,
    socket or directory, decided without blocking (a fifo is opened non-blocking, then refused)."""
    path = Path(path)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((k for test, k in _KINDS.items() if test(mode)), "special file")
            raise UnsafePathError(
                f"{path} is a {kind}: refusing to read it (allowed: a regular file)"
            )
        return f.read()


def read_text(path) -> str:
    """`read_bytes` decoded as UTF-8."""
    return read_bytes(path).decode("utf-8")


def _temp_beside(path: Path) -> tuple[int, str]:
    """A new, uniquely named temp file in the directory of `path` (mkdir'ed), with umask rights."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600: give the file the usual permissions
    return fd, tmp


@contextlib.contextmanager
def atomic_open(path, mode: str = "wb"):
    """Open a temp file beside `path` for writing; on success it replaces `path`.

    On error the temp file is removed."""
    path = check_writable_path(path)
    tmp = None
    try:
        fd, tmp = _temp_beside(path)
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        check_writable_path(path)  # not replaced by something else meanwhile
        os.replace(tmp, path)
    except OSError as err:
        raise WriteError(f"cannot write {path}: {err.strerror or err}") from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def write_atomic(path, data) -> None:
    """Write `data` (bytes or str) to `path` atomically."""
    with atomic_open(path, "wb" if isinstance(data, (bytes, bytearray, memoryview)) else "w") as f:
        f.write(data)


def remove_stale_temps(directory, name: str = "*") -> None:
    """Temp files of `atomic_open` for `name` (default: any) left in `directory` by a killed
    writer; call it only while holding `locked(directory)`."""
    for tmp in Path(directory).glob(f".{name}.*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


@contextlib.contextmanager
def locked(directory):
    """Hold an exclusive flock on `directory` (created if missing); waits for another holder."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        key = os.path.realpath(directory)
    except OSError as err:
        raise WriteError(f"cannot create {directory}: {err.strerror or err}") from None
    with _HELD_GUARD:
        held = _HELD.get(key)
        if held is not None:
            held[1] += 1
    if held is None:
        fd = os.open(key, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(fd, fcntl.LOCK_EX)
        with _HELD_GUARD:
            _HELD[key] = held = [fd, 1]
    try:
        yield directory
    finally:
        _release(key, held)


def _release(key: str, held: list) -> None:
    with _HELD_GUARD:
        held[1] -= 1
        if held[1]:
            return
        del _HELD[key]
    fcntl.flock(held[0], fcntl.LOCK_UN)
    os.close(held[0])
