"""Tiny local models and task datasets for offline smoke runs and tests (nothing downloaded).

:func:`write_tiny_model` trains a byte-level BPE tokenizer with the ``tokenizers`` package
on the texts it is given, builds a small GPT-2 (:class:`transformers.GPT2Config`) or Llama
(:class:`transformers.LlamaConfig`) whose weights depend on ``seed`` only — with
``chatml``, the tokenizer carries a ChatML chat template (``<|im_start|>``/``<|im_end|>``,
the end of a turn its EOS) — and saves both to a folder that TRL loads like any model
path.  :func:`synthetic_task_datasets` turns the built-in preference tasks of
:mod:`llm.synth` (arithmetic, safety, format) into TRL-format datasets
(``prompt``/``chosen``/``rejected`` columns); :func:`task_texts` and
:func:`dataset_texts` give a tokenizer's training corpus.

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

__all__ = ["write_tiny_model", "synthetic_task_datasets", "dataset_texts", "task_texts", "CHATML"]

SPECIALS = ("<eos>", "<pad>")
CHATML_SPECIALS = ("<|im_start|>", "<|im_end|>", "<pad>")
#: the ChatML chat template (Qwen's, without a default system message)
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


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


def task_texts(path: str | Path) -> list[str]:
    """Every prompt + completion of the training files of the tasks in ``path`` (a
    manifest or a folder, :func:`llm.data.find_task_files`), as text (a conversation in
    the plain template).

    >>> import tempfile
    >>> from llm.synth import write_suite
    >>> sizes = {"arithmetic": (3, 1), "safety": (2, 0), "format": (1, 1)}
    >>> len(task_texts(write_suite(tempfile.mkdtemp(), sizes=sizes)))  # two texts a pair
    12
    """
    from llm.data import find_task_files, read_preference_jsonl

    texts = []
    for files in find_task_files(path).values():
        for pair in read_preference_jsonl(files.train):
            texts += [pair.prompt + pair.chosen, pair.prompt + pair.rejected]
    return texts


def _tokenizer(texts: Iterable[str], vocab_size: int, chatml: bool) -> Any:
    """A byte-level BPE tokenizer trained on ``texts`` (ChatML's specials and template)."""
    import tokenizers
    import transformers

    specials = CHATML_SPECIALS if chatml else SPECIALS
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(specials),
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(list(texts), trainer)
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token=specials[-2], pad_token=specials[-1]
    )
    if chatml:
        tokenizer.chat_template = CHATML
    return tokenizer


def _config(architecture: str, tokenizer: Any, n_layer: int, n_embd: int, n_positions: int) -> Any:
    import transformers

    ids = {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.eos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if architecture == "gpt2":
        return transformers.GPT2Config(
            n_positions=n_positions, n_layer=n_layer, n_head=2, n_embd=n_embd, **ids
        )
    if architecture == "llama":
        return transformers.LlamaConfig(
            hidden_size=n_embd,
            intermediate_size=2 * n_embd,
            num_hidden_layers=n_layer,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=n_positions,
            **ids,
        )
    raise ValueError(f"architecture={architecture!r}: use 'gpt2' or 'llama'")


def write_tiny_model(
    folder: str | Path,
    texts: Iterable[str],
    *,
    seed: int = 0,
    vocab_size: int = 300,
    n_layer: int = 1,
    n_embd: int = 32,
    n_positions: int = 64,
    architecture: str = "gpt2",
    chatml: bool = False,
) -> str:
    """Save a tokenizer trained on ``texts`` (with ``chatml``: ChatML's chat template) and
    a fresh tiny ``architecture`` (``"gpt2"`` or ``"llama"``) into ``folder``."""
    import torch
    import transformers

    tokenizer = _tokenizer(texts, vocab_size, chatml)
    config = _config(architecture, tokenizer, n_layer, n_embd, n_positions)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.AutoModelForCausalLM.from_config(config)
    folder = Path(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)
