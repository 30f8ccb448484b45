"""Log-probabilities of given tokens through the LM head, without ever building the full logits.

For hidden states h_m (one per labelled token) and an output layer (W, b) over a vocabulary of
V tokens, the log-probability of label y_m is

    log p(y_m | h_m) = z_{m, y_m} − logsumexp_v z_{m, v},    z_m = W h_m + b,

and its gradient with respect to the logits is g_m · (onehot(y_m) − softmax(z_m)).  The usual
path builds z for every position of every sequence, (N, L, V) floats, which at a 50k–150k
vocabulary dwarfs the rest of a small model's activations.  Here the rows are processed
``chunk_rows`` at a time, forward and backward: the backward recomputes each chunk's logits
from h and W instead of keeping them, so the memory held between forward and backward is
O(M) (one log-sum-exp per row), and the transient memory O(chunk_rows · V).  Only the rows
asked for go through the head: the prompt positions of a DPO batch never do.

Precision: the matmuls run in ``compute_dtype`` (the autocast dtype under autocast, else the
weights' dtype), and the logits are cast to float32 before the log-sum-exp, so the log-probs
are float32 whatever the model runs in — the same numbers the unchunked path gives under the
same autocast (a Linear's bf16 output cast to float32).  Plain PyTorch; its own backward.

>>> h, w = torch.zeros(2, 3), torch.zeros(5, 3)  # uniform over 5 tokens
>>> label_logps(h, w, None, torch.tensor([0, 4]))  # log(1/5) each
tensor([-1.6094, -1.6094])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["DEFAULT_CHUNK_BYTES", "label_logps", "chunk_rows_for"]

#: Transient float32 logits per chunk (forward and backward): 64 MiB.
DEFAULT_CHUNK_BYTES = 64 * 2**20


def chunk_rows_for(vocab_size: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Rows per chunk so that one chunk's float32 logits take at most ``chunk_bytes``.

    >>> chunk_rows_for(50257)
    333
    """
    if vocab_size <= 0 or chunk_bytes <= 0:
        raise ValueError(f"vocab_size and chunk_bytes must be > 0, got {vocab_size}, {chunk_bytes}")
    return max(1, chunk_bytes // (4 * vocab_size))


class _LabelLogProbs(torch.autograd.Function):
    """log softmax(W h + b)[y], chunked over the rows of h; backward recomputes the logits."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, chunk_rows, compute_dtype):
        with torch.autocast(hidden.device.type, enabled=False):  # the casts below are explicit
            w = weight.to(compute_dtype)
            b = None if bias is None else bias.to(compute_dtype)
            acc = torch.promote_types(compute_dtype, torch.float32)  # float32, or float64
            out = torch.empty(hidden.shape[0], dtype=acc, device=hidden.device)
            lse = torch.empty_like(out)
            for lo in range(0, hidden.shape[0], chunk_rows):
                hi = lo + chunk_rows
                logits = F.linear(hidden[lo:hi].to(compute_dtype), w, b).to(acc)
                lse[lo:hi] = torch.logsumexp(logits, dim=-1)
                out[lo:hi] = logits.gather(1, labels[lo:hi, None]).squeeze(1) - lse[lo:hi]
        ctx.save_for_backward(hidden, weight, bias, labels, lse)
        ctx.chunk_rows, ctx.compute_dtype = chunk_rows, compute_dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, bias, labels, lse = ctx.saved_tensors
        chunk_rows, dtype = ctx.chunk_rows, ctx.compute_dtype
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(hidden) if need_h else None
        acc = lse.dtype
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        grad_b = None
        if bias is not None and need_b:
            grad_b = torch.zeros(bias.shape, dtype=acc, device=bias.device)
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(dtype)
            b = None if bias is None else bias.to(dtype)
            for lo in range(0, hidden.shape[0], chunk_rows):
                hi = lo + chunk_rows
                h = hidden[lo:hi].to(dtype)
                logits = F.linear(h, w, b).to(acc)
                # d/dz [z_y − lse(z)] = onehot(y) − softmax(z), times the incoming gradient g.
                g = grad_out[lo:hi, None].to(acc)
                grad_z = -torch.exp(logits - lse[lo:hi, None]) * g
                grad_z.scatter_add_(1, labels[lo:hi, None], g)
                gz = grad_z.to(dtype)
                if need_h:
                    grad_h[lo:hi] = (gz @ w).to(hidden.dtype)
                if need_w:
                    grad_w += (gz.t() @ h).to(acc)
                if grad_b is not None:
                    grad_b += grad_z.sum(0)
        grad_w = grad_w.to(weight.dtype) if need_w else None
        grad_b = None if grad_b is None else grad_b.to(bias.dtype)
        return grad_h, grad_w, grad_b, None, None, None


def label_logps(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    labels: Tensor,
    *,
    chunk_rows: int | None = None,
    compute_dtype: torch.dtype | None = None,
) -> Tensor:
    """log p(labels[m] | hidden[m]) under the output layer (weight, bias), chunked over rows.

    Args:
        hidden: (M, D) hidden states, one per token to score.
        weight: (V, D) output matrix (``lm_head.weight``); bias: (V,) or None.
        labels: (M,) integer token ids in [0, V).
        chunk_rows: rows per chunk (default: :func:`chunk_rows_for`, 64 MiB of logits).
        compute_dtype: dtype of the matmuls; default: the autocast dtype when autocast is on
            for hidden's device, else weight's dtype.

    Returns:
        (M,) log-probabilities, float32 (float64 when compute_dtype is float64); differentiable
        in hidden, weight and bias.
    """
    if hidden.ndim != 2 or weight.ndim != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"hidden must be (M, D) and weight (V, D) with the same D, got "
            f"{tuple(hidden.shape)} and {tuple(weight.shape)}"
        )
    if labels.shape != hidden.shape[:1] or labels.is_floating_point():
        raise ValueError(
            f"labels must be integer ids of shape ({hidden.shape[0]},), got "
            f"{labels.dtype} {tuple(labels.shape)}"
        )
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    if compute_dtype is None:
        device_type = hidden.device.type
        if torch.is_autocast_enabled(device_type):
            compute_dtype = torch.get_autocast_dtype(device_type)
        else:
            compute_dtype = weight.dtype
    rows = chunk_rows or chunk_rows_for(weight.shape[0])
    return _LabelLogProbs.apply(hidden, weight, bias, labels.long(), rows, compute_dtype)
