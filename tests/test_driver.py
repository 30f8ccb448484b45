"""Behaviour of the training loop: result record, determinism, batching, bookkeeping, inputs."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from amasim import mixers
from amasim.driver import SCHEDULES, RunResult, learning_rate_at, run
from amasim.oracle import OracleError
from amasim.problems import make_problem
from amasim.simulator import SimulatedOracle

SIZES = (60, 20, 20)
K = len(SIZES)


@pytest.fixture(scope="module")
def problem():
    return make_problem("quadratic", sizes=SIZES, dim=3, seed=0)


@pytest.fixture
def oracle(problem):
    return SimulatedOracle(problem)


def _run(mixer, oracle, **kwargs):
    options = {"steps": 60, "learning_rate": 0.5, "batch_size": 4, "seeds": [0, 1]}
    return run(mixer, oracle, **{**options, **kwargs})


ADAPTIVE = {"ama_r": lambda: mixers.ama_r(1.0), "ama_s": lambda: mixers.ama_s(1.0, 0.2)}


# ----------------------------------------------------------------- result record
def test_result_arrays_have_documented_shapes(oracle):
    """weights/scores (M, R, k), task_scores (R, k), worst_task (R,), task_examples (R, k),
    examples (R,)."""
    result = _run(mixers.ama_r(1.0), oracle, steps=50, seeds=[0, 1, 2])
    assert result.weights.shape == (50, 3, K)
    assert result.scores.shape == (50, 3, K)
    assert result.average_weights.shape == (3, K)
    assert result.task_scores.shape == (3, K)
    assert result.last_task_scores.shape == (3, K)
    assert result.worst_task.shape == (3,)
    assert result.task_examples.shape == (3, K) and result.examples.shape == (3,)
    assert isinstance(result, RunResult)


def test_record_every_thins_the_trajectories(oracle):
    """record_every=10 over 50 steps records steps 0, 10, ..., 40."""
    result = _run(mixers.ama_s(1.0, 0.2), oracle, steps=50, record_every=10)
    np.testing.assert_array_equal(result.record_steps, [0, 10, 20, 30, 40])
    assert result.weights.shape == (5, 2, K)
    assert result.scores.shape == (5, 2, K)


def test_default_record_every_caps_trajectories_near_one_thousand(oracle):
    """By default steps // 1000 thins long runs: 2500 steps record every 2nd step."""
    result = _run(mixers.stratified(), oracle, steps=2500, seeds=[0])
    assert result.record_steps[1] == 2
    assert result.weights.shape == (1250, 1, K)


def test_gap_is_worst_task_minus_optimum(oracle):
    """With an optimum, gap has shape (R,) and equals worst_task − optimum."""
    result = _run(mixers.ama_r(1.0), oracle, optimum=0.25)
    assert result.gap.shape == (2,)
    np.testing.assert_array_equal(result.gap, result.worst_task - 0.25)
    assert result.optimum == 0.25


def test_gap_is_none_without_optimum(oracle):
    """Without an optimum, gap and optimum are None."""
    result = _run(mixers.ama_r(1.0), oracle)
    assert result.gap is None
    assert result.optimum is None


def test_worst_task_is_the_max_of_final_task_scores(oracle):
    """worst_task is the per-replicate max over tasks of task_scores."""
    result = _run(mixers.ama_s(1.0, 0.2), oracle)
    np.testing.assert_array_equal(result.worst_task, result.task_scores.max(axis=1))


def test_final_scores_are_the_problem_scores_at_the_averaged_iterate(problem):
    """task_scores equals problem.task_scores at the oracle's averaged θ̄ after the run."""
    oracle = SimulatedOracle(problem)
    result = _run(mixers.ama_r(1.0), oracle)
    np.testing.assert_allclose(
        result.task_scores, problem.task_scores(oracle.average_theta), rtol=1e-12
    )
    np.testing.assert_allclose(
        result.last_task_scores, problem.task_scores(oracle.theta), rtol=1e-12
    )


