"""A keyed on-disk store for per-example numbers computed once (reference log-probs,
specialist losses).

An entry is ``DIR/<kind>-<digest>.npz`` where the digest is the sha256 of the JSON of
its key parts (model fingerprint, data fingerprint, β, loss type, ...), so changing the
model or the data selects a different file and a stale cache is never read.  A JSON
sidecar records the key in clear.

Integrity (:mod:`llm.integrity`): an entry is written atomically with a checksum trailer
(it stays an ordinary ``.npz``) and carries its key inside the seal (the array
``__owner__``, the key parts as JSON; not returned): an entry whose key differs from the
one asked for — a file copied or renamed by hand — is rebuilt with a warning naming the
differing parts.  A truncated or altered entry, one that no longer parses,
or one holding a NaN is reported (an :class:`~llm.integrity.IntegrityWarning` naming the
file) and rebuilt.  Freshly computed numbers must be finite: a NaN or an infinity raises
:class:`~llm.integrity.NonFiniteError` naming the kind, the entry (``where``, or its key)
and the index of the example (with its ``path:line`` when ``sources`` are given), and
nothing is cached.  An entry without a checksum (older versions, or written by hand) is
read as it is.  To rebuild a cache, delete its files: they are recomputed on the next run.

>>> import tempfile, numpy as np
>>> d = tempfile.mkdtemp()
>>> calls = []
>>> def compute():
...     calls.append(1)
...     return {"x": np.arange(3.0)}
>>> a = load_or_compute(d, "demo", {"model": "m1"}, compute)
>>> b = load_or_compute(d, "demo", {"model": "m1"}, compute)
>>> len(calls), b["x"].tolist()
(1, [0.0, 1.0, 2.0])
>>> load_or_compute(d, "demo", {"model": "m2"}, lambda: {"x": np.array([0.0, np.nan])},
...                 where="task 'math'", sources={"x": ["a.jsonl:1", "a.jsonl:2"]})
Traceback (most recent call last):
...
llm.integrity.NonFiniteError: the demo numbers of task 'math' are not finite: array 'x' holds nan at example 1 (a.jsonl:2), 1 of 2 values; nothing was cached. Fix: check the model's weights and that example
"""  # noqa: E501

from __future__ import annotations

import hashlib
import io
import json
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llm.integrity import (
    IntegrityError,
    IntegrityWarning,
    NonFiniteError,
    canonical_owner,
    owner_differences,
    remove_stale_temporaries,
    verify,
    write_sealed,
    write_text_atomic,
)

__all__ = ["cache_key", "entry_path", "load_or_compute", "OWNER_ARRAY"]

#: the array of an entry that holds its key parts (JSON), the entry's owner record
OWNER_ARRAY = "__owner__"


def cache_key(parts: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of ``parts``."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def entry_path(cache_dir: str | Path, kind: str, key_parts: dict[str, Any]) -> Path:
    """The file of the entry ``kind``/``key_parts`` in ``cache_dir``."""
    return Path(cache_dir) / f"{kind}-{cache_key(key_parts)[:24]}.npz"


def _read(path: Path, key_parts: dict[str, Any]) -> tuple[dict[str, np.ndarray] | None, str]:
    """The arrays of an entry, or (None, why it cannot be used)."""
    if path.is_dir():
        raise IsADirectoryError(
            21,
            f"cache entry {path} is a folder, not a file. Fix: move that folder away or delete "
            "it (the entry is computed again), then rerun",
        )
    try:
        verify(path)
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except IntegrityError as err:
        return None, str(err).removeprefix(f"{path} ").removeprefix(f"{path}: ")
    except (PermissionError, FileNotFoundError, IsADirectoryError):
        raise  # the file cannot be opened: not damage, and the message names it
    except Exception as err:  # a damaged zip raises BadZipFile, ValueError, EOFError, zlib.error
        return None, f"cannot be read ({type(err).__name__}: {err})"
    owner = arrays.pop(OWNER_ARRAY, None)
    if owner is not None:
        try:
            saved = json.loads(str(owner))
        except ValueError:
            return None, "holds an unreadable key record"
        differ = owner_differences(saved, key_parts) if isinstance(saved, dict) else ["key"]
        if differ:
            return None, f"was computed for another key ({'; '.join(differ[:3])})"
    for name, array in arrays.items():
        if array.dtype.kind in "fc" and not np.isfinite(array).all():
            return None, f"array {name!r} holds NaN or infinite values"
    return arrays, ""


def _check_finite(
    arrays: Mapping[str, np.ndarray],
    kind: str,
    where: str,
    sources: Mapping[str, Sequence[str]] | None,
) -> None:
    for name, value in arrays.items():
        array = np.asarray(value)
        if array.dtype.kind not in "fc":
            continue
        bad = ~np.isfinite(array)
        if not bad.any():
            continue
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        first = (array[index] if index else array[()]).item()
        at = ""
        if index:
            row = index[0]
            source = sources.get(name) if sources else None
            named = f" ({source[row]})" if source is not None and row < len(source) else ""
            at = f" at example {row}{named}"
        raise NonFiniteError(
            f"the {kind} numbers of {where} are not finite: array {name!r} holds "
            f"{first!r}{at}, {int(bad.sum())} of {array.size} values; nothing was cached. "
            "Fix: check the model's weights and that example",
            name,
        )


def load_or_compute(
    cache_dir: str | Path,
    kind: str,
    key_parts: dict[str, Any],
    compute: Callable[[], dict[str, np.ndarray]],
    *,
    where: str = "",
    sources: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, np.ndarray]:
    """Return the cached arrays for ``key_parts``, computing and storing them if absent
    (or damaged: rebuilt, with a warning).

    ``where`` names the entry in messages (e.g. ``"task 'math' (train split)"``; default:
    its key); ``sources[name][i]`` is the ``path:line`` of row ``i`` of array ``name``.
    """
    folder = Path(cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = entry_path(folder, kind, key_parts)
    where = where or f"key {json.dumps(key_parts, sort_keys=True, default=str)[:200]}"
    if path.exists():
        arrays, why = _read(path, key_parts)
        if arrays is not None:
            return arrays
        warnings.warn(
            f"cache entry {path} ({kind}, {where}) {why}: rebuilding it",
            IntegrityWarning,
            stacklevel=2,
        )
    remove_stale_temporaries(path)
    arrays = compute()
    _check_finite(arrays, kind, where, sources)
    buffer = io.BytesIO()
    key = json.dumps(canonical_owner(key_parts), sort_keys=True)
    np.savez(buffer, **arrays, **{OWNER_ARRAY: np.array(key)})
    write_sealed(path, lambda fh: fh.write(buffer.getbuffer()), kind=f"{kind} cache entry")
    sidecar = path.with_suffix(".json")
    text = json.dumps({"kind": kind, "key": key_parts}, indent=2, default=str)
    write_text_atomic(sidecar, text, kind="cache key record")
    return arrays
