"""llm.trl.load_task_datasets: the pipeline's data layout in TRL, read by the pipeline's reader.

One reader (llm.data) for both entry points: a manifest, a folder holding one, a folder of
``<task>.train.jsonl``/``<task>.eval.jsonl`` and a folder of ``<task>.jsonl`` give the same
datasets, audited as the pipeline audits them, every bad row named by ``file:line``.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("trl")
pytest.importorskip("datasets")

from trl_helpers import dpo_args, quiet

from llm.data import DataWarning, find_task_files
from llm.synth import write_suite
from llm.tokenizer import CharTokenizer
from llm.trl import load_task_datasets

TOK = CharTokenizer()
SIZES = {"arithmetic": (6, 3), "safety": (4, 2), "format": (5, 0)}


def write_rows(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def as_rows(datasets: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    return {task: ds.to_list() for task, ds in datasets.items()}


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


@pytest.fixture
def suite(tmp_path) -> Path:
    """The pipeline's layout: tasks.toml naming <task>.train.jsonl and <task>.eval.jsonl."""
    return write_suite(tmp_path / "suite", seed=3, sizes=SIZES)


def test_every_layout_gives_the_same_datasets(suite, tmp_path):
    from datasets import load_dataset

    splits = tmp_path / "splits"  # the same files, no manifest
    splits.mkdir()
    for file in suite.parent.glob("*.jsonl"):
        shutil.copy(file, splits)
    flat = tmp_path / "flat"  # one <task>.jsonl per task: the training pairs
    flat.mkdir()
    for task, files in find_task_files(suite).items():
        shutil.copy(files.train, flat / f"{task}.jsonl")

    train = as_rows(load_task_datasets(suite, TOK))
    assert list(train) == ["arithmetic", "safety", "format"]  # manifest order
    assert {t: len(r) for t, r in train.items()} == {t: n for t, (n, _) in SIZES.items()}
    for layout in (suite.parent, splits, flat):
        assert as_rows(load_task_datasets(layout, TOK)) == train
    evaluation = as_rows(load_task_datasets(suite, TOK, split="eval"))
    assert {t: len(r) for t, r in evaluation.items()} == {"arithmetic": 3, "safety": 2}
    assert as_rows(load_task_datasets(splits, TOK, split="eval")) == evaluation
    assert load_task_datasets(flat, TOK, split="eval") == {}
    # what TRL's own loader made of these files (the example's former reader), row for row
    for task, rows in train.items():
        trl_rows = load_dataset("json", data_files=str(flat / f"{task}.jsonl"), split="train")
        assert trl_rows.to_list() == rows


def test_a_bad_row_is_named_by_file_and_line(suite, tmp_path):
    bad = suite.parent / "safety.eval.jsonl"
    bad.write_text(bad.read_text() + '{"prompt": "x", "chosen": "y"}\n')
    load_task_datasets(suite, TOK)  # the training split is fine
    with pytest.raises(ValueError, match=r"safety\.eval\.jsonl:3: missing key\(s\) 'rejected'"):
        load_task_datasets(suite, TOK, split="eval")
    folder = tmp_path / "flat"
    folder.mkdir()
    write_rows(folder / "a.jsonl", [{"prompt": "1+1=", "chosen": "2", "rejected": "3"}])
    (folder / "b.jsonl").write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n{"prompt"\n')
    with pytest.raises(ValueError, match=r"b\.jsonl:2: not valid JSON"):
        load_task_datasets(folder, TOK)


def test_the_audit_is_the_pipelines(tmp_path):
    row = {"prompt": "1+1=", "chosen": "2", "rejected": "3"}
    path = write_rows(tmp_path / "math.jsonl", [row, {**row, "chosen": "3"}, row])
    with pytest.warns(DataWarning) as caught:
        load_task_datasets(tmp_path, TOK)
    messages = sorted(str(w.message) for w in caught)
    assert messages == [
        f"task 'math' (train, {path}): 1 of 3 pairs have chosen = rejected (nothing to prefer) "
        f"(first: {path}:2)",
        f"task 'math' (train, {path}): 1 of 3 rows repeat an earlier row (first: {path}:3)",
    ]
    with pytest.raises(ValueError, match=r"rows repeat an earlier row .*math\.jsonl:3"):
        load_task_datasets(tmp_path, TOK, strict=True)
    # TRL's tokenisation at TRL's max_length: a prompt that fills it is dropped, and said so
    (tmp_path / "long").mkdir()
    long = write_rows(tmp_path / "long" / "long.jsonl", [{**row, "prompt": "9" * 12}, row])
    with pytest.warns(DataWarning, match=rf"pairs were dropped.*\(first: {long}:1\)"):
        datasets = load_task_datasets(long.parent, TOK, max_length=8)
    assert len(datasets["long"]) == 2  # TRL drops it itself, as it would without the audit
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_task_datasets(long.parent, TOK, max_length=None)  # TRL: no truncation


def test_split_files_are_splits_never_tasks(tmp_path):
    row = {"prompt": "1+1=", "chosen": "2", "rejected": "3"}
    write_rows(tmp_path / "x.train.jsonl", [row])
    write_rows(tmp_path / "x.eval.jsonl", [row, {**row, "chosen": "4"}])
    write_rows(tmp_path / "y.eval.jsonl", [row])
    with pytest.raises(ValueError, match=r"y\.eval\.jsonl has no training file: add y\.train"):
        load_task_datasets(tmp_path, TOK)
    (tmp_path / "y.eval.jsonl").unlink()
    assert {t: len(d) for t, d in load_task_datasets(tmp_path, TOK, split="eval").items()} == {
        "x": 2
    }
    write_rows(tmp_path / "x.jsonl", [row])
    with pytest.raises(ValueError, match=r"task 'x' has two training files, x\.jsonl and x\.train"):
        load_task_datasets(tmp_path, TOK)


def test_layout_errors_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="pass a manifest"):
        load_task_datasets(tmp_path / "missing", TOK)
    with pytest.raises(ValueError, match=r"holds no \.jsonl file"):
        load_task_datasets(tmp_path, TOK)
    (tmp_path / "tasks.toml").write_text("")
    (tmp_path / "tasks.json").write_text("{}")
    with pytest.raises(ValueError, match=r"holds tasks\.toml and tasks\.json: keep one"):
        load_task_datasets(tmp_path, TOK)
    with pytest.raises(ValueError, match="split must be 'train' or 'eval'"):
        load_task_datasets(tmp_path, TOK, split="test")


