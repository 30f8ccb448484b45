"""The claims over instances: every record carries the fixed fields and the per-seed values
its statistics are recomputed from; the family and the margin are the stated ones."""

from __future__ import annotations

import pytest

from amasim import stats
from amasim.stats import CONVEX_MARGIN, Claim, paired_test
from amasim.studies import CLAIMS
from amasim.studies.seed_claims import seed_claims, seed_claims_markdown

DGA = [c for c in CLAIMS if c.suite == "dga"]
NONINFERIOR = Claim(
    "IS is at least as good as DGA", "importance-sampling", "dga", True, suite="dga"
)


@pytest.fixture(scope="module")
def study():
    return seed_claims(problem_seeds=[0, 1], seeds=3, quick=True, claims=[*DGA, NONINFERIOR])


def test_every_claim_and_record_has_the_fixed_fields(study):
    assert [c["claim"] for c in study["claims"]] == [DGA[0].statement, NONINFERIOR.statement]
    for summary in study["claims"]:
        assert set(stats.FIELDS) <= set(summary)
        assert summary["instances"] == len(summary["records"]) == 4  # 2 regimes × 2 seeds
        assert sum(summary["counts"].values()) == 4 and summary["df"] == 3
        assert summary["family"]["tests"] == 2  # the sign tests: Holm over the claims
        for rec in summary["records"]:
            assert set(stats.FIELDS) <= set(rec) and rec["df"] == 2
            assert rec["family"]["tests"] == 8  # every claim × instance of the study
            assert rec["p_holm"] >= rec["p"]
    assert [c["margin"] for c in study["claims"]] == [None, CONVEX_MARGIN]


def test_the_statistics_recompute_from_the_stored_per_seed_values(study):
    for summary in study["claims"]:
        for rec in summary["records"]:
            test = paired_test(rec["better_values"], rec["worse_values"], margin=rec["margin"])
            assert test.p == pytest.approx(rec["p"], rel=1e-12, abs=1e-300)
            assert list(test.interval) == pytest.approx(rec["interval"], rel=1e-12)
        estimates = [r["estimate"] for r in summary["records"]]
        sign = stats.sign_test(estimates, margin=summary["margin"])
        assert sign == summary["sign_test"]


def test_the_markdown_is_written_from_the_numbers(study):
    text = seed_claims_markdown(study)
    for summary in study["claims"]:
        assert summary["sentence"] in text
        assert f"**{summary['verdict']}**" in text
    assert "Holm over all 8 claim × instance tests" in text
