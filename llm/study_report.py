"""The LLM study over instances, written: ``study.json`` (sealed) and ``study.md``.

Every sentence of ``study.md`` is generated from the numbers (:mod:`amasim.stats`): per
pre-stated claim (:data:`llm.report.CLAIMS`) and metric, the count of instances where it
holds, is reversed or is not significant, the mean paired estimate over instances with its
t interval, the sign test and its Holm-adjusted p; then the tuning (each method's grid and
the setting its validation score selected), the budgets (examples each method spends, its
grid included), the theorem-tuned rows, and the one-instance verdicts per instance.

>>> study = {"instances": ["instance-0"], "claims": {"claims": []}, "tuning": {},
...          "budgets": {}, "per_instance": {}, "theory": {}, "config": {}}
>>> print(study_markdown(study).splitlines()[0])
# The LLM study over instances
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llm.report import STUDY_STATISTICS, verdict_table, write_results

__all__ = [
    "study_markdown",
    "write_study",
    "claims_table",
    "methods_table",
    "design_note",
    "readme_study_blocks",
]


def claims_table(claims: list[dict[str, Any]]) -> str:
    """One row per claim × metric over the instances (counts, estimate, sign test)."""
    if not claims:
        return ""
    lines = [
        "| claim | instances | holds | reversed | n.s. | mean estimate [95% CI] | "
        "sign test (for/against) | Holm p | verdict |",
        "|---|---:|---:|---:|---:|---|---|---:|---|",
    ]
    for c in claims:
        counts, sign = c["counts"], c["sign_test"]
        low_high = c["interval"]
        ci = f" [{low_high[0]:+.4f}, {low_high[1]:+.4f}]" if low_high else ""
        lines.append(
            f"| {c['claim']} | {c['instances']} | {counts['holds']} | {counts['reversed']} | "
            f"{counts['n.s.']} | {c['estimate']:+.4f}{ci} | {sign['favour']}/{sign['against']} "
            f"| {c['p_holm']:.3g} | {c['verdict']} |"
        )
    return "\n".join(lines)


def methods_table(summaries: dict[str, dict[str, Any]]) -> str:
    """One row per method over the instances' ``summaries`` (one per instance): the mean
    over instances of each instance's seed mean, and the lowest and highest instance mean —
    worst-task excess and worst-task exact match.

    >>> row = lambda x: {"worst_task_excess": {"mean": x}, "worst_task_exact_match": {"mean": 0.5}}
    >>> summaries = {"i0": {"methods": {"a": row(0.2)}}, "i1": {"methods": {"a": row(0.4)}}}
    >>> print(methods_table(summaries))
    | method | worst-task excess: mean over instances [lowest, highest] | worst-task exact match |
    |---|---|---|
    | a | 0.3000 [0.2000, 0.4000] | 0.50 [0.50, 0.50] |
    """
    if not summaries:
        return ""
    methods = list(next(iter(summaries.values()))["methods"])
    lines = [
        "| method | worst-task excess: mean over instances [lowest, highest] | "
        "worst-task exact match |",
        "|---|---|---|",
    ]
    for method in methods:
        cells = []
        for metric, digits in (("worst_task_excess", 4), ("worst_task_exact_match", 2)):
            means = [s["methods"][method][metric]["mean"] for s in summaries.values()]
            cells.append(
                f"{sum(means) / len(means):.{digits}f} [{min(means):.{digits}f}, "
                f"{max(means):.{digits}f}]"
            )
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _tuning_table(tuning: dict[str, Any]) -> str:
    if not tuning:
        return ""
    lines = ["| method | grid (step, smoothing) → validation worst-task excess | selected |"]
    lines.append("|---|---|---|")
    for method, t in tuning.items():
        cells = ", ".join(
            f"({g['step_size']:g}, {g['smoothing']:g}) → {v:.4f}"
            for g, v in zip(t["grid"], t["validation"], strict=True)
        )
        sel = t["selected"]
        lines.append(f"| {method} | {cells} | ({sel['step_size']:g}, {sel['smoothing']:g}) |")
    return "\n".join(lines)


def _budget_table(budgets: dict[str, Any]) -> str:
    if not budgets:
        return ""
    lines = [
        "| method | examples per run | beside its steps | tuning grid |",
        "|---|---:|---:|---:|",
    ]
    for method, b in budgets.items():
        lines.append(
            f"| {method} | {b['examples']:,} | {b['extra_examples']:,.0f} | "
            f"{b['tuning_examples']:,.0f} |"
        )
    return "\n".join(lines)


def design_note(claims: list[dict[str, Any]]) -> str:
    """What the design can detect at all, from its sizes: Holm's smallest threshold over
    the instance tests, and the smallest p a two-sided sign test over the instances reaches.

    >>> design_note([{"instances": 5, "records": [{}] * 5, "family": {"tests": 2}}] * 2)
    'Power of the design: 10 instance tests, so the strongest one holds only at p ≤ 0.005 (Holm: 0.05/10); a two-sided sign test over 5 instances cannot go below p = 0.0625 (2/2^5), so it cannot be significant even before Holm over the 2 claims.'
    """  # noqa: E501
    if not claims:
        return ""
    tests = sum(len(c.get("records", [])) for c in claims)
    n = max(c["instances"] for c in claims)
    floor = 2.0 ** (1 - n)
    family = claims[0]["family"]["tests"]
    text = (
        f"Power of the design: {tests} instance tests, so the strongest one holds only at "
        f"p ≤ {0.05 / tests:.2g} (Holm: 0.05/{tests}); a two-sided sign test over {n} "
        f"instances cannot go below p = {floor:.3g} (2/2^{n})"
    )
    if floor * family > 0.05 or floor > 0.05:
        reach = "even before" if floor > 0.05 else "after"
        return text + f", so it cannot be significant {reach} Holm over the {family} claims."
    return text + "."


def study_markdown(study: dict[str, Any]) -> str:
    """``study.md`` (module docstring)."""
    claims = study["claims"].get("claims", [])
    text = "# The LLM study over instances\n\n"
    text += (
        f"{len(study['instances'])} instances ({', '.join(study['instances'])}), each its own "
        "data, reference and specialists; every method at its tuned setting.  "
        f"{STUDY_STATISTICS[0].upper()}{STUDY_STATISTICS[1:]}.\n\n"
    )
    for kind, title in (("per_instance", "tuned"), ("theory", "theorem-tuned")):
        table = methods_table(study.get(kind) or {})
        if table:
            text += f"## Methods over instances ({title})\n\n{table}\n\n"
    table = claims_table(claims)
    if table:
        text += f"## Claims over instances\n\n{design_note(claims)}\n\n{table}\n\n"
        text += "".join(f"- {c['sentence']}\n" for c in claims) + "\n"
    for title, body in (
        ("Tuning (the tuning instance's validation split)", _tuning_table(study["tuning"])),
        ("Budgets (examples = one loss and gradient each)", _budget_table(study["budgets"])),
    ):
        if body:
            text += f"## {title}\n\n{body}\n\n"
    for kind, title in (("per_instance", "tuned"), ("theory", "theorem-tuned")):
        for name, summary in (study.get(kind) or {}).items():
            body = verdict_table(summary)
            if body:
                text += f"## {name}: one-instance verdicts ({title})\n\n{body}\n\n"
    return text


def write_study(study: dict[str, Any], out: str | Path) -> list[Path]:
    """``out/study.json`` (checksummed, :func:`llm.report.write_results`) and
    ``out/study.md``; their paths."""
    from llm.integrity import write_text_atomic

    out = Path(out)
    write_results(out / "study.json", study)
    write_text_atomic(out / "study.md", study_markdown(study), kind="report")
    return [out / "study.json", out / "study.md"]


def readme_study_blocks(results_dir: str | Path) -> dict[str, str]:
    """The README's block of the claims over instances (``llm-study``), rendered from
    ``results_dir/llm_study.json``; empty when the file is absent."""
    from llm.report import read_results

    path = Path(results_dir) / "llm_study.json"
    if not path.is_file():
        return {}
    study = read_results(path)
    claims = study["claims"]["claims"]
    sentences = "\n".join(f"- {c['sentence']}" for c in claims)
    head = (
        f"{len(study['instances'])} instances, each its own data, reference and specialists; "
        "every method at the setting its validation score selected.  "
        f"{STUDY_STATISTICS[0].upper()}{STUDY_STATISTICS[1:]}.  {design_note(claims)}"
    )
    methods = methods_table(study["per_instance"])
    theory = methods_table(study.get("theory") or {})
    tables = f"Every method at its selected setting:\n\n{methods}\n\n"
    if theory:
        tables += f'The theorem-tuned rows (`[mix] tuning = "theory"`):\n\n{theory}\n\n'
    return {"llm-study": f"{head}\n\n{tables}{claims_table(claims)}\n\n{sentences}"}
