"""Preference data: JSONL task files, the task manifest, tokenisation and collation.

A task file holds one JSON object per line (extra keys are ignored), in one of TRL's
preference formats:

* explicit prompt: ``{"prompt": ..., "chosen": ..., "rejected": ...}``;
* implicit prompt: ``{"chosen": ..., "rejected": ...}`` where both hold the whole text or
  conversation; the prompt is their shared start (:func:`split_implicit_prompt`, TRL's
  ``extract_prompt`` rule).

Values are strings, or the conversational form: lists of ``{"role", "content"}`` messages
(``prompt`` the conversation so far, ``chosen``/``rejected`` the assistant replies; see
:mod:`llm.tokenizer`).  Optional ``tools`` and ``chat_template_kwargs`` keys reach the chat
template in ``"trl"`` mode, as in TRL.  A manifest names the tasks::

    [tasks.arithmetic]              # tasks.toml (or {"tasks": {...}} in a .json file)
    train = "arithmetic.train.jsonl"
    eval = "arithmetic.eval.jsonl"  # optional; paths relative to the manifest's folder

Two tokenisations (``tokenize_pairs(..., tokenization=...)``, config ``[data]
tokenization``):

``"exact"`` (default): a pair becomes two sequences ``[BOS] + encode(prompt) +
encode(completion) + [EOS]`` (BOS only if ``tokenizer.bos_id`` is not None).  Prompt and
completion are encoded separately, so the boundary is exact; a leading BOS and a trailing
EOS that a tokenizer adds to either piece are stripped, and no special token is added
inside.  A conversational prompt is rendered by the chat template (with the generation
prompt), a conversational completion is its messages' content (the template's end-of-turn
text is replaced by EOS).  Truncation:

* ``max_prompt_length`` (prompt tokens, BOS not counted) defaults to ``max_length // 2``
  and must leave room for at least one completion token.
* A longer prompt is an error naming its ``file:line`` and length
  (``truncate_prompt="error"``, the default), or keeps its *last*
  ``max_prompt_length`` tokens after BOS (``truncate_prompt="left"``).
* A completion that does not fit in ``max_length`` is cut on the right (its EOS is
  dropped) and counted in ``chosen_truncated`` / ``rejected_truncated``.
* A completion that encodes to no token is an error naming its source.

``"trl"``: TRL 1.16's DPO tokenisation (``DPOTrainer._prepare_dataset`` and
``DataCollatorForPreference``), token for token.  Plain text: the EOS *text* is appended to
each completion unless it already ends with it, then ``prompt`` alone and ``prompt +
completion`` as one string are tokenised by the tokenizer's own call (a BOS only where the
tokenizer inserts one; a prompt's trailing space merges into the completion's first token).
Conversations: ``apply_chat_template`` of the prompt (with the generation prompt) and of
prompt + completion, so the template's text after EOS (``<|im_end|>\\n``) is trained on.
The completion starts where the prompt's ids and both full sequences' ids first differ.
Truncation (TRL's ``truncation_mode="keep_start"``): the prompt is kept whole, a sequence is
cut to its first ``max_length`` tokens, and a pair whose prompt alone has ``max_length``
tokens or more is dropped (its source listed in ``dropped``); ``max_prompt_length`` does not
apply.  Where TRL's completion starts at token 0 (an empty prompt and no BOS, or a prompt
whose only token merges into the completion) the mask starts at token 1: token 0 is never a
label, so the loss is TRL's.  A completion that adds no token is an error.  It needs a
:class:`~llm.tokenizer.ModelInputTokenizer` (``llm.hf.HFTokenizer``, or
:class:`~llm.tokenizer.CharTokenizer`, whose own call inserts BOS).  The loss mask covers
the completion tokens (and EOS) in both modes.

>>> from llm.tokenizer import CharTokenizer
>>> tok = CharTokenizer()
>>> pairs = [PreferencePair("1+1=", "2", "3", "ex:1"), PreferencePair("9+9=", "18", "17", "ex:2")]
>>> tp = tokenize_pairs(pairs, tok, max_length=16)
>>> [len(s) for s in tp.chosen], tp.prompt_lengths.tolist()
([7, 8], [5, 5])
>>> batch = collate_pairs(tp, [1, 0], pad_id=tok.pad_id)
>>> batch["input_ids"].shape, batch["loss_mask"][0].nonzero().flatten().tolist()
(torch.Size([4, 8]), [5, 6, 7])

A 12-character prompt is over ``max_length // 2`` (an error in ``"exact"`` mode); ``"trl"``
keeps it whole and cuts the chosen sequence at 16 tokens:

>>> long = [PreferencePair("123456789+1=", "123456790", "0", "ex:3")]
>>> tp = tokenize_pairs(long, tok, max_length=16, tokenization="trl")
>>> tp.prompt_lengths.tolist(), [len(tp.chosen[0]), len(tp.rejected[0])], tp.chosen_truncated
([13], [16, 15], 1)
>>> split_implicit_prompt("The sky is blue.", "The sky is green.")
('The sky is', ' blue.', ' green.')
"""

