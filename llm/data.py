"""Preference data: JSONL task files, the task manifest, tokenisation and collation.

A task file holds one JSON object per line with keys ``prompt``, ``chosen`` and
``rejected`` (extra keys are ignored).  Values are strings, or the conversational form:
``prompt`` a list of ``{"role", "content"}`` messages, ``chosen``/``rejected`` lists of
assistant messages (see :mod:`llm.tokenizer`).  A manifest names the tasks::

    [tasks.arithmetic]              # tasks.toml (or {"tasks": {...}} in a .json file)
    train = "arithmetic.train.jsonl"
    eval = "arithmetic.eval.jsonl"  # optional; paths relative to the manifest's folder

Sequences.  A pair becomes two sequences ``[BOS] + encode(prompt) + encode(completion)
+ [EOS]`` (BOS only if ``tokenizer.bos_id`` is not None).  Prompt and completion are
encoded separately, so the boundary is exact; a leading BOS and a trailing EOS that a
tokenizer adds to either piece are stripped, and no special token is added inside.  The
loss mask covers the completion tokens and the final EOS; BOS + prompt are masked out.

Truncation policy (``tokenize_pairs``):

* ``max_prompt_length`` (prompt tokens, BOS not counted) defaults to ``max_length // 2``
  and must leave room for at least one completion token.
* A longer prompt is an error naming its ``file:line`` and length
  (``truncate_prompt="error"``, the default), or keeps its *last*
  ``max_prompt_length`` tokens after BOS (``truncate_prompt="left"``).
* A completion that does not fit in ``max_length`` is cut on the right (its EOS is
  dropped) and counted in ``chosen_truncated`` / ``rejected_truncated``.
* A completion that encodes to no token is an error naming its source.

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

import hashlib
import json
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llm.tokenizer import Tokenizer, render_completion, render_messages

__all__ = [
    "PreferencePair",
    "read_preference_jsonl",
    "TaskFiles",
    "load_manifest",
    "TokenizedPairs",
    "tokenize_pairs",
    "collate_pairs",
]

_KEYS = ("prompt", "chosen", "rejected")
_FORMAT = 'each line must be one JSON object {"prompt": ..., "chosen": ..., "rejected": ...}'


# ----------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class PreferencePair:
    """One preference example as text; ``source`` is ``"path:line"`` for error messages."""

    prompt: str
    chosen: str
    rejected: str
    source: str


def _field_text(value: Any, key: str, where: str, tokenizer: Tokenizer | None) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        try:
            if key == "prompt":
                return render_messages(value, tokenizer)
            return render_completion(value)
        except ValueError as e:
            raise ValueError(f"{where}: {key!r}: {e}") from None
    raise ValueError(
        f"{where}: {key!r} must be a string or a list of messages "
        f'[{{"role": ..., "content": ...}}], got {type(value).__name__}'
    )


def read_preference_jsonl(
    path: str | Path, tokenizer: Tokenizer | None = None
) -> list[PreferencePair]:
    """Read a JSONL preference task file; conversational rows are rendered to text.

    ``tokenizer`` supplies the chat template for conversational prompts (``None``: the
    plain template).  Blank lines are skipped.  Every error is a ``ValueError`` naming
    ``path:line`` and the fix.
    """
    path = Path(path)
    pairs = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"{where}: not valid JSON ({e.msg} at column {e.colno}); {_FORMAT}"
                ) from None
            if not isinstance(row, dict):
                raise ValueError(f"{where}: got a JSON {type(row).__name__}; {_FORMAT}")
            missing = [k for k in _KEYS if k not in row]
            if missing:
                raise ValueError(
                    f"{where}: missing key(s) {', '.join(map(repr, missing))}; {_FORMAT}"
                )
            prompt, chosen, rejected = (_field_text(row[k], k, where, tokenizer) for k in _KEYS)
            for key, text in (("chosen", chosen), ("rejected", rejected)):
                if not text.strip():
                    raise ValueError(
                        f"{where}: {key!r} is empty: give a non-empty completion or drop the row"
                    )
            pairs.append(PreferencePair(prompt, chosen, rejected, where))
    if not pairs:
        raise ValueError(
            f"task file {path} has no examples: write one JSON object per line "
            '{"prompt": ..., "chosen": ..., "rejected": ...}, or drop the task'
        )
    return pairs


# ---------------------------------------------------------------------------- manifest
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


# ------------------------------------------------------------------------ tokenisation
@dataclass
class TokenizedPairs:
    """Token ids of n preference pairs, ready for :func:`collate_pairs`.

    ``chosen[i]`` / ``rejected[i]`` are full sequences (int32) that share their first
    ``prompt_lengths[i]`` tokens (BOS + prompt, masked out of the loss).  ``fingerprint``
    digests every id and the settings (use it in cache keys, e.g. reference log-probs).
    """

    chosen: list[np.ndarray]
    rejected: list[np.ndarray]
    prompt_lengths: np.ndarray
    chosen_truncated: int
    rejected_truncated: int
    sources: list[str]
    fingerprint: str
    max_length: int = 0
    max_prompt_length: int = 0

    def __len__(self) -> int:
        return len(self.chosen)


def _strip_specials(ids: list[int], tokenizer: Tokenizer) -> list[int]:
    lo, hi = 0, len(ids)
    if tokenizer.bos_id is not None:
        while lo < hi and ids[lo] == tokenizer.bos_id:
            lo += 1
    while hi > lo and ids[hi - 1] == tokenizer.eos_id:
        hi -= 1
    return ids[lo:hi]


def tokenize_pairs(
    pairs: Sequence[PreferencePair],
    tokenizer: Tokenizer,
    *,
    max_length: int,
    max_prompt_length: int | None = None,
    truncate_prompt: str = "error",
) -> TokenizedPairs:
    """Tokenise ``pairs`` under the truncation policy of the module docstring."""
    if truncate_prompt not in ("error", "left"):
        raise ValueError(f'truncate_prompt must be "error" or "left", got {truncate_prompt!r}')
    n_bos = int(tokenizer.bos_id is not None)
    if max_prompt_length is None:
        max_prompt_length = max_length // 2
    if max_prompt_length < 0 or n_bos + max_prompt_length + 1 > max_length:
        raise ValueError(
            f"max_prompt_length={max_prompt_length} with max_length={max_length} leaves no room "
            "for a completion token: raise max_length or lower max_prompt_length"
        )
    bos = [tokenizer.bos_id] if tokenizer.bos_id is not None else []
    eos = tokenizer.eos_id
    chosen, rejected, prompt_lengths = [], [], []
    truncated = {"chosen": 0, "rejected": 0}
    digest = hashlib.sha256(
        json.dumps([tokenizer.fingerprint, max_length, max_prompt_length, truncate_prompt]).encode()
    )
    for pair in pairs:
        prompt = _strip_specials(tokenizer.encode(pair.prompt), tokenizer)
        if len(prompt) > max_prompt_length:
            if truncate_prompt == "error":
                raise ValueError(
                    f"{pair.source}: prompt is {len(prompt)} tokens, over max_prompt_length="
                    f"{max_prompt_length}: raise max_prompt_length (and max_length), or pass "
                    'truncate_prompt="left" to keep its last tokens'
                )
            prompt = prompt[len(prompt) - max_prompt_length :]
        prefix = bos + prompt
        if not prefix:
            raise ValueError(
                f"{pair.source}: empty prompt and the tokenizer has no BOS: the first completion "
                "token would have no context; give a prompt"
            )
        room = max_length - len(prefix)
        for key, out in (("chosen", chosen), ("rejected", rejected)):
            completion = _strip_specials(tokenizer.encode(getattr(pair, key)), tokenizer)
            if not completion:
                raise ValueError(
                    f"{pair.source}: {key!r} encodes to no token: give a non-empty completion"
                )
            completion.append(eos)
            if len(completion) > room:
                completion = completion[:room]
                truncated[key] += 1
            seq = np.asarray(prefix + completion, dtype=np.int32)
            digest.update(len(seq).to_bytes(4, "little"))
            digest.update(seq.astype("<i4").tobytes())
            out.append(seq)
        prompt_lengths.append(len(prefix))
        digest.update(len(prefix).to_bytes(4, "little"))
    return TokenizedPairs(
        chosen=chosen,
        rejected=rejected,
        prompt_lengths=np.asarray(prompt_lengths, dtype=np.int64),
        chosen_truncated=truncated["chosen"],
        rejected_truncated=truncated["rejected"],
        sources=[p.source for p in pairs],
        fingerprint=digest.hexdigest(),
        max_length=max_length,
        max_prompt_length=max_prompt_length,
    )


# --------------------------------------------------------------------------- collation
def collate_pairs(
    tok: TokenizedPairs, indices: Sequence[int] | np.ndarray, pad_id: int
) -> dict[str, torch.Tensor]:
    """A right-padded batch of the pairs ``indices``: rows 0..B-1 chosen, B..2B-1 rejected.

    Returns ``input_ids`` (2B, L) long, ``attention_mask`` (2B, L) long and ``loss_mask``
    (2B, L) bool, with L the longest sequence in this batch.  ``loss_mask`` is aligned with
    ``input_ids`` (True on completion tokens and the EOS): the log-prob of token t comes
    from the logits at t-1, so shift ``loss_mask[:, 1:]`` against ``logits[:, :-1]``.
    """
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    n = len(tok)
    if idx.size == 0:
        raise ValueError("indices is empty: a batch needs at least one pair")
    if idx.min() < 0 or idx.max() >= n:
        raise IndexError(f"indices must lie in 0..{n - 1}, got {idx.min()}..{idx.max()}")
    seqs = [tok.chosen[i] for i in idx] + [tok.rejected[i] for i in idx]
    starts = np.concatenate([tok.prompt_lengths[idx], tok.prompt_lengths[idx]])
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    width = int(lengths.max())
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = s
    pos = np.arange(width)
    attention = pos[None, :] < lengths[:, None]
    loss = attention & (pos[None, :] >= starts[:, None])
    return {
        "input_ids": torch.from_numpy(ids),
        "attention_mask": torch.from_numpy(attention.astype(np.int64)),
        "loss_mask": torch.from_numpy(loss),
    }
