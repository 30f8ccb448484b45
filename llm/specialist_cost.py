"""How cheap can AMA's specialists be, at LLM scale?
``python -m llm specialist-cost --config CONFIG --out DIR``

AMA's main cost is training one DPO specialist per task.  This study trains AMA-R and
AMA-S (at the config's equal example budget, every seed of ``[run] seeds``) against
cheaper specialists, built from the pipeline's own stages (:mod:`llm.pipeline`):

* *early-stopped*: each specialist stopped after 5, 10, 25, 50 or 100% of its
  ``[specialist] steps`` — the first steps of the full run, the same draws and learning
  rates (:func:`llm.stages.specialists.stopped_stage`);
* *the reference*: the reference model as every task's one shared specialist (zero
  specialist compute).  DPO's policy starts at the reference, so at the first step each
  pair's loss equals its "specialist" loss (log 2 under the sigmoid loss): the clipped excess
  max(L − ℓ, 0) is 0 and so is its gradient 1[L > ℓ].  AMA may then not move at all; the
  study measures whether it does (``policy_moved``) rather than assuming it.

Whatever trained them, every generalist is scored against the *full* specialists: the
worst-task clipped excess uses the 100% specialists' held-out losses, so the rows compare.
Specialist compute is counted in training pairs (one DPO forward and backward each):
steps × batch size × k tasks.  With the same ``--out`` as ``python -m llm run`` the
reference, the caches, the full specialists and the 100% generalists are reused.

Writes ``OUT/specialist_cost.json``, ``OUT/specialist_cost.md`` and
``OUT/specialist_cost.png`` (worst-task excess against specialist compute).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from amasim.stats import interval
from llm.config import Config, check_config
from llm.context import RunContext, open_run
from llm.integrity import write_text_atomic
from llm.model import fingerprint
from llm.pipeline import Prepared, prepare
from llm.report import write_results
from llm.stages.evaluation import evaluate
from llm.stages.generalists import (
    generalist_key,
    generalist_oracle,
    start_constants,
    train_generalist,
)
from llm.stages.specialists import specialists, stopped_stage

__all__ = [
    "FRACTIONS",
    "METHODS",
    "specialist_cost",
    "study",
    "specialist_cost_markdown",
    "plot_specialist_cost",
    "write_specialist_cost",
]

FRACTIONS = (0.05, 0.1, 0.25, 0.5, 1.0)
METHODS = ("ama-r", "ama-s")
#: the row of the reference as every task's specialist
REFERENCE = "reference"


def _check(cfg: Config, fractions: Sequence[float], methods: Sequence[str]) -> Config:
    """The config with ``methods`` as its methods (checked when the run opens); the
    fractions and seeds checked."""
    if not fractions or any(not 0 < f <= 1 for f in fractions):
        raise ValueError(
            f"fractions={list(fractions)}: each must lie in (0, 1], e.g. 0.05,0.1,0.25,0.5,1"
        )
    if 1.0 not in fractions:
        raise ValueError(
            f"fractions={list(fractions)} lacks 1: the full specialists are the yardstick "
            "every row is measured against; add 1"
        )
    if len(cfg.run.seeds) < 2:
        raise ValueError(f"[run] seeds = {list(cfg.run.seeds)}: intervals need >= 2 seeds")
    run = dataclasses.replace(cfg.run, methods=tuple(methods))
    return check_config(dataclasses.replace(cfg, run=run))


def specialist_cost(
    cfg: Config,
    *,
    fractions: Sequence[float] = FRACTIONS,
    methods: Sequence[str] = METHODS,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the study in ``cfg.run.out`` (locked meanwhile); the record (also written as
    ``specialist_cost.json`` there, see :func:`write_specialist_cost`)."""
    cfg = _check(cfg, fractions, methods)
    with open_run(cfg, progress=progress) as ctx:
        return study(ctx, prepare(ctx), fractions=fractions, methods=methods)


