"""Direct Preference Optimisation losses, sequence log-probs and the concatenated forward pass.

For a preference pair (x, y_w, y_l) with policy π_θ and frozen reference π_ref, the DPO loss
(Rafailov et al. 2023, "Direct Preference Optimization", eq. 7) is

    L = −log σ(β Δ),    Δ = r_w − r_l,    r = log π_θ(y|x) − log π_ref(y|x),

where each log π(y|x) sums the log-probabilities of the completion tokens only (prompt tokens
are masked out). Variants, all per example (no reduction), selected by `loss_type`:

    sigmoid  −(1−ε) log σ(βΔ) − ε log σ(−βΔ)          conservative DPO (Mitchell 2023), ε = 0: DPO
    robust   [−(1−ε) log σ(βΔ) + ε log σ(−βΔ)]/(1−2ε)  robust DPO (Chowdhury et al. 2024)
    hinge    max(0, 1 − βΔ)                            SLiC-HF hinge (Zhao et al. 2023)
    ipo      (Δ − 1/(2β))²                             IPO (Azar et al. 2023), length-averaged logps

At initialisation (policy = reference) Δ = 0 and the sigmoid loss is exactly log 2 ≈ 0.6931.

Two ways to get sequence log-probs from a model:

* :func:`packed_logps` (what the oracle, the reference and the specialists use): a
  :class:`llm.packing.PackedBatch` — plain or prefix-shared rows, bucketed — through a model
  that returns hidden states (GPT, HFCausalLM); only the completion positions go through the
  LM head, chunked (:mod:`llm.chunked_head`): the (N, L, V) logits are never built.
* :func:`concatenated_forward` / :func:`sequence_logps`: from a model's full logits (any
  model). We never materialise the full log-softmax, only the log-probs of the observed tokens
  (logit − logsumexp); bf16/fp16 logits are cast to float32 one sequence at a time, over the
  span of labelled positions only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from llm.chunked_head import label_logps
from llm.packing import PAD, Layout, PackedBatch, attention_mask_4d
from llm.precision import Precision

__all__ = [
    "LOSS_TYPES",
    "DPOOutput",
    "sequence_logps",
    "dpo_loss",
    "dpo_metrics",
    "METRIC_NAMES",
    "dpo_metric_sums",
    "metrics_from_sums",
    "concatenated_forward",
    "packed_logps",
    "packed_sequence_logps",
    "resolve_layout",
    "max_length_of",
]

LOSS_TYPES: tuple[str, ...] = ("sigmoid", "robust", "hinge", "ipo")

# At most this many offending row indices are quoted in an error message.
_MAX_ROWS_IN_MESSAGE = 10


def _rows(mask: Tensor) -> str:
    """Format the indices where a 1-D bool tensor is True, e.g. "row 3" or "rows [0, 2]"."""
    idx = mask.nonzero().flatten().tolist()
    if len(idx) == 1:
        return f"row {idx[0]}"
    shown = idx[:_MAX_ROWS_IN_MESSAGE]
    more = f" (+{len(idx) - len(shown)} more)" if len(idx) > len(shown) else ""
    return f"rows {shown}{more}"


# -----------------------------------------------------------------------------
# sequence log-probabilities


def _checked_mask(logits: Tensor, input_ids: Tensor, loss_mask: Tensor) -> Tensor:
    """``loss_mask`` as bool, after checking the shapes and dtypes of
    :func:`sequence_logps`'s inputs and that position 0 is no label."""
    if logits.ndim != 3:
        raise ValueError(f"logits must be (N, L, V), got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be floating point, got {logits.dtype}")
    n, length = logits.shape[:2]
    if tuple(input_ids.shape) != (n, length):
        raise ValueError(
            f"input_ids must be {(n, length)} to match logits, got {tuple(input_ids.shape)}"
        )
    if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
        raise ValueError(f"input_ids must be an integer tensor, got {input_ids.dtype}")
    if tuple(loss_mask.shape) != (n, length):
        raise ValueError(
            f"loss_mask must be {(n, length)} to match logits, got {tuple(loss_mask.shape)}"
        )
    mask = loss_mask.bool()
    if length > 0 and mask[:, 0].any():
        raise ValueError(
            f"loss_mask is True at position 0 in {_rows(mask[:, 0])}: position 0 has no preceding "
            "token so it can never be a label (is the mask shifted by one?)"
        )
    return mask


