"""The task manifest: which files hold each task's training and evaluation pairs.

A manifest names the tasks::

    [tasks.arithmetic]              # tasks.toml (or {"tasks": {...}} in a .json file)
    train = "arithmetic.train.jsonl"
    eval = "arithmetic.eval.jsonl"  # optional; paths relative to the manifest's folder
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TaskFiles", "load_manifest"]


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
