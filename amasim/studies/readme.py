"""The README's result tables and verdicts, written from ``results/`` — never by hand.

A generated block of the README sits between two markers::

    <!-- generated:NAME -->
    ...
    <!-- /generated:NAME -->

:func:`convex_blocks` renders every convex block from the files ``amasim reproduce``
writes (``claims.json``, ``compare_<suite>.json``, ``specialist_cost.json``);
:func:`update_readme` replaces the blocks' contents (``amasim reproduce --out .`` does it
after regenerating the files, with the LLM study's block from :mod:`llm.report`), and
``tests/test_readme.py`` checks that the README's blocks are what the files say.

>>> text = "a\\n<!-- generated:x -->\\nold\\n<!-- /generated:x -->\\nb"
>>> print(replace_blocks(text, {"x": "new"}))
a
<!-- generated:x -->
new
<!-- /generated:x -->
b
>>> read_blocks(text)
{'x': 'old'}
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from amasim.stats import verdict_cells
from amasim.studies.seed_claims import seed_claims_markdown

__all__ = [
    "StaleResults",
    "read_blocks",
    "replace_blocks",
    "convex_blocks",
    "update_readme",
]

_BLOCK = re.compile(r"<!-- generated:([\w-]+) -->\n(.*?)<!-- /generated:\1 -->", re.S)


class StaleResults(ValueError):
    """``results/`` predates the statistics the blocks are written from."""


def read_blocks(text: str) -> dict[str, str]:
    """Every generated block of ``text``: name → content."""
    return {m.group(1): m.group(2).removesuffix("\n") for m in _BLOCK.finditer(text)}


def replace_blocks(text: str, blocks: Mapping[str, str]) -> str:
    """``text`` with the content of every block named in ``blocks`` replaced."""

    def swap(m: re.Match) -> str:
        name = m.group(1)
        body = blocks.get(name, m.group(2).removesuffix("\n"))
        return f"<!-- generated:{name} -->\n{body}\n<!-- /generated:{name} -->"

    return _BLOCK.sub(swap, text)


def update_readme(path: str | Path, blocks: Mapping[str, str]) -> list[str]:
    """Rewrite the blocks of the README at ``path``; returns the names rewritten."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    found = [name for name in read_blocks(text) if name in blocks]
    path.write_text(replace_blocks(text, blocks), encoding="utf-8")
    return found


def _load(results: Path, name: str) -> dict[str, Any]:
    return json.loads((results / name).read_text(encoding="utf-8"))


def convex_blocks(results: str | Path) -> dict[str, str]:
    """The convex studies' blocks, from the files in ``results``; :class:`StaleResults`
    when ``claims.json`` predates the paired statistics (rerun ``amasim reproduce``)."""
    results = Path(results)
    claims = _load(results, "claims.json")
    if "statistics" not in claims:
        raise StaleResults(
            f"{results / 'claims.json'} predates the paired statistics (issue 23): run "
            "`amasim reproduce --out .` to regenerate it and the README's blocks"
        )
    compare = {s: _load(results, f"compare_{s}.json") for s in ("mixing", "transfer", "dga")}
    return {
        "claims-one-instance": _one_instance(claims["one_instance"]),
        "claims-over-instances": seed_claims_markdown(claims),
        "specialist-cost": _specialist_cost(_load(results, "specialist_cost.json")),
        "compare-claims": _compare_claims(compare),
    }


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _one_instance(tables: list[dict[str, Any]]) -> str:
    """Methods × families (mean ± std), then every verdict of the three tables."""
    first = tables[0]
    lines = [
        f"Equal example budget of {first['budget']:,} examples, {first['seeds']} seeds shared by "
        "every method, worst-task clipped excess of the averaged iterate (mean ± std):",
        "",
        _row(["method", *(t["problem"] for t in tables)]),
        "|---|" + "---|" * len(tables),
    ]
    for method in first["rows"]:
        lines.append(_row([method, *(_cell(t, method) for t in tables)]))
    lines.append(_row(["exact optimum", *(f"{t['optimum']:.4f}" for t in tables)]))
    tests = len([v for t in tables for v in t["verdicts"]])
    lines += [
        "",
        f"Claims (paired t over the seeds, Holm over the {tests} tests of the three tables):",
        "",
        "| family | claim | compared with | advantage (95% CI) | p | Holm p | verdict |",
        "|---|---|---|---|---:|---:|---|",
    ]
    for t in tables:
        for v in t["verdicts"]:
            lines.append(_row([t["problem"], v["claim"], v["worse_method"], *verdict_cells(v)]))
    facts = {f["claim"]: f["detail"] for t in tables for f in t.get("facts", [])}
    lines += ["", *(f"Fact, not a verdict: {c}: {d}." for c, d in list(facts.items())[:1])]
    return "\n".join(lines)


def _cell(table: dict[str, Any], method: str) -> str:
    row = table["rows"][method]
    return f"{row['mean']:.4f} ± {row['worst_task_std']:.4f}"


def _specialist_cost(study: dict[str, Any]) -> str:
    """AMA-R's and AMA-S's worst-task excess (mean ± 95% CI) per specialist row and family,
    each with its verdict against the exact specialists."""
    families = study["families"]
    verdicts = {(v["label"], v["method"], v["problem"]): v["verdict"] for v in study["verdicts"]}
    titles = [f"{m} {f}" for m in ("AMA-R", "AMA-S") for f in families]
    lines = [
        f"Worst-task excess against the full specialists, mean ± 95% CI over {study['seeds']} "
        'seeds; in brackets the verdict of "at least as good as with the exact specialists" '
        f"(paired by seed, margin {study['margin']:g}, Holm over the {len(verdicts)} rows):",
        "",
        _row(["specialists", "specialist examples", *titles]),
        "|---|---:|" + "---:|" * len(titles),
    ]
    first = next(iter(families.values()))["rows"]
    for label in dict.fromkeys(r["specialists"] for r in first):
        cells, compute = [], None
        for method in ("ama-r", "ama-s"):
            for family, rec in families.items():
                (row,) = [
                    r for r in rec["rows"] if (r["specialists"], r["method"]) == (label, method)
                ]
                compute = row["specialist_examples"]
                verdict = verdicts.get((label, method, family))
                cell = f"{row['worst_task_mean']:.4f} ± {row['ci95']:.4f}"
                cells.append(cell + (f" ({verdict})" if verdict else ""))
        shown = "exact solve" if compute is None else f"{compute:,}"
        lines.append(_row([label, shown, *cells]))
    return "\n".join(lines)


def _compare_claims(results: Mapping[str, dict[str, Any]]) -> str:
    """Every claim of every compare suite, one row per setting."""
    lines = [
        "| suite | setting | claim | compared with | advantage (95% CI) | p | Holm p (suite) | "
        "verdict |",
        "|---|---|---|---|---|---:|---:|---|",
    ]
    for suite, result in results.items():
        for name, inst in result["instances"].items():
            for v in inst["verdicts"]:
                lines.append(_row([suite, name, v["claim"], v["worse_method"], *verdict_cells(v)]))
    return "\n".join(lines)
