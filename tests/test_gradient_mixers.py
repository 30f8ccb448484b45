"""DoGE and DGA: the mixer contract, alignment scores, and training on the alignment signal."""

from __future__ import annotations

import numpy as np
import pytest

from amasim.driver import run
from amasim.gradient_mixers import (
    ALIGNMENT_SCORE,
    DGAState,
    dga,
    doge,
    fixed_weights,
    importance_sampling,
)
from amasim.mixers import Mixer, stratified
from amasim.observe import alignment_scores
from amasim.problems import assemble
from amasim.transfer import GradientSimulatedOracle, target_problem, transfer_problem

MIXERS = {
    "doge": lambda: doge(0.5, smoothing=0.1, clip=2.0),
    "dga": lambda: dga(0.5, update_every=3, ema=0.3, smoothing=0.05),
}


@pytest.mark.parametrize("name", list(MIXERS))
def test_simplex_and_determinism(name):
    mixer = MIXERS[name]()
    assert isinstance(mixer, Mixer) and mixer.score == ALIGNMENT_SCORE
    assert mixer.apply == "resample" and mixer.name == name
    rng = np.random.default_rng(0)
    scores = rng.normal(scale=5.0, size=(20, 3, 4))

    def trajectory():
        state = mixer.init(4, seed=[0, 1, 2])
        out = []
        for s in scores:
            alpha, state = mixer.update(state, s)
            assert np.allclose(alpha, mixer.weights(state))
            out.append(alpha)
        return np.array(out)

    first, second = trajectory(), trajectory()
    assert np.array_equal(first, second)
    assert np.all(first >= 0) and np.allclose(first.sum(-1), 1)
    # a replicate alone updates exactly as beside others
    state = mixer.init(4, seed=1)
    for s in scores:
        alpha, state = mixer.update(state, s[1])
    assert np.allclose(alpha, first[-1, 1])
    # extreme scores stay finite and on the simplex
    state = mixer.init(4, seed=0)
    for _ in range(50):
        alpha, state = mixer.update(state, np.array([1e200, -1e200, 0.0, 3.0]))
    assert np.isfinite(alpha).all() and np.isclose(alpha.sum(), 1)


