"""llm.packing + llm.dpo.packed_logps: plain and prefix-shared layouts, bucketing, the models.

Prefix sharing must give every token the context it has in the plain layout, so both layouts
give the same log-probs (to float rounding) and the same gradients; bucketing must make a
pair's log-probs independent of the batch it is in, bit for bit (on a CPU).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from llm_helpers import TOKENIZER, char_tasks, tiny_gpt

from llm.data import TokenizedPairs, collate_pairs
from llm.dpo import concatenated_forward, max_length_of, packed_logps, resolve_layout
from llm.oracle import reference_logps
from llm.packing import CHOSEN, PAD, PROMPT, REJECTED, Layout, attention_mask_4d, pack_pairs
from llm.precision import Precision

pytestmark = pytest.mark.usefixtures("torch_one_thread")

PAIRS = char_tasks()[0][1]  # 40 arithmetic pairs of varying lengths
PAD_ID = TOKENIZER.pad_id


def seq(*ids: int) -> np.ndarray:
    return np.array(ids, dtype=np.int32)


def pairs_of(rows: list[tuple[list[int], list[int], int]]) -> TokenizedPairs:
    return TokenizedPairs(
        chosen=[seq(*c) for c, _, _ in rows],
        rejected=[seq(*r) for _, r, _ in rows],
        prompt_lengths=np.array([p for _, _, p in rows]),
        chosen_truncated=0,
        rejected_truncated=0,
        sources=[str(i) for i in range(len(rows))],
        fingerprint="test",
    )


def logps(model, layout: Layout, index, precision=None, pairs=PAIRS):
    layout = resolve_layout(model, layout)
    batch = pack_pairs(pairs, index, PAD_ID, layout, max_length=max_length_of(model))
    return packed_logps(model, batch, precision or Precision())


# ----------------------------------------------------------------------------- layout
def test_plain_layout_scores_exactly_the_loss_mask_tokens():
    index = [3, 0, 7]
    batch = pack_pairs(PAIRS, index, PAD_ID, Layout(prefix_sharing=False, bucket=0))
    (piece,) = batch.pieces
    collated = collate_pairs(PAIRS, index, PAD_ID)
    ids, mask = collated["input_ids"], collated["loss_mask"]
    assert torch.equal(piece.input_ids, ids)
    rows, cols = mask.nonzero(as_tuple=True)
    assert torch.equal(piece.labels, ids[rows, cols])
    assert torch.equal(piece.source, rows * ids.shape[1] + cols - 1)  # predicted from t - 1
    assert torch.equal(piece.target, rows)
    assert torch.equal(batch.counts, mask.sum(1))
    assert batch.tokens == int(collated["attention_mask"].sum())


def test_prefix_layout_holds_prompt_once_and_restarts_positions():
    pairs = pairs_of([([1, 2, 3, 4], [1, 2, 5, 6, 7], 2)])
    batch = pack_pairs(pairs, [0], 0, Layout(prefix_sharing=True, bucket=4))
    (piece,) = batch.pieces
    assert piece.input_ids.tolist() == [[1, 2, 3, 4, 5, 6, 7, 0]]  # width 7 → bucket 8
    assert piece.position_ids.tolist() == [[0, 1, 2, 3, 2, 3, 4, 0]]
    assert piece.segments.tolist() == [[PROMPT, PROMPT, CHOSEN, CHOSEN] + [REJECTED] * 3 + [PAD]]
    # chosen 3, 4 from positions 1, 2; rejected 5 from the prompt's last position, then 6, 7
    assert piece.source.tolist() == [1, 2, 1, 4, 5]
    assert piece.labels.tolist() == [3, 4, 5, 6, 7]
    assert piece.target.tolist() == [0, 0, 1, 1, 1]
    assert batch.counts.tolist() == [2, 3]
    assert (batch.tokens, batch.computed) == (9, 8)


def test_mask_keeps_the_completions_apart():
    seg = torch.tensor([[PROMPT, PROMPT, CHOSEN, CHOSEN, REJECTED, REJECTED, PAD]])
    mask = attention_mask_4d(seg)[0, 0]
    assert mask.shape == (7, 7)
    assert not mask.triu(1).any()  # causal
    assert not mask[4:6, 2:4].any()  # rejected never sees chosen
    assert mask[4:6, :2].all() and mask[5, 4]  # ... but sees the prompt and itself
    assert mask[2:4, :2].all()  # chosen sees the prompt
    assert not mask[:6, 6].any()  # nobody sees padding (padding sees itself only as a key)


@pytest.mark.parametrize("bucket", [0, 1, 16])
@pytest.mark.parametrize("prefix", [False, True])
def test_every_layout_scores_every_completion_token_once(prefix, bucket):
    index = np.arange(len(PAIRS))
    batch = pack_pairs(PAIRS, index, PAD_ID, Layout(prefix, bucket))
    want = [len(PAIRS.chosen[i]) - PAIRS.prompt_lengths[i] for i in index]
    want += [len(PAIRS.rejected[i]) - PAIRS.prompt_lengths[i] for i in index]
    got = torch.zeros(2 * len(index), dtype=torch.long)
    for piece in batch.pieces:
        got += torch.bincount(piece.target, minlength=2 * len(index))
        if bucket:
            assert piece.input_ids.shape[1] % bucket == 0
    assert got.tolist() == want == batch.counts.tolist()


# ----------------------------------------------------------------------------- numbers
@pytest.mark.parametrize("bucket", [0, 16])
def test_prefix_sharing_equals_plain_for_the_gpt(bucket):
    model = tiny_gpt(0)
    index = np.arange(12)
    plain = logps(model, Layout(False, bucket), index)
    shared = logps(model, Layout(True, bucket), index)
    for a, b in zip(shared, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=2e-5)


def test_prefix_sharing_gives_the_gradient_of_the_plain_layout():
    grads = []
    for prefix in (False, True):
        model = tiny_gpt(0)
        chosen, rejected = logps(model, Layout(prefix, 16), np.arange(10))
        (chosen.sum() - 2 * rejected.sum()).backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-5)


def test_packed_logps_match_the_full_logits_path():
    model = tiny_gpt(1)
    index = np.arange(8)
    with torch.no_grad():
        want = concatenated_forward(model, collate_pairs(PAIRS, index, PAD_ID))
        got = logps(model, Layout(True, 16), index)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=2e-5)


def test_average_divides_by_the_completion_length():
    model = tiny_gpt(0)
    pairs = pack_pairs(PAIRS, [0, 1], PAD_ID, Layout(), max_length=64)
    total = packed_logps(model, pairs, Precision())
    mean = packed_logps(model, pairs, Precision(), average=True)
    counts = pairs.counts.float()
    torch.testing.assert_close(torch.cat(mean), torch.cat(total) / counts)


@settings(max_examples=10, deadline=None)
@given(
    data=st.data(),
    prefix=st.booleans(),
    dtype=st.sampled_from([None, torch.bfloat16]),
)
def test_bucketed_logps_do_not_depend_on_the_batch(data, prefix, dtype):
    """Any batch (any pairs, any order, repeats allowed) gives each pair the log-probs
    reference_logps cached for it, bit for bit: the policy = reference at the first step."""
    model = tiny_gpt(0)
    precision, layout = Precision("cpu", dtype), Layout(prefix, 16)
    cached = reference_logps(
        model, PAIRS, pad_id=PAD_ID, average=False, precision=precision, layout=layout
    )
    index = data.draw(st.lists(st.integers(0, len(PAIRS) - 1), min_size=1, max_size=12))
    with torch.no_grad():
        chosen, rejected = logps(model, layout, index, precision)
    got = torch.stack([chosen, rejected], 1).double().numpy()
    np.testing.assert_array_equal(got, cached[index])


def test_gradients_on_do_not_change_the_numbers():
    model = tiny_gpt(0)
    with torch.no_grad():
        off = logps(model, Layout(), np.arange(6))
    on = logps(model, Layout(), np.arange(6))
    assert on[0].requires_grad
    for a, b in zip(on, off, strict=True):
        assert torch.equal(a.detach(), b)


# ----------------------------------------------------------------------------- models
class NoHidden(torch.nn.Module):
    """A model that only returns logits: scored in the plain layout, full logits."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = tiny_gpt(0)

    def forward(self, input_ids, attention_mask):
        return self.inner(input_ids, attention_mask)


