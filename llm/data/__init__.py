"""Preference data, from task files to batches: one module per step.

* :mod:`llm.data.manifest` — which files hold each task: a manifest (``tasks.toml``) or a
  folder of ``<task>.jsonl``;
* :mod:`llm.data.reading` — a JSONL task file as :class:`PreferencePair` rows (TRL's
  preference formats, every error naming ``file:line``);
* :mod:`llm.data.tokenization` — the pairs as token ids (:class:`TokenizedPairs`), in the
  ``"exact"`` or ``"trl"`` mode;
* :mod:`llm.data.audit` — suspicious pairs counted per task and split, warned or refused
  (:func:`read_task_split`: a task file read, tokenised and audited);
* :mod:`llm.data.collate` — a batch of pairs as padded tensors with its loss mask.

>>> from llm.tokenizer import CharTokenizer
>>> tok = CharTokenizer()
>>> pairs = [PreferencePair("1+1=", "2", "3", "ex:1"), PreferencePair("9+9=", "18", "17", "ex:2")]
>>> tp = tokenize_pairs(pairs, tok, max_length=16)
>>> [len(s) for s in tp.chosen], tp.prompt_lengths.tolist()
([7, 8], [5, 5])
>>> batch = collate_pairs(tp, [1, 0], pad_id=tok.pad_id)
>>> batch["input_ids"].shape, batch["loss_mask"][0].nonzero().flatten().tolist()
(torch.Size([4, 8]), [5, 6, 7])
"""

from __future__ import annotations

from llm.data.audit import (
    ISSUES,
    DataAudit,
    DataWarning,
    TaskSplit,
    audit_pairs,
    read_task_split,
    report_audit,
    task_split,
)
from llm.data.collate import collate_pairs
from llm.data.manifest import TaskFiles, find_task_files, load_manifest
from llm.data.reading import PreferencePair, read_preference_jsonl, split_implicit_prompt
from llm.data.tokenization import TOKENIZATIONS, TokenizedPairs, tokenize_pairs

__all__ = [
    "PreferencePair",
    "split_implicit_prompt",
    "read_preference_jsonl",
    "TaskFiles",
    "load_manifest",
    "find_task_files",
    "TOKENIZATIONS",
    "TokenizedPairs",
    "tokenize_pairs",
    "collate_pairs",
    "DataWarning",
    "DataAudit",
    "ISSUES",
    "audit_pairs",
    "report_audit",
    "TaskSplit",
    "read_task_split",
    "task_split",
]
