"""The method registry: every method trains within its example budget, deterministically,
and refuses settings or oracles it cannot run on."""

from __future__ import annotations

import numpy as np
import pytest

from amasim.capabilities import MissingCapabilityError
from amasim.registry import METHODS, ONLINE, Setting, missing, train_method
from amasim.simulator import SimulatedOracle
from amasim.transfer import GradientSimulatedOracle, target_problem

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
    with pytest.raises(ValueError, match="unknown"):
        train_method("nope", SimulatedOracle(SPLIT.problem), [0], Setting(800, 0.1))
