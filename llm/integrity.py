"""Files the project writes and reads back: atomic, checksummed, and only finite numbers.

Every checkpoint, reference model and cache entry is written by :func:`write_sealed`:

1. the payload (a ``torch.save`` zip or an ``.npz``) is streamed to a temporary file in
   the same folder while its sha256 is computed;
2. a 256-byte JSON *trailer* is appended — ``{"format": "llm.integrity", "kind": ...,
   "bytes": N, "sha256": ..., "meta": {...}}`` padded with spaces — and the file is
   fsync'ed;
3. the temporary file is renamed over the target (atomic on POSIX) and the folder is
   fsync'ed, so a crash leaves the old file or the new one, never half of one.

Zip readers (``torch.load``, ``np.load``) locate their directory from the end and skip
the trailer, so a sealed file is still an ordinary checkpoint or ``.npz``.
:func:`verify` re-hashes the payload: a truncated file (size ≠ N + 256) or one with
altered bytes (sha256 mismatch) raises :class:`IntegrityError` naming the file, what is
wrong and how to rebuild it.  A file without a trailer (written before checksums
existed, or by hand) is *unsealed*: :func:`verify` returns ``None`` and readers load it as
it is (a truncated one — its trailer cut off with the end — still fails to parse as a
zip, and the readers name that failure the same way).

:func:`first_non_finite` walks a nested state (dicts, lists, tuples, torch tensors,
numpy arrays, floats) and names the first key path holding a NaN or an infinity, e.g.
``oracle.policy.transformer.h.0.attn.c_attn.weight``.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "blob.bin"
>>> write_sealed(path, lambda f: f.write(b"payload"), kind="demo", meta={"step": 3})
>>> verify(path)["meta"], path.read_bytes()[:7]
({'step': 3}, b'payload')
>>> _ = path.write_bytes(b"PAYLOAD" + path.read_bytes()[7:])  # alter it
>>> verify(path, "delete it")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
llm.integrity.IntegrityError: ...blob.bin is altered: its sha256 differs ... Fix: delete it
>>> first_non_finite({"a": {"b": [1.0, float("nan")]}})
('a.b.1', 'nan')
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

__all__ = [
    "TRAILER_BYTES",
    "IntegrityError",
    "IntegrityWarning",
    "NonFiniteError",
    "write_sealed",
    "write_text_atomic",
    "copy_atomic",
    "verify",
    "read_trailer",
    "fsync_folder",
    "first_non_finite",
    "remove_stale_temporaries",
]

#: size of the JSON trailer that ends a sealed file
TRAILER_BYTES = 256
_FORMAT = "llm.integrity"


class IntegrityError(ValueError):
    """A file the project wrote is truncated or altered; the message names it and the fix."""

    def __init__(self, message: str, path: str | Path) -> None:
        super().__init__(message)
        self.path = Path(path)


class IntegrityWarning(UserWarning):
    """A damaged file was skipped or rebuilt (a cache entry, an older checkpoint)."""


class NonFiniteError(FloatingPointError):
    """A NaN or an infinity where only finite numbers may be; ``key`` names where."""

    def __init__(self, message: str, key: str = "") -> None:
        super().__init__(message)
        self.key = key


# ----------------------------------------------------------------------------- writing
class _Hashing:
    """A write-only file wrapper that hashes and counts what goes through it."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh, self.sha, self.bytes = fh, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        self.sha.update(view)
        self.bytes += view.nbytes
        return self.fh.write(view)

    def flush(self) -> None:
        self.fh.flush()


def _trailer(kind: str, size: int, digest: str, meta: Mapping[str, Any]) -> bytes:
    record = {"format": _FORMAT, "version": 1, "kind": kind, "bytes": size, "sha256": digest}
    text = json.dumps({**record, "meta": dict(meta)}, separators=(",", ":")).encode()
    if len(text) >= TRAILER_BYTES:
        raise ValueError(f"trailer metadata too long ({len(text)} bytes): keep meta small")
    return text.ljust(TRAILER_BYTES - 1) + b"\n"


