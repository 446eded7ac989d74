"""Writing a run's files: atomically where a crash must not leave half a file, and with a
one-line error naming the file when the write fails (a full disk, a folder made unwritable)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from resnetlab.errors import ResnetlabError


def _new_file_mode() -> int:
    """The mode ``open`` gives a new file under the process's umask (``mkstemp`` gives 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_NEW_FILE_MODE = _new_file_mode()  # read once, at import: os.umask can only be read by setting it


WRITE_PROBE = ".write-test"  # the empty file that ``writable_folder`` writes and removes


def os_reason(exc: OSError) -> str:
    """Why an operating-system call failed, e.g. ``No space left on device``."""
    return exc.strerror or str(exc)


def writable_folder(path: Path) -> None:
    """Make the folder ``path`` (and its parents) and check that a file can be written in it;
    a one-line ``ResnetlabError`` naming ``--out`` where not."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / WRITE_PROBE
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ResnetlabError(f"--out: cannot write to '{path}': {os_reason(exc)}") from None


def unique_name(stem: str, used: set[str]) -> str:
    """``stem.png``, or ``stem-2.png``, ``stem-3.png``... where ``used`` (the names given so
    far, to which the one returned is added) has it already: two inputs of one name
    (``a/x.jpg``, ``b/x.jpg``) never write one file."""
    name, count = f"{stem}.png", 1
    while name in used:
        count += 1
        name = f"{stem}-{count}.png"
    used.add(name)
    return name


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc``: itself, or the one that ``torch.save``'s writer reports as a
    RuntimeError (``unexpected pos ...``), with the OSError as its context."""
    if isinstance(exc, OSError):
        return exc
    context = exc.__context__
    return context if isinstance(exc, RuntimeError) and isinstance(context, OSError) else None


@contextmanager
def writing(path: Path, what: str, *, atomic: bool = False) -> Iterator[None]:
    """Turn a failed write of ``what`` to ``path`` into a one-line ``ResnetlabError`` naming
    the file (``atomic``: saying that any earlier file at ``path`` is intact)."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        cause = _os_error(exc)
        if cause is None:
            raise
        intact = f"; any earlier {path.name} is intact" if atomic else ""
        raise ResnetlabError(f"{path}: cannot write {what} ({os_reason(cause)}){intact}") from None


def write_atomically(path: Path, write: Callable[[BinaryIO], object], what: str) -> None:
    """Write ``what`` to ``path`` with ``write(file)``: into a temporary file beside it, flushed
    and fsynced, then renamed over ``path``. A crash at any instant leaves either the old file
    or the new one; a failed write is a one-line ``ResnetlabError`` (see ``writing``)."""
    with writing(path, what, atomic=True):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            os.fchmod(fd, _NEW_FILE_MODE)  # readable as any other file of the run, not 0600
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
