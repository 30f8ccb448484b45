"""Per-update cost of every mixer at k = 8 and k = 64, and the extra oracle work it needs.

    python benchmarks/run_mixer_costs.py     → benchmarks/results/mixer_costs.{json,md}

Fastest of 15 repeats of 2,000 ``update`` calls (1 replicate, one BLAS
thread).  "Extra oracle work" is what a method asks of the oracle beyond the training
batch, per mixer update, counted from its definition (k tasks, B batch size).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from amasim import gradient_mixers, lmo, mixers  # noqa: E402

EXTRA = {
    "uniform": "none",
    "stratified": "none",
    "group_dro": "none (every task in every batch: k·B examples per step)",
    "ama_r": "none (every task in every batch: k·B examples per step)",
    "ama_s": "none (B examples per step)",
    "doremi": "none (k·B examples per step; per-example reference losses cached)",
    "odm": "none",
    "skill_it": "a skills graph measured once: k single-group training runs",
    "aioli": "each round: sweeps·k short training rounds + 1 + sweeps·k evaluations of k losses",
    "dml": "a sweep of ≥ k+1 full training runs before training",
    "doge": "per update: k task gradients (one per task batch)",
    "dga": "per update (every update_every steps): k task gradients + 1 target gradient",
}


def factories(k: int) -> dict:
    graph = np.eye(k)
    return {
        "uniform": (mixers.uniform([100] * k), "scores"),
        "stratified": (mixers.stratified(), "scores"),
        "group_dro": (mixers.group_dro(0.1), "scores"),
        "ama_r": (mixers.ama_r(0.1), "scores"),
        "ama_s": (mixers.ama_s(0.1, 0.1), "counts"),
        "doremi": (mixers.doremi(0.1, 1e-3), "scores"),
        "odm": (mixers.odm(), "counts"),
        "skill_it": (lmo.skill_it(graph, 0.1), "scores"),
        "aioli": (lmo.aioli(0.2), "matrix"),
        "dml": (lmo.dml(np.full(k, 1.0 / k)), "scores"),
        "doge": (gradient_mixers.doge(0.1), "scores"),
        "dga": (gradient_mixers.dga(0.1), "scores"),
    }


def time_update(mixer, kind: str, k: int) -> float:
    rng = np.random.default_rng(0)
    state = mixer.init(k, seed=0)
    scores = rng.random((k, k)) if kind == "matrix" else rng.random(k)
    counts = np.full(k, 4) if kind == "counts" else None
    _, state = mixer.update(state, scores, counts)
    samples = []
    for _ in range(15):
        tick = time.perf_counter()
        for _ in range(2000):
            mixer.update(state, scores, counts)
        samples.append((time.perf_counter() - tick) / 2000 * 1e6)
    return min(samples)  # the least-disturbed repeat: this VM's neighbours add noise


def main() -> None:
    table = {name: {} for name in factories(8)}
    for k in (8, 64):
        for name, (mixer, kind) in factories(k).items():
            table[name][f"k={k}"] = time_update(mixer, kind, k)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    record = {"date": time.strftime("%Y-%m-%d"), "update_us": table, "extra_oracle_work": EXTRA}
    (out / "mixer_costs.json").write_text(json.dumps(record, indent=2))
    lines = [
        "| mixer | update k=8 (µs) | update k=64 (µs) | extra oracle work |",
        "|---|---:|---:|---|",
    ]
    for name, row in table.items():
        lines.append(f"| {name} | {row['k=8']:.1f} | {row['k=64']:.1f} | {EXTRA[name]} |")
    text = "\n".join(lines)
    (out / "mixer_costs.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
