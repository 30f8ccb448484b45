"""The method registry: every method trains within its example budget, deterministically,
and refuses settings or oracles it cannot run on."""

from __future__ import annotations

import numpy as np
import pytest

from amasim.capabilities import MissingCapabilityError
from amasim.registry import METHODS, ONLINE, Setting, missing, train_method
from amasim.simulator import SimulatedOracle
from amasim.transfer import GradientSimulatedOracle, target_problem, transfer_problem

SPLIT = target_problem(generic_sizes=(30, 30, 30), target_size=10, dim=3, seed=2)
TARGET = (SPLIT.features, SPLIT.targets)


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("online", ["per-batch", "rounds"])
def test_every_method_spends_at_most_its_budget_and_replays(name, online):
    if online == "rounds" and name not in ONLINE:
        pytest.skip("the online option moves only the ONLINE mixers")
    setting = Setting(budget=960, learning_rate=0.05, target_weights=[0.5, 0.3, 0.2], online=online)
    oracle = GradientSimulatedOracle(SPLIT.problem, TARGET)
    first = train_method(name, oracle, [0, 1], setting)
    theta = oracle.theta.copy()
    assert 0 < first.examples <= setting.budget and np.isfinite(theta).all()
    assert first.protocol == ("rounds" if online == "rounds" else METHODS[name].protocol)
    assert train_method(name, oracle, [0, 1], setting) == first
    np.testing.assert_array_equal(oracle.theta, theta)


class CountingOracle(GradientSimulatedOracle):
    """Counts every example drawn through ``sample``, across resets."""

    drawn = 0

    def sample(self, task_ids):
        self.drawn += task_ids.shape[1]
        return super().sample(task_ids)


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("budget", [960, 1003])
def test_reported_examples_are_the_examples_drawn(name, budget):
    """The budget accounting is measured, not only computed: the examples a method draws
    (training, probes, sweeps and LearnParams rounds alike) are those it reports."""
    setting = Setting(budget=budget, learning_rate=0.05, target_weights=[0.5, 0.3, 0.2])
    oracle = CountingOracle(SPLIT.problem, TARGET)
    trained = train_method(name, oracle, [0, 1], setting)
    assert oracle.drawn == trained.examples <= budget


@pytest.mark.parametrize("name", ["aioli", "dml", "skill-it"])
def test_budget_too_small_for_the_measurement_is_refused(name):
    """Aioli, DML and Skill-It measure before they train: a budget that cannot pay for the
    measurement and one training step per round is an error naming the minimum budget."""
    problem = transfer_problem(8, dim=4, sizes=(30,) * 8)
    setting = Setting(budget=80, learning_rate=0.05)
    with pytest.raises(ValueError, match=rf"method '{name}'.*budget >= \d+"):
        train_method(name, SimulatedOracle(problem), [0], setting)


def test_dml_runs_on_two_groups():
    """DML's sweep is valid for m = 2 (its second smoothing must exceed 1/m)."""
    oracle = SimulatedOracle(transfer_problem(2, dim=4, sizes=(30, 30)))
    trained = train_method("dml", oracle, [0], Setting(budget=800, learning_rate=0.05))
    assert trained.examples == 800 and np.isfinite(oracle.theta).all()


def test_missing_capabilities_are_named():
    plain = SimulatedOracle(SPLIT.problem)
    setting = Setting(budget=800, learning_rate=0.05)
    assert missing("dga", plain) == ("task_gradients", "target_set")
    assert missing("aioli", plain) == ()
    assert missing("importance-sampling", GradientSimulatedOracle(SPLIT.problem, TARGET), setting)
    with pytest.raises(MissingCapabilityError, match=r"method 'doge'.*task_gradients"):
        train_method("doge", plain, [0], setting)


def test_bad_settings_and_names_are_rejected():
    with pytest.raises(ValueError, match="online"):
        Setting(budget=800, learning_rate=0.1, online="sometimes")
    with pytest.raises(ValueError, match="budget"):
        Setting(budget=10, learning_rate=0.1)
    for field in ("rounds", "batch_size"):
        with pytest.raises(ValueError, match=rf"{field}=0"):
            Setting(budget=800, learning_rate=0.1, **{field: 0})
    with pytest.raises(ValueError, match="unknown"):
        train_method("nope", SimulatedOracle(SPLIT.problem), [0], Setting(800, 0.1))
