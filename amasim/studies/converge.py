"""Convergence study: optimality gap of the averaged iterate vs the horizon T.

For each method and each T, one batched run over the seeds, tuned as the studies tune
(:class:`amasim.studies.Tuning`: θ step lr/√T; the mixer's step sizes those of the theorem
that covers the method at the start model's constants, or the 1/√T heuristic — the record
names which, with the constants and the step sizes used), gives
gap_s(T) = max_i E_i(θ̄_T) − OPT for every seed s, OPT from
:func:`amasim.optimum.minimax_optimum`.  The slope is the least-squares slope of
log(mean_s gap) on log T; its 95% interval is a percentile bootstrap over seeds (2,000
resamples, the bootstrap's own seed fixed), so it reflects seed-to-seed variation.

>>> study = converge("quadratic", ["ama-r"], [100, 400], seeds=2,
...                  problem_kwargs={"sizes": (60, 20), "dim": 3})
>>> sorted(study["methods"]["ama-r"])
['gap_mean', 'gap_std', 'mixer_steps', 'slope', 'slope_ci', 'steps', 'tuning']
>>> study["methods"]["ama-r"]["tuning"]
'Theorem R (05_ama_r.md)'
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from amasim.optimum import solved_problem
from amasim.registry import describe, start_constants, tuning_of
from amasim.simulator import SimulatedOracle
from amasim.studies import Tuning, run_tuned

__all__ = ["converge", "check_design", "fit_slope", "write_converge", "plot_converge"]

_BOOTSTRAP_SEED = 20250601


def fit_slope(steps: Sequence[int], gaps: np.ndarray) -> tuple[float, tuple[float, float]]:
    """Slope of log(mean gap) vs log T and its 95% bootstrap interval over seeds.

    ``gaps`` has shape (len(steps), S).  Gaps are floored at 1e-12 before the log.  A slope
    needs two distinct horizons and its interval two seeds: anything less is refused.
    """
    check_design(steps, gaps.shape[1])
    log_t = np.log(np.asarray(steps, dtype=float))
    design = np.vstack([log_t, np.ones_like(log_t)]).T

    def slope_of(mean_gap: np.ndarray) -> np.ndarray:
        coef, *_ = np.linalg.lstsq(design, np.log(np.maximum(mean_gap, 1e-12)), rcond=None)
        return coef[0]

    slope = float(slope_of(gaps.mean(axis=1)))
    rng = np.random.default_rng(_BOOTSTRAP_SEED)
    num_seeds = gaps.shape[1]
    picks = rng.integers(0, num_seeds, size=(2000, num_seeds))
    boot = [slope_of(gaps[:, p].mean(axis=1)) for p in picks]
    low, high = np.percentile(boot, [2.5, 97.5])
    return slope, (float(low), float(high))


def check_design(steps: Sequence[int], seeds: int) -> None:
    """Refuse a study whose slope or interval would be degenerate: fewer than two distinct
    horizons (no slope), fewer than two seeds (no interval)."""
    if len(set(steps)) < 2:
        raise ValueError(
            f"steps={list(steps)}: a slope needs at least two distinct horizons T, e.g. "
            "--steps 100,1000,10000"
        )
    if seeds < 2:
        raise ValueError(f"seeds={seeds}: a confidence interval over seeds needs --seeds >= 2")


def converge(
    problem: str,
    methods: Sequence[str],
    steps: Sequence[int],
    *,
    seeds: int = 8,
    problem_kwargs: dict[str, Any] | None = None,
    tuning: Tuning = Tuning(),
    progress: bool = False,
) -> dict[str, Any]:
    """Run the study; returns the ``converge.json`` record plus per-seed ``gaps``.

    With ``progress`` a bar counts training steps, so its time estimate holds from the
    first horizon on (runs cost about their number of steps).
    """
    check_design(steps, seeds)
    instance, optimum = solved_problem(problem, **(problem_kwargs or {}))
    oracle = SimulatedOracle(instance)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        total = len(methods) * sum(steps)
        bar = tqdm(total=total, desc=f"converge {problem}", unit="step", unit_scale=True)
    out: dict[str, Any] = {"problem": problem, "optimum": optimum.to_dict(), "methods": {}}
    constants = start_constants(oracle, tuning.batch_size)
    out["constants"] = constants._asdict()
    gaps: dict[str, np.ndarray] = {}
    for method in methods:
        per_t = []
        for horizon in steps:
            result = run_tuned(method, oracle, horizon, range(seeds), tuning, optimum.value)
            per_t.append(result.gap)
            if bar is not None:
                bar.update(horizon)
        gaps[method] = np.array(per_t)
        slope, ci = fit_slope(steps, gaps[method])
        out["methods"][method] = {
            "steps": list(steps),
            "gap_mean": gaps[method].mean(axis=1).tolist(),
            "gap_std": gaps[method].std(axis=1, ddof=1).tolist(),
            "slope": slope,
            "slope_ci": list(ci),
            "tuning": tuning_of(method),
            "mixer_steps": [_mixer_steps(method, t, oracle, tuning, constants) for t in steps],
        }
    if bar is not None:
        bar.close()
    out["seeds"] = seeds
    out["tuning"] = tuning.__dict__
    out["gaps"] = {m: g.tolist() for m, g in gaps.items()}
    return out


def _mixer_steps(method: str, steps: int, oracle: Any, tuning: Tuning, constants: Any) -> list:
    """(step size, smoothing) the studies' policy gives ``method`` at horizon ``steps``."""
    k = len(oracle.task_names)
    kind = describe(method, k).signal.kind
    return list(tuning.policy(steps, k, kind, method=method, constants=constants))


