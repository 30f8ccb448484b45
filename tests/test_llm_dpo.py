"""llm.dpo: DPO-family losses, sequence log-probs and the concatenated forward pass."""

from __future__ import annotations

import doctest
import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

from llm import dpo
from llm.dpo import (
    LOSS_TYPES,
    DPOOutput,
    concatenated_forward,
    dpo_loss,
    dpo_metrics,
    sequence_logps,
)

LOG2 = math.log(2.0)
FAST = settings(max_examples=25, deadline=None)

finite = st.floats(-20.0, 20.0, allow_nan=False, allow_infinity=False)
betas = st.floats(0.01, 5.0, allow_nan=False)
epsilons = st.floats(0.0, 0.45, allow_nan=False)


def close(actual, expected, *, rtol: float = 1.3e-6, atol: float = 1e-5) -> None:
    """Light assert_close (torch.testing's first call imports torch.distributed: seconds)."""
    if isinstance(actual, tuple):
        for a, e in zip(actual, expected, strict=True):
            close(a, e, rtol=rtol, atol=atol)
        return
    actual, expected = torch.as_tensor(actual), torch.as_tensor(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.allclose(actual.double(), expected.double(), rtol=rtol, atol=atol), (
        f"{actual} != {expected}"
    )


def logps4(values: list[float], dtype: torch.dtype = torch.float64) -> list[torch.Tensor]:
    """Four (1,) tensors: policy chosen, policy rejected, ref chosen, ref rejected."""
    return [torch.tensor([v], dtype=dtype) for v in values]


def neg_logsigmoid(z: float) -> float:
    """−log σ(z) = log(1 + e^{−z}), stably."""
    return max(-z, 0.0) + math.log1p(math.exp(-abs(z)))


class TinyLM(nn.Module):
    """Embedding + linear head: logits[t] depends on token t only. Enough to be a DPO policy."""

    def __init__(self, vocab: int = 11, dim: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(input_ids)) * attention_mask[..., None]


def make_batch(gen: torch.Generator, b: int = 3, length: int = 7, vocab: int = 11) -> dict:
    """2B rows (chosen then rejected): a 2-token prompt, completions of varying length, padding."""
    input_ids = torch.randint(1, vocab, (2 * b, length), generator=gen)
    lengths = torch.randint(3, length + 1, (2 * b,), generator=gen)
    pos = torch.arange(length)
    attention_mask = pos[None, :] < lengths[:, None]
    input_ids = input_ids.masked_fill(~attention_mask, 0)
    loss_mask = attention_mask & (pos[None, :] >= 2)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "loss_mask": loss_mask}


def slow_sequence_logps(logits, input_ids, loss_mask, average=False):
    """Reference implementation: an explicit loop over rows and positions."""
    out = []
    for n in range(logits.shape[0]):
        total, count = logits.new_zeros(()), 0
        for t in range(1, logits.shape[1]):
            if loss_mask[n, t]:
                total = total + torch.log_softmax(logits[n, t - 1], dim=-1)[input_ids[n, t]]
                count += 1
        out.append(total / count if average else total)
    return torch.stack(out)


# -----------------------------------------------------------------------------
# initialisation: policy = reference


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_identical_logps_give_log2_and_zero_rewards(dtype):
    g = torch.Generator().manual_seed(0)
    c, r = (
        -50 * torch.rand(5, generator=g, dtype=dtype),
        -50 * torch.rand(5, generator=g, dtype=dtype),
    )
    out = dpo_loss(c, r, c.clone(), r.clone(), beta=0.1)
    assert out.losses.dtype == dtype
    assert torch.equal(out.losses, torch.full_like(out.losses, LOG2))
    assert torch.equal(out.chosen_rewards, torch.zeros_like(c))
    assert torch.equal(out.rejected_rewards, torch.zeros_like(r))


