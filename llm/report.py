"""The pipeline's results: ``results.json`` (checksummed), the summary over seeds with 95%
confidence intervals, the verdicts against the seed claims, the markdown report with the
data audit, and plots (weights, per-task excess loss, differences from stratified).

``results.json`` is written atomically with a ``sha256`` field over the rest of the record
(canonical JSON); :func:`read_results` verifies it, so a truncated or edited file is named
instead of read.  No table prints a figure computed from a non-finite value, and an
interval is printed only over two or more seeds.

Statistics (:func:`summarize`, all from :mod:`amasim.stats`): per method and metric the
mean over seeds with a 95% Student-t interval (mean ± t₀.₉₇₅,ₙ₋₁ · s/√n).  Every method
trains on the same seeds (the ``seed`` of each run), so a claim "A beats B" is a *paired*
t-test over the seeds both ran (df = n − 1), on the worst-task excess and on the worst-task
exact match; the family is every claim × metric of the report, Holm-corrected, and a claim
*holds* / is *reversed* when its Holm-adjusted p ≤ 0.05 in the claimed / the opposite
direction.  "A is at least as good as B" is tested against a margin stated in advance
(:data:`amasim.stats.LLM_EXCESS_MARGIN`, :data:`amasim.stats.LLM_EXACT_MATCH_MARGIN`).
Evaluation noise enters when the runs carry per-item values — ``run["tasks"][task]
["items"]`` = ``{"clipped": [one value per held-out pair], "exact_match": [one 0/1 per
held-out prompt]}``, the same items in the same order in every run —: the variance of the
paired estimate then adds the item bootstrap's (:func:`amasim.stats.item_bootstrap_variance`);
without them the intervals are over seeds only, and the report says so.  Verdicts and
their sentences are computed, never written.  :func:`claims_over_instances` counts the
claims over several instances (data sets) of the study.

>>> results = {"tasks": ["a"], "sizes": [3], "runs": {"m": [
...     {"steps": 5, "worst_task_excess": 0.25, "tasks": {"a": {"clipped": 0.25, "exact_match": 1.0}}}]}}
>>> print(summary_table(results).splitlines()[0])
Held-out metrics of one seed (no interval); tasks a (train sizes 3).
"""  # noqa: E501

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from amasim.stats import (
    LLM_EXACT_MATCH_MARGIN,
    LLM_EXCESS_MARGIN,
    Claim,
    decide,
    interval,
    item_bootstrap_variance,
    over_instances,
    paired_test,
    record,
    verdict_cells,
)
from llm.integrity import IntegrityError, write_text_atomic

__all__ = [
    "Claim",
    "CLAIMS",
    "VerdictMetric",
    "VERDICT_METRICS",
    "claim_records",
    "summarize",
    "claims_over_instances",
    "readme_blocks",
    "write_report",
    "summary_table",
    "task_table",
    "verdict_table",
    "tuning_table",
    "data_table",
    "weight_swing",
    "weight_swing_table",
    "difference_panels",
    "plot_differences",
    "write_results",
    "read_results",
]

#: the difference figure and the tables compare every method with this one
REFERENCE_METHOD = "stratified"


#: the seed papers' claims the LLM study can test (AutoMixAlign; GR-DPO as the rival), stated
#: in advance: ``better`` beats ``worse`` (``"best-merge"``: the merge with the lowest mean
#: worst-task excess in the run); ``noninferior``: at least as good, up to the metric's margin

