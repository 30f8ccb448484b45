"""``amasim compare``: every method of the field on every synthetic setting.

Every method of :data:`amasim.registry.METHODS` (uniform, stratified, importance
sampling, Group DRO, DoReMi, ODM, AMA-R, AMA-S, Skill-It, Aioli, DML, DoGE, DGA) and
three merges of the specialists (linear = weights 1/k, TIES, DARE-TIES; base θ₀ = 0)
runs on every setting of a suite, at an equal budget of training examples per replicate
(measurement examples included; extra gradient evaluations reported beside it), seeds
batched, mean ± std over seeds.  A method that needs a capability the setting lacks
(DGA and importance sampling need a target set, which only the dga suite has) gets an
explicit "n/a — needs <capability>" cell.  Each row's protocol is in the tables
(:mod:`amasim.registry`): ``per-batch`` (AMA protocol: the mixer reads each training
batch's scores), ``rounds``/``aioli`` (10 rounds; the mixer reads every group's
validation score on its full data), ``alignment`` (gradient inner products),
``sweep`` (DML), ``merge``.  ``online="rounds"`` (``--online rounds``) runs Group DRO,
DoReMi, ODM, AMA-R and AMA-S in the rounds protocol instead (full-information scores).

* ``mixing`` — the AMA instances (sizes 1000:100:100, conflicting tasks, three convex
  families), B = 32, η_θ = 3/√T: worst-task and mean-task clipped excess loss at θ̄,
  beside the exact optimum (the gap is worst − optimum).
* ``transfer`` — :data:`amasim.transfer.GROUP_SETTINGS` (7 settings with off-diagonal
  transfer), B = 8, η_θ = 0.05: mean over groups of each group's loss at the last
  iterate (Aioli's "average test perplexity per group" analogue) and the worst group's.
* ``dga`` — DGA's two data-constrained regimes (a small generic set; scarce target
  data), B = 16, η_θ = 0.05: held-out target loss at θ̄, and the worst and mean cluster
  loss.  Importance sampling uses the target examples' true cluster labels.

Settings are fixed in this module and :mod:`amasim.registry`, not tuned per method;
each suite states whether our measurement agrees with the seed paper's claim.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from amasim import merging
from amasim.claims import IMBALANCED
from amasim.optimum import solved_problem
from amasim.problems import PROBLEMS, ConvexProblem, _loss_and_slope
from amasim.registry import METHODS, ONLINE, Setting, missing, train_method
from amasim.transfer import (
    GROUP_SETTINGS,
    GradientSimulatedOracle,
    importance_sampling_weights,
    target_problem,
    transfer_problem,
)

__all__ = ["SUITES", "compare", "compare_markdown", "write_compare"]

SUITES = ("mixing", "transfer", "dga")
MERGES = {"merge-linear": "linear", "merge-ties": "ties", "merge-dare-ties": "dare_ties"}
DGA_REGIMES = {
    "small generic set": {"generic_sizes": (40,) * 4, "target_size": 200},
    "scarce target data": {"generic_sizes": (400,) * 4, "target_size": 8},
}
#: suite -> (primary metric, further metrics), as the tables title them.
METRICS = {
    "mixing": ("worst-task excess", ("mean-task excess",)),
    "transfer": ("mean group loss", ("worst group loss",)),
    "dga": ("target test loss", ("worst cluster loss", "mean cluster loss")),
}


def _summary(values: np.ndarray) -> dict[str, Any]:
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


def _merged(problem: ConvexProblem, kind: str, seeds: int) -> np.ndarray:
    """θ of merging the specialists, one per seed (only DARE draws), shape (R, d)."""
    k = problem.num_tasks
    specialists = [{"theta": s} for s in problem.specialists]
    base = {"theta": np.zeros(problem.dim)}
    out = []
    for seed in range(seeds):
        options = {"seed": seed} if kind.startswith("dare") else {}
        if kind != "linear":
            options["weights"] = [1.0 / k] * k
        models = (base, specialists) if kind != "linear" else (None, specialists)
        out.append(problem.project(merging.merge(kind, *models, **options)["theta"]))
    return np.array(out)


Metrics = Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]]


def _instances(suite: str, quick: bool) -> dict[str, tuple[Any, Setting, Metrics, Any]]:
    """name -> (oracle, setting, metrics(θ_T, θ̄) -> {title: (R,)}, optimum or None)."""
    primary, (extra, *more) = METRICS[suite]
    out = {}
    if suite == "mixing":
        for family in PROBLEMS:
            problem, optimum = solved_problem(family, **IMBALANCED)
            setting = Setting(96_000 if quick else 384_000, 3.0, 32, "1/sqrt(T)")

            def mixing(last, avg, problem=problem):
                scores = problem.task_scores(avg, "clipped")
                return {primary: scores.max(axis=1), extra: scores.mean(axis=1)}

            out[family] = (GradientSimulatedOracle(problem), setting, mixing, optimum.value)
    elif suite == "transfer":
        for name, kwargs in GROUP_SETTINGS.items():
            problem = transfer_problem(**kwargs)
            setting = Setting(8_000 if quick else 32_000, 0.05, 8)

            def transfer(last, avg, problem=problem):
                losses = problem.task_scores(last, "loss")
                return {primary: losses.mean(axis=1), extra: losses.max(axis=1)}

            out[name] = (GradientSimulatedOracle(problem), setting, transfer, None)
    else:
        for regime, kwargs in DGA_REGIMES.items():
            split = target_problem(**kwargs, seed=1)
            oracle = GradientSimulatedOracle(
                split.problem,
                (split.features, split.targets),
                target_test=(split.test_features, split.test_targets),
            )
            weights = importance_sampling_weights(split)
            setting = Setting(8_000 if quick else 32_000, 0.05, 16, target_weights=weights)

            def dga(last, avg, split=split):
                preds = avg @ split.test_features.T
                test = _loss_and_slope("squared", preds, split.test_targets)[0].mean(axis=1)
                losses = split.problem.task_scores(avg, "loss")
                return {primary: test, extra: losses.max(axis=1), more[0]: losses.mean(axis=1)}

            out[regime] = (oracle, setting, dga, None)
    return out


def _run_instance(oracle, setting: Setting, metrics: Metrics, seeds: int) -> dict[str, Any]:
    tables: dict[str, dict[str, Any]] = {}
    info: dict[str, dict[str, Any]] = {}
    for name, method in METHODS.items():
        lacking = missing(name, oracle, setting)
        if lacking:
            info[name] = {"protocol": method.protocol, "na": "needs " + ", ".join(lacking)}
            continue
        trained = train_method(name, oracle, range(seeds), setting)
        info[name] = trained._asdict()
        values = metrics(oracle.theta, oracle.average_theta)
        for title, v in values.items():
            tables.setdefault(title, {})[name] = _summary(v)
    for name, kind in MERGES.items():
        theta = _merged(oracle.problem, kind, seeds)
        info[name] = {"protocol": "merge", "examples": 0, "extra_gradient_evaluations": 0}
        for title, v in metrics(theta, theta).items():
            tables[title][name] = _summary(v)
    return {"tables": tables, "methods": info, "budget": setting.budget}


def _verdicts(suite: str, inst: dict[str, Any]) -> dict[str, dict[str, Any]]:
    rows = inst["tables"][METRICS[suite][0]]
    if suite == "mixing":
        best = min(MERGES, key=lambda m: rows[m]["mean"])
        return {
            f"{ama} beats {best} (best merge)": _verdict(rows[ama]["values"], rows[best]["values"])
            for ama in ("ama-r", "ama-s")
        }
    if suite == "transfer":
        return {
            "aioli beats stratified": _verdict(
                rows["aioli"]["values"], rows["stratified"]["values"]
            )
        }
    return {
        "dga beats importance-sampling": _verdict(
            rows["dga"]["values"], rows["importance-sampling"]["values"]
        )
    }


def compare(
    suite: str, *, seeds: int = 5, quick: bool = False, online: str = "per-batch"
) -> dict[str, Any]:
    """Run one suite; returns ``{"suite", "seeds", "quick", "online", "instances": {name:
    {"tables": {metric: {method: summary}}, "methods": {method: protocol, examples,
    extra_gradient_evaluations or na}, "budget", "optimum", "verdicts"}}}``."""
    if suite not in SUITES:
        raise ValueError(f"suite={suite!r} is unknown: use one of {', '.join(SUITES)}")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 2:
        raise ValueError(f"seeds={seeds!r}: at least 2 seeds are needed for a standard error")
    instances = {}
    for name, (oracle, setting, metrics, optimum) in _instances(suite, quick).items():
        if online != "per-batch":
            setting = Setting(**{**setting.__dict__, "online": online})
        inst = _run_instance(oracle, setting, metrics, seeds)
        inst["optimum"] = optimum
        inst["verdicts"] = _verdicts(suite, inst)
        instances[name] = inst
    return {
        "suite": suite,
        "seeds": seeds,
        "quick": quick,
        "online": online,
        "instances": instances,
    }


def _cell(inst: dict[str, Any], title: str, method: str) -> str:
    row = inst["tables"][title].get(method)
    if row is None:
        return f"n/a — {inst['methods'][method]['na']}"
    return f"{row['mean']:.4f} ± {row['std']:.4f}"


def compare_markdown(result: dict[str, Any]) -> str:
    """Per metric one table (methods as rows, with their protocol; instances as
    columns), then the examples and extra gradient evaluations, then the verdicts."""
    suite, instances = result["suite"], result["instances"]
    names = list(instances)
    first = next(iter(instances.values()))
    methods = list(first["methods"])
    head = f"### compare --suite {suite} ({result['seeds']} seeds, mean ± std)"
    lines = [head, ""]
    if result.get("online", "per-batch") != "per-batch":
        lines += [f"Online mixers ({', '.join(ONLINE)}) in the {result['online']} protocol.", ""]
    primary, extra = METRICS[suite]
    for title in (primary, *extra):
        lines += [f"{title}:", "", "| method | protocol | " + " | ".join(names) + " |"]
        lines.append("|---|---|" + "---:|" * len(names))
        for m in methods:
            cells = [_cell(inst, title, m) for inst in instances.values()]
            lines.append(f"| {m} | {first['methods'][m]['protocol']} | " + " | ".join(cells) + " |")
        if title == primary and first.get("optimum") is not None:
            cells = [f"{inst['optimum']:.4f}" for inst in instances.values()]
            lines.append("| exact optimum | — | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append(
        f"Budget: {first['budget']:,} training examples per replicate (measurement included). "
        "Extra gradient evaluations per replicate: "
        + "; ".join(
            f"{m} {first['methods'][m]['extra_gradient_evaluations']:,}"
            for m in methods
            if first["methods"][m].get("extra_gradient_evaluations")
        )
        + " (first instance)."
    )
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
    title = METRICS[result["suite"]][0]
    methods = list(next(iter(instances.values()))["methods"])
    fig, ax = plt.subplots(figsize=(max(7, 1.6 * len(instances)), 3.8))
    width = 0.85 / len(methods)
    cmap = plt.get_cmap("tab20")
    for j, method in enumerate(methods):
        rows = [inst["tables"][title].get(method) for inst in instances.values()]
        means = [np.nan if r is None else r["mean"] for r in rows]
        stds = [0.0 if r is None else r["std"] for r in rows]
        x = np.arange(len(instances)) + j * width
        ax.bar(x, means, width, yerr=stds, label=method, color=cmap(j % 20))
    ax.set_xticks(np.arange(len(instances)) + 0.425 - width / 2)
    ax.set_xticklabels(list(instances), fontsize=7, rotation=15)
    ax.set_ylabel(title)
    ax.legend(fontsize=5, ncol=4)
    ax.set_title(
        f"amasim compare --suite {result['suite']} ({result['seeds']} seeds; missing bar = n/a)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return [json_path, md_path, png_path]