from __future__ import annotations

import hashlib
import json
import tomllib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llm.tokenizer import ModelInputTokenizer, Tokenizer, render_completion, render_messages

__all__ = [
    "PreferencePair",
    "split_implicit_prompt",
    "read_preference_jsonl",
    "TaskFiles",
    "load_manifest",
    "TOKENIZATIONS",
    "TokenizedPairs",
    "tokenize_pairs",
    "collate_pairs",
    "DataWarning",
    "DataAudit",
    "ISSUES",
    "audit_pairs",
    "report_audit",
]

_KEYS = ("prompt", "chosen", "rejected")
_FORMAT = (
    'each line must be one JSON object {"prompt": ..., "chosen": ..., "rejected": ...} '
    '(or {"chosen": ..., "rejected": ...} with the prompt implicit in both)'
)


# ----------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class PreferencePair:
    """One preference example as text; ``source`` is ``"path:line"`` for error messages.

    ``messages`` keeps a conversational row's fields as written, ``(prompt, chosen,
    rejected)`` (lists of messages; a field given as a string stays a string), for
    ``tokenization="trl"``, which renders them with the chat template; ``None`` for a
    plain-text row.  ``template_kwargs`` are the row's extra chat-template arguments, as
    TRL passes them (``{"tools": row["tools"], **row["chat_template_kwargs"]}``; ``"trl"``
    mode only).  ``prompt``/``chosen``/``rejected`` are the text ``"exact"`` mode uses.
    """

    prompt: str
    chosen: str
    rejected: str
    source: str
    messages: tuple[Any, Any, Any] | None = field(default=None, hash=False)
    template_kwargs: dict[str, Any] | None = field(default=None, hash=False)


def split_implicit_prompt(chosen: Any, rejected: Any) -> tuple[Any, Any, Any]:
    """``(prompt, chosen, rejected)`` of an implicit-prompt pair, by TRL 1.16's
    ``extract_prompt`` rule: the prompt is the longest shared start of ``chosen`` and
    ``rejected`` (characters of strings, messages of conversations), less a space that
    ends it (the space starts the completions); when one continues the other, their last
    shared item goes to the completions.  The prompt may come out empty (no shared start):
    callers check.

    >>> split_implicit_prompt("2+2=4", "2+2=5")
    ('2+2=', '4', '5')
    >>> split_implicit_prompt("It is blue", "It is blue.")
    ('It is blu', 'e', 'e.')
    """
    n = min(len(chosen), len(rejected))
    k = next((i for i in range(n) if chosen[i] != rejected[i]), None)
    if k is None:  # one is a prefix of the other: TRL's loop ends at its last index
        k = max(n - 1, 0)
    elif k > 0 and chosen[k - 1] == " ":
        k -= 1
    return chosen[:k], chosen[k:], rejected[k:]


def _check_field(value: Any, key: str, where: str) -> None:
    if not isinstance(value, str | list):
        raise ValueError(
            f"{where}: {key!r} must be a string or a list of messages "
            f'[{{"role": ..., "content": ...}}], got {type(value).__name__}'
        )


def _field_text(value: str | list, key: str, where: str, tokenizer: Tokenizer | None) -> str:
    if isinstance(value, str):
        return value
    try:
        if key == "prompt":
            return render_messages(value, tokenizer)
        return render_completion(value)
    except ValueError as e:
        raise ValueError(f"{where}: {key!r}: {e}") from None


def _template_kwargs(row: dict[str, Any], where: str) -> dict[str, Any] | None:
    """TRL's per-row chat-template arguments: ``tools`` (a list, or its JSON text) and the
    ``chat_template_kwargs`` object (e.g. ``{"enable_thinking": false}``)."""
    if "tools" not in row and "chat_template_kwargs" not in row:
        return None
    tools = row.get("tools")
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: 'tools' is a string but not valid JSON ({e.msg})") from None
    if tools is not None and not isinstance(tools, list):
        raise ValueError(
            f"{where}: 'tools' must be a list of tool schemas (or its JSON text), "
            f"got {type(tools).__name__}"
        )
    extra = row.get("chat_template_kwargs", {})
    if not isinstance(extra, dict):
        raise ValueError(
            f"{where}: 'chat_template_kwargs' must be an object of chat-template arguments, "
            f'e.g. {{"enable_thinking": false}}, got {type(extra).__name__}'
        )
    return {"tools": tools, **extra}


