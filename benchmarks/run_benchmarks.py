"""Measure amasim's speed targets on this machine; write ``benchmarks/results/core.json``.

Targets (issue acceptance list), measured single-threaded:

1. one mixer update at k = 8 (one replicate) takes under 20 µs (median) for ``ama_r``,
   ``ama_s`` (with counts), ``group_dro``, ``stratified``, ``uniform`` and
   ``averaged(ama_r)``;
2. a full simulated step (batch 32, d = 32, k = 4: ``make_problem("quadratic",
   sizes=(1000, 100, 100, 100), dim=32)``) runs at >= 20,000 steps/s for a single seed,
   for ``ama_r`` (reweighting: k·B = 128 examples per step) and ``ama_s`` (resampling:
   B = 32 examples per step).  The per-seed rate with 16 seeds batched
   (16 / time per batched step) is reported and held to the same bar;
3. 16 seeds batched cost at most 3x one seed (time per batched step / time per
   single-seed step).

Statistic: the median over repeats of this process's CPU time per update or step, i.e.
the cost on one core, whether or not other processes take turns on the machine's cores.
Wall-clock medians are reported beside it (a step's wall time is the training loop's own
clock, ``RunResult.wall_time``; its CPU time covers the whole ``run`` call, set-up and
final evaluation included, about 1% more).  Each repeat visits every configuration in
turn, so a burst of outside load lands on all of them alike.  BLAS and OpenMP pools are
held to one thread (environment variables set before numpy is imported, and
threadpoolctl when it is installed); the load average before and after is recorded.

Usage::

    python benchmarks/run_benchmarks.py [--output PATH] [--quick]

Prints a markdown table with pass/fail per target; runs in well under two minutes.
"""

from __future__ import annotations

import os

_THREAD_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
for _var in _THREAD_VARS:  # before numpy is imported, or the pools are already sized
    os.environ[_var] = "1"

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

import amasim  # noqa: E402
from amasim import mixers  # noqa: E402

try:  # optional: also caps pools that ignore the environment
    from threadpoolctl import threadpool_info, threadpool_limits
except ImportError:  # pragma: no cover - depends on the environment
    threadpool_info = threadpool_limits = None

MIXER_TARGET_US = 20.0
STEPS_TARGET = 20_000.0
RATIO_TARGET = 3.0
SIZES, DIM, BATCH, BATCHED_SEEDS = (1000, 100, 100, 100), 32, 32, 16
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "core.json"
STATISTIC = (
    "median over repeats of this process's CPU time (time.process_time) per update or step; "
    "wall-clock medians beside it (median_wall_*; a step's wall time is the loop's own "
    "clock, RunResult.wall_time). CPU time is the cost on one core whether or not other "
    "processes take turns on it; wall time is inflated by them."
)


def mixer_factories(k: int) -> dict[str, mixers.Mixer]:
    return {
        "ama_r": mixers.ama_r(0.5),
        "ama_s": mixers.ama_s(0.5, 0.1),
        "group_dro": mixers.group_dro(0.5),
        "stratified": mixers.stratified(),
        "uniform": mixers.uniform([1000] + [100] * (k - 1)),
        "averaged(ama_r)": mixers.averaged(mixers.ama_r(0.5)),
    }


