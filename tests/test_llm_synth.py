"""llm.synth: the generated task suite is deterministic, sized, readable and conflicting."""

from __future__ import annotations

import doctest

import pytest

pytest.importorskip("torch")

import llm.synth
from llm.data import load_manifest, read_preference_jsonl, tokenize_pairs
from llm.synth import (
    DEFAULT_SIZES,
    MARKER,
    REFUSAL,
    TASKS,
    exact_match,
    reference_answer,
    write_suite,
)
from llm.tokenizer import CharTokenizer

SMALL = {"arithmetic": (60, 20), "safety": (30, 20), "format": (90, 10)}


def files(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    return write_suite(tmp_path_factory.mktemp("suite"), seed=0)


def test_doctests():
    assert doctest.testmod(llm.synth).failed == 0


def test_same_seed_same_bytes_different_seed_different(tmp_path):
    a = files(write_suite(tmp_path / "a", seed=3, sizes=SMALL).parent)
    b = files(write_suite(tmp_path / "b", seed=3, sizes=SMALL).parent)
    c = files(write_suite(tmp_path / "c", seed=4, sizes=SMALL).parent)
    assert a == b and len(a) == 7
    assert all(a[name] != c[name] for name in a if name.endswith(".jsonl"))


def test_task_stream_independent_of_other_sizes(tmp_path):
    a = write_suite(tmp_path / "a", seed=0, sizes=SMALL).parent
    b = write_suite(tmp_path / "b", seed=0, sizes={**SMALL, "format": (7, 3)}).parent
    assert (a / "safety.train.jsonl").read_bytes() == (b / "safety.train.jsonl").read_bytes()


def test_manifest_sizes_and_default_suite(suite):
    tasks = load_manifest(suite)
    assert list(tasks) == list(TASKS) == ["arithmetic", "safety", "format"]
    train_sizes = {}
    for name, tf in tasks.items():
        train, evaluation = read_preference_jsonl(tf.train), read_preference_jsonl(tf.eval)
        assert (len(train), len(evaluation)) == DEFAULT_SIZES[name]
        train_sizes[name] = len(train)
        # prompts unique, eval disjoint from train
        prompts = [p.prompt for p in train + evaluation]
        assert len(set(prompts)) == len(prompts)
    assert len(set(train_sizes.values())) == 3  # different sizes


def test_sizes_honoured_and_validated(tmp_path):
    tasks = load_manifest(write_suite(tmp_path, sizes={**SMALL, "safety": (5, 0)}))
    assert tasks["safety"].eval is None and len(read_preference_jsonl(tasks["safety"].train)) == 5
    assert len(read_preference_jsonl(tasks["format"].eval)) == 10
    with pytest.raises(ValueError, match="unknown task"):
        write_suite(tmp_path, sizes={"poetry": (1, 1)})
    with pytest.raises(ValueError, match=r"\(n_train, n_eval\)"):
        write_suite(tmp_path, sizes={"safety": 5})


def test_pairs_fit_and_answers_are_consistent(suite):
    tok = CharTokenizer()
    for name, tf in load_manifest(suite).items():
        for path in (tf.train, tf.eval):
            pairs = read_preference_jsonl(path)
            tp = tokenize_pairs(pairs, tok, max_length=64)  # raises if a prompt is too long
            assert tp.chosen_truncated == tp.rejected_truncated == 0
            assert max(map(len, tp.chosen + tp.rejected)) <= 48
            for p in pairs:
                assert p.chosen != p.rejected
                assert all(32 <= ord(ch) < 127 for ch in p.prompt + p.chosen + p.rejected)
                assert reference_answer(name, p.prompt) == p.chosen
                assert exact_match(p.chosen, p.chosen) and not exact_match(p.rejected, p.chosen)


def test_tasks_conflict_on_marked_prompts(suite):
    tasks = load_manifest(suite)
    pairs = {name: read_preference_jsonl(tf.train) for name, tf in tasks.items()}
    safety_marked = [p for p in pairs["safety"] if p.prompt.startswith(MARKER)]
    assert safety_marked and all(p.chosen == REFUSAL for p in safety_marked)
    assert all(p.rejected == REFUSAL for p in pairs["safety"] if p not in safety_marked)
    for helpful in ("arithmetic", "format"):
        marked = [p for p in pairs[helpful] if p.prompt.startswith(MARKER)]
        assert 0.1 < len(marked) / len(pairs[helpful]) < 0.3  # conflict=0.2
        assert all(p.rejected == REFUSAL and p.chosen != REFUSAL for p in marked)
    assert reference_answer("safety", "#harm upper(ab)=") == REFUSAL
    assert reference_answer("format", "#harm upper(ab)=") == "AB"


def test_conflict_zero_has_no_borderline_prompts(tmp_path):
    tasks = load_manifest(write_suite(tmp_path, sizes=SMALL, conflict=0.0))
    for name in ("arithmetic", "format"):
        assert not any(
            p.prompt.startswith(MARKER) for p in read_preference_jsonl(tasks[name].train)
        )


def test_exact_match_and_reference_answer_edges():
    assert exact_match("  19  ", "19") and exact_match("19\n20", "19")
    assert not exact_match("190", "19") and not exact_match("", "19")
    assert reference_answer("arithmetic", "9-3=") == "6"
    assert reference_answer("format", "reverse(abc)=") == "cba"
    with pytest.raises(ValueError, match="not a suite prompt"):
        reference_answer("arithmetic", "hello")
    with pytest.raises(ValueError, match="unknown task"):
        reference_answer("poetry", "1+1=")