@pytest.mark.parametrize(
    ("loss_type", "eps", "expected"),
    [
        ("sigmoid", 0.0, LOG2),
        ("sigmoid", 0.2, LOG2),  # conservative: (1−ε)log2 + ε log2
        ("robust", 0.2, LOG2),  # [(1−ε) − ε] log2 / (1−2ε)
        ("hinge", 0.0, 1.0),
        ("ipo", 0.0, (1 / (2 * 0.1)) ** 2),
    ],
)
def test_at_init_each_loss_type_takes_its_delta_zero_value(loss_type, eps, expected):
    z = torch.zeros(3, dtype=torch.float64)
    out = dpo_loss(z, z, z, z, beta=0.1, loss_type=loss_type, label_smoothing=eps)
    close(out.losses, torch.full_like(z, expected), rtol=1e-12, atol=1e-12)


def test_concatenated_forward_at_init_gives_log2():
    torch.manual_seed(0)
    model = TinyLM().eval()
    batch = make_batch(torch.Generator().manual_seed(1))
    pc, pr = concatenated_forward(model, batch)
    with torch.no_grad():
        rc, rr = concatenated_forward(model, batch)  # same model as reference
    assert pc.shape == pr.shape == (3,)
    assert pc.requires_grad and not rc.requires_grad
    out = dpo_loss(pc, pr, rc, rr, beta=0.1)
    assert torch.equal(out.losses, torch.full_like(out.losses, LOG2))
    assert torch.equal(out.chosen_rewards, torch.zeros(3))
    assert torch.equal(out.rejected_rewards, torch.zeros(3))
    m = dpo_metrics(out, pc, pr)
    assert m["loss"] == pytest.approx(LOG2) and m["rewards/margins"] == 0.0
    assert m["rewards/accuracies"] == 0.0  # ties are not wins


def test_concatenated_forward_splits_rows_and_matches_sequence_logps():
    torch.manual_seed(0)
    model = TinyLM().eval()
    batch = make_batch(torch.Generator().manual_seed(2), b=4)
    for average in (False, True):
        pc, pr = concatenated_forward(model, batch, average_logps=average)
        logits = model(batch["input_ids"], batch["attention_mask"])
        full = sequence_logps(logits, batch["input_ids"], batch["loss_mask"], average=average)
        close(torch.cat([pc, pr]), full)
        slow = slow_sequence_logps(logits, batch["input_ids"], batch["loss_mask"], average)
        close(torch.cat([pc, pr]), slow)


def test_concatenated_forward_accepts_hf_style_output():
    class Out:
        def __init__(self, logits):
            self.logits = logits

    batch = make_batch(torch.Generator().manual_seed(3))
    model = TinyLM().eval()
    a = concatenated_forward(model, batch)
    b = concatenated_forward(lambda ids, am: Out(model(ids, am)), batch)
    close(a, b)


STEPS, LR = 20, 0.3


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_a_few_dpo_steps_learn_the_preference(loss_type):
    torch.manual_seed(0)
    policy, reference = TinyLM(), TinyLM()
    reference.load_state_dict(policy.state_dict())
    reference.requires_grad_(False)
    batch = make_batch(torch.Generator().manual_seed(4), b=4)
    average = loss_type == "ipo"
    eps = 0.1 if loss_type in ("sigmoid", "robust") else 0.0
    with torch.no_grad():
        rc, rr = concatenated_forward(reference, batch, average_logps=average)
    for step in range(STEPS):  # plain SGD: torch.optim's first use imports torch._dynamo (seconds)
        pc, pr = concatenated_forward(policy, batch, average_logps=average)
        out = dpo_loss(pc, pr, rc, rr, beta=0.5, loss_type=loss_type, label_smoothing=eps)
        if step == 0:
            initial_loss = out.losses.mean().item()
        policy.zero_grad()
        out.losses.mean().backward()
        with torch.no_grad():
            for p in policy.parameters():
                p -= LR * p.grad
    m = dpo_metrics(out, pc, pr)
    assert m["rewards/accuracies"] == 1.0
    assert m["loss"] < initial_loss
    if loss_type == "ipo":  # IPO regresses Δ onto 1/(2β), i.e. the margin βΔ onto 1/2
        assert m["rewards/margins"] == pytest.approx(0.5, abs=0.05)
    else:
        assert m["rewards/margins"] > 0.5