def sequence_logps(
    logits: Tensor, input_ids: Tensor, loss_mask: Tensor, *, average: bool = False
) -> Tensor:
    """Sum (or mean) over completion tokens of log p(token_t | tokens_<t), one value per row.

    Args:
        logits: (N, L, V) next-token logits; logits[:, t] predicts input_ids[:, t + 1].
        input_ids: (N, L) token ids.
        loss_mask: (N, L) bool, aligned with input_ids, True on completion tokens (the labels).
            Position 0 has no preceding token, so it can never be a label.
        average: return the mean over the labelled tokens instead of the sum (IPO wants this).

    Returns:
        (N,) log-probabilities in float32 (float64 if the logits are float64), whatever the
        logits' dtype: bf16/fp16 logits are cast to float32 one row at a time before the softmax.

    Raises:
        ValueError: on bad shapes/dtypes, a True at position 0, an out-of-range labelled token id,
            or a row with no labelled token (an empty completion has no log-probability).

    >>> logits = torch.zeros(1, 3, 4)  # uniform over a 4-token vocabulary
    >>> ids = torch.tensor([[0, 1, 2]])
    >>> mask = torch.tensor([[False, True, True]])  # prompt = token 0, completion = tokens 1, 2
    >>> sequence_logps(logits, ids, mask)  # 2 log(1/4)
    tensor([-2.7726])
    >>> sequence_logps(logits, ids, mask, average=True)  # log(1/4)
    tensor([-1.3863])
    """
    mask = _checked_mask(logits, input_ids, loss_mask)
    n, length, vocab = logits.shape

    # Shift: logits at t − 1 predict the label at t. All three below are (N, L − 1) and aligned.
    label_mask = mask[:, 1:]
    labels = input_ids[:, 1:]
    counts = label_mask.sum(dim=1)
    if (counts == 0).any():
        raise ValueError(
            f"loss_mask has no completion token in {_rows(counts == 0)}: an empty completion has "
            "no log-probability (check the prompt/completion split and truncation)"
        )
    labelled = labels[label_mask]
    if labelled.numel() and (labelled.min() < 0 or labelled.max() >= vocab):
        raise ValueError(
            f"labelled token ids must lie in [0, {vocab}) (the logits' vocabulary), "
            f"got range [{labelled.min().item()}, {labelled.max().item()}]"
        )
    labels = torch.where(label_mask, labels, 0).long()  # unlabelled ids (padding) may be anything

    # Per row, only the span [first, last] of labelled positions matters (prompts come first,
    # padding last); one host sync fetches all the span ends.
    pos = torch.arange(length - 1, device=label_mask.device)
    first = torch.where(label_mask, pos, length).amin(dim=1).tolist()
    last = torch.where(label_mask, pos, -1).amax(dim=1).tolist()

    out_dtype = torch.promote_types(logits.dtype, torch.float32)
    totals = []
    for i in range(n):
        lo, hi = first[i], last[i] + 1
        row = logits[i, lo:hi].to(out_dtype)  # (span, V); a copy only for bf16/fp16 logits
        # log softmax of the label only: logit_label − logsumexp(logits).
        token_logps = row.gather(-1, labels[i, lo:hi, None]).squeeze(-1) - torch.logsumexp(row, -1)
        totals.append(torch.where(label_mask[i, lo:hi], token_logps, 0.0).sum())
    logps = torch.stack(totals)
    return logps / counts.to(out_dtype) if average else logps


# -----------------------------------------------------------------------------
# losses


class DPOOutput(NamedTuple):
    """Per-example DPO losses and implicit rewards β·(log π_θ − log π_ref), detached."""

    losses: Tensor  # (B,)
    chosen_rewards: Tensor  # (B,)
    rejected_rewards: Tensor  # (B,)


