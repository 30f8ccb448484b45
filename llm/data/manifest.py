"""The task manifest: which files hold each task's training and evaluation pairs.

A manifest names the tasks::

    [tasks.arithmetic]              # tasks.toml (or {"tasks": {...}} in a .json file)
    train = "arithmetic.train.jsonl"
    eval = "arithmetic.eval.jsonl"  # optional; paths relative to the manifest's folder

:func:`find_task_files` also takes a folder: its ``tasks.toml`` (or ``tasks.json``), else
its JSONL files, one task per name: ``<task>.jsonl`` (training pairs only), or
``<task>.train.jsonl`` with an optional ``<task>.eval.jsonl`` (the layout that
:func:`llm.synth.write_suite` writes next to its manifest).

>>> import tempfile
>>> folder = Path(tempfile.mkdtemp())
>>> for name in ("math.train.jsonl", "math.eval.jsonl", "chat.jsonl"):
...     _ = (folder / name).write_text("{}\\n")
>>> {task: (f.train.name, f.eval and f.eval.name) for task, f in find_task_files(folder).items()}
{'chat': ('chat.jsonl', None), 'math': ('math.train.jsonl', 'math.eval.jsonl')}
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TaskFiles", "load_manifest", "find_task_files"]

# the names a folder's manifest may have
_MANIFESTS = ("tasks.toml", "tasks.json")
# the suffixes that make ``<task>.<split>.jsonl`` a split of ``<task>``
_SPLITS = ("train", "eval")


@dataclass(frozen=True)
class TaskFiles:
    """A task's training file and optional evaluation file."""

    train: Path
    eval: Path | None


def load_manifest(path: str | Path) -> dict[str, TaskFiles]:
    """Tasks of a TOML (``.toml``) or JSON (``.json``) manifest, in manifest order.

    Relative file paths resolve against the manifest's folder; a missing file raises
    ``FileNotFoundError`` naming the task.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".toml":
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path}: not valid TOML ({e})") from None
    elif suffix == ".json":
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
    else:
        raise ValueError(f"{path}: a manifest must end in .toml or .json, got {suffix!r}")
    example = '[tasks.NAME] with train = "file.jsonl" and optional eval = "file.jsonl"'
    tasks = doc.get("tasks") if isinstance(doc, dict) else None
    if not isinstance(tasks, dict) or not tasks:
        raise ValueError(f"{path}: no tasks; write one table {example}")
    base = path.parent
    out: dict[str, TaskFiles] = {}
    for name, spec in tasks.items():
        if not isinstance(spec, dict):
            raise ValueError(f"{path}: task {name!r} must be a table {example}")
        unknown = sorted(set(spec) - {"train", "eval"})
        if unknown:
            raise ValueError(
                f"{path}: task {name!r} has unknown key(s) {', '.join(unknown)}: use train and eval"
            )
        if "train" not in spec:
            raise ValueError(f"{path}: task {name!r} has no train file; write {example}")
        files = {}
        for key in ("train", "eval"):
            value = spec.get(key)
            if value is None:
                files[key] = None
                continue
            if not isinstance(value, str) or not value:
                raise ValueError(f"{path}: task {name!r}: {key} must be a file path string")
            file = base / value
            if not file.is_file():
                raise FileNotFoundError(
                    f"{path}: task {name!r}: {key} file {file} does not exist "
                    f"(relative paths resolve against {base})"
                )
            files[key] = file
        out[name] = TaskFiles(train=files["train"], eval=files["eval"])
    return out


def find_task_files(path: str | Path) -> dict[str, TaskFiles]:
    """Tasks of a manifest file, or of a folder (see the module docstring), by name.

    A folder's manifest wins over its JSONL files.  Without one, ``<task>.train.jsonl`` and
    ``<task>.eval.jsonl`` are the two splits of ``<task>`` (never tasks of their own);
    an evaluation file without its training file, or a task given both as ``<task>.jsonl``
    and ``<task>.train.jsonl``, raises a ``ValueError`` naming the files and the fix.
    """
    path = Path(path)
    if path.is_file():
        return load_manifest(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"{path} does not exist: pass a manifest (tasks.toml) or a folder of <task>.jsonl "
            "preference files"
        )
    manifests = [path / name for name in _MANIFESTS if (path / name).is_file()]
    if len(manifests) > 1:
        raise ValueError(
            f"{path} holds {' and '.join(m.name for m in manifests)}: keep one manifest, or "
            "pass the one to read"
        )
    if manifests:
        return load_manifest(manifests[0])
    return _folder_tasks(path)


def _folder_tasks(folder: Path) -> dict[str, TaskFiles]:
    """``<task>.jsonl`` and ``<task>.{train,eval}.jsonl`` files of a folder without manifest."""
    splits: dict[str, dict[str, Path]] = {}
    for file in sorted(folder.glob("*.jsonl")):
        task, _, split = file.stem.rpartition(".")
        if split not in _SPLITS or not task:
            task, split = file.stem, ""  # <task>.jsonl: the training pairs
        files = splits.setdefault(task, {})
        key = split or "train"
        if key in files:
            raise ValueError(
                f"{folder}: task {task!r} has two training files, {files[key].name} and "
                f"{file.name}: keep one (or name the files in a tasks.toml)"
            )
        files[key] = file
    if not splits:
        raise ValueError(
            f"{folder} holds no .jsonl file and no {' or '.join(_MANIFESTS)}: write one "
            "<task>.jsonl per task (or <task>.train.jsonl and <task>.eval.jsonl)"
        )
    for task, files in splits.items():
        if "train" not in files:
            raise ValueError(
                f"{folder}: {files['eval'].name} has no training file: add "
                f"{task}.train.jsonl (a <task>.eval.jsonl holds the held-out pairs of "
                "<task>.train.jsonl), or rename it to hold a task of its own"
            )
    return {task: TaskFiles(files["train"], files.get("eval")) for task, files in splits.items()}
