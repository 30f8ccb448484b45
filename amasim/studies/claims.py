"""The AutoMixAlign paper's claims, measured on convex instances at equal example budget.

Every method gets the same number of examples (= gradient evaluations): a reweighting
method takes budget/(k·B) steps, a resampling one budget/B.  Step sizes follow the
theory's 1/√T tuning for each method's own horizon (:class:`amasim.studies.Tuning`).  The metric
is the worst-task clipped excess loss max_i E_i(θ̄) of the averaged iterate, mean ± std
over seeds, next to the exact optimum.  A verdict says whether the measurement agrees
with the claim and whether the difference exceeds two standard errors.

>>> table = measure_claims("quadratic", budget=9_600, seeds=2,
...                        problem_kwargs={"sizes": (120, 12, 12), "dim": 3})
>>> sorted(table["verdicts"][0])
['agrees', 'claim', 'detail', 'significant']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from amasim.optimum import solved_problem
from amasim.registry import steps_for_budget
from amasim.simulator import SimulatedOracle
from amasim.studies import IMBALANCED, Tuning, run_tuned

__all__ = ["CLAIM_METHODS", "measure_claims", "claims_markdown"]

CLAIM_METHODS = (
    "uniform",
    "stratified",
    "group-dro",
    "ama-r-noclip",
    "ama-s-noclip",
    "ama-r",
    "ama-s",
)


def measure_claims(
    problem: str,
    *,
    budget: int = 384_000,
    seeds: int = 8,
    problem_kwargs: dict[str, Any] | None = None,
    methods: Sequence[str] = CLAIM_METHODS,
    tuning: Tuning = Tuning(),
) -> dict[str, Any]:
    """Measure every method on one instance; returns rows, verdicts and the optimum."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 2:
        raise ValueError(f"seeds={seeds!r}: a standard error needs --seeds >= 2")
    kwargs = {**IMBALANCED, **(problem_kwargs or {})}
    k = len(kwargs["sizes"])
    horizons = {m: steps_for_budget(m, budget, k, tuning.batch_size) for m in methods}
    instance, optimum = solved_problem(problem, **kwargs)
    oracle = SimulatedOracle(instance)
    k = instance.num_tasks
    rows: dict[str, dict[str, Any]] = {}
    worst: dict[str, np.ndarray] = {}
    for method in methods:
        steps = horizons[method]
        result = run_tuned(method, oracle, steps, range(seeds), tuning, optimum.value)
        worst[method] = result.worst_task
        rows[method] = {
            "steps": steps,
            "examples_per_step": int(result.examples.mean() // steps),
            "worst_task_mean": float(result.worst_task.mean()),
            "worst_task_std": float(result.worst_task.std(ddof=1)) if seeds > 1 else 0.0,
            "average_task_mean": float(result.task_scores.mean()),
            "gap_mean": float(result.gap.mean()),
            "average_weights": result.average_weights.mean(axis=0).round(4).tolist(),
        }
    verdicts = _verdicts(worst, rows, k)
    return {
        "problem": problem,
        "problem_kwargs": {k_: list(v) if isinstance(v, tuple) else v for k_, v in kwargs.items()},
        "budget": budget,
        "seeds": seeds,
        "optimum": optimum.value,
        "optimum_duality_gap": optimum.duality_gap,
        "rows": rows,
        "verdicts": verdicts,
    }


def _lower(worst: dict[str, np.ndarray], better: str, worse: str) -> dict[str, Any]:
    a, b = worst[better], worst[worse]
    diff = b.mean() - a.mean()
    se = np.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)
    return {
        "claim": f"{better} has a lower worst-task excess loss than {worse}",
        "agrees": bool(diff > 0),
        "significant": bool(diff > 2 * se) if diff > 0 else bool(-diff > 2 * se),
        "detail": f"{a.mean():.4g} vs {b.mean():.4g} (difference {diff:.3g}, 2·SE {2 * se:.2g})",
    }


def _verdicts(worst, rows, k) -> list[dict[str, Any]]:
    pairs = [
        ("ama-r", "uniform"),
        ("ama-r", "stratified"),
        ("ama-s", "uniform"),
        ("ama-s", "stratified"),
        ("ama-r", "ama-r-noclip"),
        ("ama-s", "ama-s-noclip"),
    ]
    out = [_lower(worst, a, b) for a, b in pairs if a in worst and b in worst]
    if "ama-r" in rows and "ama-s" in rows:
        r, s = rows["ama-r"]["examples_per_step"], rows["ama-s"]["examples_per_step"]
        out.append(  # true by construction of the two methods: a fact, not a verdict
            {
                "claim": "AMA-S spends 1/k of AMA-R's gradient evaluations per step",
                "fact": True,
                "holds": bool(s * k == r),
                "detail": f"{s} vs {r} examples per step, k = {k} (by construction)",
            }
        )
    return out


def claims_markdown(tables: Sequence[dict[str, Any]]) -> str:
    """Markdown: one results table per instance, then the verdicts."""
    lines = []
    for table in tables:
        lines += [
            f"#### {table['problem']} — sizes {tuple(table['problem_kwargs']['sizes'])}, "
            f"budget {table['budget']:,} examples, {table['seeds']} seeds, "
            f"OPT = {table['optimum']:.4f}",
            "",
            "| method | steps | examples/step | worst-task E (mean ± std) | gap to OPT "
            "| mean-task E |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, row in table["rows"].items():
            lines.append(
                f"| {name} | {row['steps']:,} | {row['examples_per_step']} | "
                f"{row['worst_task_mean']:.4f} ± {row['worst_task_std']:.4f} | "
                f"{row['gap_mean']:.4f} | {row['average_task_mean']:.4f} |"
            )
        lines += ["", "| claim | agrees | > 2 SE | measured |", "|---|---|---|---|"]
        for v in table["verdicts"]:
            if v.get("fact"):
                holds = "fact" if v["holds"] else "**fact fails**"
                lines.append(f"| {v['claim']} | {holds} | — | {v['detail']} |")
                continue
            lines.append(
                f"| {v['claim']} | {'yes' if v['agrees'] else '**no**'} | "
                f"{'yes' if v['significant'] else 'no'} | {v['detail']} |"
            )
        lines.append("")
    return "\n".join(lines)
