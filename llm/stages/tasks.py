"""Stage 1, the tasks: the JSONL manifest or the built-in suite, read, tokenised, audited.

Reads ``[data]``.  Each split of each task goes through the one reader the TRL path uses
too (:func:`llm.data.task_split`): tokenised, then audited (duplicates, chosen =
rejected, unknown symbols, NUL characters, truncated completions) — warnings with
counts, errors with ``[data] strict = true``.  ``[data] validation`` = f > 0 holds out a
share f of every task's training pairs as its *validation* split (tuning selects on it;
the held-out ``eval`` split stays untouched): the ⌈f·n⌉ pairs at evenly spaced positions
of the training file (:func:`validation_rows`), so the split is a function of the file
alone.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from llm.config import DataSection
from llm.context import RunContext
from llm.data import load_manifest, read_preference_jsonl, task_split
from llm.stages.records import Task

__all__ = ["load_tasks", "manifest_of", "manifest_path", "read_tasks", "validation_rows"]


def manifest_of(ctx: RunContext) -> Path:
    """The manifest ``[data] manifest``, or the built-in suite written to ``OUT/data``."""
    return manifest_path(ctx.cfg.data, ctx.folders.data)


def manifest_path(data: DataSection, folder: Path) -> Path:
    """The manifest ``data.manifest``, or the built-in suite written to ``folder``."""
    if data.manifest:
        return Path(data.manifest)
    from llm.synth import write_suite

    # [data] suite: "classic" (tiny-cpu) or "learnable" (small-cpu), see llm.synth
    return write_suite(folder, seed=data.synth_seed, suite=data.suite)


def validation_rows(n: int, fraction: float) -> np.ndarray:
    """The positions of the ⌈fraction·n⌉ validation pairs among n training pairs, evenly
    spaced (at least one pair stays for training).

    >>> validation_rows(10, 0.2).tolist(), validation_rows(10, 0.0).tolist()
    ([0, 9], [])
    """
    count = min(n - 1, math.ceil(fraction * n)) if fraction > 0 else 0
    if count <= 0:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.round(np.linspace(0, n - 1, count)).astype(np.int64))


def load_tasks(ctx: RunContext) -> dict[str, Task]:
    """Every task of the manifest, read, tokenised and audited per split (the train file
    serves as eval when a task names none; the validation split is carved from train)."""
    return read_tasks(ctx.cfg.data, ctx.tokenizer, ctx.folders.data)


def read_tasks(data: DataSection, tokenizer: Any, folder: Path) -> dict[str, Task]:
    """:func:`load_tasks` from its parts: ``[data]``, the tokenizer, and the folder the
    built-in suite is written to (the cost plan reads the data without a run)."""
    settings = {
        "max_length": data.max_length,
        "max_prompt_length": data.max_prompt_length,
        "truncate_prompt": data.truncate_prompt,
        "tokenization": data.tokenization,
    }

    def split(name: str, which: str, pairs: list, path: Path):
        return task_split(name, which, pairs, path, tokenizer, strict=data.strict, **settings)

    tasks = {}
    for name, files in load_manifest(manifest_path(data, folder)).items():
        paths = {"train": files.train, "eval": files.eval or files.train}
        whole = read_preference_jsonl(paths["train"], tokenizer)
        held = validation_rows(len(whole), data.validation)
        kept = np.setdiff1d(np.arange(len(whole)), held)
        train = split(name, "train", [whole[i] for i in kept], paths["train"])
        evals = split(name, "eval", read_preference_jsonl(paths["eval"], tokenizer), paths["eval"])
        valid = (
            split(name, "valid", [whole[i] for i in held], paths["train"]) if held.size else None
        )
        tasks[name] = Task(
            name,
            train.pairs,
            evals.pairs,
            train.tokens,
            evals.tokens,
            files=paths,
            audit={"train": train.audit, "eval": evals.audit}
            | ({"valid": valid.audit} if valid else {}),
            valid_raw=valid.pairs if valid else None,
            valid=valid.tokens if valid else None,
        )
    return tasks
