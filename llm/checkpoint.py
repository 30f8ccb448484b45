"""Checkpoints: atomic, checksummed, finite, and the last two kept.

A checkpoint is one ``torch.save`` dict written by :func:`llm.integrity.write_sealed`:
streamed to a temporary file with its sha256, a checksum trailer appended, fsync'ed and
renamed over the old one, so a run killed while saving leaves the previous checkpoint
intact and a reader never sees half a file.  :func:`load` verifies the checksum: a
truncated or altered file raises :class:`~llm.integrity.IntegrityError` naming it and the
way to rebuild it — never a raw ``PytorchStreamReader`` / ``BadZipFile`` / ``EOFError``.

A state holding a NaN or an infinity is never written: :func:`save_atomic` raises
:class:`NonFiniteStateError` (a ``FloatingPointError``) naming the key path, e.g.
``oracle.policy.transformer.h.0.attn.c_attn.weight``, and leaves the files on disk as
they were.

:class:`CheckpointFile` is what :func:`amasim.driver.run` saves through.  It keeps the
newest checkpoint at ``PATH`` and the one before at ``PATH.prev.pt`` (``checkpoint.pt``,
``checkpoint.prev.pt``); ``load()`` resumes from the newest that verifies and warns
(:class:`~llm.integrity.IntegrityWarning`) about one it skipped, and why.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "ckpt.pt"
>>> save_atomic({"step": 3}, path)
>>> load(path)["step"]
3
>>> save_atomic({"step": 4, "loss": float("nan")}, path)  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
llm.checkpoint.NonFiniteStateError: refusing to save the checkpoint ...ckpt.pt: loss holds nan; ...
>>> load(path)["step"]
3
"""

from __future__ import annotations

import os
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from llm.integrity import (
    IntegrityError,
    IntegrityWarning,
    NonFiniteError,
    first_non_finite,
    fsync_folder,
    read_trailer,
    remove_stale_temporaries,
    verify,
    write_sealed,
)

__all__ = [
    "NonFiniteStateError",
    "save_atomic",
    "load",
    "CheckpointFile",
    "previous_path",
    "unreadable",
]

#: key paths of the driver's checkpoint where NaN marks "not recorded" (the record of
#: the loss of steps not yet taken, or of steps the oracle took itself)
RECORD_PLACEHOLDERS = ("record.loss_sums",)


class NonFiniteStateError(NonFiniteError):
    """A state to be saved holds a NaN or an infinity (the model diverged): nothing was
    written.  A ``FloatingPointError``, so a training loop treats it as divergence."""


def _rebuild_hint(path: Path) -> str:
    return (
        f"delete {path} and run the same command again (that stage is recomputed; a "
        "training stage restarts from its last good checkpoint, or from step 0)"
    )


def save_atomic(
    state: dict[str, Any],
    path: str | Path,
    *,
    kind: str = "checkpoint",
    nan_allowed: tuple[str, ...] = (),
    meta: dict[str, Any] | None = None,
) -> None:
    """Save ``state`` to ``path`` so that ``path`` is always a complete, finite checkpoint.

    Raises :class:`NonFiniteStateError` (and writes nothing) when a tensor, array or float
    in ``state`` is NaN or infinite, except NaN under the key paths ``nan_allowed``.
    ``meta`` (small JSON values, e.g. the step) goes into the checksum trailer.
    """
    path = Path(path)
    bad = first_non_finite(state, nan_allowed=nan_allowed)
    if bad is not None:
        key, problem = bad
        raise NonFiniteStateError(
            f"refusing to save the {kind} {path}: {key} holds {problem}; the files on disk "
            "are unchanged",
            key,
        )
    write_sealed(path, lambda fh: torch.save(state, fh), kind=kind, meta=meta)