CLAIMS: tuple[Claim, ...] = (
    Claim("AMA-R beats uniform mixing", "ama-r", "uniform"),
    Claim("AMA-S beats uniform mixing", "ama-s", "uniform"),
    Claim("AMA-R beats stratified mixing", "ama-r", "stratified"),
    Claim("AMA-S beats stratified mixing", "ama-s", "stratified"),
    Claim("AMA-R beats the best merge", "ama-r", "best-merge"),
    Claim("AMA-S beats the best merge", "ama-s", "best-merge"),
    Claim("AMA-S is at least as good as AMA-R", "ama-s", "ama-r", True),
    Claim("AMA-R beats GR-DPO (the rival)", "ama-r", "gr-dpo"),
    Claim("AMA-S beats GR-DPO (the rival)", "ama-s", "gr-dpo"),
    Claim("AMA-S-IX is at least as good as AMA-S", "ama-s-ix", "ama-s", True),
    Claim("AMA-S-IX is at least as good as AMA-R", "ama-s-ix", "ama-r", True),
)


class VerdictMetric(NamedTuple):
    """A metric the claims are tested on: its key in :func:`summarize`'s rows, its title,
    its direction, its non-inferiority margin, how a run's tasks fold into it (``reduce``
    over the per-task values) and the per-task value (and per-item values) it folds."""

    key: str
    title: str
    lower_is_better: bool
    margin: float
    reduce: str
    task_metric: str


#: the metrics the verdicts are computed on
VERDICT_METRICS = (
    VerdictMetric(
        "worst_task_excess", "worst-task excess", True, LLM_EXCESS_MARGIN, "max", "clipped"
    ),
    VerdictMetric(
        "worst_task_exact_match",
        "worst-task exact match",
        False,
        LLM_EXACT_MATCH_MARGIN,
        "min",
        "exact_match",
    ),
)
#: the family of a report's tests, as the records name it
FAMILY = "every claim × verdict metric of the run"


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


# --------------------------------------------------------------------------- statistics
def _per_run(run: dict[str, Any], names: Sequence[str]) -> dict[str, float]:
    """A run's summary metrics: worst/mean-task excess and exact match, over its tasks."""
    excess = [run["tasks"][t]["clipped"] for t in names]
    out = {
        "worst_task_excess": float(run["worst_task_excess"]),
        "mean_task_excess": float(np.mean(excess)),
    }
    if all("exact_match" in run["tasks"][t] for t in names):  # [eval] generate = 0: none
        match = [run["tasks"][t]["exact_match"] for t in names]
        out["worst_task_exact_match"] = float(np.min(match))
        out["mean_exact_match"] = float(np.mean(match))
    return out


def _best_merge(methods: dict[str, Any]) -> str | None:
    from amasim.registry import MERGES

    merges = [m for m in methods if m in MERGES]
    if not merges:
        return None
    return min(merges, key=lambda m: methods[m]["worst_task_excess"]["mean"])


def _methods(results: dict[str, Any]) -> dict[str, Any]:
    """Per method the summary and per-task metrics, mean ± 95% t-interval over seeds."""
    names = results["tasks"]
    methods: dict[str, Any] = {}
    for method, runs in results["runs"].items():
        rows = [_per_run(r, names) for r in runs]
        entry: dict[str, Any] = {"seeds": [r.get("seed") for r in runs], "steps": runs[0]["steps"]}
        for key in rows[0]:
            entry[key] = interval([row[key] for row in rows], f"{method}: {key}")
        entry["tasks"] = {
            task: {
                metric: interval([r["tasks"][task][metric] for r in runs], f"{method}: {task}")
                for metric in ("clipped", "accuracy", "exact_match")
                if all(metric in r["tasks"][task] for r in runs)
            }
            for task in names
        }
        if runs[0].get("tuned"):
            entry["tuned"] = runs[0]["tuned"]
        methods[method] = entry
    return methods


def _by_seed(runs: Sequence[dict[str, Any]]) -> dict[Any, dict[str, Any]]:
    """A method's runs by their ``seed`` (by position where a run names none)."""
    return {run.get("seed", i): run for i, run in enumerate(runs)}


