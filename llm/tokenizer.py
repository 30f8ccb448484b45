"""Tokenizers: the protocol the DPO backend needs, a built-in character tokenizer, and
the rendering of conversational messages into text.

The backend only needs ``encode`` (text → ids, *without* special tokens), ``decode``,
the special ids and a ``fingerprint`` (a stable digest used in cache keys).  The
:class:`CharTokenizer` covers the generated task suite (``llm.synth``) with no download;
``llm.hf`` adapts a Hugging Face tokenizer to the same :class:`Tokenizer` protocol.
``tokenize_pairs(..., tokenization="trl")`` (see :mod:`llm.data.tokenization`) also needs the
tokenizer's *own* call — special tokens inserted as the tokenizer does, special-token
strings recognised, chat templates tokenised — the :class:`ModelInputTokenizer` protocol.

Conversational rows (TRL's "conversational" format) are turned into text here:
:func:`render_messages` renders a prompt (the tokenizer's chat template when it has one,
else the plain template below) and :func:`render_completion` concatenates the assistant
messages of a completion.

>>> tok = CharTokenizer()
>>> ids = tok.encode("12+7=")
>>> tok.decode([tok.bos_id, *ids, tok.eos_id])
'12+7='
>>> render_messages([{"role": "user", "content": "12+7="}], tok)
'User: 12+7=\\nAssistant: '
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "Tokenizer",
    "ModelInputTokenizer",
    "CharTokenizer",
    "render_messages",
    "render_completion",
    "ROLES",
]

ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}


@runtime_checkable
class Tokenizer(Protocol):
    """What the DPO backend needs from a tokenizer.

    ``encode`` must not add special tokens (the backend adds BOS/EOS itself, and strips a
    leading BOS / trailing EOS if a tokenizer adds them anyway).  ``bos_id`` is ``None``
    for tokenizers without a BOS token.  ``apply_chat_template(messages)`` returns the
    rendered prompt text (with the generation prompt) or ``None`` when there is no template.
    """

    vocab_size: int
    bos_id: int | None
    eos_id: int
    pad_id: int
    fingerprint: str

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def apply_chat_template(self, messages: list[dict[str, Any]]) -> str | None: ...


@runtime_checkable
class ModelInputTokenizer(Tokenizer, Protocol):
    """A :class:`Tokenizer` that also tokenises text the way its own library call does: what
    ``tokenization="trl"`` needs to reproduce TRL's DPO tokenisation.

    ``encode_input(text)`` is Hugging Face's ``tokenizer(text)["input_ids"]``: the special
    tokens the tokenizer inserts (a Llama-style BOS; none for GPT-2), and special-token
    strings in ``text`` (e.g. ``eos_token``) as their ids.  ``encode_chat(messages,
    add_generation_prompt=..., **template_kwargs)`` is ``apply_chat_template(messages,
    tokenize=True, ...)`` (the template writes any BOS itself; nothing else is added;
    ``template_kwargs`` such as ``tools`` reach the template), or ``None`` without a chat
    template.  ``eos_token`` is the EOS token's text (``None`` if it has none): TRL
    appends it to plain-text completions.
    """

    eos_token: str | None

    def encode_input(self, text: str) -> list[int]: ...

    def encode_chat(
        self, messages: list[dict[str, Any]], *, add_generation_prompt: bool, **template_kwargs: Any
    ) -> list[int] | None: ...


class CharTokenizer:
    """One token per character: printable ASCII (32..126) and ``"\\n"``, after four specials.

    Ids: ``pad_id=0``, ``bos_id=1``, ``eos_id=2``, ``unk_id=3``, then the characters, so
    ``vocab_size == 100``.  Any other character encodes to ``unk_id``; ``decode`` skips
    the specials (cut a generation at ``eos_id`` before decoding).

    As a :class:`ModelInputTokenizer`, its own call ``encode_input`` inserts BOS (the
    model input the built-in GPT is trained on starts with it) and reads the strings
    ``<pad>``, ``<bos>``, ``<eos>``, ``<unk>`` as the special ids; ``encode`` does not
    (it stays one id per character).  It has no chat template.

    >>> tok = CharTokenizer()
    >>> tok.vocab_size, tok.encode("A\\n"), tok.encode("é") == [tok.unk_id]
    (100, [37, 99], True)
    >>> tok.encode_input("A<eos>")
    [1, 37, 2]
    """

    pad_id = 0
    bos_id: int | None = 1
    eos_id = 2
    unk_id = 3
    eos_token: str | None = "<eos>"
    SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", "<unk>")  # ids 0..3
    _specials = re.compile("(" + "|".join(map(re.escape, SPECIAL_TOKENS)) + ")")

    def __init__(self) -> None:
        chars = [chr(c) for c in range(32, 127)] + ["\n"]
        n_special = 4
        self.chars: tuple[str, ...] = tuple(chars)
        self._to_id = {ch: i + n_special for i, ch in enumerate(chars)}
        self._to_char = dict.fromkeys(range(n_special), "") | {
            i + n_special: ch for i, ch in enumerate(chars)
        }
        self.vocab_size: int = n_special + len(chars)
        spec = {
            "kind": "char",
            "specials": {"pad": self.pad_id, "bos": self.bos_id, "eos": self.eos_id, "unk": 3},
            "vocab": chars,
        }
        self.fingerprint: str = hashlib.sha256(
            json.dumps(spec, sort_keys=True).encode("utf-8")
        ).hexdigest()

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, no special tokens; unknown characters → ``unk_id``."""
        get, unk = self._to_id.get, self.unk_id
        return [get(ch, unk) for ch in text]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids`` (ints, or a 1-D array/tensor), specials skipped."""
        out = []
        for i in ids:
            i = int(i)
            if i not in self._to_char:
                raise ValueError(f"token id {i} is outside the vocabulary 0..{self.vocab_size - 1}")
            out.append(self._to_char[i])
        return "".join(out)

    def apply_chat_template(self, messages: list[dict[str, Any]]) -> None:
        """The character tokenizer has no chat template: :func:`render_messages` falls back."""
        return None

    def encode_input(self, text: str) -> list[int]:
        """The model input for ``text``: BOS, then one id per character, the strings of
        :attr:`SPECIAL_TOKENS` read as their ids."""
        ids = [] if self.bos_id is None else [self.bos_id]
        for k, piece in enumerate(self._specials.split(text)):
            # re.split with one group alternates text (even k) and matched specials (odd k)
            ids.extend([self.SPECIAL_TOKENS.index(piece)] if k % 2 else self.encode(piece))
        return ids

    def encode_chat(
        self, messages: list[dict[str, Any]], *, add_generation_prompt: bool, **template_kwargs: Any
    ) -> None:
        """No chat template: always ``None``."""
        return None

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


def _check_messages(messages: Any) -> list[Mapping[str, Any]]:
    if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
        raise ValueError(
            "messages must be a non-empty list of {'role': ..., 'content': ...} objects, "
            f"got {type(messages).__name__}"
        )
    for k, m in enumerate(messages):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise ValueError(f"message {k} must be an object with 'role' and 'content', got {m!r}")
        if m["role"] not in ROLES:
            raise ValueError(f"message {k} has role {m['role']!r}: use one of {', '.join(ROLES)}")
        if not isinstance(m["content"], str):
            raise ValueError(
                f"message {k} content must be a string, got {type(m['content']).__name__}"
            )
    return list(messages)


def render_messages(messages: list[dict[str, Any]], tokenizer: Tokenizer | None = None) -> str:
    """Render a conversational *prompt* as text.

    Uses ``tokenizer.apply_chat_template(messages)`` when it returns a string.  Otherwise
    the plain template: one ``"Role: content"`` line per message (roles System, User,
    Assistant), and, when the last message is not the assistant's, a final
    ``"Assistant: "`` line that the completion continues.

    >>> render_messages([{"role": "system", "content": "Be brief."},
    ...                  {"role": "user", "content": "Hi"}])
    'System: Be brief.\\nUser: Hi\\nAssistant: '
    """
    msgs = _check_messages(messages)
    if tokenizer is not None:
        text = tokenizer.apply_chat_template([dict(m) for m in msgs])
        if isinstance(text, str):
            return text
    lines = [f"{ROLES[m['role']]}: {m['content']}" for m in msgs]
    if msgs[-1]["role"] != "assistant":
        lines.append(f"{ROLES['assistant']}: ")
    return "\n".join(lines)


def render_completion(messages: list[dict[str, Any]]) -> str:
    """Render a conversational *completion*: the assistant messages' contents, concatenated.

    >>> render_completion([{"role": "assistant", "content": "19"}])
    '19'
    """
    msgs = _check_messages(messages)
    roles = sorted({m["role"] for m in msgs} - {"assistant"})
    if roles:
        raise ValueError(
            f"a completion may hold only assistant messages, got role(s) {', '.join(roles)}: "
            "move the earlier turns into the prompt"
        )
    return "".join(m["content"] for m in msgs)