def fsync_folder(folder: str | Path) -> None:
    """fsync a folder, so a rename inside it survives a power cut (a no-op where the OS
    cannot open folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_failed(err: OSError, path: Path, kind: str) -> OSError:
    """``err`` restated: which file, that nothing was replaced, and what to do."""
    if err.errno == errno.ENOSPC:
        fix = "free disk space (or point --out / [run] out at a larger disk) and rerun"
    elif err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "make the folder writable, or choose a writable --out / [run] out"
    else:
        fix = "check the disk and the folder, then rerun"
    message = (
        f"cannot write the {kind} {path}: {err.strerror or err}; the previous file (if any) "
        f"is unchanged. Fix: {fix}"
    )
    return type(err)(err.errno, message) if err.errno is not None else OSError(message)


@contextlib.contextmanager
def _replacing(path: Path, kind: str, mode: str) -> Iterator[Any]:
    """A file opened beside ``path`` (``.name.<pid>.tmp``) for the caller to fill; on a clean
    exit it is flushed, fsync'ed and renamed over ``path`` (then the folder is fsync'ed).  On
    any failure it is removed and ``path`` is untouched; an ``OSError`` is restated naming
    the file and the fix."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, mode, **({"encoding": "utf-8"} if "b" not in mode else {})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_folder(path.parent)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise _write_failed(err, path, kind) from err
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def write_sealed(
    path: str | Path,
    dump: Callable[[Any], Any],
    *,
    kind: str,
    meta: Mapping[str, Any] | None = None,
) -> None:
    """Atomically write ``dump(file)``'s bytes to ``path``, sealed with a checksum trailer.

    ``dump`` receives a write-only file object (``torch.save(state, f)`` works; for
    ``np.savez`` serialise to bytes first).  On any failure the temporary file is removed
    and the previous ``path`` is untouched; an ``OSError`` is restated naming the file.
    """
    with _replacing(Path(path), kind, "wb") as fh:
        sink = _Hashing(fh)
        dump(sink)
        fh.write(_trailer(kind, sink.bytes, sink.sha.hexdigest(), meta or {}))


def write_text_atomic(path: str | Path, text: str, *, kind: str = "file") -> None:
    """Atomically replace ``path`` with ``text`` (UTF-8; temporary file, fsync, rename)."""
    with _replacing(Path(path), kind, "w") as fh:
        fh.write(text)


