"""Command line of the LLM backend (also reachable as ``amasim llm ...``)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    synth = sub.add_parser("synth", help="write the built-in preference task suite")
    synth.add_argument("--out", type=Path, required=True)
    synth.add_argument("--seed", type=int, default=0)
    run = sub.add_parser("run", help="specialists, caches, generalists, evaluation")
    run.add_argument("--config", type=Path, default=Path(__file__).parent / "configs/tiny-cpu.toml")
    run.add_argument("--out", type=Path, default=None, help="overrides [run] out")
    args = parser.parse_args(argv)
    if args.command == "synth":
        from llm.synth import write_suite

        print("wrote", write_suite(args.out, seed=args.seed))
        return 0
    import dataclasses

    from llm.config import load_config
    from llm.pipeline import run_pipeline
    from llm.report import summary_table

    cfg = load_config(args.config)
    if args.out is not None:
        cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, out=str(args.out)))
    results = run_pipeline(cfg)
    print(summary_table(results))
    print(f"wrote {cfg.run.out}/results.md ({results['seconds']:.0f} s)")
    return 0
