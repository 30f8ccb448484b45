"""The AutoMixAlign paper's claims, measured on convex instances at equal example budget.

Every method gets the same number of examples (= gradient evaluations): a reweighting
method takes budget/(k·B) steps, a resampling one budget/B.  Step sizes follow
:class:`amasim.studies.Tuning` at each method's own horizon: a theorem's step sizes where one
covers the method, 1/√T otherwise.  The metric
is the worst-task clipped excess loss max_i E_i(θ̄) of the averaged iterate, mean ± std
over seeds, next to the exact optimum.  The verdicts are the rows of
:data:`amasim.studies.CLAIMS` whose methods ran here (the ``mixing`` claims but the merges),
each a paired t-test over the shared seeds (:func:`amasim.studies.claim_record`), decided
with Holm over the table's tests — or over every table of the study (:func:`decide_tables`).

>>> table = measure_claims("quadratic", budget=9_600, seeds=2,
...                        problem_kwargs={"sizes": (120, 12, 12), "dim": 3})
>>> table["verdicts"][0]["claim"], table["verdicts"][0]["df"]
('AMA-R beats uniform mixing', 1)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from amasim.optimum import solved_problem
from amasim.registry import steps_for_budget
from amasim.simulator import SimulatedOracle
from amasim.stats import decide, verdict_cells
from amasim.studies import CLAIMS, IMBALANCED, Tuning, claim_record, run_tuned

__all__ = ["CLAIM_METHODS", "measure_claims", "decide_tables", "claims_markdown"]

#: the family of the one-instance tests, as the records name it
FAMILY = "every claim of the one-instance tables"

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
    for method in methods:
        steps = horizons[method]
        result = run_tuned(method, oracle, steps, range(seeds), tuning, optimum.value)
        rows[method] = {
            "steps": steps,
            "examples_per_step": int(result.examples.mean() // steps),
            "worst_task_mean": float(result.worst_task.mean()),
            "worst_task_std": float(result.worst_task.std(ddof=1)) if seeds > 1 else 0.0,
            "average_task_mean": float(result.task_scores.mean()),
            "gap_mean": float(result.gap.mean()),
            "average_weights": result.average_weights.mean(axis=0).round(4).tolist(),
            "values": result.worst_task.tolist(),
            "mean": float(result.worst_task.mean()),
        }
    return {
        "problem": problem,
        "problem_kwargs": {k_: list(v) if isinstance(v, tuple) else v for k_, v in kwargs.items()},
        "budget": budget,
        "seeds": seeds,
        "optimum": optimum.value,
        "optimum_duality_gap": optimum.duality_gap,
        "rows": rows,
        "verdicts": _verdicts(problem, rows),
        "facts": _facts(rows, k),
    }


def _verdicts(problem: str, rows: dict[str, Any]) -> list[dict[str, Any]]:
    """The mixing claims whose methods ran, decided over this table."""
    mixing = [c for c in CLAIMS if c.suite == "mixing"]
    records = [claim_record(c, rows, (), setting=problem) for c in mixing]
    return decide([r for r in records if r is not None], family=FAMILY)


def decide_tables(tables: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``tables`` with their verdicts decided again, Holm over every table's tests: the
    study's family when one table per family is measured."""
    decided = iter(decide([v for t in tables for v in t["verdicts"]], family=FAMILY))
    return [{**t, "verdicts": [next(decided) for _ in t["verdicts"]]} for t in tables]


def _facts(rows: dict[str, Any], k: int) -> list[dict[str, Any]]:
    """True by construction of the two methods: stated, not tested."""
    if "ama-r" not in rows or "ama-s" not in rows:
        return []
    r, s = rows["ama-r"]["examples_per_step"], rows["ama-s"]["examples_per_step"]
    return [
        {
            "claim": "AMA-S spends 1/k of AMA-R's gradient evaluations per step",
            "holds": bool(s * k == r),
            "detail": f"{s} vs {r} examples per step, k = {k} (by construction)",
        }
    ]


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
        lines += [
            "",
            "| claim | compared with | advantage (95% CI) | p | Holm p | verdict |",
            "|---|---|---|---:|---:|---|",
        ]
        for v in table["verdicts"]:
            cells = [v["claim"], v["worse_method"], *verdict_cells(v)]
            lines.append("| " + " | ".join(cells) + " |")
        for f in table.get("facts", []):
            holds = "fact" if f["holds"] else "**fact fails**"
            lines.append(f"| {f['claim']} | — | {f['detail']} | — | — | {holds} |")
        lines += ["", *(f"- {v['sentence']}" for v in table["verdicts"]), ""]
    return "\n".join(lines)
