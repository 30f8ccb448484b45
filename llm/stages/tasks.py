"""Stage 1, the tasks: the JSONL manifest or the built-in suite, read, tokenised, audited.

Reads ``[data]``.  Each split of each task is audited (:func:`llm.data.audit_pairs`:
duplicates, chosen = rejected, unknown symbols, NUL characters, truncated completions):
warnings with counts, errors with ``[data] strict = true``.
"""

from __future__ import annotations

from pathlib import Path

from llm.context import RunContext
from llm.data import audit_pairs, load_manifest, read_preference_jsonl, report_audit, tokenize_pairs
from llm.stages.records import SPLITS, Task

__all__ = ["load_tasks", "manifest_of"]


def manifest_of(ctx: RunContext) -> Path:
    """The manifest ``[data] manifest``, or the built-in suite written to ``OUT/data``."""
    data = ctx.cfg.data
    if data.manifest:
        return Path(data.manifest)
    from llm.synth import write_suite

    # [data] suite: "classic" (tiny-cpu) or "learnable" (small-cpu), see llm.synth
    return write_suite(ctx.folders.data, seed=data.synth_seed, suite=data.suite)


def load_tasks(ctx: RunContext) -> dict[str, Task]:
    """Every task of the manifest, read, tokenised and audited per split (the train file
    serves as eval when a task names none)."""
    data, tokenizer = ctx.cfg.data, ctx.tokenizer
    tasks = {}
    for name, files in load_manifest(manifest_of(ctx)).items():
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
