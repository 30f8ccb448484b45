"""How cheap can AMA's specialists be?  AMA-R and AMA-S with early-stopped specialists.

AMA's main cost is training k specialists.  Here each task's specialist is trained by
projected SGD on its own task (batch 32, step 3/√S for a full horizon of S steps, averaged
iterate) and stopped after 5, 10, 25, 50 or 100% of its S steps; the *reference* row uses
the start model θ₀ = 0 as the one shared specialist (DPO's policy starts at the reference,
so this is AMA with the reference model as every task's specialist: zero specialist
compute).  AMA-R and AMA-S then train against those specialists' per-example losses, at the
claims' equal budget, and the worst-task clipped excess of their averaged iterate is always
measured against the *full* (exact) specialists, so the rows compare.  The ``exact`` row is
AMA with the exact specialists themselves (the claims table).  Every other row is tested
against it, paired by seed: "AMA with these specialists is at least as good as with the
exact ones", non-inferiority against :data:`amasim.stats.CONVEX_MARGIN`, Holm over every
row of the study (:mod:`amasim.stats`).

>>> study = specialist_cost(["quadratic"], fractions=(0.5,), seeds=2, budget=6_400,
...                         specialist_steps=200, problem_kwargs={"sizes": (60, 20), "dim": 3})
>>> sorted({row["specialists"] for row in study["families"]["quadratic"]["rows"]})
['50%', 'exact', 'reference']
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from amasim.driver import run
from amasim.mixers import stratified
from amasim.optimum import solved_problem
from amasim.problems import ConvexProblem, assemble
from amasim.registry import steps_for_budget
from amasim.simulator import SimulatedOracle
from amasim.stats import CONVEX_MARGIN as MARGIN
from amasim.stats import Claim, decide, interval, paired_test, record, verdict_cells
from amasim.studies import IMBALANCED, Tuning, run_tuned

__all__ = [
    "FRACTIONS",
    "CheapSpecialistOracle",
    "sgd_specialists",
    "specialist_cost",
    "specialist_cost_markdown",
    "plot_specialist_cost",
]

FRACTIONS = (0.05, 0.1, 0.25, 0.5, 1.0)
METHODS = ("ama-r", "ama-s")


class CheapSpecialistOracle(SimulatedOracle):
    """The simulator whose batches carry ``training_reference`` (the cheap specialists'
    per-example losses) while ``evaluate`` scores against the problem's full specialists."""

    def __init__(self, problem: ConvexProblem, training_reference: np.ndarray) -> None:
        super().__init__(problem)
        if training_reference.shape != problem.reference_losses.shape:
            raise ValueError(
                f"training_reference has shape {training_reference.shape}: expected "
                f"{problem.reference_losses.shape}, one loss per example"
            )
        self.training_reference = training_reference

    def sample(self, task_ids: np.ndarray):
        batch = super().sample(task_ids)
        return batch._replace(reference_losses=self.training_reference[batch.data])


def sgd_specialists(
    problem: ConvexProblem, steps: int, full_steps: int, *, batch_size: int = 32, seed: int = 0
) -> np.ndarray:
    """Each task's specialist after ``steps`` of a projected-SGD run tuned for
    ``full_steps`` (step 3/√full_steps, averaged iterate), shape (k, d)."""
    lr = Tuning().learning_rate / np.sqrt(full_steps)
    out = []
    for i in range(problem.num_tasks):
        lo, hi = problem.offsets[i], problem.offsets[i + 1]
        x, y = problem.features[lo:hi], problem.targets[lo:hi]
        task = assemble(problem.name, problem.loss, [x], [y], problem.radius, [f"task{i}"])
        oracle = SimulatedOracle(task)
        run(
            stratified(),
            oracle,
            steps=steps,
            learning_rate=lr,
            batch_size=batch_size,
            seeds=[seed],
            evaluate=False,
            check=False,
        )
        out.append(oracle.average_theta[0])
    return np.array(out)