def test_recorded_weights_lie_on_the_simplex(oracle):
    """Every recorded α_t is non-negative and sums to one."""
    for make in ADAPTIVE.values():
        result = _run(make(), oracle)
        assert np.all(result.weights >= 0)
        np.testing.assert_allclose(result.weights.sum(-1), 1.0, atol=1e-12)


def test_first_recorded_weights_are_the_mixers_initial_weights(oracle):
    """α_0 (the weights of step 0's batch) is uniform for an EG mixer."""
    result = _run(mixers.ama_r(1.0), oracle)
    np.testing.assert_allclose(result.weights[0], 1.0 / K)


def test_average_weights_are_the_mean_of_all_played_weights(oracle):
    """With every step recorded, average_weights is the mean of the weight trajectory."""
    result = _run(mixers.ama_s(1.0, 0.2), oracle, record_every=1)
    np.testing.assert_allclose(result.average_weights, result.weights.mean(axis=0), rtol=1e-12)


def test_static_mixers_record_their_static_weights(oracle):
    """uniform plays sizes / Σ sizes and stratified plays 1/k at every step."""
    uniform = _run(mixers.uniform(SIZES), oracle)
    np.testing.assert_allclose(uniform.weights, np.broadcast_to(np.array(SIZES) / 100, (60, 2, K)))
    stratified = _run(mixers.stratified(), oracle)
    np.testing.assert_allclose(stratified.weights, 1.0 / K)


def test_configuration_is_recorded(oracle):
    """The result records method, score, apply, schedule, seeds, sizes and step count."""
    result = _run(mixers.ama_s(1.0, 0.2), oracle, schedule="1/sqrt(t)", seeds=[4, 5])
    assert (result.method, result.score, result.apply) == ("ama-s", "clipped", "resample")
    assert result.schedule == "1/sqrt(t)"
    assert result.seeds == (4, 5)
    assert (result.steps, result.batch_size, result.signal) == (60, 4, "batch")
    assert result.learning_rate == 0.5
    assert result.wall_time > 0


def test_an_int_seed_gives_one_replicate(oracle):
    """seeds=7 runs one replicate recorded as seeds == (7,)."""
    result = _run(mixers.ama_r(1.0), oracle, seeds=7)
    assert result.seeds == (7,)
    assert result.task_scores.shape == (1, K)


def test_to_dict_is_json_serialisable(oracle):
    """to_dict() survives json.dumps, with arrays as lists and no mixer state."""
    result = _run(mixers.ama_s(1.0, 0.2), oracle, optimum=0.1)
    data = json.loads(json.dumps(result.to_dict()))
    assert "mixer_state" not in data
    assert np.array_equal(np.array(data["weights"]), result.weights)
    assert data["gap"] == result.gap.tolist()


def test_to_dict_without_optimum_is_json_serialisable(oracle):
    """to_dict() with gap = None still serialises."""
    data = json.loads(json.dumps(_run(mixers.stratified(), oracle).to_dict()))
    assert data["gap"] is None and data["optimum"] is None


def test_mixer_state_is_returned_for_inspection(oracle):
    """mixer_state holds the final EG state, whose weights are the next α to play."""
    result = _run(mixers.ama_r(1.0), oracle)
    assert isinstance(result.mixer_state, mixers.EGState)
    assert result.mixer_state.weights.shape == (2, K)


# ------------------------------------------------------------------- determinism
@pytest.mark.parametrize("name", list(ADAPTIVE))
def test_same_seeds_give_bitwise_identical_results(oracle, name):
    """Two runs with the same seeds agree bit for bit on weights and final scores."""
    a = _run(ADAPTIVE[name](), oracle, seeds=[3, 4])
    b = _run(ADAPTIVE[name](), SimulatedOracle(oracle.problem), seeds=[3, 4])
    np.testing.assert_array_equal(a.weights, b.weights)
    np.testing.assert_array_equal(a.task_scores, b.task_scores)
    np.testing.assert_array_equal(a.task_examples, b.task_examples)


