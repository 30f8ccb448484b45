"""llm.tokenizer and llm.data: reading, manifests, tokenisation, collation, error messages."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import llm.data  # noqa: E402
import llm.tokenizer  # noqa: E402
from llm.data import (  # noqa: E402
    PreferencePair,
    TaskFiles,
    collate_pairs,
    load_manifest,
    read_preference_jsonl,
    tokenize_pairs,
)
from llm.tokenizer import CharTokenizer, Tokenizer, render_completion, render_messages  # noqa: E402

TOK = CharTokenizer()


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def row(prompt="1+1=", chosen="2", rejected="3") -> str:
    return json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected})


class SpecialsTokenizer(CharTokenizer):
    """A tokenizer whose encode wraps every piece in BOS ... EOS (like some HF ones)."""

    def encode(self, text: str) -> list[int]:
        return [self.bos_id, *super().encode(text), self.eos_id]


class ChatTokenizer(CharTokenizer):
    def apply_chat_template(self, messages):
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"


class NoBosTokenizer(CharTokenizer):
    bos_id = None


@pytest.mark.parametrize("module", [llm.tokenizer, llm.data])
def test_doctests(module):
    assert doctest.testmod(module).failed == 0


# ----------------------------------------------------------------------- tokenizer
def test_char_tokenizer_round_trip_and_protocol():
    text = "Hello, World!\n~ 0123 {x}"
    ids = TOK.encode(text)
    assert TOK.decode(ids) == text
    assert TOK.decode([TOK.bos_id, *ids, TOK.eos_id, TOK.pad_id]) == text
    assert all(i >= 4 for i in ids) and max(ids) < TOK.vocab_size == 100
    assert TOK.encode("é") == [TOK.unk_id] and TOK.decode([TOK.unk_id]) == ""
    assert (TOK.pad_id, TOK.bos_id, TOK.eos_id, TOK.unk_id) == (0, 1, 2, 3)
    assert TOK.apply_chat_template([{"role": "user", "content": "x"}]) is None
    assert isinstance(TOK, Tokenizer)
    assert TOK.fingerprint == CharTokenizer().fingerprint and len(TOK.fingerprint) == 64
    with pytest.raises(ValueError, match="outside the vocabulary"):
        TOK.decode([100])


def test_char_tokenizer_model_input():
    """encode_input (tokenization="trl"): BOS first, special-token strings as their ids."""
    assert TOK.encode_input("ab") == [TOK.bos_id, *TOK.encode("ab")]
    ids = [TOK.bos_id, *TOK.encode("a"), TOK.eos_id, TOK.pad_id, *TOK.encode("b"), TOK.unk_id]
    assert TOK.encode_input("a<eos><pad>b<unk>") == ids
    assert TOK.encode("<eos>") == TOK.encode("<") + TOK.encode("eos>")  # encode: plain text
    assert TOK.encode_chat([{"role": "user", "content": "x"}], add_generation_prompt=True) is None


def test_render_messages_plain_and_chat_template():
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]
    assert render_messages(msgs, TOK) == "System: S\nUser: Q\nAssistant: "
    assert render_messages(msgs) == render_messages(msgs, TOK)
    assert render_messages(msgs, ChatTokenizer()) == "<system>S<user>Q<assistant>"
    assert render_completion([{"role": "assistant", "content": "a"}] * 2) == "aa"
    with pytest.raises(ValueError, match="role 'bot'"):
        render_messages([{"role": "bot", "content": "x"}])
    with pytest.raises(ValueError, match="only assistant"):
        render_completion([{"role": "user", "content": "x"}])


# ------------------------------------------------------------------------- reading
def test_read_round_trip_skips_blank_lines(tmp_path):
    path = write_lines(tmp_path / "t.jsonl", [row(), "", "   ", row("2+2=", "4", "5")])
    pairs = read_preference_jsonl(path)
    assert pairs == [
        PreferencePair("1+1=", "2", "3", f"{path}:1"),
        PreferencePair("2+2=", "4", "5", f"{path}:4"),
    ]


def test_read_conversational_form(tmp_path):
    line = json.dumps(
        {
            "prompt": [{"role": "user", "content": "1+1="}],
            "chosen": [{"role": "assistant", "content": "2"}],
            "rejected": [{"role": "assistant", "content": "3"}],
            "extra": 1,
        }
    )
    path = write_lines(tmp_path / "c.jsonl", [line])
    (pair,) = read_preference_jsonl(path)
    assert (pair.prompt, pair.chosen, pair.rejected) == ("User: 1+1=\nAssistant: ", "2", "3")
    (pair,) = read_preference_jsonl(path, ChatTokenizer())
    assert pair.prompt == "<user>1+1=<assistant>"
    # the messages are kept as written, for tokenization="trl"
    assert pair.messages == (
        [{"role": "user", "content": "1+1="}],
        [{"role": "assistant", "content": "2"}],
        [{"role": "assistant", "content": "3"}],
    )
    assert read_preference_jsonl(write_lines(tmp_path / "p.jsonl", [row()]))[0].messages is None


@pytest.mark.parametrize(
    "bad, message",
    [
        ('{"prompt": "x", "chosen": ', r"t\.jsonl:2: not valid JSON"),
        ("[1, 2]", r"t\.jsonl:2: got a JSON list"),
        ('{"prompt": "x"}', r"t\.jsonl:2: missing key\(s\) 'chosen', 'rejected'"),
        ('{"prompt": 3, "chosen": "a", "rejected": "b"}', r"t\.jsonl:2: 'prompt' must be a str"),
        ('{"prompt": "x", "chosen": "a", "rejected": null}', r"t\.jsonl:2: 'rejected' must be"),
        ('{"prompt": "x", "chosen": " ", "rejected": "b"}', r"t\.jsonl:2: 'chosen' is empty"),
        (
            '{"prompt": "x", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"}',
            r"t\.jsonl:2: 'chosen': .*only assistant",
        ),
    ],
)
def test_read_errors_name_file_and_line(tmp_path, bad, message):
    path = write_lines(tmp_path / "t.jsonl", [row(), bad])
    with pytest.raises(ValueError, match=message):
        read_preference_jsonl(path)


def test_empty_task_file(tmp_path):
    path = write_lines(tmp_path / "empty.jsonl", ["", "  "])
    with pytest.raises(ValueError, match=r"task file .*empty\.jsonl has no examples"):
        read_preference_jsonl(path)


# ------------------------------------------------------------------------ manifest
def test_manifest_toml_and_json_relative_paths(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("a.jsonl", "a_eval.jsonl", "b.jsonl"):
        write_lines(data / name, [row()])
    (tmp_path / "m.toml").write_text(
        '[tasks.a]\ntrain = "data/a.jsonl"\neval = "data/a_eval.jsonl"\n'
        '[tasks.b]\ntrain = "data/b.jsonl"\n'
    )
    spec = {"tasks": {"a": {"train": "a.jsonl", "eval": "a_eval.jsonl"}, "b": {"train": "b.jsonl"}}}
    (data / "m.json").write_text(json.dumps(spec))
    expected = {
        "a": TaskFiles(train=data / "a.jsonl", eval=data / "a_eval.jsonl"),
        "b": TaskFiles(train=data / "b.jsonl", eval=None),
    }
    for manifest in (tmp_path / "m.toml", data / "m.json"):
        tasks = load_manifest(manifest)
        assert list(tasks) == ["a", "b"]
        assert {k: (v.train.resolve(), v.eval and v.eval.resolve()) for k, v in tasks.items()} == {
            k: (v.train.resolve(), v.eval and v.eval.resolve()) for k, v in expected.items()
        }


def test_manifest_errors(tmp_path):
    write_lines(tmp_path / "a.jsonl", [row()])
    m = tmp_path / "m.toml"
    m.write_text('[tasks.a]\ntrain = "a.jsonl"\neval = "missing.jsonl"\n')
    with pytest.raises(FileNotFoundError, match=r"task 'a': eval file .*missing\.jsonl"):
        load_manifest(m)
    m.write_text('[tasks.a]\neval = "a.jsonl"\n')
    with pytest.raises(ValueError, match="task 'a' has no train file"):
        load_manifest(m)
    m.write_text('[tasks.a]\ntrain = "a.jsonl"\nevaluation = "a.jsonl"\n')
    with pytest.raises(ValueError, match="unknown key"):
        load_manifest(m)
    m.write_text("title = 'x'\n")
    with pytest.raises(ValueError, match="no tasks"):
        load_manifest(m)
    with pytest.raises(ValueError, match=r"\.toml or \.json"):
        load_manifest(tmp_path / "m.yaml")


# -------------------------------------------------------------------- tokenisation
def pair(prompt, chosen, rejected, source="f.jsonl:1"):
    return PreferencePair(prompt, chosen, rejected, source)


def test_sequences_and_loss_mask():
    tp = tokenize_pairs([pair("ab", "xyz", "w")], TOK, max_length=16)
    bos, eos = TOK.bos_id, TOK.eos_id
    assert tp.chosen[0].tolist() == [bos, *TOK.encode("abxyz"), eos]
    assert tp.rejected[0].tolist() == [bos, *TOK.encode("abw"), eos]
    assert tp.chosen[0].dtype == np.int32 and tp.prompt_lengths.tolist() == [3]
    batch = collate_pairs(tp, [0], TOK.pad_id)
    mask = batch["loss_mask"]
    # completion + EOS exactly; BOS, prompt and padding masked out
    assert mask[0].tolist() == [False] * 3 + [True] * 4
    assert mask[1].tolist() == [False] * 3 + [True] * 2 + [False] * 2
    ids = batch["input_ids"]
    assert ids[0][mask[0]].tolist() == [*TOK.encode("xyz"), eos]
    assert ids[1][mask[1]].tolist() == [*TOK.encode("w"), eos]


def test_no_duplicated_bos_eos_at_boundary():
    tok = SpecialsTokenizer()
    tp = tokenize_pairs([pair("ab", "c", "d")], tok, max_length=16)
    assert tp.chosen[0].tolist() == [tok.bos_id, *TOK.encode("abc"), tok.eos_id]
    for seq in (tp.chosen[0], tp.rejected[0]):
        assert (seq == tok.bos_id).sum() == 1 and (seq == tok.eos_id).sum() == 1
    assert tp.prompt_lengths.tolist() == [3]


def test_no_bos_tokenizer():
    tok = NoBosTokenizer()
    tp = tokenize_pairs([pair("ab", "c", "d")], tok, max_length=8)
    assert tp.chosen[0].tolist() == [*TOK.encode("abc"), tok.eos_id]
    assert tp.prompt_lengths.tolist() == [2]
    with pytest.raises(ValueError, match="empty prompt and the tokenizer has no BOS"):
        tokenize_pairs([pair("", "c", "d")], tok, max_length=8)


def test_prompt_too_long_error_and_left_truncation():
    long = pair("abcdefghij", "x", "y", source="tasks/a.jsonl:7")
    with pytest.raises(
        ValueError, match=r"tasks/a\.jsonl:7: prompt is 10 tokens.*max_prompt_length=8"
    ):
        tokenize_pairs([long], TOK, max_length=16)
    with pytest.raises(ValueError, match='truncate_prompt="left"'):
        tokenize_pairs([long], TOK, max_length=16)
    tp = tokenize_pairs([long], TOK, max_length=16, truncate_prompt="left")
    assert tp.chosen[0].tolist() == [TOK.bos_id, *TOK.encode("cdefghijx"), TOK.eos_id]
    assert tp.prompt_lengths.tolist() == [9]
    tp = tokenize_pairs([long], TOK, max_length=16, max_prompt_length=10)
    assert tp.prompt_lengths.tolist() == [11]


def test_completion_truncated_on_the_right_and_counted():
    tp = tokenize_pairs([pair("ab", "xyzuvw", "x")], TOK, max_length=6)
    assert tp.chosen[0].tolist() == [TOK.bos_id, *TOK.encode("abxyz")]  # EOS dropped
    assert tp.rejected[0].tolist() == [TOK.bos_id, *TOK.encode("abx"), TOK.eos_id]
    assert (tp.chosen_truncated, tp.rejected_truncated) == (1, 0)
    # exactly filling max_length with the EOS is not a truncation
    tp = tokenize_pairs([pair("ab", "xy", "x")], TOK, max_length=6, max_prompt_length=2)
    assert tp.chosen_truncated == 0 and len(tp.chosen[0]) == 6


def test_tokenize_errors():
    with pytest.raises(ValueError, match="encodes to no token"):
        tokenize_pairs([pair("a", "", "b", source="s.jsonl:3")], TOK, max_length=8)
    with pytest.raises(ValueError, match=r"s\.jsonl:3"):
        tokenize_pairs([pair("a", "", "b", source="s.jsonl:3")], TOK, max_length=8)
    with pytest.raises(ValueError, match="no room"):
        tokenize_pairs([pair("a", "b", "c")], TOK, max_length=8, max_prompt_length=7)
    with pytest.raises(ValueError, match="truncate_prompt"):
        tokenize_pairs([pair("a", "b", "c")], TOK, max_length=8, truncate_prompt="right")


def test_fingerprint_tracks_ids_and_settings():
    pairs = [pair("1+1=", "2", "3"), pair("2+2=", "4", "5")]
    fp = tokenize_pairs(pairs, TOK, max_length=16).fingerprint
    assert fp == tokenize_pairs(pairs, TOK, max_length=16).fingerprint
    assert fp != tokenize_pairs(pairs[::-1], TOK, max_length=16).fingerprint
    assert fp != tokenize_pairs(pairs, TOK, max_length=17).fingerprint
    assert fp != tokenize_pairs([pair("1+1=", "2", "4"), pairs[1]], TOK, max_length=16).fingerprint


# ----------------------------------------------------------------------- collation
def test_collate_shapes_order_and_padding():
    pairs = [pair("a", "b", "cc"), pair("dddd", "eeeeee", "f"), pair("g", "h", "i")]
    tp = tokenize_pairs(pairs, TOK, max_length=16)
    batch = collate_pairs(tp, np.array([2, 0]), pad_id=TOK.pad_id)
    ids, att, mask = batch["input_ids"], batch["attention_mask"], batch["loss_mask"]
    assert ids.shape == att.shape == mask.shape == (4, 5)  # longest in this batch, not 16
    assert ids.dtype == torch.long and att.dtype == torch.long and mask.dtype == torch.bool
    rows = [tp.chosen[2], tp.chosen[0], tp.rejected[2], tp.rejected[0]]
    for r, seq in enumerate(rows):
        n = len(seq)
        assert ids[r, :n].tolist() == seq.tolist()
        assert (ids[r, n:] == TOK.pad_id).all() and att[r].tolist() == [1] * n + [0] * (5 - n)
        start = int(tp.prompt_lengths[[2, 0, 2, 0][r]])
        assert mask[r].tolist() == [start <= t < n for t in range(5)]
    assert not (mask & ~att.bool()).any() and not mask[:, 0].any()
    assert collate_pairs(tp, [1], pad_id=TOK.pad_id)["input_ids"].shape == (2, 12)
    with pytest.raises(IndexError):
        collate_pairs(tp, [3], pad_id=0)
    with pytest.raises(ValueError, match="empty"):
        collate_pairs(tp, [], pad_id=0)
