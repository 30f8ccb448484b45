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
zip, and the readers name that failure the same way); checkpoints refuse it
(:class:`UnsealedFileError`).

**Whose file it is.**  A checkpoint, a cache entry or a reference model also carries,
inside its sealed payload, the *owner record* of the run that wrote it: a flat dict of the
settings that determine that run (:func:`owner_record`, e.g. ``{"[generalist]
learning_rate": 0.3, "data": "<fingerprint>", ...}``).  A reader compares it with its own
(:func:`check_owner`) and refuses another run's file with :class:`ForeignFileError`,
naming every entry that differs.

**Failed writes** (a full disk, a file-size limit, a permission lost mid-run, a read-only
file system) are restated as one ``OSError`` line: the file, the errno in words, the bytes
the file needed where known, and that the previous file is intact — never torch's
``RuntimeError: [enforce fail at inline_container.cc] unexpected pos``.

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
    "ForeignFileError",
    "UnsealedFileError",
    "owner_record",
    "canonical_owner",
    "owner_differences",
    "check_owner",
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


class ForeignFileError(IntegrityError):
    """A file written by another run: its owner record differs from this run's
    (``differences`` lists the entries, e.g. ``"[dpo] beta (0.2, this run 0.1)"``)."""

    def __init__(self, message: str, path: str | Path, differences: list[str]) -> None:
        super().__init__(message, path)
        self.differences = differences


class UnsealedFileError(IntegrityError):
    """A file without a checksum trailer where only a sealed, owned one is trusted."""


class IntegrityWarning(UserWarning):
    """A damaged file was skipped or rebuilt (a cache entry, an older checkpoint)."""


class NonFiniteError(FloatingPointError):
    """A NaN or an infinity where only finite numbers may be; ``key`` names where,
    ``problem`` what (e.g. "nan")."""

    def __init__(self, message: str, key: str = "", problem: str = "") -> None:
        super().__init__(message)
        self.key, self.problem = key, problem


# ----------------------------------------------------------------------------- writing
class _Hashing:
    """A write-only file wrapper that hashes and counts what goes through it."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh, self.sha, self.bytes = fh, hashlib.sha256(), 0
        self.error: OSError | None = None  # the first failed write (torch hides it)

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        self.sha.update(view)
        self.bytes += view.nbytes
        try:
            return self.fh.write(view)
        except OSError as err:
            self.error = self.error or err
            raise

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


#: what to do about a failed write, by errno
_WRITE_FIXES = {
    errno.ENOSPC: "free disk space, or point --out / [run] out at a larger disk, then rerun",
    errno.EDQUOT: "free space within your disk quota, or point --out / [run] out elsewhere",
    errno.EFBIG: "raise the file-size limit (ulimit -f unlimited) or write to a file system "
    "that allows larger files, then rerun",
    errno.EACCES: "make the folder writable again, or choose a writable --out / [run] out",
    errno.EPERM: "make the folder writable again, or choose a writable --out / [run] out",
    errno.EROFS: "remount the disk read-write, or choose a writable --out / [run] out",
    errno.EIO: "check the disk (it reported an I/O error), then rerun",
    errno.EISDIR: "move that folder away or delete it (a file is written at its path), then rerun",
}


def _size(n: int) -> str:
    for unit in ("bytes", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} bytes"  # pragma: no cover


def _errno_words(err: OSError) -> str:
    """``file too large (EFBIG)``: the errno in words, and its name."""
    if err.errno is None:
        return str(err.strerror or err)
    words = os.strerror(err.errno)
    name = errno.errorcode.get(err.errno, str(err.errno))
    if err.errno == errno.EFBIG:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if limit != resource.RLIM_INFINITY:
            return f"{words} ({name}: the file-size limit, ulimit -f, is {_size(limit)})"
    return f"{words} ({name})"


def write_failed(
    err: OSError,
    path: Path,
    kind: str,
    *,
    needed: int | None = None,
    written: int | None = None,
    before: str | None = None,
) -> OSError:
    """``err`` restated on one line: the file, the errno in words, the bytes the file
    needed (``needed``, estimated) and had got (``written``) where known, that the previous
    file is intact (or ``before``, what is left instead), and the fix.  The same
    ``OSError`` subclass and errno."""
    sizes = []
    if needed:
        sizes.append(f"it needed about {_size(needed)}")
    if written:
        sizes.append(f"{_size(written)} were written")
    if before is not None:
        pass
    elif path.is_dir():
        before = "a folder of that name is in the way (left as it is)"
    elif path.exists():
        before = f"the previous {path.name} is intact"
    else:
        before = "nothing was written there (no earlier file)"
    fix = _WRITE_FIXES.get(err.errno, "check the disk and the folder, then rerun")
    message = "; ".join([f"cannot write the {kind} {path}: {_errno_words(err)}", *sizes, before])
    message += f". Fix: {fix}"
    return type(err)(err.errno, message) if err.errno is not None else OSError(message)


def os_error_in(err: BaseException) -> OSError | None:
    """The ``OSError`` behind ``err`` (itself, or its cause or context: torch's writer turns
    a failed write into ``RuntimeError: ... unexpected pos``), or ``None``."""
    seen = 0
    while err is not None and seen < 8:
        if isinstance(err, OSError):
            return err
        err, seen = err.__cause__ or err.__context__, seen + 1
    return None


@contextlib.contextmanager
def _replacing(
    path: Path, kind: str, mode: str, *, label: Path | None = None, needed: int | None = None
) -> Iterator[Any]:
    """A file opened beside ``path`` (``.name.<pid>.tmp``) for the caller to fill; on a clean
    exit it is flushed, fsync'ed and renamed over ``path`` (then the folder is fsync'ed).  On
    any failure it is removed and ``path`` is untouched; a failed write (an ``OSError``, or
    a ``RuntimeError`` a writer raised over one) is restated by :func:`write_failed`,
    naming ``label`` (default ``path``)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, "is a folder, not a file")
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, mode, **({"encoding": "utf-8"} if "b" not in mode else {})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_folder(path.parent)
    except BaseException as err:
        written = tmp.stat().st_size if tmp.is_file() else None
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        cause = os_error_in(err) if isinstance(err, Exception) else None
        if cause is None:
            raise
        label = label or path
        raise write_failed(cause, label, kind, needed=needed, written=written) from err