def _item_variance(
    pairs: Sequence[tuple[dict, dict]], names: Sequence[str], metric: VerdictMetric
) -> float | None:
    """The item bootstrap's variance of the paired estimate, when every run of the pairs
    carries per-item values of ``metric`` for every task (else ``None``)."""
    item = metric.task_metric

    def items(run: dict[str, Any], task: str) -> Any:
        return (run["tasks"][task].get("items") or {}).get(item)

    if any(items(run, t) is None for pair in pairs for run in pair for t in names):
        return None
    per_task = [
        [np.array([items(pair[side], t) for pair in pairs], dtype=float) for t in names]
        for side in (0, 1)
    ]
    return item_bootstrap_variance(
        per_task[0], per_task[1], reduce=metric.reduce, lower_is_better=metric.lower_is_better
    )


def claim_records(
    results: dict[str, Any], claims: Sequence[Claim] = CLAIMS, best: str | None = None
) -> list[dict[str, Any]]:
    """The undecided :func:`amasim.stats.record` of every claim × verdict metric whose
    methods ran: paired over the seeds both methods ran, the item bootstrap's variance
    added when the runs carry per-item values."""
    names, runs = results["tasks"], results["runs"]
    out = []
    for claim in claims:
        worse = best if claim.worse == "best-merge" else claim.worse
        if claim.better not in runs or worse is None or worse not in runs:
            continue
        a, b = _by_seed(runs[claim.better]), _by_seed(runs[worse])
        pairs = [(a[s], b[s]) for s in a if s in b]
        for metric in VERDICT_METRICS:
            values = [(_per_run(x, names), _per_run(y, names)) for x, y in pairs]
            if not values or any(metric.key not in v for pair in values for v in pair):
                continue  # no exact match without greedy decoding ([eval] generate = 0)
            extra = _item_variance(pairs, names, metric)
            test = paired_test(
                [x[metric.key] for x, _ in values],
                [y[metric.key] for _, y in values],
                lower_is_better=metric.lower_is_better,
                margin=metric.margin if claim.noninferior else None,
                extra_variance=extra or 0.0,
            )
            out.append(
                record(
                    claim,
                    test,
                    statement=claim.statement,
                    better=claim.better,
                    worse_method=worse,
                    metric=metric.title,
                    paired_seeds=[s for s in a if s in b],
                    evaluation_noise="item bootstrap" if extra is not None else "not included",
                )
            )
    return out


_PAIRED_TEST = (
    "paired t over the seeds both methods ran (df = n − 1), two-sided; 'at least as good' "
    "against the metric's margin (H0: advantage = −margin)"
)
_BOOTSTRAP = "the item bootstrap's variance added when runs carry per-item values"

#: how one run's verdicts are drawn (:func:`summarize`)
STATISTICS = f"{_PAIRED_TEST}; Holm over every claim × verdict metric of the run; {_BOOTSTRAP}"

#: how a study's verdicts over instances are drawn (:func:`claims_over_instances`)
STUDY_STATISTICS = (
    f"per instance: {_PAIRED_TEST}; {_BOOTSTRAP}; Holm over every claim × verdict metric × "
    "instance; per claim and metric: counts over instances and a two-sided sign test over the "
    "instance estimates, Holm over the claim × metric rows; estimate = mean instance "
    "advantage, interval = Student t over instances (df = instances − 1)"
)


def summarize(results: dict[str, Any], claims: Sequence[Claim] = CLAIMS) -> dict[str, Any]:
    """Per method the summary metrics and per-task metrics (mean, std, 95% t-interval over
    seeds), and the decided verdict of every claim × verdict metric whose methods ran."""
    methods = _methods(results)
    best = _best_merge(methods)
    return {
        "interval": "95% Student-t over seeds",
        "rule": STATISTICS,
        "margins": {m.title: m.margin for m in VERDICT_METRICS},
        "methods": methods,
        "best_merge": best,
        "verdicts": decide(claim_records(results, claims, best), family=FAMILY),
    }


