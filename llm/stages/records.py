"""The frozen records the stages pass along: a stage reads records and returns new ones,
it never changes one it was given.

>>> import numpy as np
>>> scores = Scores(np.zeros((2, 2)), np.zeros((1, 2)), {"device": "cpu"})
>>> scores.of("eval").shape
(1, 2)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llm.data import DataAudit, PreferencePair, TokenizedPairs
from llm.oracle import TaskData

__all__ = ["SPLITS", "Task", "Reference", "Scores", "Specialist", "task_data"]

#: the splits of a task: training pairs, held-out pairs, and (with ``[data] validation``)
#: validation pairs carved from the training file, which tuning selects on
SPLITS = ("train", "eval", "valid")


@dataclass(frozen=True)
class Task:
    """One task's data (stage :func:`llm.stages.tasks.load_tasks`): its raw and tokenised
    splits, the file each split was read from and the data issues counted per split
    (``valid`` is ``None`` without a validation split)."""

    name: str
    train_raw: list[PreferencePair]
    eval_raw: list[PreferencePair]
    train: TokenizedPairs
    eval: TokenizedPairs
    files: dict[str, Path] = field(default_factory=dict)
    audit: dict[str, DataAudit] = field(default_factory=dict)
    valid_raw: list[PreferencePair] | None = None
    valid: TokenizedPairs | None = None

    @property
    def splits(self) -> tuple[str, ...]:
        """The splits this task has."""
        return ("train", "eval") + (("valid",) if self.valid is not None else ())

    def pairs(self, split: str) -> TokenizedPairs:
        """The tokenised pairs of ``split`` (``"train"``, ``"eval"`` or ``"valid"``)."""
        pairs = getattr(self, _split(split))
        if pairs is None:
            raise ValueError(
                f"task {self.name!r} has no {split} split. Fix: set [data] validation to the "
                "share of training pairs to hold out, e.g. 0.1"
            )
        return pairs


@dataclass(frozen=True)
class Reference:
    """The reference model as the run trains it (on its device, with its adapters, shards
    and compilation; stage :func:`llm.stages.reference.reference`), its weights (to restore
    between stages), its fingerprint and the numerics key of how it computes."""

    model: torch.nn.Module
    state: dict[str, torch.Tensor]
    fingerprint: str
    numerics: dict[str, Any]

    def restore(self) -> None:
        """Load the reference weights back into :attr:`model` (a stage trained it)."""
        self.model.load_state_dict(self.state)


@dataclass(frozen=True)
class Scores:
    """One task's reference log-probs, (n, 2) of (chosen, rejected) per split, and the
    numerics they were made under (stage :func:`llm.stages.scoring.reference_scores`)."""

    train: np.ndarray
    eval: np.ndarray
    numerics: dict[str, Any]
    valid: np.ndarray | None = None

    def of(self, split: str) -> np.ndarray:
        return getattr(self, _split(split))


@dataclass(frozen=True)
class Specialist:
    """One task's specialist (stage :func:`llm.stages.specialists.specialists`): its per-pair
    DPO losses on each split, where its final weights are (``None``: the reference itself
    serves), its cache key, its steps and its greedy exact match on its own task."""

    train_losses: np.ndarray
    eval_losses: np.ndarray
    checkpoint: Path | None
    key: dict[str, Any]
    steps: int
    exact_match: float | None = None
    valid_losses: np.ndarray | None = None

    def losses(self, split: str) -> np.ndarray:
        return getattr(self, f"{_split(split)}_losses")


def _split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: use one of {', '.join(SPLITS)}")
    return split


def task_data(
    task: Task,
    scores: Scores,
    split: str,
    specialist: Specialist | None = None,
    default_reference: np.ndarray | None = None,
) -> TaskData:
    """The oracle's view of one split of ``task`` (zero specialist losses before the
    specialists exist; ``default_reference``: DoReMi's reference losses on the split)."""
    pairs = task.pairs(split)
    losses = specialist.losses(split) if specialist is not None else np.zeros(len(pairs))
    return TaskData(task.name, pairs, scores.of(split), losses, scores.numerics, default_reference)