@pytest.mark.parametrize("name", list(ADAPTIVE))
def test_different_seeds_give_different_results(oracle, name):
    """Changing the seeds changes the trajectory and the final scores."""
    a = _run(ADAPTIVE[name](), oracle, seeds=[3, 4])
    b = _run(ADAPTIVE[name](), oracle, seeds=[5, 6])
    assert not np.array_equal(a.weights, b.weights)
    assert not np.array_equal(a.task_scores, b.task_scores)


@pytest.mark.parametrize("name", list(ADAPTIVE))
def test_replicates_within_a_run_differ(oracle, name):
    """Two seeds in one run follow different trajectories (independent streams)."""
    result = _run(ADAPTIVE[name](), oracle, seeds=[3, 4])
    assert not np.array_equal(result.task_scores[0], result.task_scores[1])


@pytest.mark.parametrize("name", list(ADAPTIVE))
def test_a_replicate_runs_the_same_alone_as_batched(oracle, name):
    """run(seeds=[3]) equals replicate 1 of run(seeds=[2, 3, 4])."""
    alone = _run(ADAPTIVE[name](), oracle, seeds=[3])
    batched = _run(ADAPTIVE[name](), oracle, seeds=[2, 3, 4])
    np.testing.assert_allclose(alone.weights[:, 0], batched.weights[:, 1], rtol=0, atol=1e-12)
    np.testing.assert_allclose(alone.task_scores[0], batched.task_scores[1], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(alone.task_examples[0], batched.task_examples[1])


def test_zero_reference_excess_ama_r_equals_group_dro(problem):
    """With ℓ ≡ 0, AMA-R on the unclipped excess is exactly Group DRO (notes §2)."""
    zero = dataclasses.replace(problem, reference_losses=np.zeros_like(problem.reference_losses))
    ama = _run(mixers.ama_r(0.7, score="excess"), SimulatedOracle(zero))
    dro = _run(mixers.group_dro(0.7), SimulatedOracle(zero))
    np.testing.assert_array_equal(ama.weights, dro.weights)
    np.testing.assert_array_equal(ama.task_scores, dro.task_scores)


def test_excess_ama_r_differs_from_group_dro_with_real_references(oracle):
    """With the specialists' losses cached, the excess score changes the trajectory."""
    ama = _run(mixers.ama_r(0.7, score="excess"), oracle)
    dro = _run(mixers.group_dro(0.7), oracle)
    assert not np.array_equal(ama.weights, dro.weights)


def test_check_flag_does_not_change_the_numbers(oracle):
    """run(check=False) gives the same result as the default checked run."""
    a = _run(mixers.ama_s(1.0, 0.2), oracle)
    b = _run(mixers.ama_s(1.0, 0.2), oracle, check=False)
    np.testing.assert_array_equal(a.weights, b.weights)
    np.testing.assert_array_equal(a.task_scores, b.task_scores)


def test_progress_bar_returns_the_same_numbers(oracle, capsys):
    """progress=True (tqdm) runs and gives the same numbers as progress=False."""
    quiet = _run(mixers.ama_r(1.0), oracle)
    shown = _run(mixers.ama_r(1.0), oracle, progress=True)
    capsys.readouterr()
    np.testing.assert_array_equal(quiet.weights, shown.weights)
    np.testing.assert_array_equal(quiet.task_scores, shown.task_scores)


# --------------------------------------------------------------- bookkeeping
def test_ama_s_draws_b_examples_per_step(oracle):
    """AMA-S (resample) costs B examples per step: examples.sum(-1) == steps·B."""
    result = _run(mixers.ama_s(1.0, 0.2), oracle, steps=80, batch_size=5)
    np.testing.assert_array_equal(result.task_examples.sum(-1), 80 * 5)


def test_ama_r_draws_k_b_examples_per_step(oracle):
    """AMA-R (reweight) costs k·B examples per step: B of every task."""
    result = _run(mixers.ama_r(1.0), oracle, steps=80, batch_size=5)
    np.testing.assert_array_equal(result.task_examples, np.full((2, K), 80 * 5))


def test_apply_override_changes_the_cost(oracle):
    """ama_r with apply='resample' draws B examples per step instead of k·B."""
    result = _run(mixers.ama_r(1.0), oracle, steps=80, batch_size=5, apply="resample")
    assert result.apply == "resample"
    np.testing.assert_array_equal(result.task_examples.sum(-1), 80 * 5)


def test_score_override_is_used(oracle):
    """score='loss' overrides the mixer's clipped default and changes the weights."""
    raw = _run(mixers.ama_r(1.0), oracle, score="loss")
    clipped = _run(mixers.ama_r(1.0), oracle)
    assert raw.score == "loss"
    assert not np.allclose(raw.weights, clipped.weights)


def _assert_multinomial_counts(examples, total, probs):
    expected = total * np.asarray(probs)
    std = np.sqrt(total * np.asarray(probs) * (1 - np.asarray(probs)))
    assert np.all(np.abs(examples - expected) <= 5 * std)


def test_stratified_resampling_draws_tasks_equally(oracle):
    """Stratified resampling spends about steps·B/k examples on each task."""
    result = _run(mixers.stratified(), oracle, steps=500, batch_size=8, seeds=[0, 1, 2])
    np.testing.assert_array_equal(result.task_examples.sum(-1), 4000)
    _assert_multinomial_counts(result.task_examples, 4000, np.full(K, 1 / K))


def test_uniform_resampling_draws_tasks_in_proportion_to_size(oracle):
    """Uniform resampling spends examples in proportion to the task sizes (60:20:20)."""
    result = _run(mixers.uniform(SIZES), oracle, steps=500, batch_size=8, seeds=[0, 1, 2])
    _assert_multinomial_counts(result.task_examples, 4000, np.array(SIZES) / sum(SIZES))


def test_ama_s_weights_keep_the_smoothing_floor(oracle):
    """AMA-S plays every task with weight >= smoothing/k at every step (exploration)."""
    result = _run(mixers.ama_s(5.0, 0.3), oracle, steps=200)
    assert np.all(result.weights >= 0.3 / K - 1e-12)


# ------------------------------------------------------------------ schedules
def test_constant_schedule_returns_the_base_rate():
    """constant: η_t = η at every step."""
    assert learning_rate_at(0.3, "constant", 0, 100) == 0.3
    assert learning_rate_at(0.3, "constant", 99, 100) == 0.3


def test_inverse_sqrt_horizon_schedule_scales_by_total_steps():
    """1/sqrt(T): η_t = η/√T at every step."""
    assert learning_rate_at(2.0, "1/sqrt(T)", 0, 400) == pytest.approx(0.1)
    assert learning_rate_at(2.0, "1/sqrt(T)", 399, 400) == pytest.approx(0.1)


def test_inverse_sqrt_step_schedule_decays_with_t():
    """1/sqrt(t): η_t = η/√(t+1), so η_0 = η and η_3 = η/2."""
    assert learning_rate_at(2.0, "1/sqrt(t)", 0, 10) == pytest.approx(2.0)
    assert learning_rate_at(2.0, "1/sqrt(t)", 3, 10) == pytest.approx(1.0)


def test_schedules_constant_lists_the_known_schedules():
    """SCHEDULES names exactly the three supported schedules."""
    assert SCHEDULES == ("constant", "1/sqrt(T)", "1/sqrt(t)")


def test_unknown_schedule_raises_value_error_naming_schedule(oracle):
    """An unknown schedule raises ValueError naming schedule, directly and through run."""
    with pytest.raises(ValueError, match="schedule='cosine'"):
        learning_rate_at(1.0, "cosine", 0, 10)
    with pytest.raises(ValueError, match="schedule='cosine'"):
        _run(mixers.ama_r(1.0), oracle, schedule="cosine")


def test_schedule_changes_the_trajectory(oracle):
    """A decaying schedule gives a different run than a constant one."""
    constant = _run(mixers.ama_r(1.0), oracle)
    decaying = _run(mixers.ama_r(1.0), oracle, schedule="1/sqrt(t)")
    assert not np.array_equal(constant.task_scores, decaying.task_scores)


# -------------------------------------------------------------------- claims
@pytest.fixture(scope="module")
def equal_budget_runs():
    """Imbalanced (600, 60, 60) conflicting quadratic; every method spends the same examples."""
    problem = make_problem("quadratic", sizes=(600, 60, 60), dim=4, conflict=1.0, seed=0)
    oracle = SimulatedOracle(problem)
    batch, k = 8, problem.num_tasks
    budget = 1500 * k * batch
    common = {
        "learning_rate": 1.0,
        "schedule": "1/sqrt(T)",
        "batch_size": batch,
        "seeds": [0, 1, 2],
    }
    per_step = {"ama_r": k * batch, "ama_s": batch, "uniform": batch, "stratified": batch}
    methods = {
        "ama_r": mixers.ama_r(1.0),
        "ama_s": mixers.ama_s(1.0, 0.1),
        "uniform": mixers.uniform(problem.sizes),
        "stratified": mixers.stratified(),
    }
    return budget, {
        name: run(mixer, oracle, steps=budget // per_step[name], **common)
        for name, mixer in methods.items()
    }


def test_equal_budget_runs_spend_the_same_examples(equal_budget_runs):
    """Every method of the comparison draws exactly the same number of examples."""
    budget, results = equal_budget_runs
    for result in results.values():
        np.testing.assert_array_equal(result.task_examples.sum(-1), budget)


@pytest.mark.parametrize("adaptive", ["ama_r", "ama_s"])
@pytest.mark.parametrize("static", ["uniform", "stratified"])
def test_ama_beats_static_mixing_on_imbalanced_conflicting_tasks(
    equal_budget_runs, adaptive, static
):
    """At equal example budget AMA reaches a lower mean worst-task E than static mixing."""
    _, results = equal_budget_runs
    assert results[adaptive].worst_task.mean() < results[static].worst_task.mean()


# ----------------------------------------------------------------- bad input
@pytest.mark.parametrize("steps", [0, -5])
def test_non_positive_steps_raise_value_error_naming_steps(oracle, steps):
    """steps < 1 raises ValueError naming steps."""
    with pytest.raises(ValueError, match="steps"):
        _run(mixers.ama_r(1.0), oracle, steps=steps)


@pytest.mark.parametrize("steps", [2.5, "10", True])
def test_non_integer_steps_raise_type_error_naming_steps(oracle, steps):
    """A float, string or bool steps raises TypeError naming steps."""
    with pytest.raises(TypeError, match="steps"):
        _run(mixers.ama_r(1.0), oracle, steps=steps)


def test_zero_batch_size_raises_value_error_naming_batch_size(oracle):
    """batch_size=0 raises ValueError naming batch_size."""
    with pytest.raises(ValueError, match="batch_size"):
        _run(mixers.ama_r(1.0), oracle, batch_size=0)


def test_float_batch_size_raises_type_error_naming_batch_size(oracle):
    """batch_size=4.0 raises TypeError naming batch_size."""
    with pytest.raises(TypeError, match="batch_size"):
        _run(mixers.ama_r(1.0), oracle, batch_size=4.0)


@pytest.mark.parametrize("learning_rate", [0.0, -0.1])
def test_non_positive_learning_rate_raises_value_error_naming_it(oracle, learning_rate):
    """learning_rate <= 0 raises ValueError naming learning_rate."""
    with pytest.raises(ValueError, match="learning_rate"):
        _run(mixers.ama_r(1.0), oracle, learning_rate=learning_rate)


@pytest.mark.parametrize("learning_rate", [float("nan"), float("inf"), "0.1", None])
def test_non_finite_or_non_numeric_learning_rate_raises_naming_it(oracle, learning_rate):
    """A NaN, infinite, string or None learning_rate raises TypeError naming learning_rate."""
    with pytest.raises(TypeError, match="learning_rate"):
        _run(mixers.ama_r(1.0), oracle, learning_rate=learning_rate)


def test_integer_learning_rate_is_accepted(oracle):
    """An int learning_rate is a valid number and is recorded as a float."""
    assert _run(mixers.ama_r(1.0), oracle, learning_rate=1).learning_rate == 1.0


def test_unknown_apply_raises_value_error_naming_apply(oracle):
    """apply='mix' raises ValueError naming apply."""
    with pytest.raises(ValueError, match="apply='mix'"):
        _run(mixers.ama_r(1.0), oracle, apply="mix")


def test_unknown_score_raises_value_error_naming_score(oracle):
    """score='hinge' raises ValueError naming score."""
    with pytest.raises(ValueError, match="score='hinge'"):
        _run(mixers.ama_r(1.0), oracle, score="hinge")


@pytest.mark.parametrize("mixer", [None, "ama_r", (1, 2, 3)])
def test_non_mixer_raises_type_error_naming_mixer(oracle, mixer):
    """Anything but a Mixer raises TypeError naming mixer."""
    with pytest.raises(TypeError, match="mixer"):
        _run(mixer, oracle)


def test_empty_seeds_raise_value_error_naming_seeds(oracle):
    """seeds=[] raises ValueError naming seeds."""
    with pytest.raises(ValueError, match="seeds"):
        _run(mixers.ama_r(1.0), oracle, seeds=[])


@pytest.mark.parametrize("seeds", [[-1], [0, -3], -2])
def test_negative_seed_raises_naming_seed(oracle, seeds):
    """A negative seed raises TypeError naming the seed."""
    with pytest.raises(TypeError, match="seed"):
        _run(mixers.ama_r(1.0), oracle, seeds=seeds)


def test_non_integer_seed_raises_naming_seed(oracle):
    """A float seed raises TypeError naming the seed."""
    with pytest.raises(TypeError, match="seed"):
        _run(mixers.ama_r(1.0), oracle, seeds=[1.5])


def test_zero_record_every_raises_value_error_naming_record_every(oracle):
    """record_every=0 raises ValueError naming record_every."""
    with pytest.raises(ValueError, match="record_every"):
        _run(mixers.ama_r(1.0), oracle, record_every=0)


def test_too_many_seeds_for_the_oracle_raise_value_error(oracle):
    """More seeds than max_replicates raises ValueError naming the limit."""
    oracle.max_replicates = 1
    with pytest.raises(ValueError, match="at most 1"):
        _run(mixers.ama_r(1.0), oracle, seeds=[0, 1])


def test_non_oracle_raises_type_error_naming_oracle():
    """An object that is not an oracle raises TypeError naming oracle."""
    with pytest.raises(TypeError, match="oracle"):
        _run(mixers.ama_r(1.0), "not an oracle")


def test_broken_oracle_raises_oracle_error(problem):
    """A dynamically broken oracle is caught by the built-in check before training."""

    class Frozen(SimulatedOracle):
        def step(self, batch, loss_weights, learning_rate):
            pass

    with pytest.raises(OracleError, match=r"step\(\)"):
        _run(mixers.ama_r(1.0), Frozen(problem))


# ------------------------------------------------------------------- data parallelism
class _Ranks:
    """Two "ranks" as threads: an all-reduce of task scores and of gradients, in step."""

    def __init__(self, world: int) -> None:
        import threading

        self.world, self.barrier = world, threading.Barrier(world)
        self.slots: list = [None] * world

    def all_sum(self, rank: int, value: np.ndarray) -> np.ndarray:
        self.slots[rank] = value
        self.barrier.wait()
        total = sum(self.slots)
        self.barrier.wait()
        return total


class _DataParallelOracle(SimulatedOracle):
    """The simulator with DDP's gradient averaging over the threads."""

    def __init__(self, problem, ranks: _Ranks, rank: int) -> None:
        super().__init__(problem)
        self.ranks, self.rank = ranks, rank

    def step(self, batch, loss_weights, learning_rate):
        if self._cache is None or self._cache[0] is not batch:
            self.losses(batch)
        _, x, slope = self._cache
        grad = np.vecmat(loss_weights * slope, x)
        grad = self.ranks.all_sum(self.rank, grad) / self.ranks.world  # DDP's mean
        self.theta = self.problem.project(self.theta - learning_rate * grad)
        self.theta_sum += self.theta
        self.iterations += 1


@pytest.mark.parametrize(
    "mixer",
    [mixers.ama_r(1.0), mixers.ama_s(1.0, 0.2), mixers.doremi(1.0, 1e-3, reference="specialists")],
    ids=["r", "s", "doremi"],
)
def test_two_ranks_sharing_one_global_batch_equal_one_rank(mixer):
    """shard=(rank, 2) with batch B per rank trains what one rank does with 2B: the same
    global batch, the same mixer updates, gradients equal up to summation order.  For
    DoReMi that includes the final model's length (as many examples as the proxy drew)."""
    import threading

    problem = make_problem("quadratic", sizes=(60, 20, 20), dim=4)
    whole = run(mixer, SimulatedOracle(problem), steps=30, learning_rate=0.1, batch_size=8)
    ranks, results, thetas = _Ranks(2), [None, None], [None, None]

    def rank_run(rank: int) -> None:
        def reduce(means, counts):
            sums = ranks.all_sum(rank, np.concatenate([means * counts, counts], axis=-1))
            k = means.shape[-1]
            return sums[..., :k] / np.maximum(sums[..., k:], 1), sums[..., k:].astype(int)

        oracle = _DataParallelOracle(problem, ranks, rank)
        results[rank] = run(
            mixer,
            oracle,
            steps=30,
            learning_rate=0.1,
            batch_size=4,
            reduce=reduce,
            shard=(rank, 2),
            check=False,
        )
        thetas[rank] = oracle.average_theta

    threads = [threading.Thread(target=rank_run, args=(r,)) for r in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    for result in results:
        assert result.steps == whole.steps
        np.testing.assert_allclose(result.weights, whole.weights, rtol=1e-10, atol=1e-12)
        np.testing.assert_array_equal(result.task_examples, whole.task_examples)
        np.testing.assert_allclose(result.task_scores, whole.task_scores, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(thetas[0], thetas[1])  # every rank holds the same model


def test_aioli_steps_after_the_last_round_record_that_rounds_gains():
    """A horizon that rounds do not divide: the leftover steps train on the last round's
    mixture and record its gains (not the empty rows they start as)."""
    from amasim import lmo

    problem = make_problem("quadratic", sizes=(40, 40), dim=3)
    mixer = lmo.aioli(0.5, sweeps=2, epsilon=0.75, ema=0.5, normalise=True)
    result = run(
        mixer,
        SimulatedOracle(problem),
        steps=105,
        learning_rate=0.1,
        rounds=10,
        record_every=1,
        batch_size=4,
    )
    assert np.any(result.scores[99] != 0)
    np.testing.assert_array_equal(
        result.scores[100:], np.broadcast_to(result.scores[99], (5, 1, 2))
    )
    np.testing.assert_array_equal(
        result.weights[100:], np.broadcast_to(result.weights[99], (5, 1, 2))
    )


def test_sharding_needs_a_reduce_and_array_data():
    with pytest.raises(ValueError, match="pass reduce"):
        run(
            mixers.ama_r(1.0),
            SimulatedOracle(make_problem("quadratic", sizes=(20, 20), dim=2)),
            steps=2,
            learning_rate=0.1,
            shard=(0, 2),
        )
