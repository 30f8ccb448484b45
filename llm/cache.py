"""A keyed on-disk store for per-example numbers computed once (reference log-probs,
specialist losses).

An entry is ``DIR/<kind>-<digest>.npz`` where the digest is the sha256 of the JSON of
its key parts (model fingerprint, data fingerprint, β, loss type, ...), so changing the
model or the data selects a different file and a stale cache is never read.  A JSON
sidecar records the key in clear.  Writes go to a temporary file renamed into place, so
a crash never leaves a half-written entry.

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
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["cache_key", "load_or_compute"]


def cache_key(parts: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of ``parts``."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def load_or_compute(
    cache_dir: str | Path,
    kind: str,
    key_parts: dict[str, Any],
    compute: Callable[[], dict[str, np.ndarray]],
) -> dict[str, np.ndarray]:
    """Return the cached arrays for ``key_parts``, computing and storing them if absent."""
    folder = Path(cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{kind}-{cache_key(key_parts)[:24]}.npz"
    if path.exists():
        with np.load(path) as data:
            return {name: data[name] for name in data.files}
    arrays = compute()
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    tmp.replace(path)
    sidecar = path.with_suffix(".json")
    sidecar.write_text(json.dumps({"kind": kind, "key": key_parts}, indent=2, default=str))
    return arrays
