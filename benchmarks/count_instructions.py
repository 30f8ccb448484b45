"""Instructions per simulated step and per mixer update, counted by valgrind.

CPU time on a shared host swings by ±30% with the neighbours' load; the number of
instructions a step executes does not.  This script runs each configuration twice under
``valgrind --tool=cachegrind --cache-sim=no`` (a short and a long run of the same code)
and reports (I_long − I_short) / (n_long − n_short): the instructions of one step or
update, with start-up and set-up cancelled out.

    python benchmarks/count_instructions.py   → benchmarks/results/instructions.json

Configurations: the simulated step of ``run_benchmarks.py`` (B = 32, d = 32, k = 4) for
ama_r and ama_s, one seed and 16 seeds; one ama_s update at k = 8 (with counts).
Needs ``valgrind`` on the PATH (``apt-get install valgrind``); about 2 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "instructions.json"
CONFIGS = [("step", "ama_r", 1), ("step", "ama_s", 1), ("step", "ama_r", 16)]
CONFIGS += [("step", "ama_s", 16), ("update", "ama_s", 1)]


def child(kind: str, name: str, replicates: int, count: int) -> None:
    """The measured program: ``count`` steps (or updates) of one configuration."""
    import numpy as np

    from benchmarks.run_benchmarks import BATCH, DIM, SIZES, mixer_factories

    if kind == "update":
        k = 8
        mixer = mixer_factories(k)[name]
        rng = np.random.default_rng(0)
        scores, counts = rng.random(k), rng.multinomial(BATCH, np.full(k, 1.0 / k))
        state = mixer.init(k, seed=0)
        for _ in range(count):
            _, state = mixer.update(state, scores, counts)
        return
    from amasim.driver import run
    from amasim.problems import make_problem
    from amasim.simulator import SimulatedOracle

    oracle = SimulatedOracle(make_problem("quadratic", sizes=SIZES, dim=DIM))
    mixer = mixer_factories(len(SIZES))[name]
    seeds = list(range(replicates))
    run(mixer, oracle, steps=count, learning_rate=0.05, batch_size=BATCH, seeds=seeds, check=False)


def instructions(kind: str, name: str, replicates: int, count: int) -> int:
    """Instructions valgrind counts for one child run of ``count`` steps or updates."""
    env = dict(os.environ, PYTHONHASHSEED="0", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    root = Path(__file__).resolve().parent.parent
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    command = [
        "valgrind",
        "--tool=cachegrind",
        "--cache-sim=no",
        "--cachegrind-out-file=/dev/null",
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        kind,
        name,
        str(replicates),
        str(count),
    ]
    out = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    match = re.search(r"I\s+refs:\s+([\d,]+)", out.stderr)
    if match is None:
        raise RuntimeError(f"valgrind printed no instruction count:\n{out.stderr[-2000:]}")
    return int(match.group(1).replace(",", ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, name, replicates, count = args.child
        child(kind, name, int(replicates), int(count))
        return
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not on the PATH: install it (apt-get install valgrind) and rerun")
    rows = []
    for kind, name, replicates in CONFIGS:
        short, long = (1_000, 21_000) if kind == "update" else (100, 600)
        per_call = (
            instructions(kind, name, replicates, long) - instructions(kind, name, replicates, short)
        ) / (long - short)
        rows.append({"what": kind, "mixer": name, "replicates": replicates, "per_call": per_call})
        print(f"{kind:6s} {name:5s} R={replicates:2d}: {per_call / 1e3:8.1f} k instructions")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"python": sys.version.split()[0], "rows": rows}, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
