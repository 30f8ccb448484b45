"""Datasets of several tasks: loaded from files, the task column, per-task rows, and a digest
of the rows.

:func:`load_task_datasets` reads the pipeline's data layout — a manifest (``tasks.toml``
naming ``<task>.train.jsonl`` and ``<task>.eval.jsonl``) or a folder of ``<task>.jsonl`` —
with the pipeline's reader and audit (:mod:`llm.data`: every error names ``file:line``),
and gives one :class:`datasets.Dataset` per task in TRL's preference format.

A multi-task DPO run trains on one :class:`datasets.Dataset` whose *task column* names
the task of every row (:func:`concatenate_tasks` builds it from one dataset per task).
The k-th row of task ``name`` in that dataset is the k-th row of the task's own dataset,
so per-task arrays (the specialists' losses) line up with it by order
(:func:`rows_by_task`).  :func:`dataset_digest` hashes the rows themselves, so a cache
keyed by it never serves numbers of other data.

>>> from datasets import Dataset
>>> a = Dataset.from_dict({"prompt": ["1+1="], "chosen": ["2"], "rejected": ["3"]})
>>> b = Dataset.from_dict({"prompt": ["hi", "yo"], "chosen": ["hey", "yo"], "rejected": ["", ""]})
>>> both = concatenate_tasks({"math": a, "chat": b})
>>> list(both["task"])
['math', 'chat', 'chat']
>>> ids, names = task_ids(both, "task")
>>> ids.tolist(), names
([0, 1, 1], ('math', 'chat'))
>>> dataset_digest(a) == dataset_digest(Dataset.from_dict(a.to_dict()))
True
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llm.data import PreferencePair, TaskSplit, find_task_files, read_task_split
from llm.tokenizer import ModelInputTokenizer

__all__ = [
    "load_task_datasets",
    "read_task_splits",
    "concatenate_tasks",
    "task_ids",
    "rows_by_task",
    "check_specialist_rows",
    "dataset_digest",
]

SPLITS = ("train", "eval")


def load_task_datasets(
    path: str | Path,
    tokenizer: Any,
    *,
    split: str = "train",
    max_length: int | None = 1024,
    strict: bool = False,
) -> dict[str, Any]:
    """``{task: Dataset}`` of the ``split`` (``"train"`` or ``"eval"``) of every task in
    ``path``: a manifest, or a folder (:func:`llm.data.find_task_files`).

    Rows are TRL's explicit-prompt format: ``prompt``/``chosen``/``rejected`` strings, or
    lists of messages for a conversational task (an implicit prompt is split off as TRL's
    ``extract_prompt`` does), plus ``tools`` and ``chat_template_kwargs`` columns when a row
    of any task has them.  Every split is audited as the pipeline audits it, with TRL's
    tokenisation (``tokenization="trl"``) by ``tokenizer`` (a Hugging Face tokenizer, the
    trainer's ``processing_class``) at ``max_length`` (pass ``DPOConfig.max_length``): the
    issues are warned (:class:`llm.data.DataWarning`) or, with ``strict``, refused.  A task
    without an evaluation file has no ``"eval"`` dataset (the pipeline evaluates it on its
    training pairs).

    >>> import tempfile
    >>> from llm.synth import write_suite
    >>> from llm.tokenizer import CharTokenizer
    >>> sizes = {"arithmetic": (4, 2), "safety": (3, 0), "format": (2, 1)}
    >>> manifest = write_suite(tempfile.mkdtemp(), sizes=sizes)  # tasks.toml and its files
    >>> train = load_task_datasets(manifest, CharTokenizer())
    >>> {task: len(ds) for task, ds in train.items()}, train["format"].column_names
    ({'arithmetic': 4, 'safety': 3, 'format': 2}, ['prompt', 'chosen', 'rejected'])
    >>> list(load_task_datasets(manifest.parent, CharTokenizer(), split="eval"))
    ['arithmetic', 'format']
    """
    read = read_task_splits(path, tokenizer, split=split, max_length=max_length, strict=strict)
    rows = {task: part.pairs for task, part in read.items()}
    templated = any(p.template_kwargs is not None for pairs in rows.values() for p in pairs)
    return {task: _dataset(pairs, templated) for task, pairs in rows.items()}


def read_task_splits(
    path: str | Path,
    tokenizer: Any,
    *,
    split: str = "train",
    max_length: int | None = 1024,
    strict: bool = False,
    eval_from_train: bool = False,
) -> dict[str, TaskSplit]:
    """``{task: TaskSplit}``: the ``split`` of every task in ``path`` as
    :func:`load_task_datasets` reads it (pairs, TRL-mode token ids, audit).  A task
    without an evaluation file has no ``"eval"`` entry, or with ``eval_from_train`` its
    training split read again as ``"eval"`` — what the pipeline evaluates it on.

    >>> import tempfile
    >>> from llm.synth import write_suite
    >>> from llm.tokenizer import CharTokenizer
    >>> sizes = {"arithmetic": (4, 2), "safety": (3, 0), "format": (2, 1)}
    >>> manifest = write_suite(tempfile.mkdtemp(), sizes=sizes)
    >>> read = read_task_splits(manifest, CharTokenizer(), split="eval", eval_from_train=True)
    >>> {task: len(part.tokens) for task, part in read.items()}  # safety: its 3 training pairs
    {'arithmetic': 2, 'safety': 3, 'format': 1}
    """
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    tok = tokenizer if isinstance(tokenizer, ModelInputTokenizer) else _hf_tokenizer(tokenizer)
    found = find_task_files(path)
    files = {
        task: getattr(f, split) or (f.train if eval_from_train else None)
        for task, f in found.items()
    }
    return {
        task: read_task_split(
            task,
            split,
            file,
            tok,
            strict=strict,
            max_length=sys.maxsize if max_length is None else max_length,
            tokenization="trl",
        )
        for task, file in files.items()
        if file is not None
    }


def _hf_tokenizer(tokenizer: Any) -> ModelInputTokenizer:
    from llm.hf import HFTokenizer

    return HFTokenizer(tokenizer)


def _dataset(pairs: list[PreferencePair], templated: bool) -> Any:
    """The pairs of one task file as a Dataset (``templated``: with the chat-template
    columns, as JSON, so that every row keeps exactly its own arguments)."""
    from datasets import Dataset, Features, Json, concatenate_datasets

    conversational = pairs[0].messages is not None
    for pair in pairs:
        if (pair.messages is not None) != conversational:
            raise ValueError(
                f"{pair.source}: a {'plain-text' if conversational else 'conversational'} row "
                f"in a file whose first row ({pairs[0].source}) is "
                f"{'conversational' if conversational else 'plain text'}: TRL reads one format "
                "per dataset: write every row of the file as messages, or every row as text"
            )
    keys = ("prompt", "chosen", "rejected")
    if conversational:
        dataset = Dataset.from_list([dict(zip(keys, pair.messages)) for pair in pairs])
    else:
        dataset = Dataset.from_list([{k: getattr(pair, k) for k in keys} for pair in pairs])
    if not templated:
        return dataset
    columns = []
    for pair in pairs:  # TRL's columns: tools, and the template's other arguments
        kwargs = dict(pair.template_kwargs or {})
        columns.append({"tools": kwargs.pop("tools", None), "chat_template_kwargs": kwargs})
    features = Features({"tools": Json(), "chat_template_kwargs": Json()})
    template = Dataset.from_list(columns, features=features)
    return concatenate_datasets([dataset, template], axis=1)


def concatenate_tasks(datasets: Mapping[str, Any], task_column: str = "task") -> Any:
    """One dataset of all tasks, in order, with ``task_column`` naming each row's task."""
    from datasets import concatenate_datasets

    if not datasets:
        raise ValueError("datasets is empty: pass one dataset per task, {name: Dataset}")
    parts = []
    for name, ds in datasets.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"task names must be non-empty strings, got {name!r}")
        if task_column in ds.column_names:
            raise ValueError(
                f"task {name!r}'s dataset already has a column {task_column!r}: pass "
                "task_column= another name"
            )
        parts.append(ds.add_column(task_column, [name] * len(ds)))
    return concatenate_datasets(parts)


