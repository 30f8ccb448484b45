"""Behaviour of the small GPT: deterministic init, masking, causality, learning, decoding."""

from __future__ import annotations

import pytest
import torch

from llm.model import GPT, GPTConfig, estimate_flops_per_token, fingerprint

CONFIG = GPTConfig(vocab_size=32, block_size=16, n_layer=2, n_head=2, n_embd=16)


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def make(seed: int = 0, config: GPTConfig = CONFIG) -> GPT:
    return GPT(config, generator=torch.Generator().manual_seed(seed))


def ids(*rows: list[int]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.long)


# ----------------------------------------------------------------- config and init
@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"vocab_size": 0}, "vocab_size"),
        ({"block_size": -1}, "block_size"),
        ({"n_layer": 0}, "n_layer"),
        ({"n_head": 2.0}, "n_head"),
        ({"n_embd": 10, "n_head": 4}, "n_embd"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_config_validation_names_the_field(kwargs, field):
    kwargs = {"vocab_size": 8, **kwargs}
    with pytest.raises(ValueError, match=field):
        GPTConfig(**kwargs)


def test_same_seed_same_weights_different_seed_different():
    a, b, c = make(0).state_dict(), make(0).state_dict(), make(1).state_dict()
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a if a[k].dim() >= 2)


def test_generator_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    make(0)
    assert torch.equal(torch.rand(3), expected)


def test_gpt2_init_statistics_and_weight_tying():
    config = GPTConfig(vocab_size=512, block_size=64, n_layer=4, n_head=4, n_embd=64)
    model = make(0, config)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.transformer.wte.weight.std().item() == pytest.approx(0.02, rel=0.05)
    residual = model.transformer.h[0].mlp.c_proj.weight
    assert residual.std().item() == pytest.approx(0.02 / (2 * 4) ** 0.5, rel=0.05)
    assert torch.all(model.transformer.ln_f.weight == 1)


# ----------------------------------------------------------------- forward
def test_forward_shape_and_dtype():
    logits = make()(torch.randint(0, 32, (3, 7)))
    assert logits.shape == (3, 7, 32)
    assert logits.dtype == torch.float32


def test_too_long_input_names_block_size():
    with pytest.raises(ValueError, match="block_size=16"):
        make()(torch.zeros(1, 17, dtype=torch.long))


def test_right_padding_with_mask_matches_unpadded():
    model = make()
    short = ids([5, 9, 3, 7])
    padded = ids([5, 9, 3, 7, 0, 0, 0], [1, 2, 3, 4, 5, 6, 7])
    mask = ids([1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1])
    expected = model(short)[0]
    got = model(padded, attention_mask=mask)
    torch.testing.assert_close(got[0, :4], expected, atol=1e-5, rtol=0)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got[1], model(padded[1:])[0], atol=1e-5, rtol=0)
    # A boolean mask means the same as a 0/1 one.
    torch.testing.assert_close(model(padded, attention_mask=mask.bool()), got)


def test_mask_hides_padding_keys():
    """Padding in the middle is hidden from the later queries; with the causal mask alone it
    is not. (Right padding never needs this; the test checks that the mask is honoured.)"""
    model = make()
    x = ids([4, 11, 6, 8])
    mask = ids([1, 0, 1, 1])
    y = x.clone()
    y[0, 1] = 29  # change only the masked token
    a, b = model(x, attention_mask=mask), model(y, attention_mask=mask)
    torch.testing.assert_close(a[0, 2:], b[0, 2:], atol=1e-6, rtol=0)
    assert not torch.allclose(model(x)[0, 2:], model(y)[0, 2:])


def test_causality_future_tokens_do_not_change_past_logits():
    model = make()
    x = torch.randint(0, 32, (1, 10), generator=torch.Generator().manual_seed(3))
    t = 6
    y = x.clone()
    y[0, t] = (x[0, t] + 1) % 32
    a, b = model(x), model(y)
    torch.testing.assert_close(a[0, :t], b[0, :t], atol=0, rtol=0)
    assert not torch.allclose(a[0, t:], b[0, t:])


