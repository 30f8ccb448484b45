"""The ``amasim`` command line — the one place that reaches ``llm`` and ``proofs_check``.

amasim methods                                          the registry: every method by name
amasim converge --problem quadratic --methods ama-r,ama-s --steps 100,1000 --out DIR
amasim claims --out DIR
amasim compare --suite mixing [--methods a,b] [--out DIR]
amasim reproduce [--quick] [--llm] [--out DIR]          the main job (default: a fresh runs/ folder)
amasim prove [proofs_check options]                     = python -m proofs_check
amasim llm [llm options]                                = python -m llm

Every failure ends in one line of its own, ``error: <what>, <where>. Fix: <how>``, and an
exit status: 2 for bad input (arguments, paths, a folder another run holds, a failed
write), 1 for a run that diverged or an internal error, 130 when interrupted; pass
``--debug`` for the traceback.  The output folder is locked first (:class:`llm.lock.RunLock`:
one writer per folder, ``llm run`` included), then every argument is checked before any
work.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
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
    from amasim.registry import METHODS

    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown method(s) {unknown or text!r}: choose from {', '.join(METHODS)}"
        )
    return names


def _tuning_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lr", type=float, default=3.0, help="θ step: lr/√T (default 3)")
    parser.add_argument(
        "--mixer-step",
        type=float,
        default=3.0,
        help="mixer step η/√T of the methods no theorem covers (the rest: their theorem's)",
    )
    parser.add_argument(
        "--smoothing",
        type=float,
        default=1.0,
        help="exploration c = s·√(k ln k/T) of the methods no theorem covers",
    )
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
    from amasim.studies import Tuning

    return Tuning(args.lr, args.mixer_step, args.smoothing, args.batch_size)


def check_out(path: Path, flag: str = "--out") -> Path:
    """``path`` as an output folder that exists (created) and can be written, else an error
    naming it — checked before any work, so nothing is computed for nowhere."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path} is a file, not a folder. Fix: pass a folder to write into")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".amasim-write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise ValueError(
            f"{flag} {path} cannot be written ({err.strerror or err}). Fix: pass a folder you "
            "can write to"
        ) from None
    return path


