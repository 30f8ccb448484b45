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
from amasim.registry import (
    METHODS,
    Constants,
    Fixed,
    Method,
    Theory,
    build,
    describe,
    missing,
)
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
    """The same factory under its theorem's tuning, a config's fixed values, and the round
    protocols' settings."""
    constants = Constants(bound=2.0)
    theory = build("ama-s", steps=10_000, sizes=(100, 10, 10), constants=constants)
    fixed = build("ama-s", steps=10_000, sizes=(100, 10, 10), policy=Fixed(0.5, 0.2))
    rounds = build("ama-s", steps=10_000, sizes=(100, 10, 10), signal=Signal("validation"))
    gamma = np.sqrt(3 * np.log(3) / ((np.e - 1) * 10_000))  # Auer's γ; Theorem S: γ/(kB)
    eta, c = Theory()(10_000, 3, method="ama-s", constants=constants)
    assert (eta, c) == (pytest.approx(gamma / 6), pytest.approx(gamma))
    cases = ((theory, (eta, c)), (fixed, (0.5, 0.2)), (rounds, (0.2, 0.05)))
    for mixer, (step, smoothing) in cases:
        state = mixer.init(3)
        w, _ = mixer.update(state, np.array([1.0, 0.0, 0.0]), np.array([1, 1, 1]))
        expected, _ = mixers.ama_s(step, smoothing).update(state, np.array([1.0, 0, 0]), [1, 1, 1])
        np.testing.assert_array_equal(w, expected)


def test_every_method_is_tuned_by_its_theorem_or_labelled_heuristic():
    """Theory gives the covered methods their theorem's steps (Theorem R for AMA-R and, on
    the raw loss, Group DRO; S for AMA-S; IX for AMA-S-IX) and every other tuned method
    the 1/√T rule, labelled a heuristic."""
    c = Constants(bound=0.5, loss_bound=2.0, lipschitz_radius=3.0, batch_size=8)
    t, k, policy = 4000, 3, Theory(3.0, 1.0)
    hedge = lambda b: np.sqrt(np.log(k) / (t * b * (b / 8 + 3.0)))  # noqa: E731
    assert policy(t, k, method="ama-r", constants=c)[0] == pytest.approx(hedge(0.5))
    assert policy(t, k, method="group-dro", constants=c)[0] == pytest.approx(hedge(2.0))
    gamma = np.sqrt(k * np.log(k) / ((np.e - 1) * t))
    assert policy(t, k, method="ama-s", constants=c) == pytest.approx((gamma / (k * 0.5), gamma))
    assert policy(t, k, method="ama-s-raw", constants=c)[0] == pytest.approx(gamma / (k * 2.0))
    assert policy(t, k, method="ama-s-ix", constants=c) == pytest.approx(
        (np.sqrt(2 * np.log(k) / (t * (k / 8 + 1))) / 0.5, np.sqrt(np.log(k) / (2 * 8 * k * t)))
    )
    heuristic = (3.0 / np.sqrt(t), np.sqrt(k * np.log(k) / t))
    for name, method in METHODS.items():
        label = registry.tuning_of(name)
        if method.theorem is None and method.tuned:
            assert label.startswith("heuristic")
            assert policy(t, k, method=name, constants=c) == pytest.approx(heuristic)
        elif method.theorem is not None:
            assert label.startswith(("Theorem", "as ")), label
    covered = {n for n, m in METHODS.items() if m.theorem is not None and m.theorem.covered}
    assert covered == {"group-dro", "ama-r", "ama-s", "ama-s-ix", "ama-s-raw"}


def test_start_constants_are_the_start_models_scores():
    from amasim.problems import make_problem

    problem = make_problem("quadratic", sizes=(60, 20), dim=3, seed=1)
    c = registry.start_constants(SimulatedOracle(problem), batch_size=16)
    zero = np.zeros(problem.dim)
    assert c.bound == pytest.approx(problem.task_scores(zero).max())
    assert c.loss_bound == pytest.approx(problem.task_scores(zero, "loss").max())
    assert c.batch_size == 16 and c.source == "start model"
    eps, grads = 1e-6, []
    for i in range(problem.num_tasks):  # ∇E_i(0) by central differences
        g = [
            (problem.task_scores(eps * e)[i] - problem.task_scores(-eps * e)[i]) / (2 * eps)
            for e in np.eye(problem.dim)
        ]
        grads.append(np.linalg.norm(g))
    assert c.lipschitz_radius == pytest.approx(problem.radius * max(grads), rel=1e-5)


def test_the_bound_reaches_the_factory_and_the_cli_lists_the_tuning(capsys):
    constants = Constants(bound=4.0, batch_size=2)
    mixer = build("ama-s-ix", steps=100, sizes=(5, 5), constants=constants)
    state = mixer.init(2)
    w, _ = mixer.update(state, np.array([4.0, 0.0]), np.array([1, 1]))
    eta, gamma = Theory()(100, 2, method="ama-s-ix", constants=constants)
    _, ref = mixers.eg_step(state.log_weights, -np.array([0.0, 4.0]) / (2 * (0.5 + gamma)), eta)
    np.testing.assert_allclose(w, ref, rtol=1e-12)
    assert amasim_main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "ama-s-ix" in out and "tuning: Theorem IX (07_ama_s_ix.md)" in out
    assert "tuning: heuristic" in out


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
