"""Tokenisation: preference pairs become token ids (:class:`TokenizedPairs`), in one of two
modes (``tokenize_pairs(..., tokenization=...)``, config ``[data] tokenization``).

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

A 12-character prompt is over ``max_length // 2`` (an error in ``"exact"`` mode); ``"trl"``
keeps it whole and cuts the chosen sequence at 16 tokens:

>>> from llm.data.reading import PreferencePair
>>> from llm.tokenizer import CharTokenizer
>>> tok = CharTokenizer()
>>> long = [PreferencePair("123456789+1=", "123456790", "0", "ex:3")]
>>> tp = tokenize_pairs(long, tok, max_length=16, tokenization="trl")
>>> tp.prompt_lengths.tolist(), [len(tp.chosen[0]), len(tp.rejected[0])], tp.chosen_truncated
([13], [16, 15], 1)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llm.data.reading import PreferencePair
from llm.tokenizer import ModelInputTokenizer, Tokenizer

__all__ = ["TOKENIZATIONS", "TokenizedPairs", "tokenize_pairs"]

TOKENIZATIONS = ("exact", "trl")


@dataclass
class TokenizedPairs:
    """Token ids of n preference pairs, ready for :func:`~llm.data.collate.collate_pairs`.

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
