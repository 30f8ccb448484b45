"""The ``amasim`` command line.

amasim converge --problem quadratic --methods ama-r,ama-s --steps 100,1000 --seeds 8 --out DIR
amasim claims --out DIR
amasim reproduce [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected positive integers, e.g. 100,1000")
    return values


def _methods(text: str) -> list[str]:
    from amasim.methods import METHODS

    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown method(s) {unknown or text!r}: choose from {', '.join(METHODS)}"
        )
    return names


def _tuning_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lr", type=float, default=3.0, help="θ step: lr/√T (default 3)")
    parser.add_argument("--mixer-step", type=float, default=3.0, help="mixer step: η/√T")
    parser.add_argument("--smoothing", type=float, default=1.0, help="AMA-S c = s·√(k ln k/T)")
    parser.add_argument("--batch-size", type=int, default=32)


def _problem_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", type=_int_list, default=[1000, 100, 100])
    parser.add_argument("--dim", type=int, default=8)
    parser.add_argument("--conflict", type=float, default=1.0)
    parser.add_argument("--noise", type=float, default=None)
    parser.add_argument("--problem-seed", type=int, default=0)


def _problem_kwargs(args: argparse.Namespace) -> dict:
    kwargs = {"sizes": tuple(args.sizes), "dim": args.dim, "conflict": args.conflict}
    kwargs["seed"] = args.problem_seed
    if args.noise is not None:
        kwargs["noise"] = args.noise
    return kwargs


def _tuning(args: argparse.Namespace):
    from amasim.methods import Tuning

    return Tuning(args.lr, args.mixer_step, args.smoothing, args.batch_size)


def build_parser() -> argparse.ArgumentParser:
    from amasim.problems import PROBLEMS

    parser = argparse.ArgumentParser(prog="amasim", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    conv = sub.add_parser("converge", help="gap of the averaged iterate vs T, log-log")
    conv.add_argument("--problem", choices=PROBLEMS, default="quadratic")
    conv.add_argument("--methods", type=_methods, default=_methods("ama-r,ama-s"))
    conv.add_argument("--steps", type=_int_list, default=[100, 1000, 10000])
    conv.add_argument("--seeds", type=int, default=8)
    conv.add_argument("--out", type=Path, required=True)
    _problem_args(conv)
    _tuning_args(conv)

    claims = sub.add_parser("claims", help="the paper's claims at equal example budget")
    claims.add_argument("--problem", choices=PROBLEMS, default="quadratic")
    claims.add_argument("--budget", type=int, default=384_000)
    claims.add_argument("--seeds", type=int, default=8)
    claims.add_argument("--out", type=Path, required=True)
    _problem_args(claims)
    _tuning_args(claims)

    rep = sub.add_parser("reproduce", help="regenerate figures/ and results/ (main job)")
    rep.add_argument("--quick", action="store_true", help="T <= 1e4, 4 seeds (< 2 min)")
    rep.add_argument("--out", type=Path, default=Path("."))

    comp = sub.add_parser("compare", help="every method of the field on the same problems")
    comp.add_argument("--suite", choices=("mixing", "transfer", "dga"), required=True)
    comp.add_argument("--seeds", type=int, default=5)
    comp.add_argument("--quick", action="store_true")
    comp.add_argument(
        "--online",
        choices=("per-batch", "rounds"),
        default="per-batch",
        help="protocol of Group DRO, DoReMi, ODM, AMA-R, AMA-S (default: per-batch scores)",
    )
    comp.add_argument("--out", type=Path, default=Path("."))

    llm = sub.add_parser("llm", help="the PyTorch DPO backend (= python -m llm)")
    llm.add_argument("args", nargs=argparse.REMAINDER, help="passed to python -m llm")

    prove = sub.add_parser(
        "prove", help="the convergence theory as checks (python -m proofs_check)"
    )
    prove.add_argument("args", nargs=argparse.REMAINDER, help="passed to python -m proofs_check")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "prove":
        from proofs_check import main as prove

        return prove(args.args)
    if args.command == "llm":
        from llm.cli import main as llm_main

        return llm_main(args.args)
    if getattr(args, "seeds", 1) < 1:
        raise SystemExit("amasim: --seeds must be >= 1")
    if args.command == "converge":
        from amasim.converge import converge, write_converge

        study = converge(
            args.problem,
            args.methods,
            args.steps,
            seeds=args.seeds,
            problem_kwargs=_problem_kwargs(args),
            tuning=_tuning(args),
            progress=True,
        )
        paths = write_converge(study, args.out)
        for method, rec in study["methods"].items():
            lo, hi = rec["slope_ci"]
            print(f"{method:14s} slope {rec['slope']:+.3f}  95% CI [{lo:+.3f}, {hi:+.3f}]")
        print("wrote", ", ".join(str(p) for p in paths))
    elif args.command == "claims":
        from amasim.claims import claims_markdown, measure_claims

        table = measure_claims(
            args.problem,
            budget=args.budget,
            seeds=args.seeds,
            problem_kwargs=_problem_kwargs(args),
            tuning=_tuning(args),
        )
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "claims.json").write_text(json.dumps(table, indent=2))
        text = claims_markdown([table])
        (args.out / "claims.md").write_text(text)
        print(text)
    elif args.command == "compare":
        from amasim.compare import compare, compare_markdown, write_compare

        result = compare(args.suite, seeds=args.seeds, quick=args.quick, online=args.online)
        paths = write_compare(result, args.out)
        print(compare_markdown(result))
        print("wrote", ", ".join(str(p) for p in paths))
    elif args.command == "reproduce":
        from amasim.reproduce import reproduce

        path = reproduce(args.out, quick=args.quick)
        print(path.read_text())
        print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
