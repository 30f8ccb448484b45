"""TaskMixtureSampler: the rows of each optimizer step, drawn from the mixer's weights.

The training set is the concatenation of k tasks (row r belongs to task ``task_ids[r]``).
One optimizer step takes a *global batch* of N = P·G·B pairs: P data-parallel processes,
G gradient-accumulation micro-batches, B pairs per micro-batch.  Slot q of step t is

* ``apply="resample"``: task ~ Categorical(α_t) — the batch is drawn from the weights
  (AMA-S, ODM, uniform, stratified);
* ``apply="reweight"``: task q mod k — every task N/k times, the mixer weights the loss
  instead (AMA-R, Group DRO, DoReMi);
* ``apply="importance"``: task ~ Categorical(q), the fixed distribution the mixer's state
  names (GR-DPO); the mixer weights the loss by α/(B q);

(:func:`amasim.apply.batch_tasks`, the driver's rule: the sampler's ``weights`` are the
distribution the batch is drawn from, α or q) and its row is uniform over that task's rows
(with replacement, as :class:`llm.oracle.DPOOracle` draws).  Every draw is a pure function
of (seed, t, q) by :mod:`amasim.prng` — task choices from the loop stream, rows from the
sample stream — so each process computes the same global batch without communication and
yields its own share: micro-batch g of process p holds slots (g·P + p)·B … (g·P + p + 1)·B − 1.

The position is the step counter :attr:`step` (the number of mixer updates so far): the
trainer calls :meth:`advance` with the new weights after each update, and saves
:meth:`state_dict` with its checkpoints.  Step t is drawn when the DataLoader first asks
for it, and only if t ≤ :attr:`step` — a loader that fetches ahead (worker processes,
Accelerate's one-batch look-ahead) would draw step t before update t − 1, so the sampler
raises instead of silently using stale weights.  An iteration (an epoch of
:attr:`steps_per_epoch` steps) starts at its epoch's first step: when a resumed Trainer
fast-forwards through the steps already done, they are drawn (from the current weights)
and skipped, and the first step it trains is the checkpoint's.

>>> import numpy as np
>>> sampler = TaskMixtureSampler([0, 0, 0, 1, 1], 2, batch_size=2, apply="resample", seed=0)
>>> len(sampler), sampler.steps_per_epoch         # rows per epoch, steps per epoch
(6, 3)
>>> rows = iter(sampler)
>>> step0 = [next(rows), next(rows)]              # step 0, drawn from α = (1/2, 1/2)
>>> sampler.advance(np.array([1.0, 0.0]))         # update 0: all weight on task 0
>>> step1 = [next(rows), next(rows)]
>>> all(r < 3 for r in step1)                     # rows 0-2 are task 0
True
>>> next(rows)                                    # step 2 before update 1: refused
Traceback (most recent call last):
...
RuntimeError: the DataLoader asked for step 2's batch after only 1 mixer updates: ...
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from amasim import prng
from amasim.apply import batch_tasks
from amasim.mixers import check_apply

__all__ = ["TaskMixtureSampler"]


class TaskMixtureSampler(Sampler[int]):
    """Yields this process's rows of every optimizer step (see the module docstring).

    ``task_ids``: the task (0 … k−1) of every row of the training set.  ``batch_size`` is
    B (pairs per micro-batch per process), ``accumulation`` G, ``world_size`` P, ``rank``
    this process.  ``weights`` are the initial weights (default uniform).  With
    ``replay_epoch_start=False`` an iteration starts at :attr:`step` itself (a Trainer with
    ``ignore_data_skip=True`` does not fast-forward on resume).
    """

    def __init__(
        self,
        task_ids: Sequence[int] | np.ndarray,
        num_tasks: int,
        *,
        batch_size: int,
        apply: str,
        seed: int,
        accumulation: int = 1,
        world_size: int = 1,
        rank: int = 0,
        weights: np.ndarray | None = None,
        task_names: Sequence[str] | None = None,
        replay_epoch_start: bool = True,
    ) -> None:
        check_apply(apply)
        for name, value in (
            ("num_tasks", num_tasks),
            ("batch_size", batch_size),
            ("accumulation", accumulation),
            ("world_size", world_size),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name}={value!r} must be an int >= 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must lie in [0, world_size={world_size})")
        ids = np.asarray(task_ids)
        if ids.ndim != 1 or ids.size == 0 or ids.dtype.kind not in "iu":
            raise ValueError("task_ids must be a non-empty 1-D array of ints, one task per row")
        if ids.min() < 0 or ids.max() >= num_tasks:
            raise ValueError(f"task_ids must lie in [0, {num_tasks}), the task of each row")
        self.names = (
            tuple(task_names) if task_names is not None else tuple(map(str, range(num_tasks)))
        )
        sizes = np.bincount(ids, minlength=num_tasks)
        if (sizes == 0).any():
            empty = [self.names[i] for i in np.flatnonzero(sizes == 0)]
            raise ValueError(f"task {empty[0]!r} has no rows in the training set")
        self.num_tasks, self.apply, self.seed = int(num_tasks), apply, int(seed)
        self.batch_size, self.accumulation = int(batch_size), int(accumulation)
        self.world_size, self.rank = int(world_size), int(rank)
        self.global_batch = self.world_size * self.accumulation * self.batch_size
        if apply == "reweight" and self.global_batch % self.num_tasks:
            raise ValueError(
                f"a reweighting mixer takes every task equally often: the global batch "
                f"(processes × gradient_accumulation_steps × per_device_train_batch_size = "
                f"{self.world_size} × {self.accumulation} × {self.batch_size} = "
                f"{self.global_batch}) must be a multiple of the {self.num_tasks} tasks"
            )
        self.sizes = sizes
        self._order = np.argsort(ids, kind="stable")  # rows of task i: order[offsets[i]:...]
        self._offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        self._task_keys = prng.replicate_keys([self.seed], stream=prng.LOOP_STREAM)
        self._row_keys = prng.replicate_keys([self.seed], stream=prng.SAMPLE_STREAM)
        self.steps_per_epoch = max(1, math.ceil(len(ids) / self.global_batch))
        self.replay_epoch_start = replay_epoch_start
        self.step = 0
        self.weights = np.full(self.num_tasks, 1.0 / self.num_tasks)
        if weights is not None:
            self.weights = self._checked(weights)

    def __len__(self) -> int:
        return self.steps_per_epoch * self.accumulation * self.batch_size

    def _checked(self, weights: Any) -> np.ndarray:
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        if w.shape != (self.num_tasks,) or not np.isfinite(w).all() or (w < 0).any():
            raise ValueError(
                f"weights must be {self.num_tasks} finite numbers >= 0 (one per task), got "
                f"{np.asarray(weights).tolist()!r:.200}"
            )
        if not w.sum() > 0:
            raise ValueError("weights sum to 0: at least one task needs a positive weight")
        return w / w.sum()

    def reset(self, weights: Any) -> None:
        """Back to step 0, drawing from ``weights`` (a fresh run)."""
        self.weights = self._checked(weights)
        self.step = 0

    def advance(self, weights: Any) -> None:
        """One mixer update happened: draw the next step from ``weights``."""
        self.weights = self._checked(weights)
        self.step += 1

    def draw(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, tasks) of the whole global batch of ``step``, shape (N,) each.

        ``resample`` and ``importance`` draw the tasks from the current :attr:`weights` (α,
        or the fixed q); a pure function of (seed, step) and the weights, identical on every
        process.
        """
        n = self.global_batch
        u = prng.uniform(self._task_keys, step, n)
        tasks = batch_tasks(
            self.apply, self.weights[None, :], u, num_tasks=self.num_tasks, interleaved=True
        )[0]
        within = prng.integers(prng.uniform(self._row_keys, step, n)[0], self.sizes[tasks])
        return self._order[self._offsets[tasks] + within], tasks

    def local(self, values: np.ndarray) -> np.ndarray:
        """This process's share of a global-batch array, in the order it is yielded."""
        g, p, b = self.accumulation, self.world_size, self.batch_size
        return values.reshape(g, p, b)[:, self.rank, :].reshape(-1)

    def __iter__(self) -> Iterator[int]:
        start = self.step
        if self.replay_epoch_start:
            start -= self.step % self.steps_per_epoch
        for t in range(start, start + self.steps_per_epoch):
            if t > self.step:
                raise RuntimeError(
                    f"the DataLoader asked for step {t}'s batch after only {self.step} mixer "
                    "updates: it fetches ahead of training, so the batch would be drawn from "
                    "stale weights. Use a DataLoader without worker processes and without "
                    "Accelerate's look-ahead (AMADPOTrainer builds one)"
                )
            yield from self.local(self.draw(t)[0]).tolist()

    def state_dict(self) -> dict[str, Any]:
        """The position: step counter and current weights (and the seed, as a check)."""
        return {"step": self.step, "weights": self.weights.tolist(), "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict`; the seed must be the same."""
        if int(state["seed"]) != self.seed:
            raise ValueError(
                f"the checkpoint's sampler seed {state['seed']} differs from this run's "
                f"{self.seed}: resume with the same seed (args.data_seed or args.seed)"
            )
        self.weights = self._checked(state["weights"])
        self.step = int(state["step"])
