"""Optional oracle capabilities: the checker names each fault; entry points refuse oracles
without what a mixer requires; the simulator's capabilities keep their invariants."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amasim import lmo, mixers, prng
from amasim.capabilities import (
    MissingCapabilityError,
    capabilities_of,
    require_capabilities,
)
from amasim.checker import check_capabilities, check_oracle
from amasim.driver import Mixing, run
from amasim.gradient_mixers import dga, doge
from amasim.oracle import OracleError
from amasim.problems import make_problem
from amasim.simulator import SimulatedOracle
from amasim.transfer import GradientSimulatedOracle, transfer_problem

PROBLEM = transfer_problem(3, dim=4, sizes=(30, 30, 30), seed=0)
TARGET = (PROBLEM.features[:30], PROBLEM.targets[:30])
# what the simulators can offer (checkpointing and training metrics are the LLM oracle's)
ALL = ("task_gradients", "target_set", "group_validation", "mixture_rounds", "default_reference")


def test_simulated_oracles_pass_every_capability_they_offer():
    check_oracle(GradientSimulatedOracle(PROBLEM, TARGET), capabilities=ALL)
    check_oracle(GradientSimulatedOracle(PROBLEM, TARGET, gradient_batch=4), capabilities=ALL)
    plain = SimulatedOracle(PROBLEM)
    assert capabilities_of(plain) == {"group_validation", "mixture_rounds", "default_reference"}
    check_oracle(plain, capabilities=["group_validation", "mixture_rounds", "default_reference"])


class _DriftingReference(SimulatedOracle):
    def default_reference_losses(self, batch):
        return super().default_reference_losses(batch) + self.theta.sum() + np.random.rand()


class _ShortReference(SimulatedOracle):
    def default_reference_losses(self, batch):
        return super().default_reference_losses(batch)[:, :-1]


@pytest.mark.parametrize(
    ("oracle", "words"),
    [(_DriftingReference, "second call"), (_ShortReference, "one loss per example")],
)
def test_the_checker_names_a_broken_default_reference(oracle, words):
    with pytest.raises(OracleError, match=words):
        check_capabilities(oracle(PROBLEM), ["default_reference"])


def test_doremi_needs_the_default_reference_and_its_variant_does_not():
    """The published DoReMi refuses an oracle without a default-mixture reference and names
    the variant; doremi-specialists runs on the specialists' losses alone."""

    class NoDefault(SimulatedOracle):
        capabilities = ("group_validation", "mixture_rounds")

    with pytest.raises(MissingCapabilityError, match="doremi-specialists"):
        run(mixers.doremi(0.1), NoDefault(PROBLEM), steps=3, learning_rate=0.1)
    variant = mixers.doremi(0.1, reference="specialists")
    result = run(variant, NoDefault(PROBLEM), steps=3, learning_rate=0.1)
    assert result.method == "doremi-specialists"


# one deliberately broken oracle per failure mode, and the words its message must carry
class _ShapeValidation(SimulatedOracle):
    def evaluate_groups(self, score="loss"):
        return super().evaluate_groups(score)[:, :-1]


class _NanValidation(SimulatedOracle):
    def evaluate_groups(self, score="loss"):
        return super().evaluate_groups(score) * np.nan


class _TrainingValidation(SimulatedOracle):
    def evaluate_groups(self, score="loss"):
        self.theta = self.theta + 0.01
        return super().evaluate_groups(score)


class _DriftingValidation(SimulatedOracle):
    calls = 0

    def evaluate_groups(self, score="loss"):
        self.calls += 1
        return super().evaluate_groups(score) + 1e-3 * self.calls


class _ZeroStepsTrain(SimulatedOracle):
    def train_on_mixture(self, mixture, steps, *, learning_rate, batch_size=8):
        super().train_on_mixture(mixture, max(steps, 1), learning_rate=learning_rate)


class _LazyTrain(SimulatedOracle):
    def train_on_mixture(self, mixture, steps, *, learning_rate, batch_size=8):
        pass