def task_ids(
    dataset: Any, task_column: str, tasks: Sequence[str] | None = None
) -> tuple[np.ndarray, tuple[str, ...]]:
    """The task index of every row and the task names, in the order of ``tasks``.

    ``tasks`` defaults to the names in order of first appearance.  A missing column, a
    value that is not a task name, or a name outside ``tasks`` raises a ``ValueError``
    naming it.
    """
    if task_column not in dataset.column_names:
        raise ValueError(
            f"the training set has no task column {task_column!r} (columns: "
            f"{', '.join(dataset.column_names)}): add one naming each row's task, e.g. with "
            "llm.trl.concatenate_tasks({name: dataset}), or pass task_column="
        )
    values = list(dataset[task_column])
    feature = dataset.features[task_column]
    if hasattr(feature, "int2str"):  # a ClassLabel column: ints that stand for names
        values = feature.int2str(list(values))
    bad = next((i for i, v in enumerate(values) if not isinstance(v, str)), None)
    if bad is not None:
        raise ValueError(
            f"task column {task_column!r} must hold task names (strings); row {bad} holds "
            f"{values[bad]!r} of type {type(values[bad]).__name__}"
        )
    names = tuple(dict.fromkeys(values)) if tasks is None else tuple(tasks)
    if len(set(names)) != len(names):
        raise ValueError(f"tasks={list(names)} names a task twice")
    index = {name: i for i, name in enumerate(names)}
    unknown = next((i for i, v in enumerate(values) if v not in index), None)
    if unknown is not None:
        raise ValueError(
            f"row {unknown} of the training set names task {values[unknown]!r} in column "
            f"{task_column!r}, which is not one of the tasks {list(names)}: fix the row, or "
            "give that task its specialist losses (or list it in tasks=)"
        )
    return np.fromiter((index[v] for v in values), dtype=np.int64, count=len(values)), names


