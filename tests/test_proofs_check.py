"""proofs_check: every check holds on the correct code and rejects every broken variant.

The first test is the falsifiability contract of the issue: a check that cannot fail
(its broken variants pass) is caught here.  The Hypothesis tests draw instances and
reward sequences from the same ranges the report uses (proofs_check.instances).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import proofs_check
from proofs_check import CHECKS, bounds, convexity, exp3, importance, online_to_batch
from proofs_check import reweight_vs_resample as rvr
from proofs_check.base import Measurement
from proofs_check.instances import Params, build, draw_instances, params_strategy

SLOW = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])

CASES = [(name, variant) for name, check in CHECKS.items() for variant in check.variants]


@pytest.mark.parametrize(("name", "variant"), CASES, ids=[f"{n}-{v}" for n, v in CASES])
def test_correct_holds_and_broken_variants_are_rejected(name, variant):
    result = proofs_check.run_check(name, budget="quick", variant=variant)
    assert result.measurements, "a check must measure something"
    assert all(math.isfinite(m.bound) for m in result.measurements)
    if variant != "correct":
        assert not result.passed, f"{name} cannot tell {variant!r} from the correct code"
    elif result.kind == "proven":
        assert result.passed, [m.to_dict() for m in result.measurements if not m.holds]


def test_every_proven_check_has_a_broken_variant_and_a_derivation():
    from pathlib import Path

    root = Path(proofs_check.__file__).parent
    for check in CHECKS.values():
        assert (root / check.derivation).is_file(), check.derivation
        assert check.variants[0] == "correct"
        if check.kind == "proven":
            assert len(check.variants) >= 2, f"{check.name} has no broken variant"


def test_li_variance_is_a_claim_that_can_fail():
    # measured, not proven: resampling loses to AMA-R's stratified reweighting somewhere,
    # so the check is not vacuous (see derivations/06_reweight_vs_resample.md)
    result = proofs_check.run_check("li_variance", budget="quick")
    assert any(m.holds for m in result.measurements)
    assert any(not m.holds and "vs-ama-r" in m.label for m in result.measurements)
    assert result.verdict.endswith("(measured, not proven)")


# ----------------------------------------------------------------- Hypothesis: 01
@SLOW
@given(params_strategy())
def test_clipped_excess_is_convex_bounded_with_exact_gradient(params: Params):
    inst = build(params, solve=False)
    bad = [
        m.to_dict()
        for m in convexity.check_instance(inst, seed=params.seed, points=24)
        if not m.holds
    ]
    assert not bad


# ----------------------------------------------------------------- Hypothesis: 03
@settings(max_examples=25, deadline=None)
@given(
    family=st.sampled_from(("quadratic", "logistic", "loglinear-dpo")),
    sizes=st.lists(st.integers(1, 4), min_size=2, max_size=3),
    batch=st.integers(1, 3),
    smoothing=st.floats(0.05, 1.0),
    skew=st.floats(0.0, 0.999),
    seed=st.integers(0, 10_000),
)
def test_importance_weighted_gain_is_exactly_unbiased(family, sizes, batch, smoothing, skew, seed):
    rng = np.random.default_rng(seed)
    k = len(sizes)
    q = rng.dirichlet(np.ones(k)) * (1 - skew)
    q[0] += skew
    case = importance.TinyCase(family, sizes, 2, seed, rng.standard_normal(2), q, smoothing, batch)
    bad = [m.to_dict() for m in importance.check_case(case) if not m.holds]
    assert not bad


# ----------------------------------------------------------------- Hypothesis: 02
@settings(max_examples=8, deadline=None)
@given(
    k=st.integers(2, 4),
    horizon=st.integers(40, 160),
    gamma=st.floats(0.05, 1.0),
    adaptive=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_exp3_regret_bound_on_drawn_reward_sequences(k, horizon, gamma, adaptive, seed):
    rng = np.random.default_rng(seed)
    table = (rng.random((horizon, k)) < rng.random(k)).astype(float)
    adversary = exp3.table_adversary(table, adaptive=adaptive)
    for form in (gamma, None):
        m = exp3.regret(adversary, form, k, horizon, runs=200, seed=seed)
        assert m.holds, m.to_dict()


# ----------------------------------------------------------------- Hypothesis: 04
@pytest.fixture(scope="module")
def small_quadratic():
    return draw_instances(1, 3, families=("quadratic",))[0]


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(horizon=st.integers(2, 30), spread=st.floats(0.05, 1.0), seed=st.integers(0, 10_000))
def test_online_to_batch_lemma_on_any_sequence(small_quadratic, horizon, spread, seed):
    inst = small_quadratic
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((horizon, inst.problem.dim))
    thetas = spread * inst.D * u / np.linalg.norm(u, axis=1, keepdims=True)
    alphas = rng.dirichlet(np.ones(inst.k), size=horizon)
    bar = online_to_batch._averaged_by_code(inst, thetas, "correct")
    np.testing.assert_allclose(bar, thetas.mean(axis=0), rtol=1e-12, atol=1e-12)
    m = online_to_batch.lemma(inst, thetas, alphas, bar, "hypothesis")
    assert m.holds, m.to_dict()


# ----------------------------------------------------------------- Hypothesis: 05
#: the constants (B, G, D, k), horizons and batch sizes the bound formulas are tested over
BOUND_ARGS = {
    "b_loss": st.floats(0.01, 100),
    "g": st.floats(0.01, 100),
    "d": st.floats(0.1, 10),
    "k": st.integers(2, 20),
    "horizon": st.integers(1, 10**6),
    "batch": st.integers(1, 64),
}


@settings(max_examples=60, deadline=None)
@given(**BOUND_ARGS)
def test_theorem_r_implies_prop2_at_prop2_steps(b_loss, g, d, k, horizon, batch):
    # derivations/05_ama_r.md: Theorem R ≤ (0.37 + 0.12/√T)·Prop. 2 at Prop. 2's steps
    steps = bounds.prop2_steps(b_loss, g, d, k, horizon)
    r = bounds.theorem_r(b_loss, g, d, k, horizon, batch, *steps)
    assert r <= (0.37 + 0.12 / math.sqrt(horizon)) * bounds.prop2(b_loss, g, d, k, horizon)


def test_theorem_s_rejects_a_step_size_it_does_not_cover():
    with pytest.raises(ValueError, match="η_α"):
        bounds.theorem_s(1.0, 1.0, 1.0, 2, 100, 1, 0.1, 1.0, 0.1)


# ----------------------------------------------------------------- Hypothesis: 07
@settings(max_examples=60, deadline=None)
@given(**BOUND_ARGS, delta=st.floats(1e-9, 0.5))
def test_theorem_ix_tuned_forms(b_loss, g, d, k, horizon, batch, delta):
    """07_ama_s_ix.md: (E) at its tuning is the closed form (DG + B√(2 ln k)(√(k/b) +
    √(k/b+1)))/√T + DG/T, and (HP) at Neu's coupling η = 2γ/B is its closed form."""
    c = (b_loss, g, d, k, horizon)
    steps = bounds.ama_s_ix_steps(*c, batch)
    closed = (
        d * g
        + b_loss * math.sqrt(2 * math.log(k)) * (math.sqrt(k / batch) + math.sqrt(k / batch + 1))
    ) / math.sqrt(horizon) + d * g / horizon
    assert bounds.theorem_ix(*c, batch, *steps) == pytest.approx(closed, rel=1e-9)
    big_l = math.log(k) + math.log(4 * k / delta) / batch
    gamma = math.sqrt(big_l / (4 * k * horizon))
    hp = bounds.theorem_ix_hp(*c, batch, steps[0], 2 * gamma / b_loss, gamma, delta)
    log4 = math.log(4 / delta)
    closed_hp = (
        d * g * (1 + 2 * math.sqrt(2 * log4))
        + 2 * b_loss * math.sqrt(k * big_l)
        + b_loss * math.sqrt(log4 / (2 * batch))
    ) / math.sqrt(horizon) + (d * g + b_loss * log4 / batch) / horizon
    assert hp == pytest.approx(closed_hp, rel=1e-9)


