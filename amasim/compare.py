"""``amasim compare``: every method of the field on the same synthetic problems.

Three suites, each at an equal example budget per method, seeds batched:

* ``mixing`` — the AMA instances (sizes 1000:100:100, conflicting tasks, three convex
  families): uniform, stratified, DoReMi, ODM, AMA-R, AMA-S, and merges of the
  specialists (linear = task arithmetic with weights 1/k, TIES, DARE-TIES; base θ₀ = 0).
  Metrics: worst-task and mean-task clipped excess loss (the exact optimum in the JSON).
* ``transfer`` — :data:`amasim.transfer.GROUP_SETTINGS` (7 group settings with
  off-diagonal transfer), in the LMO protocol (10 rounds; each round a method sets the
  mixture, then SGD trains on it): stratified, uniform, Group DRO, DoReMi, AMA-R (EG on
  clipped excess), ODM, Skill-It (graph from single-group runs) and Aioli (LearnParams,
  :mod:`amasim.lmo`); measurement steps count towards the budget.  Metrics: mean over
  groups of each group's loss at the last iterate (Aioli's "average test perplexity per
  group" analogue) and the worst group's loss.
* ``dga`` — the two data-constrained regimes of DGA (a small generic set; scarce target
  data): DGA against importance sampling (domains ∝ the target's cluster histogram) and
  stratified.  Metric: held-out target loss at θ̄.

Settings are fixed in this module and not tuned per method; each table row says whether
our measurement agrees with the seed paper's claim.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from amasim import lmo, merging, mixers, prng
from amasim.claims import IMBALANCED
from amasim.gradient_mixers import dga, importance_sampling, run_with_gradients
from amasim.methods import build, examples_per_step, run_tuned
from amasim.optimum import solved_problem
from amasim.problems import PROBLEMS
from amasim.simulator import SimulatedOracle
from amasim.transfer import (
    GROUP_SETTINGS,
    GradientSimulatedOracle,
    target_problem,
    transfer_problem,
)

__all__ = ["SUITES", "compare", "compare_markdown"]

SUITES = ("mixing", "transfer", "dga")
MIXING_METHODS = ("uniform", "stratified", "doremi", "odm", "ama-r", "ama-s")
MERGES = {"merge-linear": "linear", "merge-ties": "ties", "merge-dare-ties": "dare_ties"}
DGA_REGIMES = {
    "small generic set": {"generic_sizes": (40,) * 4, "target_size": 200},
    "scarce target data": {"generic_sizes": (400,) * 4, "target_size": 8},
}


def _summary(values: np.ndarray) -> dict[str, float]:
    values = np.asarray(values, dtype=float)
    std = float(values.std(ddof=1)) if values.size > 1 else 0.0
    return {"mean": float(values.mean()), "std": std, "values": values.tolist()}


def _verdict(better: np.ndarray, worse: np.ndarray) -> dict[str, Any]:
    """Does ``better`` have the lower mean, and by more than two standard errors?"""
    diff = float(np.mean(worse) - np.mean(better))
    se = float(np.sqrt(np.var(better, ddof=1) / len(better) + np.var(worse, ddof=1) / len(worse)))
    return {
        "agrees": diff > 0,
        "difference": diff,
        "two_se": 2 * se,
        "significant": abs(diff) > 2 * se,
    }


# ------------------------------------------------------------------------- mixing
def _mixing(seeds: int, budget: int) -> dict[str, Any]:
    out = {}
    for family in PROBLEMS:
        instance, optimum = solved_problem(family, **IMBALANCED)
        oracle = SimulatedOracle(instance)
        k = instance.num_tasks
        rows, average = {}, {}
        for method in MIXING_METHODS:
            per_step = examples_per_step(build(method, 1, instance.sizes), k, 32)
            result = run_tuned(
                method, oracle, budget // per_step, range(seeds), optimum=optimum.value
            )
            rows[method] = _summary(result.worst_task)
            average[method] = _summary(result.task_scores.mean(axis=1))
        specialists = [{"theta": s} for s in instance.specialists]
        base = {"theta": np.zeros(instance.dim)}
        for name, kind in MERGES.items():
            worst, mean = [], []
            for seed in range(seeds):
                options = {"seed": seed} if kind.startswith("dare") else {}
                if kind != "linear":
                    options["weights"] = [1.0 / k] * k
                models = (base, specialists) if kind != "linear" else (None, specialists)
                theta = merging.merge(kind, *models, **options)["theta"]
                scores = instance.task_scores(instance.project(theta))
                worst.append(scores.max())
                mean.append(scores.mean())
            rows[name] = _summary(worst)
            average[name] = _summary(mean)
        best_merge = min(MERGES, key=lambda m: rows[m]["mean"])
        verdicts = {
            f"{ama} beats {best_merge} (best merge)": _verdict(
                rows[ama]["values"], rows[best_merge]["values"]
            )
            for ama in ("ama-r", "ama-s")
        }
        out[family] = {
            "optimum": optimum.value,
            "rows": rows,
            "secondary": {"title": "mean-task excess", "rows": average},
            "verdicts": verdicts,
        }
    return out


# ----------------------------------------------------------------------- transfer
def _train(problem, theta, mixture, steps, keys, start, lr=0.05, batch=8):
    return lmo.simulated_round(
        problem, theta, mixture, steps, lr, keys, batch_size=batch, start=start
    )


def _aioli_losses(problem, keys: np.ndarray, steps: int, rounds: int = 10, sweeps: int = 2):
    """Aioli for ``steps`` SGD steps in ``rounds`` rounds; LearnParams steps count too."""
    m, seeds = problem.num_tasks, len(keys)
    mixer = lmo.aioli(0.2, sweeps=sweeps, epsilon=0.75, ema=0.5, normalise=True)
    state = mixer.init(m, seed=list(range(seeds)))
    theta, position = np.zeros((seeds, problem.dim)), 0
    per_round = steps // rounds
    learn = min(per_round // 2, max(1, per_round // (4 * sweeps * m)))  # steps per mixture

    def oracle_round(mixture, n):
        nonlocal theta, position
        theta, losses = _train(problem, theta, mixture, n, keys, position)
        position += n
        return losses

    for _ in range(rounds):
        weights, state, _ = lmo.aioli_round(mixer, state, oracle_round, m, steps=learn)
        oracle_round(weights, max(0, per_round - learn * sweeps * m))
    return oracle_round(state.weights, max(0, steps - position))


def _round_based(problem, keys: np.ndarray, steps: int, mixer, score: str, rounds: int = 10):
    """The LMO protocol for an online mixer: each round, score every group on its full data
    (full information), update the mixer, train the round on its mixture."""
    seeds, m = len(keys), problem.num_tasks
    state = mixer.init(m, seed=list(range(seeds)))
    theta, position = np.zeros((seeds, problem.dim)), 0
    for r in range(rounds):
        n = steps // rounds if r < rounds - 1 else steps - position
        weights, state = mixer.update(state, problem.task_scores(theta, score))
        theta, losses = _train(problem, theta, weights, n, keys, position)
        position += n
    return losses


def _skill_it_losses(problem, keys: np.ndarray, steps: int, rounds: int = 10):
    """Skill-It: the skills graph from m single-group runs (their steps count), then LMO."""
    seeds, m = len(keys), problem.num_tasks
    probe = max(1, steps // (10 * m))
    theta0 = np.zeros((seeds, problem.dim))
    before = problem.task_scores(theta0, "loss")
    after = [_train(problem, theta0, np.eye(m)[j], probe, keys, j * probe)[1] for j in range(m)]
    graph = np.mean(
        [lmo.skills_graph_from_runs(before[r], np.array(after)[:, r]) for r in range(seeds)], axis=0
    )
    return _round_based(problem, keys, steps - m * probe, lmo.skill_it(graph, 0.2), "loss", rounds)


def _transfer(seeds: int, steps: int) -> dict[str, Any]:
    out = {}
    for setting, kwargs in GROUP_SETTINGS.items():
        problem = transfer_problem(**kwargs)
        m = problem.num_tasks
        keys = prng.replicate_keys(list(range(seeds)), stream=5)
        fixed = {
            "stratified": np.full((seeds, m), 1.0 / m),
            "uniform": np.tile(np.asarray(problem.sizes) / sum(problem.sizes), (seeds, 1)),
        }
        losses = {
            name: _train(problem, np.zeros((seeds, problem.dim)), w, steps, keys, 0)[1]
            for name, w in fixed.items()
        }
        online = {  # one untuned step size, η = 0.2, for every EG-type method
            "group-dro": (mixers.group_dro(0.2), "loss"),
            "doremi": (mixers.doremi(0.2, 1e-3), "clipped"),
            "ama-r": (mixers.ama_r(0.2), "clipped"),
            "odm": (mixers.odm(), "loss"),
        }
        for name, (mixer, score) in online.items():
            losses[name] = _round_based(problem, keys, steps, mixer, score)
        losses["skill-it"] = _skill_it_losses(problem, keys, steps)
        losses["aioli"] = _aioli_losses(problem, keys, steps)
        rows = {name: _summary(loss.mean(axis=1)) for name, loss in losses.items()}
        worst = {name: _summary(loss.max(axis=1)) for name, loss in losses.items()}
        verdict = _verdict(rows["aioli"]["values"], rows["stratified"]["values"])
        out[setting] = {
            "rows": rows,
            "secondary": {"title": "worst group's loss", "rows": worst},
            "verdicts": {"aioli beats stratified": verdict},
        }
    return out


# ---------------------------------------------------------------------------- dga
def _dga(seeds: int, steps: int) -> dict[str, Any]:
    out = {}
    for regime, kwargs in DGA_REGIMES.items():
        split = target_problem(**kwargs, seed=1)
        oracle = GradientSimulatedOracle(
            split.problem,
            (split.features, split.targets),
            target_test=(split.test_features, split.test_targets),
        )
        methods = {
            "stratified": mixers.stratified(),
            "importance sampling": importance_sampling(split),
            "dga": dga(1.0, update_every=10, ema=0.5, smoothing=0.05),
        }
        rows = {}
        for name, mixer in methods.items():
            result = run_with_gradients(
                mixer, oracle, steps=steps, learning_rate=0.05, batch_size=16, seeds=range(seeds)
            )
            rows[name] = _summary(result.target_test_loss)
            rows[name]["extra_gradient_evaluations"] = result.extra_gradient_evaluations
        verdict = _verdict(rows["dga"]["values"], rows["importance sampling"]["values"])
        out[regime] = {"rows": rows, "verdicts": {"dga beats importance sampling": verdict}}
    return out


def compare(suite: str, *, seeds: int = 5, quick: bool = False) -> dict[str, Any]:
    """Run one suite; returns ``{"suite", "seeds", "instances": {name: {rows, verdicts}}}``."""
    if suite not in SUITES:
        raise ValueError(f"suite={suite!r} is unknown: use one of {', '.join(SUITES)}")
    if seeds < 2:
        raise ValueError(f"seeds={seeds}: at least 2 seeds are needed for a standard error")
    runners = {
        "mixing": lambda: _mixing(seeds, 96_000 if quick else 384_000),
        "transfer": lambda: _transfer(seeds, 1000 if quick else 4000),
        "dga": lambda: _dga(seeds, 500 if quick else 2000),
    }
    return {"suite": suite, "seeds": seeds, "quick": quick, "instances": runners[suite]()}


def compare_markdown(result: dict[str, Any]) -> str:
    """One table per suite: instances as rows, methods as columns, then the verdicts."""
    instances = result["instances"]
    methods = list(next(iter(instances.values()))["rows"])
    lines = [
        f"### compare --suite {result['suite']} ({result['seeds']} seeds, mean ± std)",
        "",
        "| instance | " + " | ".join(methods) + " |",
        "|---|" + "---:|" * len(methods),
    ]
    for name, inst in instances.items():
        cells = [f"{inst['rows'][m]['mean']:.4f} ± {inst['rows'][m]['std']:.4f}" for m in methods]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    first = next(iter(instances.values()))
    if "secondary" in first:
        lines += ["", f"{first['secondary']['title']}:", ""]
        lines += ["| instance | " + " | ".join(methods) + " |", "|---|" + "---:|" * len(methods)]
        for name, inst in instances.items():
            rows = inst["secondary"]["rows"]
            cells = [f"{rows[m]['mean']:.4f} ± {rows[m]['std']:.4f}" for m in methods]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "| instance | claim | agrees | > 2 SE | difference |", "|---|---|---|---|---:|"]
    for name, inst in instances.items():
        for claim, v in inst["verdicts"].items():
            agrees = "yes" if v["agrees"] else "**no**"
            significant = "yes" if v["significant"] else "no"
            lines.append(f"| {name} | {claim} | {agrees} | {significant} | {v['difference']:.4g} |")
    return "\n".join(lines)


def write_compare(result: dict[str, Any], out: str | Path) -> list[Path]:
    """``results/compare_<suite>.{json,md}`` and ``figures/compare_<suite>.png`` under ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    (out / "results").mkdir(parents=True, exist_ok=True)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    stem = f"compare_{result['suite']}"
    json_path = out / "results" / f"{stem}.json"
    md_path = out / "results" / f"{stem}.md"
    png_path = out / "figures" / f"{stem}.png"
    json_path.write_text(json.dumps(result, indent=2))
    md_path.write_text(compare_markdown(result) + "\n")
    instances = result["instances"]
    methods = list(next(iter(instances.values()))["rows"])
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(instances)), 3.4))
    width = 0.8 / len(methods)
    for j, method in enumerate(methods):
        means = [inst["rows"][method]["mean"] for inst in instances.values()]
        stds = [inst["rows"][method]["std"] for inst in instances.values()]
        ax.bar(np.arange(len(instances)) + j * width, means, width, yerr=stds, label=method)
    ax.set_xticks(np.arange(len(instances)) + 0.4 - width / 2)
    ax.set_xticklabels(list(instances), fontsize=7, rotation=15)
    ax.set_ylabel(
        {"mixing": "worst-task excess", "transfer": "mean group loss"}.get(
            result["suite"], "target test loss"
        )
    )
    ax.legend(fontsize=6, ncol=3)
    ax.set_title(f"amasim compare --suite {result['suite']} ({result['seeds']} seeds)", fontsize=9)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return [json_path, md_path, png_path]
