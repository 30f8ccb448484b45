"""The pipeline's results table (markdown) and plots (weights, per-task excess loss)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["write_report", "summary_table"]

METRICS = (("clipped", "excess (clipped)"), ("loss", "DPO loss"), ("accuracy", "reward acc."))


def _mean_std(values: list[float]) -> str:
    arr = np.asarray(values, dtype=float)
    std = arr.std(ddof=1) if arr.size > 1 else 0.0
    return f"{arr.mean():.4f} ± {std:.4f}"


def summary_table(results: dict[str, Any]) -> str:
    """Per method: worst-task excess loss, then each task's metrics, mean ± std over seeds."""
    names = results["tasks"]
    seeds = len(next(iter(results["runs"].values())))
    lines = [
        f"Held-out metrics, mean ± std over {seeds} seeds; tasks {', '.join(names)} "
        f"(train sizes {', '.join(map(str, results['sizes']))}).",
        "",
        "| method | steps | worst-task excess | "
        + " | ".join(f"{t}: excess / exact match" for t in names)
        + " |",
        "|---|---:|---:|" + "---:|" * len(names),
    ]
    for method, runs in results["runs"].items():
        cells = [method, str(runs[0]["steps"]), _mean_std([r["worst_task_excess"] for r in runs])]
        for task in names:
            excess = _mean_std([r["tasks"][task]["clipped"] for r in runs])
            match = np.mean([r["tasks"][task]["exact_match"] for r in runs])
            cells.append(f"{excess} / {match:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(results: dict[str, Any], out: str | Path) -> Path:
    """Write ``results.md`` and ``weights.png`` / ``excess.png`` (seed of the first run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    path = out / "results.md"
    path.write_text(f"# llm pipeline results\n\n{summary_table(results)}\n")
    names = results["tasks"]
    methods = [m for m, runs in results["runs"].items() if runs[0].get("history")]
    if not methods:  # only merges: nothing was trained, nothing to plot
        return path
    for kind, title in (("weights", "task weight α"), ("scores", "batch score (excess loss)")):
        fig, axes = plt.subplots(1, len(methods), figsize=(3.2 * len(methods), 3), sharey=True)
        for ax, method in zip(np.atleast_1d(axes), methods):
            history = results["runs"][method][0]["history"]
            values = np.asarray(history[kind])
            for i, name in enumerate(names):
                ax.plot(history["step"], values[:, i], label=name, lw=1)
            ax.set_title(method, fontsize=9)
            ax.set_xlabel("step")
        np.atleast_1d(axes)[0].set_ylabel(title)
        np.atleast_1d(axes)[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / f"{'weights' if kind == 'weights' else 'excess'}.png", dpi=110)
        plt.close(fig)
    return path
