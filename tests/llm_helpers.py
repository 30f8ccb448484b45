"""Tiny builders shared by the llm oracle / train / pipeline / distributed tests.

Everything is small enough for a 2-core CPU: a 1-layer GPT (n_embd 32, block 64), the
built-in synthetic tasks at a few dozen pairs each, sequences of at most 48 tokens.
Imported as ``from llm_helpers import ...`` (pytest puts ``tests/`` on ``sys.path``; the
spawned workers of the distributed tests inherit it).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llm.data import PreferencePair, TokenizedPairs, tokenize_pairs
from llm.model import GPT, GPTConfig
from llm.oracle import DPOOracle, TaskData, dpo_settings, reference_logps
from llm.synth import TASKS, generate_task
from llm.tokenizer import CharTokenizer

SIZES: dict[str, tuple[int, int]] = {"arithmetic": (40, 10), "safety": (30, 10), "format": (60, 10)}
MAX_LENGTH = 48
DPO = {"beta": 0.1, "loss_type": "sigmoid", "label_smoothing": 0.0}
TOKENIZER = CharTokenizer()


def tiny_gpt(seed: int = 0, vocab_size: int = TOKENIZER.vocab_size) -> GPT:
    """A 1-layer GPT whose weights depend on ``seed`` only."""
    config = GPTConfig(vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=32)
    return GPT(config, generator=torch.Generator().manual_seed(seed))


def synthetic_pairs(
    sizes: Mapping[str, tuple[int, int]] = SIZES, seed: int = 0
) -> dict[str, tuple[list[PreferencePair], list[PreferencePair]]]:
    """(train, eval) preference pairs of every built-in task named in ``sizes``."""
    out = {}
    for task in TASKS:
        if task not in sizes:
            continue
        train, evaluation = generate_task(task, *sizes[task], seed=seed)
        out[task] = tuple(
            [PreferencePair(p, c, r, f"{task}:{i}") for i, (p, c, r) in enumerate(rows)]
            for rows in (train, evaluation)
        )
    return out


@functools.cache
def char_tasks(seed: int = 0) -> tuple[tuple[str, TokenizedPairs, TokenizedPairs], ...]:
    """(name, train, eval) token ids of the tiny suite under the character tokenizer."""
    return tuple(
        (name, *(tokenize_pairs(p, TOKENIZER, max_length=MAX_LENGTH) for p in splits))
        for name, splits in synthetic_pairs(SIZES, seed).items()
    )


def specialist_like(n: int, salt: int) -> np.ndarray:
    """Stand-in specialist losses around log 2, so clipping bites on some pairs."""
    return np.random.default_rng(salt).uniform(0.55, 0.75, size=n)


def task_data(
    model: torch.nn.Module,
    tasks=None,
    *,
    split: str = "train",
    pad_id: int = TOKENIZER.pad_id,
    dpo: Mapping[str, Any] = DPO,
) -> list[TaskData]:
    """TaskData of ``tasks`` (default: the tiny suite) with reference log-probs of ``model``."""
    tasks = char_tasks() if tasks is None else tasks
    column = {"train": 1, "eval": 2}[split]
    out = []
    for i, row in enumerate(tasks):
        pairs = row[column]
        ref = reference_logps(model, pairs, pad_id=pad_id, average=dpo["loss_type"] == "ipo")
        out.append(TaskData(row[0], pairs, ref, specialist_like(len(pairs), i)))
    return out


def build_oracle(
    *,
    seed: int = 0,
    wrap: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
    poison: Callable[[list[TaskData]], None] | None = None,
    dpo: Mapping[str, Any] = DPO,
    **kwargs: Any,
) -> DPOOracle:
    """A DPOOracle over a fresh tiny GPT at its initial (reference) weights.

    ``poison(train_tasks)`` may edit the task data before the oracle copies it; ``wrap``
    wraps the policy (e.g. in DistributedDataParallel); ``kwargs`` go to DPOOracle.
    """
    model = tiny_gpt(seed)
    train = task_data(model, dpo=dpo)
    if poison is not None:
        poison(train)
    policy = model if wrap is None else wrap(model)
    settings = dpo_settings(**dpo)
    return DPOOracle(policy, train, pad_id=TOKENIZER.pad_id, dpo=settings, **kwargs)


def unwrap(oracle: DPOOracle) -> torch.nn.Module:
    """The bare model of an oracle (through a DistributedDataParallel wrapper)."""
    return getattr(oracle.policy, "module", oracle.policy)


def parameters(oracle: DPOOracle) -> dict[str, torch.Tensor]:
    """A detached copy of the policy's state dict (bare model names)."""
    return {k: v.detach().clone() for k, v in unwrap(oracle).state_dict().items()}


def flat_state(state: Any) -> list[np.ndarray]:
    """The arrays of a mixer state (nested NamedTuples), in field order."""
    if isinstance(state, tuple):
        return [a for field in state for a in flat_state(field)]
    return [np.asarray(state)]


# ----------------------------------------------------------------------------- pipeline
def write_suite_small(out_dir: Path, sizes: Mapping[str, tuple[int, int]] = SIZES) -> Path:
    """The built-in suite at the tiny sizes; returns the manifest path."""
    from llm.synth import write_suite

    return write_suite(out_dir, seed=0, sizes=dict(sizes))


def tiny_config_dict(out: Path, manifest: Path) -> dict[str, dict[str, Any]]:
    """Sections of a pipeline config that runs end to end in a few seconds on one core."""
    return {
        "run": {"out": str(out), "seeds": [0, 1], "threads": 1},
        "data": {"manifest": str(manifest), "max_length": MAX_LENGTH},
        "model": {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 64},
        "sft": {"steps": 20, "batch_size": 8},
        "specialist": {"steps": 5, "batch_size": 4, "checkpoint_every": 5},
        "generalist": {"batch_size": 4, "checkpoint_every": 10, "log_every": 1},
        "mix": {"examples": 24},
        "eval": {"generate": 3, "max_new_tokens": 4, "batch_size": 16},
    }


def write_toml(path: Path, sections: Mapping[str, Mapping[str, Any]]) -> Path:
    """A TOML file of ``sections`` (scalar and list values; JSON literals are TOML here)."""
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


# ------------------------------------------------------------------------- distributed
def init_gloo(rank: int, world: int, store: str) -> None:
    """Join a gloo group through a shared file (no port to pick)."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)


def reduce_inputs() -> list[tuple[np.ndarray, np.ndarray]]:
    """Per rank (means, counts), shape (1, 4); task 3 is absent everywhere, task 2 on rank 1."""
    return [
        (np.array([[0.5, 0.25, 0.0, 0.0]]), np.array([[3, 1, 0, 0]])),
        (np.array([[0.1, 0.75, 2.0, 0.0]]), np.array([[1, 3, 2, 0]])),
    ]


# ------------------------------------------------------------------------ failed writes
class FillsUp:
    """A file that takes ``room`` bytes, then fails with ``OSError(code, words)``: a full
    disk (ENOSPC), a file-size limit (EFBIG), an I/O error (EIO)."""

    def __init__(self, fh: Any, room: int, code: int = 28, words: str = "No space left on device"):
        self.fh, self.room, self.code, self.words = fh, room, code, words

    def write(self, data: Any) -> int:
        size = len(data.encode()) if isinstance(data, str) else memoryview(data).nbytes
        if size > self.room:
            raise OSError(self.code, self.words)
        self.room -= size
        return self.fh.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fh, name)

    def __enter__(self) -> FillsUp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.fh.close()
