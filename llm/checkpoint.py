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

**Only this run's checkpoints.**  Given ``owner`` (the run's owner record,
:func:`llm.integrity.owner_record`), a checkpoint carries it inside its sealed payload and
resuming refuses — never skips, never loads — a checkpoint whose record differs
(:class:`~llm.integrity.ForeignFileError`, naming every differing entry: "written by a run
with a different [generalist] learning_rate (0.3, this run 0.01)"), and one without a
checksum trailer (:class:`~llm.integrity.UnsealedFileError`).  A checkpoint holding a NaN
or an infinity is damaged: it is skipped like a truncated one, and never named the "last
good checkpoint" — :attr:`CheckpointFile.verified` is the newest one this process read or
wrote and found whole and finite.

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
    ForeignFileError,
    IntegrityError,
    IntegrityWarning,
    NonFiniteError,
    UnsealedFileError,
    canonical_owner,
    check_owner,
    first_non_finite,
    fsync_folder,
    remove_stale_temporaries,
    verify,
    write_sealed,
)

__all__ = [
    "NonFiniteStateError",
    "refused_state",
    "OWNER_KEY",
    "save_atomic",
    "load",
    "load_owned",
    "payload_bytes",
    "CheckpointFile",
    "previous_path",
    "unreadable",
]

#: key paths of the driver's checkpoint where NaN marks "not recorded" (the record of
#: the loss of steps not yet taken, or of steps the oracle took itself)
RECORD_PLACEHOLDERS = ("record.loss_sums",)
#: the key of the owner record inside a saved dict (removed again by :func:`load`)
OWNER_KEY = "__owner__"


class NonFiniteStateError(NonFiniteError):
    """A state to be saved holds a NaN or an infinity (the model diverged): nothing was
    written.  A ``FloatingPointError``, so a training loop treats it as divergence."""


def refused_state(step: Any, key: str, problem: str, last_good: str) -> NonFiniteStateError:
    """The error of a training checkpoint refused at ``step``: which value, and what is left
    on disk (``last_good``)."""
    return NonFiniteStateError(
        f"the state at step {step} holds a non-finite value: {key} holds {problem}; it was "
        f"not saved. {last_good}",
        key,
        problem,
    )


def _rebuild_hint(path: Path) -> str:
    return (
        f"delete {path} and run the same command again (that stage is recomputed; a "
        "training stage restarts from its last good checkpoint, or from step 0)"
    )


def _not_a_folder(path: Path, kind: str) -> None:
    if path.is_dir():
        raise IsADirectoryError(
            21,
            f"the {kind} {path} is a folder, not a file. Fix: move that folder away or "
            "delete it (the run keeps a file at that path), then rerun",
        )


def payload_bytes(state: Any) -> int:
    """The bytes of the tensors and arrays in a nested state (what a save needs, about)."""
    if isinstance(state, dict):
        return sum(payload_bytes(v) for v in state.values())
    if isinstance(state, list | tuple):
        return sum(payload_bytes(v) for v in state)
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    return int(getattr(state, "nbytes", 0) or 0)


def save_atomic(
    state: dict[str, Any],
    path: str | Path,
    *,
    kind: str = "checkpoint",
    nan_allowed: tuple[str, ...] = (),
    meta: dict[str, Any] | None = None,
    owner: dict[str, Any] | None = None,
    label: str | Path | None = None,
) -> None:
    """Save ``state`` to ``path`` so that ``path`` is always a complete, finite checkpoint.

    Raises :class:`NonFiniteStateError` (and writes nothing) when a tensor, array or float
    in ``state`` is NaN or infinite, except NaN under the key paths ``nan_allowed``.
    ``meta`` (small JSON values, e.g. the step) goes into the checksum trailer; ``owner``
    (the run's owner record) into the sealed payload, for :func:`load` to check.  A failed
    write names ``label`` (default ``path``), the bytes it needed and that the previous file
    is intact.
    """
    path = Path(path)
    bad = first_non_finite(state, nan_allowed=nan_allowed)
    if bad is not None:
        key, problem = bad
        raise NonFiniteStateError(
            f"refusing to save the {kind} {path}: {key} holds {problem}; the files on disk "
            "are unchanged",
            key,
            problem,
        )
    _not_a_folder(Path(label or path), kind)
    payload = state if owner is None else {**state, OWNER_KEY: canonical_owner(owner)}
    write_sealed(
        path,
        lambda fh: torch.save(payload, fh),
        kind=kind,
        meta=meta,
        label=label,
        needed=payload_bytes(state),
    )


def _elsewhere(path: Path) -> str:
    return (
        f"point [run] out (or --out) at another folder, or delete {path.parent} to compute "
        "it again from the start"
    )