def study(
    ctx: RunContext,
    ready: Prepared,
    *,
    fractions: Sequence[float] = FRACTIONS,
    methods: Sequence[str] = METHODS,
) -> dict[str, Any]:
    """The study in an open run (``ready``: its stages 1–3, shared with the pipeline's run
    in the same process)."""
    started = time.perf_counter()
    fractions, methods = tuple(sorted(set(fractions))), tuple(methods)
    tasks, ref, scores = ready
    names, section = list(tasks), ctx.cfg.specialist
    full = specialists(ctx, ref, tasks, scores, exact_match=False)  # the yardstick
    record: dict[str, Any] = {
        "config": asdict(ctx.cfg),
        "seeds": list(ctx.cfg.run.seeds),
        "tasks": names,
        "methods": list(methods),
        "fractions": list(fractions),
        "specialist_steps": section.steps,
        "specialist_batch_size": section.batch_size,
        "specialists": {},
        "rows": [],
        "runs": {},
    }
    for label, fraction in [(REFERENCE, 0.0), *((f"{f:.0%}", f) for f in fractions)]:
        cheap = specialists(ctx, ref, tasks, scores, fraction=fraction, exact_match=False)
        steps = stopped_stage(section, fraction).steps if fraction > 0 else 0
        variant = {
            "fraction": fraction,
            "steps": steps,
            "examples": steps * section.batch_size * len(names),
            # how far each cheap specialist is from the full one, on held-out pairs
            "eval_loss": {n: float(cheap[n].eval_losses.mean()) for n in names},
            "full_eval_loss": {n: float(full[n].eval_losses.mean()) for n in names},
        }
        record["specialists"][label] = variant
        # trained against the cheap specialists, scored against the full ones
        oracle = generalist_oracle(ctx, ref, tasks, scores, cheap, eval_specs=full)
        key = generalist_key(ctx, ref, tasks, cheap)
        # the theorems' constants from the specialists the mixer reads (the cheap ones)
        constants = start_constants(ctx, cheap, ctx.cfg.generalist.batch_size)
        for method in methods:
            runs = [
                _run(ctx, oracle, ready, full, key, method, seed, label, constants)
                for seed in ctx.cfg.run.seeds
            ]
            record["runs"].setdefault(label, {})[method] = runs
            record["rows"].append(_row(label, method, runs, variant, names))
        record["seconds"] = time.perf_counter() - started
        if ctx.parallel.is_main:
            write_results(ctx.folders.out / "specialist_cost.json", record)
    ref.restore()  # the last generalist left its weights there
    return record


def _run(
    ctx, oracle, ready: Prepared, full, key, method: str, seed: int, label: str, constants
) -> dict:
    """One generalist of the study, evaluated against the full specialists."""
    tick = time.perf_counter()
    tasks, ref, _ = ready
    trained = train_generalist(
        ctx, oracle, tasks, method, seed, key, progress=False, constants=constants
    )
    where = f"{method} seed {seed} ({label} specialists)"
    run = evaluate(ctx, oracle, ref.model, tasks, full, where)
    weights = np.asarray(trained.history["weights"], dtype=float)
    run |= {
        "seed": seed,
        "steps": trained.steps,
        "tuned": trained.tuned,
        "seconds": time.perf_counter() - tick,
        # did anything move? (the reference row: see the module docstring)
        "weights_moved": float(np.abs(weights - weights[0]).max()),
        "policy_moved": fingerprint(ref.model) != ref.fingerprint,
    }
    ctx.say(f"{where}: worst-task excess {run['worst_task_excess']:.4f}")
    return run


def _row(
    label: str,
    method: str,
    runs: list[dict[str, Any]],
    variant: dict[str, Any],
    names: Sequence[str],
) -> dict[str, Any]:
    worst = interval([r["worst_task_excess"] for r in runs], f"{method} ({label}): worst-task")
    mean = interval(
        [float(np.mean([r["tasks"][t]["clipped"] for t in names])) for r in runs],
        f"{method} ({label}): mean-task",
    )
    match = None  # [eval] generate = 0: no greedy decoding, no exact match
    if all("exact_match" in r["tasks"][t] for r in runs for t in names):
        match = interval(
            [float(np.mean([r["tasks"][t]["exact_match"] for t in names])) for r in runs],
            f"{method} ({label}): exact match",
        )
    return {
        "specialists": label,
        "method": method,
        "specialist_steps": variant["steps"],
        "specialist_examples": variant["examples"],
        "worst_task": worst,
        "mean_task": mean,
        "mean_exact_match": match,
        "policy_moved": sum(bool(r["policy_moved"]) for r in runs),
        "weights_moved": max(r["weights_moved"] for r in runs),
    }


