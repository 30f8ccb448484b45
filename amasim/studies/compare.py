"""``amasim compare``: every method of the field on every synthetic setting.

Every method of :data:`amasim.registry.METHODS` (uniform, stratified, importance
sampling, Group DRO, DoReMi, ODM, AMA-R, AMA-S, the ablations, Skill-It, Aioli, DML, DoGE,
DGA, and any method registered later) and three merges of the specialists (linear =
weights 1/k, TIES, DARE-TIES; base θ₀ = 0) runs on every setting of a suite, at an equal
budget of training examples per replicate (measurement examples included; extra
gradient evaluations — DoGE's and DGA's alignments, DoReMi's proxy run — reported beside
it), seeds batched, mean ± std over seeds, through the one driver
(:func:`amasim.driver.run`).  A method that needs a capability the setting lacks (DGA and
importance sampling need a target set, which only the dga suite has) gets an explicit
"n/a — needs <capability>" cell.  Each row names the signal its mixer observes
(:class:`amasim.mixers.Signal`): ``batch`` (the AMA protocol: each training batch's
scores), ``validation``/``learnparams`` (10 rounds on every group's validation score on
its full data), ``alignment`` (gradient inner products), ``sweep`` (DML), ``merge``.
``online="rounds"`` (``--online rounds``) runs the adaptive batch mixers (Group DRO,
DoReMi, ODM, AMA-R, AMA-S) on the validation signal instead (full-information scores).
DoReMi's row is the model retrained on its average weights, as its paper does.

* ``mixing`` — the AMA instances (sizes 1000:100:100, conflicting tasks, three convex
  families), B = 32, η_θ = 3/√T: worst-task and mean-task clipped excess loss at θ̄,
  beside the exact optimum (the gap is worst − optimum).
* ``transfer`` — :data:`amasim.transfer.GROUP_SETTINGS` (7 settings with off-diagonal
  transfer), B = 8, η_θ = 0.05: mean over groups of each group's loss at the last
  iterate (Aioli's "average test perplexity per group" analogue) and the worst group's.
* ``dga`` — DGA's two data-constrained regimes (a small generic set; scarce target
  data), B = 16, η_θ = 0.05: held-out target loss at θ̄, and the worst and mean cluster
  loss.  Importance sampling uses the target examples' true cluster labels.

Settings are fixed in this module and :mod:`amasim.registry`, not tuned per method.
Each suite tests the seed papers' claims on it (the rows of :data:`amasim.studies.CLAIMS`
of that suite, its metric's per-seed values paired by seed), Holm-corrected over every
claim × setting of the suite (:mod:`amasim.stats`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from amasim import merging, registry
from amasim.driver import run
from amasim.mixers import Signal
from amasim.optimum import solved_problem
from amasim.problems import PROBLEMS, ConvexProblem, loss_and_slope
from amasim.registry import (
    METHODS,
    build,
    check_method,
    describe,
    missing,
    start_constants,
    steps_for_budget,
)
from amasim.result import RunResult
from amasim.stats import decide, verdict_cells
from amasim.studies import CLAIMS, IMBALANCED, claim_record
from amasim.studies.plots import differences, plot_differences
from amasim.transfer import (
    GROUP_SETTINGS,
    GradientSimulatedOracle,
    importance_sampling_weights,
    target_problem,
    transfer_problem,
)

__all__ = [
    "SUITES",
    "Setting",
    "Instance",
    "instances",
    "train",
    "run_instance",
    "compare",
    "compare_markdown",
    "write_compare",
]

SUITES = ("mixing", "transfer", "dga")
#: the merges compared (base θ₀ = 0), from :data:`amasim.registry.MERGES`
MERGES = {m: registry.MERGES[m] for m in ("merge-linear", "merge-ties", "merge-dare-ties")}
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


@dataclass(frozen=True)
class Setting:
    """How one comparison trains: the example budget per replicate, the θ step size
    (``schedule`` as :func:`amasim.driver.run`; round signals train at the rate of the
    round's first step), batch size B, the number of rounds of round signals, the
    protocol of the adaptive batch mixers (``online``), and the importance-sampling
    weights (the target's task histogram) when a target exists."""

    budget: int
    learning_rate: float
    batch_size: int = 8
    schedule: str = "constant"
    rounds: int = 10
    online: str = "per-batch"
    target_weights: Any = None

    def __post_init__(self) -> None:
        if self.online not in ("per-batch", "rounds"):
            raise ValueError(f"online={self.online!r} must be 'per-batch' or 'rounds'")
        for field in ("budget", "batch_size", "rounds"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"Setting({field}={value!r}): pass an int >= 1")

    def signal(self, name: str) -> Signal | None:
        """The signal method ``name`` runs on here (``None``: its own)."""
        rounds = self.online == "rounds" and METHODS[name].online
        return Signal("validation") if rounds else None


def train(name: str, oracle: Any, seeds: Sequence[int], setting: Setting) -> RunResult:
    """Train registered method ``name`` on ``oracle`` for ``setting.budget`` examples per
    replicate (measurement included), tuned by the studies' policy for its horizon."""
    k, b = len(oracle.task_names), setting.batch_size
    signal = setting.signal(name)
    steps = steps_for_budget(name, setting.budget, k, b) if signal is None else setting.budget // b
    mixer = build(
        name,
        steps=steps,
        sizes=oracle.task_sizes,
        signal=signal,
        target_weights=setting.target_weights,
        constants=start_constants(oracle, b),  # the theorems' B and D·G at the start model
    )
    return run(
        mixer,
        oracle,
        steps=steps,
        learning_rate=setting.learning_rate,
        schedule=setting.schedule,
        batch_size=b,
        seeds=list(seeds),
        rounds=setting.rounds,
        signal=signal,
        check=False,
    )


def _summary(values: np.ndarray) -> dict[str, Any]:
    values = np.asarray(values, dtype=float)
    std = float(values.std(ddof=1)) if values.size > 1 else 0.0
    return {"mean": float(values.mean()), "std": std, "values": values.tolist()}


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


Metrics = Callable[[Any], dict[str, np.ndarray]]


class Instance(NamedTuple):
    """One setting of a suite; ``metrics(model) -> {title: (R,)}`` reads a trained oracle
    through its protocol and capabilities only (``evaluate``, ``target_loss``)."""

    oracle: Any
    problem: ConvexProblem
    setting: Setting
    metrics: Metrics
    optimum: float | None = None
    test: tuple[np.ndarray, np.ndarray] | None = None


class _MergedModel:
    """A merged θ (R, d), read as the metrics read a trained oracle."""

    def __init__(self, problem: ConvexProblem, theta: np.ndarray, test=None) -> None:
        self.problem, self.theta, self.test = problem, theta, test

    def evaluate(self, score: str = "clipped", averaged: bool = False) -> np.ndarray:
        return self.problem.task_scores(self.theta, score)

    def target_loss(self, averaged: bool = False, split: str = "test") -> np.ndarray:
        x, y = self.test
        return loss_and_slope(self.problem.loss, self.theta @ x.T, y)[0].mean(axis=-1)


def instances(suite: str, quick: bool = False, problem_seed: int | None = None) -> dict:
    """The settings of ``suite`` by name, each an :class:`Instance`; ``problem_seed`` draws
    another instance of every setting (default: the suite's own seeds)."""
    primary, (extra, *more) = METRICS[suite]
    seed = {} if problem_seed is None else {"seed": problem_seed}
    out = {}
    if suite == "mixing":
        for family in PROBLEMS:
            problem, optimum = solved_problem(family, **IMBALANCED, **seed)
            setting = Setting(96_000 if quick else 384_000, 3.0, 32, "1/sqrt(T)")

            def mixing(oracle):
                scores = oracle.evaluate("clipped", averaged=True)
                return {primary: scores.max(axis=1), extra: scores.mean(axis=1)}

            oracle = GradientSimulatedOracle(problem)
            out[family] = Instance(oracle, problem, setting, mixing, optimum.value)
    elif suite == "transfer":
        for name, kwargs in GROUP_SETTINGS.items():
            problem = transfer_problem(**kwargs, **seed)
            setting = Setting(8_000 if quick else 32_000, 0.05, 8)

            def transfer(oracle):
                losses = oracle.evaluate("loss", averaged=False)
                return {primary: losses.mean(axis=1), extra: losses.max(axis=1)}

            out[name] = Instance(GradientSimulatedOracle(problem), problem, setting, transfer)
    else:
        for regime, kwargs in DGA_REGIMES.items():
            split = target_problem(**kwargs, seed=1 if problem_seed is None else problem_seed)
            oracle = GradientSimulatedOracle(
                split.problem,
                (split.features, split.targets),
                target_test=(split.test_features, split.test_targets),
            )
            weights = importance_sampling_weights(split)
            setting = Setting(8_000 if quick else 32_000, 0.05, 16, target_weights=weights)

            def dga(oracle):
                test = oracle.target_loss(averaged=True, split="test")
                losses = oracle.evaluate("loss", averaged=True)
                return {primary: test, extra: losses.max(axis=1), more[0]: losses.mean(axis=1)}

            test = (split.test_features, split.test_targets)
            out[regime] = Instance(oracle, split.problem, setting, dga, None, test)
    return out


def run_instance(
    instance: Instance, setting: Setting, seeds: int, methods: Sequence[str], merges=MERGES
) -> dict[str, Any]:
    """Every method of ``methods`` and every merge of ``merges`` on one instance:
    ``{"tables": {metric: {method: summary}}, "methods": {method: info}, "budget"}``."""
    oracle, problem, metrics = instance.oracle, instance.problem, instance.metrics
    tables: dict[str, dict[str, Any]] = {}
    info: dict[str, dict[str, Any]] = {}
    for name in methods:
        signal = setting.signal(name)
        kind = (signal or describe(name, problem.num_tasks).signal).kind
        lacking = missing(name, oracle, signal)
        if lacking:
            info[name] = {"protocol": kind, "na": "needs " + ", ".join(lacking)}
            continue
        result = train(name, oracle, range(seeds), setting)
        info[name] = {
            "protocol": kind,
            "examples": int(result.examples.max()),
            "extra_gradient_evaluations": int(result.extra_gradient_evaluations.max()),
        }
        for title, v in metrics(oracle).items():
            tables.setdefault(title, {})[name] = _summary(v)
    for name, kind in merges.items():
        info[name] = {"protocol": "merge", "examples": 0, "extra_gradient_evaluations": 0}
        model = _MergedModel(problem, _merged(problem, kind, seeds), instance.test)
        for title, v in metrics(model).items():
            tables[title][name] = _summary(v)
    return {"tables": tables, "methods": info, "budget": setting.budget}


def _verdicts(suite: str, name: str, inst: dict[str, Any]) -> list[dict[str, Any]]:
    """The undecided records of the claims (:data:`amasim.studies.CLAIMS`) of ``suite``
    whose methods ran on instance ``name``."""
    rows = inst["tables"][METRICS[suite][0]]
    mine = [c for c in CLAIMS if c.suite == suite]
    records = [claim_record(c, rows, MERGES, setting=name) for c in mine]
    return [r for r in records if r is not None]


def compare(
    suite: str,
    *,
    seeds: int = 5,
    quick: bool = False,
    online: str = "per-batch",
    methods: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Run one suite; returns ``{"suite", "seeds", "quick", "online", "instances": {name:
    {"tables": {metric: {method: summary}}, "methods": {method: protocol, examples,
    extra_gradient_evaluations or na}, "budget", "optimum", "verdicts"}}}``."""
    if suite not in SUITES:
        raise ValueError(f"suite={suite!r} is unknown: use one of {', '.join(SUITES)}")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 2:
        raise ValueError(f"seeds={seeds!r}: at least 2 seeds are needed for a standard error")
    if methods is None:  # every registered method but the ablations
        methods = [name for name, method in METHODS.items() if not method.ablation]
    for name in methods:
        check_method(name)
    measured = {}
    for name, instance in instances(suite, quick).items():
        setting = instance.setting
        if online != "per-batch":
            setting = Setting(**{**setting.__dict__, "online": online})
        inst = run_instance(instance, setting, seeds, methods)
        inst["optimum"] = instance.optimum
        measured[name] = inst
    # the suite's family: every claim on every setting, Holm over all of them
    records = [(name, r) for name, inst in measured.items() for r in _verdicts(suite, name, inst)]
    decided = decide([r for _, r in records], family=f"the {suite} suite's claims × settings")
    for inst in measured.values():
        inst["verdicts"] = []
    for (name, _), rec in zip(records, decided):
        measured[name]["verdicts"].append(rec)
    return {
        "suite": suite,
        "seeds": seeds,
        "quick": quick,
        "online": online,
        "instances": measured,
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
        online = ", ".join(name for name, m in METHODS.items() if m.online)
        lines += [f"Online mixers ({online}) in the {result['online']} protocol.", ""]
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
    lines += [
        "",
        "Claims (paired t over the shared seeds, Holm over every claim × setting of the suite):",
        "",
        "| setting | claim | compared with | advantage (95% CI) | p | Holm p | verdict |",
        "|---|---|---|---|---:|---:|---|",
    ]
    for name, inst in instances.items():
        for v in inst["verdicts"]:
            cells = [name, v["claim"], v["worse_method"], *verdict_cells(v)]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_compare(result: dict[str, Any], path: str | Path) -> None:
    """Every method's difference from the exact optimum (mixing) or from stratified mixing
    (the other suites) on the suite's metric, 95% intervals, one panel per setting."""
    title = METRICS[result["suite"]][0]
    panels = {}
    for name, inst in result["instances"].items():
        values = {m: row["values"] for m, row in inst["tables"][title].items()}
        if inst.get("optimum") is not None:
            panels[name] = differences(values, offset=inst["optimum"])
            against = "the exact optimum"
        else:
            panels[name] = differences(values, reference="stratified")
            against = "stratified mixing"
    plot_differences(
        panels,
        path,
        xlabel=f"{title}: difference from {against}",
        title=f"amasim compare --suite {result['suite']} ({result['seeds']} seeds)",
    )


def write_compare(result: dict[str, Any], out: str | Path) -> list[Path]:
    """``results/compare_<suite>.{json,md}`` and ``figures/compare_<suite>.png`` under ``out``."""
    out = Path(out)
    (out / "results").mkdir(parents=True, exist_ok=True)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    stem = f"compare_{result['suite']}"
    json_path = out / "results" / f"{stem}.json"
    md_path = out / "results" / f"{stem}.md"
    png_path = out / "figures" / f"{stem}.png"
    json_path.write_text(json.dumps(result, indent=2))
    md_path.write_text(compare_markdown(result) + "\n")
    plot_compare(result, png_path)
    return [json_path, md_path, png_path]