def _implicit_prompt(chosen: Any, rejected: Any, where: str) -> tuple[Any, Any, Any]:
    if isinstance(chosen, str) != isinstance(rejected, str):
        raise ValueError(
            f"{where}: implicit prompt (no 'prompt' key): 'chosen' and 'rejected' must both be "
            "strings or both lists of messages"
        )
    for key, value in (("chosen", chosen), ("rejected", rejected)):
        if not value:
            raise ValueError(
                f"{where}: {key!r} is empty: give a non-empty completion or drop the row"
            )
    prompt, chosen, rejected = split_implicit_prompt(chosen, rejected)
    if not prompt:
        raise ValueError(
            f"{where}: implicit prompt (no 'prompt' key), but 'chosen' and 'rejected' share "
            "no start to serve as the prompt: begin both with the same prompt, or give it "
            'as "prompt" and keep only the replies in "chosen" and "rejected"'
        )
    return prompt, chosen, rejected


def _decode(raw: bytes, where: str, *, first: bool) -> str:
    """One line as text; bytes that are not UTF-8 raise naming the byte and its column."""
    try:
        return raw.decode("utf-8-sig" if first else "utf-8")  # a BOM may start the file
    except UnicodeDecodeError as e:
        shift = 3 if first and raw.startswith(b"\xef\xbb\xbf") else 0
        raise ValueError(
            f"{where}: not UTF-8 (byte 0x{raw[e.start + shift]:02x} at column "
            f"{e.start + shift + 1}). Fix: save the file as UTF-8 (e.g. iconv -f latin1 -t "
            "utf-8)"
        ) from None


def read_preference_jsonl(
    path: str | Path, tokenizer: Tokenizer | None = None
) -> list[PreferencePair]:
    """Read a JSONL preference task file (explicit or implicit prompt, text or messages).

    ``tokenizer`` supplies the chat template that renders conversational prompts to the
    text of ``"exact"`` mode (``None``: the plain template); the messages themselves are
    kept for ``"trl"`` mode.  Blank lines are skipped.  Every error is a ``ValueError``
    naming ``path:line`` and the fix (bytes that are not UTF-8: ``path:line: not UTF-8
    (byte 0x.. at column ..)``).
    """
    path = Path(path)
    pairs = []
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}:{lineno}"
            line = _decode(raw, where, first=lineno == 1)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"{where}: not valid JSON ({e.msg} at column {e.colno}); {_FORMAT}"
                ) from None
            if not isinstance(row, dict):
                raise ValueError(f"{where}: got a JSON {type(row).__name__}; {_FORMAT}")
            keys = _KEYS if "prompt" in row else _KEYS[1:]
            missing = [k for k in keys if k not in row]
            if missing:
                raise ValueError(
                    f"{where}: missing key(s) {', '.join(map(repr, missing))}; {_FORMAT}"
                )
            for key in keys:
                _check_field(row[key], key, where)
            if "prompt" in row:
                fields = (row["prompt"], row["chosen"], row["rejected"])
            else:
                fields = _implicit_prompt(row["chosen"], row["rejected"], where)
            prompt, chosen, rejected = (
                _field_text(v, k, where, tokenizer) for k, v in zip(_KEYS, fields)
            )
            for key, text in (("chosen", chosen), ("rejected", rejected)):
                if not text.strip():
                    raise ValueError(
                        f"{where}: {key!r} is empty: give a non-empty completion or drop the row"
                    )
            messages = fields if any(isinstance(v, list) for v in fields) else None
            kwargs = _template_kwargs(row, where)
            pairs.append(PreferencePair(prompt, chosen, rejected, where, messages, kwargs))
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
TOKENIZATIONS = ("exact", "trl")


