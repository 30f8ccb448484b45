"""llm.chunked_head: label log-probs through the LM head in chunks, with their own backward.

The reference is the unchunked computation: full logits, log-softmax, gather.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llm.chunked_head import chunk_rows_for, label_logps

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def problem(seed: int, m: int = 37, d: int = 8, v: int = 50, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(m, d, generator=g, dtype=dtype).requires_grad_()
    # logits of unit scale, as a trained LM head's are: log-probs around −log v
    weight = (torch.randn(v, d, generator=g, dtype=dtype) / d**0.5).requires_grad_()
    bias = torch.randn(v, generator=g, dtype=dtype).requires_grad_()
    labels = torch.randint(0, v, (m,), generator=g)
    upstream = torch.randn(m, generator=g, dtype=dtype)
    return hidden, weight, bias, labels, upstream


def unchunked(hidden, weight, bias, labels):
    logits = torch.nn.functional.linear(hidden, weight, bias).float()
    return torch.log_softmax(logits, dim=-1).gather(1, labels[:, None]).squeeze(1)


def values_and_grads(fn, hidden, weight, bias, labels, upstream):
    out = fn(hidden, weight, bias, labels)
    inputs = [t for t in (hidden, weight, bias) if t is not None]
    grads = torch.autograd.grad((out * upstream).sum(), inputs)
    return out.detach(), grads


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), chunk=st.integers(1, 40), with_bias=st.booleans())
def test_equals_unchunked_in_fp32_values_and_gradients(seed, chunk, with_bias):
    hidden, weight, bias, labels, upstream = problem(seed)
    bias = bias if with_bias else None

    def chunked(h, w, b, y):
        return label_logps(h, w, b, y, chunk_rows=chunk)

    got, got_grads = values_and_grads(chunked, hidden, weight, bias, labels, upstream)
    want, want_grads = values_and_grads(unchunked, hidden, weight, bias, labels, upstream)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    for g, w in zip(got_grads, want_grads, strict=True):
        # a gradient sums over rows (the weight's over all M): 1e-6 of its scale
        scale = max(1.0, w.abs().max().item())
        torch.testing.assert_close(g, w, rtol=0, atol=1e-6 * scale)


def test_chunk_size_does_not_change_the_result_beyond_rounding():
    hidden, weight, bias, labels, _ = problem(1, m=64)
    one = label_logps(hidden, weight, bias, labels, chunk_rows=64)
    for rows in (1, 7, 13):
        torch.testing.assert_close(
            label_logps(hidden, weight, bias, labels, chunk_rows=rows), one, rtol=0, atol=1e-6
        )


def test_float64_stays_float64():
    hidden, weight, bias, labels, _ = problem(2, dtype=torch.float64)
    got = label_logps(hidden, weight, bias, labels, chunk_rows=5)
    assert got.dtype == torch.float64
    want = torch.log_softmax(hidden @ weight.T + bias, -1).gather(1, labels[:, None]).squeeze(1)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_bf16_autocast_matches_the_autocast_linear_then_float32():
    """Under autocast the head's matmul runs in bf16 and the log-sum-exp in float32, as the
    unchunked path does (bf16 Linear output cast to float32)."""
    hidden, weight, bias, labels, _ = problem(3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = label_logps(hidden, weight, bias, labels, chunk_rows=8)
        logits = torch.nn.functional.linear(hidden, weight, bias)
    assert logits.dtype == torch.bfloat16 and got.dtype == torch.float32
    want = torch.log_softmax(logits.float(), -1).gather(1, labels[:, None]).squeeze(1)
    torch.testing.assert_close(got, want.detach(), rtol=0, atol=1e-5)


def test_bf16_weights_without_autocast_give_float32_logps_and_bf16_gradients():
    hidden, weight, _, labels, upstream = problem(4)
    h, w = hidden.detach().bfloat16().requires_grad_(), weight.detach().bfloat16().requires_grad_()
    out = label_logps(h, w, None, labels, chunk_rows=8)
    assert out.dtype == torch.float32
    (out * upstream).sum().backward()
    assert h.grad.dtype == torch.bfloat16 and w.grad.dtype == torch.bfloat16
    assert torch.isfinite(h.grad.float()).all() and torch.isfinite(w.grad.float()).all()


def test_uniform_logits_give_minus_log_v():
    v = 13
    out = label_logps(torch.zeros(4, 3), torch.zeros(v, 3), None, torch.arange(4))
    torch.testing.assert_close(out, torch.full((4,), -torch.log(torch.tensor(float(v)))))


def test_chunk_rows_for_bounds_the_transient_logits():
    assert chunk_rows_for(50257, 64 * 2**20) * 50257 * 4 <= 64 * 2**20
    assert chunk_rows_for(10**9, 1) == 1
    with pytest.raises(ValueError, match="vocab_size"):
        chunk_rows_for(0)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda h, w, b, y: (h[0], w, b, y), "hidden must be"),
        (lambda h, w, b, y: (h, w[:, :3], b, y), "same D"),
        (lambda h, w, b, y: (h, w, b, y.float()), "labels must be"),
        (lambda h, w, b, y: (h, w, b, y[:3]), "labels must be"),
        (lambda h, w, b, y: (h, w, b[:3], y), "bias must have"),
    ],
)
def test_bad_shapes_are_named(make, match):
    with pytest.raises(ValueError, match=match):
        label_logps(*make(*problem(0)[:4]))
