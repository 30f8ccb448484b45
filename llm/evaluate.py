"""Generative evaluation: greedy decoding and exact match of the preferred answer.

The analogue of the paper's win rates for the generated tasks: a prompt counts as won
when the greedy completion equals the chosen answer (:func:`llm.synth.exact_match`).
The DPO-side metrics (held-out loss, excess loss, reward accuracy) are
:meth:`llm.oracle.DPOOracle.evaluate_tasks`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from llm.data import PreferencePair
from llm.precision import Precision
from llm.synth import exact_match

__all__ = ["greedy_exact_match", "greedy_matches"]


def greedy_exact_match(
    model: torch.nn.Module,
    tokenizer,
    pairs: Sequence[PreferencePair],
    *,
    max_new_tokens: int = 16,
    device: torch.device | str = "cpu",
    precision: Precision | None = None,
) -> float:
    """Share of ``pairs`` whose greedy completion matches the chosen answer (see
    :func:`greedy_matches`)."""
    matches = greedy_matches(
        model, tokenizer, pairs, max_new_tokens=max_new_tokens, device=device, precision=precision
    )
    return sum(matches) / len(matches)


@torch.no_grad()
def greedy_matches(
    model: torch.nn.Module,
    tokenizer,
    pairs: Sequence[PreferencePair],
    *,
    max_new_tokens: int = 16,
    device: torch.device | str = "cpu",
    precision: Precision | None = None,
) -> list[bool]:
    """For each of ``pairs``, whether its greedy completion matches the chosen answer;
    decoded under ``precision`` (its device and autocast: the run's one policy) when given,
    else on ``device`` in the weights' dtype."""
    if not pairs:
        raise ValueError("pairs is empty: nothing to evaluate")
    precision = precision or Precision(torch.device(device))
    was_training = model.training
    model.eval()
    with precision.autocast():
        matches = [_won(model, tokenizer, p, max_new_tokens, precision.device) for p in pairs]
    model.train(was_training)
    return matches


def _won(model, tokenizer, pair: PreferencePair, max_new_tokens: int, device) -> bool:
    """Whether the greedy completion of ``pair``'s prompt is its chosen answer."""
    prefix = [tokenizer.bos_id] if tokenizer.bos_id is not None else []
    ids = torch.tensor([prefix + tokenizer.encode(pair.prompt)], device=device)
    out = model.generate(ids, max_new_tokens, eos_id=tokenizer.eos_id)[0, ids.shape[1] :]
    new = out.tolist()
    if tokenizer.eos_id in new:
        new = new[: new.index(tokenizer.eos_id)]
    new = [t for t in new if t < tokenizer.vocab_size]
    return bool(exact_match(tokenizer.decode(new), pair.chosen))