def _check_beta(beta: float) -> float:
    try:
        b = float(beta)
    except (TypeError, ValueError):
        raise ValueError(f"beta must be a positive finite number, got {beta!r}") from None
    if not math.isfinite(b):
        raise ValueError(f"beta must be a positive finite number, got {b}")
    if b == 0:
        raise ValueError(
            "beta must be > 0, got 0: with beta = 0 the DPO loss is the constant log 2 ≈ 0.6931 "
            "and has no gradient (the 'loss stuck at 0.6931' symptom)"
        )
    if b < 0:
        raise ValueError(f"beta must be > 0, got {b} (a negative beta rewards the rejected answer)")
    return b


def _check_label_smoothing(label_smoothing: float, loss_type: str) -> float:
    try:
        eps = float(label_smoothing)
    except (TypeError, ValueError):
        raise ValueError(
            f"label_smoothing must be a number in [0, 0.5), got {label_smoothing!r}"
        ) from None
    if loss_type in ("hinge", "ipo"):
        if eps != 0:
            raise ValueError(
                f"label_smoothing must be 0 for loss_type={loss_type!r} (only 'sigmoid' and "
                f"'robust' use it), got {eps}"
            )
        return eps
    if not (0.0 <= eps < 0.5):  # also rejects NaN
        why = " (robust DPO divides by 1 − 2ε)" if loss_type == "robust" else ""
        raise ValueError(f"label_smoothing must be in [0, 0.5){why}, got {eps}")
    return eps


def _check_logps(**named: Tensor) -> None:
    """The four log-prob tensors of :func:`dpo_loss`: floating point, 1-D, one shape."""
    for name, t in named.items():
        if not isinstance(t, Tensor) or not t.is_floating_point():
            what = t.dtype if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a floating-point tensor, got {what}")
        if t.ndim != 1:
            raise ValueError(f"{name} must be 1-D (B,), got shape {tuple(t.shape)}")
    shapes = {name: tuple(t.shape) for name, t in named.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"the four log-prob tensors must have the same shape (B,), got {shapes}")


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> DPOOutput:
    """Per-example preference losses (no reduction) and implicit rewards.

    With r_w = π_c − ref_c, r_l = π_r − ref_r (log-probs), Δ = r_w − r_l and ε = label_smoothing:

        sigmoid  −(1−ε)·logσ(βΔ) − ε·logσ(−βΔ)             DPO eq. 7; ε > 0: conservative DPO
        robust   [−(1−ε)·logσ(βΔ) + ε·logσ(−βΔ)]/(1−2ε)     unbiased under label-flip rate ε
        hinge    relu(1 − βΔ)                               SLiC; ε must be 0
        ipo      (Δ − 1/(2β))²                              IPO; ε must be 0

    For "ipo" pass LENGTH-NORMALISED log-probs (sequence_logps(..., average=True)): IPO regresses
    Δ onto the target 1/(2β), which only makes sense on a per-token scale (Azar et al. 2023).

    Args:
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps:
            (B,) floating log-probs of the chosen / rejected completions under the policy and the
            reference. Gradients flow into all four (detach the reference yourself, or compute it
            under torch.no_grad()).
        beta: > 0, the inverse temperature / KL strength.
        loss_type: one of LOSS_TYPES.
        label_smoothing: ε in [0, 0.5), the assumed rate of flipped preference labels.

    Returns:
        DPOOutput(losses, chosen_rewards = β·r_w, rejected_rewards = β·r_l), rewards detached.

    >>> z = torch.zeros(2)  # policy = reference
    >>> out = dpo_loss(z, z, z, z, beta=0.1)
    >>> out.losses  # log 2
    tensor([0.6931, 0.6931])
    >>> pc, pr = torch.tensor([-1.0]), torch.tensor([-3.0])  # Δ = 2 against a zero reference
    >>> out = dpo_loss(pc, pr, z[:1], z[:1], beta=0.5, loss_type="hinge")  # relu(1 − 0.5·2)
    >>> out.losses, out.chosen_rewards, out.rejected_rewards
    (tensor([0.]), tensor([-0.5000]), tensor([-1.5000]))
    """
    b = _check_beta(beta)
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {list(LOSS_TYPES)}, got {loss_type!r}")
    eps = _check_label_smoothing(label_smoothing, loss_type)
    _check_logps(
        policy_chosen_logps=policy_chosen_logps,
        policy_rejected_logps=policy_rejected_logps,
        ref_chosen_logps=ref_chosen_logps,
        ref_rejected_logps=ref_rejected_logps,
    )

    chosen_logratios = policy_chosen_logps - ref_chosen_logps  # r_w
    rejected_logratios = policy_rejected_logps - ref_rejected_logps  # r_l
    delta = chosen_logratios - rejected_logratios  # Δ
    z = b * delta
    # F.logsigmoid is stable for any |z|: no log(0), no NaN.
    if loss_type == "sigmoid":
        losses = -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)
    elif loss_type == "robust":
        losses = (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)
    elif loss_type == "hinge":
        losses = torch.relu(1 - z)
    else:  # ipo
        losses = (delta - 1 / (2 * b)) ** 2
    return DPOOutput(
        losses=losses,
        chosen_rewards=b * chosen_logratios.detach(),
        rejected_rewards=b * rejected_logratios.detach(),
    )