@pytest.mark.parametrize("name", list(MIXERS))
def test_bad_inputs(name):
    mixer = MIXERS[name]()
    state = mixer.init(3, seed=0)
    with pytest.raises(ValueError, match="expected"):
        mixer.update(state, np.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        mixer.update(state, np.array([0.0, np.nan, 1.0]))
    with pytest.raises(ValueError, match="num_tasks"):
        mixer.init(0)
    with pytest.raises(TypeError, match="seed"):
        mixer.init(3, seed="a")


def test_bad_factory_arguments():
    with pytest.raises(ValueError, match="step_size"):
        dga(0.0)
    with pytest.raises(ValueError, match="update_every"):
        dga(1.0, update_every=0)
    with pytest.raises(TypeError, match="update_every"):
        dga(1.0, update_every=1.5)
    with pytest.raises(ValueError, match="ema"):
        dga(1.0, ema=1.0)
    with pytest.raises(ValueError, match="smoothing"):
        dga(1.0, smoothing=2.0)
    with pytest.raises(ValueError, match="step_size"):
        doge(-1.0)
    with pytest.raises(ValueError, match="clip"):
        doge(1.0, clip=0.0)
    with pytest.raises(ValueError, match="smoothing"):
        doge(1.0, smoothing=-0.1)
    with pytest.raises(ValueError, match="probability"):
        fixed_weights([0.5, 0.6])


def test_dga_state_cadence_and_ema():
    mixer = dga(1.0, update_every=7, ema=0.3)  # ema ≠ 1/2: swapping ema and 1 − ema shows
    state = mixer.init(2, seed=0)
    assert isinstance(state, DGAState) and mixer.signal == ("alignment", 7, None, 4, False)
    assert doge(1.0).signal.kind == "alignment" and doge(1.0).signal.every == 1
    alpha, _ = mixer.update(state, np.array([1.0, 0.0]))
    no_ema, _ = dga(1.0).update(dga(1.0).init(2), np.array([1.0, 0.0]))
    assert np.allclose(alpha, 0.3 * 0.5 + 0.7 * no_ema)  # α ← ema·α + (1 − ema)·p


def test_doge_clip_and_scale():
    state = doge(1.0).init(2)
    clipped, _ = doge(1.0, clip=1.0).update(state, np.array([100.0, 0.0]))
    assert np.allclose(clipped, np.exp([1.0, 0.0]) / np.exp([1.0, 0.0]).sum())
    scaled, _ = doge(1.0, scale=0.5).update(state, np.array([2.0, 0.0]))
    assert np.allclose(scaled, clipped)


def test_dga_moves_weight_to_the_target_group():
    problem = transfer_problem(4, dim=8, sizes=(100,) * 4, overlap=0.0, noise=0.3, seed=0)
    lo, hi = problem.offsets[2], problem.offsets[3]
    target = (problem.features[lo:hi], problem.targets[lo:hi])
    oracle = GradientSimulatedOracle(problem, target)
    options = {"steps": 100, "learning_rate": 0.05, "batch_size": 16, "seeds": [0, 1]}
    result = run(dga(2.0, update_every=5, ema=0.2), oracle, **options)
    trained = oracle.target_loss(averaged=True)
    final = result.weights[-1]
    assert np.all(final.argmax(axis=1) == 2) and np.all(final[:, 2] > 0.5)
    assert result.signal == "alignment" and result.scores.shape == (100, 2, 4)
    # the recorded scores are the alignments of the round each step belongs to
    assert np.array_equal(result.scores[5], result.scores[9])
    # 20 rounds, each: every task's full data and the target's
    assert result.extra_gradient_evaluations.tolist() == [20 * (400 + 100)] * 2
    assert result.examples.sum() == 2 * 100 * 16
    static = run(stratified(), oracle, **options)
    assert np.all(trained < oracle.target_loss(averaged=True))
    assert static.extra_gradient_evaluations.tolist() == [0, 0]


def test_doge_gives_identical_groups_equal_weight():
    rng = np.random.default_rng(0)
    x, x2 = rng.standard_normal((60, 4)), rng.standard_normal((60, 4))
    y, y2 = x @ np.array([1.0, 0.5, 0.0, 0.0]), x2 @ np.array([0.0, 0.0, -1.0, 0.3])
    problem = assemble("pair", "squared", [x, x, x2], [y, y, y2], 3.0, ["a", "b", "c"])
    oracle = GradientSimulatedOracle(problem)
    oracle.reset([0, 1])
    scores = alignment_scores(oracle, "generalization")
    assert np.allclose(scores[:, 0], scores[:, 1])
    result = run(
        doge(0.5, smoothing=0.05), oracle, steps=40, learning_rate=0.05, batch_size=8, seeds=[0, 1]
    )
    w = result.weights
    assert np.allclose(w[..., 0], w[..., 1])
    assert not np.allclose(w[-1, :, 0], 1 / 3)  # it did move
    with pytest.raises(ValueError, match="kind"):
        alignment_scores(oracle, "bogus")


def test_alignment_training_determinism_and_importance_sampling():
    split = target_problem(generic_sizes=(30, 30, 30), target_size=10, dim=4, seed=0, test_size=100)
    oracle = GradientSimulatedOracle(
        split.problem,
        (split.features, split.targets),
        target_test=(split.test_features, split.test_targets),
        gradient_batch=8,
    )
    mixer = dga(1.0, update_every=4)
    a = run(mixer, oracle, steps=20, learning_rate=0.05, seeds=[3, 4])
    a_test = oracle.target_loss(averaged=True, split="test")
    b = run(mixer, oracle, steps=20, learning_rate=0.05, seeds=[3, 4])
    assert np.array_equal(a.weights, b.weights) and np.array_equal(a.task_scores, b.task_scores)
    assert np.array_equal(a_test, oracle.target_loss(averaged=True, split="test"))
    assert a.extra_gradient_evaluations.tolist() == [5 * (3 * 8 + 8)] * 2
    base = importance_sampling(split)
    result = run(base, oracle, steps=20, learning_rate=0.05, seeds=[3, 4])
    hist = np.bincount(split.clusters, minlength=3) / len(split.clusters)
    assert np.allclose(result.weights, hist) and result.method == "importance-sampling"
    with pytest.raises(TypeError, match="Mixer"):
        run("dga", oracle, steps=2, learning_rate=0.1)
    with pytest.raises(ValueError, match="steps"):
        run(mixer, oracle, steps=0, learning_rate=0.1)
