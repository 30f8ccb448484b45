"""Tiny local models and task datasets for offline smoke runs and tests (nothing downloaded).

:func:`write_tiny_model` trains a byte-level BPE tokenizer with the ``tokenizers`` package
on the texts it is given, builds a small GPT-2 (:class:`transformers.GPT2Config`) whose
weights depend on ``seed`` only, and saves both to a folder that TRL loads like any model
path.  :func:`synthetic_task_datasets` turns the built-in preference tasks of
:mod:`llm.synth` (arithmetic, safety, format) into TRL-format datasets
(``prompt``/``chosen``/``rejected`` columns).

>>> import tempfile
>>> data = synthetic_task_datasets({"arithmetic": 4, "format": 3}, seed=0)
>>> {name: len(ds) for name, ds in data.items()}
{'arithmetic': 4, 'format': 3}
>>> path = write_tiny_model(tempfile.mkdtemp(), dataset_texts(data), seed=0)
>>> from transformers import AutoModelForCausalLM
>>> AutoModelForCausalLM.from_pretrained(path).config.n_layer
1
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["write_tiny_model", "synthetic_task_datasets", "dataset_texts"]

SPECIALS = ("<eos>", "<pad>")


def synthetic_task_datasets(
    sizes: Mapping[str, int], *, seed: int = 0, conflict: float = 0.2
) -> dict[str, Any]:
    """``{task: Dataset}`` of ``sizes[task]`` training pairs of each built-in task."""
    from datasets import Dataset

    from llm.synth import generate_task

    out = {}
    for name, size in sizes.items():
        rows, _ = generate_task(name, size, 1, seed=seed, conflict=conflict)
        out[name] = Dataset.from_dict(
            {
                "prompt": [p for p, _, _ in rows],
                "chosen": [c for _, c, _ in rows],
                "rejected": [r for _, _, r in rows],
            }
        )
    return out


def dataset_texts(datasets: Mapping[str, Any]) -> list[str]:
    """Every prompt + completion of the datasets (a tokenizer's training corpus)."""
    texts = []
    for ds in datasets.values():
        for row in ds:
            texts += [row["prompt"] + row["chosen"], row["prompt"] + row["rejected"]]
    return texts


def write_tiny_model(
    folder: str | Path,
    texts: Iterable[str],
    *,
    seed: int = 0,
    vocab_size: int = 300,
    n_layer: int = 1,
    n_embd: int = 32,
    n_positions: int = 64,
) -> str:
    """Save a tokenizer trained on ``texts`` and a fresh tiny GPT-2 into ``folder``."""
    import tokenizers
    import torch
    import transformers

    bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIALS),
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(list(texts), trainer)
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token=SPECIALS[0], pad_token=SPECIALS[1]
    )
    eos = tokenizer.eos_token_id
    config = transformers.GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=n_positions,
        n_layer=n_layer,
        n_head=2,
        n_embd=n_embd,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.GPT2LMHeadModel(config)
    folder = Path(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)
