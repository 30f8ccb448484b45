"""Every seed paper's claim over many problem instances, not one.

A claim compares two methods on a suite's metric (:mod:`amasim.studies.compare`: worst-task
clipped excess on the AMA instances, mean group loss on the transfer settings, held-out
target loss on DGA's regimes).  It is measured on ≥ 5 problem instances (problem seeds)
of every setting, each with ≥ 5 training seeds, at the comparison's equal budget.  On one
instance the claim *holds* when the difference exceeds two standard errors in the claimed
direction, is *reversed* beyond two SE the other way, and is *not significant* otherwise
(the SE covers training seeds; instances are the second level).  The verdict counts the
instances of each kind and says so:

==============  ===========================================================================
agrees          holds on every instance
mostly agrees   holds on most, reversed on none
mixed           holds on some, reversed on some
not significant holds and reverses on none
disagrees       reversed on most
==============  ===========================================================================

A non-inferiority claim (AMA-S at least as good as AMA-R) *holds* unless the first method is
worse beyond two SE.  Facts true by construction (AMA-S draws 1/k of AMA-R's examples a
step) are stated as facts, not tested.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from amasim.studies.compare import MERGES, METRICS, instances, run_instance

__all__ = ["Claim", "CLAIMS", "FACTS", "seed_claims", "seed_claims_markdown"]


class Claim(NamedTuple):
    """``better`` has a lower ``suite`` metric than ``worse`` (``"best-merge"``: the best
    of the merges on that instance); ``noninferior``: no worse beyond two SE."""

    statement: str
    source: str
    suite: str
    better: str
    worse: str
    noninferior: bool = False


CLAIMS: tuple[Claim, ...] = (
    Claim("AMA-R beats uniform mixing", "AutoMixAlign", "mixing", "ama-r", "uniform"),
    Claim("AMA-S beats uniform mixing", "AutoMixAlign", "mixing", "ama-s", "uniform"),
    Claim("AMA-R beats stratified mixing", "AutoMixAlign", "mixing", "ama-r", "stratified"),
    Claim("AMA-S beats stratified mixing", "AutoMixAlign", "mixing", "ama-s", "stratified"),
    Claim("clipping helps AMA-R", "AutoMixAlign", "mixing", "ama-r", "ama-r-noclip"),
    Claim("clipping helps AMA-S", "AutoMixAlign", "mixing", "ama-s", "ama-s-noclip"),
    Claim("AMA-R beats the best merge", "AutoMixAlign", "mixing", "ama-r", "best-merge"),
    Claim("AMA-S beats the best merge", "AutoMixAlign", "mixing", "ama-s", "best-merge"),
    Claim("AMA-S is at least as good as AMA-R", "AutoMixAlign", "mixing", "ama-s", "ama-r", True),
    Claim("Aioli beats stratified mixing", "Aioli", "transfer", "aioli", "stratified"),
    Claim("DGA beats importance sampling", "DGA", "dga", "dga", "importance-sampling"),
)

FACTS = (
    "AMA-S draws B examples a step and AMA-R k·B (one batch per task): at an equal budget "
    "AMA-S takes k times as many steps — true by construction, not a measurement.",
)


def _methods(claims: Sequence[Claim], suite: str) -> list[str]:
    names = [c.better for c in claims if c.suite == suite]
    names += [c.worse for c in claims if c.suite == suite and c.worse != "best-merge"]
    return list(dict.fromkeys(names))


def _compare(a: np.ndarray, b: np.ndarray, noninferior: bool) -> dict[str, Any]:
    """``a`` (the claimed better) against ``b`` on one instance, seeds as samples."""
    diff = float(np.mean(b) - np.mean(a))
    two_se = 2 * float(np.sqrt(np.var(a, ddof=1) / len(a) + np.var(b, ddof=1) / len(b)))
    if noninferior:
        outcome = "reversed" if diff < -two_se else "holds"
    else:
        outcome = "holds" if diff > two_se else "reversed" if diff < -two_se else "n.s."
    return {"difference": diff, "two_se": two_se, "outcome": outcome}


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
    records: dict[str, list[dict[str, Any]]] = {c.statement: [] for c in claims}
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
                    worse = claim.worse
                    if worse == "best-merge":
                        worse = min(merges, key=lambda m: rows[m]["mean"])
                    record = _compare(
                        np.array(rows[claim.better]["values"]),
                        np.array(rows[worse]["values"]),
                        claim.noninferior,
                    )
                    record |= {
                        "setting": setting,
                        "problem_seed": problem_seed,
                        "better": rows[claim.better]["mean"],
                        "worse": rows[worse]["mean"],
                        "worse_method": worse,
                    }
                    records[claim.statement].append(record)
    return {
        "problem_seeds": list(problem_seeds),
        "seeds": seeds,
        "quick": quick,
        "claims": [_summary(c, records[c.statement]) for c in claims],
        "facts": list(FACTS),
    }


def _summary(claim: Claim, records: list[dict[str, Any]]) -> dict[str, Any]:
    counts = {k: sum(r["outcome"] == k for r in records) for k in ("holds", "reversed", "n.s.")}
    n = len(records)
    if counts["holds"] == n:
        verdict = "agrees"
    elif counts["reversed"] > n / 2:
        verdict = "disagrees"
    elif counts["holds"] and counts["reversed"]:
        verdict = "mixed"
    elif counts["holds"] > n / 2:
        verdict = "mostly agrees"
    elif counts["holds"] == counts["reversed"] == 0:
        verdict = "not significant"
    else:
        verdict = "mostly not significant"
    settings = dict.fromkeys(r["setting"] for r in records)
    by_setting = {
        name: f"{sum(r['outcome'] == 'holds' for r in records if r['setting'] == name)}/"
        f"{sum(r['setting'] == name for r in records)}"
        for name in settings
    }
    summary = {**claim._asdict(), "instances": n, "counts": counts, "verdict": verdict}
    return summary | {"holds_by_setting": by_setting, "records": records}


def seed_claims_markdown(study: dict[str, Any]) -> str:
    """One row per claim: instances, holds / reversed / n.s. beyond 2 SE, the verdict."""
    lines = [
        f"Each claim on every setting of its suite × problem seeds "
        f"{study['problem_seeds']} ({study['seeds']} training seeds each); an instance counts "
        "when the difference exceeds 2 SE of the seed means.",
        "",
        "| claim (source) | instances | holds | reversed | n.s. | verdict | holds, by setting |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for c in study["claims"]:
        n = c["counts"]
        where = ", ".join(f"{k} {v}" for k, v in c["holds_by_setting"].items())
        lines.append(
            f"| {c['statement']} ({c['source']}) | {c['instances']} | {n['holds']} | "
            f"{n['reversed']} | {n['n.s.']} | **{c['verdict']}** | {where} |"
        )
    lines += ["", *(f"Fact: {f}" for f in study["facts"])]
    return "\n".join(lines)
