"""``amasim reproduce``: every figure in ``figures/`` and the results tables, on CPU.

Writes, under ``OUT`` (the CLI's ``--out``; by default a fresh folder under ``runs/``, so
nothing tracked is rewritten — ``--out .`` regenerates the committed tables and figures):

* ``figures/converge_<problem>.png`` — gap vs T, log-log, for each convex family;
* ``figures/weights_<problem>.png`` — AMA-R and AMA-S task weights over training, with
  the exact dual weights α̂ of the optimum;
* ``results/converge_<problem>.{json,csv}`` — the convergence records;
* ``results/RESULTS.md`` — slopes and the seed claims;
* ``results/claims.json`` — every seed claim on ≥ 5 problem instances × 5 training seeds
  (:mod:`amasim.studies.seed_claims`: the problem seeds, each instance's record, the
  verdict counts), and under ``one_instance`` the equal-budget tables of one instance per
  family (:func:`amasim.studies.claims.measure_claims`);
* ``results/specialist_cost.{json,md}`` and ``figures/specialist_cost.png`` — AMA with
  cheaper specialists (:mod:`amasim.studies.specialist_cost`);
* ``results/compare_<suite>.{json,md}`` and ``figures/compare_<suite>.png`` — every
  method of the field on the same problems (:mod:`amasim.studies.compare`);
* ``results/proofs_report.{md,json}`` and ``figures/bounds_<problem>.png`` — the
  convergence theory's checks, measured gap beside each bound, when the caller passes
  ``prove`` (the CLI passes :mod:`proofs_check`; the library never imports it).

Every verdict in these files comes from :mod:`amasim.stats` (paired tests over the shared
seeds, Holm over each study's family); with ``--out .`` the CLI then rewrites the README's
generated blocks from them (:mod:`amasim.studies.readme`).

``--quick`` uses T ≤ 10⁴, 4 seeds and a smaller budget (under 2 minutes on 2 cores).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from amasim.optimum import solved_problem
from amasim.problems import PROBLEMS
from amasim.simulator import SimulatedOracle
from amasim.studies import IMBALANCED, Tuning, run_tuned
from amasim.studies.claims import claims_markdown, decide_tables, measure_claims
from amasim.studies.compare import SUITES, compare, compare_markdown, write_compare
from amasim.studies.converge import converge, write_converge
from amasim.studies.seed_claims import seed_claims, seed_claims_markdown
from amasim.studies.specialist_cost import (
    specialist_cost,
    specialist_cost_markdown,
    write_specialist_cost,
)

__all__ = ["reproduce", "plot_weights"]

CONVERGE_METHODS = ("ama-r", "ama-s", "ama-s-ix", "group-dro", "uniform", "stratified")


def _settings(quick: bool) -> dict[str, Any]:
    if quick:
        return {
            "steps": [100, 1000, 10_000],
            "seeds": 4,
            "budget": 96_000,
            "problem_seeds": [0, 1],
            "claim_seeds": 2,
            "specialist_steps": 500,
        }
    return {
        "steps": [100, 1000, 10_000, 100_000],
        "seeds": 8,
        "budget": 384_000,
        "problem_seeds": list(range(5)),
        "claim_seeds": 5,
        "specialist_steps": 2_000,
    }


def plot_weights(problem: str, path: Path, steps: int = 4000, tuning: Tuning = Tuning()) -> None:
    """Task weights of AMA-R and AMA-S over one run (seed 0), with α̂ of the optimum."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    instance, optimum = solved_problem(problem, **IMBALANCED)
    oracle = SimulatedOracle(instance)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    for ax, method in zip(axes, ("ama-r", "ama-s")):
        result = run_tuned(method, oracle, steps, 0, tuning)
        w = result.weights[:, 0, :]
        running = np.cumsum(w, axis=0) / np.arange(1, len(w) + 1)[:, None]
        for i, name in enumerate(instance.task_names):
            (line,) = ax.plot(
                result.record_steps, running[:, i], label=f"{name} (n={instance.sizes[i]})"
            )
            ax.plot(result.record_steps, w[:, i], color=line.get_color(), alpha=0.25, lw=0.7)
            ax.axhline(optimum.dual_weights[i], color=line.get_color(), ls="--", lw=1)
        ax.set_title(f"{method}: α_t (faint), running mean (solid), α̂ (dashed)", fontsize=8)
        ax.set_xlabel("step")
    axes[0].set_ylabel("task weight")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{problem}, sizes {instance.sizes}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _slopes_markdown(studies: list[dict[str, Any]]) -> str:
    lines = [
        "| problem | method | gap at each T (mean ± std) | slope | 95% CI |",
        "|---|---|---|---:|---|",
    ]
    for study in studies:
        for method, rec in study["methods"].items():
            gaps = ", ".join(
                f"T={t:,}: {m:.2e} ± {s:.1e}"
                for t, m, s in zip(rec["steps"], rec["gap_mean"], rec["gap_std"])
            )
            lo, hi = rec["slope_ci"]
            slope = f"{rec['slope']:.3f} | [{lo:.3f}, {hi:.3f}]"
            lines.append(f"| {study['problem']} | {method} | {gaps} | {slope} |")
    return "\n".join(lines)


