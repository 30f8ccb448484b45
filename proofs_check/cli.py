"""``python -m proofs_check``: run every check, print the table, write the report.

    python -m proofs_check [--budget quick|default] [--seed N] [--out DIR]
                           [--figures DIR | --no-figures] [--check NAME ...]

Writes ``DIR/proofs_report.json`` and ``DIR/proofs_report.md`` (default ``results/``)
and ``FIGURES/bounds_<problem>.png`` (default ``figures/``).  Exit status 1 when a
*proven* statement is violated, 0 otherwise (a *measured* claim that fails is reported,
not fatal: it is an empirical claim, see the derivations).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    from proofs_check import BUDGETS, CHECKS

    parser = argparse.ArgumentParser(
        prog="python -m proofs_check",
        description="amasim's convergence theory as executable, falsifiable checks",
    )
    parser.add_argument(
        "--budget",
        choices=tuple(BUDGETS),
        default="default",
        help="quick: tests (< 20 s); default: the report (< 90 s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="draws instances and runs")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("results"),
        help="where proofs_report.{json,md} go (default results/)",
    )
    parser.add_argument(
        "--figures",
        type=Path,
        default=Path("figures"),
        help="where bounds_<problem>.png go (default figures/)",
    )
    parser.add_argument("--no-figures", action="store_true", help="skip the figures")
    parser.add_argument(
        "--check",
        action="append",
        choices=tuple(CHECKS),
        metavar="NAME",
        help=f"run only these checks (repeatable): {', '.join(CHECKS)}",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from proofs_check import run_check
    from proofs_check.report import markdown, text_table, to_json, write_bound_figures

    args = build_parser().parse_args(argv)
    if args.seed < 0:
        raise SystemExit("proofs_check: --seed must be >= 0")
    start = time.perf_counter()
    results = []
    for name in args.check or _all_names():
        result = run_check(name, args.budget, "correct", args.seed)
        print(f"  {name:18s} {result.verdict:32s} ({result.seconds:.1f} s)", file=sys.stderr)
        results.append(result)
    figures = []
    if not args.no_figures:
        figures = write_bound_figures(args.figures, quick=args.budget == "quick", seed=args.seed)
    seconds = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = args.out / "proofs_report.json", args.out / "proofs_report.md"
    json_path.write_text(to_json(results, args.budget, args.seed, seconds))
    md_path.write_text(markdown(results, args.budget, args.seed, seconds))
    print(text_table(results, seconds))
    print("wrote", ", ".join(str(p) for p in [json_path, md_path, *figures]))
    violated = [r.name for r in results if r.kind == "proven" and not r.passed]
    if violated:
        print(f"VIOLATED: {', '.join(violated)}", file=sys.stderr)
        return 1
    return 0


def _all_names() -> list[str]:
    from proofs_check import CHECKS

    return list(CHECKS)


if __name__ == "__main__":
    sys.exit(main())
