"""amasim.stats: the p-values are scipy's, Holm keeps the family-wise error at 5% where the
uncorrected tests do not, and non-inferiority cannot be declared for a method worse by
more than the margin."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as scipy_stats

from amasim import stats
from amasim.stats import Claim, decide, holm, paired_test, record

SEEDS = st.integers(2, 12)


def _pairs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.normal(0.3, 0.05, n)
    return a, a + rng.normal(0.01, 0.02, n)


@settings(max_examples=60, deadline=None)
@given(n=SEEDS, seed=st.integers(0, 10_000), lower=st.booleans())
def test_paired_p_equals_scipy_ttest_rel(n, seed, lower):
    a, b = _pairs(n, seed)
    test = paired_test(a, b, lower_is_better=lower)
    expected = scipy_stats.ttest_rel(b, a) if lower else scipy_stats.ttest_rel(a, b)
    assert test.df == n - 1
    assert test.p == pytest.approx(expected.pvalue, rel=1e-9, abs=1e-300)
    assert test.t == pytest.approx(expected.statistic, rel=1e-9)
    lo, hi = expected.confidence_interval(0.95)
    assert test.interval == pytest.approx((lo, hi), rel=1e-9)


@settings(max_examples=60, deadline=None)
@given(n=SEEDS, seed=st.integers(0, 10_000), margin=st.floats(1e-3, 0.05))
def test_noninferiority_p_equals_scipy_against_the_shifted_null(n, seed, margin):
    """H₀ δ = −m: the paired t of (B + m) against A."""
    a, b = _pairs(n, seed)
    test = paired_test(a, b, margin=margin)
    expected = scipy_stats.ttest_rel(b + margin, a)
    assert test.p == pytest.approx(expected.pvalue, rel=1e-9, abs=1e-300)
    assert test.estimate == pytest.approx(float(np.mean(b - a)), rel=1e-12, abs=1e-15)


@settings(max_examples=60, deadline=None)
@given(estimates=st.lists(st.floats(-1, 1, allow_nan=False), min_size=1, max_size=40))
def test_sign_test_p_equals_scipy_binomtest(estimates):
    out = stats.sign_test(estimates)
    favour = sum(e > 0 for e in estimates)
    against = sum(e < 0 for e in estimates)
    assert (out["favour"], out["against"]) == (favour, against)
    if favour + against:
        assert out["p"] == scipy_stats.binomtest(favour, favour + against, 0.5).pvalue
    else:
        assert out["p"] == 1.0


def _holm_transcribed(p):
    """Holm 1979 as written: reject H₍₁₎…H₍ᵢ₎ while p₍ⱼ₎ ≤ α/(m − j + 1); the adjusted p is
    the smallest α at which H₍ᵢ₎ is rejected."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    out, running = [0.0] * m, 0.0
    for j, i in enumerate(order):
        running = max(running, min(1.0, (m - j) * p[i]))
        out[i] = running
    return out


@settings(max_examples=100, deadline=None)
@given(p=st.lists(st.floats(0, 1), min_size=1, max_size=30))
def test_holm_equals_its_transcription(p):
    np.testing.assert_allclose(holm(p), _holm_transcribed(p), rtol=1e-12)
    assert (holm(p) >= np.asarray(p) - 1e-15).all()


def _study(rng, methods: int, seeds: int) -> dict[str, np.ndarray]:
    """Every method the same true mean; a seed effect shared by all methods (it cancels in
    the paired differences, as it does in the studies)."""
    shared = rng.normal(0, 1, seeds)
    own = rng.normal(0, 1, (methods, seeds))
    return {f"m{i}": 0.5 + 0.01 * (shared + v) for i, v in enumerate(own)}


def _family_errors(studies: int, correct: bool) -> float:
    """Share of simulated studies (every null true) with at least one test declared
    holds/reversed: every pair of 5 methods — a family of 10 dependent claims, since
    they share methods —, 5 seeds."""
    rng = np.random.default_rng(np.random.SeedSequence(2024))
    claims = [
        Claim(f"{a} beats {b}", a, b)
        for a, b in itertools.combinations([f"m{i}" for i in range(5)], 2)
    ]
    errors = 0
    for _ in range(studies):
        values = _study(rng, 5, 5)
        records = [record(c, paired_test(values[c.better], values[c.worse])) for c in claims]
        if correct:
            wrong = any(r["verdict"] != "n.s." for r in decide(records))
        else:
            wrong = any(r["p"] <= stats.ALPHA for r in records)
        errors += wrong
    return errors / studies


def test_holm_keeps_the_family_wise_error_at_five_percent():
    """1,000 simulated studies where every claim's null is true: after Holm over the
    family of 10 claims at most 5% of them declare anything."""
    assert _family_errors(1000, correct=True) <= 0.05  # measured: 0.033


def test_without_holm_the_family_wise_error_exceeds_five_percent():
    """The same studies read test by test at p ≤ 0.05: far more than 5% declare something
    (so the test above can fail)."""
    assert _family_errors(1000, correct=False) > 0.15  # measured: 0.331


def test_a_method_worse_than_the_margin_is_never_declared_noninferior():
    """A method truly worse by 1.5 margins: non-inferiority is declared in at most 2.5% of
    1,000 studies (the one-sided level), and with many seeds the claim is reversed."""
    margin, rng = stats.CONVEX_MARGIN, np.random.default_rng(np.random.SeedSequence(7))
    claim = Claim("A is at least as good as B", "a", "b", noninferior=True)
    declared = 0
    for _ in range(1000):
        b = rng.normal(0.3, 0.002, 5)
        a = b + 1.5 * margin + rng.normal(0, 0.002, 5)  # A worse (higher) by 1.5 m
        rec = decide([record(claim, paired_test(a, b, margin=margin))])[0]
        declared += rec["verdict"] == "holds"
    assert declared / 1000 <= 0.025
    b = rng.normal(0.3, 0.002, 50)
    a = b + 1.5 * margin + rng.normal(0, 0.0005, 50)
    assert decide([record(claim, paired_test(a, b, margin=margin))])[0]["verdict"] == "reversed"