def write_converge(
    study: dict[str, Any], out_dir: str | Path, stem: str = "converge"
) -> list[Path]:
    """Write ``converge.json`` (the documented record), a per-seed CSV and the plot."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = {k: study[k] for k in ("problem", "optimum", "constants", "methods") if k in study}
    json_path, csv_path, png_path = (out / f"{stem}{ext}" for ext in (".json", ".csv", ".png"))
    _atomic_write(json_path, json.dumps(record, indent=2))
    rows = [
        (m, t, s, gap)
        for m, per_t in study["gaps"].items()
        for t, per_seed in zip(study["methods"][m]["steps"], per_t)
        for s, gap in enumerate(per_seed)
    ]
    tmp = csv_path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["method", "steps", "seed", "gap"])
        writer.writerows(rows)
    tmp.replace(csv_path)
    plot_converge(study, png_path)
    return [json_path, csv_path, png_path]


def plot_converge(study: dict[str, Any], path: str | Path) -> None:
    """Log-log mean gap vs T (± std band) per method with a 1/√T guide line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    all_t = []
    for method, rec in study["methods"].items():
        t = np.array(rec["steps"], dtype=float)
        mean, std = np.array(rec["gap_mean"]), np.array(rec["gap_std"])
        label = f"{method} (slope {rec['slope']:.2f})"
        ax.loglog(t, np.maximum(mean, 1e-12), "o-", label=label)
        ax.fill_between(t, np.maximum(mean - std, 1e-12), mean + std, alpha=0.15)
        all_t.append(t)
    t = np.unique(np.concatenate(all_t))
    first = 2 * min(rec["gap_mean"][0] for rec in study["methods"].values())
    ax.loglog(t, first * np.sqrt(t[0] / t), "k--", lw=1, label=r"$\propto 1/\sqrt{T}$")
    ax.set_xlabel("steps T")
    ax.set_ylabel(r"gap: $\max_i E_i(\bar\theta_T) - \mathrm{OPT}$")
    ax.set_title(f"{study['problem']}: {study['seeds']} seeds, mean ± std")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
