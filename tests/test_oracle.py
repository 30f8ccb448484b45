"""Behaviour of the oracle protocol: check_oracle accepts good oracles and names broken calls."""

from __future__ import annotations

import types

import numpy as np
import pytest

import amasim
from amasim import mixers
from amasim.checker import check_oracle, check_oracle_interface
from amasim.oracle import Batch, OracleError
from amasim.problems import PROBLEMS, make_problem
from amasim.simulator import SimulatedOracle

SIZES = (60, 20, 20)
MEMBERS = (
    "task_names",
    "task_sizes",
    "max_replicates",
    "reset",
    "sample",
    "losses",
    "step",
    "evaluate",
)


@pytest.fixture(scope="module")
def problem():
    return make_problem("quadratic", sizes=SIZES, dim=3, seed=0)


@pytest.fixture(scope="module", params=PROBLEMS)
def any_problem(request):
    return make_problem(request.param, sizes=SIZES, dim=3, seed=1)


# ----------------------------------------------------------------- broken oracles
class ListLosses(SimulatedOracle):
    def losses(self, batch):
        return super().losses(batch).tolist()


class WrongShapeLosses(SimulatedOracle):
    def losses(self, batch):
        return super().losses(batch)[:, :-1]


class IntegerLosses(SimulatedOracle):
    def losses(self, batch):
        return np.round(super().losses(batch)).astype(np.int64)


class NaNLosses(SimulatedOracle):
    def losses(self, batch):
        out = super().losses(batch).copy()
        out[0, 0] = np.nan
        return out


class UnseededReset(SimulatedOracle):
    def reset(self, seeds):
        super().reset(seeds)
        self.theta = 0.1 * np.random.default_rng().standard_normal(self.theta.shape)


class IgnoresLossWeights(SimulatedOracle):
    def step(self, batch, loss_weights, learning_rate):
        super().step(batch, np.full_like(loss_weights, 1.0 / loss_weights.shape[1]), learning_rate)


class NeverSteps(SimulatedOracle):
    def step(self, batch, loss_weights, learning_rate):
        pass


class WrongTaskIds(SimulatedOracle):
    def sample(self, task_ids):
        batch = super().sample(task_ids)
        return batch._replace(task_ids=np.zeros_like(batch.task_ids))


class SampleReturnsDict(SimulatedOracle):
    def sample(self, task_ids):
        return dict(super().sample(task_ids)._asdict())


class WrongShapeEvaluate(SimulatedOracle):
    def evaluate(self, score="clipped", averaged=False):
        return super().evaluate(score, averaged)[:, :-1]


class WrongShapeAveragedEvaluate(SimulatedOracle):
    def evaluate(self, score="clipped", averaged=False):
        out = super().evaluate(score, averaged)
        return out[:1] if averaged else out


def _with_sizes(problem, sizes):
    oracle = SimulatedOracle(problem)
    oracle.task_sizes = sizes
    return oracle


def _namespace_without(problem, missing: str) -> types.SimpleNamespace:
    """A from-scratch oracle object holding every protocol member except ``missing``."""
    inner = SimulatedOracle(problem)
    members = {name: getattr(inner, name) for name in MEMBERS if name != missing}
    return types.SimpleNamespace(**members)


# ------------------------------------------------------------------ good oracles
def test_simulated_oracle_passes_check_oracle_for_every_family(any_problem):
    """SimulatedOracle follows the protocol on each of the three problem families."""
    check_oracle(SimulatedOracle(any_problem))


def test_simulated_oracle_is_an_instance_of_the_runtime_protocol(problem):
    """isinstance(SimulatedOracle(...), amasim.Oracle) holds (runtime_checkable Protocol)."""
    assert isinstance(SimulatedOracle(problem), amasim.Oracle)


def test_object_missing_a_method_is_not_an_instance_of_the_protocol(problem):
    """An object lacking evaluate() fails the runtime isinstance check."""
    assert not isinstance(_namespace_without(problem, "evaluate"), amasim.Oracle)


def test_complete_namespace_oracle_passes_check_oracle(problem):
    """A duck-typed object with every member (no subclassing) passes check_oracle."""
    check_oracle(_namespace_without(problem, missing=""))


