"""The pipeline's results: ``results.json`` (checksummed), the markdown table with the data
audit, and plots (weights, per-task excess loss).

``results.json`` is written atomically with a ``sha256`` field over the rest of the record
(canonical JSON); :func:`read_results` verifies it, so a truncated or edited file is named
instead of read.  No table prints a figure computed from a non-finite value, and a spread
is printed only over two or more seeds.

>>> results = {"tasks": ["a"], "sizes": [3], "runs": {"m": [
...     {"steps": 5, "worst_task_excess": 0.25, "tasks": {"a": {"clipped": 0.25, "exact_match": 1.0}}}]}}
>>> print(summary_table(results).splitlines()[0])
Held-out metrics of one seed (no spread); tasks a (train sizes 3).
"""  # noqa: E501

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from llm.integrity import IntegrityError, write_text_atomic

__all__ = ["write_report", "summary_table", "data_table", "write_results", "read_results"]

METRICS = (("clipped", "excess (clipped)"), ("loss", "DPO loss"), ("accuracy", "reward acc."))


def _digest(record: dict[str, Any]) -> str:
    text = json.dumps(record, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def write_results(path: str | Path, results: dict[str, Any]) -> None:
    """Write ``results`` to ``path`` atomically, with a ``sha256`` of its canonical JSON.

    A non-finite number is refused (``ValueError``): it would be a figure from a broken run.
    """
    record = {k: v for k, v in results.items() if k != "sha256"}
    try:
        digest = _digest(record)
    except ValueError:
        raise ValueError(
            f"refusing to write {path}: the results hold a NaN or an infinity (a diverged "
            "run); nothing was written"
        ) from None
    text = json.dumps({**record, "sha256": digest}, allow_nan=False)
    write_text_atomic(path, text, kind="results file")


def read_results(path: str | Path) -> dict[str, Any]:
    """The record :func:`write_results` wrote (without ``sha256``), verified; a truncated
    or edited file raises :class:`~llm.integrity.IntegrityError` naming it."""
    path = Path(path)
    fix = f"run the same command again to rewrite {path} (its caches make that fast)"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        message = f"{path} is not valid JSON ({err}): truncated? Fix: {fix}"
        raise IntegrityError(message, path) from None
    if not isinstance(record, dict) or "sha256" not in record:
        raise IntegrityError(f"{path} has no sha256 field: not a results file. Fix: {fix}", path)
    digest = record.pop("sha256")
    if _digest(record) != digest:
        raise IntegrityError(f"{path} was altered (its sha256 does not match). Fix: {fix}", path)
    return record


def _cell(values: list[float], what: str) -> str:
    arr = np.asarray(values, dtype=float)
    if not np.isfinite(arr).all():
        raise ValueError(f"{what} is not finite ({arr.tolist()}): no figure is printed from it")
    if arr.size < 2:
        return f"{arr.mean():.4f}"
    return f"{arr.mean():.4f} ± {arr.std(ddof=1):.4f}"


def summary_table(results: dict[str, Any]) -> str:
    """Per method: worst-task excess loss, then each task's metrics, mean ± std over seeds
    (the value alone for one seed)."""
    names = results["tasks"]
    seeds = len(next(iter(results["runs"].values())))
    spread = f", mean ± std over {seeds} seeds" if seeds > 1 else " of one seed (no spread)"
    lines = [
        f"Held-out metrics{spread}; tasks {', '.join(names)} "
        f"(train sizes {', '.join(map(str, results['sizes']))}).",
        "",
        "| method | steps | worst-task excess | "
        + " | ".join(f"{t}: excess / exact match" for t in names)
        + " |",
        "|---|---:|---:|" + "---:|" * len(names),
    ]
    for method, runs in results["runs"].items():
        worst = _cell([r["worst_task_excess"] for r in runs], f"{method}: worst-task excess")
        cells = [method, str(runs[0]["steps"]), worst]
        for task in names:
            excess = _cell([r["tasks"][task]["clipped"] for r in runs], f"{method}: {task} excess")
            match = [r["tasks"][task]["exact_match"] for r in runs]
            if not all(math.isfinite(m) for m in match):
                raise ValueError(f"{method}: {task} exact match is not finite: no figure printed")
            cells.append(f"{excess} / {np.mean(match):.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def data_table(results: dict[str, Any]) -> str:
    """The data audit per task and split (``results["data"]``): pairs, truncated
    completions, dropped pairs, duplicates, chosen = rejected, unknown symbols, NUL."""
    data = results.get("data") or {}
    if not data:
        return ""
    columns = (
        ("pairs", "pairs"),
        ("chosen_truncated", "chosen truncated"),
        ("rejected_truncated", "rejected truncated"),
        ("dropped", "dropped"),
        ("duplicates", "duplicates"),
        ("chosen_equals_rejected", "chosen = rejected"),
        ("unknown_symbols", "unknown symbols"),
        ("nul_bytes", "NUL"),
    )
    lines = [
        "| task | split | " + " | ".join(title for _, title in columns) + " |",
        "|---|---|" + "---:|" * len(columns),
    ]
    for task, splits in data.items():
        for split, counts in splits.items():
            row = [str(counts.get(key, 0)) for key, _ in columns]
            lines.append(f"| {task} | {split} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def write_report(results: dict[str, Any], out: str | Path) -> Path:
    """Write ``results.md`` and ``weights.png`` / ``excess.png`` (seed of the first run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    path = out / "results.md"
    text = f"# llm pipeline results\n\n{summary_table(results)}\n"
    audit = data_table(results)
    if audit:
        text += f"\n## Data\n\nPer task and split, as read and tokenised.\n\n{audit}\n"
    write_text_atomic(path, text, kind="report")
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
