"""Loading a Hugging Face causal LM from a local directory, offline, behind GPT's contract.

Everything is built in the test: a byte-level BPE tokenizer trained on a few strings and a tiny
random GPT-2, saved with save_pretrained. Nothing is downloaded.
"""

from __future__ import annotations

import os
import socket
import warnings
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from llm.hf import HFCausalLM, HFTokenizer, load_local  # noqa: E402
from llm.model import fingerprint  # noqa: E402
from llm.tokenizer import Tokenizer  # noqa: E402

TEXTS = [
    "the cat sat on the mat",
    "a dog ate the bone, then the dog slept",
    "Helpful answers are short and correct.",
    "DPO prefers the chosen response over the rejected one.",
]
CHAT = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def make_tokenizer(*, pad: bool = True):
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<bos>", "<eos>", "<pad>"],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TEXTS, trainer)
    specials = {"bos_token": "<bos>", "eos_token": "<eos>"}
    if pad:
        specials["pad_token"] = "<pad>"
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, **specials)


def make_model(vocab_size: int, eos_id: int):
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=vocab_size,
        n_positions=32,
        n_layer=2,
        n_head=2,
        n_embd=32,
        bos_token_id=0,
        eos_token_id=eos_id,
    )
    return transformers.GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(directory, original model, original tokenizer) for a saved tiny GPT-2."""
    path = tmp_path_factory.mktemp("tiny-gpt2")
    tok = make_tokenizer()
    model = make_model(len(tok), tok.eos_token_id)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path, model, tok


@pytest.fixture(scope="module")
def loaded(saved):
    return load_local(saved[0])


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access attempted in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# ----------------------------------------------------------------- loading
def test_load_local_offline(saved, no_network):
    model, tok = load_local(saved[0])
    assert isinstance(model, HFCausalLM) and isinstance(tok, HFTokenizer)
    assert not model.training
    assert model.config_dict["n_layer"] == 2
    assert model.block_size == 32
    assert "HF_HUB_OFFLINE" in os.environ  # set (unless the user had) before importing


def test_logits_match_the_original_model(saved, loaded):
    _, original, tok = saved
    model, _ = loaded
    x = torch.tensor([tok.encode("the cat sat on the mat", add_special_tokens=False)])
    logits = model(x)
    assert logits.shape == (1, x.shape[1], len(tok)) and logits.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(logits, original(x).logits, atol=1e-5, rtol=0)


def test_right_padding_with_mask_matches_unpadded(loaded):
    model, tok = loaded
    short = tok.encode("the dog slept")
    n = len(short)
    padded = torch.tensor([[*short, tok.pad_id, tok.pad_id, tok.pad_id]])
    mask = torch.tensor([[1] * n + [0, 0, 0]])
    with torch.no_grad():
        torch.testing.assert_close(
            model(padded, attention_mask=mask)[0, :n],
            model(torch.tensor([short]))[0],
            atol=1e-5,
            rtol=0,
        )


def test_too_long_input_names_block_size(loaded):
    with pytest.raises(ValueError, match="block_size=32"):
        loaded[0](torch.zeros(1, 33, dtype=torch.long))


def test_dtype_argument_casts_weights(saved):
    model, _ = load_local(saved[0], dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16
    assert model(torch.tensor([[1, 2, 3]])).dtype == torch.float32


# ----------------------------------------------------------------- errors
def test_missing_directory_names_the_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        load_local(missing)


def test_directory_without_config(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        load_local(tmp_path)


def test_directory_without_tokenizer(saved, tmp_path):
    (tmp_path / "config.json").write_text((Path(saved[0]) / "config.json").read_text())
    with pytest.raises(ValueError, match="no tokenizer files"):
        load_local(tmp_path)


def test_missing_transformers_names_the_fix(saved, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "transformers":
            raise ImportError("No module named 'transformers'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match=r"pip install 'amasim\[hf\]'"):
        load_local(saved[0])


# ----------------------------------------------------------------- tokenizer
def test_tokenizer_ids_and_round_trip(saved, loaded):
    _, _, original = saved
    _, tok = loaded
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2)
    assert tok.vocab_size == len(original)
    for text in [*TEXTS, "unseen words: zebra quiz, ünïcode ✓"]:
        ids = tok.encode(text)
        assert all(isinstance(i, int) for i in ids)
        assert tok.eos_id not in ids and tok.bos_id not in ids  # no special tokens added
        assert tok.decode(ids) == text
        assert tok.decode(torch.tensor(ids)) == text


def test_pad_falls_back_to_eos():
    tok = HFTokenizer(make_tokenizer(pad=False))
    assert tok.pad_id == tok.eos_id == 1


def test_tokenizer_fingerprint_stable_and_discriminating(saved, loaded, tmp_path):
    _, tok = loaded
    again = load_local(saved[0])[1]
    assert len(tok.fingerprint) == 64
    assert tok.fingerprint == again.fingerprint == HFTokenizer(saved[2]).fingerprint
    # Padding settings are state, not tokenization.
    saved[2](["a", "the cat"], padding=True)
    assert HFTokenizer(saved[2]).fingerprint == tok.fingerprint
    assert HFTokenizer(make_tokenizer(pad=False)).fingerprint != tok.fingerprint


def test_chat_template(saved):
    plain = HFTokenizer(make_tokenizer())
    assert plain.apply_chat_template([{"role": "user", "content": "hi"}]) is None
    templated = make_tokenizer()
    templated.chat_template = CHAT
    tok = HFTokenizer(templated)
    user = {"role": "user", "content": "hi"}
    # A prompt (last turn not the assistant's) ends with the reply header, as the protocol asks.
    assert tok.apply_chat_template([user]) == "<user>hi\n<assistant>"
    reply = {"role": "assistant", "content": "hello"}
    assert tok.apply_chat_template([user, reply]) == "<user>hi\n<assistant>hello\n"
    assert tok.apply_chat_template([user], add_generation_prompt=False) == "<user>hi\n"
    assert isinstance(tok, Tokenizer)  # the protocol the DPO backend uses


# ----------------------------------------------------------------- model contract
def test_generate_is_greedy_and_stops_at_eos(loaded):
    model, tok = loaded
    prompt = torch.tensor([tok.encode("the cat"), tok.encode("a dog")])
    T = prompt.shape[1]
    out = model.generate(prompt, max_new_tokens=6)
    assert out.shape == (2, T + 6) and torch.equal(out[:, :T], prompt)
    assert torch.equal(out, model.generate(prompt, max_new_tokens=6))
    with torch.no_grad():
        for t in range(T, T + 6):  # the cached loop agrees with full forwards
            assert torch.equal(out[:, t], model(out[:, :t])[:, -1].argmax(-1))
    eos = int(out[0, T])
    stopped = model.generate(prompt[:1], max_new_tokens=6, eos_id=eos)
    assert stopped.shape == (1, T + 1) and stopped[0, -1] == eos


def test_generate_emits_no_deprecation_warning(loaded):
    """The KV cache goes by the installed transformers' own keyword (``cache`` from 5.25 on):
    nothing deprecated reaches the console during evaluation."""
    model, tok = loaded
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.generate(torch.tensor([tok.encode("the cat")]), max_new_tokens=3)


def test_generate_crops_context_past_block_size(loaded):
    model, _ = loaded
    prompt = torch.arange(3, 33)[None]  # 30 tokens, 32 positions
    out = model.generate(prompt, max_new_tokens=5)
    assert out.shape == (1, 35)
    with torch.no_grad():
        assert torch.equal(out[0, 34], model(out[:, 2:34])[0, -1].argmax())


def test_parameters_and_flops_per_token(loaded):
    model, _ = loaded
    gpt2 = model.model
    total = sum(p.numel() for p in gpt2.parameters())  # the tied matrix counted once
    assert model.num_parameters(non_embedding=False) == total
    n = total - gpt2.transformer.wpe.weight.numel()  # as GPT.num_parameters counts
    assert model.num_parameters() == n
    assert model.flops_per_token(16) == 6 * n + 12 * 2 * 32 * 16


def test_model_fingerprint(saved, loaded):
    model, _ = loaded
    first = fingerprint(model)
    assert first == fingerprint(model) == fingerprint(load_local(saved[0])[0])
    assert fingerprint(saved[1]) != first  # a bare model is another class
    changed = load_local(saved[0])[0]
    with torch.no_grad():
        changed.model.lm_head.weight[0, 0] += 1.0
    assert fingerprint(changed) != first


# ----------------------------------------------------------------- hidden states, packing
def test_hidden_states_through_the_output_head_are_the_logits(loaded):
    model, _ = loaded
    ids = torch.tensor([[5, 9, 3, 7, 11]])
    head = model.output_head()
    assert head is model.model.get_output_embeddings()
    hidden = model(ids, return_hidden=True)
    assert hidden.shape == (1, 5, 32)
    torch.testing.assert_close(head(hidden), model(ids), rtol=0, atol=1e-6)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_prefix_sharing_equals_the_plain_layout(saved, attn):
    import numpy as np

    from llm.data import TokenizedPairs
    from llm.dpo import resolve_layout
    from llm.oracle import reference_logps
    from llm.packing import Layout

    original = transformers.GPT2LMHeadModel.from_pretrained(saved[0], attn_implementation=attn)
    model = HFCausalLM(original.eval())
    assert model.accepts_packed_inputs
    assert resolve_layout(model, Layout()).prefix_sharing
    rng = np.random.default_rng(0)
    rows = [
        (rng.integers(3, 300, 4), rng.integers(3, 300, n), rng.integers(3, 300, m))
        for n, m in ((3, 5), (6, 2), (1, 1), (4, 4))
    ]
    pairs = TokenizedPairs(
        chosen=[np.concatenate([p, c]).astype(np.int32) for p, c, _ in rows],
        rejected=[np.concatenate([p, r]).astype(np.int32) for p, _, r in rows],
        prompt_lengths=np.full(len(rows), 4),
        chosen_truncated=0,
        rejected_truncated=0,
        sources=["x"] * len(rows),
        fingerprint="x",
    )
    shared = reference_logps(model, pairs, pad_id=2, average=False, layout=Layout(True, 8))
    plain = reference_logps(model, pairs, pad_id=2, average=False, layout=Layout(False, 0))
    np.testing.assert_allclose(shared, plain, rtol=0, atol=2e-5)


class MaskBlind(HFCausalLM):
    """An HF model that drops 4-D masks (as flash-attention implementations take none)."""

    def _mask_4d(self, mask):
        return None


def test_a_model_that_ignores_4d_masks_is_scored_plainly(saved):
    from llm.dpo import resolve_layout
    from llm.packing import Layout

    model = MaskBlind(transformers.GPT2LMHeadModel.from_pretrained(saved[0]).eval())
    assert model.output_head() is not None
    assert not model.accepts_packed_inputs
    assert resolve_layout(model, Layout(True, 16)) == Layout(False, 16)


def test_transformed_logits_are_never_rebuilt_from_hidden_states(saved):
    original = transformers.GPT2LMHeadModel.from_pretrained(saved[0]).eval()
    original.config.final_logit_softcapping = 30.0  # as Gemma 2 has
    model = HFCausalLM(original)
    assert model.output_head() is None  # the full logits (soft-capped by the model) are used
    from llm.dpo import resolve_layout
    from llm.packing import Layout

    assert resolve_layout(model, Layout(True, 16)) == Layout(False, 16)