def test_check_oracle_interface_counts_tasks_without_calling_the_oracle(problem):
    """The call-free part of check_oracle returns k, and names a missing method."""
    oracle = SimulatedOracle(problem)
    assert check_oracle_interface(oracle) == problem.num_tasks
    assert oracle._keys is None  # nothing was called: reset() never ran
    with pytest.raises(OracleError, match=r"sample\(\)"):
        check_oracle_interface(_namespace_without(problem, "sample"))


def test_check_oracle_respects_max_replicates(problem):
    """An oracle that runs one replicate at a time is checked with one seed, not rejected."""
    oracle = SimulatedOracle(problem)
    oracle.max_replicates = 1
    check_oracle(oracle, seeds=(0, 1, 2))
    assert oracle.theta.shape[0] == 1


def test_check_oracle_leaves_the_oracle_usable(problem):
    """After check_oracle the oracle still resets and samples normally."""
    oracle = SimulatedOracle(problem)
    check_oracle(oracle)
    oracle.reset([5])
    batch = oracle.sample(np.zeros((1, 4), dtype=np.int64))
    assert oracle.losses(batch).shape == (1, 4)


# ---------------------------------------------------------------- broken oracles
@pytest.mark.parametrize("missing", MEMBERS)
def test_check_oracle_names_a_missing_member(problem, missing):
    """An oracle lacking one attribute or method is rejected with that member's name."""
    with pytest.raises(OracleError, match=missing):
        check_oracle(_namespace_without(problem, missing))


def test_check_oracle_rejects_task_sizes_length_mismatch(problem):
    """task_sizes with fewer entries than task_names is rejected, naming task_sizes."""
    with pytest.raises(OracleError, match=r"task_sizes: has 2 entries for 3 task_names"):
        check_oracle(_with_sizes(problem, SIZES[:2]))


def test_check_oracle_rejects_an_empty_task(problem):
    """A task of size 0 is rejected, naming task_sizes and the task."""
    with pytest.raises(OracleError, match=r"task_sizes: task 'task1' has size 0"):
        check_oracle(_with_sizes(problem, (60, 0, 20)))


def test_check_oracle_rejects_non_integer_task_size(problem):
    """A float task size is rejected, naming task_sizes."""
    with pytest.raises(OracleError, match="task_sizes"):
        check_oracle(_with_sizes(problem, (60.0, 20, 20)))


def test_check_oracle_rejects_empty_task_names(problem):
    """An oracle with no tasks at all is rejected, naming task_names."""
    oracle = _with_sizes(problem, ())
    oracle.task_names = ()
    with pytest.raises(OracleError, match="task_names"):
        check_oracle(oracle)


def test_check_oracle_rejects_losses_returned_as_list(problem):
    """losses() returning a list instead of an ndarray is rejected, naming losses()."""
    with pytest.raises(OracleError, match=r"losses\(\): returned list"):
        check_oracle(ListLosses(problem))


def test_check_oracle_rejects_losses_of_wrong_shape(problem):
    """losses() with one entry missing per replicate is rejected, naming losses() and shapes."""
    with pytest.raises(
        OracleError, match=r"losses\(\): returned shape \(2, 5\), expected \(2, 6\)"
    ):
        check_oracle(WrongShapeLosses(problem))


def test_check_oracle_rejects_integer_losses(problem):
    """losses() with an integer dtype is rejected, naming losses() and the dtype."""
    with pytest.raises(OracleError, match=r"losses\(\): returned dtype int64"):
        check_oracle(IntegerLosses(problem))


def test_check_oracle_rejects_nan_losses(problem):
    """losses() containing a NaN is rejected, naming losses()."""
    with pytest.raises(OracleError, match=r"losses\(\): returned NaN or infinite"):
        check_oracle(NaNLosses(problem))


def test_check_oracle_rejects_non_deterministic_reset(problem):
    """reset() drawing θ₀ from an unseeded generator is rejected, naming reset(seeds)."""
    with pytest.raises(OracleError, match=r"reset\(seeds\): the same seeds gave different"):
        check_oracle(UnseededReset(problem))


