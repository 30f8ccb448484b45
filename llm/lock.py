"""One run per output folder: the folder is checked, then locked with the owner's pid.

:func:`prepare_output_folder` refuses a path that is a file or cannot be written (it is
created when missing).  :class:`RunLock` creates ``FOLDER/.lock`` exclusively, holding the
owner's pid, host and start time; a second run into the same folder is refused with
:class:`FolderLocked` naming that pid.  A lock whose process no longer runs (on this host)
is stale: it is taken over with a warning (:class:`StaleLockWarning`).  The lock is
removed when the run ends, however it ends (short of ``kill -9``, which leaves a stale
lock for the next run to take over).  A process is one run: taking a lock it already holds
nests (a command holds its folder while the pipeline it calls takes it again); the file
goes when the outermost holder releases it.  Every writer takes it: ``python -m llm run``,
``specialist-cost`` and ``synth``, and ``amasim converge``, ``claims``, ``compare`` and
``reproduce``.

>>> import tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> with RunLock(folder):
...     (folder / ".lock").exists()
True
>>> (folder / ".lock").exists()
False
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from llm.integrity import fsync_folder

__all__ = ["FolderLocked", "StaleLockWarning", "RunLock", "prepare_output_folder"]

_HELD: dict[str, int] = {}  # lock files this process holds, and how many times (nesting)


class FolderLocked(RuntimeError):
    """Another run writes into this output folder (its pid is in the message)."""


class StaleLockWarning(UserWarning):
    """A lock left by a run that no longer exists was taken over."""


def prepare_output_folder(folder: str | Path, what: str = "output folder") -> Path:
    """``folder``, created if missing, after checking it is a folder this process can write.

    ``what`` names the setting in messages (e.g. ``"--out"``).  Raises
    ``NotADirectoryError`` for a file (or a path through a file) and ``PermissionError``
    for a folder that cannot be created or written.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(
            errno.ENOTDIR,
            f"{what} {folder} is a file, not a folder. Fix: give a folder path (it is "
            "created if missing)",
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise NotADirectoryError(
            errno.ENOTDIR,
            f"{what} {folder} cannot be created: part of that path is a file. Fix: give a "
            "folder path",
        ) from None
    except OSError as err:
        raise PermissionError(
            err.errno,
            f"{what} {folder} cannot be created ({err.strerror}). Fix: choose a writable folder",
        ) from None
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise PermissionError(
            err.errno,
            f"{what} {folder} is not writable ({err.strerror}). Fix: choose a writable folder, "
            "or make this one writable",
        ) from None
    return folder


def _holder(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _running(holder: dict[str, Any] | None, path: Path) -> bool:
    """Whether the lock's process may still run (unknown hosts and pids count as running)."""
    if holder is None or not isinstance(holder.get("pid"), int):
        return False  # unreadable: a lock torn while being written
    if holder.get("host") != socket.gethostname():
        return True  # cannot see another machine's processes
    pid = holder["pid"]
    if pid == os.getpid():
        return _key(path) in _HELD  # the same pid again after a restart is a stale lock
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by another user
    return True


def _key(path: Path) -> str:
    """The name under which this process counts its hold on a lock file."""
    return os.path.realpath(path)


def _mine(path: Path) -> dict[str, Any] | None:
    """The lock record at ``path`` when this process wrote it, else ``None``."""
    holder = _holder(path)
    if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        return holder
    return None


class RunLock:
    """An exclusive lock on ``folder`` for one run (a context manager).

    ``what`` names the folder's setting in messages.  Entering checks the folder
    (:func:`prepare_output_folder`), creates the lock, and raises :class:`FolderLocked`
    when a running process holds it.
    """

    def __init__(self, folder: str | Path, *, what: str = "output folder") -> None:
        self.folder, self.what = Path(folder), what
        self.path = self.folder / ".lock"
        self.held = False

    def acquire(self) -> RunLock:
        if self.held:
            return self
        if _HELD.get(self._key()) and _mine(self.path) is not None:
            _HELD[self._key()] += 1  # this process holds it already: nest
            self.held = True
            return self
        prepare_output_folder(self.folder, self.what)
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_stale()
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(json.dumps(record))
                fh.flush()
                os.fsync(fh.fileno())
            fsync_folder(self.folder)
            self.held = True
            _HELD[self._key()] = 1
            return self
        raise FolderLocked(f"{self.path}: could not take the lock (another run keeps taking it)")

    def _take_over_stale(self) -> None:
        holder = _holder(self.path)
        if _running(holder, self.path):
            where = "" if holder.get("host") == socket.gethostname() else f" on {holder['host']}"
            raise FolderLocked(
                f"{self.what} {self.folder} is in use by another run (pid {holder['pid']}"
                f"{where}, started {holder.get('started', '?')}). Fix: wait for it to finish, "
                f"or choose another folder; if no such run exists, delete {self.path}"
            )
        aside = self.path.with_name(f".lock.stale.{os.getpid()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # another process took it over first: try again
        if _holder(aside) != holder:  # it changed hands between reading and moving it
            with contextlib.suppress(OSError):
                os.rename(aside, self.path)
            return
        aside.unlink(missing_ok=True)
        who = f"pid {holder['pid']}" if holder else "an unreadable lock"
        warnings.warn(
            f"{self.path}: took over a stale lock ({who} no longer runs)",
            StaleLockWarning,
            stacklevel=3,
        )

    def _key(self) -> str:
        return _key(self.path)

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        count = _HELD.get(self._key(), 0) - 1
        if count > 0:  # an outer holder in this process keeps it
            _HELD[self._key()] = count
            return
        _HELD.pop(self._key(), None)
        holder = _holder(self.path)
        if holder is not None and holder.get("pid") == os.getpid():
            with contextlib.suppress(OSError):
                self.path.unlink()

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
