"""Command line of the LLM backend (also reachable as ``amasim llm ...``).

Every failure prints one message, ``error: <what>, <where>. Fix: <how>``, on a line of its
own on stderr (a live progress bar is cleared first) and exits with 2 for bad input
(config, data, paths, a missing optional package, a damaged, unsealed or foreign
checkpoint, a busy output folder, a failed write: disk full, file too large, no
permission), 1 for a run that diverged or an internal error, 130 when interrupted;
``--debug`` shows the traceback instead.  Warnings (data issues, a rebuilt cache) print as
``warning: ...``.  Every command that writes holds its output folder's lock
(:class:`llm.lock.RunLock`) while it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

#: exit status of bad input (argparse uses 2 as well)
BAD_INPUT = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m llm", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    synth = sub.add_parser("synth", help="write the built-in preference task suite")
    synth.add_argument("--out", type=Path, required=True)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--suite", default="classic", help="classic | learnable (llm.synth)")
    synth.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)
    run = sub.add_parser("run", help="specialists, caches, generalists, evaluation")
    run.add_argument("--config", type=Path, default=Path(__file__).parent / "configs/tiny-cpu.toml")
    run.add_argument("--out", type=Path, default=None, help="overrides [run] out")
    run.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)
    plan = sub.add_parser(
        "plan", help="the cost of a run before it starts: steps, tokens, FLOPs, time, disk, memory"
    )
    plan.add_argument("--config", type=Path, required=True)
    plan.add_argument("--out", type=Path, default=None, help="overrides [run] out")
    plan.add_argument("--gpu", default=None, help="the GPU to time (llm.gpus; default H100-SXM)")
    plan.add_argument("--gpus", type=int, default=1, help="GPUs the run uses (default 1)")
    plan.add_argument("--mfu", type=float, default=None, help="assumed MFU (default 0.3)")
    plan.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)
    cost = sub.add_parser(
        "specialist-cost",
        help="AMA-R and AMA-S with early-stopped specialists and the reference as specialist",
    )
    cost.add_argument("--config", type=Path, required=True)
    cost.add_argument("--out", type=Path, default=None, help="overrides [run] out")
    cost.add_argument(
        "--fractions",
        type=_floats,
        default=None,
        help="shares of the specialist steps, comma-separated (default 0.05,0.1,0.25,0.5,1)",
    )
    cost.add_argument(
        "--methods", type=_names, default=None, help="comma-separated (default ama-r,ama-s)"
    )
    cost.add_argument(
        "--seeds", type=_ints, default=None, help="comma-separated; overrides [run] seeds"
    )
    cost.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)
    study = sub.add_parser(
        "study",
        help="the claims over instances: equal tuning on a tuning instance, then every method "
        "on --instances data sets (llm.instances)",
    )
    study.add_argument(
        "--config", type=Path, default=Path(__file__).parent / "configs/small-cpu.toml"
    )
    study.add_argument("--out", type=Path, required=True)
    study.add_argument("--instances", type=int, default=5, help="evaluation instances (>= 2)")
    study.add_argument(
        "--workers", type=int, default=1, help="processes (each instance in its own folder)"
    )
    study.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)
    return parser


def _items(text: str, kind: type, what: str) -> tuple:
    try:
        values = tuple(kind(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of {what}"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r} is empty: give {what}, comma-separated")
    return values


def _floats(text: str) -> tuple[float, ...]:
    return _items(text, float, "numbers, e.g. 0.05,0.1,0.25,0.5,1")


def _ints(text: str) -> tuple[int, ...]:
    return _items(text, int, "integers, e.g. 0,1,2")


def _names(text: str) -> tuple[str, ...]:
    return _items(text, str.strip, "method names, e.g. ama-r,ama-s")


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr if file is None else file)


def _classify(err: BaseException) -> int | None:
    """The exit status of an expected failure, or None for an internal error."""
    from amasim.driver import TrainingDiverged
    from llm.lock import FolderLocked

    if isinstance(err, TrainingDiverged | FloatingPointError):
        return 1
    if isinstance(err, ValueError | OSError | FolderLocked | TypeError):
        return BAD_INPUT
    return None


def main(argv: Sequence[str] | None = None) -> int:
    from amasim.console import error_line, ignore_file_size_signal

    args = _parser().parse_args(argv)
    debug = getattr(args, "debug", False)
    ignore_file_size_signal()  # a write past ulimit -f fails with EFBIG, named
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            return _run(args)
        except KeyboardInterrupt:
            if debug:
                raise
            error_line(
                "interrupted. Fix: run the same command again to resume from the last checkpoint"
            )
            return 130
        except Exception as err:
            if debug:
                raise
            status = _classify(err)
            if status is None:
                error_line(
                    f"internal error {type(err).__name__}: {err}. Fix: rerun with --debug for "
                    "the traceback and report it"
                )
                return 1
            error_line(_message(err))
            return status


def _message(err: Exception) -> str:
    """The one line an expected failure prints (an ``OSError`` of the system named)."""
    message = str(err)
    if isinstance(err, OSError) and err.strerror:
        if err.filename is None:
            message = err.strerror  # ours: the message without "[Errno N]"
        else:
            message = (
                f"cannot use {err.filename}: {err.strerror}. Fix: check that path (it must be "
                "a readable file, or a writable folder), then rerun"
            )
    return message


def _run(args: argparse.Namespace) -> int:
    from llm.lock import RunLock

    if args.command == "synth":
        from llm.synth import write_suite

        with RunLock(args.out, what="--out"):  # never rewrite a folder a run is reading
            print("wrote", write_suite(args.out, seed=args.seed, suite=args.suite))
        return 0
    import dataclasses

    from llm.config import load_config
    from llm.lock import prepare_output_folder
    from llm.parallel import torchrun_rank
    from llm.preflight import preflight

    cfg = load_config(args.config)
    if args.command == "study":
        return _study(args, cfg)
    if args.out is not None:
        cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, out=str(args.out)))
    if args.command == "plan":  # the cost of a GPU run, planned on any machine
        preflight(cfg, args.config, check_device=False)
        return _plan(args, cfg)
    preflight(cfg, args.config)  # before the output folder is touched
    if args.command == "run":
        _announce_plan(args, cfg)
    what = "--out" if args.out is not None else "[run] out"
    prepare_output_folder(cfg.run.out, what)
    # rank 0 holds the folder for every rank under torchrun (open_run's lock nests in it)
    lock = RunLock(cfg.run.out, what=f"output folder ({what})")
    with lock if torchrun_rank() == 0 else contextlib.nullcontext():
        if args.command == "specialist-cost":
            return _specialist_cost(args, cfg)

        from llm.pipeline import run_pipeline
        from llm.report import summary_table

        results = run_pipeline(cfg)
        print(summary_table(results))
        print(f"wrote {cfg.run.out}/results.md ({results['seconds']:.0f} s)")
        return 0


def _study(args: argparse.Namespace, cfg) -> int:
    from llm.instances import run_study
    from llm.lock import RunLock, prepare_output_folder
    from llm.preflight import preflight
    from llm.study_report import claims_table

    if args.instances < 2:
        raise ValueError(
            f"--instances {args.instances}: claims over instances need at least 2 (a sign "
            "test, an interval over instances). Fix: pass --instances 5"
        )
    preflight(cfg, args.config)
    prepare_output_folder(args.out, "--out")
    with RunLock(args.out, what="output folder (--out)"):
        study = run_study(cfg, args.out, instances=args.instances, workers=max(1, args.workers))
    print(claims_table(study["claims"]["claims"]))
    print(f"wrote {args.out}/study.md ({study['seconds']:.0f} s)")
    return 0


def _specialist_cost(args: argparse.Namespace, cfg) -> int:
    import dataclasses

    from llm.specialist_cost import (
        FRACTIONS,
        METHODS,
        specialist_cost,
        specialist_cost_markdown,
        write_specialist_cost,
    )

    if args.seeds is not None:
        cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, seeds=args.seeds))
    study = specialist_cost(
        cfg, fractions=args.fractions or FRACTIONS, methods=args.methods or METHODS
    )
    paths = write_specialist_cost(study, cfg.run.out)
    print(specialist_cost_markdown(study))
    print(f"wrote {', '.join(map(str, paths))} ({study['seconds']:.0f} s)")
    return 0


def _plan(args: argparse.Namespace, cfg) -> int:
    """``plan``: the table, then the plan as one JSON line."""
    import json

    from llm.gpus import DEFAULT_GPU
    from llm.plan import DEFAULT_MFU, make_plan

    plan = make_plan(
        cfg,
        source=str(args.config),
        gpu_name=args.gpu or DEFAULT_GPU,
        mfu=DEFAULT_MFU if args.mfu is None else args.mfu,
        gpus=args.gpus,
    )
    print(plan.table())
    print(json.dumps(plan.record()))
    return 0


def _announce_plan(args: argparse.Namespace, cfg) -> None:
    """Before a run: the config checked whole (a CUDA config on a machine without CUDA
    stops here, in seconds), the plan's time and disk printed, and a run whose disk need
    exceeds the free space of ``[run] out`` refused (:class:`llm.plan.DiskTooSmall`)."""
    from llm.parallel import torchrun_rank, torchrun_world_size
    from llm.plan import check_disk, make_plan, plan_summary

    gpus = torchrun_world_size() if cfg.run.device.startswith("cuda") else 1
    try:
        plan = make_plan(cfg, source=str(args.config), gpu_name=_local_gpu(), gpus=gpus)
    except (ValueError, OSError, ImportError):
        raise  # bad input (data, paths, a package): the run would stop on it too
    except Exception as err:  # a limit of the plan itself never stops a run
        warnings.warn(
            f"no cost plan ({type(err).__name__}: {err}); the disk is not checked", stacklevel=2
        )
        return
    if torchrun_rank() == 0:
        print(plan_summary(plan), flush=True)
    check_disk(plan, cfg.run.out)


def _local_gpu() -> str:
    """This machine's GPU when the table knows it, else the plan's default."""
    import torch

    from llm.gpus import DEFAULT_GPU, match

    if torch.cuda.is_available():
        found = match(torch.cuda.get_device_name())
        if found is not None:
            return found.name
    return DEFAULT_GPU
