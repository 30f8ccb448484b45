"""How preference pairs are laid out for one forward pass: plain rows or a shared prompt.

A DPO batch scores, for each pair, a chosen and a rejected completion of the same prompt.

* ``plain``: 2B rows, prompt + chosen and prompt + rejected, right-padded (the layout of
  :func:`llm.data.collate_pairs`); the prompt is computed twice.
* ``prefix sharing`` (Wang & Hegde 2024, "Accelerating Direct Preference Optimization with
  Prefix Sharing"): B rows, prompt + chosen + rejected, with an attention mask under which
  the rejected tokens see the prompt and the earlier rejected tokens but never the chosen ones,
  and position ids that restart at the end of the prompt for the rejected completion.  Every
  token then sees exactly the context it sees in the plain layout, the prompt is computed once,
  and the rejected completion's first token is predicted from the prompt's last position.

Either way the result is a list of :class:`Packed` pieces plus, for every scored token, the
flat index of the hidden state that predicts it (``source``), its id (``labels``) and the
sequence it belongs to (``target``: pair i's chosen completion is i, its rejected one B + i),
which is all :func:`llm.dpo.packed_logps` needs.

Bucketing: with ``bucket = g > 0`` each row is padded to its own length rounded up to a
multiple of g, and rows of equal width form one piece (one forward call each).  A row's
computation then never depends on the other pairs of the batch: the log-probs a pair gets in a
training batch are the ones it got when the reference was cached, bit for bit (on a CPU, where
a matmul's rows do not depend on the row count), not just to rounding.  ``bucket = 0`` pads
every row to the batch's longest (one piece).

>>> from llm.data import TokenizedPairs
>>> import numpy as np
>>> seq = lambda *ids: np.array(ids, dtype=np.int32)
>>> pairs = TokenizedPairs(chosen=[seq(1, 2, 3, 4)], rejected=[seq(1, 2, 5)],
...     prompt_lengths=np.array([2]), chosen_truncated=0, rejected_truncated=0,
...     sources=["x"], fingerprint="x")
>>> batch = pack_pairs(pairs, [0], pad_id=0, layout=Layout(prefix_sharing=True, bucket=0))
>>> piece = batch.pieces[0]
>>> piece.input_ids.tolist(), piece.position_ids.tolist()  # prompt 1 2, chosen 3 4, rejected 5
([[1, 2, 3, 4, 5]], [[0, 1, 2, 3, 2]])
>>> piece.source.tolist(), piece.labels.tolist(), piece.target.tolist()
([1, 2, 1], [3, 4, 5], [0, 0, 1])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from llm.data import TokenizedPairs

__all__ = ["Layout", "Packed", "PackedBatch", "pack_pairs", "attention_mask_4d"]

# Token roles in a row (``Packed.segments``).
PROMPT, CHOSEN, REJECTED, PAD = 0, 1, 2, 3


@dataclass(frozen=True)
class Layout:
    """``prefix_sharing``: one row per pair (prompt once); ``bucket``: pad each row to a
    multiple of this many tokens of its own length (0: to the batch's longest)."""

    prefix_sharing: bool = True
    bucket: int = 16

    def __post_init__(self) -> None:
        if isinstance(self.bucket, bool) or not isinstance(self.bucket, int) or self.bucket < 0:
            raise ValueError(f"Layout.bucket must be an int >= 0, got {self.bucket!r}")

    def key(self) -> dict[str, object]:
        """Cache-key entries: numbers made under another layout differ in their last bits."""
        return {"prefix_sharing": self.prefix_sharing, "bucket": self.bucket}


class Packed(NamedTuple):
    """One forward call's inputs and the tokens it scores.

    ``input_ids`` (R, T) long; ``position_ids`` (R, T) long; ``segments`` (R, T) int8 token
    roles (prompt 0, chosen 1, rejected 2, padding 3); ``source`` (M,) flat index r·T + t of the
    hidden state predicting each scored token; ``labels`` (M,) its id; ``target`` (M,) its
    sequence (0..2B-1).
    """

    input_ids: Tensor
    position_ids: Tensor
    segments: Tensor
    source: Tensor
    labels: Tensor
    target: Tensor

    def to(self, device: torch.device) -> Packed:
        return Packed(*(t.to(device, non_blocking=True) for t in self))


class PackedBatch(NamedTuple):
    """``pieces`` to run; ``counts`` (2B,) scored tokens per sequence; ``prefix_sharing``
    whether rows hold prompt + chosen + rejected; ``tokens``: tokens of the pairs as data
    (chosen + rejected sequences, prompts counted twice); ``computed``: tokens the forward
    passes process (padding included)."""

    pieces: list[Packed]
    counts: Tensor
    prefix_sharing: bool
    tokens: int
    computed: int


class _Pairs(NamedTuple):
    """The pairs of a batch: prompt lengths, sequences and completion lengths."""

    prompt: np.ndarray
    chosen: list[np.ndarray]
    rejected: list[np.ndarray]
    c_len: np.ndarray
    r_len: np.ndarray


class _Row(NamedTuple):
    """One row before padding: token ids, its segments ``((role, length), ...)``, position
    ids, and per scored token the row index predicting it, its id and its sequence."""

    ids: np.ndarray
    roles: tuple[tuple[int, int], ...]
    positions: np.ndarray
    source: np.ndarray
    labels: np.ndarray
    target: np.ndarray


def _round_up(n: np.ndarray, g: int) -> np.ndarray:
    return -(-n // g) * g


def pack_pairs(
    pairs: TokenizedPairs,
    index: Sequence[int] | np.ndarray,
    pad_id: int,
    layout: Layout,
    *,
    max_length: int | None = None,
    chosen_only: bool = False,
) -> PackedBatch:
    """The pairs ``index`` of ``pairs`` laid out as ``layout`` says (see the module docstring).

    ``max_length``: the longest sequence the model takes (its position table, e.g.
    ``GPTConfig.block_size``); plain rows are never padded past it.  A prefix-shared row may be
    longer (prompt + both completions) while its positions stay below it.  ``chosen_only``:
    the chosen sequences alone, in plain rows (the SFT objective, :mod:`llm.sft`; ``counts``
    then has B entries and sequence i is pair i's chosen completion).

    Raises:
        ValueError: on an empty index, a pair without a prompt token (its first completion
            token has nothing to be predicted from) or with an empty completion.
        IndexError: on an index outside 0..len(pairs)-1.
    """
    idx = np.asarray(index, dtype=np.int64).reshape(-1)
    batch = _checked_batch(pairs, idx, max_length, chosen_only)
    shared = layout.prefix_sharing and not chosen_only
    if chosen_only:
        counts = torch.from_numpy(batch.c_len)
        tokens = int(batch.prompt.sum() + batch.c_len.sum())
    else:
        counts = torch.from_numpy(np.concatenate([batch.c_len, batch.r_len]))
        tokens = int(2 * batch.prompt.sum() + batch.c_len.sum() + batch.r_len.sum())
    rows = _shared_rows(batch) if shared else _plain_rows(batch, chosen_only)
    widths = _widths(rows, layout, max_length, shared)
    pieces = [
        _piece([rows[m] for m in np.flatnonzero(widths == width)], int(width), pad_id)
        for width in np.unique(widths)
    ]
    computed = int(sum(p.input_ids.numel() for p in pieces))
    return PackedBatch(pieces, counts, shared, tokens, computed)


def _checked_batch(
    pairs: TokenizedPairs, idx: np.ndarray, max_length: int | None, chosen_only: bool = False
) -> _Pairs:
    """The pairs ``idx`` with their lengths, checked: every pair has a prompt token and
    non-empty completions (the chosen one alone with ``chosen_only``), and fits in
    ``max_length``."""
    if idx.size == 0:
        raise ValueError("index is empty: a batch needs at least one pair")
    if idx.min() < 0 or idx.max() >= len(pairs):
        raise IndexError(f"indices must lie in 0..{len(pairs) - 1}, got {idx.min()}..{idx.max()}")
    prompt = pairs.prompt_lengths[idx].astype(np.int64)
    c_len = np.array([len(pairs.chosen[i]) for i in idx], dtype=np.int64) - prompt
    r_len = np.array([len(pairs.rejected[i]) for i in idx], dtype=np.int64) - prompt
    bad = (prompt < 1) | (c_len < 1) | ((r_len < 1) & (not chosen_only))
    if bad.any():
        i = int(idx[np.argmax(bad)])
        raise ValueError(
            f"pair {i} has prompt length {pairs.prompt_lengths[i]}, chosen completion "
            f"{len(pairs.chosen[i]) - pairs.prompt_lengths[i]} and rejected completion "
            f"{len(pairs.rejected[i]) - pairs.prompt_lengths[i]} tokens: a scored pair needs a "
            "prompt (BOS at least) and non-empty completions (check truncation)"
        )
    if max_length is not None:
        longest = prompt + (c_len if chosen_only else np.maximum(c_len, r_len))
        if longest.max() > max_length:
            i = int(idx[np.argmax(longest)])
            raise ValueError(
                f"pair {i} has a sequence of {int(longest.max())} tokens, longer than the "
                f"model's {max_length} positions: tokenize with max_length <= {max_length}"
            )
    chosen = [pairs.chosen[i] for i in idx]
    rejected = [pairs.rejected[i] for i in idx]
    return _Pairs(prompt, chosen, rejected, c_len, r_len)


def _shared_rows(pairs: _Pairs) -> list[_Row]:
    """One row per pair, prompt + chosen + rejected; the rejected positions restart after
    the prompt and its first token is predicted from the prompt's last position."""
    prompt, chosen, rejected, c_len, r_len = pairs
    b, rows = len(chosen), []
    for j in range(b):
        p, c, r = prompt[j], c_len[j], r_len[j]
        ids = np.concatenate([chosen[j], rejected[j][p:]])
        pos = np.concatenate([np.arange(p + c), np.arange(p, p + r)])
        src = np.concatenate(
            [np.arange(p - 1, p + c - 1), [p - 1], np.arange(p + c, p + c + r - 1)]
        )
        tgt = np.concatenate([np.full(c, j), np.full(r, b + j)])
        rows.append(_Row(ids, ((PROMPT, p), (CHOSEN, c), (REJECTED, r)), pos, src, ids[p:], tgt))
    return rows


def _plain_rows(pairs: _Pairs, chosen_only: bool = False) -> list[_Row]:
    """2B rows: every pair's prompt + chosen, then every pair's prompt + rejected (B rows of
    prompt + chosen with ``chosen_only``)."""
    prompt, chosen, rejected, c_len, r_len = pairs
    b, rows = len(chosen), []
    kinds = ((chosen, CHOSEN, c_len), (rejected, REJECTED, r_len))
    for j, (seqs, role, lengths) in enumerate(kinds[:1] if chosen_only else kinds):
        for i in range(b):
            p, n = prompt[i], lengths[i]
            ids = seqs[i]
            src = np.arange(p - 1, p + n - 1)
            tgt = np.full(n, j * b + i)
            rows.append(_Row(ids, ((PROMPT, p), (role, n)), np.arange(p + n), src, ids[p:], tgt))
    return rows


def _widths(rows: list[_Row], layout: Layout, max_length: int | None, shared: bool) -> np.ndarray:
    """Each row's padded width: its length rounded up to the bucket (or the longest row's)."""
    lengths = np.array([len(row.ids) for row in rows], dtype=np.int64)
    if layout.bucket:
        widths = _round_up(lengths, layout.bucket)
    else:
        widths = np.full(len(rows), lengths.max())
    if max_length is not None and not shared:  # plain rows: positions 0..T-1
        widths = np.minimum(widths, np.maximum(max_length, lengths))
    return widths


def _piece(rows: list[_Row], width: int, pad_id: int) -> Packed:
    """``rows`` right-padded to ``width`` as one forward call's inputs."""
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    pos = np.zeros((len(rows), width), dtype=np.int64)
    seg = np.full((len(rows), width), PAD, dtype=np.int8)
    for r, row in enumerate(rows):
        n = len(row.ids)
        ids[r, :n] = row.ids
        pos[r, :n] = row.positions
        start = 0
        for role, k in row.roles:
            seg[r, start : start + k] = role
            start += k
    return Packed(
        torch.from_numpy(ids),
        torch.from_numpy(pos),
        torch.from_numpy(seg),
        torch.from_numpy(np.concatenate([row.source + r * width for r, row in enumerate(rows)])),
        torch.from_numpy(np.concatenate([row.labels for row in rows]).astype(np.int64)),
        torch.from_numpy(np.concatenate([row.target for row in rows])),
    )


def attention_mask_4d(segments: Tensor) -> Tensor:
    """Boolean (R, 1, T, T) mask of a prefix-shared piece: query q sees key k iff k ≤ q, k is
    not padding, and not (q rejected and k chosen).  Each query also sees itself (no empty
    softmax row for padding queries).

    >>> seg = torch.tensor([[PROMPT, CHOSEN, REJECTED, PAD]])
    >>> attention_mask_4d(seg)[0, 0].int().tolist()
    [[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 1, 1]]
    """
    t = segments.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=segments.device).tril()
    real_key = (segments != PAD)[:, None, :]
    blocked = (segments == REJECTED)[:, :, None] & (segments == CHOSEN)[:, None, :]
    eye = torch.eye(t, dtype=torch.bool, device=segments.device)
    return ((causal & real_key & ~blocked) | eye)[:, None]