def claims_over_instances(
    instances: dict[str, dict[str, Any]], claims: Sequence[Claim] = CLAIMS
) -> dict[str, Any]:
    """Every claim × verdict metric over several instances of the study (name → results
    record, each a different data set, reference and specialists): the instance tests with
    Holm over all of them, then per claim and metric the counts, the sign test (Holm over
    the claims) and the verdict (:func:`amasim.stats.over_instances`)."""
    records = []
    for name, results in instances.items():
        best = _best_merge(_methods(results))
        records += [r | {"instance": name} for r in claim_records(results, claims, best)]
    decided = decide(records, family="every claim × verdict metric × instance")
    grouped: dict[str, list[dict[str, Any]]] = {}
    stated: dict[str, Claim] = {}
    for rec in decided:
        key = f"{rec['statement']} ({rec['metric']})"
        grouped.setdefault(key, []).append(rec)
        claim = next(c for c in claims if c.statement == rec["statement"])
        stated[key] = claim._replace(statement=key)
    summaries = over_instances(list(stated.values()), grouped)
    for summary in summaries:
        summary["records"] = grouped[summary["claim"]]
    return {"instances": list(instances), "rule": STUDY_STATISTICS, "claims": summaries}


def readme_blocks(results_dir: str | Path, name: str = "small_cpu") -> dict[str, str]:
    """The README's LLM verdict block (``llm-verdicts``), recomputed by :func:`summarize`
    from the runs of ``results_dir/llm_<name>.json``; empty when the file is absent."""
    path = Path(results_dir) / f"llm_{name}.json"
    if not path.is_file():
        return {}
    summary = summarize(read_results(path))
    sentences = "\n".join(f"- {v['sentence']}" for v in summary["verdicts"])
    return {"llm-verdicts": f"{verdict_note(summary)}\n\n{verdict_table(summary)}\n\n{sentences}"}


# ------------------------------------------------------------------------------ tables
def _cell(stat: dict[str, Any], digits: int = 4) -> str:
    if stat["ci95"] is None:
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {stat['ci95']:.{digits}f}"