def test_check_oracle_rejects_step_that_ignores_loss_weights(problem):
    """step() that moves θ under all-zero loss weights is rejected, naming step()."""
    with pytest.raises(OracleError, match=r"step\(\): zero loss weights changed the losses"):
        check_oracle(IgnoresLossWeights(problem))


def test_check_oracle_rejects_step_that_never_moves_theta(problem):
    """step() that never changes θ is rejected, naming step()."""
    with pytest.raises(OracleError, match=r"step\(\): a step with positive weights left"):
        check_oracle(NeverSteps(problem))


def test_check_oracle_rejects_sample_with_other_task_ids(problem):
    """sample() echoing task ids other than the ones asked for is rejected, naming sample()."""
    with pytest.raises(OracleError, match=r"sample\(\): task_ids differ"):
        check_oracle(WrongTaskIds(problem))


def test_check_oracle_rejects_sample_not_returning_a_batch(problem):
    """sample() returning a dict instead of a Batch is rejected, naming sample()."""
    with pytest.raises(OracleError, match=r"sample\(\): returned dict"):
        check_oracle(SampleReturnsDict(problem))


def test_check_oracle_rejects_evaluate_of_wrong_shape(problem):
    """evaluate() returning (R, k-1) scores is rejected, naming evaluate(averaged=False)."""
    with pytest.raises(OracleError, match=r"evaluate\(averaged=False\): returned shape"):
        check_oracle(WrongShapeEvaluate(problem))


def test_check_oracle_rejects_averaged_evaluate_of_wrong_shape(problem):
    """evaluate(averaged=True) of the wrong shape is rejected, naming the averaged call."""
    with pytest.raises(OracleError, match=r"evaluate\(averaged=True\): returned shape"):
        check_oracle(WrongShapeAveragedEvaluate(problem))


def test_oracle_error_message_suggests_a_fix(problem):
    """Every OracleError message carries a 'Fix:' hint."""
    with pytest.raises(OracleError, match="Fix: "):
        check_oracle(NaNLosses(problem))


def test_oracle_error_is_a_value_error():
    """OracleError subclasses ValueError, so generic handlers catch it."""
    assert issubclass(OracleError, ValueError)


def test_batch_is_a_named_tuple_with_the_documented_fields():
    """Batch exposes task_ids, reference_losses and data, in that order."""
    assert Batch._fields == ("task_ids", "reference_losses", "data")


# ---------------------------------------------------------------------- run()
def test_run_rejects_oracle_with_nan_losses(problem):
    """amasim.run on an oracle whose losses are NaN raises OracleError (a ValueError)."""
    with pytest.raises(ValueError, match=r"losses\(\)") as info:
        amasim.run(mixers.ama_r(1.0), NaNLosses(problem), steps=5, learning_rate=0.1)
    assert isinstance(info.value, OracleError)


def test_run_rejects_oracle_whose_step_ignores_weights(problem):
    """amasim.run on an oracle whose step ignores the weights raises OracleError."""
    with pytest.raises(OracleError, match=r"step\(\)"):
        amasim.run(mixers.ama_s(1.0, 0.1), IgnoresLossWeights(problem), steps=5, learning_rate=0.1)


def test_run_with_non_oracle_raises_type_error_naming_oracle():
    """amasim.run with an arbitrary object raises TypeError naming 'oracle'."""
    with pytest.raises(TypeError, match="oracle"):
        amasim.run(mixers.ama_r(1.0), object(), steps=5, learning_rate=0.1)


def test_run_with_empty_task_raises_type_error_naming_oracle(problem):
    """amasim.run with an oracle holding an empty task raises TypeError naming the oracle."""
    with pytest.raises(TypeError, match=r"oracle .*task_sizes"):
        amasim.run(mixers.ama_r(1.0), _with_sizes(problem, (60, 0, 20)), steps=5, learning_rate=0.1)


def test_run_without_check_skips_the_protocol_episode(problem):
    """run(check=False) does not call check_oracle, so the reset-determinism check is skipped."""
    result = amasim.run(
        mixers.ama_r(1.0), UnseededReset(problem), steps=5, learning_rate=0.1, check=False
    )
    assert result.task_scores.shape == (1, 3)
