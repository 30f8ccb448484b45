"""Atomic checkpoints: write to a temporary file, fsync, then rename over the old one.

A checkpoint is one ``torch.save`` dict.  The rename is atomic on POSIX, so a run killed
while saving leaves the previous checkpoint intact, and a reader never sees half a file.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "ckpt.pt"
>>> save_atomic({"step": 3}, path)
>>> load(path)["step"]
3
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

__all__ = ["save_atomic", "load", "CheckpointFile"]


def save_atomic(state: dict[str, Any], path: str | Path) -> None:
    """Save ``state`` to ``path`` so that ``path`` is always a complete checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_atomic` (CPU tensors; full objects)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}: start without resume, or fix the path")
    return torch.load(path, map_location="cpu", weights_only=False)


class CheckpointFile:
    """A training run's checkpoint on disk, as :func:`amasim.driver.run` uses it.

    ``load()`` returns the saved dict, or ``None`` when there is none (or ``resume`` is
    false); ``save(state)`` writes it atomically.  ``str()`` is the path, for messages.
    """

    def __init__(self, path: str | Path, *, resume: bool = True) -> None:
        self.path, self.resume = Path(path), resume

    def load(self) -> dict[str, Any] | None:
        if not self.resume or not self.path.exists():
            return None
        return load(self.path)

    def save(self, state: dict[str, Any]) -> None:
        save_atomic(state, self.path)

    def __str__(self) -> str:
        return str(self.path)