def rows_by_task(ids: np.ndarray, names: Sequence[str], per_task: Mapping[str, Any]) -> np.ndarray:
    """A per-row array from per-task arrays: row r gets ``per_task[task][k]`` when r is
    the k-th row of its task.  Each array needs exactly one entry per row of its task."""
    out = np.full(len(ids), np.nan)
    for i, name in enumerate(names):
        if name not in per_task:
            raise ValueError(f"no specialist losses for task {name!r}: pass one array per task")
        values = _losses(per_task[name], name)
        rows = np.flatnonzero(ids == i)
        if values.shape != rows.shape:
            raise ValueError(
                f"task {name!r} has {len(rows)} rows in the training set but "
                f"{values.size} specialist losses: compute them on the same rows, in the same "
                "order (cache_specialist_losses with the task's dataset)"
            )
        out[rows] = values
    return out


def _losses(given: Any, name: str) -> np.ndarray:
    """Task ``name``'s specialist losses as float64, or an error naming what they hold
    (text, ``None`` or other objects: numpy would turn ``"0.3"`` into 0.3 and ``None``
    into NaN without a word)."""
    raw = np.asarray(given, dtype=object if isinstance(given, list | tuple) else None)
    if raw.dtype.kind in "fiu":
        return raw.astype(np.float64)
    found = [
        v
        for v in raw.ravel()
        if isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating)
    ]
    if found or raw.dtype.kind != "O":
        bad = found[0] if found else raw.ravel()[0]
        raise TypeError(
            f"the specialist losses of task {name!r} are not numbers (they hold "
            f"{type(bad).__name__} {bad!r}). Fix: pass one float per row, e.g. the arrays "
            "cache_specialist_losses(...) returns"
        )
    return raw.astype(np.float64)


def check_specialist_rows(
    losses: np.ndarray, ids: np.ndarray, names: Sequence[str], *, from_cache: bool
) -> None:
    """Raise ``ValueError`` unless every training row's specialist loss is finite, naming
    the task and why: rows TRL dropped when the losses were computed (``from_cache``: NaN
    marks them in :func:`~llm.trl.specialists.cache_specialist_losses`), or NaN or infinite
    values in the losses given."""
    bad = ~np.isfinite(losses)
    if not bad.any():
        return
    task = names[int(ids[np.argmax(bad)])]
    count = int(bad.sum())
    if np.isinf(losses).any() or not from_cache:
        kind = "an infinite" if np.isinf(losses).any() else "a NaN"
        raise ValueError(
            f"{count} training rows (first in task {task!r}) have {kind} specialist loss in "
            "the specialist_losses given. Fix: pass finite losses, one per row, e.g. from "
            "cache_specialist_losses(...)"
        )
    raise ValueError(
        f"{count} training rows (first in task {task!r}) have no specialist loss: TRL dropped "
        "them when the losses were computed (their prompt filled max_length). Fix: compute "
        "them with this run's max_length, truncation_mode and tokenizer"
    )


class _HashSink:
    """A write-only file object that feeds sha256 (pyarrow streams into it)."""

    def __init__(self) -> None:
        self.hash = hashlib.sha256()
        self.closed = False

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.hash.update(view)
        return view.nbytes

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def dataset_digest(dataset: Any) -> str:
    """sha256 of a dataset's rows (schema and values, in order), whatever their provenance.

    The selected rows are written as one Arrow IPC stream into the hash, so a dataset and
    a copy of its rows agree, and any changed value, row or column changes the digest.
    """
    import pyarrow as pa

    table = dataset.with_format("arrow")[:]
    if not isinstance(table, pa.Table):  # pragma: no cover - datasets returns a Table
        raise TypeError(f"cannot read the rows of {type(dataset).__name__} as an Arrow table")
    # take() copies the rows into fresh, compact buffers: a slice of a larger table and a
    # table built from the same rows serialise to the same bytes
    table = table.replace_schema_metadata(None).take(np.arange(table.num_rows)).combine_chunks()
    sink = _HashSink()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.hash.hexdigest()
