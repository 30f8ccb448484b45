"""Reading preference data: one JSONL task file becomes a list of :class:`PreferencePair`.

A task file holds one JSON object per line (extra keys are ignored), in one of TRL's
preference formats:

* explicit prompt: ``{"prompt": ..., "chosen": ..., "rejected": ...}``;
* implicit prompt: ``{"chosen": ..., "rejected": ...}`` where both hold the whole text or
  conversation; the prompt is their shared start (:func:`split_implicit_prompt`, TRL's
  ``extract_prompt`` rule).

Values are strings, or the conversational form: lists of ``{"role", "content"}`` messages
(``prompt`` the conversation so far, ``chosen``/``rejected`` the assistant replies; see
:mod:`llm.tokenizer`).  Optional ``tools`` and ``chat_template_kwargs`` keys reach the chat
template in ``"trl"`` mode, as in TRL.  Every error names the row's ``file:line``.

>>> split_implicit_prompt("The sky is blue.", "The sky is green.")
('The sky is', ' blue.', ' green.')
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm.tokenizer import Tokenizer, render_completion, render_messages

__all__ = ["PreferencePair", "split_implicit_prompt", "read_preference_jsonl"]

_KEYS = ("prompt", "chosen", "rejected")
_FORMAT = (
    'each line must be one JSON object {"prompt": ..., "chosen": ..., "rejected": ...} '
    '(or {"chosen": ..., "rejected": ...} with the prompt implicit in both)'
)


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