def fresh_folder(kind: str, root: Path = Path("runs")) -> Path:
    """A new folder ``runs/<kind>-<date>-<time>`` (never an existing one)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path, n = root / f"{kind}-{stamp}", 1
    while path.exists():
        path, n = root / f"{kind}-{stamp}-{n}", n + 1
    return path


def build_parser() -> argparse.ArgumentParser:
    from amasim.problems import PROBLEMS

    parser = argparse.ArgumentParser(prog="amasim", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("methods", help="every registered method: signal, needs, description")

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

    rep = sub.add_parser("reproduce", help="regenerate every figure and table (main job)")
    rep.add_argument("--quick", action="store_true", help="T <= 1e4, 4 seeds (< 2 min)")
    rep.add_argument(
        "--llm",
        action="store_true",
        help="also the LLM study (llm/configs/small-cpu.toml and its specialist cost, ~35 min)",
    )
    rep.add_argument(
        "--out",
        type=Path,
        default=None,
        help="default: a fresh folder under runs/; '.' rewrites"
        " the committed results/ and figures/",
    )

    comp = sub.add_parser("compare", help="every method of the field on the same problems")
    comp.add_argument("--suite", choices=("mixing", "transfer", "dga"), required=True)
    comp.add_argument("--methods", type=_methods, default=None, help="default: all but ablations")
    comp.add_argument("--seeds", type=int, default=5)
    comp.add_argument("--quick", action="store_true")
    comp.add_argument(
        "--online",
        choices=("per-batch", "rounds"),
        default="per-batch",
        help="protocol of the adaptive batch mixers (default: per-batch scores)",
    )
    comp.add_argument("--out", type=Path, default=None, help="default: a fresh runs/ folder")

    sub.add_parser("llm", help="the PyTorch DPO backend (= python -m llm ...)", add_help=False)
    sub.add_parser("prove", help="the theory as checks (= python -m proofs_check)", add_help=False)
    return parser


#: exit status of bad input (argparse uses 2 as well); of a diverged run or an internal error
BAD_INPUT, FAILED, INTERRUPTED = 2, 1, 130


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "prove":  # its own options, passed on whole
        from proofs_check import main as prove

        return prove(argv[1:])
    if argv and argv[0] == "llm":
        from llm.cli import main as llm_main

        return llm_main(argv[1:])
    from amasim.console import error_line, ignore_file_size_signal

    ignore_file_size_signal()
    debug = "--debug" in argv
    args = build_parser().parse_args([a for a in argv if a != "--debug"])
    try:
        return _locked(args)
    except KeyboardInterrupt:
        if debug:
            raise
        error_line("interrupted. Fix: run the same command again")
        return INTERRUPTED
    except Exception as err:
        if debug:
            raise
        status, message = _described(err, args.command)
        error_line(message)
        return status


def _locked(args: argparse.Namespace) -> int:
    """:func:`_run`, holding the output folder of a command that writes one."""
    if getattr(args, "out", None) is None and args.command in ("compare", "reproduce"):
        kind = f"compare-{args.suite}" if args.command == "compare" else "reproduce"
        args.out = fresh_folder(kind)
    if getattr(args, "out", None) is None:
        return _run(args)
    from llm.lock import RunLock

    check_out(args.out)  # named as --out, before the lock creates anything
    with RunLock(args.out, what="--out"):
        return _run(args)


def _described(err: Exception, command: str) -> tuple[int, str]:
    """(exit status, message with its fix) of a failure of ``amasim COMMAND``."""
    from amasim.console import with_fix
    from amasim.driver import TrainingDiverged
    from llm.lock import FolderLocked

    if isinstance(err, TrainingDiverged | FloatingPointError):
        return FAILED, with_fix(str(err), "lower --lr or --mixer-step, then rerun")
    if isinstance(err, ValueError | TypeError | FolderLocked):
        fix = f"correct that argument (amasim {command} --help lists them)"
        return BAD_INPUT, with_fix(str(err), fix)
    if isinstance(err, OSError):
        message = str(err)
        if err.filename is not None:
            message = f"cannot use {err.filename}: {err.strerror}"
        elif err.strerror:
            message = err.strerror
        return BAD_INPUT, with_fix(message, "check that path and the disk, then rerun")
    return FAILED, (
        f"internal error {type(err).__name__}: {err}. Fix: rerun with --debug for the "
        "traceback and report it"
    )


def _check_args(args: argparse.Namespace) -> None:
    """Every argument of the command, before any work."""
    if getattr(args, "out", None) is not None:
        check_out(args.out)
    seeds = getattr(args, "seeds", None)
    if seeds is not None and seeds < 2:
        raise ValueError(
            f"--seeds {seeds}: the reported standard errors and intervals need --seeds >= 2"
        )
    if args.command == "converge":
        from amasim.studies.converge import check_design

        check_design(args.steps, args.seeds)
    if args.command in ("converge", "claims"):
        from amasim.problems import make_problem

        make_problem(args.problem, **{**_problem_kwargs(args), "sizes": (2,) * len(args.sizes)})
        _tuning(args)
        for name, value in (("--lr", args.lr), ("--mixer-step", args.mixer_step)):
            if not value > 0 or value == float("inf"):
                raise ValueError(f"{name} {value}: pass a finite number > 0")
        if not args.smoothing > 0 or args.batch_size < 1:
            raise ValueError("--smoothing must be > 0 and --batch-size >= 1")
    if args.command == "claims":
        from amasim.registry import steps_for_budget
        from amasim.studies.claims import CLAIM_METHODS

        for name in CLAIM_METHODS:
            steps_for_budget(name, args.budget, len(args.sizes), args.batch_size)


def _run(args: argparse.Namespace) -> int:
    _check_args(args)
    if args.command == "methods":
        from amasim.registry import MERGES, METHODS, describe, tuning_of

        for name, method in METHODS.items():
            mixer = describe(name)
            needs = ", ".join(mixer.requires) or "-"
            print(f"{name:20s} {mixer.signal.kind:12s} {needs:40s} {method.description}")
            print(f"{'':20s} tuning: {tuning_of(name)}")
        for name, kind in MERGES.items():
            print(f"{name:20s} {'merge':12s} {'-':40s} amasim.merging.{kind} of the specialists")
    elif args.command == "converge":
        from amasim.studies.converge import converge, write_converge

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
        from amasim.studies.claims import claims_markdown, measure_claims

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
        from amasim.studies.compare import compare, compare_markdown, write_compare

        out = args.out or fresh_folder(f"compare-{args.suite}")
        result = compare(
            args.suite, seeds=args.seeds, quick=args.quick, online=args.online, methods=args.methods
        )
        paths = write_compare(result, out)
        print(compare_markdown(result))
        print("wrote", ", ".join(str(p) for p in paths))
    elif args.command == "reproduce":
        from amasim.studies.reproduce import reproduce
        from proofs_check import main as prove

        out = args.out or fresh_folder("reproduce")
        path = reproduce(out, quick=args.quick, prove=prove)
        print(path.read_text())
        print("wrote", path)
        if args.llm:
            from llm.study import publish_study

            print("wrote", ", ".join(map(str, publish_study(out))))
        _update_readme(Path(out))
    return 0


def _update_readme(out: Path) -> None:
    """Rewrite the generated blocks of ``out/README.md`` (``--out .``) from ``out/results``."""
    readme = out / "README.md"
    if not readme.is_file():
        return
    from amasim.studies.readme import convex_blocks, update_readme
    from llm.report import readme_blocks
    from llm.study_report import readme_study_blocks

    results = out / "results"
    blocks = {**convex_blocks(results), **readme_blocks(results), **readme_study_blocks(results)}
    print("rewrote the README blocks", ", ".join(update_readme(readme, blocks)))


if __name__ == "__main__":
    sys.exit(main())