class _UnseededTrain(SimulatedOracle):
    def train_on_mixture(self, mixture, steps, *, learning_rate, batch_size=8):
        super().train_on_mixture(mixture, steps, learning_rate=learning_rate)
        self.theta = self.theta + 1e-3 * np.random.default_rng().random() * (steps > 0)


class _SharedKeys(SimulatedOracle):
    def reset_mixture_rounds(self, seeds):  # every replicate draws with the first's key
        super().reset_mixture_rounds([next(iter(seeds))] * len(list(seeds)))


class _StaleValidation(SimulatedOracle):
    def reset(self, seeds):
        super().reset(seeds)
        self._first = super().evaluate_groups()

    def evaluate_groups(self, score="loss"):
        return self._first.copy()  # the losses at θ₀, whatever training did


class _IgnoresMixture(SimulatedOracle):
    def train_on_mixture(self, mixture, steps, *, learning_rate, batch_size=8):
        group0 = np.eye(len(self.task_names))[0]
        super().train_on_mixture(group0, steps, learning_rate=learning_rate, batch_size=batch_size)


class _OneStepOnly(SimulatedOracle):
    def train_on_mixture(self, mixture, steps, *, learning_rate, batch_size=8):
        steps = min(steps, 1)
        super().train_on_mixture(mixture, steps, learning_rate=learning_rate, batch_size=batch_size)


class _UnresetCounter(GradientSimulatedOracle):
    def reset(self, seeds):
        count = self.extra_gradient_evaluations
        super().reset(seeds)
        self.extra_gradient_evaluations = count


class _WrongTargetLoss(GradientSimulatedOracle):
    def target_loss(self, averaged=False, split="train"):
        return super().target_loss(averaged, split)[:, None]


class _OtherDimTarget(GradientSimulatedOracle):
    def target_gradient(self):
        return np.concatenate([super().target_gradient(), np.zeros((len(self.theta), 1))], 1)


@pytest.mark.parametrize(
    ("cls", "capability", "message"),
    [
        (_ShapeValidation, "group_validation", r"evaluate_groups\(\): returned shape"),
        (_NanValidation, "group_validation", r"evaluate_groups\(\): returned NaN"),
        (_TrainingValidation, "group_validation", r"evaluate_groups\(\).*changed the model"),
        (_DriftingValidation, "group_validation", "different values on a second call"),
        (_ZeroStepsTrain, "mixture_rounds", r"steps=0\): changed the model"),
        (_LazyTrain, "mixture_rounds", "left every loss unchanged"),
        (_UnseededTrain, "mixture_rounds", "same seeds gave different"),
        (_SharedKeys, "mixture_rounds", "alone than batched"),
        (_StaleValidation, ["group_validation", "mixture_rounds"], "same values before and after"),
        (_IgnoresMixture, "mixture_rounds", "two different one-task mixtures"),
        (_OneStepOnly, "mixture_rounds", "trained as far as steps=1"),
        (_UnresetCounter, "task_gradients", "left extra_gradient_evaluations nonzero"),
        (_WrongTargetLoss, "target_set", r"target_loss\(\): returned shape"),
        (_OtherDimTarget, "target_set", "different d"),
    ],
)
def test_checker_names_each_broken_capability(cls, capability, message):
    oracle = cls(PROBLEM, TARGET) if issubclass(cls, GradientSimulatedOracle) else cls(PROBLEM)
    with pytest.raises(OracleError, match=message) as err:
        wanted = ["task_gradients", capability] if capability == "target_set" else capability
        wanted = wanted if isinstance(wanted, list) else [wanted]
        check_oracle(oracle, capabilities=wanted)
    assert "Fix:" in str(err.value)


def test_missing_and_unknown_capabilities():
    """The error names the capability, the missing method, and the fix; a declared
    narrowing is named as such; an unknown name lists the known ones."""
    with pytest.raises(MissingCapabilityError, match=r"'task_gradients'.*task_gradients\(\).*Fix"):
        check_capabilities(SimulatedOracle(PROBLEM), ["task_gradients"])
    no_target = GradientSimulatedOracle(PROBLEM)
    with pytest.raises(MissingCapabilityError, match=r"leaves it out.*target=") as err:
        require_capabilities(no_target, ["target_set"], "mixer 'dga'")
    assert str(err.value).startswith("mixer 'dga' requires the oracle capability 'target_set'")
    with pytest.raises(ValueError, match=r"unknown.*group_validation"):
        require_capabilities(no_target, ["gradients"])