# -----------------------------------------------------------------------------
# gradients


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@FAST
@given(values=st.lists(finite, min_size=4, max_size=4), beta=betas, eps=epsilons)
def test_gradients_match_finite_differences(loss_type, values, beta, eps):
    eps = eps if loss_type in ("sigmoid", "robust") else 0.0
    inputs = [t.requires_grad_() for t in logps4(values)]
    delta = (values[0] - values[2]) - (values[1] - values[3])
    if loss_type == "hinge":
        assume(abs(1 - beta * delta) > 1e-3)  # the kink of relu has no derivative

    def f(*xs):
        return dpo_loss(*xs, beta=beta, loss_type=loss_type, label_smoothing=eps).losses.sum()

    grads = torch.autograd.grad(f(*inputs), inputs)
    # Central differences in float64 (torch.autograd.gradcheck would do; its first call imports
    # torch.fx, ~1 s).
    h = 1e-6
    for i, grad in enumerate(grads):
        plus = [x.detach() + (h if j == i else 0.0) for j, x in enumerate(inputs)]
        minus = [x.detach() - (h if j == i else 0.0) for j, x in enumerate(inputs)]
        numeric = (f(*plus) - f(*minus)) / (2 * h)
        close(grad[0], numeric, rtol=1e-4, atol=1e-5)


@FAST
@given(values=st.lists(finite, min_size=4, max_size=4), beta=betas)
def test_sigmoid_gradient_closed_form(values, beta):
    """∂L/∂π_c = −β σ(−βΔ) and the four partials are ±that (DPO eq. 7 gradient)."""
    inputs = [t.requires_grad_() for t in logps4(values)]
    dpo_loss(*inputs, beta=beta).losses.sum().backward()
    delta = (values[0] - values[2]) - (values[1] - values[3])
    g = -beta * torch.sigmoid(torch.tensor(-beta * delta, dtype=torch.float64))
    for x, sign in zip(inputs, (1, -1, -1, 1)):
        close(x.grad[0], sign * g)


def test_no_nan_for_huge_margins():
    big = torch.tensor([1e4, -1e4, 0.0], requires_grad=True)
    z = torch.zeros(3)
    for loss_type in LOSS_TYPES:
        eps = 0.1 if loss_type in ("sigmoid", "robust") else 0.0
        out = dpo_loss(big, z, z, z, beta=1.0, loss_type=loss_type, label_smoothing=eps)
        (grad,) = torch.autograd.grad(out.losses.sum(), big)
        assert torch.isfinite(out.losses).all() and torch.isfinite(grad).all(), loss_type


# -----------------------------------------------------------------------------
# closed forms and symmetries


@FAST
@given(values=st.lists(finite, min_size=4, max_size=4), beta=betas)
def test_swapping_chosen_and_rejected_negates_delta(values, beta):
    pc, pr, rc, rr = logps4(values)
    delta = (values[0] - values[2]) - (values[1] - values[3])
    out = dpo_loss(pc, pr, rc, rr, beta=beta)
    swapped = dpo_loss(pr, pc, rr, rc, beta=beta)
    close(swapped.losses[0].item(), neg_logsigmoid(-beta * delta))
    close(out.losses[0].item(), neg_logsigmoid(beta * delta))
    # −logσ(z) + logσ(−z) = −z
    close((out.losses - swapped.losses)[0].item(), -beta * delta)
    assert torch.equal(swapped.chosen_rewards, out.rejected_rewards)
    assert torch.equal(swapped.rejected_rewards, out.chosen_rewards)


