"""Transfer problems, the DGA target split and the gradient-oracle protocol."""

from __future__ import annotations

import numpy as np
import pytest

from amasim.oracle import OracleError
from amasim.problems import ConvexProblem
from amasim.transfer import (
    GROUP_SETTINGS,
    GradientOracle,
    GradientSimulatedOracle,
    TargetSplit,
    check_gradient_oracle,
    importance_sampling_weights,
    target_problem,
    transfer_matrix,
    transfer_problem,
)


def _optima(problem: ConvexProblem) -> np.ndarray:
    # noise=0 and n >> d: the specialists are the generating optima
    return problem.specialists


def test_overlap_one_gives_identical_optima():
    problem = transfer_problem(3, dim=4, sizes=(60, 60, 60), overlap=1.0, noise=0.0)
    optima = _optima(problem)
    assert np.allclose(optima, optima[0], atol=1e-6)
    gram = transfer_matrix(problem)
    assert gram.shape == (3, 3) and np.all(gram > 0)


def test_overlap_zero_gives_independent_optima():
    problem = transfer_problem(3, dim=6, sizes=(80, 80, 80), overlap=0.0, noise=0.0, seed=2)
    optima = _optima(problem)
    assert np.allclose(np.linalg.norm(optima, axis=1), 1.0, atol=1e-6)  # the unit u_g
    assert np.linalg.matrix_rank(optima) == 3
    assert not np.allclose(optima[0], optima[1], atol=0.1)

    # overlap controls how much of θ*_g is shared: cosine similarity grows with it
    def mean_cos(overlap: float) -> float:
        o = _optima(transfer_problem(4, dim=6, sizes=(80,) * 4, overlap=overlap, noise=0.0))
        o = o / np.linalg.norm(o, axis=1, keepdims=True)
        c = o @ o.T
        return float(c[np.triu_indices(4, 1)].mean())

    assert mean_cos(0.2) < mean_cos(0.8)


def test_transfer_problem_is_deterministic_and_validates():
    a, b = transfer_problem(seed=3, sizes=(20,) * 4), transfer_problem(seed=3, sizes=(20,) * 4)
    assert np.array_equal(a.features, b.features) and np.array_equal(a.targets, b.targets)
    with pytest.raises(ValueError, match="overlap"):
        transfer_problem(overlap=1.5)
    with pytest.raises(ValueError, match="one size per task"):
        transfer_problem(3, sizes=(10, 10))
    with pytest.raises(ValueError, match="num_groups"):
        transfer_problem(0)


def test_group_settings_build_valid_problems():
    assert len(GROUP_SETTINGS) >= 6
    overlaps = {kw["overlap"] for kw in GROUP_SETTINGS.values()}
    noises = {kw["noise"] for kw in GROUP_SETTINGS.values()}
    assert len(overlaps) >= 3 and len(noises) >= 2
    for name, kwargs in GROUP_SETTINGS.items():
        problem = transfer_problem(**kwargs, seed=1)
        assert isinstance(problem, ConvexProblem), name
        assert problem.num_tasks == kwargs["num_groups"], name
        assert problem.specialists.shape == (problem.num_tasks, problem.dim), name
        assert np.isfinite(problem.reference_losses).all(), name
        assert np.all(
            problem.task_scores(problem.specialists)[
                np.arange(problem.num_tasks), np.arange(problem.num_tasks)
            ]
            < 1e-6
        ), name


def test_target_problem_split_and_importance_sampling():
    split = target_problem(
        generic_sizes=(40, 40, 40),
        target_size=30,
        num_clusters=3,
        dim=4,
        seed=0,
        mixture=(0.0, 0.3, 0.7),
        separation=4.0,
        test_size=200,
    )
    assert isinstance(split, TargetSplit)
    assert split.problem.num_tasks == 3 and split.features.shape == (30, 4)
    assert split.targets.shape == (30,) and split.test_features.shape == (200, 4)
    hist = importance_sampling_weights(split)
    assert np.isclose(hist.sum(), 1) and hist[0] == 0 and hist[2] > hist[1]
    # nearest-centroid assignment recovers the labels when clusters are well separated
    assert np.allclose(importance_sampling_weights(split.problem, split.features), hist)
    with pytest.raises(ValueError, match="features"):
        importance_sampling_weights(split.problem)
    with pytest.raises(ValueError, match="mixture"):
        target_problem(generic_sizes=(10, 10), mixture=(0.5, 0.6))