def _reference_losses(problem: ConvexProblem, specialists: np.ndarray) -> np.ndarray:
    """ℓ(z) = L(θ_i, z) for every example z of task i."""
    offsets = problem.offsets
    return np.concatenate(
        [problem.example_losses(s)[lo:hi] for s, lo, hi in zip(specialists, offsets, offsets[1:])]
    )


def specialist_cost(
    families: Sequence[str],
    *,
    fractions: Sequence[float] = FRACTIONS,
    seeds: int = 5,
    budget: int = 384_000,
    specialist_steps: int = 2_000,
    problem_kwargs: dict[str, Any] | None = None,
    tuning: Tuning = Tuning(),
) -> dict[str, Any]:
    """The study on every family (one instance each, the AMA imbalance by default)."""
    if seeds < 2:
        raise ValueError(f"seeds={seeds}: intervals need >= 2 seeds")
    if not fractions or any(not 0 < f <= 1 for f in fractions):
        raise ValueError(f"fractions={list(fractions)} must lie in (0, 1]")
    out: dict[str, Any] = {"seeds": seeds, "budget": budget, "specialist_steps": specialist_steps}
    out["families"] = {}
    for family in families:
        problem, optimum = solved_problem(family, **{**IMBALANCED, **(problem_kwargs or {})})
        variants = {"reference": (np.zeros(problem.num_tasks * problem.dim), 0)}
        for f in fractions:
            steps = max(1, round(f * specialist_steps))
            thetas = sgd_specialists(problem, steps, specialist_steps, batch_size=32)
            variants[f"{f:.0%}"] = (thetas, steps * 32 * problem.num_tasks)
        variants["exact"] = (problem.specialists, None)
        rows = []
        for label, (thetas, compute) in variants.items():
            thetas = np.asarray(thetas).reshape(problem.num_tasks, problem.dim)
            oracle = CheapSpecialistOracle(problem, _reference_losses(problem, thetas))
            for method in METHODS:
                steps = steps_for_budget(method, budget, problem.num_tasks, tuning.batch_size)
                result = run_tuned(method, oracle, steps, range(seeds), tuning, optimum.value)
                worst = interval(result.worst_task, f"{family} {label} {method}")
                rows.append(
                    {
                        "specialists": label,
                        "method": method,
                        "specialist_examples": compute,
                        "worst_task_mean": worst["mean"],
                        "worst_task_std": worst["std"],
                        "ci95": worst["ci95"],  # Student t, n − 1 df (2.78 at 5 seeds)
                        "values": worst["values"],
                    }
                )
        out["families"][family] = {"optimum": optimum.value, "rows": rows}
    return out | {"margin": MARGIN, "verdicts": _verdicts(out["families"])}


def _verdicts(families: dict[str, Any]) -> list[dict[str, Any]]:
    """Every cheaper specialist row against the exact one, paired by seed, Holm over all."""
    records = []
    for family, rec in families.items():
        exact = {r["method"]: r for r in rec["rows"] if r["specialists"] == "exact"}
        for row in rec["rows"]:
            if row["specialists"] == "exact":
                continue
            statement = (
                f"{row['method']} with {row['specialists']} specialists is at least as good as "
                f"with the exact ones ({family})"
            )
            claim = Claim(statement, row["specialists"], "exact", noninferior=True)
            test = paired_test(row["values"], exact[row["method"]]["values"], margin=MARGIN)
            records.append(
                record(claim, test, problem=family, method=row["method"], label=row["specialists"])
            )
    return decide(records, family="every cheaper-specialist row of the study")