@dataclass
class TokenizedPairs:
    """Token ids of n preference pairs, ready for :func:`collate_pairs`.

    ``chosen[i]`` / ``rejected[i]`` are full sequences (int32) that share their first
    ``prompt_lengths[i]`` tokens (BOS + prompt, masked out of the loss; in ``"trl"`` mode
    a prompt length of 1 may also cover a first token merged into the completion).  ``fingerprint``
    digests every id and the settings (use it in cache keys, e.g. reference log-probs).
    ``dropped`` lists the sources of pairs left out (``"trl"`` mode: prompt fills
    ``max_length``); ``sources`` those kept, row for row.
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
    tokenization: str = "exact"
    dropped: list[str] = field(default_factory=list)

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


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class _Builder:
    """Collects sequences and digests them (the fingerprint of :class:`TokenizedPairs`)."""

    def __init__(self, settings: list[Any]) -> None:
        self.digest = hashlib.sha256(json.dumps(settings).encode())
        self.chosen: list[np.ndarray] = []
        self.rejected: list[np.ndarray] = []
        self.prompt_lengths: list[int] = []
        self.sources: list[str] = []
        self.truncated = {"chosen": 0, "rejected": 0}

    def add(self, source: str, prompt_length: int, chosen: list[int], rejected: list[int]) -> None:
        for ids, out in ((chosen, self.chosen), (rejected, self.rejected)):
            seq = np.asarray(ids, dtype=np.int32)
            self.digest.update(len(seq).to_bytes(4, "little"))
            self.digest.update(seq.astype("<i4").tobytes())
            out.append(seq)
        self.prompt_lengths.append(prompt_length)
        self.digest.update(prompt_length.to_bytes(4, "little"))
        self.sources.append(source)

    def build(self, **settings: Any) -> TokenizedPairs:
        return TokenizedPairs(
            chosen=self.chosen,
            rejected=self.rejected,
            prompt_lengths=np.asarray(self.prompt_lengths, dtype=np.int64),
            chosen_truncated=self.truncated["chosen"],
            rejected_truncated=self.truncated["rejected"],
            sources=self.sources,
            fingerprint=self.digest.hexdigest(),
            **settings,
        )


def tokenize_pairs(
    pairs: Sequence[PreferencePair],
    tokenizer: Tokenizer,
    *,
    max_length: int,
    max_prompt_length: int | None = None,
    truncate_prompt: str = "error",
    tokenization: str = "exact",
) -> TokenizedPairs:
    """Tokenise ``pairs`` in the ``tokenization`` mode (``"exact"`` or ``"trl"``) of the
    module docstring, under its truncation policy (``max_prompt_length`` and
    ``truncate_prompt`` are ``"exact"`` settings; TRL has neither)."""
    if tokenization not in TOKENIZATIONS:
        raise ValueError(
            f"tokenization must be one of {', '.join(map(repr, TOKENIZATIONS))} "
            f"([data] tokenization), got {tokenization!r}"
        )
    if truncate_prompt not in ("error", "left"):
        raise ValueError(f'truncate_prompt must be "error" or "left", got {truncate_prompt!r}')
    if tokenization == "trl":
        return _tokenize_trl(pairs, tokenizer, max_length, truncate_prompt)
    return _tokenize_exact(pairs, tokenizer, max_length, max_prompt_length, truncate_prompt)


def _tokenize_exact(
    pairs: Sequence[PreferencePair],
    tokenizer: Tokenizer,
    max_length: int,
    max_prompt_length: int | None,
    truncate_prompt: str,
) -> TokenizedPairs:
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
    out = _Builder([tokenizer.fingerprint, max_length, max_prompt_length, truncate_prompt])
    for pair in pairs:
        prompt = _strip_specials(tokenizer.encode(pair.prompt), tokenizer)
        if len(prompt) > max_prompt_length:
            if truncate_prompt == "error":
                raise ValueError(
                    f"{pair.source}: prompt is {len(prompt)} tokens, over max_prompt_length="
                    f"{max_prompt_length}: raise max_prompt_length (and max_length), or pass "
                    'truncate_prompt="left" to keep its last tokens (or tokenization="trl" '
                    "to keep it whole, as TRL does)"
                )
            prompt = prompt[len(prompt) - max_prompt_length :]
        prefix = bos + prompt
        if not prefix:
            raise ValueError(
                f"{pair.source}: empty prompt and the tokenizer has no BOS: the first completion "
                "token would have no context; give a prompt"
            )
        room = max_length - len(prefix)
        seqs = []
        for key in ("chosen", "rejected"):
            completion = _strip_specials(tokenizer.encode(getattr(pair, key)), tokenizer)
            if not completion:
                raise ValueError(
                    f"{pair.source}: {key!r} encodes to no token: give a non-empty completion"
                )
            completion.append(eos)
            if len(completion) > room:
                completion = completion[:room]
                out.truncated[key] += 1
            seqs.append(prefix + completion)
        out.add(pair.source, len(prefix), *seqs)
    return out.build(max_length=max_length, max_prompt_length=max_prompt_length)


def _trl_ids(pair: PreferencePair, tokenizer: ModelInputTokenizer) -> list[list[int]]:
    """Ids of prompt, prompt + chosen and prompt + rejected as TRL 1.16's DPO
    ``tokenize_fn`` makes them (after its ``add_eos`` step for plain text)."""
    if pair.messages is None:
        eos = tokenizer.eos_token
        if not eos:
            raise ValueError(
                f"{pair.source}: the tokenizer has no eos_token text, which TRL appends to "
                'plain-text completions: set tokenizer.eos_token, or use tokenization="exact"'
            )
        ends = [c if c.endswith(eos) else c + eos for c in (pair.chosen, pair.rejected)]
        return [tokenizer.encode_input(pair.prompt + c) for c in ["", *ends]]
    prompt, chosen, rejected = pair.messages
    if not all(isinstance(v, list) for v in pair.messages):
        raise ValueError(
            f"{pair.source}: the row mixes messages and plain text across prompt, chosen and "
            "rejected; TRL needs one format per row: write all three as lists of messages "
            'or all three as strings (or use tokenization="exact")'
        )
    kwargs = pair.template_kwargs or {}
    ids = [tokenizer.encode_chat(prompt, add_generation_prompt=True, **kwargs)]
    for completion in (chosen, rejected):
        ids.append(
            tokenizer.encode_chat(prompt + completion, add_generation_prompt=False, **kwargs)
        )
    if any(i is None for i in ids):
        raise ValueError(
            f"{pair.source}: a conversational row, but the tokenizer has no chat template: "
            "save one with the tokenizer (tokenizer.chat_template), write the row as plain "
            'text, or use tokenization="exact" (its plain "User: ...\\nAssistant: " template)'
        )
    return [list(i) for i in ids]


def _tokenize_trl(
    pairs: Sequence[PreferencePair], tokenizer: Tokenizer, max_length: int, truncate_prompt: str
) -> TokenizedPairs:
    if not isinstance(tokenizer, ModelInputTokenizer):
        raise ValueError(
            f'tokenization="trl" needs the tokenizer\'s own call (encode_input, encode_chat, '
            f"eos_token: llm.tokenizer.ModelInputTokenizer), which {type(tokenizer).__name__} "
            'lacks: load a Hugging Face tokenizer with llm.hf.load_local, or use "exact"'
        )
    if truncate_prompt != "error":
        raise ValueError(
            f"truncate_prompt={truncate_prompt!r} has no counterpart in TRL, which keeps the whole "
            'prompt: drop truncate_prompt (or use tokenization="exact")'
        )
    if max_length < 2:
        raise ValueError(
            f"max_length={max_length} leaves no room for a prompt token and a completion token: "
            "use max_length >= 2"
        )
    out = _Builder(["trl", tokenizer.fingerprint, max_length])
    dropped = []
    for pair in pairs:
        prompt, *full = _trl_ids(pair, tokenizer)
        # The completion starts where the prompt's ids and both prompt+completion ids diverge
        # (TRL: a trailing space or template text the full sequence renders otherwise).
        start = min(_common_prefix(prompt, seq) for seq in full)
        if start >= max_length:  # TRL drops pairs whose prompt alone fills max_length
            dropped.append(pair.source)
            continue
        # TRL's completion may start at token 0 (an empty prompt and no BOS, or a first token
        # merged across the boundary); token 0 is never a label (the loss shifts by one), so a
        # mask from token 1 gives TRL's loss and keeps the model's input non-empty.
        start = max(start, 1)
        for key, seq in zip(("chosen", "rejected"), full):
            if len(seq) <= start:
                raise ValueError(
                    f"{pair.source}: {key!r} adds no token after the prompt: give a non-empty "
                    "completion"
                )
            if len(seq) > max_length:  # TRL's truncation_mode="keep_start"
                out.truncated[key] += 1
        out.add(pair.source, start, *(seq[:max_length] for seq in full))
    if pairs and not out.sources:
        raise ValueError(
            f"every pair's prompt has max_length={max_length} tokens or more, so TRL drops them "
            f"all (first: {dropped[0]}): raise max_length"
        )
    return out.build(
        max_length=max_length, max_prompt_length=max_length - 1, tokenization="trl", dropped=dropped
    )


# ------------------------------------------------------------------------------- audit
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
