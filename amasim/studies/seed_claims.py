"""Every seed paper's claim over many problem instances, not one.

A claim (a row of :data:`amasim.studies.CLAIMS`) compares two methods on a suite's metric
(:mod:`amasim.studies.compare`: worst-task clipped excess on the AMA instances, mean group
loss on the transfer settings, held-out target loss on DGA's regimes).  It is measured on
≥ 5 problem instances (problem seeds) of every setting, each with ≥ 5 training seeds shared
by every method, at the comparison's equal budget.  On one instance the test is the paired
t over the training seeds (:func:`amasim.stats.paired_test`; the non-inferiority claim
against :data:`amasim.stats.CONVEX_MARGIN`); the study's family is every claim × instance
test, Holm-corrected (:func:`amasim.stats.decide`), so an instance *holds*, is *reversed*
or is *n.s.* with the family-wise error ≤ 5%.  Over its instances a claim gets the counts,
a sign test over the instance estimates (Holm over the claims) and a verdict
(:func:`amasim.stats.over_instances`: agrees, mostly agrees, mixed, mostly disagrees,
disagrees, not significant).  Every instance record keeps both methods' per-seed values,
so the statistics can be recomputed from ``results/claims.json`` alone.  Facts true by
construction (AMA-S draws 1/k of AMA-R's examples a step) are stated, not tested.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from amasim.stats import ALPHA, CONVEX_MARGIN, Claim, decide, over_instances, sentence
from amasim.studies import CLAIMS, FACTS, claim_record
from amasim.studies.compare import MERGES, METRICS, instances, run_instance

__all__ = ["CLAIMS", "FACTS", "seed_claims", "seed_claims_markdown"]

#: the family of the instance tests, as the records name it
FAMILY = "every claim × instance of the study"


def _methods(claims: Sequence[Claim], suite: str) -> list[str]:
    names = [c.better for c in claims if c.suite == suite]
    names += [c.worse for c in claims if c.suite == suite and c.worse != "best-merge"]
    return list(dict.fromkeys(names))


def seed_claims(
    *,
    problem_seeds: Sequence[int] = range(5),
    seeds: int = 5,
    quick: bool = False,
    claims: Sequence[Claim] = CLAIMS,
    progress: bool = False,
) -> dict[str, Any]:
    """Measure ``claims`` on every setting of their suites for each problem seed."""
    if len(problem_seeds) < 2 or seeds < 2:
        raise ValueError("claims over instances need >= 2 problem seeds and >= 2 training seeds")
    records: list[dict[str, Any]] = []
    for suite in dict.fromkeys(c.suite for c in claims):
        suite_claims = [c for c in claims if c.suite == suite]
        methods = _methods(suite_claims, suite)
        merges = MERGES if any(c.worse == "best-merge" for c in suite_claims) else {}
        for problem_seed in problem_seeds:
            for setting, instance in instances(suite, quick, problem_seed).items():
                if progress:
                    print(f"claims: {suite} {setting} problem seed {problem_seed}", flush=True)
                run = run_instance(instance, instance.setting, seeds, methods, merges)
                rows = run["tables"][METRICS[suite][0]]
                for claim in suite_claims:
                    rec = claim_record(
                        claim, rows, merges, setting=setting, problem_seed=problem_seed
                    )
                    if rec is not None:
                        records.append(rec)
    decided = decide(records, family=FAMILY)
    by_claim = {c.statement: [r for r in decided if r["claim"] == c.statement] for c in claims}
    summaries = over_instances(claims, by_claim)
    for summary in summaries:
        mine = by_claim[summary["claim"]]
        summary["holds_by_setting"] = {
            name: f"{sum(r['verdict'] == 'holds' for r in mine if r['setting'] == name)}/"
            f"{sum(r['setting'] == name for r in mine)}"
            for name in dict.fromkeys(r["setting"] for r in mine)
        }
        summary["records"] = mine
    return {
        "problem_seeds": list(problem_seeds),
        "seeds": seeds,
        "quick": quick,
        "alpha": ALPHA,
        "margin": CONVEX_MARGIN,
        "statistics": STATISTICS,
        "claims": summaries,
        "facts": list(FACTS),
    }


#: how the verdicts were drawn, in the JSON beside them
STATISTICS = (
    "per instance: paired t over the shared training seeds (df = seeds − 1), two-sided; "
    "'at least as good' against the margin (H0: advantage = −margin); Holm over "
    f"{FAMILY}; per claim: counts over instances and a two-sided sign test over the "
    "instance estimates, Holm over the claims; estimate = mean instance advantage, "
    "interval = Student t over instances (df = instances − 1)"
)


def seed_claims_markdown(study: dict[str, Any]) -> str:
    """One row per claim: instances, holds / reversed / n.s. after Holm, the sign test,
    the mean advantage with its interval, the verdict; then one sentence per claim."""
    lines = [
        f"Each claim on every setting of its suite × problem seeds "
        f"{study['problem_seeds']} ({study['seeds']} training seeds each, shared by every "
        "method). An instance holds / is reversed when the paired t-test over its seeds "
        f"is significant after Holm over all {_tests(study)} claim × instance tests "
        f'(α = {study["alpha"]}); "at least as good" is tested against a margin of '
        f"{study['margin']:g} worst-task excess. The sign test counts the instances whose "
        "estimate favours the claim (Holm over the claims).",
        "",
        "| claim (source) | instances | holds | reversed | n.s. | sign test: for / against "
        "(Holm p) | mean advantage (95% CI) | verdict | holds, by setting |",
        "|---|---:|---:|---:|---:|---|---|---|---|",
    ]
    for c in study["claims"]:
        n, s, ci = c["counts"], c["sign_test"], c["interval"]
        where = ", ".join(f"{k} {v}" for k, v in c["holds_by_setting"].items())
        span = f"{c['estimate']:+.3g} ({ci[0]:+.3g}, {ci[1]:+.3g})" if ci else "–"
        lines.append(
            f"| {c['statement']} ({c['source']}) | {c['instances']} | {n['holds']} | "
            f"{n['reversed']} | {n['n.s.']} | {s['favour']} / {s['against']} "
            f"({c['p_holm']:.2g}) | {span} | **{c['verdict']}** | {where} |"
        )
    lines += ["", *(f"- {sentence(c)}" for c in study["claims"])]
    lines += ["", *(f"Fact: {f}" for f in study["facts"])]
    return "\n".join(lines)


def _tests(study: dict[str, Any]) -> int:
    return sum(c["instances"] for c in study["claims"])
