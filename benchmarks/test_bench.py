"""pytest-benchmark benchmarks of amasim's hot paths (measurements, not timed assertions).

Run them explicitly; plain ``pytest`` does not collect this folder (``testpaths`` is
``tests`` and ``amasim``) and ``addopts`` disables benchmarking::

    python -m pytest benchmarks/ --benchmark-enable

Without ``--benchmark-enable`` every benchmark body runs once, as a smoke test.
``benchmarks/run_benchmarks.py`` measures the speed targets and writes a JSON report.

* ``test_mixer_update``: one ``mixer.update`` for one replicate, k = 8 and k = 64, the
  state fed back in as a training loop does; resampling mixers (``ama_s``, ``uniform``,
  ``stratified``) get the batch's counts, reweighting ones ``counts=None``.
* ``test_simulated_steps``: :func:`amasim.run` for ``STEPS`` steps on the quadratic problem
  (sizes (1000, 100, 100, 100), d = 32, batch 32) with R = 1 and R = 16 seeds; ``ama_r``
  reweights (k·B = 128 examples per step and seed), ``ama_s`` resamples (B = 32).  One
  benchmark call is one run; ``extra_info`` holds the loop's own time per step (from
  ``RunResult.wall_time``, which leaves out set-up and the final evaluation).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # effective only if numpy is not imported yet

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from run_benchmarks import BATCH, DIM, SIZES, mixer_factories  # noqa: E402  (same settings)

STEPS = 500


MIXER_NAMES = tuple(mixer_factories(2))


@pytest.mark.parametrize("k", [8, 64])
@pytest.mark.parametrize("name", MIXER_NAMES)
def test_mixer_update(benchmark, name: str, k: int) -> None:
    mixer = mixer_factories(k)[name]
    rng = np.random.default_rng(0)
    scores = rng.random(k)
    # resampling mixers get the batch's counts, reweighting ones full information (None),
    # as the training loop calls them
    resample = mixer.apply == "resample"
    counts = rng.multinomial(32, np.full(k, 1.0 / k)) if resample else None
    state = [mixer.init(k, seed=0)]

    def one_update():
        alpha, state[0] = mixer.update(state[0], scores, counts)
        return alpha

    alpha = benchmark(one_update)
    assert alpha.shape == (k,)


@pytest.fixture(scope="module")
def problem():
    from amasim.problems import make_problem

    return make_problem("quadratic", sizes=SIZES, dim=DIM)


@pytest.mark.parametrize("replicates", [1, 16])
@pytest.mark.parametrize("name", ["ama_r", "ama_s"])
def test_simulated_steps(benchmark, problem, name: str, replicates: int) -> None:
    from amasim.driver import run
    from amasim.simulator import SimulatedOracle

    mixer = mixer_factories(len(SIZES))[name]
    oracle = SimulatedOracle(problem)
    seeds = list(range(replicates))
    loop_times = []

    def one_run():
        result = run(
            mixer,
            oracle,
            steps=STEPS,
            learning_rate=0.05,
            batch_size=BATCH,
            seeds=seeds,
            check=False,
        )
        loop_times.append(result.wall_time / STEPS)
        return result

    result = benchmark.pedantic(one_run, rounds=7, iterations=1, warmup_rounds=1)
    per_step = float(np.median(loop_times))
    benchmark.extra_info.update(
        steps_per_call=STEPS,
        replicates=replicates,
        examples_per_step_per_seed=BATCH * (len(SIZES) if mixer.apply == "reweight" else 1),
        loop_us_per_step=per_step * 1e6,
        per_seed_steps_per_s=replicates / per_step,
    )
    assert result.weights.shape[1:] == (replicates, len(SIZES))