def load(
    path: str | Path,
    *,
    fix: str | None = None,
    owner: dict[str, Any] | None = None,
    kind: str = "checkpoint",
    nan_allowed: tuple[str, ...] = RECORD_PLACEHOLDERS,
    foreign_fix: str | None = None,
) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_atomic` (CPU tensors; full objects).

    The checksum is verified first; a damaged file, or one holding a NaN or an infinity
    (except NaN under ``nan_allowed``), raises :class:`~llm.integrity.IntegrityError`
    naming it and ``fix`` (default: delete it and rerun).  A file without a checksum raises
    :class:`~llm.integrity.UnsealedFileError`; with ``owner``, one written by another run
    :class:`~llm.integrity.ForeignFileError` (naming the differing entries and
    ``foreign_fix``).  The owner record is not part of the returned dict.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}: start without resume, or fix the path")
    _not_a_folder(path, kind)
    fix = fix or _rebuild_hint(path)
    sealed = verify(path, fix) is not None
    state = _torch_load(path, fix)  # a sealed file cut short has lost its trailer: damage
    if not sealed:
        raise UnsealedFileError(
            f"the {kind} {path} has no checksum trailer (written by hand, by another tool or "
            f"by an old version), so it cannot be shown to be whole and this run's. Fix: {fix}",
            path,
        )
    saved_owner = state.pop(OWNER_KEY, None)
    if owner is not None:
        check_owner(saved_owner, owner, path, f"the {kind}", foreign_fix or _elsewhere(path))
    bad = first_non_finite(state, nan_allowed=nan_allowed)
    if bad is not None:
        raise IntegrityError(
            f"{path} holds a non-finite value ({bad[0]}: {bad[1]}), so it is not a good "
            f"checkpoint. Fix: {fix}",
            path,
        )
    return state


def _torch_load(path: Path, fix: str) -> dict[str, Any]:
    """``torch.load`` of a verified file; a file that does not parse as a checkpoint dict
    raises :class:`~llm.integrity.IntegrityError` naming it."""
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


def load_owned(
    path: str | Path, *, owner: dict[str, Any], kind: str = "checkpoint"
) -> dict[str, Any] | None:
    """A file this run may reuse (a reference model, a finished stage's weights): the
    state :func:`load` returns, or ``None`` — with an
    :class:`~llm.integrity.IntegrityWarning` saying why — when it is absent, damaged,
    unsealed, non-finite or written by another run (``owner`` differs): the caller
    computes it again and saves it with :func:`save_atomic` (``owner=owner``)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return load(path, owner=owner, kind=kind)
    except IntegrityError as err:
        warnings.warn(
            f"{kind} {str(err).split(' Fix: ')[0].rstrip('.')}: computing it again",
            IntegrityWarning,
            stacklevel=2,
        )
        return None


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
    :class:`~llm.integrity.IntegrityError` naming them and how to start over.  With
    ``owner`` (the run's owner record) every save carries it and ``load()`` refuses a
    checkpoint of another run (:class:`~llm.integrity.ForeignFileError`) or without a
    seal (:class:`~llm.integrity.UnsealedFileError`) by name, never falling back past it.
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
        owner: dict[str, Any] | None = None,
    ) -> None:
        self.path, self.resume, self.nan_allowed = Path(path), resume, nan_allowed
        self.owner = canonical_owner(owner) if owner is not None else None
        self.previous = previous_path(self.path)
        self.pending = self.path.with_name(f".{self.path.name}.next")  # written, not renamed
        #: (file, step) of the newest checkpoint this object loaded or saved and found whole,
        #: finite and this run's; ``None`` until then
        self.verified: tuple[Path, Any] | None = None

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
                state = load(
                    path,
                    fix=self._start_over(),
                    owner=self.owner,
                    nan_allowed=self.nan_allowed,
                    foreign_fix=self._elsewhere(),
                )
            except (ForeignFileError, UnsealedFileError):
                raise  # not damage: a file that is not provably this run's is never used
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
            self.verified = (path, state.get("step"))
            return state
        raise unreadable(skipped, self._start_over(), self.path)

    def _start_over(self) -> str:
        return (
            f"delete {self.path} and {self.previous} (and {self.pending.name} if present), "
            "then run the same command again (this stage trains again from step 0)"
        )

    def _elsewhere(self) -> str:
        return (
            f"point [run] out (or --out) at another folder for this run, or delete "
            f"{self.path.parent} to train this stage again from step 0"
        )

    def save(self, state: dict[str, Any]) -> None:
        step = state.get("step")
        meta = {"step": step} if isinstance(step, int) else {}
        try:  # the newest file is named in messages: the pending one is an implementation detail
            save_atomic(
                state,
                self.pending,
                meta=meta,
                owner=self.owner,
                label=self.path,
                nan_allowed=self.nan_allowed,
            )
        except NonFiniteStateError as err:  # the one scan of the state, with this file's hint
            raise refused_state(step, err.key, err.problem, self.last_good()) from None
        # Two renames; a crash between them leaves the new state at ``pending`` (load()
        # takes it first) and the old one at ``previous``: never fewer than one good file.
        try:
            if self.path.exists():
                os.replace(self.path, self.previous)  # the newest becomes the previous
            os.replace(self.pending, self.path)
        except OSError as err:
            raise OSError(
                err.errno,
                f"cannot rotate the checkpoints in {self.path.parent}: "
                f"{(err.strerror or str(err)).lower()}; the new state is kept at "
                f"{self.pending}. Fix: check the folder, then rerun",
            ) from err
        fsync_folder(self.path.parent)
        self.verified = (self.path, step)

    def last_good(self) -> str:
        """A sentence naming the newest checkpoint this run verified (loaded or saved whole,
        finite and its own) and its step, or saying there is none."""
        if self.verified is not None:
            path, step = self.verified
            return f"Last good checkpoint: {path} (step {step}), unchanged"
        return f"No checkpoint was saved yet by this run ({self.path})"

    def files(self) -> list[Path]:
        """The checkpoint files kept on disk, newest first."""
        return [p for p in (self.pending, self.path, self.previous) if p.exists()]

    def __str__(self) -> str:
        return str(self.path)