def test_a_model_without_hidden_states_is_scored_plainly():
    model = NoHidden()
    assert resolve_layout(model, Layout(True, 16)) == Layout(False, 16)
    got = logps(model, Layout(True, 16), np.arange(5))
    want = logps(model.inner, Layout(False, 16), np.arange(5))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=2e-5)
    prefix = pack_pairs(PAIRS, [0], PAD_ID, Layout(True, 0))
    with pytest.raises(ValueError, match="resolve_layout"):
        packed_logps(model, prefix, Precision())


def test_bad_pairs_are_named():
    no_prompt = pairs_of([([1, 2], [1, 3], 0)])
    with pytest.raises(ValueError, match="pair 0 has prompt length 0"):
        pack_pairs(no_prompt, [0], 0, Layout())
    empty = pairs_of([([1, 2], [1, 2, 3], 2)])
    with pytest.raises(ValueError, match="non-empty completions"):
        pack_pairs(empty, [0], 0, Layout())
    with pytest.raises(ValueError, match="longer than the model's 3 positions"):
        pack_pairs(pairs_of([([1, 2, 3, 4], [1, 2, 5], 2)]), [0], 0, Layout(), max_length=3)
    with pytest.raises(ValueError, match="empty"):
        pack_pairs(PAIRS, [], 0, Layout())
    with pytest.raises(IndexError, match=r"0\.\.39"):
        pack_pairs(PAIRS, [40], 0, Layout())
    with pytest.raises(ValueError, match="bucket"):
        Layout(bucket=-1)


def test_plain_rows_are_not_padded_past_the_position_table():
    model = tiny_gpt(0)  # block_size 64
    long = pairs_of([([1] * 60, [1] * 58 + [2], 50)])
    batch = pack_pairs(long, [0], 0, Layout(False, 16), max_length=64)
    assert max(p.input_ids.shape[1] for p in batch.pieces) == 64  # 60 rounds to 64 ≤ 64
    shared = pack_pairs(long, [0], 0, Layout(True, 16), max_length=64)
    assert shared.pieces[0].input_ids.shape[1] == 80  # 69 tokens: wider than 64, positions < 60
    assert int(shared.pieces[0].position_ids.max()) < 64
    chosen, rejected = packed_logps(model, shared, Precision())
    assert torch.isfinite(chosen).all() and torch.isfinite(rejected).all()