@FAST
@given(values=st.lists(finite, min_size=4, max_size=4), beta=betas, eps=epsilons)
def test_conservative_and_robust_closed_forms(values, beta, eps):
    xs = logps4(values)
    z = beta * ((values[0] - values[2]) - (values[1] - values[3]))
    lp, ln = neg_logsigmoid(z), neg_logsigmoid(-z)
    sig0 = dpo_loss(*xs, beta=beta).losses[0].item()
    assert sig0 == pytest.approx(lp, rel=1e-12, abs=1e-12)
    sig = dpo_loss(*xs, beta=beta, label_smoothing=eps).losses[0].item()
    assert sig == pytest.approx((1 - eps) * lp + eps * ln, rel=1e-10, abs=1e-12)
    rob = dpo_loss(*xs, beta=beta, loss_type="robust", label_smoothing=eps).losses[0].item()
    assert rob == pytest.approx(((1 - eps) * lp - eps * ln) / (1 - 2 * eps), rel=1e-9, abs=1e-9)
    # ε = 0 reduces both to plain DPO
    assert dpo_loss(*xs, beta=beta, loss_type="robust").losses[0].item() == pytest.approx(sig0)


@FAST
@given(values=st.lists(finite, min_size=4, max_size=4), beta=betas, eps=epsilons)
def test_robust_loss_is_unbiased_under_label_flips(values, beta, eps):
    """Chowdhury et al. 2024: (1−ε)·ℓ_rob(Δ) + ε·ℓ_rob(−Δ) = −logσ(βΔ), the clean DPO loss."""
    pc, pr, rc, rr = logps4(values)
    rob = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type="robust", label_smoothing=eps).losses
    flip = dpo_loss(pr, pc, rr, rc, beta=beta, loss_type="robust", label_smoothing=eps).losses
    clean = dpo_loss(pc, pr, rc, rr, beta=beta).losses
    close((1 - eps) * rob + eps * flip, clean, rtol=1e-9, atol=1e-9)


def test_hinge_and_ipo_at_hand_computed_points():
    # β = 0.5; reference at zero, so Δ = π_c − π_r.
    z = torch.zeros(4, dtype=torch.float64)
    pc = torch.tensor([1.0, 4.0, -2.0, 0.0], dtype=torch.float64)
    hinge = dpo_loss(pc, z, z, z, beta=0.5, loss_type="hinge").losses  # relu(1 − Δ/2)
    close(hinge, torch.tensor([0.5, 0.0, 2.0, 1.0], dtype=torch.float64))
    ipo = dpo_loss(pc, z, z, z, beta=0.5, loss_type="ipo").losses  # (Δ − 1)²
    close(ipo, torch.tensor([0.0, 9.0, 9.0, 1.0], dtype=torch.float64))
    # IPO with a reference: Δ = (−1 − −3) − (−4 − −5) = 1, β = 0.25: (1 − 2)² = 1
    out = dpo_loss(*logps4([-1.0, -4.0, -3.0, -5.0]), beta=0.25, loss_type="ipo")
    close(out.losses, torch.tensor([1.0], dtype=torch.float64))
    close(out.chosen_rewards, torch.tensor([0.5], dtype=torch.float64))
    close(out.rejected_rewards, torch.tensor([0.25], dtype=torch.float64))


def test_rewards_are_detached_and_losses_are_not_reduced():
    x = torch.zeros(5, requires_grad=True)
    out = dpo_loss(x, x.detach(), torch.zeros(5), torch.zeros(5), beta=0.1)
    assert isinstance(out, DPOOutput) and out.losses.shape == (5,)
    assert out.losses.requires_grad
    assert not out.chosen_rewards.requires_grad and not out.rejected_rewards.requires_grad


# -----------------------------------------------------------------------------
# sequence_logps