def copy_atomic(source: str | Path, target: str | Path, *, kind: str = "file") -> None:
    """Atomically replace ``target`` with a copy of ``source``'s bytes."""
    with _replacing(Path(target), kind, "wb") as fh, open(source, "rb") as src:
        shutil.copyfileobj(src, fh)


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Delete ``.NAME.<pid>.tmp`` files left beside ``path`` by writers that no longer run
    (a killed save); those of live processes are kept.  Returns what was removed."""
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        pid = tmp.name[len(path.name) + 2 : -len(".tmp")]
        if pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


# ----------------------------------------------------------------------------- reading
def read_trailer(path: str | Path) -> dict[str, Any] | None:
    """The trailer record of a sealed file, or ``None`` when it has none (unsealed)."""
    path = Path(path)
    with open(path, "rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size < TRAILER_BYTES:
            return None
        fh.seek(size - TRAILER_BYTES)
        tail = fh.read(TRAILER_BYTES)
    if not tail.startswith(b'{"format":"' + _FORMAT.encode()):
        return None
    try:
        record = json.loads(tail)
    except ValueError:
        return {"format": _FORMAT, "damaged": True}
    return record if isinstance(record, dict) else {"format": _FORMAT, "damaged": True}


def verify(path: str | Path, fix: str = "") -> dict[str, Any] | None:
    """Check a sealed file against its trailer; its trailer record, or ``None`` if unsealed.

    Raises :class:`IntegrityError` (naming ``path``, the damage and ``fix``) when the size
    or the sha256 disagrees with the trailer; ``FileNotFoundError`` when it is absent.
    """
    path = Path(path)
    record = read_trailer(path)
    if record is None:
        return None
    fix = f" Fix: {fix}" if fix else ""
    kind = record.get("kind", "file")
    if record.get("damaged") or not isinstance(record.get("bytes"), int):
        raise IntegrityError(f"{path}: its checksum trailer is damaged (altered bytes).{fix}", path)
    size = path.stat().st_size
    expected = record["bytes"] + TRAILER_BYTES
    if size != expected:
        raise IntegrityError(
            f"{path} is truncated or extended: {size} bytes, the {kind} written there had "
            f"{expected}.{fix}",
            path,
        )
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        left = record["bytes"]
        while left:
            chunk = fh.read(min(left, 1 << 20))
            if not chunk:
                break
            sha.update(chunk)
            left -= len(chunk)
    if sha.hexdigest() != record.get("sha256"):
        raise IntegrityError(
            f"{path} is altered: its sha256 differs from the one written with it (bytes "
            f"changed on disk).{fix}",
            path,
        )
    return record


# ----------------------------------------------------------------------- finite values
def _leaves(obj: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            yield from _leaves(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(obj, list | tuple):
        names = getattr(obj, "_fields", None)  # NamedTuple states name their fields
        for i, value in enumerate(obj):
            name = names[i] if names else str(i)
            yield from _leaves(value, f"{prefix}.{name}" if prefix else name)
    else:
        yield prefix, obj


def _bad_value(value: Any) -> str | None:
    """``None`` when ``value`` holds no NaN/inf, else a short description of the first."""
    if isinstance(value, float | np.floating):
        return None if math.isfinite(value) else repr(float(value))
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "fc" or value.size == 0:
            return None
        bad = ~np.isfinite(value)
        if not bad.any():
            return None
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        return _describe(int(bad.sum()), value.size, value[index].item(), index)
    torch = _torch()
    if torch is not None and isinstance(value, torch.Tensor):
        if not (value.is_floating_point() or value.is_complex()) or value.numel() == 0:
            return None
        bad = ~torch.isfinite(value.detach())
        if not bool(bad.any()):
            return None
        index = tuple(int(i) for i in bad.nonzero()[0].tolist())
        return _describe(int(bad.sum()), value.numel(), value[index].item(), index)
    return None


def _describe(count: int, total: int, first: Any, index: tuple[int, ...]) -> str:
    where = f" at index {index}" if index else ""
    return f"{count} of {total} values non-finite (first: {first!r}{where})"


def _torch():
    import sys

    return sys.modules.get("torch")  # only a state holding tensors has imported torch


def first_non_finite(
    state: Any, *, skip: tuple[str, ...] = (), nan_allowed: tuple[str, ...] = ()
) -> tuple[str, str] | None:
    """``(key path, description)`` of the first NaN/inf in ``state``, or ``None``.

    Key paths join dict keys, list indices and NamedTuple fields with dots.  Paths in
    ``skip`` (and below them) are not checked; those in ``nan_allowed`` may hold NaN —
    a marker for "not recorded" — but not an infinity.
    """
    for key, value in _leaves(state, ""):
        if any(key == s or key.startswith(s + ".") for s in skip):
            continue
        problem = _bad_value(value)
        if problem is None:
            continue
        if any(key == s or key.startswith(s + ".") for s in nan_allowed) and not _has_inf(value):
            continue
        return key, problem
    return None


def _has_inf(value: Any) -> bool:
    if isinstance(value, float | np.floating):
        return math.isinf(value)
    if isinstance(value, np.ndarray):
        return bool(np.isinf(value).any())
    torch = _torch()
    if torch is not None and isinstance(value, torch.Tensor):
        return bool(torch.isinf(value).any())
    return False