def _oracle(**kwargs) -> GradientSimulatedOracle:
    problem = transfer_problem(3, dim=4, sizes=(30, 30, 30), seed=0)
    target = (problem.features[:30], problem.targets[:30])
    return GradientSimulatedOracle(problem, target, **kwargs)


@pytest.mark.parametrize("gradient_batch", [None, 8])
def test_gradient_oracle_passes_check_and_counts(gradient_batch):
    oracle = _oracle(gradient_batch=gradient_batch)
    assert isinstance(oracle, GradientOracle)
    check_gradient_oracle(oracle)
    oracle.reset([0, 1])
    assert oracle.extra_gradient_evaluations == 0
    grads = oracle.task_gradients()
    per_call = 90 if gradient_batch is None else 3 * 8
    assert grads.shape == (2, 3, 4) and oracle.extra_gradient_evaluations == per_call
    target = oracle.target_gradient()
    assert target.shape == (2, 4)
    assert oracle.extra_gradient_evaluations == per_call + (30 if gradient_batch is None else 8)
    if gradient_batch is None:
        # the target is group 0's data: the same gradient
        assert np.allclose(target, grads[:, 0])
        exact = np.stack([oracle.problem.task_loss_and_grad(np.zeros(4), i)[1] for i in range(3)])
        assert np.allclose(grads[0], exact)


def test_gradient_oracle_input_errors():
    problem = transfer_problem(2, dim=3, sizes=(10, 10))
    with pytest.raises(ValueError, match="target"):
        GradientSimulatedOracle(problem, (np.zeros((5, 2)), np.zeros(5)))
    with pytest.raises(ValueError, match="gradient_batch"):
        GradientSimulatedOracle(problem, gradient_batch=0)
    oracle = GradientSimulatedOracle(problem)
    with pytest.raises(RuntimeError, match="reset"):
        oracle.task_gradients()
    oracle.reset([0])
    with pytest.raises(ValueError, match="no target"):
        oracle.target_gradient()
    check_gradient_oracle(oracle, seeds=(0,), require_target=False)


class _Uncounted(GradientSimulatedOracle):
    def task_gradients(self):
        count = self.extra_gradient_evaluations
        out = super().task_gradients()
        self.extra_gradient_evaluations = count
        return out


class _WrongShape(GradientSimulatedOracle):
    def task_gradients(self):
        return super().task_gradients().sum(axis=1)


class _Stepping(GradientSimulatedOracle):
    def task_gradients(self):
        grads = super().task_gradients()
        self.theta = self.theta - 0.1 * grads.sum(axis=1)
        return grads


class _Unseeded(GradientSimulatedOracle):
    def task_gradients(self):
        return super().task_gradients() + np.random.default_rng().random()


@pytest.mark.parametrize(
    ("cls", "message"),
    [
        (_Uncounted, "did not count"),
        (_WrongShape, "shape"),
        (_Stepping, "changed the model"),
        (_Unseeded, "same seeds"),
    ],
)
def test_check_gradient_oracle_rejects_broken(cls, message):
    problem = transfer_problem(3, dim=4, sizes=(30, 30, 30), seed=0)
    oracle = cls(problem, (problem.features[:30], problem.targets[:30]))
    with pytest.raises(OracleError, match=message):
        check_gradient_oracle(oracle)


def test_check_gradient_oracle_rejects_plain_oracle():
    from amasim.simulator import SimulatedOracle

    with pytest.raises(OracleError, match="task_gradients"):
        check_gradient_oracle(SimulatedOracle(transfer_problem(2, dim=3, sizes=(10, 10))))