def test_ix_lemma_count_test_allows_what_binomial_tails_allow():
    from scipy.stats import binom

    from proofs_check.ix_lemma import DELTA, allowed_exceedances

    for runs in (8, 32, 128):
        v = allowed_exceedances(runs)
        assert binom.sf(v, runs, DELTA) <= 1e-6 < binom.sf(v - 1, runs, DELTA)


# ----------------------------------------------------------------- Hypothesis: 06
@SLOW
@given(params_strategy(), st.integers(0, 10_000))
def test_reweight_resample_identity_and_expectation(params: Params, seed: int):
    inst = build(params, solve=False)
    rng = np.random.default_rng(seed)
    theta = rng.standard_normal(inst.problem.dim)
    theta *= inst.D * rng.random() / np.linalg.norm(theta)
    mu, m, p = rvr.moments(inst, theta)
    alpha = rng.dirichlet(np.ones(inst.k))
    v = rvr.variances(mu, m, p, alpha, 1)
    r = alpha / p
    assert math.isclose(
        v["reweight"] - v["resample"], float(p @ (m * r * (r - 1))), rel_tol=1e-9, abs_tol=1e-9
    )
    exact = rvr.sampler_probabilities(alpha)
    assert np.abs(exact - alpha).max() < 1e-12


# ------------------------------------------------------------------------- CLI
def test_cli_writes_report_and_exit_status(tmp_path, monkeypatch, capsys):
    out = tmp_path / "results"
    code = proofs_check.main(
        ["--budget", "quick", "--check", "importance", "--out", str(out), "--no-figures"]
    )
    assert code == 0
    record = json.loads((out / "proofs_report.json").read_text())
    assert record["passed"] and record["checks"][0]["name"] == "importance"
    assert "| importance |" in (out / "proofs_report.md").read_text()
    assert "worst ratio" in capsys.readouterr().out

    broken = CHECKS["importance"]
    fake = type(broken)(
        broken.name,
        broken.statement,
        broken.kind,
        broken.derivation,
        broken.variants,
        lambda *a: [Measurement("x", 2.0, 1.0)],
    )
    monkeypatch.setitem(CHECKS, "importance", fake)
    assert (
        proofs_check.main(
            ["--budget", "quick", "--check", "importance", "--out", str(out), "--no-figures"]
        )
        == 1
    )


def test_bound_figures(tmp_path):
    from proofs_check.report import write_bound_figures

    paths = write_bound_figures(tmp_path, quick=True, families=("quadratic",))
    assert [p.name for p in paths] == ["bounds_quadratic.png"] and paths[0].stat().st_size > 0
