"""The mixture's part of a Trainer checkpoint: mixer state, sampler position, history.

A mixer state is a tree of NamedTuples (``EGState``, ``HeldState(inner=EGState, …)``,
``AveragedState``, …) whose leaves are numpy arrays and Python numbers.  It is stored
flattened, leaf by leaf, in ``<checkpoint>/amasim_mixture.npz`` beside a JSON record of
what produced it (mixer name, tasks, sampler position); loading rebuilds the tree on the
structure of a fresh ``mixer.init`` and refuses a file whose structure, leaf shapes,
mixer or tasks differ.  No pickle: ``np.load(allow_pickle=False)`` reads it.  The write
goes to a temporary file renamed into place.

>>> import tempfile, numpy as np
>>> from amasim.mixers import ama_s
>>> mixer = ama_s(0.5, 0.1)
>>> state = mixer.init(2, seed=[0])
>>> _, state = mixer.update(state, np.array([[1.0, 0.0]]), np.array([[3, 1]]))
>>> d = tempfile.mkdtemp()
>>> path = save_mixture(d, state, {"mixer": mixer.name}, {"weights": np.zeros((1, 2))})
>>> loaded, meta, history = load_mixture(d, mixer.init(2, seed=[0]))
>>> np.array_equal(loaded.weights, state.weights), meta["mixer"] == mixer.name
(True, True)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["MIXTURE_FILE", "flatten", "unflatten", "save_mixture", "load_mixture"]

MIXTURE_FILE = "amasim_mixture.npz"


def flatten(state: Any) -> list[Any]:
    """The leaves of a NamedTuple tree, depth first in field order."""
    if isinstance(state, tuple):
        return [leaf for child in state for leaf in flatten(child)]
    return [state]


def unflatten(template: Any, leaves: list[Any]) -> Any:
    """The tree of ``template`` with its leaves replaced, in order, by ``leaves``.

    Each leaf must have its template leaf's shape; Python ints and floats come back as
    such.  A count or shape that does not fit raises ``ValueError``.
    """
    it = iter(leaves)

    def build(node: Any, path: str) -> Any:
        if isinstance(node, tuple):
            children = [build(c, f"{path}.{i}") for i, c in enumerate(node)]
            return type(node)(*children) if hasattr(node, "_fields") else tuple(children)
        try:
            leaf = next(it)
        except StopIteration:
            raise ValueError("the saved mixer state has fewer leaves than this mixer's") from None
        arr = np.asarray(leaf)
        if isinstance(node, (bool, np.bool_)) or not isinstance(node, (np.ndarray, int, float)):
            raise ValueError(f"cannot restore a mixer-state leaf of type {type(node).__name__}")
        if arr.shape != np.shape(node):
            raise ValueError(
                f"saved mixer-state leaf {path} has shape {arr.shape}, this mixer's has "
                f"{np.shape(node)}: the checkpoint is of another mixer or number of tasks"
            )
        if isinstance(node, np.ndarray):
            return arr.astype(node.dtype, copy=True)
        return type(node)(arr.item())

    out = build(template, "state")
    if next(it, None) is not None:
        raise ValueError("the saved mixer state has more leaves than this mixer's")
    return out


def save_mixture(
    folder: str | Path, state: Any, meta: dict[str, Any], history: dict[str, np.ndarray]
) -> Path:
    """Write ``folder/amasim_mixture.npz`` (atomically); returns its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {f"leaf_{i}": np.asarray(leaf) for i, leaf in enumerate(flatten(state))}
    arrays.update({f"history_{name}": np.asarray(v) for name, v in history.items()})
    arrays["meta"] = np.array(json.dumps(meta, sort_keys=True))
    path = folder / MIXTURE_FILE
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    tmp.replace(path)
    return path


def load_mixture(folder: str | Path, template: Any) -> tuple[Any, dict[str, Any], dict]:
    """(state, meta, history) from ``folder/amasim_mixture.npz``, rebuilt on ``template``."""
    path = Path(folder) / MIXTURE_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist: the checkpoint {folder} was not written by an "
            "AMADPOTrainer (no mixer state to resume); resume from one of its checkpoints"
        )
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        count = sum(1 for k in data.files if k.startswith("leaf_"))
        leaves = [data[f"leaf_{i}"] for i in range(count)]
        history = {k[len("history_") :]: data[k] for k in data.files if k.startswith("history_")}
    return unflatten(template, leaves), meta, history