def test_mixers_declare_requirements_and_entry_points_enforce_them():
    """Mixers that read capabilities say so, and every entry point — the driver, one
    Mixing step — refuses an oracle without them with the same message."""
    assert mixers.ama_r(0.1).requires == () and mixers.odm().requires == ()
    assert doge(0.1).requires == ("task_gradients",)
    assert dga(1.0).requires == ("task_gradients", "target_set")
    assert lmo.aioli(0.1).requires == ("group_validation",)  # rounds: through Mixing
    plain = SimulatedOracle(PROBLEM)
    messages = []
    for call in (
        lambda: run(doge(0.1), plain, steps=2, learning_rate=0.1),
        lambda: Mixing(doge(0.1), plain, seeds=[0], batch_size=2, apply="resample", score="loss"),
    ):
        with pytest.raises(MissingCapabilityError) as err:
            call()
        messages.append(str(err.value))
    assert messages[0] == messages[1]
    assert messages[0].startswith("mixer 'doge' requires the oracle capability 'task_gradients'")
    with pytest.raises(MissingCapabilityError, match="'target_set'"):
        run(dga(1.0), GradientSimulatedOracle(PROBLEM), steps=2, learning_rate=0.1)


def test_train_on_mixture_rejects_bad_input():
    oracle = SimulatedOracle(PROBLEM)
    with pytest.raises(RuntimeError, match="reset"):
        oracle.train_on_mixture([1, 0, 0], 1, learning_rate=0.1)
    oracle.reset([0, 1])
    with pytest.raises(ValueError, match="mixture has shape"):
        oracle.train_on_mixture([0.5, 0.5], 1, learning_rate=0.1)
    with pytest.raises(ValueError, match="mixture must be finite"):
        oracle.train_on_mixture([0.0, 0.0, 0.0], 1, learning_rate=0.1)
    with pytest.raises(ValueError, match="steps"):
        oracle.train_on_mixture([1, 0, 0], -1, learning_rate=0.1)
    with pytest.raises(ValueError, match="learning_rate"):
        oracle.train_on_mixture([1, 0, 0], 1, learning_rate=0.0)


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.floats(0.0, 1.0), min_size=3, max_size=3).filter(lambda w: sum(w) > 0.01),
    st.integers(0, 6),
    st.lists(st.integers(0, 2**31), min_size=2, max_size=3, unique=True),
)
def test_train_on_mixture_replicates_are_independent(mixture, steps, seeds):
    """A replicate trains identically alone or batched; steps=0 changes nothing; the steps
    enter θ̄ like any step."""
    oracle = SimulatedOracle(make_problem("logistic", sizes=(20, 10, 10), dim=3))
    oracle.reset(seeds)
    oracle.train_on_mixture(mixture, steps, learning_rate=0.5, batch_size=4)
    batched, iterations = oracle.theta.copy(), oracle.iterations
    assert iterations == steps and (steps > 0 or not batched.any())
    oracle.reset(seeds[-1:])
    oracle.train_on_mixture(mixture, steps, learning_rate=0.5, batch_size=4)
    np.testing.assert_allclose(oracle.theta[0], batched[-1], rtol=1e-12, atol=1e-14)


def test_one_hot_mixture_draws_only_that_group():
    """A one-hot mixture trains on that group alone: other groups' draws never happen."""
    oracle = SimulatedOracle(PROBLEM)
    oracle.reset([3])
    seen = []
    original = oracle.sample

    def spy(task_ids):
        seen.append(task_ids.copy())
        return original(task_ids)

    oracle.sample = spy
    oracle.train_on_mixture([0.0, 1.0, 0.0], 5, learning_rate=0.1, batch_size=6)
    assert np.all(np.concatenate(seen) == 1)
    assert prng.replicate_keys([3], stream=3)[0] == oracle.mixture_keys[0]