@pytest.mark.parametrize("seed", range(4))
def test_sequence_logps_matches_slow_loop(seed):
    g = torch.Generator().manual_seed(seed)
    n, length, vocab = 5, 9, 13
    logits = (3 * torch.randn(n, length, vocab, generator=g, dtype=torch.float64)).requires_grad_()
    ids = torch.randint(0, vocab, (n, length), generator=g)
    mask = torch.rand(n, length, generator=g) < 0.5
    mask[:, 0] = False
    mask[torch.arange(n), torch.randint(1, length, (n,), generator=g)] = True  # ≥ 1 label per row
    for average in (False, True):
        fast = sequence_logps(logits, ids, mask, average=average)
        slow = slow_sequence_logps(logits, ids, mask, average)
        assert fast.shape == (n,) and fast.dtype == torch.float64
        close(fast, slow)
        (g_fast,) = torch.autograd.grad(fast.sum(), logits)
        (g_slow,) = torch.autograd.grad(slow.sum(), logits)
        close(g_fast, g_slow)


def test_sequence_logps_ignores_unlabelled_positions_and_padding_ids():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 7, generator=g)
    ids = torch.randint(0, 7, (2, 6), generator=g)
    mask = torch.tensor([[0, 0, 1, 1, 0, 0], [0, 1, 0, 1, 1, 0]], dtype=torch.bool)
    base = sequence_logps(logits, ids, mask)
    ids2, logits2 = ids.clone(), logits.clone()
    ids2[~mask] = -100  # HF-style ignore ids outside the mask are fine
    ids2[:, 0] = ids[:, 0]  # ... but the context tokens feed the logits, which we keep fixed
    logits2[0, 4:] = 1e6  # positions 4, 5 predict tokens 5, 6: unlabelled in row 0
    close(sequence_logps(logits2, ids2, mask), base)
    close(sequence_logps(logits, ids, mask.long()), base)  # 0/1 masks work
    close(sequence_logps(logits, ids.int(), mask), base)  # int32 ids work


def test_shift_is_right():
    """A model putting all its mass on the TRUE NEXT token gets logp 0; one copying the current
    token (an off-by-one shift) gets ≈ −∞."""
    g = torch.Generator().manual_seed(0)
    n, length, vocab = 3, 8, 10
    ids = torch.randint(0, vocab, (n, length), generator=g)
    ids[:, 1:] = (
        ids[:, :-1] + 1 + torch.randint(0, vocab - 1, (n, length - 1), generator=g)
    ) % vocab
    mask = torch.zeros(n, length, dtype=torch.bool)
    mask[:, 3:] = True
    next_token = torch.full((n, length, vocab), -1e9)
    next_token[:, :-1].scatter_(-1, ids[:, 1:, None], 0.0)
    assert torch.equal(sequence_logps(next_token, ids, mask), torch.zeros(n))
    assert torch.equal(sequence_logps(next_token, ids, mask, average=True), torch.zeros(n))
    same_token = torch.full((n, length, vocab), -1e9).scatter_(-1, ids[..., None], 0.0)
    assert (sequence_logps(same_token, ids, mask) < -1e8).all()


def test_bf16_logits_give_float32_close_to_float32():
    g = torch.Generator().manual_seed(0)
    n, length, vocab = 4, 12, 50
    logits32 = 4 * torch.randn(n, length, vocab, generator=g)
    ids = torch.randint(0, vocab, (n, length), generator=g)
    mask = torch.zeros(n, length, dtype=torch.bool)
    mask[:, 5:] = True
    logits16 = logits32.bfloat16().requires_grad_()
    out = sequence_logps(logits16, ids, mask)
    assert out.dtype == torch.float32
    # exact same math as float32 on the rounded logits: the softmax is not done in bf16
    close(out, sequence_logps(logits16.detach().float(), ids, mask))
    # and close to the unrounded float32 result (bf16 keeps ~3 significant digits per logit)
    close(out, sequence_logps(logits32, ids, mask), rtol=2e-2, atol=0.3)
    out.sum().backward()
    assert logits16.grad is not None and logits16.grad.dtype == torch.bfloat16
    avg = sequence_logps(logits16.detach(), ids, mask, average=True)
    assert avg.dtype == torch.float32


# -----------------------------------------------------------------------------
# metrics