def write_sealed(
    path: str | Path,
    dump: Callable[[Any], Any],
    *,
    kind: str,
    meta: Mapping[str, Any] | None = None,
    label: str | Path | None = None,
    needed: int | None = None,
) -> None:
    """Atomically write ``dump(file)``'s bytes to ``path``, sealed with a checksum trailer.

    ``dump`` receives a write-only file object (``torch.save(state, f)`` works; for
    ``np.savez`` serialise to bytes first).  On any failure the temporary file is removed
    and the previous ``path`` is untouched; a failed write is restated naming the file
    (``label``, when messages should name another path than ``path``) and the bytes it
    ``needed`` (an estimate, where the caller knows one).
    """
    path = Path(path)
    with _replacing(path, kind, "wb", label=Path(label or path), needed=needed) as fh:
        sink = _Hashing(fh)
        try:
            dump(sink)
        except OSError:
            raise
        except Exception as err:
            if sink.error is not None:  # the writer hid the OSError behind its own error
                raise sink.error from err
            raise
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


# ----------------------------------------------------------------------------- owners
def owner_record(sections: Mapping[str, Any] | None = None, **entries: Any) -> dict[str, Any]:
    """A flat owner record: every field of each config section as ``"[section] key"``
    (a dataclass or a mapping; nested mappings as ``"[section] key.sub"``), then
    ``entries`` as they are (fingerprints, numerics, the method, the seed).

    >>> owner_record({"dpo": {"beta": 0.1, "loss_type": "sigmoid"}}, data="ab12")
    {'[dpo] beta': 0.1, '[dpo] loss_type': 'sigmoid', 'data': 'ab12'}
    """
    import dataclasses

    out: dict[str, Any] = {}

    def add(prefix: str, value: Any) -> None:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = dataclasses.asdict(value)
        if isinstance(value, Mapping):
            for key, item in value.items():
                add(f"{prefix}.{key}" if not prefix.endswith("]") else f"{prefix} {key}", item)
        else:
            out[prefix] = value

    for name, section in (sections or {}).items():
        add(f"[{name}]", section)
    out.update(entries)
    return canonical_owner(out)


def canonical_owner(owner: Mapping[str, Any]) -> dict[str, Any]:
    """``owner`` as its JSON gives it back (tuples as lists, keys as strings), so a record
    compares equal to itself after a round trip through any file."""
    return json.loads(json.dumps(dict(owner), sort_keys=True, default=str))


def _shown(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def owner_differences(saved: Mapping[str, Any], ours: Mapping[str, Any]) -> list[str]:
    """The entries in which two owner records differ, e.g. ``"[dpo] beta (0.2, this run
    0.1)"`` (an entry one of them lacks reads ``absent``)."""
    saved, ours = canonical_owner(saved), canonical_owner(ours)
    out = []
    for key in sorted(set(saved) | set(ours)):
        if saved.get(key, _ABSENT) == ours.get(key, _ABSENT):
            continue
        a = _shown(saved[key]) if key in saved else "absent"
        b = _shown(ours[key]) if key in ours else "absent"
        out.append(f"{key} ({a}, this run {b})")
    return out


_ABSENT = object()


def check_owner(
    saved: Mapping[str, Any] | None, owner: Mapping[str, Any], path: Path, what: str, fix: str
) -> None:
    """Raise :class:`ForeignFileError` unless ``saved`` (the owner record read from the
    file at ``path``, ``None`` when it has none) is ``owner``; the message names ``what``
    the file is, every entry that differs and ``fix``."""
    if saved is None:
        raise ForeignFileError(
            f"{what} {path} carries no owner record (written by an older version or by "
            f"another tool), so it cannot be shown to belong to this run. Fix: {fix}",
            path,
            ["owner record (absent)"],
        )
    differences = owner_differences(saved, owner)
    if not differences:
        return
    shown = " and ".join(differences[:4])
    more = f" (and {len(differences) - 4} more)" if len(differences) > 4 else ""
    raise ForeignFileError(
        f"{what} {path} was written by a run with a different {shown}{more}. Fix: {fix}",
        path,
        differences,
    )


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