# ------------------------------------------------------------------------------ output
def _ci(stat: dict[str, Any] | None, digits: int = 4) -> str:
    if stat is None:  # not measured (no exact match without greedy decoding)
        return "–"
    if stat["ci95"] is None:
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {stat['ci95']:.{digits}f}"


def specialist_cost_markdown(study: dict[str, Any]) -> str:
    """The table: specialists × method, worst-task excess against the full specialists
    (mean ± 95% Student-t interval over seeds), mean-task excess, mean exact match, and
    whether training moved the policy and the weights."""
    methods = study["methods"]
    seeds = len(study["seeds"])
    lines = [
        "Worst-task clipped excess of each generalist, always against the *full* "
        f"specialists (mean ± 95% CI, Student t over {seeds} seeds); specialists stopped "
        f"after a share of their {study['specialist_steps']} steps (batch "
        f"{study['specialist_batch_size']}, {len(study['tasks'])} tasks), or the reference "
        "model as every task's specialist.  Specialist compute in training pairs.",
        "",
        "| specialists | specialist pairs | method | worst-task excess | mean-task excess | "
        "mean exact match | policy moved (runs) | max weight change |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in study["rows"]:
        lines.append(
            f"| {row['specialists']} | {row['specialist_examples']:,} | {row['method']} | "
            f"{_ci(row['worst_task'])} | {_ci(row['mean_task'])} | "
            f"{_ci(row['mean_exact_match'], 2)} | {row['policy_moved']}/{seeds} | "
            f"{row['weights_moved']:.3g} |"
        )
    lines += ["", "Held-out DPO loss of each task's specialist (full specialists: 100%):", ""]
    names = study["tasks"]
    lines += ["| specialists | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for label, variant in study["specialists"].items():
        cells = [f"{variant['eval_loss'][n]:.4f}" for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if study.get("seconds"):
        lines += ["", f"Wall time {study['seconds'] / 60:.1f} min ({len(methods)} methods)."]
    return "\n".join(lines)


def plot_specialist_cost(study: dict[str, Any], path: str | Path) -> None:
    """Worst-task excess (against the full specialists) and mean exact match against
    specialist compute, per method, with 95% intervals; the reference (zero compute) as a
    hollow square at the left edge, the full specialists' value dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = study["rows"]
    trained = [r for r in rows if r["specialists"] != REFERENCE]
    left = min(r["specialist_examples"] for r in trained) / 3
    panels = [("worst_task", "worst-task excess (vs full specialists)")]
    if all(r["mean_exact_match"] is not None for r in rows):  # [eval] generate > 0
        panels.append(("mean_exact_match", "mean exact match"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    axes = axes[0]
    for ax, (key, title) in zip(axes, panels):
        for i, method in enumerate(study["methods"]):
            color = f"C{i}"
            mine = [r for r in trained if r["method"] == method]
            x = [r["specialist_examples"] for r in mine]
            y = [r[key]["mean"] for r in mine]
            err = [r[key]["ci95"] or 0.0 for r in mine]
            ax.errorbar(x, y, yerr=err, fmt="o-", color=color, label=method, capsize=2)
            ref = next(r for r in rows if r["method"] == method and r["specialists"] == REFERENCE)
            ax.errorbar(
                [left],
                [ref[key]["mean"]],
                yerr=[ref[key]["ci95"] or 0.0],
                fmt="s",
                color=color,
                mfc="white",
                capsize=2,
            )
            full = max(mine, key=lambda r: r["specialist_examples"])
            ax.axhline(full[key]["mean"], color=color, ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("specialist compute, training pairs (□: the reference, 0)", fontsize=8)
        ax.set_ylabel(title, fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7)
    fig.suptitle(
        f"AMA with cheaper specialists (95% intervals over {len(study['seeds'])} seeds; "
        "dashed: the full specialists)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_specialist_cost(study: dict[str, Any], out: str | Path) -> list[Path]:
    """``specialist_cost.json`` (checksummed), ``.md`` and ``.png`` under ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"specialist_cost.{ext}" for ext in ("json", "md", "png")]
    write_results(paths[0], study)
    write_text_atomic(
        paths[1],
        "# AMA with cheaper specialists\n\n" + specialist_cost_markdown(study) + "\n",
        kind="report",
    )
    plot_specialist_cost(study, paths[2])
    return paths