def test_metrics_hand_example():
    pc, pr = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -1.0])
    ref = torch.full((2,), -2.0)
    # r_w = [1, 0], r_l = [−1, 1]; β = 0.5 → rewards chosen [0.5, 0], rejected [−0.5, 0.5]
    m = dpo_metrics(dpo_loss(pc, pr, ref, ref, beta=0.5), pc, pr)
    assert list(m) == [
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "rewards/margins",
        "logps/chosen",
        "logps/rejected",
        "loss",
    ]
    assert all(isinstance(v, float) for v in m.values())
    assert m["rewards/chosen"] == pytest.approx(0.25)
    assert m["rewards/rejected"] == pytest.approx(0.0)
    assert m["rewards/accuracies"] == 0.5
    assert m["rewards/margins"] == pytest.approx(0.25)
    assert m["logps/chosen"] == -1.5 and m["logps/rejected"] == -2.0
    # βΔ = [1, −0.5]
    assert m["loss"] == pytest.approx((neg_logsigmoid(1.0) + neg_logsigmoid(-0.5)) / 2, rel=1e-6)


# -----------------------------------------------------------------------------
# validation


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"beta": 0.0}, r"beta must be > 0, got 0.*log 2"),
        ({"beta": -0.1}, r"beta must be > 0"),
        ({"beta": float("nan")}, r"beta must be a positive finite"),
        ({"beta": float("inf")}, r"beta must be a positive finite"),
        ({"beta": "big"}, r"beta must be a positive finite"),
        ({"beta": None}, r"beta must be a positive finite"),
        ({"beta": 0.1, "loss_type": "kto"}, r"loss_type must be one of \['sigmoid', 'robust'"),
        ({"beta": 0.1, "label_smoothing": -0.1}, r"label_smoothing must be in \[0, 0.5\)"),
        ({"beta": 0.1, "label_smoothing": 0.5}, r"label_smoothing must be in \[0, 0.5\)"),
        ({"beta": 0.1, "label_smoothing": float("nan")}, r"label_smoothing must be in"),
        ({"beta": 0.1, "label_smoothing": "x"}, r"label_smoothing must be a number"),
        (
            {"beta": 0.1, "loss_type": "robust", "label_smoothing": 0.5},
            r"label_smoothing.*robust DPO divides by 1 − 2ε",
        ),
        (
            {"beta": 0.1, "loss_type": "hinge", "label_smoothing": 0.1},
            r"label_smoothing must be 0 for loss_type='hinge'",
        ),
        (
            {"beta": 0.1, "loss_type": "ipo", "label_smoothing": 0.1},
            r"label_smoothing must be 0 for loss_type='ipo'",
        ),
    ],
)
def test_dpo_loss_rejects_bad_hyperparameters(kwargs, match):
    z = torch.zeros(2)
    with pytest.raises(ValueError, match=match):
        dpo_loss(z, z, z, z, **kwargs)


@pytest.mark.parametrize(
    ("which", "bad", "match"),
    [
        (2, torch.zeros(3), r"same shape.*ref_chosen_logps"),
        (0, torch.zeros(2, 1), r"policy_chosen_logps must be 1-D"),
        (3, torch.zeros(()), r"ref_rejected_logps must be 1-D"),
        (1, torch.zeros(2, dtype=torch.long), r"policy_rejected_logps must be a floating"),
        (1, [0.0, 0.0], r"policy_rejected_logps must be a floating-point tensor, got list"),
    ],
)
def test_dpo_loss_rejects_bad_tensors(which, bad, match):
    args = [torch.zeros(2) for _ in range(4)]
    args[which] = bad
    with pytest.raises(ValueError, match=match):
        dpo_loss(*args, beta=0.1)


