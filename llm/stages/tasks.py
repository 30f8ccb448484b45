"""Stage 1, the tasks: the JSONL manifest or the built-in suite, read, tokenised, audited.

Reads ``[data]``.  Each split of each task is audited (:func:`llm.data.audit_pairs`:
duplicates, chosen = rejected, unknown symbols, NUL characters, truncated completions):
warnings with counts, errors with ``[data] strict = true``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llm.config import DataSection
from llm.context import RunContext
from llm.data import audit_pairs, load_manifest, read_preference_jsonl, report_audit, tokenize_pairs
from llm.stages.records import SPLITS, Task

__all__ = ["load_tasks", "manifest_of", "manifest_path", "read_tasks"]


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


def load_tasks(ctx: RunContext) -> dict[str, Task]:
    """Every task of the manifest, read, tokenised and audited per split (the train file
    serves as eval when a task names none)."""
    return read_tasks(ctx.cfg.data, ctx.tokenizer, ctx.folders.data)


def read_tasks(data: DataSection, tokenizer: Any, folder: Path) -> dict[str, Task]:
    """:func:`load_tasks` from its parts: ``[data]``, the tokenizer, and the folder the
    built-in suite is written to (the cost plan reads the data without a run)."""
    tasks = {}
    for name, files in load_manifest(manifest_path(data, folder)).items():
        paths = {"train": files.train, "eval": files.eval or files.train}
        raw, tokens, audit = {}, {}, {}
        for split in SPLITS:
            raw[split] = read_preference_jsonl(paths[split], tokenizer)
            tokens[split] = tokenize_pairs(
                raw[split],
                tokenizer,
                max_length=data.max_length,
                max_prompt_length=data.max_prompt_length,
                truncate_prompt=data.truncate_prompt,
                tokenization=data.tokenization,
            )
            audit[split] = audit_pairs(raw[split], tokens[split], tokenizer)
            label = f"task {name!r} ({split}, {paths[split]})"
            report_audit(audit[split], label, strict=data.strict)
        tasks[name] = Task(
            name, raw["train"], raw["eval"], tokens["train"], tokens["eval"], paths, audit
        )
    return tasks