#: the metrics of a batch under TRL's names, in the order of :func:`dpo_metric_sums`
METRIC_NAMES = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
    "loss",
)


def dpo_metric_sums(
    out: DPOOutput, policy_chosen_logps: Tensor, policy_rejected_logps: Tensor
) -> Tensor:
    """(8,) float64 on the batch's device: the sums of :data:`METRIC_NAMES` over the batch,
    then its size — what adds up over micro-batches and data-parallel ranks without a copy
    to the host (:func:`metrics_from_sums` turns them into means)."""
    b = out.losses.shape
    for name, t in (
        ("chosen_rewards", out.chosen_rewards),
        ("rejected_rewards", out.rejected_rewards),
        ("policy_chosen_logps", policy_chosen_logps),
        ("policy_rejected_logps", policy_rejected_logps),
    ):
        if t.shape != b:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(b)} like losses")
    if out.losses.numel() == 0:
        raise ValueError("cannot compute metrics of an empty batch")
    chosen, rejected = out.chosen_rewards, out.rejected_rewards
    columns = (
        chosen,
        rejected,
        (chosen > rejected),
        chosen - rejected,
        policy_chosen_logps,
        policy_rejected_logps,
        out.losses,
    )
    sums = torch.stack([t.detach().double().sum() for t in columns])
    return torch.cat([sums, sums.new_full((1,), out.losses.numel())])


def metrics_from_sums(sums: Any, names: Sequence[str] = METRIC_NAMES) -> dict[str, float]:
    """The batch means of ``names`` from their sums followed by the batch size (host values,
    e.g. :func:`dpo_metric_sums`)."""
    values = [float(v) for v in sums]
    count = values[-1]
    return {name: total / count for name, total in zip(names, values[:-1], strict=True)}


def dpo_metrics(
    out: DPOOutput, policy_chosen_logps: Tensor, policy_rejected_logps: Tensor
) -> dict[str, float]:
    """Batch means under TRL's names: rewards/{chosen,rejected,accuracies,margins}, logps/*, loss.

    >>> pc, pr, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -1.0]), torch.full((2,), -2.0)
    >>> m = dpo_metrics(dpo_loss(pc, pr, ref, ref, beta=0.5), pc, pr)
    >>> m["rewards/accuracies"], m["rewards/margins"], m["logps/chosen"]
    (0.5, 0.25, -1.5)
    """
    return metrics_from_sums(dpo_metric_sums(out, policy_chosen_logps, policy_rejected_logps).cpu())


# -----------------------------------------------------------------------------
# model forward