def test_sequence_logps_validation():
    logits = torch.zeros(2, 4, 5)
    ids = torch.zeros(2, 4, dtype=torch.long)
    mask = torch.tensor([[0, 1, 1, 0], [0, 0, 1, 1]], dtype=torch.bool)
    with pytest.raises(ValueError, match=r"logits must be \(N, L, V\)"):
        sequence_logps(logits[0], ids, mask)
    with pytest.raises(ValueError, match=r"logits must be floating point"):
        sequence_logps(logits.long(), ids, mask)
    with pytest.raises(ValueError, match=r"input_ids must be \(2, 4\)"):
        sequence_logps(logits, ids[:, :3], mask)
    with pytest.raises(ValueError, match=r"input_ids must be an integer tensor"):
        sequence_logps(logits, ids.float(), mask)
    with pytest.raises(ValueError, match=r"loss_mask must be \(2, 4\)"):
        sequence_logps(logits, ids, mask[:1])
    first = mask.clone()
    first[1, 0] = True
    with pytest.raises(ValueError, match=r"position 0 in row 1: .*can never be a label"):
        sequence_logps(logits, ids, first)
    empty = mask.clone()
    empty[1] = False
    with pytest.raises(ValueError, match=r"no completion token in row 1\b"):
        sequence_logps(logits, ids, empty)
    with pytest.raises(ValueError, match=r"no completion token in rows \[0, 1\]"):
        sequence_logps(logits, ids, torch.zeros_like(mask))
    with pytest.raises(ValueError, match=r"no completion token in row 0"):
        sequence_logps(torch.zeros(1, 1, 5), ids[:1, :1], mask[:1, :1])  # length 1: no labels
    bad_ids = ids.clone()
    bad_ids[0, 2] = 5
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 5\).*got range \[0, 5\]"):
        sequence_logps(logits, bad_ids, mask)


def test_concatenated_forward_validation():
    batch = make_batch(torch.Generator().manual_seed(0), b=2)
    model = TinyLM().eval()
    with pytest.raises(ValueError, match=r"batch is missing \['loss_mask'\]"):
        concatenated_forward(model, {k: v for k, v in batch.items() if k != "loss_mask"})
    odd = {k: v[:3] for k, v in batch.items()}
    with pytest.raises(ValueError, match=r"2B > 0 rows .* got 3"):
        concatenated_forward(model, odd)
    with pytest.raises(ValueError, match=r"2B > 0 rows .* got 0"):
        concatenated_forward(model, {k: v[:0] for k, v in batch.items()})
    with pytest.raises(ValueError, match=r"input_ids must be \(2B, L\)"):
        concatenated_forward(model, {**batch, "input_ids": batch["input_ids"][0]})
    with pytest.raises(ValueError, match=r"attention_mask has shape \(4, 6\), expected \(4, 7\)"):
        concatenated_forward(model, {**batch, "attention_mask": batch["attention_mask"][:, :6]})
    on_pad = batch["loss_mask"].clone()
    on_pad[2] = True
    on_pad[2, 0] = False
    pad_attention = batch["attention_mask"].clone()
    pad_attention[2, -1] = False
    with pytest.raises(ValueError, match=r"loss_mask is True on padding .* in row 2"):
        concatenated_forward(model, {**batch, "loss_mask": on_pad, "attention_mask": pad_attention})
    with pytest.raises(ValueError, match=r"model must return logits of shape \(2B, L, V\)"):
        concatenated_forward(lambda ids, am: torch.zeros(ids.shape[0], 5), batch)
    with pytest.raises(ValueError, match=r"got tuple"):
        concatenated_forward(lambda ids, am: (model(ids, am),), batch)


def test_dpo_metrics_validation():
    z = torch.zeros(2)
    out = dpo_loss(z, z, z, z, beta=0.1)
    with pytest.raises(ValueError, match=r"policy_rejected_logps has shape \(3,\)"):
        dpo_metrics(out, z, torch.zeros(3))
    e = torch.zeros(0)
    with pytest.raises(ValueError, match=r"empty batch"):
        dpo_metrics(dpo_loss(e, e, e, e, beta=0.1), e, e)


def test_docstring_examples():
    result = doctest.testmod(dpo, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