def test_noninferiority_holds_for_an_equal_method_and_not_without_a_margin():
    """Equal methods with little noise: non-inferior within the margin; the same data read
    as a superiority claim is n.s. — the margin is what lets "≥" be shown or refuted."""
    rng = np.random.default_rng(3)
    b = rng.normal(0.3, 0.01, 8)
    a = b + rng.normal(0, 1e-4, 8)
    ni = Claim("A ≥ B", "a", "b", noninferior=True)
    assert decide([record(ni, paired_test(a, b, margin=1e-3))])[0]["verdict"] == "holds"
    sup = Claim("A beats B", "a", "b")
    assert decide([record(sup, paired_test(a, b))])[0]["verdict"] == "n.s."


def test_degenerate_inputs():
    """One seed: untested, no interval; zero spread: p 0 (a difference) or 1 (none)."""
    one = decide([record(Claim("x", "a", "b"), paired_test([1.0], [2.0]))])[0]
    assert one["verdict"] == "untested" and one["interval"] is None and one["p_holm"] is None
    assert paired_test([1.0, 1.0], [2.0, 2.0]).p == 0.0
    assert paired_test([1.0, 1.0], [1.0, 1.0]).p == 1.0
    with pytest.raises(ValueError, match="same seeds"):
        paired_test([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="margin"):
        paired_test([1.0, 2.0], [1.0, 3.0], margin=0.0)
    with pytest.raises(ValueError, match="not finite"):
        paired_test([1.0, np.nan], [1.0, 3.0])


def test_item_bootstrap_is_seeded_and_matches_the_variance_of_an_item_mean():
    """One task, the mean: the bootstrap variance of d̄ is Var(items of d̄)/I; the same seed
    gives the same number, and a constant shift between methods gives none."""
    rng = np.random.default_rng(11)
    a = rng.random((5, 400))
    b = a + rng.normal(0.05, 0.2, (5, 400))
    v = stats.item_bootstrap_variance(a, b, resamples=4000, seed=1)
    per_item = (b - a).mean(axis=0)
    assert v == pytest.approx(per_item.var() / per_item.size, rel=0.1)
    assert v == stats.item_bootstrap_variance(a, b, resamples=4000, seed=1)
    assert stats.item_bootstrap_variance(a, a + 0.1, resamples=50) == pytest.approx(0, abs=1e-20)


def test_item_noise_widens_the_interval_and_worst_task_reduces_over_tasks():
    rng = np.random.default_rng(5)
    tasks_a = [rng.random((5, 60)) for _ in range(3)]
    tasks_b = [x + 0.05 + rng.normal(0, 0.3, x.shape) for x in tasks_a]
    worst = stats.item_bootstrap_variance(tasks_a, tasks_b, reduce="max", seed=2)
    fold = [np.max(np.stack([x.mean(1) for x in t], -1), -1) for t in (tasks_a, tasks_b)]
    seeds_only = paired_test(*fold)
    both = paired_test(*fold, extra_variance=worst)
    assert both.estimate == seeds_only.estimate and both.se > seeds_only.se
    with pytest.raises(ValueError, match="reduce"):
        stats.item_bootstrap_variance(tasks_a, tasks_b, reduce="median")


def _decided(verdicts: list[str], estimates: list[float]) -> list[dict]:
    return [
        {"claim": "c", "estimate": e, "verdict": v, "margin": None}
        for v, e in zip(verdicts, estimates)
    ]


@pytest.mark.parametrize(
    ("verdicts", "estimates", "expected"),
    [
        (["holds"] * 6, [0.1] * 6, "agrees"),
        (["reversed"] * 6, [-0.1] * 6, "disagrees"),
        (["holds", "reversed", "n.s.", "n.s.", "n.s.", "n.s."], [0.1, -0.1, 0, 0, 0, 0], "mixed"),
        (["holds"] * 5 + ["n.s."], [0.1] * 6, "mostly agrees"),
        (["n.s."] * 12, [-0.01] * 11 + [0.01], "mostly disagrees"),
        (["n.s."] * 6, [0.01, -0.01] * 3, "not significant"),
        (["holds"] * 4 + ["n.s."] * 2, [0.1] * 4 + [-0.01] * 2, "mostly agrees"),
        (["reversed"] + ["n.s."] * 11, [-0.1] + [0.01] * 11, "mixed"),
    ],
)
def test_the_verdict_over_instances(verdicts, estimates, expected):
    claim = Claim("c", "a", "b")
    row = stats.over_instances([claim], {"c": _decided(verdicts, estimates)})[0]
    assert row["verdict"] == expected
    assert set(stats.FIELDS) <= set(row) and row["instances"] == len(verdicts)
    assert row["sentence"].startswith(f"c: {expected} — holds on {verdicts.count('holds')}")


def test_records_carry_the_fixed_fields_and_a_sentence_from_the_numbers():
    a, b = _pairs(5, 1)
    rec = decide([record(Claim("A beats B", "a", "b"), paired_test(a, b))], family="f")[0]
    assert set(stats.FIELDS) <= set(rec)
    assert f"{rec['estimate']:+.3g}" in rec["sentence"] and "Holm p" in rec["sentence"]
    assert rec["family"] == {"name": "f", "tests": 1, "alpha": 0.05}