def load(path: str | Path, *, fix: str | None = None) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_atomic` (CPU tensors; full objects).

    The checksum is verified first; a damaged file raises
    :class:`~llm.integrity.IntegrityError` naming it and ``fix`` (default: delete it and
    rerun).  A file without a checksum (older versions) is loaded as it is.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}: start without resume, or fix the path")
    fix = fix or _rebuild_hint(path)
    verify(path, fix)
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except (PermissionError, FileNotFoundError, IsADirectoryError):
        raise  # the file cannot be opened: not damage, and the message names it
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError) as err:
        # torch reports a cut zip as RuntimeError (PytorchStreamReader), OSError (EINVAL),
        # EOFError or an unpickling error, depending on where the cut falls
        raise IntegrityError(
            f"{path} cannot be read as a checkpoint ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else 'no detail'}); it is truncated or "
            f"damaged. Fix: {fix}",
            path,
        ) from None
    except Exception as err:  # unpickling damaged bytes raises almost anything
        raise IntegrityError(
            f"{path} cannot be read as a checkpoint ({type(err).__name__}); it is damaged. "
            f"Fix: {fix}",
            path,
        ) from None
    if not isinstance(state, dict):
        raise IntegrityError(
            f"{path} holds a {type(state).__name__}, not a checkpoint dict. Fix: {fix}", path
        )
    return state


def previous_path(path: str | Path) -> Path:
    """Where :class:`CheckpointFile` keeps the checkpoint before the newest one."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def unreadable(skipped: list[str], fix: str, path: Path) -> IntegrityError:
    """The error of a run none of whose checkpoints verifies: why each was skipped, and
    ``fix``."""
    return IntegrityError(
        f"no checkpoint of this run can be read: {'; '.join(skipped)}. Fix: {fix}", path
    )


class CheckpointFile:
    """A training run's checkpoints on disk, as :func:`amasim.driver.run` uses them.

    ``load()`` returns the newest saved dict that verifies — ``PATH``, else the previous
    one kept at :func:`previous_path` (warning which was skipped and why) — or ``None``
    when there is none (or ``resume`` is false); when every kept file is damaged it raises
    :class:`~llm.integrity.IntegrityError` naming them and how to start over.
    ``save(state)`` refuses a non-finite state (:class:`NonFiniteStateError`, naming the
    key and the last good checkpoint) and otherwise writes it atomically, keeping the one
    before.  ``str()`` is the path, for messages.  NaN under ``nan_allowed`` key paths is
    the driver's "not recorded" marker and is allowed.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        resume: bool = True,
        nan_allowed: tuple[str, ...] = RECORD_PLACEHOLDERS,
    ) -> None:
        self.path, self.resume, self.nan_allowed = Path(path), resume, nan_allowed
        self.previous = previous_path(self.path)
        self.pending = self.path.with_name(f".{self.path.name}.next")  # written, not renamed

    def load(self) -> dict[str, Any] | None:
        if not self.resume:
            return None
        for stale in (self.path, self.pending):
            remove_stale_temporaries(stale)
        # newest first: a save interrupted between its renames left the new state pending
        candidates = [p for p in (self.pending, self.path, self.previous) if p.exists()]
        if not candidates:
            return None
        skipped: list[str] = []
        for path in candidates:
            try:
                state = load(path, fix=self._start_over())
            except IntegrityError as err:
                skipped.append(str(err).split(" Fix: ")[0])
                continue
            if skipped:
                warnings.warn(
                    f"resuming from {path} (step {state.get('step', '?')}): skipped "
                    + "; ".join(skipped),
                    IntegrityWarning,
                    stacklevel=2,
                )
            return state
        raise unreadable(skipped, self._start_over(), self.path)

    def _start_over(self) -> str:
        return (
            f"delete {self.path} and {self.previous} (and {self.pending.name} if present), "
            "then run the same command again (this stage trains again from step 0)"
        )

    def save(self, state: dict[str, Any]) -> None:
        step = state.get("step")
        meta = {"step": step} if isinstance(step, int) else {}
        bad = first_non_finite(state, nan_allowed=self.nan_allowed)
        if bad is not None:
            key, problem = bad
            raise NonFiniteStateError(
                f"the state at step {step} holds a non-finite value: {key} holds {problem}; "
                f"it was not saved. {self.last_good()}",
                key,
            )
        pending = self.pending
        write_sealed(pending, lambda fh: torch.save(state, fh), kind="checkpoint", meta=meta)
        # Two renames; a crash between them leaves the new state at ``pending`` (load()
        # takes it first) and the old one at ``previous``: never fewer than one good file.
        try:
            if self.path.exists():
                os.replace(self.path, self.previous)  # the newest becomes the previous
            os.replace(pending, self.path)
        except OSError as err:
            raise OSError(
                err.errno,
                f"cannot rotate the checkpoints in {self.path.parent}: {err.strerror}; the "
                f"new state is kept at {pending}. Fix: check the folder, then rerun",
            ) from err
        fsync_folder(self.path.parent)

    def last_good(self) -> str:
        """A sentence naming the newest checkpoint on disk and its step, or saying none."""
        for path in (self.pending, self.path, self.previous):
            if path.exists():
                record = read_trailer(path) or {}
                step = (record.get("meta") or {}).get("step", "?")
                return f"Last good checkpoint: {path} (step {step}), unchanged"
        return f"No checkpoint was saved yet ({self.path} does not exist)"

    def files(self) -> list[Path]:
        """The checkpoint files kept on disk, newest first."""
        return [p for p in (self.pending, self.path, self.previous) if p.exists()]

    def __str__(self) -> str:
        return str(self.path)