def summary_table(results: dict[str, Any]) -> str:
    """Per method: worst-task and mean-task excess, worst-task and mean exact match, mean ±
    95% interval over seeds (the value alone for one seed)."""
    names = results["tasks"]
    summary = results.get("summary") or summarize(results)
    seeds = len(next(iter(results["runs"].values())))
    spread = (
        f", mean ± 95% CI (Student t) over {seeds} seeds"
        if seeds > 1
        else " of one seed (no interval)"
    )
    lines = [
        f"Held-out metrics{spread}; tasks {', '.join(names)} "
        f"(train sizes {', '.join(map(str, results['sizes']))}).",
        "",
        "| method | steps | worst-task excess | mean-task excess | worst-task exact match "
        "| mean exact match |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for method, m in summary["methods"].items():
        cells = [method, str(m["steps"])]
        cells += [_cell(m[k]) for k in ("worst_task_excess", "mean_task_excess")]
        cells += [
            _cell(m[k], 2) if k in m else "–"
            for k in ("worst_task_exact_match", "mean_exact_match")
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def task_table(results: dict[str, Any]) -> str:
    """Per method and task: clipped excess, reward accuracy, exact match (mean ± 95% CI)."""
    names = results["tasks"]
    summary = results.get("summary") or summarize(results)
    header = " | ".join(f"{t}: excess | {t}: reward acc. | {t}: exact match" for t in names)
    lines = [f"| method | {header} |", "|---|" + "---:|" * (3 * len(names))]
    for method, m in summary["methods"].items():
        cells = [method]
        for task in names:
            row = m["tasks"][task]
            for metric, digits in (("clipped", 4), ("accuracy", 2), ("exact_match", 2)):
                cells.append(_cell(row[metric], digits) if metric in row else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict_table(summary: dict[str, Any]) -> str:
    """One row per claim and metric: the paired advantage of the claimed better method with
    its 95% interval, p, Holm p and the verdict."""
    if not summary["verdicts"]:
        return ""
    lines = [
        "| claim | compared with | metric | advantage (95% CI) | p | Holm p | verdict |",
        "|---|---|---|---|---:|---:|---|",
    ]
    for v in summary["verdicts"]:
        cells = [v["statement"], v["worse_method"], v["metric"], *verdict_cells(v)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict_note(summary: dict[str, Any]) -> str:
    """The paragraph above the verdict table: how the verdicts were drawn, from the summary."""
    verdicts = summary["verdicts"]
    seeds = sorted({len(v["paired_seeds"]) for v in verdicts})
    noise = {v["evaluation_noise"] for v in verdicts}
    margins = ", ".join(f"{m:g} {title}" for title, m in summary["margins"].items())
    items = (
        "Evaluation noise is included (a bootstrap over the held-out items, added to the "
        "seeds' variance)."
        if noise == {"item bootstrap"}
        else "Evaluation noise is not included: the runs carry no per-item values, so the "
        "intervals cover the seeds only (the same held-out items for every method)."
    )
    return (
        f"Advantage: how much better the claimed winner is (lower excess, higher exact match), "
        f"paired by seed over {'/'.join(map(str, seeds))} seeds, with its 95% Student-t "
        f"interval. *holds* / *reversed*: significant in the claimed / the opposite direction "
        f"after Holm over the {len(verdicts)} tests of this report (α = 0.05); *n.s.* "
        f'otherwise. "At least as good" is tested against a margin stated in advance '
        f"({margins}). {items} Best merge: {summary['best_merge']}."
    )


def tuning_table(summary: dict[str, Any], *, replaced: dict[str, str] | None = None) -> str:
    """The mixer step sizes each trained method ran with (``tuned``), and its horizon;
    ``replaced`` names the rule of the methods whose ``[mix]`` the study replaced."""
    from amasim.registry import METHODS

    rows = [(m, e) for m, e in summary["methods"].items() if e.get("tuned")]
    if not rows:
        return ""
    lines = ["| method | steps T | rule | step size | smoothing |", "|---|---:|---|---:|---:|"]
    for method, e in rows:
        tuned = e["tuned"]
        uses = METHODS[method].tuned if method in METHODS else ("step_size", "smoothing")
        cells = [
            f"{tuned[name]:.4g}" if name in uses else "– (none)"
            for name in ("step_size", "smoothing")
        ]
        rule = (replaced or {}).get(method, tuned.get("tuning", ""))
        lines.append(f"| {method} | {e['steps']} | {rule} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def weight_swing(history: dict[str, list]) -> dict[str, float]:
    """How much a run's task weights move: ``step`` = mean over steps of Σ_i (α_{t,i} −
    α_{t−1,i})² (the per-step variance of the weights a resampling mixer's noise drives),
    ``over_time`` = mean over tasks of the variance of α_{t,i} over the steps.

    >>> weight_swing({"weights": [[0.5, 0.5], [0.7, 0.3], [0.5, 0.5]]})["step"]
    0.08
    """
    w = np.asarray(history["weights"], dtype=np.float64)
    if len(w) < 2:
        return {"step": 0.0, "over_time": 0.0}
    step = float(np.mean(np.sum(np.diff(w, axis=0) ** 2, axis=1)))
    return {"step": round(step, 12), "over_time": float(np.mean(np.var(w, axis=0)))}


def weight_swing_table(results: dict[str, Any]) -> str:
    """Per trained method, its weight swing (:func:`weight_swing`) averaged over seeds."""
    lines = []
    for method, runs in results["runs"].items():
        swings = [weight_swing(r["history"]) for r in runs if r.get("history")]
        if swings:
            step = np.mean([s["step"] for s in swings])
            spread = np.mean([s["over_time"] for s in swings])
            lines.append(f"| {method} | {step:.3g} | {spread:.3g} |")
    if not lines:
        return ""
    head = "| method | mean Σ_i (Δα_i)² per step | mean variance of α_i over steps |"
    return "\n".join([head, "|---|---:|---:|", *lines])


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


def _setup(results: dict[str, Any]) -> str:
    """One paragraph: model size, suite, seeds, budget, tuning, time."""
    cfg = results.get("config") or {}
    parts = []
    if results.get("parameters"):
        parts.append(f"{results['parameters'] / 1e6:.2f}M-parameter model")
    data = cfg.get("data") or {}
    if data and not data.get("manifest"):
        parts.append(f"built-in suite {data.get('suite', 'classic')!r} (llm.synth)")
    if results.get("seeds"):
        parts.append(f"seeds {results['seeds']}")
    mix = cfg.get("mix") or {}
    if mix:
        parts.append(f"{mix['examples']:,} training pairs per generalist (equal budget)")
        if tuning_rule(results) in ("grid", "selected"):
            setting = "a grid" if tuning_rule(results) == "grid" else "its selected"
            parts.append(f"each tuned method at {setting} setting (the tuning table)")
        else:
            parts.append(
                f"tuning {mix.get('tuning', 'fixed')!r} (step_size {mix['step_size']}, "
                f"smoothing {mix['smoothing']})"
            )
    if results.get("seconds"):
        parts.append(f"{results['seconds'] / 60:.1f} min wall time")
    return "; ".join(parts) + "." if parts else ""


def tuning_rule(results: dict[str, Any]) -> str:
    """How the runs of ``results`` were tuned: the config's ``[mix] tuning``, or — where the
    study replaced ``[mix]`` for the methods ``results["mixes"]`` names — ``"grid"`` (a
    tuning run, scored on validation) or ``"selected"`` (an evaluation instance)."""
    if results.get("mixes"):
        return "grid" if results.get("held_out") == "valid" else "selected"
    return ((results.get("config") or {}).get("mix") or {}).get("tuning", "fixed")


TUNING_NOTE = {
    "grid": (
        "A tuning run of the study: each method that tunes its mixer at one setting of the "
        "grid every such method gets (llm.instances.grid), scored on the validation split."
    ),
    "selected": (
        "Each method that tunes its mixer runs at the setting the study selected for it: the "
        "same grid of settings for every such method (llm.instances.grid), each trained on a "
        "tuning instance of its own and scored on its validation split; the lowest mean "
        "validation worst-task excess wins.  The methods no grid tunes run as [mix] says."
    ),
    "theory": (
        "Every method a theorem covers takes that theorem's step sizes at its own horizon T "
        "and the start model's bound B̂ on the clipped excess (llm.preflight.mix_policy, "
        "amasim.registry.Theory, llm.stages.generalists.start_constants): AMA-R and Group "
        "DRO Theorem R, AMA-S Theorem S, AMA-S-IX Theorem IX; the others the 1/√T heuristic "
        "η = step_size/√T, c = min(1, smoothing·√(k ln k / T)).  No grid is searched."
    ),
    "fixed": (
        "Every method's mixer step size is the config's [mix] step_size (AMA-S's exploration "
        "its smoothing), whatever the horizon: one fixed value for all, no grid searched."
    ),
}


def write_report(results: dict[str, Any], out: str | Path) -> Path:
    """Write ``results.md`` and ``weights.png`` / ``excess.png`` (seed of the first run),
    and ``differences.png`` (each method minus stratified, 95% intervals) with ≥ 2 seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    path = out / "results.md"
    summary = results.get("summary") or summarize(results)
    results = {**results, "summary": summary}
    text = "# llm pipeline results\n\n"
    setup = _setup(results)
    if setup:
        text += f"{setup}\n\n"
    text += f"{summary_table(results)}\n\n## Per task\n\n"
    text += "Held-out clipped excess over the task's specialist, reward accuracy (share of "
    text += "pairs with a positive implicit-reward margin) and greedy exact match.\n\n"
    text += f"{task_table(results)}\n"
    spec = results.get("specialist_exact_match") or {}
    if spec:
        text += "\n## Specialists\n\nEach task's specialist, greedy exact match on its own "
        text += "held-out prompts.\n\n| task | exact match |\n|---|---:|\n"
        text += "".join(f"| {t} | {v:.2f} |\n" for t, v in spec.items())
    table = verdict_table(summary)
    if table:
        sentences = "".join(f"- {v['sentence']}\n" for v in summary["verdicts"])
        text += (
            f"\n## Verdicts against the seed claims\n\n{verdict_note(summary)}\n\n{table}\n\n"
            f"{sentences}"
        )
    rule = tuning_rule(results)
    tuning = tuning_table(summary, replaced={m: rule for m in results.get("mixes", [])})
    if tuning:
        text += f"\n## Tuning protocol\n\n{TUNING_NOTE[rule]}\n\n{tuning}\n"
    swing = weight_swing_table(results)
    if swing:
        text += "\n## Task weights over training\n\nHow much each method's weights move per "
        text += f"step and over the run (mean over seeds).\n\n{swing}\n"
    audit = data_table(results)
    if audit:
        text += f"\n## Data\n\nPer task and split, as read and tokenised.\n\n{audit}\n"
    write_text_atomic(path, text, kind="report")
    # a figure this run cannot draw is removed, so no earlier run's figure stands for it
    if plot_differences(results, out / "differences.png") is None:  # one seed, no stratified
        (out / "differences.png").unlink(missing_ok=True)
    names = results["tasks"]
    methods = [m for m, runs in results["runs"].items() if runs[0].get("history")]
    if not methods:  # only merges: nothing was trained, nothing to plot
        for name in ("weights.png", "excess.png"):
            (out / name).unlink(missing_ok=True)
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


def difference_panels(
    results: dict[str, Any], reference: str = REFERENCE_METHOD
) -> dict[str, dict[str, tuple[float, float]]]:
    """Panel → method → (mean difference from ``reference``, 95% half-width): worst-task
    and mean-task excess, and the exact-match error 1 − exact match (worst task and mean),
    so that lower is better in every panel.  Empty without ``reference`` or with one seed."""
    from amasim.studies.plots import differences

    names = results["tasks"]
    runs = results["runs"]
    if reference not in runs or len(runs[reference]) < 2:
        return {}
    per_seed = {
        m: {seed: _per_run(r, names) for seed, r in _by_seed(rs).items()} for m, rs in runs.items()
    }
    panels = {}
    for key, title, flip in (
        ("worst_task_excess", "worst-task excess", False),
        ("mean_task_excess", "mean-task excess", False),
        ("worst_task_exact_match", "worst-task exact-match error (1 − EM)", True),
        ("mean_exact_match", "mean exact-match error (1 − EM)", True),
    ):
        if not all(key in r for rows in per_seed.values() for r in rows.values()):
            continue  # no exact match without greedy decoding ([eval] generate = 0)
        base, panel = per_seed[reference], {}
        for m, rows in per_seed.items():
            seeds = [s for s in base if s in rows]  # paired: the seeds both ran
            if m == reference or not seeds:
                continue
            values = {
                name: [(1 - src[s][key]) if flip else src[s][key] for s in seeds]
                for name, src in ((m, rows), (reference, base))
            }
            panel[m] = differences(values, reference=reference)[m]
        panels[title] = panel
    return panels


def plot_differences(
    results: dict[str, Any], path: str | Path, reference: str = REFERENCE_METHOD
) -> Path | None:
    """Each method's difference from ``reference`` (stratified) with its 95% interval, per
    metric, methods sorted, the zero line marked (:func:`amasim.studies.plots.plot_differences`);
    ``None`` (nothing drawn) without a reference run or with one seed."""
    from amasim.studies.plots import plot_differences as draw

    panels = difference_panels(results, reference)
    if not panels:
        return None
    seeds = len(results["runs"][reference])
    draw(
        panels,
        path,
        xlabel=f"method − {reference} (lower: better; 95% paired t, {seeds} seeds)",
        title=f"LLM study: difference from {reference} sampling",
        columns=2,
    )
    return Path(path)