class _Clocks:
    """Wall-clock and process-CPU seconds of a block."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def mixer_sampler(mixer: mixers.Mixer, k: int, number: int):
    """A function timing ``number`` updates (state fed back in): µs per update, wall and CPU.

    Resampling mixers get the batch's counts, reweighting ones ``counts=None``, as the
    training loop calls them.
    """
    rng = np.random.default_rng(0)
    scores = rng.random(k)
    counts = rng.multinomial(BATCH, np.full(k, 1.0 / k)) if mixer.apply == "resample" else None
    state = [mixer.init(k, seed=0)]
    update = mixer.update

    def sample() -> tuple[float, float]:
        st = state[0]
        with _Clocks() as clock:
            for _ in range(number):
                _, st = update(st, scores, counts)
        state[0] = st
        return clock.wall / number * 1e6, clock.cpu / number * 1e6

    sample()  # warm-up
    return sample


def step_sampler(problem, name: str, replicates: int, steps: int):
    """A function timing one run of ``steps`` steps: µs per step, wall (the loop's own clock,
    ``RunResult.wall_time``) and CPU (the whole ``run`` call, set-up included)."""
    from amasim.driver import run
    from amasim.simulator import SimulatedOracle

    mixer = mixer_factories(len(SIZES))[name]
    oracle = SimulatedOracle(problem)
    seeds = list(range(replicates))

    def sample(num_steps: int = steps) -> tuple[float, float]:
        with _Clocks() as clock:
            result = run(
                mixer,
                oracle,
                steps=num_steps,
                learning_rate=0.05,
                batch_size=BATCH,
                seeds=seeds,
                check=False,
            )
        return result.wall_time / num_steps * 1e6, clock.cpu / num_steps * 1e6

    sample(max(10, steps // 10))  # warm-up
    return sample


def _stats(samples: list[tuple[float, float]], unit: str, per_sample: int) -> dict:
    wall = np.array([w for w, _ in samples])
    cpu = np.array([c for _, c in samples])
    return {
        f"median_{unit}": float(np.median(cpu)),
        f"median_wall_{unit}": float(np.median(wall)),
        f"min_wall_{unit}": float(wall.min()),
        f"max_wall_{unit}": float(wall.max()),
        "samples": len(samples),
        "calls_per_sample": per_sample,
    }


def machine_info() -> dict:
    info = {
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "amasim": amasim.__version__,
        "amasim_path": str(Path(amasim.__file__).resolve().parent),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
        "cpu_model": _cpu_model(),
    }
    return info


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=Path(__file__).resolve().parent,
        capture_output=True,
        text=True,
        timeout=5,
    ).stdout.strip()
    return out.stdout.strip() + ("+dirty" if dirty else "")


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def thread_info() -> dict:
    info = {
        "environment": {var: os.environ.get(var) for var in _THREAD_VARS},
        "threadpoolctl": threadpool_limits is not None,
    }
    if threadpool_info is not None:
        info["pools"] = [
            {
                "api": p.get("user_api"),
                "library": p.get("internal_api"),
                "threads": p.get("num_threads"),
            }
            for p in threadpool_info()
        ]
    return info


def measure(quick: bool) -> dict:
    from amasim.problems import make_problem

    mixer_repeats, mixer_number = (5, 200) if quick else (21, 1000)
    step_repeats, steps = (3, 300) if quick else (9, 1500)
    load_before = _load()
    start = time.perf_counter()

    # Every repeat visits every configuration in turn, so a burst of load from other
    # processes lands on all of them alike rather than on one.
    mixer_samplers = {
        (k, name): mixer_sampler(mixer, k, mixer_number)
        for k in (8, 64)
        for name, mixer in mixer_factories(k).items()
    }
    mixer_samples: dict = {key: [] for key in mixer_samplers}
    for _ in range(mixer_repeats):
        for key, sampler in mixer_samplers.items():
            mixer_samples[key].append(sampler())
    mixer_us: dict[str, dict] = {"k=8": {}, "k=64": {}}
    for (k, name), samples in mixer_samples.items():
        mixer_us[f"k={k}"][name] = _stats(samples, "us", mixer_number)

    problem = make_problem("quadratic", sizes=SIZES, dim=DIM)
    configs = [(name, r) for name in ("ama_r", "ama_s") for r in (1, BATCHED_SEEDS)]
    step_samplers = {cfg: step_sampler(problem, *cfg, steps) for cfg in configs}
    step_samples: dict = {cfg: [] for cfg in configs}
    for _ in range(step_repeats):
        for cfg, sampler in step_samplers.items():
            step_samples[cfg].append(sampler())
    step: dict[str, dict] = {}
    for (name, r), samples in step_samples.items():
        stats = _stats(samples, "us_per_step", steps)
        median_s = stats["median_us_per_step"] * 1e-6
        examples = BATCH * (len(SIZES) if name == "ama_r" else 1)
        stats.update(
            replicates=r,
            examples_per_step_per_seed=examples,
            steps_per_s=1.0 / median_s,
            per_seed_steps_per_s=r / median_s,
        )
        step.setdefault(name, {})[f"R={r}"] = stats
    for rec in step.values():
        single, batched = rec["R=1"], rec[f"R={BATCHED_SEEDS}"]
        rec["batched_over_single"] = batched["median_us_per_step"] / single["median_us_per_step"]
        rec["batched_over_single_wall"] = (
            batched["median_wall_us_per_step"] / single["median_wall_us_per_step"]
        )

    targets = []
    for name, stats in mixer_us["k=8"].items():
        targets.append(
            _target(f"mixer update k=8, {name}", stats["median_us"], "µs", "<", MIXER_TARGET_US)
        )
    for name, rec in step.items():
        targets.append(
            _target(
                f"steps/s single seed, {name}",
                rec["R=1"]["steps_per_s"],
                "steps/s",
                ">=",
                STEPS_TARGET,
            )
        )
        targets.append(
            _target(
                f"per-seed steps/s at R={BATCHED_SEEDS}, {name}",
                rec[f"R={BATCHED_SEEDS}"]["per_seed_steps_per_s"],
                "steps/s",
                ">=",
                STEPS_TARGET,
            )
        )
        targets.append(
            _target(
                f"R={BATCHED_SEEDS} step / R=1 step, {name}",
                rec["batched_over_single"],
                "x",
                "<=",
                RATIO_TARGET,
            )
        )
    return {
        "machine": machine_info(),
        "threads": thread_info(),
        "settings": {
            "problem": {"family": "quadratic", "sizes": SIZES, "dim": DIM},
            "batch_size": BATCH,
            "batched_seeds": BATCHED_SEEDS,
            "mixer_update": {"repeats": mixer_repeats, "updates_per_repeat": mixer_number},
            "simulated_step": {"repeats": step_repeats, "steps_per_run": steps},
            "statistic": STATISTIC,
            "quick": quick,
        },
        "load_average": {"before": load_before, "after": _load()},
        "mixer_update_us": mixer_us,
        "simulated_step": step,
        "targets": targets,
        "all_pass": all(t["pass"] for t in targets),
        "runtime_s": time.perf_counter() - start,
    }


def _target(name: str, value: float, unit: str, op: str, threshold: float) -> dict:
    ok = {"<": value < threshold, "<=": value <= threshold, ">=": value >= threshold}[op]
    return {
        "target": name,
        "value": value,
        "unit": unit,
        "requirement": f"{op} {threshold:g}",
        "pass": bool(ok),
    }


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def markdown(report: dict) -> str:
    m, th = report["machine"], report["threads"]
    pools = (
        "threadpoolctl and environment variables"
        if th["threadpoolctl"]
        else ("environment variables set before numpy is imported")
    )
    lines = [
        f"amasim {m['amasim']} · Python {m['python']} · numpy {m['numpy']} · "
        f"{m['cpu_count']} CPUs ({m['cpu_model']}) · {m['platform']} · {m['date']}",
        f"single-threaded BLAS/OpenMP (pinned via {pools}); "
        f"load average before {report['load_average']['before']}, "
        f"after {report['load_average']['after']}",
        "statistic: median CPU time of this process per update/step (cost on one core); "
        "wall-clock medians beside it",
        "",
        "| target | measured | requirement | result |",
        "|---|---:|---|---|",
    ]
    for t in report["targets"]:
        value = f"{t['value']:,.0f}" if t["unit"] == "steps/s" else f"{t['value']:.2f}"
        lines.append(
            f"| {t['target']} | {value} {t['unit']} | {t['requirement']} {t['unit']} | "
            f"{'PASS' if t['pass'] else 'FAIL'} |"
        )
    lines += [
        "",
        "| simulated step | R | examples/step/seed | µs/step CPU | µs/step wall "
        "| per-seed steps/s (CPU) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    busy = False
    for name, rec in report["simulated_step"].items():
        for key in ("R=1", f"R={BATCHED_SEEDS}"):
            s = rec[key]
            busy |= s["median_wall_us_per_step"] > 1.15 * s["median_us_per_step"]
            lines.append(
                f"| {name} | {s['replicates']} | {s['examples_per_step_per_seed']} | "
                f"{s['median_us_per_step']:.1f} | {s['median_wall_us_per_step']:.1f} | "
                f"{s['per_seed_steps_per_s']:,.0f} |"
            )
    lines += [
        "",
        "| mixer update (µs, median) | k=8 CPU | k=8 wall | k=64 CPU | k=64 wall |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in report["mixer_update_us"]["k=8"]:
        k8 = report["mixer_update_us"]["k=8"][name]
        k64 = report["mixer_update_us"]["k=64"][name]
        lines.append(
            f"| {name} | {k8['median_us']:.2f} | {k8['median_wall_us']:.2f} | "
            f"{k64['median_us']:.2f} | {k64['median_wall_us']:.2f} |"
        )
    lines.append("")
    if busy:
        lines.append(
            "note: wall time exceeded CPU time by over 15%: other processes shared the cores"
        )
    lines.append(f"all targets pass: {report['all_pass']} · runtime {report['runtime_s']:.0f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON report path")
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run)")
    args = parser.parse_args(argv)
    if threadpool_limits is not None:
        with threadpool_limits(limits=1):
            report = measure(args.quick)
    else:
        report = measure(args.quick)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