class ChatTokenizer(CharTokenizer):
    """A character tokenizer with a chat template (role: content lines)."""

    def encode_chat(self, messages, *, add_generation_prompt, **template_kwargs):
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
        return [self.bos_id, *self.encode(text + ("assistant: " if add_generation_prompt else ""))]


def test_one_format_per_task_file(tmp_path):
    rows = [
        {"prompt": "q", "chosen": "a", "rejected": "b"},
        {"prompt": [user("q")], "chosen": [assistant("a")], "rejected": [assistant("b")]},
    ]
    write_rows(tmp_path / "mixed.jsonl", rows)
    with pytest.raises(
        ValueError, match=r"mixed\.jsonl:2: a conversational row .*mixed\.jsonl:1\) is plain text"
    ):
        load_task_datasets(tmp_path, ChatTokenizer())


# ------------------------------------------------- conversations, through TRL's DPOTrainer
TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}<eos>{% endfor %}"
    "{% if tools %}[tools]{% endif %}{% if enable_thinking %}[think]{% endif %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def test_conversations_with_template_arguments_train_in_trl(tmp_path):
    """Messages and each row's own chat-template arguments reach TRL's DPOTrainer as written:
    the trainer's tokenisation of the datasets is the audit's, id for id."""
    from transformers import AutoTokenizer
    from trl import DPOTrainer

    from llm.data import read_preference_jsonl, tokenize_pairs
    from llm.hf import HFTokenizer
    from llm.trl.tiny import write_tiny_model

    quiet()
    conversation = {"prompt": [user("1+1=")], "chosen": [assistant("2")]}
    rows = [
        {**conversation, "rejected": [assistant("3")]},
        {
            **conversation,
            "rejected": [assistant("4")],
            "chat_template_kwargs": {"enable_thinking": True},
        },
        {**conversation, "rejected": [assistant("5")], "tools": [{"name": "add"}]},
    ]
    data = tmp_path / "data"
    data.mkdir()
    write_rows(data / "chat.jsonl", rows)
    model = write_tiny_model(tmp_path / "model", ["<user>1+1=<eos><assistant>2345[think][tools]"])
    tokenizer = AutoTokenizer.from_pretrained(model)
    tokenizer.chat_template = TEMPLATE
    datasets = load_task_datasets(data, tokenizer)
    assert datasets["chat"]["chat_template_kwargs"] == [{}, {"enable_thinking": True}, {}]
    assert datasets["chat"]["tools"] == [None, None, [{"name": "add"}]]
    assert datasets["chat"]["prompt"] == [conversation["prompt"]] * 3

    trainer = DPOTrainer(
        model,
        args=dpo_args(tmp_path / "run"),
        train_dataset=datasets["chat"],
        processing_class=tokenizer,
    )
    tok = HFTokenizer(tokenizer)
    ours = tokenize_pairs(
        read_preference_jsonl(data / "chat.jsonl", tok), tok, max_length=1024, tokenization="trl"
    )
    for i, row in enumerate(trainer.train_dataset):
        prompt = row["prompt_ids"]
        assert prompt + row["chosen_ids"] == ours.chosen[i].tolist()
        assert prompt + row["rejected_ids"] == ours.rejected[i].tolist()
    chosen = [tok.decode(ids) for ids in ours.chosen]  # each row's arguments reached it
    assert [("[think]" in c, "[tools]" in c) for c in chosen] == [(0, 0), (1, 0), (0, 1)]
    trainer.train()