# ----------------------------------------------------------------- learning
def test_overfits_a_fixed_sequence():
    torch.manual_seed(0)
    model = make(0)
    seq = ids([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(100):
        logits = model(seq[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 32), seq[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 3.0  # about ln(32) at init
    assert losses[-1] < 0.1
    # Having learnt it, greedy decoding reproduces the sequence from its first token.
    out = model.generate(seq[:, :1], max_new_tokens=seq.shape[1] - 1)
    assert torch.equal(out, seq)


# ----------------------------------------------------------------- decoding
def test_generate_greedy_matches_argmax_and_is_deterministic():
    model = make()
    prompt = ids([1, 2, 3], [4, 5, 6])
    out = model.generate(prompt, max_new_tokens=5)
    assert out.shape == (2, 8)
    assert torch.equal(out[:, :3], prompt)
    assert torch.equal(out, model.generate(prompt, max_new_tokens=5))
    for t in range(3, 8):  # each new token is the argmax given what precedes it
        assert torch.equal(out[:, t], model(out[:, :t])[:, -1].argmax(-1))


def test_generate_stops_at_eos_and_pads_finished_rows():
    model = make()
    prompt = ids([1, 2, 3], [7, 8, 9])
    free = model.generate(prompt, max_new_tokens=6)
    eos = int(free[0, 3])  # row 0's first new token, made the eos
    out = model.generate(prompt, max_new_tokens=6, eos_id=eos)
    assert out[0, 3] == eos and torch.all(out[0, 3:] == eos)
    hits = (out[1, 3:] == eos).nonzero()
    if len(hits):  # row 1 finished too: stopped right there
        assert out.shape[1] == 3 + int(hits[0]) + 1
    else:
        assert out.shape[1] == 9 and torch.equal(out[1], free[1])
    # A single row stops after its eos.
    assert model.generate(prompt[:1], max_new_tokens=6, eos_id=eos).shape == (1, 4)


def test_generate_crops_context_and_restores_training_mode():
    model = make()
    model.train()
    out = model.generate(torch.zeros(1, 16, dtype=torch.long), max_new_tokens=3)
    assert out.shape == (1, 19)
    assert model.training


# ----------------------------------------------------------------- accounting
def test_num_parameters_and_flops_per_token():
    model = make()
    total = sum(p.numel() for p in model.parameters())
    assert model.num_parameters(non_embedding=False) == total
    n = total - 16 * 16  # without the position table
    assert model.num_parameters() == n
    assert model.flops_per_token(12) == 6 * n + 12 * 2 * 16 * 12
    assert estimate_flops_per_token(n, 2, 16, 12) == model.flops_per_token(12)


# ----------------------------------------------------------------- fingerprint
def test_fingerprint_stable_and_changes_after_a_step():
    model = make()
    first = fingerprint(model)
    assert len(first) == 64 and first == fingerprint(model) == fingerprint(make())
    assert fingerprint(make(1)) != first
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    model(ids([1, 2, 3])).sum().backward()
    opt.step()
    assert fingerprint(model) != first


def test_fingerprint_sees_config_and_non_float_dtypes():
    model = make()
    other = GPT(GPTConfig(vocab_size=32, block_size=16, n_layer=2, n_head=2, n_embd=16, bias=False))
    other.load_state_dict(model.state_dict())
    assert fingerprint(other) == fingerprint(model)
    other.config = GPTConfig(vocab_size=32, block_size=16, n_layer=2, n_head=4, n_embd=16)
    assert fingerprint(other) != fingerprint(model)  # same weights, another function
    assert len(fingerprint(model.to(torch.bfloat16))) == 64


# ----------------------------------------------------------------- packed inputs, hidden states
def test_hidden_states_through_the_output_head_are_the_logits():
    model = make()
    x = torch.randint(0, 32, (2, 9))
    hidden = model(x, return_hidden=True)
    assert hidden.shape == (2, 9, 16)
    assert torch.equal(model.output_head()(hidden), model(x))
    assert model.accepts_packed_inputs


def test_a_4d_mask_equal_to_the_padding_mask_gives_the_same_logits():
    model = make()
    padded = ids([5, 9, 3, 7, 0, 0], [1, 2, 3, 4, 5, 6])
    mask = ids([1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1])
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    four_d = (causal & mask.bool()[:, None, :])[:, None]
    torch.testing.assert_close(model(padded, four_d), model(padded, mask), rtol=0, atol=1e-6)


def test_packed_row_with_restarted_positions_equals_two_rows():
    """prompt + chosen + rejected in one row, the rejected part hidden from the chosen one and
    its positions restarting after the prompt: the rejected tokens' logits are those of the
    plain row prompt + rejected."""
    model = make()
    prompt, chosen, rejected = [3, 8, 1], [4, 4], [9, 2, 7]
    row = ids(prompt + chosen + rejected)
    pos = torch.tensor([[0, 1, 2, 3, 4, 3, 4, 5]])
    role = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    mask = torch.ones(8, 8, dtype=torch.bool).tril() & ~((role[:, None] == 2) & (role == 1))
    packed = model(row, mask[None, None], position_ids=pos)
    plain = model(ids(prompt + rejected))
    torch.testing.assert_close(packed[0, 5:], plain[0, 3:], rtol=0, atol=1e-5)
    torch.testing.assert_close(packed[0, :5], model(ids(prompt + chosen))[0], rtol=0, atol=1e-5)


def test_positions_may_exceed_the_width_limit_only_when_given():
    model = make()  # block_size 16
    row = torch.randint(0, 32, (1, 20))
    with pytest.raises(ValueError, match="block_size=16"):
        model(row)
    pos = torch.arange(20).remainder(10)[None]
    assert model(row, position_ids=pos).shape == (1, 20, 32)


def test_bad_packed_inputs_are_named():
    model = make()
    x = torch.zeros(2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="boolean of shape"):
        model(x, torch.ones(2, 1, 4, 4))
    with pytest.raises(ValueError, match="position_ids must have shape"):
        model(x, position_ids=torch.zeros(3, 4, dtype=torch.long))
