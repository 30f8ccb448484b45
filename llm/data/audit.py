"""The data audit: legal but suspicious pairs (:data:`ISSUES`), counted per task and split
(:func:`audit_pairs`) and reported as :class:`DataWarning` or, in strict mode, refused
(:func:`report_audit`); :func:`read_task_split` reads a task file with its audit, as every
entry point (the pipeline, :func:`llm.trl.tasks.load_task_datasets`) loads its data."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from llm.data.reading import PreferencePair, read_preference_jsonl
from llm.data.tokenization import TokenizedPairs, tokenize_pairs
from llm.tokenizer import Tokenizer

__all__ = [
    "DataWarning",
    "DataAudit",
    "ISSUES",
    "audit_pairs",
    "report_audit",
    "TaskSplit",
    "read_task_split",
    "task_split",
]


class DataWarning(UserWarning):
    """Legal but suspicious data, counted per task (an error in strict mode)."""


#: what :func:`audit_pairs` counts: name → (what it means, whether strict mode refuses it)
ISSUES: dict[str, tuple[str, bool]] = {
    "duplicates": ("rows repeat an earlier row", True),
    "chosen_equals_rejected": ("pairs have chosen = rejected (nothing to prefer)", True),
    "unknown_symbols": ("pairs hold text the tokenizer maps to its unknown token", True),
    "nul_bytes": ("pairs hold NUL characters", True),
    "chosen_truncated": ("chosen completions were cut to max_length", False),
    "rejected_truncated": ("rejected completions were cut to max_length", False),
    "dropped": ("pairs were dropped: the prompt alone fills max_length", False),
}


@dataclass(frozen=True)
class DataAudit:
    """Counts of :data:`ISSUES` in one split of one task; ``first[issue]`` is the source
    (``path:line``) of its first case."""

    pairs: int
    counts: dict[str, int]
    first: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        """``{"pairs": n, <issue>: count, ..., "first": {<issue>: source}}`` (JSON)."""
        return {"pairs": self.pairs, **self.counts, "first": dict(self.first)}


def _unknown_id(tokenizer: Tokenizer) -> int | None:
    """The tokenizer's unknown-token id, when it is distinct from its other specials."""
    unk = getattr(tokenizer, "unk_id", None)
    specials = {tokenizer.pad_id, tokenizer.eos_id, tokenizer.bos_id}
    return unk if isinstance(unk, int) and unk not in specials else None


def audit_pairs(
    pairs: Sequence[PreferencePair], tokens: TokenizedPairs, tokenizer: Tokenizer
) -> DataAudit:
    """Count what :data:`ISSUES` lists in ``pairs`` and their token ids ``tokens``.

    >>> from llm.tokenizer import CharTokenizer
    >>> tok = CharTokenizer()
    >>> rows = [PreferencePair("1+1=", "2", "2", "f:1"), PreferencePair("1+1=", "2", "2", "f:2"),
    ...         PreferencePair("é?", "yes", "no", "f:3")]
    >>> audit = audit_pairs(rows, tokenize_pairs(rows, tok, max_length=16), tok)
    >>> audit.counts["duplicates"], audit.counts["chosen_equals_rejected"], audit.first["unknown_symbols"]
    (1, 2, 'f:3')
    """  # noqa: E501
    counts = dict.fromkeys(ISSUES, 0)
    first: dict[str, str] = {}

    def count(issue: str, source: str) -> None:
        counts[issue] += 1
        first.setdefault(issue, source)

    seen: set[tuple[str, str, str]] = set()
    for pair in pairs:
        row = (pair.prompt, pair.chosen, pair.rejected)
        if row in seen:
            count("duplicates", pair.source)
        seen.add(row)
        if pair.chosen == pair.rejected:
            count("chosen_equals_rejected", pair.source)
        if any("\x00" in text for text in row):
            count("nul_bytes", pair.source)
    unk = _unknown_id(tokenizer)
    if unk is not None:
        for chosen, rejected, source in zip(tokens.chosen, tokens.rejected, tokens.sources):
            if (chosen == unk).any() or (rejected == unk).any():
                count("unknown_symbols", source)
    counts["chosen_truncated"] = tokens.chosen_truncated
    counts["rejected_truncated"] = tokens.rejected_truncated
    counts["dropped"] = len(tokens.dropped)
    if tokens.dropped:
        first["dropped"] = tokens.dropped[0]
    return DataAudit(len(pairs), counts, first)


def report_audit(audit: DataAudit, label: str, *, strict: bool = False) -> list[str]:
    """Warn (:class:`DataWarning`) once per issue found in ``audit`` of ``label`` (e.g.
    ``"task 'math' (train)"``) and return the messages; with ``strict`` the issues
    :data:`ISSUES` marks strict raise a ``ValueError`` listing them instead."""
    messages, refused = [], []
    for issue, (meaning, strict_error) in ISSUES.items():
        n = audit.counts.get(issue, 0)
        if not n:
            continue
        where = f" (first: {audit.first[issue]})" if issue in audit.first else ""
        message = f"{label}: {n} of {audit.pairs} {meaning}{where}"
        (refused if strict and strict_error else messages).append(message)
    if refused:
        raise ValueError(
            "; ".join(refused) + ". Fix: clean the data, or set [data] strict = false to train "
            "on it with warnings"
        )
    for message in messages:
        warnings.warn(message, DataWarning, stacklevel=2)
    return messages


class TaskSplit(NamedTuple):
    """One split of one task: its pairs as read, their token ids and their audit."""

    pairs: list[PreferencePair]
    tokens: TokenizedPairs
    audit: DataAudit


def read_task_split(
    task: str,
    split: str,
    path: str | Path,
    tokenizer: Tokenizer,
    *,
    strict: bool = False,
    **tokenize: Any,
) -> TaskSplit:
    """The ``split`` of ``task`` from the JSONL file ``path``: read, tokenised with the
    settings ``tokenize`` (:func:`tokenize_pairs`) and audited, its issues reported as
    ``task 'NAME' (SPLIT, PATH): ...`` (:func:`report_audit`; ``strict`` refuses them).

    >>> import tempfile
    >>> from llm.tokenizer import CharTokenizer
    >>> path = Path(tempfile.mkdtemp()) / "math.jsonl"
    >>> _ = path.write_text('{"prompt": "1+1=", "chosen": "2", "rejected": "3"}\\n' * 2)
    >>> read_task_split("math", "train", path, CharTokenizer(), strict=True, max_length=16)
    Traceback (most recent call last):
    ...
    ValueError: task 'math' (train, ...): 1 of 2 rows repeat an earlier row (first: ...math.jsonl:2). Fix: ...
    """  # noqa: E501
    pairs = read_preference_jsonl(path, tokenizer)
    return task_split(task, split, pairs, path, tokenizer, strict=strict, **tokenize)


def task_split(
    task: str,
    split: str,
    pairs: list[PreferencePair],
    path: str | Path,
    tokenizer: Tokenizer,
    *,
    strict: bool = False,
    **tokenize: Any,
) -> TaskSplit:
    """:func:`read_task_split` of pairs already read from ``path`` (a split carved from a
    file, e.g. the validation pairs of a training file): tokenised, audited, reported."""
    tokens = tokenize_pairs(pairs, tokenizer, **tokenize)
    audit = audit_pairs(pairs, tokens, tokenizer)
    report_audit(audit, f"task {task!r} ({split}, {path})", strict=strict)
    return TaskSplit(pairs, tokens, audit)