def specialist_cost_markdown(study: dict[str, Any]) -> str:
    """One table per family: specialists × method, worst-task excess vs full specialists."""
    lines = [
        f"Worst-task clipped excess (against the full specialists) of the averaged iterate, "
        f"mean ± 95% CI over {study['seeds']} seeds, budget {study['budget']:,} examples; "
        f"specialists stopped at a share of {study['specialist_steps']:,} SGD steps.",
    ]
    for family, rec in study["families"].items():
        lines += [
            "",
            f"#### {family} (exact optimum {rec['optimum']:.4f})",
            "",
            "| specialists | specialist examples | AMA-R | AMA-S |",
            "|---|---:|---:|---:|",
        ]
        by = {}
        for row in rec["rows"]:
            by.setdefault(row["specialists"], {})[row["method"]] = row
        for label, cells in by.items():
            compute = next(iter(cells.values()))["specialist_examples"]
            shown = "exact solve" if compute is None else f"{compute:,}"
            values = [
                f"{cells[m]['worst_task_mean']:.4f} ± {cells[m]['ci95']:.4f}" for m in METHODS
            ]
            lines.append(f"| {label} | {shown} | " + " | ".join(values) + " |")
    verdicts = study.get("verdicts") or []
    if verdicts:
        lines += [
            "",
            f"Against the exact specialists, paired by seed: the advantage of each row (negative: "
            f"worse), non-inferiority with a margin of {study['margin']:g} worst-task excess, Holm "
            f"over the {len(verdicts)} rows.",
            "",
            "| family | specialists | method | advantage over exact (95% CI) | p | Holm p | "
            "at least as good as exact |",
            "|---|---|---|---|---:|---:|---|",
        ]
        for v in verdicts:
            cells = [v["problem"], v["label"], v["method"], *verdict_cells(v, digits=2)]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_specialist_cost(study: dict[str, Any], path: str | Path) -> None:
    """Gap to the exact optimum (worst-task excess vs full specialists − OPT, log scale)
    against specialist compute, per family; the reference (zero compute) at the left edge,
    the exact specialists dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = study["families"]
    fig, axes = plt.subplots(1, len(families), figsize=(4.2 * len(families), 3.6), squeeze=False)
    for ax, (family, rec) in zip(axes[0], families.items()):
        opt = rec["optimum"]
        trained = [r for r in rec["rows"] if r["specialists"] not in ("reference", "exact")]
        left = min(r["specialist_examples"] for r in trained) / 4

        def gap(row, opt=opt):
            return max(row["worst_task_mean"] - opt, 1e-6)

        for method, color in zip(METHODS, ("C0", "C1")):
            mine = {r["specialists"]: r for r in rec["rows"] if r["method"] == method}
            rows = [r for r in trained if r["method"] == method]
            x = [r["specialist_examples"] for r in rows]
            err = [r["ci95"] for r in rows]
            ax.errorbar(x, [gap(r) for r in rows], yerr=err, fmt="o-", color=color, label=method)
            ref = mine["reference"]
            ax.errorbar([left], [gap(ref)], yerr=[ref["ci95"]], fmt="s", color=color, mfc="white")
            ax.axhline(gap(mine["exact"]), color=color, ls="--", lw=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("specialist compute, examples (□: the reference, 0)", fontsize=8)
        ax.set_title(family, fontsize=9)
    axes[0][0].set_ylabel("worst-task excess − OPT (vs full specialists)", fontsize=8)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("AMA with cheaper specialists (dashed: the exact specialists)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_specialist_cost(study: dict[str, Any], out: str | Path) -> list[Path]:
    """``results/specialist_cost.{json,md}`` and ``figures/specialist_cost.png`` under ``out``."""
    out = Path(out)
    (out / "results").mkdir(parents=True, exist_ok=True)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    paths = [out / "results" / "specialist_cost.json", out / "results" / "specialist_cost.md"]
    paths[0].write_text(json.dumps(study, indent=2))
    paths[1].write_text(specialist_cost_markdown(study) + "\n")
    paths.append(out / "figures" / "specialist_cost.png")
    plot_specialist_cost(study, paths[-1])
    return paths