def reproduce(
    out: str | Path,
    *,
    quick: bool = False,
    progress: bool = True,
    prove: Callable[[list[str]], int] | None = None,
) -> Path:
    """Regenerate the figures and tables under ``out``; returns the path of ``RESULTS.md``.

    ``prove(argv) -> exit status`` runs the theory's checks (``proofs_check.main``).
    """
    settings = _settings(quick)
    figures, results = Path(out) / "figures", Path(out) / "results"
    figures.mkdir(parents=True, exist_ok=True)
    results.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    studies = _convergence(settings, results, figures, progress)
    tables, claims_study = _claims(settings, results, quick, progress)
    cost = specialist_cost(
        PROBLEMS,
        seeds=settings["claim_seeds"],
        budget=settings["budget"],
        specialist_steps=settings["specialist_steps"],
    )
    write_specialist_cost(cost, out)
    mode = "quick" if quick else "full"
    command = "amasim reproduce --quick --out DIR" if quick else "amasim reproduce --out ."
    text = "\n".join(
        [
            f"# amasim results ({mode} run)",
            "",
            f"Regenerate with `{command}` (took {time.perf_counter() - start:.0f} s on this "
            "machine). Instances: sizes (1000, 100, 100), conflict 1.0, d = 8, radius 3.",
            "",
            "## Convergence of the averaged iterate (gap to the exact optimum)",
            "",
            _slopes_markdown(studies),
            "",
            "## Seed claims at equal example budget (one instance per family)",
            "",
            claims_markdown(tables),
            "## Seed claims over instances",
            "",
            seed_claims_markdown(claims_study),
            "",
            "## The cost of specialists",
            "",
            specialist_cost_markdown(cost),
        ]
    )
    comparisons = []
    for suite in SUITES:
        result = compare(suite, seeds=settings["seeds"] if quick else 5, quick=quick)
        write_compare(result, out)
        comparisons.append(compare_markdown(result))
    text += "\n\n## The rest of the field (`amasim compare`)\n\n" + "\n\n".join(comparisons)
    path = results / "RESULTS.md"
    path.write_text(text)
    if prove is not None:
        budget = "quick" if quick else "default"
        status = prove(["--budget", budget, "--out", str(results), "--figures", str(figures)])
        if status != 0:
            raise RuntimeError(f"the proofs reported a violation: see {results}/proofs_report.md")
    return path


def _convergence(settings: dict, results: Path, figures: Path, progress: bool) -> list:
    """The convergence study of every family: its tables, its figures, the weights."""
    studies = []
    for problem in PROBLEMS:
        study = converge(
            problem,
            CONVERGE_METHODS,
            settings["steps"],
            seeds=settings["seeds"],
            problem_kwargs=IMBALANCED,
            progress=progress,
        )
        png_path = write_converge(study, results, f"converge_{problem}")[-1]
        png_path.replace(figures / png_path.name)
        studies.append(study)
        plot_weights(problem, figures / f"weights_{problem}.png")
    return studies


def _claims(settings: dict, results: Path, quick: bool, progress: bool) -> tuple[list, dict]:
    """The seed claims: one instance per family (one family of tests for the three tables)
    and over instances; ``results/claims.json`` holds both."""
    tables = [
        measure_claims(p, budget=settings["budget"], seeds=settings["seeds"]) for p in PROBLEMS
    ]
    tables = decide_tables(tables)  # one family: the claims of the three tables
    claims_study = seed_claims(
        problem_seeds=settings["problem_seeds"],
        seeds=settings["claim_seeds"],
        quick=quick,
        progress=progress,
    )
    # the instances (problem seeds × training seeds, every record) and, per family, the
    # one-instance tables of the seed claims at equal budget
    claims_record = {**claims_study, "one_instance": tables}
    (results / "claims.json").write_text(json.dumps(claims_record, indent=2))
    return tables, claims_study
