"""tokenization="trl" reproduces TRL's DPO token ids; the implicit-prompt format; chat templates.

The expected ids in ``tests/fixtures/trl_tokenization/expected.json`` were made by TRL 1.16
itself (``tests/fixtures/make_trl_tokenization.py``) with the three small tokenizers saved next
to it; these tests need transformers (to load them), not TRL.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("torch")

from llm.data import (
    TOKENIZATIONS,
    PreferencePair,
    collate_pairs,
    read_preference_jsonl,
    split_implicit_prompt,
    tokenize_pairs,
)
from llm.tokenizer import CharTokenizer

FIXTURES = Path(__file__).parent / "fixtures" / "trl_tokenization"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text(encoding="utf-8"))
GROUPS = {g["name"]: g for g in EXPECTED["groups"]}
TOK = CharTokenizer()


def hf_tokenizer(name: str):
    """The fixture tokenizer ``name`` (gpt2, llama3, qwen2) behind llm.hf.HFTokenizer."""
    transformers = pytest.importorskip("transformers")
    from packaging.version import Version  # a dependency of transformers

    from llm.hf import HFTokenizer

    saved_by = EXPECTED["versions"]["transformers"]
    if Version(transformers.__version__).major != Version(saved_by).major:
        pytest.skip(f"the fixture tokenizers were saved by transformers {saved_by}")

    return HFTokenizer(
        transformers.AutoTokenizer.from_pretrained(FIXTURES / name, local_files_only=True)
    )


def write_rows(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


# --------------------------------------------------------------- equal to TRL, id for id
@pytest.mark.parametrize("name", list(GROUPS))
def test_trl_mode_reproduces_trl_ids(tmp_path, name):
    group = GROUPS[name]
    tok = hf_tokenizer(group["tokenizer"])
    path = write_rows(tmp_path / f"{name}.jsonl", [r["row"] for r in group["rows"]])
    tp = tokenize_pairs(
        read_preference_jsonl(path, tok),
        tok,
        max_length=group["max_length"],
        tokenization="trl",
    )
    kept = [(f"{path}:{i}", r["expected"]) for i, r in enumerate(group["rows"], start=1)]
    assert tp.dropped == [src for src, e in kept if e["dropped"]]
    kept = [(src, e) for src, e in kept if not e["dropped"]]
    assert tp.sources == [src for src, _ in kept]
    for i, (_, e) in enumerate(kept):
        assert tp.chosen[i].tolist() == e["chosen_input_ids"]
        assert tp.rejected[i].tolist() == e["rejected_input_ids"]
        assert len(e["prompt_ids"]) == e["prompt_length"]
        assert tp.prompt_lengths[i] == max(e["prompt_length"], 1)  # token 0 is never a label
    assert tp.chosen_truncated == sum(
        len(e["prompt_ids"]) + len(e["chosen_ids"]) > group["max_length"] for _, e in kept
    )
    assert tp.rejected_truncated == sum(
        len(e["prompt_ids"]) + len(e["rejected_ids"]) > group["max_length"] for _, e in kept
    )
    # The labels are TRL's: its completion mask after the one-token shift, nothing padded.
    batch = collate_pairs(tp, range(len(tp)), pad_id=tok.pad_id)
    for r, (_, e) in enumerate(kept + kept):
        seq = e["chosen_input_ids"] if r < len(kept) else e["rejected_input_ids"]
        labels = batch["loss_mask"][r, 1:].tolist()
        assert labels == [e["prompt_length"] <= t < len(seq) for t in range(1, len(labels) + 1)]


def test_fixtures_cover_the_four_cases():
    """The cases of the issue, read off TRL's own output (so a regenerated fixture keeps them)."""
    gpt2 = hf_tokenizer("gpt2")
    qwen2 = hf_tokenizer("qwen2")
    space = GROUPS["gpt2-text"]["rows"][0]
    assert space["row"]["prompt"].endswith(" ")
    assert space["expected"]["prompt_ids"] == gpt2.encode(space["row"]["prompt"].rstrip())
    assert gpt2.bos_id is not None and all(
        r["expected"]["chosen_input_ids"][0] != gpt2.bos_id for r in GROUPS["gpt2-text"]["rows"]
    )
    tail = [qwen2.eos_id, *qwen2.encode("\n")]
    assert all(r["expected"]["chosen_ids"][-2:] == tail for r in GROUPS["qwen2-chat"]["rows"])
    long = GROUPS["gpt2-long"]
    kept = [r["expected"] for r in long["rows"] if not r["expected"]["dropped"]]
    assert any(len(e["prompt_ids"]) > long["max_length"] // 2 for e in kept)
    assert any(r["expected"]["dropped"] for r in long["rows"])


# ------------------------------------------------------------ the differences, by mode
def test_exact_and_trl_differ_where_the_issue_says(tmp_path):
    gpt2 = hf_tokenizer("gpt2")
    pair = [PreferencePair("The sky is ", "blue.", "green.", "f:1")]
    exact = tokenize_pairs(pair, gpt2, max_length=64)
    trl = tokenize_pairs(pair, gpt2, max_length=64, tokenization="trl")
    # exact: BOS added, the prompt's space kept as its own token, the boundary where written
    prompt = gpt2.encode("The sky is ")
    assert exact.chosen[0].tolist() == [gpt2.bos_id, *prompt, *gpt2.encode("blue."), gpt2.eos_id]
    # trl: no BOS (GPT-2 never inserts it), the space merged into " blue"
    assert trl.chosen[0].tolist() == [*gpt2.encode("The sky is blue."), gpt2.eos_id]
    assert trl.prompt_lengths.tolist() == [len(prompt) - 1]
    assert exact.fingerprint != trl.fingerprint

    qwen2 = hf_tokenizer("qwen2")
    row = {"prompt": [user("Hi")], "chosen": [assistant("Yes")], "rejected": [assistant("No")]}
    pairs = read_preference_jsonl(write_rows(tmp_path / "c.jsonl", [row]), qwen2)
    exact = tokenize_pairs(pairs, qwen2, max_length=64)
    trl = tokenize_pairs(pairs, qwen2, max_length=64, tokenization="trl")
    # both render the prompt with the template and the generation prompt ...
    head = qwen2.tokenizer.apply_chat_template([user("Hi")], add_generation_prompt=True)
    assert exact.prompt_lengths[0] == trl.prompt_lengths[0] == len(head["input_ids"])
    # ... exact ends the completion at EOS, trl keeps the template's "\n" after it
    yes = [*qwen2.encode("Yes"), qwen2.eos_id]
    assert exact.chosen[0].tolist()[-len(yes) :] == yes
    assert trl.chosen[0].tolist()[-len(yes) - 1 :] == [*yes, *qwen2.encode("\n")]


def test_llama_style_bos_once_from_the_tokenizer_or_the_template(tmp_path):
    llama = hf_tokenizer("llama3")
    text = tokenize_pairs(
        [PreferencePair("The sky is", " blue.", " red.", "f:1")],
        llama,
        max_length=64,
        tokenization="trl",
    )
    row = {"prompt": [user("Hi")], "chosen": [assistant("Yes")], "rejected": [assistant("No")]}
    pairs = read_preference_jsonl(write_rows(tmp_path / "c.jsonl", [row]), llama)
    chat = tokenize_pairs(pairs, llama, max_length=64, tokenization="trl")
    for seq in (text.chosen[0], chat.chosen[0], chat.rejected[0]):
        assert seq[0] == llama.bos_id and (seq == llama.bos_id).sum() == 1
        assert seq[-1] == llama.eos_id


# ------------------------------------------------------------------ implicit prompt
def test_implicit_prompt_plain_text_in_both_modes(tmp_path):
    rows = [{"chosen": "The sky is blue.", "rejected": "The sky is green."}]
    (pair,) = read_preference_jsonl(write_rows(tmp_path / "i.jsonl", rows))
    assert (pair.prompt, pair.chosen, pair.rejected) == ("The sky is", " blue.", " green.")
    assert pair.messages is None
    exact = tokenize_pairs([pair], TOK, max_length=40)
    assert exact.chosen[0].tolist() == [TOK.bos_id, *TOK.encode("The sky is blue."), TOK.eos_id]
    trl = tokenize_pairs([pair], TOK, max_length=40, tokenization="trl")
    assert trl.chosen[0].tolist() == exact.chosen[0].tolist()  # no merges, no truncation


def test_implicit_prompt_conversation(tmp_path):
    turns = [user("2+2?"), assistant("4"), user("3+3?")]
    rows = [{"chosen": [*turns, assistant("6")], "rejected": [*turns, assistant("9")]}]
    (pair,) = read_preference_jsonl(write_rows(tmp_path / "i.jsonl", rows))
    assert pair.messages == (turns, [assistant("6")], [assistant("9")])
    assert pair.prompt == "User: 2+2?\nAssistant: 4\nUser: 3+3?\nAssistant: "
    assert (pair.chosen, pair.rejected) == ("6", "9")
    # with a chat template, trl mode tokenizes it as the explicit row with that prompt
    qwen2 = hf_tokenizer("qwen2")
    explicit = {"prompt": turns, "chosen": [assistant("6")], "rejected": [assistant("9")]}
    a, b = (
        tokenize_pairs(
            read_preference_jsonl(write_rows(tmp_path / f"{k}.jsonl", [r]), qwen2),
            qwen2,
            max_length=80,
            tokenization="trl",
        )
        for k, r in (("implicit", rows[0]), ("explicit", explicit))
    )
    assert a.chosen[0].tolist() == b.chosen[0].tolist() and a.prompt_lengths == b.prompt_lengths


def test_split_implicit_prompt_rules():
    assert split_implicit_prompt("ab c", "ab d") == ("ab", " c", " d")  # space starts replies
    assert split_implicit_prompt("forty", "four") == ("fo", "rty", "ur")  # mid-word
    assert split_implicit_prompt("abc", "abcd") == ("ab", "c", "cd")  # one continues the other
    assert split_implicit_prompt("x", "y") == ("", "x", "y")
    m = [user("q"), assistant("a")]
    assert split_implicit_prompt(m, [user("q"), assistant("b")]) == (m[:1], m[1:], [assistant("b")])


@settings(max_examples=200, deadline=None)
@given(st.text("ab ", min_size=1, max_size=8), st.text("ab ", min_size=1, max_size=8))
def test_split_implicit_prompt_partitions_both(chosen, rejected):
    prompt, c, r = split_implicit_prompt(chosen, rejected)
    assert prompt + c == chosen and prompt + r == rejected
    assert c and r  # a completion is never empty
    assert not prompt.endswith(" ") or c[:1] == r[:1]  # a final space goes to the replies


# ----------------------------------------------------------- trl-mode truncation rules
@settings(max_examples=150, deadline=None)
@given(
    rows=st.lists(
        st.tuples(*(st.text("ab+= ", min_size=1, max_size=n) for n in (14, 10, 10))),
        min_size=1,
        max_size=6,
    ),
    max_length=st.integers(4, 20),
)
def test_trl_truncation_invariants(rows, max_length):
    pairs = [PreferencePair(p, c, r, f"f:{i}") for i, (p, c, r) in enumerate(rows)]
    prompt_len = [1 + len(p) for p, _, _ in rows]  # BOS + one id per character
    if all(n >= max_length for n in prompt_len):
        with pytest.raises(ValueError, match="drops them all"):
            tokenize_pairs(pairs, TOK, max_length=max_length, tokenization="trl")
        return
    tp = tokenize_pairs(pairs, TOK, max_length=max_length, tokenization="trl")
    keep = [i for i, n in enumerate(prompt_len) if n < max_length]
    assert tp.sources == [f"f:{i}" for i in keep]
    assert tp.dropped == [f"f:{i}" for i, n in enumerate(prompt_len) if n >= max_length]
    assert tp.prompt_lengths.tolist() == [prompt_len[i] for i in keep]  # the prompt whole
    full = {k: [prompt_len[i] + len(rows[i][j]) + 1 for i in keep] for j, k in ((1, "c"), (2, "r"))}
    assert tp.chosen_truncated == sum(n > max_length for n in full["c"])
    assert tp.rejected_truncated == sum(n > max_length for n in full["r"])
    for row, i in enumerate(keep):  # keep_start: the first max_length ids of the whole pair
        prompt, chosen, rejected = rows[i]
        for seq, completion in ((tp.chosen[row], chosen), (tp.rejected[row], rejected)):
            whole = [TOK.bos_id, *TOK.encode(prompt + completion), TOK.eos_id]
            assert seq.tolist() == whole[:max_length]


@settings(max_examples=100, deadline=None)
@given(
    rows=st.lists(
        st.tuples(*(st.text("ab+= \n", min_size=1, max_size=n) for n in (8, 8, 8))),
        min_size=1,
        max_size=5,
    )
)
def test_trl_equals_exact_for_a_character_tokenizer_when_nothing_is_cut(rows):
    """No merges and a BOS both ways: the modes agree whenever exact keeps everything."""
    pairs = [PreferencePair(p, c, r, f"f:{i}") for i, (p, c, r) in enumerate(rows)]
    exact = tokenize_pairs(pairs, TOK, max_length=40, max_prompt_length=20)
    trl = tokenize_pairs(pairs, TOK, max_length=40, tokenization="trl")
    assert exact.chosen_truncated == exact.rejected_truncated == 0
    for a, b in ((exact.chosen, trl.chosen), (exact.rejected, trl.rejected)):
        assert [s.tolist() for s in a] == [s.tolist() for s in b]
    assert np.array_equal(exact.prompt_lengths, trl.prompt_lengths)
    assert exact.fingerprint != trl.fingerprint


def test_trl_completion_already_ending_in_eos_text_gets_no_second():
    tp = tokenize_pairs(
        [PreferencePair("1+1=", "2<eos>", "3", "f:1")], TOK, max_length=16, tokenization="trl"
    )
    assert tp.chosen[0].tolist() == [TOK.bos_id, *TOK.encode("1+1=2"), TOK.eos_id]
    assert tp.rejected[0].tolist() == [TOK.bos_id, *TOK.encode("1+1=3"), TOK.eos_id]


def test_trl_completion_from_token_zero_masks_from_token_one():
    """TRL trains a pair whose prompt has no token of its own (empty, no BOS); token 0 is
    context, never a label, in both."""

    class NoBos(CharTokenizer):
        bos_id = None

    tok = NoBos()
    pair = [PreferencePair("", "bc", "d", "f:3")]
    with pytest.raises(ValueError, match="empty prompt and the tokenizer has no BOS"):
        tokenize_pairs(pair, tok, max_length=8)
    tp = tokenize_pairs(pair, tok, max_length=8, tokenization="trl")
    assert tp.chosen[0].tolist() == [*tok.encode("bc"), tok.eos_id]
    assert tp.prompt_lengths.tolist() == [1]
    with pytest.raises(ValueError, match=r"f:3: 'rejected' adds no token after the prompt"):
        tokenize_pairs(
            [PreferencePair("", "b", "<eos>", "f:3")], tok, max_length=8, tokenization="trl"
        )


def test_trl_fingerprint_tracks_mode_ids_and_settings():
    pairs = [PreferencePair("1+1=", "2", "3", "f:1"), PreferencePair("2+2=", "4", "5", "f:2")]

    def fp(ps=pairs, **kw):
        return tokenize_pairs(
            ps, TOK, **{"max_length": 16, "tokenization": "trl", **kw}
        ).fingerprint

    assert fp() == fp() != tokenize_pairs(pairs, TOK, max_length=16).fingerprint
    assert fp() != fp(max_length=17) and fp() != fp(pairs[::-1])


# ------------------------------------------------------------------------- bad input
def test_unknown_tokenization():
    with pytest.raises(ValueError, match=r"tokenization must be one of 'exact', 'trl'.*'TRL'"):
        tokenize_pairs(
            [PreferencePair("a", "b", "c", "f:1")], TOK, max_length=8, tokenization="TRL"
        )
    assert TOKENIZATIONS == ("exact", "trl")


def test_conversational_row_without_chat_template(tmp_path):
    row = {"prompt": [user("1+1=")], "chosen": [assistant("2")], "rejected": [assistant("3")]}
    path = write_rows(tmp_path / "c.jsonl", [row, row])
    for tok in (TOK, hf_tokenizer("gpt2")):
        pairs = read_preference_jsonl(path, tok)
        tokenize_pairs(pairs, tok, max_length=64)  # exact: the plain template
        with pytest.raises(ValueError, match=r"c\.jsonl:1: .*no chat template: save one"):
            tokenize_pairs(pairs, tok, max_length=64, tokenization="trl")


def test_implicit_rows_that_share_no_prompt(tmp_path):
    cases = [
        ({"chosen": "Blue.", "rejected": "Green."}, r"i\.jsonl:2: implicit prompt .* share no"),
        ({"chosen": " a", "rejected": " b"}, r"i\.jsonl:2: implicit prompt .* share no"),
        (
            {"chosen": [assistant("a")], "rejected": [assistant("b")]},
            r"i\.jsonl:2: implicit prompt .*begin both with the same prompt",
        ),
        ({"chosen": "a b", "rejected": [assistant("b")]}, r"i\.jsonl:2: .*both be strings"),
        ({"chosen": "", "rejected": "b"}, r"i\.jsonl:2: 'chosen' is empty"),
        ({"chosen": "ab"}, r"i\.jsonl:2: missing key\(s\) 'rejected'"),
    ]
    for bad, message in cases:
        path = write_rows(tmp_path / "i.jsonl", [{"chosen": "ab", "rejected": "ac"}, bad])
        with pytest.raises(ValueError, match=message):
            read_preference_jsonl(path)


def test_trl_mode_errors_name_the_row_and_the_fix(tmp_path):
    mixed = {"prompt": [user("1+1=")], "chosen": "2", "rejected": "3"}
    (pair,) = read_preference_jsonl(write_rows(tmp_path / "m.jsonl", [mixed]))
    with pytest.raises(ValueError, match=r"m\.jsonl:1: the row mixes messages and plain text"):
        tokenize_pairs([pair], TOK, max_length=64, tokenization="trl")

    class NoEosText(CharTokenizer):
        eos_token = None

    with pytest.raises(ValueError, match=r"f:1: the tokenizer has no eos_token text"):
        tokenize_pairs(
            [PreferencePair("a", "b", "c", "f:1")], NoEosText(), max_length=8, tokenization="trl"
        )

    class Minimal:  # the Tokenizer protocol alone
        vocab_size, bos_id, eos_id, pad_id, fingerprint = 10, None, 1, 0, "x"

        def encode(self, text):
            return [2] * len(text)

        def decode(self, ids):
            return ""

        def apply_chat_template(self, messages):
            return None

    with pytest.raises(ValueError, match=r"needs the tokenizer's own call .* Minimal lacks"):
        tokenize_pairs(
            [PreferencePair("a", "b", "c", "f:1")], Minimal(), max_length=8, tokenization="trl"
        )
    with pytest.raises(ValueError, match=r"truncate_prompt='left' has no counterpart in TRL"):
        tokenize_pairs(
            [PreferencePair("a", "b", "c", "f:1")],
            TOK,
            max_length=8,
            tokenization="trl",
            truncate_prompt="left",
        )
    with pytest.raises(ValueError, match=r"drops them all \(first: f:1\): raise max_length"):
        tokenize_pairs(
            [PreferencePair("abcdefgh", "b", "c", "f:1")], TOK, max_length=8, tokenization="trl"
        )
    with pytest.raises(ValueError, match="max_length >= 2"):
        tokenize_pairs(
            [PreferencePair("a", "b", "c", "f:1")], TOK, max_length=1, tokenization="trl"
        )


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"tools": "[{"}, r"k\.jsonl:1: 'tools' is a string but not valid JSON"),
        ({"tools": {"name": "f"}}, r"k\.jsonl:1: 'tools' must be a list"),
        ({"chat_template_kwargs": [1]}, r"k\.jsonl:1: 'chat_template_kwargs' must be an object"),
    ],
)
def test_bad_template_arguments(tmp_path, extra, message):
    row = {"prompt": [user("q")], "chosen": [assistant("a")], "rejected": [assistant("b")]}
    with pytest.raises(ValueError, match=message):
        read_preference_jsonl(write_rows(tmp_path / "k.jsonl", [{**row, **extra}]))


def test_template_arguments_are_kept_for_trl_mode(tmp_path):
    row = {"prompt": "q", "chosen": "a", "rejected": "b"}
    rows = [row, {**row, "tools": '[{"name": "f"}]', "chat_template_kwargs": {"x": 1}}]
    plain, extra = read_preference_jsonl(write_rows(tmp_path / "k.jsonl", rows))
    assert plain.template_kwargs is None
    assert extra.template_kwargs == {"tools": [{"name": "f"}], "x": 1}
