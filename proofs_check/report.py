"""The report: a table per check (text, Markdown, JSON) and the bound figures.

The table has, for each statement: its kind (proven / measured), how many instances and
measurements it was tried on, the worst measured/bound ratio (how much of the bound the
worst case uses: ≪ 1 is a loose bound, > 1 a violation unless within its statistical
tolerance) and the verdict.  The Markdown adds every bound measurement (instance, T,
measured ± tolerance, bound, ratio) so that the looseness of each bound is visible.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from proofs_check.base import BUDGETS, CheckResult

__all__ = ["table_rows", "text_table", "markdown", "to_json", "write_bound_figures"]

_HEAD = (
    "check",
    "statement",
    "kind",
    "instances",
    "measurements",
    "worst ratio",
    "median ratio",
    "verdict",
)
_BOUND_CHECKS = ("ama_r_prop2", "ama_r", "ama_s", "ama_s_notes", "ama_s_ix", "ama_s_ix_hp")


def table_rows(results: Sequence[CheckResult]) -> list[tuple[str, ...]]:
    return [
        (
            r.name,
            r.statement,
            r.kind,
            str(r.instances),
            str(len(r.measurements)),
            f"{r.worst_ratio:.3g}",
            f"{float(np.median([m.ratio for m in r.measurements])):.3g}",
            r.verdict,
        )
        for r in results
    ]


def text_table(results: Sequence[CheckResult], total_seconds: float | None = None) -> str:
    """A plain-text table (statements shortened to 44 characters; the Markdown has them whole)."""
    rows = [
        (row[0], row[1] if len(row[1]) <= 44 else row[1][:43] + "…", *row[2:])
        for row in table_rows(results)
    ]
    widths = [max(len(r[j]) for r in [_HEAD, *rows]) for j in range(len(_HEAD))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    out = [line(_HEAD), line(tuple("-" * w for w in widths)), *map(line, rows)]
    if total_seconds is not None:
        out.append(f"\n{len(results)} checks in {total_seconds:.1f} s")
    return "\n".join(out)


def _bound_details(results: Sequence[CheckResult]) -> list[str]:
    lines = [
        "| check | instance | T | measured E[gap] ± tol (`_hp`: largest gap) | bound | ratio |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in results:
        if r.name not in _BOUND_CHECKS:
            continue
        for m in r.measurements:
            inst, _, horizon = m.label.rpartition(":T=")
            lines.append(
                f"| {r.name} | {inst} | {int(horizon):,} | {m.measured:.3g} ± "
                f"{m.tol:.1g} | {m.bound:.3g} | {m.ratio:.3g} |"
            )
    return lines


def markdown(results: Sequence[CheckResult], budget: str, seed: int, seconds: float) -> str:
    """The Markdown report (``proofs_report.md``)."""
    lines = [
        "# proofs_check report",
        "",
        f"`python -m proofs_check --budget {budget} --seed {seed}`: {len(results)} checks in "
        f"{seconds:.0f} s ({platform.python_implementation()} {platform.python_version()}, "
        f"numpy {np.__version__}).  Derivations: `proofs_check/derivations/`.",
        "",
        "*worst ratio* = the largest measured/bound over all measurements: how much of the "
        "bound the worst case uses (≪ 1: a loose bound).  For an equality (unbiasedness, "
        "gradients) the bound is the numerical tolerance.  *proven* statements exit non-zero "
        "when violated; *measured* ones are empirical claims and only reported.",
        "",
        "| " + " | ".join(_HEAD) + " |",
        "|" + "---|" * len(_HEAD),
        *("| " + " | ".join(row) + " |" for row in table_rows(results)),
        "",
        "## Bounds in detail",
        "",
        "Mean over seeds of max_i E_i(θ̄_T) − OPT for training runs with the theory's step "
        "sizes; tol = 4 standard errors.",
        "",
        *_bound_details(results),
        "",
    ]
    return "\n".join(lines)


def to_json(results: Sequence[CheckResult], budget: str, seed: int, seconds: float) -> str:
    record: dict[str, Any] = {
        "budget": budget,
        "seed": seed,
        "seconds": seconds,
        "passed": all(r.passed or r.kind != "proven" for r in results),
        "checks": [r.to_dict() for r in results],
    }
    return json.dumps(record, indent=1, default=_jsonable)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# ----------------------------------------------------------------------- figures
#: (panel title, ((check, label of its runs or None, label of its bound), ...)) per panel
_PANELS = (
    (
        "AMA-R",
        (
            ("ama_r", "Theorem R steps", "Theorem R"),
            ("ama_r_prop2", "Prop. 2 steps", "Group DRO Prop. 2"),
        ),
    ),
    (
        "AMA-S",
        (
            ("ama_s", "EXP3-tuned steps", "Theorem S"),
            ("ama_s_notes", None, "notes §4 (conjectured)"),
        ),
    ),
    (
        "AMA-S-IX",
        (
            ("ama_s_ix", "Theorem IX steps", "Theorem IX"),
            ("ama_s_ix_hp", None, "Theorem IX, w.p. ≥ 1 − 1e-4"),
        ),
    ),
)


def write_bound_figures(
    out_dir: str | Path, quick: bool = False, seed: int = 0, families: Sequence[str] | None = None
) -> list[Path]:
    """``bounds_<family>.png``: measured E[gap] vs T beside the bounds, AMA-R, AMA-S, AMA-S-IX.

    One drawn instance per convex family (the bound checks' first ones) and the bound
    checks' adversarial instances (``bounds_adversarial-<name>.png``), the budget's
    horizons and seeds; runs already made by the checks in this process are reused.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from amasim.problems import PROBLEMS
    from proofs_check import bound_checks
    from proofs_check.instances import adversarial, draw_instances

    budget = BUDGETS["quick" if quick else "default"]
    named = bound_checks.ADVERSARIAL_NAMES
    families = tuple(families or (*PROBLEMS, *(f"adversarial-{a}" for a in named)))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    drawn = {inst.problem.name: inst for inst in draw_instances(len(PROBLEMS), seed)}
    drawn.update({f"adversarial-{a}": adversarial(a) for a in named})
    for family in families:
        inst = drawn[family]
        fig, axes = plt.subplots(1, len(_PANELS), figsize=(14, 4), sharey=True)
        for ax, (title, series) in zip(axes, _PANELS):
            _panel(ax, title, series, inst, budget, seed)
        axes[0].set_ylabel(r"$E[\max_i E_i(\bar\theta_T)] - \mathrm{OPT}$")
        fig.suptitle(
            f"{inst.label}: B={inst.B:.3g}, G={inst.G:.3g}, D={inst.D:g}, "
            f"k={inst.k}, batch {budget.batch_size}, {budget.seeds} seeds (±2 se)",
            fontsize=9,
        )
        fig.tight_layout()
        path = out / f"bounds_{family}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def _panel(ax: Any, title: str, series: Sequence, inst: Any, budget: Any, seed: int) -> None:
    """One panel: each check's measured gaps (±2 se) and its bound vs T, log-log."""
    from proofs_check import bound_checks

    horizons = np.array(budget.horizons, dtype=float)
    for j, (check, run_label, bound_label) in enumerate(series):
        color = f"C{j}"
        ms = [bound_checks.measure(check, inst, int(t), budget, "correct", seed) for t in horizons]
        if run_label is not None:
            mean = np.array([m.measured for m in ms])
            se = np.array([m.detail["se"] for m in ms])
            ax.errorbar(
                horizons,
                np.maximum(mean, 1e-12),
                yerr=2 * se,
                fmt="o-",
                color=color,
                label=f"measured, {run_label}",
            )
        ax.loglog(
            horizons,
            [m.bound for m in ms],
            "--" if j else "-",
            color=color,
            lw=1.5,
            alpha=0.8,
            label=f"bound: {bound_label}",
        )
    ax.set_title(title)
    ax.set_xlabel("steps T")
    ax.grid(True, which="both", alpha=0.2)
    ax.legend(fontsize=7)
