"""Convex problems whose groups transfer to each other, and a gradient-oracle protocol.

Transfer problems (Aioli / LMO family, notes §7)
-------------------------------------------------
:func:`transfer_problem` builds multi-group least squares in which training on one group
lowers another's loss: the mixing matrix A of the dynamic mixing law,
A_ij ≈ η⟨∇L_i, ∇L_j⟩ (the first-order drop of L_i after a step of size η on group j,
:func:`transfer_matrix`), has large off-diagonal entries.  Group optima are

    θ*_g = overlap · s + (1 − overlap) · u_g,   s, u_g independent unit vectors,

so ``overlap=1`` makes every group the same regression (full transfer), ``overlap=0``
makes their optima independent (only chance alignment), and in between the group
gradients share the component along s.  Inputs are x ~ N(0, I), y = x·θ*_g + noise·ε.

:data:`GROUP_SETTINGS` names keyword sets of :func:`transfer_problem` for the Aioli
comparison (each builds a valid problem):

=================  =====================================================================
``balanced``       4 groups × 200, overlap 0.5, noise 0.5: the reference setting
``high_overlap``   overlap 0.9: groups nearly interchangeable (strong positive transfer)
``no_overlap``     overlap 0: independent optima, transfer only by chance alignment
``imbalanced``     sizes (800, 200, 50, 20): the small groups are data constrained
``noisy``          noise 2: gradient and loss estimates dominated by noise
``many_groups``    8 groups × 100, overlap 0.3: a larger mixing matrix to estimate
``scarce``         4 groups × 30, overlap 0.5: every group data constrained
=================  =====================================================================

Data-constrained target (DGA, notes §8)
---------------------------------------
:func:`target_problem` draws ``num_clusters`` generic clusters: cluster c has inputs
x ~ N(μ_c, I) (cluster centres ``separation`` apart) and its own optimum θ*_c (as above).
The generic problem's tasks are the clusters.  The *target* distribution is a specific
mixture π of the clusters (Dirichlet(``concentration``) unless given); a small target
training set (``target_size`` examples) and a large held-out target test set are drawn
from it.  :func:`importance_sampling_weights` is the baseline DGA is compared with: sample
the clusters ∝ the target's cluster histogram.

Gradient oracles
----------------
A :class:`GradientOracle` is an :mod:`amasim.oracle` oracle with the
``"task_gradients"`` and ``"target_set"`` capabilities of :mod:`amasim.capabilities`:
``task_gradients() -> (R, k, d)`` (the mean gradient of each task's loss at the current
θ, over the task's full data or a fresh batch), ``target_gradient() -> (R, d)``, and
the per-example gradients these cost in ``extra_gradient_evaluations`` (per
replicate, beyond the training steps).  :class:`GradientSimulatedOracle` implements it
for a :class:`~amasim.problems.ConvexProblem` (plus ``"group_validation"`` and
``"mixture_rounds"``, inherited; ``"target_set"`` only when given a target);
:func:`check_gradient_oracle` (= ``check_oracle(..., capabilities=...)``) validates a
third-party one.

>>> problem = transfer_problem(3, dim=4, sizes=(40, 40, 40), overlap=1.0)
>>> oracle = GradientSimulatedOracle(problem, target=(problem.features[:40], problem.targets[:40]))
>>> check_gradient_oracle(oracle)
>>> oracle.reset([0, 1])
>>> oracle.task_gradients().shape, oracle.target_gradient().shape
((2, 3, 4), (2, 4))
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

from amasim import prng
from amasim.capabilities import CAPABILITIES, TargetSet, TaskGradients
from amasim.checker import check_oracle
from amasim.oracle import Oracle
from amasim.problems import ConvexProblem, assemble, check_sizes, loss_and_slope
from amasim.simulator import SimulatedOracle

__all__ = [
    "GROUP_SETTINGS",
    "transfer_problem",
    "transfer_matrix",
    "TargetSplit",
    "target_problem",
    "importance_sampling_weights",
    "GradientOracle",
    "GradientSimulatedOracle",
    "check_gradient_oracle",
]


GROUP_SETTINGS: dict[str, dict[str, Any]] = {
    "balanced": {"num_groups": 4, "sizes": (200,) * 4, "overlap": 0.5, "noise": 0.5},
    "high_overlap": {"num_groups": 4, "sizes": (200,) * 4, "overlap": 0.9, "noise": 0.5},
    "no_overlap": {"num_groups": 4, "sizes": (200,) * 4, "overlap": 0.0, "noise": 0.5},
    "imbalanced": {"num_groups": 4, "sizes": (800, 200, 50, 20), "overlap": 0.5, "noise": 0.5},
    "noisy": {"num_groups": 4, "sizes": (200,) * 4, "overlap": 0.5, "noise": 2.0},
    "many_groups": {"num_groups": 8, "sizes": (100,) * 8, "overlap": 0.3, "noise": 0.5},
    "scarce": {"num_groups": 4, "sizes": (30,) * 4, "overlap": 0.5, "noise": 0.5},
}


def _unit_fraction(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}={value!r} must lie in [0, 1]")
    return float(value)


def _group_optima(rng: np.random.Generator, k: int, dim: int, overlap: float) -> np.ndarray:
    shared = rng.standard_normal(dim)
    shared /= np.linalg.norm(shared)
    own = rng.standard_normal((k, dim))
    own /= np.linalg.norm(own, axis=1, keepdims=True)
    return overlap * shared + (1.0 - overlap) * own


def transfer_problem(
    num_groups: int = 4,
    *,
    dim: int = 8,
    sizes: Sequence[int] | None = None,
    overlap: float = 0.5,
    noise: float = 0.5,
    radius: float = 3.0,
    seed: int = 0,
) -> ConvexProblem:
    """Least squares over ``num_groups`` groups with optima θ*_g = overlap·s + (1−overlap)·u_g.

    ``sizes`` defaults to 200 examples per group.  See the module docstring.
    """
    if isinstance(num_groups, bool) or not isinstance(num_groups, (int, np.integer)):
        raise TypeError(f"num_groups must be an int, got {type(num_groups).__name__}")
    if num_groups < 1:
        raise ValueError(f"num_groups={num_groups} must be >= 1")
    sizes = check_sizes((200,) * num_groups if sizes is None else sizes, num_groups)
    overlap = _unit_fraction("overlap", overlap)
    if not noise >= 0:
        raise ValueError(f"noise={noise!r} must be >= 0")
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    optima = _group_optima(rng, num_groups, dim, overlap)
    xs = [rng.standard_normal((n, dim)) for n in sizes]
    ys = [x @ t + noise * rng.standard_normal(len(x)) for x, t in zip(xs, optima)]
    names = [f"group{i}" for i in range(num_groups)]
    return assemble("transfer", "squared", xs, ys, radius, names)


def _mean_gradients(problem: ConvexProblem, theta: np.ndarray) -> np.ndarray:
    """Full-data mean gradient of every task at θ (R, d) -> (R, k, d)."""
    _, slope = loss_and_slope(problem.loss, theta @ problem.features.T, problem.targets)
    offsets = problem.offsets
    grads = [slope[:, lo:hi] @ problem.features[lo:hi] for lo, hi in pairwise(offsets)]
    return np.stack(grads, axis=1) / np.asarray(problem.sizes)[:, None]


def transfer_matrix(
    problem: ConvexProblem, theta: np.ndarray | None = None, learning_rate: float = 1.0
) -> np.ndarray:
    """A_ij = η⟨∇L_i(θ), ∇L_j(θ)⟩: first-order drop of L_i after a step η on group j.

    θ defaults to θ₀ = 0; θ of shape (d,) gives (k, k), (R, d) gives (R, k, k).
    """
    theta = np.zeros(problem.dim) if theta is None else np.asarray(theta, dtype=np.float64)
    grads = _mean_gradients(problem, np.atleast_2d(theta))
    gram = learning_rate * grads @ np.swapaxes(grads, -1, -2)
    return gram[0] if theta.ndim == 1 else gram


class TargetSplit(NamedTuple):
    """What :func:`target_problem` returns.

    ``problem`` is the generic problem (one task per cluster); ``features``/``targets``
    the small target training set and ``clusters`` the cluster of each of its examples;
    ``mixture`` the target's true cluster proportions π; ``test_features``/
    ``test_targets`` a large held-out sample of the target distribution.
    """

    problem: ConvexProblem
    features: np.ndarray
    targets: np.ndarray
    clusters: np.ndarray
    mixture: np.ndarray
    test_features: np.ndarray
    test_targets: np.ndarray


def target_problem(
    *,
    generic_sizes: Sequence[int] = (200, 200, 200, 200),
    target_size: int = 20,
    num_clusters: int | None = None,
    dim: int = 8,
    seed: int = 0,
    mixture: Sequence[float] | None = None,
    concentration: float = 0.5,
    overlap: float = 0.3,
    separation: float = 1.0,
    noise: float = 0.5,
    radius: float = 3.0,
    test_size: int = 2000,
) -> TargetSplit:
    """Generic clusters plus a small target set drawn from a mixture of them (DGA, §8)."""
    k = len(tuple(generic_sizes)) if num_clusters is None else num_clusters
    sizes = check_sizes(generic_sizes, k)
    overlap = _unit_fraction("overlap", overlap)
    if isinstance(target_size, bool) or not isinstance(target_size, (int, np.integer)):
        raise TypeError(f"target_size must be an int, got {type(target_size).__name__}")
    if target_size < 1 or test_size < 1:
        raise ValueError(f"target_size={target_size} and test_size={test_size} must be >= 1")
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    optima = _group_optima(rng, k, dim, overlap)
    centres = rng.standard_normal((k, dim))
    centres *= separation / np.linalg.norm(centres, axis=1, keepdims=True)
    if mixture is None:
        pi = rng.dirichlet(np.full(k, concentration))
    else:
        pi = np.asarray(mixture, dtype=np.float64)
        if pi.shape != (k,) or np.any(pi < 0) or not np.isclose(pi.sum(), 1.0):
            raise ValueError(
                f"mixture={list(pi.ravel())} must be {k} non-negative proportions summing to 1"
            )

    def draw(cluster: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = centres[cluster] + rng.standard_normal((len(cluster), dim))
        y = np.einsum("nd,nd->n", x, optima[cluster]) + noise * rng.standard_normal(len(x))
        return x, y

    generic = [draw(np.full(n, c)) for c, n in enumerate(sizes)]
    clusters = np.sort(rng.choice(k, size=target_size, p=pi))
    x_t, y_t = draw(clusters)
    x_test, y_test = draw(rng.choice(k, size=test_size, p=pi))
    problem = assemble(
        "target-clusters",
        "squared",
        [g[0] for g in generic],
        [g[1] for g in generic],
        radius,
        [f"cluster{c}" for c in range(k)],
    )
    return TargetSplit(problem, x_t, y_t, clusters, pi, x_test, y_test)


def importance_sampling_weights(
    target: TargetSplit | ConvexProblem, features: np.ndarray | None = None
) -> np.ndarray:
    """The importance-sampling baseline: sample clusters ∝ the target's cluster histogram.

    With a :class:`TargetSplit`, the histogram of its ``clusters``.  With a generic
    problem and target ``features``, each target example is assigned to the cluster whose
    mean input is nearest (labels unknown, as with embedding clusters).  Shape (k,).
    """
    if isinstance(target, TargetSplit):
        k, labels = target.problem.num_tasks, target.clusters
    elif isinstance(target, ConvexProblem):
        if features is None:
            raise ValueError("pass the target features with a ConvexProblem (or a TargetSplit)")
        feats = np.asarray(features, dtype=np.float64)
        if feats.ndim != 2 or feats.shape[1] != target.dim or len(feats) == 0:
            raise ValueError(f"features has shape {feats.shape}: expected (n >= 1, {target.dim})")
        offsets, k = target.offsets, target.num_tasks
        centroids = np.stack([target.features[lo:hi].mean(axis=0) for lo, hi in pairwise(offsets)])
        labels = np.argmin(((feats[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)
    else:
        raise TypeError(f"target must be a TargetSplit or ConvexProblem, got {type(target)}")
    hist = np.bincount(labels, minlength=k).astype(np.float64)
    return hist / hist.sum()


# ----------------------------------------------------------------- gradient oracles
@runtime_checkable
class GradientOracle(Oracle, TaskGradients, TargetSet, Protocol):
    """An :class:`~amasim.oracle.Oracle` that also reports gradients (module docstring)."""


class GradientSimulatedOracle(SimulatedOracle):
    """:class:`~amasim.simulator.SimulatedOracle` plus task and target gradients.

    ``target`` is an optional ``(X_t, y_t)`` pair (the small target training set) and
    ``target_test`` an optional held-out pair used only by :meth:`target_loss`.
    ``gradient_batch=None`` computes gradients over the full data; an int B uses a fresh
    batch of B examples per task (and B target examples), drawn with replacement from a
    stream keyed by the seeds, so ``reset`` replays them.
    """

    def __init__(
        self,
        problem: ConvexProblem,
        target: tuple[np.ndarray, np.ndarray] | None = None,
        *,
        target_test: tuple[np.ndarray, np.ndarray] | None = None,
        gradient_batch: int | None = None,
    ) -> None:
        super().__init__(problem)
        self.target = None if target is None else self._check_pair("target", target)
        self.target_test = None if target_test is None else self._check_pair("test", target_test)
        if gradient_batch is not None and (
            isinstance(gradient_batch, bool)
            or not isinstance(gradient_batch, (int, np.integer))
            or gradient_batch < 1
        ):
            raise ValueError(f"gradient_batch={gradient_batch!r} must be None or an int >= 1")
        self.gradient_batch = gradient_batch
        self.extra_gradient_evaluations = 0

    @property
    def capabilities(self) -> frozenset[str]:
        """Every capability of :mod:`amasim.capabilities`; ``"target_set"`` needs a target."""
        every = frozenset(CAPABILITIES)
        return every if self.target is not None else every - {"target_set"}

    def _check_pair(self, name: str, pair: Any) -> tuple[np.ndarray, np.ndarray]:
        x, y = (np.asarray(a, dtype=np.float64) for a in pair)
        if x.ndim != 2 or x.shape[1] != self.problem.dim or y.shape != (len(x),) or not len(x):
            raise ValueError(
                f"{name}=(X, y) has shapes {x.shape}, {y.shape}: expected (n >= 1, "
                f"{self.problem.dim}) and (n,)"
            )
        return x, y

    def reset(self, seeds: Sequence[int]) -> None:
        super().reset(seeds)
        self._grad_keys = prng.replicate_keys(list(seeds), stream=prng.GRADIENT_STREAM)
        self._grad_draws = 0
        self.extra_gradient_evaluations = 0

    def _require_reset(self) -> None:
        if self._keys is None:
            raise RuntimeError("call reset(seeds) before asking for gradients")

    def _batch_gradients(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Mean gradient over the last-but-one axis of x (R, ..., n, d) at θ (R, d)."""
        preds = np.einsum("r...nd,rd->r...n", x, self.theta)
        _, slope = loss_and_slope(self.problem.loss, preds, y)
        return np.einsum("r...n,r...nd->r...d", slope, x) / x.shape[-2]

    def task_gradients(self) -> np.ndarray:
        """Mean loss gradient of every task at the current θ, shape (R, k, d)."""
        self._require_reset()
        p = self.problem
        if self.gradient_batch is None:
            self.extra_gradient_evaluations += int(sum(p.sizes))
            return _mean_gradients(p, self.theta)
        b, k = self.gradient_batch, p.num_tasks
        u = prng.uniform(self._grad_keys, self._grad_draws, k * b).reshape(-1, k, b)
        self._grad_draws += 1
        index = self._offsets[:, None] + prng.integers(u, self._sizes[:, None])
        self.extra_gradient_evaluations += k * b
        return self._batch_gradients(p.features[index], p.targets[index])

    def target_gradient(self) -> np.ndarray:
        """Mean loss gradient of the target set at the current θ, shape (R, d)."""
        self._require_reset()
        if self.target is None:
            raise ValueError("this oracle has no target: pass target=(X_t, y_t)")
        x, y = self.target
        r = self.theta.shape[0]
        if self.gradient_batch is None:
            self.extra_gradient_evaluations += len(x)
            return self._batch_gradients(np.broadcast_to(x, (r, *x.shape)), y)
        u = prng.uniform(self._grad_keys, self._grad_draws, self.gradient_batch)
        self._grad_draws += 1
        index = prng.integers(u, len(x))
        self.extra_gradient_evaluations += self.gradient_batch
        return self._batch_gradients(x[index], y[index])

    def target_loss(self, averaged: bool = False, split: str = "train") -> np.ndarray:
        """Mean target loss at θ (or θ̄), shape (R,); ``split`` "train" or "test"."""
        pair = {"train": self.target, "test": self.target_test}.get(split, False)
        if pair is False:
            raise ValueError(f"split={split!r} is unknown: use 'train' or 'test'")
        if pair is None:
            raise ValueError(f"this oracle has no {split} target set")
        theta = self.average_theta if averaged else self.theta
        x, y = pair
        return loss_and_slope(self.problem.loss, theta @ x.T, y)[0].mean(axis=-1)


def check_gradient_oracle(
    oracle: Any, *, seeds: Sequence[int] = (0, 1), require_target: bool = True
) -> None:
    """``check_oracle(oracle, capabilities=["task_gradients", "target_set"])`` (without
    ``"target_set"`` unless ``require_target``): see :mod:`amasim.capabilities`."""
    wanted = ("task_gradients", "target_set") if require_target else ("task_gradients",)
    check_oracle(oracle, seeds=seeds, capabilities=wanted)
