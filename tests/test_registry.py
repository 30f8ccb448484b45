"""The method registry and the equal-budget training of every method through the one driver:
budgets are spent and replayed exactly, bad settings and oracles are refused, and a new
method added with one factory and one registry line runs by name everywhere."""

from __future__ import annotations

import json

import numpy as np
import pytest

from amasim import mixers, registry
from amasim.capabilities import MissingCapabilityError
from amasim.cli import main as amasim_main
from amasim.mixers import Signal
from amasim.registry import METHODS, Fixed, Method, Theory, build, describe, missing
from amasim.simulator import SimulatedOracle
from amasim.studies.compare import Setting, train
from amasim.transfer import GradientSimulatedOracle, target_problem, transfer_problem

SPLIT = target_problem(generic_sizes=(30, 30, 30), target_size=10, dim=3, seed=2)
TARGET = (SPLIT.features, SPLIT.targets)
ONLINE = [name for name, method in METHODS.items() if method.online]


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("online", ["per-batch", "rounds"])
def test_every_method_spends_at_most_its_budget_and_replays(name, online):
    if online == "rounds" and name not in ONLINE:
        pytest.skip("the online option moves only the adaptive batch mixers")
    setting = Setting(budget=960, learning_rate=0.05, target_weights=[0.5, 0.3, 0.2], online=online)
    oracle = GradientSimulatedOracle(SPLIT.problem, TARGET)
    first = train(name, oracle, [0, 1], setting)
    theta = oracle.theta.copy()
    assert np.all(0 < first.examples) and np.all(first.examples <= setting.budget)
    assert np.isfinite(theta).all()
    expected = "validation" if online == "rounds" else describe(name).signal.kind
    assert first.signal == expected
    again = train(name, oracle, [0, 1], setting)
    np.testing.assert_array_equal(oracle.theta, theta)
    np.testing.assert_array_equal(again.weights, first.weights)


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
    (training, sweeps and LearnParams rounds alike; DoReMi's final model) are those it
    reports, and DoReMi's proxy run is reported beside them."""
    setting = Setting(budget=budget, learning_rate=0.05, target_weights=[0.5, 0.3, 0.2])
    oracle = CountingOracle(SPLIT.problem, TARGET)
    result = train(name, oracle, [0, 1], setting)
    proxy = result.info.get("proxy", {}).get("examples", np.zeros(2, dtype=int))
    assert oracle.drawn == result.examples[0] + proxy[0]  # per replicate
    assert np.all(result.examples <= budget) and np.all(proxy <= budget)


@pytest.mark.parametrize("name", ["aioli", "dml", "skill-it"])
def test_budget_too_small_for_the_measurement_is_refused(name):
    """Aioli, DML and Skill-It measure before they train: a budget that cannot pay for the
    measurement and one training step per round is an error naming the minimum."""
    problem = transfer_problem(8, dim=4, sizes=(30,) * 8)
    setting = Setting(budget=80, learning_rate=0.05)
    with pytest.raises(ValueError, match=rf"mixer '{name}'.*at least \d+"):
        train(name, SimulatedOracle(problem), [0], setting)


def test_dml_runs_on_two_groups():
    """DML's sweep is valid for m = 2 (its second smoothing must exceed 1/m)."""
    oracle = SimulatedOracle(transfer_problem(2, dim=4, sizes=(30, 30)))
    result = train("dml", oracle, [0], Setting(budget=800, learning_rate=0.05))
    assert result.examples.tolist() == [800] and np.isfinite(oracle.theta).all()


def test_missing_capabilities_are_named():
    plain = SimulatedOracle(SPLIT.problem)
    assert missing("dga", plain) == ("task_gradients", "target_set")
    assert missing("aioli", plain) == ()
    assert missing("importance-sampling", plain) == ("target_set",)
    assert missing("ama-r", plain, Signal("alignment")) == ("task_gradients",)
    with pytest.raises(MissingCapabilityError, match=r"mixer 'doge'.*task_gradients"):
        train("doge", plain, [0], Setting(budget=800, learning_rate=0.05))


def test_bad_settings_and_names_are_rejected():
    with pytest.raises(ValueError, match="online"):
        Setting(budget=800, learning_rate=0.1, online="sometimes")
    for field in ("rounds", "batch_size", "budget"):
        with pytest.raises(ValueError, match=rf"{field}=0"):
            Setting(**{"budget": 800, "learning_rate": 0.1, field: 0})
    with pytest.raises(ValueError, match="unknown"):
        registry.check_method("nope")
    with pytest.raises(ValueError, match="is not a trained method"):
        build("merge-ties", steps=10, sizes=(3, 3))
    with pytest.raises(ValueError, match="already registered"):
        registry.register("ama-r", METHODS["ama-r"])


def test_tuning_policies_are_apart_from_the_factories():
    """The same factory under the theory's 1/√T rule, a config's fixed values, and the
    round protocols' settings."""
    theory = build("ama-s", steps=10_000, sizes=(100, 10, 10), policy=Theory(3.0, 1.0))
    fixed = build("ama-s", steps=10_000, sizes=(100, 10, 10), policy=Fixed(0.5, 0.2))
    rounds = build("ama-s", steps=10_000, sizes=(100, 10, 10), signal=Signal("validation"))
    eta, c = Theory(3.0, 1.0)(10_000, 3)
    assert (eta, c) == (0.03, pytest.approx(np.sqrt(3 * np.log(3) / 10_000)))
    cases = ((theory, (eta, c)), (fixed, (0.5, 0.2)), (rounds, (0.2, 0.05)))
    for mixer, (step, smoothing) in cases:
        state = mixer.init(3)
        w, _ = mixer.update(state, np.array([1.0, 0.0, 0.0]), np.array([1, 1, 1]))
        expected, _ = mixers.ama_s(step, smoothing).update(state, np.array([1.0, 0, 0]), [1, 1, 1])
        np.testing.assert_array_equal(w, expected)


# --------------------------------------------------- one factory, one line: runs everywhere
def toy_mixer(step_size: float) -> mixers.Mixer:
    """A third-party per-batch mixer (EG on the excess loss, resampling)."""
    return mixers.exponentiated_gradient(step_size, score="excess", apply="resample", name="toy")


@pytest.fixture
def toy_registered(monkeypatch):
    """Registers the toy with one line (and removes it afterwards)."""
    monkeypatch.setattr(registry, "METHODS", dict(registry.METHODS))
    registry.register("toy", Method(lambda h: toy_mixer(h.step_size), ("step_size",), "a toy"))
    yield "toy"


def test_a_new_method_runs_by_name_through_converge_and_compare(toy_registered, tmp_path):
    sizes = ["--sizes", "60,20", "--dim", "3"]
    argv = ["converge", "--methods", "toy", "--steps", "50,100", "--seeds", "2", *sizes]
    assert amasim_main([*argv, "--out", str(tmp_path / "converge")]) == 0
    study = json.loads((tmp_path / "converge" / "converge.json").read_text())
    assert list(study["methods"]) == ["toy"]
    argv = ["compare", "--suite", "transfer", "--methods", "toy,stratified", "--quick"]
    assert amasim_main([*argv, "--seeds", "2", "--out", str(tmp_path / "compare")]) == 0
    result = json.loads((tmp_path / "compare" / "results" / "compare_transfer.json").read_text())
    first = next(iter(result["instances"].values()))
    assert first["methods"]["toy"]["protocol"] == "batch"
    assert "toy" in first["tables"]["mean group loss"]


def test_a_new_method_runs_by_name_in_the_llm_pipeline(toy_registered, tmp_path):
    pytest.importorskip("torch")
    from llm_helpers import tiny_config_dict, write_suite_small, write_toml

    from llm.config import load_config
    from llm.pipeline import run_pipeline

    sections = tiny_config_dict(tmp_path / "out", write_suite_small(tmp_path / "data"))
    sections["run"] |= {"methods": ["toy"], "seeds": [0]}
    config = load_config(write_toml(tmp_path / "config.toml", sections))
    results = run_pipeline(config, progress=False)
    assert list(results["runs"]) == ["toy"]
    assert np.isfinite(results["runs"]["toy"][0]["worst_task_excess"])
