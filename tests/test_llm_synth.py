"""llm.synth: the generated task suite is deterministic, sized, readable and conflicting."""

from __future__ import annotations

import doctest
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("torch")

import llm.synth
from llm.data import load_manifest, read_preference_jsonl, tokenize_pairs
from llm.synth import (
    DEFAULT_SIZES,
    MARKER,
    REFUSAL,
    SUITE_SIZES,
    SUITES,
    TASKS,
    exact_match,
    generate_task,
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


# ----------------------------------------------------------------- the learnable suite
def digest(directory):
    h = hashlib.sha256()
    for path in sorted(directory.iterdir()):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_the_classic_suite_is_unchanged_by_the_suite_option(tmp_path):
    """The classic suite (tiny-cpu's) keeps the bytes it had before ``suite`` existed."""
    default = write_suite(tmp_path / "a", seed=0).parent
    classic = write_suite(tmp_path / "b", seed=0, suite="classic").parent
    assert digest(default) == digest(classic)
    assert digest(default) == "bb413b90815b215974b24762338021dcf36db59ba12ee59a5ed2710e05875e3b"


@pytest.fixture(scope="module")
def learnable(tmp_path_factory):
    return write_suite(tmp_path_factory.mktemp("learnable"), seed=0, suite="learnable")


def test_learnable_suite_sizes_and_shapes(learnable):
    tasks = load_manifest(learnable)
    assert list(tasks) == list(TASKS)
    pairs = {}
    for name, tf in tasks.items():
        train, evaluation = read_preference_jsonl(tf.train), read_preference_jsonl(tf.eval)
        assert (len(train), len(evaluation)) == SUITE_SIZES["learnable"][name]
        prompts = [p.prompt for p in train + evaluation]
        assert len(set(prompts)) == len(prompts)  # unique; eval disjoint from train
        pairs[name] = train + evaluation
    for p in pairs["arithmetic"]:
        a, b = p.prompt.removeprefix(MARKER)[:-1].split("+")  # sums only
        assert 0 <= int(a) < 1000 and 0 <= int(b) < 10
    for p in pairs["format"]:
        word = p.prompt.removeprefix(MARKER).split("(")[1][:-2]
        assert 3 <= len(word) <= 5
    tok = CharTokenizer()
    for name, rows in pairs.items():
        tp = tokenize_pairs(rows, tok, max_length=36, max_prompt_length=24)
        assert tp.chosen_truncated == tp.rejected_truncated == 0
        for p in rows:
            assert reference_answer(name, p.prompt) == p.chosen != p.rejected


def test_learnable_suite_conflicts_like_the_classic_one(learnable):
    tasks = load_manifest(learnable)
    pairs = {name: read_preference_jsonl(tf.train) for name, tf in tasks.items()}
    safety_marked = [p for p in pairs["safety"] if p.prompt.startswith(MARKER)]
    assert 0.4 < len(safety_marked) / len(pairs["safety"]) < 0.6
    assert all(p.chosen == REFUSAL for p in safety_marked)
    for helpful in ("arithmetic", "format"):
        marked = [p for p in pairs[helpful] if p.prompt.startswith(MARKER)]
        assert 0.15 < len(marked) / len(pairs[helpful]) < 0.25  # conflict=0.2
        assert all(p.rejected == REFUSAL and p.chosen != REFUSAL for p in marked)
    sizes = {name: len(rows) for name, rows in pairs.items()}
    assert sizes["format"] > sizes["arithmetic"] > sizes["safety"]  # imbalanced


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    task=st.sampled_from(TASKS),
    suite=st.sampled_from(SUITES),
    n_train=st.integers(1, 40),
    n_eval=st.integers(0, 20),
)
def test_every_suite_gives_unique_consistent_prompts(seed, task, suite, n_train, n_eval):
    train, evaluation = generate_task(task, n_train, n_eval, seed=seed, suite=suite)
    assert (len(train), len(evaluation)) == (n_train, n_eval)
    prompts = [p for p, _, _ in train + evaluation]
    assert len(set(prompts)) == len(prompts)
    for prompt, chosen, rejected in train + evaluation:
        assert reference_answer(task, prompt) == chosen != rejected


def test_unknown_suite_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown suite 'huge'"):
        write_suite(tmp_path, suite="huge")
    with pytest.raises(ValueError, match="unknown suite"):
        generate_task("format", 2, 0, suite="")