def concatenated_forward(
    model: Callable[[Tensor, Tensor], Tensor],
    batch: Mapping[str, Tensor],
    *,
    average_logps: bool = False,
) -> tuple[Tensor, Tensor]:
    """One forward pass over chosen and rejected together; returns their sequence log-probs.

    Args:
        model: called as model(input_ids, attention_mask) -> logits (2B, L, V).
        batch: "input_ids", "attention_mask", "loss_mask", each (2B, L); rows 0..B-1 are the
            chosen completions, rows B..2B-1 the rejected ones (same prompts, same order).
        average_logps: length-normalise (mean over completion tokens), as IPO wants.

    Returns:
        (chosen_logps (B,), rejected_logps (B,)) from sequence_logps.

    >>> model = lambda ids, am: torch.zeros(*ids.shape, 5)  # uniform over 5 tokens
    >>> ids = torch.tensor([[1, 2, 3], [1, 4, 0]])  # chosen "2 3"; rejected "4" + padding
    >>> batch = {"input_ids": ids, "attention_mask": ids != 0, "loss_mask": torch.tensor(
    ...     [[False, True, True], [False, True, False]])}
    >>> concatenated_forward(model, batch)  # (2 log(1/5),), (log(1/5),)
    (tensor([-3.2189]), tensor([-1.6094]))
    """
    missing = [k for k in ("input_ids", "attention_mask", "loss_mask") if k not in batch]
    if missing:
        raise ValueError(f"batch is missing {missing}")
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    loss_mask = batch["loss_mask"]
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be (2B, L), got shape {tuple(input_ids.shape)}")
    rows = input_ids.shape[0]
    if rows == 0 or rows % 2:
        raise ValueError(f"batch must hold 2B > 0 rows (B chosen then B rejected), got {rows}")
    for name, t in (("attention_mask", attention_mask), ("loss_mask", loss_mask)):
        if t.shape != input_ids.shape:
            raise ValueError(
                f"{name} has shape {tuple(t.shape)}, "
                f"expected {tuple(input_ids.shape)} like input_ids"
            )
    on_padding = (loss_mask.bool() & ~attention_mask.bool()).any(dim=1)
    if on_padding.any():
        raise ValueError(
            f"loss_mask is True on padding (attention_mask False) in {_rows(on_padding)}"
        )

    logits = model(input_ids, attention_mask)
    logits = getattr(logits, "logits", logits)  # also accept HF-style outputs
    if not isinstance(logits, Tensor) or logits.ndim != 3 or logits.shape[:2] != input_ids.shape:
        got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(
            "model must return logits of shape (2B, L, V) = "
            f"({rows}, {input_ids.shape[1]}, V), got {got}"
        )
    logps = sequence_logps(logits, input_ids, loss_mask, average=average_logps)
    return logps[: rows // 2], logps[rows // 2 :]


# -----------------------------------------------------------------------------
# packed forward: the log-probs of a PackedBatch (llm.packing), the LM head chunked


def _bare(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DistributedDataParallel (or similar ``.module``) wrapper."""
    return getattr(model, "module", model)


def _head(model: torch.nn.Module) -> torch.nn.Module | None:
    """The output layer when the model can return hidden states (GPT, HFCausalLM), else None."""
    get = getattr(_bare(model), "output_head", None)
    return get() if callable(get) else None


def max_length_of(model: torch.nn.Module) -> int | None:
    """The longest sequence ``model`` takes: GPT's ``config.block_size``, HFCausalLM's
    ``block_size``, else None (unknown)."""
    bare = _bare(model)
    size = getattr(bare, "block_size", None)
    if size is None:
        size = getattr(getattr(bare, "config", None), "block_size", None)
    return size if isinstance(size, int) else None


def resolve_layout(model: torch.nn.Module, layout: Layout) -> Layout:
    """``layout``, with prefix sharing turned off for a model that takes no packed inputs (a
    4-D mask and position ids: models without ``accepts_packed_inputs``, or whose probe says
    no, e.g. flash-attention HF models), which are then scored in the plain layout."""
    if layout.prefix_sharing and not (
        _head(model) is not None and getattr(_bare(model), "accepts_packed_inputs", False)
    ):
        return Layout(prefix_sharing=False, bucket=layout.bucket)
    return layout


def packed_logps(
    model: torch.nn.Module,
    batch: PackedBatch,
    precision: Precision,
    *,
    average: bool = False,
) -> tuple[Tensor, Tensor]:
    """Sequence log-probs (chosen (B,), rejected (B,)), float32, of a packed batch of pairs
    (:func:`packed_sequence_logps`, split in half)."""
    logps = packed_sequence_logps(model, batch, precision, average=average)
    pairs = logps.shape[0] // 2
    return logps[:pairs], logps[pairs:]


def packed_sequence_logps(
    model: torch.nn.Module,
    batch: PackedBatch,
    precision: Precision,
    *,
    average: bool = False,
) -> Tensor:
    """Log-probs (N,), float32, of the N sequences of a packed batch (``batch.counts``):
    chosen then rejected for pairs, the chosen alone for ``pack_pairs(..., chosen_only=True)``.

    Runs each piece of ``batch`` on ``precision.device`` under ``precision.autocast()``. A
    model with an ``output_head`` (GPT, HFCausalLM) returns hidden states and only the scored
    positions go through the head, chunked (:func:`llm.chunked_head.label_logps`): the full
    logits are never built. Any other model is called as ``model(input_ids, attention_mask)``
    → logits (plain layout only). Token log-probs are float32, summed per sequence in float64
    and rounded once; ``average`` divides by the number of scored tokens (IPO).

    >>> from llm.model import GPT, GPTConfig
    >>> from llm.data import TokenizedPairs
    >>> from llm.packing import pack_pairs
    >>> import numpy as np
    >>> model = GPT(GPTConfig(8, 8, 1, 1, 4), generator=torch.Generator().manual_seed(0))
    >>> seq = lambda *ids: np.array(ids, dtype=np.int32)
    >>> pairs = TokenizedPairs(chosen=[seq(1, 2, 3)], rejected=[seq(1, 2, 5, 6)],
    ...     prompt_lengths=np.array([2]), chosen_truncated=0, rejected_truncated=0,
    ...     sources=["x"], fingerprint="x")
    >>> batch = pack_pairs(pairs, [0], 0, Layout(), max_length=max_length_of(model))
    >>> logps = packed_sequence_logps(model, batch, Precision())
    >>> logps.shape, logps.dtype
    (torch.Size([2]), torch.float32)
    """
    if batch.prefix_sharing and resolve_layout(model, Layout(True, 0)).prefix_sharing is False:
        raise ValueError(
            "this model takes no prefix-shared batch (no hidden-state output or no 4-D mask): "
            "pack with layout = resolve_layout(model, layout)"
        )
    device = precision.device
    head = _head(model)
    totals = torch.zeros(batch.counts.shape[0], dtype=torch.float64, device=device)
    with precision.autocast():
        for piece in batch.pieces:
            padded = bool((piece.segments.numpy() == PAD).any())  # built on the host: no sync
            piece = piece.to(device)
            if batch.prefix_sharing:
                mask = attention_mask_4d(piece.segments)
                position_ids = piece.position_ids
            else:
                mask = (piece.segments != PAD).long() if padded or head is None else None
                position_ids = None
            if head is not None:
                hidden = model(piece.input_ids, mask, position_ids=position_ids, return_hidden=True)
                rows = hidden.reshape(-1, hidden.shape[-1])[piece.source]
                tokens = label_logps(rows, head.weight, head.bias, piece.labels)
            else:
                logits = model(piece.input_ids, (piece.segments != PAD).long())
                logits = getattr(logits, "logits", logits)  # also accept HF-style outputs
                rows = logits.reshape(-1, logits.shape[-1])[piece.source]
                rows = rows.to(torch.promote_types(rows.dtype, torch.float32))
                tokens = rows.gather(1, piece.labels[:, None]).squeeze(1) - rows.logsumexp(-1)
            totals = totals.index_add(0, piece.target, tokens.double())
    logps = totals.float()
    if average:
        logps = logps / batch.counts.to(device)
    return logps
