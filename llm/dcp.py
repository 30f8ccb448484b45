"""Distributed checkpoints: each rank writes its own shards, a run resumes on any world size;
atomic, checksummed, finite, the last two kept.

A checkpoint is a folder (``OUT/checkpoint``) written with :mod:`torch.distributed.checkpoint`
(DCP) and sealed with :mod:`llm.integrity`:

=====================  ==================================================================
``.metadata``,         every tensor of the state — the model's and the optimizer's shards
``__R_I.distcp``       (DTensors under FSDP), each written by the rank that holds it, with
                       its global shape and where every part lies (DCP's metadata)
``state.pt``           sealed ``torch.save`` of everything else (phase, step, mixer state,
                       record, data position, optimizer settings) and the tensors' places
``manifest.json``      sealed, written last: bytes and sha256 of every other file
=====================  ==================================================================

Saving is collective (every rank calls :meth:`ShardedCheckpoint.save` with its state): a
NaN or infinity on any rank's shard is refused on every rank before anything is written
(:class:`llm.checkpoint.NonFiniteStateError`, naming the key).  The ranks write a fresh
``.checkpoint.tmp``; rank 0 seals it and renames it ``.checkpoint.next``, then the newest
becomes ``checkpoint.prev`` and the new one ``checkpoint`` — a crash at any point leaves at
least one complete checkpoint, which :meth:`~ShardedCheckpoint.load` (newest first) takes.
Loading: rank 0 verifies the manifest's seal and every file's size and sha256; a damaged
checkpoint is skipped with an :class:`~llm.integrity.IntegrityWarning` (the one before is
used), and when none verifies an :class:`~llm.integrity.IntegrityError` names them and
the fix.  The folders need a filesystem every rank sees (one node, or a shared disk).

**Only this run's.**  Given the run's ``owner`` record (:func:`llm.integrity.owner_record`),
the sealed manifest carries it, and loading refuses — on every rank alike — a checkpoint
whose record differs (:class:`~llm.integrity.ForeignFileError`, naming each differing
entry) or whose manifest is not sealed (:class:`~llm.integrity.UnsealedFileError`); a state
read back holding a NaN or an infinity is refused too.  A failed save (DCP's
``CheckpointException`` included) is restated as one ``OSError`` line naming the folder.

**Another world size.**  DCP reads any region of a saved tensor, so a checkpoint fills
whatever the reader asks for: the shards of this run's sharding (the ``template``: the
oracle's state after a reset, on 1, 2 or 8 ranks), or whole CPU tensors
(:func:`read_checkpoint`, e.g. a specialist's weights for a merge).  The model and
optimizer states are keyed by parameter name
(:func:`torch.distributed.checkpoint.state_dict.get_state_dict`), not by rank.

>>> import tempfile, pathlib, torch
>>> folder = pathlib.Path(tempfile.mkdtemp()) / "checkpoint"
>>> ShardedCheckpoint(folder).save({"step": 2, "weights": {"w": torch.ones(3)}})
>>> ShardedCheckpoint(folder).load()["weights"]["w"]
tensor([1., 1., 1.])
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llm.checkpoint import (
    RECORD_PLACEHOLDERS,
    CheckpointFile,
    payload_bytes,
    refused_state,
    unreadable,
)
from llm.integrity import (
    ForeignFileError,
    IntegrityError,
    IntegrityWarning,
    UnsealedFileError,
    canonical_owner,
    check_owner,
    first_non_finite,
    fsync_folder,
    os_error_in,
    read_trailer,
    verify,
    write_failed,
    write_sealed,
)
from llm.parallel import all_gather_object, broadcast_object, is_distributed, rank, world_size

__all__ = ["ShardedCheckpoint", "read_checkpoint", "sharded_path", "drop_checkpoints"]

#: separator of the key paths of the tensors in the DCP files (never inside a state key)
_SEP = "/"
_FORMAT = 1


@dataclass(frozen=True)
class _Slot:
    """Where a tensor of the state sits; stands in for it in ``state.pt``."""

    key: str


def _split(state: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], Any]:
    """(tensors by key path, the state with each tensor replaced by its :class:`_Slot`);
    tensors are found in nested dicts (other containers are kept whole)."""
    tensors: dict[str, torch.Tensor] = {}

    def strip(value: Any, path: tuple[str, ...]) -> Any:
        if isinstance(value, Mapping):
            out = {}
            for key, item in value.items():
                if _SEP in str(key):
                    raise ValueError(f"state key {key!r} holds {_SEP!r}: rename it")
                out[key] = strip(item, (*path, str(key)))
            return out
        if isinstance(value, torch.Tensor):
            key = _SEP.join(path)
            tensors[key] = value
            return _Slot(key)
        return value

    return tensors, strip(state, ())


def _join(rest: Any, tensors: Mapping[str, Any]) -> Any:
    """The state :func:`_split` took apart, each slot filled from ``tensors`` (None if absent)."""
    if isinstance(rest, _Slot):
        return tensors.get(rest.key)
    if isinstance(rest, dict):
        return {key: _join(value, tensors) for key, value in rest.items()}
    return rest


def _local(value: torch.Tensor) -> torch.Tensor:
    """This rank's part of ``value`` (a DTensor's shard, or the tensor)."""
    return value.to_local() if hasattr(value, "to_local") else value


def sharded_path(path: str | Path) -> Path:
    """The checkpoint folder that goes with a file checkpoint's path: ``.../checkpoint.pt``
    → ``.../checkpoint`` (where :func:`llm.train.train` keeps a sharded run's checkpoints)."""
    path = Path(path)
    return path.with_suffix("") if path.suffix == ".pt" else path


def drop_checkpoints(path: str | Path, *, keep_newest: bool = False) -> list[Path]:
    """Remove a finished run's resume state, whichever way it was saved: the checkpoint
    file ``path`` (``.../checkpoint.pt``) or folder (:func:`sharded_path`), the one before
    it (``.prev``) and an unfinished save; with ``keep_newest`` the newest checkpoint stays
    (the final weights).  The removed paths (``[run] keep``, :data:`llm.config.KEEP`).

    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> for name in ("checkpoint.pt", "checkpoint.prev.pt"):
    ...     _ = (folder / name).write_bytes(b"x")
    >>> [p.name for p in drop_checkpoints(folder / "checkpoint.pt", keep_newest=True)]
    ['checkpoint.prev.pt']
    >>> sorted(p.name for p in folder.iterdir())
    ['checkpoint.pt']
    """
    files = CheckpointFile(path)
    folders = ShardedCheckpoint(sharded_path(path))
    doomed = [files.previous, files.pending, folders.previous, folders.pending, folders.tmp]
    if not keep_newest:
        doomed += [files.path, folders.path]
    removed = []
    for target in doomed:
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        else:
            continue
        removed.append(target)
    return removed


# --------------------------------------------------------------------------- collectives
def _from_rank0(value: Any) -> Any:
    """Rank 0's ``value`` on every rank."""
    return broadcast_object(value, src=0)


def _gather(value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order."""
    return all_gather_object(value)


def _agree(error: str | None) -> None:
    """Raise on every rank the OSError rank 0 met (a lone rank raising would hang the rest)."""
    error = _from_rank0(error)
    if error is not None:
        raise OSError(error)


def _os_error_of(err: BaseException) -> OSError | None:
    """The ``OSError`` behind a failed DCP save: in the chain of ``err``, or among the
    per-rank failures of a ``CheckpointException``."""
    found = os_error_in(err) if isinstance(err, Exception) else None
    for failure in (getattr(err, "failures", None) or {}).values():
        exc = failure[0] if isinstance(failure, tuple) else failure
        if found is None and isinstance(exc, BaseException):
            found = os_error_in(exc) if isinstance(exc, Exception) else None
    return found


# --------------------------------------------------------------------------- files
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name != "manifest.json")


def _verify_folder(folder: Path, fix: str) -> dict[str, Any]:
    """The manifest of ``folder``; raises :class:`IntegrityError` unless ``folder`` holds a
    sealed manifest (unsealed: :class:`~llm.integrity.UnsealedFileError`) and every file it
    lists with its size and sha256."""
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        raise IntegrityError(
            f"{folder} has no manifest.json: its save did not finish. Fix: {fix}", folder
        )
    if verify(manifest, fix) is None:
        raise UnsealedFileError(
            f"the checkpoint {folder} has no checksum trailer on its manifest.json (not "
            f"written by llm.dcp), so it cannot be shown to be whole and this run's. Fix: {fix}",
            folder,
        )
    record = read_trailer(manifest)
    size = record["bytes"]
    with open(manifest, "rb") as fh:
        listed = json.loads(fh.read(size))
    for name, entry in listed["files"].items():
        path = folder / name
        if not path.is_file():
            raise IntegrityError(f"{path} is missing from the checkpoint. Fix: {fix}", folder)
        if path.stat().st_size != entry["bytes"]:
            raise IntegrityError(
                f"{path} is truncated or grown ({path.stat().st_size} bytes, the manifest "
                f"says {entry['bytes']}). Fix: {fix}",
                folder,
            )
        if _sha256(path) != entry["sha256"]:
            raise IntegrityError(
                f"{path} is altered: its sha256 differs from the manifest's. Fix: {fix}", folder
            )
    return listed


def _no_dist() -> bool:
    return not is_distributed()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """DCP warns when it runs without a process group; here one process is meant (a run of
    one process, or one rank reading a whole checkpoint)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to.*")
        yield


# --------------------------------------------------------------------------- checkpoint
class ShardedCheckpoint:
    """A run's checkpoints as DCP folders — the protocol of :func:`amasim.driver.run`
    (``load()``, ``save(state)``, ``str()``), for a model sharded across ranks.

    ``template()``, when given, returns a state shaped as the saved one whose tensors are
    this run's (DTensor shards under FSDP, on the training device): :meth:`load` reads into
    them, so each rank reads just its shards, whatever world size wrote them.  Tensors the
    template lacks are read whole onto the CPU.  ``resume=False``: ``load()`` returns None.
    NaN under the key paths ``nan_allowed`` is the driver's "not recorded" marker.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        resume: bool = True,
        template: Callable[[], Mapping[str, Any]] | None = None,
        nan_allowed: tuple[str, ...] = RECORD_PLACEHOLDERS,
        owner: Mapping[str, Any] | None = None,
    ) -> None:
        self.path, self.resume, self.template = Path(path), resume, template
        self.nan_allowed = nan_allowed
        self.owner = canonical_owner(owner) if owner is not None else None
        #: (folder, step) of the newest checkpoint this process loaded or saved whole,
        #: finite and this run's; ``None`` until then
        self.verified: tuple[Path, Any] | None = None
        self.previous = self.path.with_name(f"{self.path.name}.prev")
        self.pending = self.path.with_name(f".{self.path.name}.next")
        self.tmp = self.path.with_name(f".{self.path.name}.tmp")

    def __str__(self) -> str:
        return str(self.path)

    def files(self) -> list[Path]:
        """The checkpoint folders on disk, newest first."""
        return [p for p in (self.pending, self.path, self.previous) if p.is_dir()]

    def _start_over(self) -> str:
        return (
            f"delete {self.path} and {self.previous} (and {self.pending.name} if present), "
            "then run the same command again (this stage trains again from step 0)"
        )

    def _elsewhere(self) -> str:
        return (
            f"point [run] out (or --out) at another folder for this run, or delete "
            f"{self.path}, {self.previous} and {self.pending.name} to train this stage again "
            "from step 0"
        )

    def last_good(self) -> str:
        """A sentence naming the newest checkpoint this run verified (loaded or saved whole,
        finite and its own) and its step, or saying there is none."""
        if self.verified is not None:
            folder, step = self.verified
            return f"Last good checkpoint: {folder} (step {step}), unchanged"
        return f"No checkpoint was saved yet by this run ({self.path})"

    # ------------------------------------------------------------------ save
    def save(self, state: Mapping[str, Any]) -> None:
        """Write ``state`` (every rank passes its own; collective) as the newest checkpoint."""
        step = state.get("step")
        tensors, rest = _split(state)
        local = _join(rest, {k: _local(v) for k, v in tensors.items()})
        bad = first_non_finite(local, nan_allowed=self.nan_allowed)
        found = next((b for b in _gather(bad) if b is not None), None)
        if found is not None:
            raise refused_state(step, *found, self.last_good())
        error = None
        if rank() == 0:
            try:
                shutil.rmtree(self.tmp, ignore_errors=True)
                self.tmp.mkdir(parents=True)
            except OSError as err:
                error = f"cannot write the checkpoint {self.tmp}: {err}. Fix: check the folder"
        _agree(error)
        from torch.distributed.checkpoint import FileSystemWriter
        from torch.distributed.checkpoint import save as dcp_save

        try:
            with _quiet():
                dcp_save(tensors, storage_writer=FileSystemWriter(self.tmp), no_dist=_no_dist())
        except BaseException as err:  # DCP's CheckpointException is a BaseException
            cause = _os_error_of(err)
            if cause is None:
                raise
            kept = (
                f"the previous checkpoint {self.path.name} is intact"
                if self.path.is_dir()
                else None
            )
            raise write_failed(
                cause, self.path, "checkpoint", needed=payload_bytes(local), before=kept
            ) from err
        error = None
        if rank() == 0:
            try:
                self._seal(rest, sorted(tensors), step)
                self._rotate()
            except OSError as err:
                error = f"{err}; the checkpoints before are unchanged"
        _agree(error)
        self.verified = (self.path, step)

    def _seal(self, rest: Any, keys: list[str], step: Any) -> None:
        meta = {"step": step} if isinstance(step, int) else {}
        world = world_size()
        saved = {"format": _FORMAT, "rest": rest, "tensors": keys, "world": world}
        write_sealed(
            self.tmp / "state.pt",
            lambda fh: torch.save(saved, fh),
            kind="checkpoint",
            meta=meta,
            label=self.path,
        )
        listed = {
            p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in _files(self.tmp)
        }
        manifest = {"format": _FORMAT, "files": listed, "owner": self.owner}
        text = json.dumps(manifest, sort_keys=True).encode()
        write_sealed(
            self.tmp / "manifest.json", lambda fh: fh.write(text), kind="manifest", meta=meta
        )
        fsync_folder(self.tmp)

    def _rotate(self) -> None:
        """tmp → pending → newest, the newest before → previous: never fewer than one good."""
        if self.pending.exists():  # a crash left it; the state saved now is newer
            shutil.rmtree(self.pending)
        os.replace(self.tmp, self.pending)
        if self.path.exists():
            if self.previous.exists():
                shutil.rmtree(self.previous)
            os.replace(self.path, self.previous)
        os.replace(self.pending, self.path)
        fsync_folder(self.path.parent)

    # ------------------------------------------------------------------ load
    def _choose(self) -> tuple[Path | None, list[str], tuple[str, str] | None]:
        """(the newest folder that verifies, what was skipped and why, the refusal of a
        folder that is not provably this run's — (error class name, message) — unsealed, or
        another run's), on this process."""
        # (a killed save's self.tmp is cleared by load() and by the next save, never here:
        # read() may run while another process saves into it)
        skipped = []
        for folder in self.files():
            try:
                listed = _verify_folder(folder, self._start_over())
                if self.owner is not None:
                    check_owner(
                        listed.get("owner"),
                        self.owner,
                        folder,
                        "the checkpoint",
                        self._elsewhere(),
                    )
            except (ForeignFileError, UnsealedFileError) as err:
                return None, skipped, (type(err).__name__, str(err))
            except IntegrityError as err:
                skipped.append(str(err).split(" Fix: ")[0])
                continue
            return folder, skipped, None
        return None, skipped, None

    def _found(
        self, chosen: Path | None, skipped: list[str], refusal: tuple[str, str] | None
    ) -> Path | None:
        if refusal is not None:  # raised on every rank alike
            kind, message = refusal
            if kind == UnsealedFileError.__name__:
                raise UnsealedFileError(message, self.path)
            raise ForeignFileError(message, self.path, [message])
        if chosen is None and skipped:
            raise unreadable(skipped, self._start_over(), self.path)
        if chosen is not None and skipped:
            warnings.warn(
                f"resuming from {chosen}: skipped " + "; ".join(skipped),
                IntegrityWarning,
                stacklevel=3,
            )
        return chosen

    def load(self) -> dict[str, Any] | None:
        """The newest saved state that verifies, its tensors read into ``template()``'s
        (collective: every rank calls it), or None when there is none."""
        if not self.resume:
            return None
        if rank() == 0:  # resuming: no save runs now, so a killed save's leftovers go
            shutil.rmtree(self.tmp, ignore_errors=True)
        choice = self._choose() if rank() == 0 else None
        chosen, skipped, refusal = _from_rank0(choice)
        chosen = self._found(chosen and Path(chosen), skipped, refusal)
        if chosen is None:
            return None
        saved = _read_state(chosen)
        targets = _targets(chosen, saved["tensors"], self.template() if self.template else {})
        _read_tensors(chosen, targets, no_dist=_no_dist())
        state = _join(saved["rest"], targets)
        bad = first_non_finite(
            _join(saved["rest"], {k: _local(v) for k, v in targets.items()}),
            nan_allowed=self.nan_allowed,
        )
        found = next((b for b in _gather(bad) if b is not None), None)
        if found is not None:
            raise IntegrityError(
                f"{chosen} holds a non-finite value ({found[0]}: {found[1]}), so it is not a "
                f"good checkpoint. Fix: {self._start_over()}",
                chosen,
            )
        self.verified = (chosen, state.get("step"))
        return state

    def read(self, include: Callable[[str], bool] = lambda key: True) -> dict[str, Any] | None:
        """The newest saved state that verifies, read by this process alone (no collective):
        the tensors whose key path (``oracle/policy/...``) ``include`` accepts, whole on the
        CPU; the others None.  None when there is no checkpoint."""
        chosen = self._found(*self._choose())
        if chosen is None:
            return None
        saved = _read_state(chosen)
        targets = _targets(chosen, [k for k in saved["tensors"] if include(k)], {})
        _read_tensors(chosen, targets, no_dist=True)
        return _join(saved["rest"], targets)


def _read_state(folder: Path) -> dict[str, Any]:
    saved = torch.load(folder / "state.pt", map_location="cpu", weights_only=False)
    if not isinstance(saved, dict) or saved.get("format") != _FORMAT:
        raise IntegrityError(
            f"{folder / 'state.pt'} is not a checkpoint state of this version. Fix: delete "
            f"{folder} and rerun",
            folder,
        )
    return saved


def _targets(folder: Path, keys: list[str], template: Mapping[str, Any]) -> dict[str, Any]:
    """A tensor to read into for every key: the template's (this run's shards), else a
    whole CPU tensor of the saved shape and dtype."""
    from torch.distributed.checkpoint import FileSystemReader

    metadata = FileSystemReader(folder).read_metadata().state_dict_metadata
    given, _ = _split(template)
    missing = sorted(set(given) - set(metadata))
    if missing:
        raise ValueError(
            f"checkpoint {folder} lacks {missing[0].replace(_SEP, '.')} (and "
            f"{len(missing) - 1} more) that this run holds: it was written with another model, "
            "LoRA setting or optimizer. Fix: resume with the settings that wrote it, or delete it"
        )
    targets: dict[str, Any] = {}
    for key in keys:
        entry = metadata[key]
        if key in given:
            tensor = given[key]
            if tuple(tensor.shape) != tuple(entry.size):
                raise ValueError(
                    f"checkpoint {folder}: {key.replace(_SEP, '.')} has shape "
                    f"{tuple(entry.size)} but this run's is {tuple(tensor.shape)}: another "
                    "model or LoRA rank. Fix: resume with the settings that wrote it"
                )
            targets[key] = tensor
        else:
            targets[key] = torch.empty(tuple(entry.size), dtype=entry.properties.dtype)
    return targets


def _read_tensors(folder: Path, targets: dict[str, Any], *, no_dist: bool) -> None:
    if not targets:
        return
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint import load as dcp_load

    with _quiet():
        dcp_load(targets, storage_reader=FileSystemReader(folder), no_dist=no_dist)


def read_checkpoint(
    path: str | Path, *, weights: bool = True, owner: Mapping[str, Any] | None = None
) -> dict[str, Any] | None:
    """A finished run's newest checkpoint for reading its model, whichever way it was saved:
    ``path`` names the file checkpoint (``.../checkpoint.pt``, :class:`CheckpointFile`);
    when its folder (:func:`sharded_path`) was written instead, the state comes back with the
    policy's tensors whole on the CPU (``["oracle"]["policy"]``; None with ``weights=False``)
    and the optimizer's left out (None).  No collective: any process may call it.  None when
    nothing was saved.  With ``owner``, a checkpoint of another run is refused
    (:class:`~llm.integrity.ForeignFileError`)."""
    folder = ShardedCheckpoint(sharded_path(path), owner=owner)
    if folder.files():
        policy = f"oracle{_SEP}policy{_SEP}"
        return folder.read(lambda key: weights and key.startswith(policy))
    return CheckpointFile(path, owner=dict(owner) if owner is not None else None).load()
