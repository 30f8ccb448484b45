"""Counter-based random numbers, vectorised over replicates.

A run's randomness is a pair ``(key, counter)``: ``key`` has shape ``(R,)`` (one
``uint64`` per replicate, derived from the user's seed with ``numpy.random.SeedSequence``)
and the counter is the step number.  Draws are a pure function of
``(key, step, position)`` — the SplitMix64 finaliser (Steele, Lea & Flood, "Fast
splittable pseudorandom number generators", OOPSLA 2014) applied to a mix of the three —
so R replicates draw in one array computation, a replicate draws the same numbers
whether it runs alone or beside others, and a run can be resumed at any step from the
step number alone (no hidden generator state to checkpoint).

>>> import numpy as np

from amasim.validate import check_seed
>>> keys = replicate_keys([0, 1])
>>> u = uniform(keys, step=0, size=3)
>>> u.shape, bool(np.all((u >= 0) & (u < 1)))
((2, 3), True)
>>> np.array_equal(uniform(replicate_keys([1]), 0, 3)[0], u[1])
True
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from amasim.validate import check_seed

__all__ = [
    "LOOP_STREAM",
    "SAMPLE_STREAM",
    "AIOLI_STREAM",
    "MIXTURE_STREAM",
    "GRADIENT_STREAM",
    "STREAMS_PER_RANK",
    "replicate_keys",
    "uniform",
    "uniform_steps",
    "UniformStream",
    "categorical",
    "integers",
]

# One user seed feeds independent streams (SeedSequence spawn keys), one per consumer, so
# no two parts of a run draw the same numbers.  Every stream number is assigned here.
LOOP_STREAM = 0  # amasim.driver.Mixing: which tasks a batch holds
SAMPLE_STREAM = 1  # an oracle's example draws (amasim.simulator, llm.oracle)
AIOLI_STREAM = 2  # amasim.lmo: the order of Aioli's LearnParams sweeps
MIXTURE_STREAM = 3  # amasim.capabilities: draws of train_on_mixture rounds
GRADIENT_STREAM = 4  # amasim.transfer: the batches of stochastic task gradients
STREAMS_PER_RANK = 8  # data-parallel rank r draws from stream + 8·r (llm.distributed)

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_STEP_MIX = np.uint64(0xD6E8FEB86659FD93)
_S30, _S27, _S31, _S11 = (np.uint64(s) for s in (30, 27, 31, 11))
_TO_UNIT = 2.0**-53


def replicate_keys(seeds: int | Sequence[int], stream: int = 0) -> np.ndarray:
    """One ``uint64`` key per seed (shape ``(R,)``) for an independent ``stream``.

    The key is drawn from ``SeedSequence(seed).spawn(...)[stream]`` (built directly with
    ``spawn_key=(stream,)``), so the training loop (stream 0) and an oracle (stream 1)
    draw independent numbers from one user seed.  An ``int`` gives one replicate.
    """
    seed_list = [seeds] if isinstance(seeds, (int, np.integer)) else list(seeds)
    if not seed_list:
        raise ValueError("seeds is empty: pass an int or a non-empty sequence of ints")
    for s in seed_list:
        check_seed(s)
    return np.array(
        [
            np.random.SeedSequence(int(s), spawn_key=(stream,)).generate_state(1, np.uint64)[0]
            for s in seed_list
        ],
        dtype=np.uint64,
    )


def _splitmix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's output function, in place (uint64 arithmetic wraps)."""
    z += _GOLDEN
    z ^= z >> _S30
    z *= _M1
    z ^= z >> _S27
    z *= _M2
    z ^= z >> _S31
    return z


def uniform_steps(keys: np.ndarray, first_step: int, num_steps: int, size: int) -> np.ndarray:
    """``uniform(keys, t, size)`` for ``num_steps`` consecutive steps t, shape (S, R, size).

    A loop that draws every step can draw a block of steps in one array computation.
    """
    steps = np.arange(first_step, first_step + num_steps, dtype=np.uint64)
    base = _splitmix(keys[None, :] ^ (steps[:, None] * _STEP_MIX))
    positions = np.arange(size, dtype=np.uint64) * _GOLDEN
    bits = _splitmix(base[:, :, None] + positions)
    return (bits >> _S11).astype(np.float64) * _TO_UNIT


def uniform(keys: np.ndarray, step: int, size: int) -> np.ndarray:
    """Uniform draws in [0, 1), shape ``(R, size)``; a pure function of its arguments."""
    return uniform_steps(keys, step, 1, size)[0]


class UniformStream:
    """``stream(t)`` is ``uniform(keys, t, size)``, computed a block of steps ahead.

    Drawing many steps in one array computation pays the generator's fixed cost once per
    block; the numbers are those of :func:`uniform`, so any step can be read in any order.
    The default block is 64 steps, fewer when a block would exceed ``MAX_BLOCK_NUMBERS``
    numbers (R·size·block), where the generator's megabyte-sized temporaries cost more per
    number than small ones (R = 16, size 128, timed alone: 28 µs of generation per step
    with 64-step blocks, 6.7 µs with 16-step blocks; ~1.5 µs a step saved in the loop).
    """

    MAX_BLOCK_NUMBERS = 32_768  # 256 KiB of float64

    def __init__(self, keys: np.ndarray, size: int, block: int | None = None) -> None:
        if block is None:
            block = min(64, max(1, self.MAX_BLOCK_NUMBERS // max(1, len(keys) * size)))
        self.keys, self.size, self.block = keys, size, block
        self._start, self._values = 0, uniform_steps(keys, 0, 0, size)

    def __call__(self, step: int) -> np.ndarray:
        offset = step - self._start
        if not 0 <= offset < len(self._values):
            self._start, offset = step, 0
            self._values = uniform_steps(self.keys, step, self.block, self.size)
        return self._values[offset]


def categorical(u: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Turn uniforms ``u`` (R, n) into draws from ``probs`` (R, k) by inverse CDF (R, n)."""
    cdf = np.add.accumulate(probs, axis=-1)  # = np.cumsum, with less call overhead
    cdf = cdf / cdf[..., -1:]  # total exactly 1: a trailing zero-probability task is never drawn
    return np.add.reduce(u[:, None, :] >= cdf[:, :-1, None], axis=1)  # contiguous rows: fast


def integers(u: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Turn uniforms into integers in ``[0, high)`` elementwise (``high`` broadcasts).

    ``floor(u·high)`` never reaches ``high``: a float64 ``u < 1`` is at most 1 − 2⁻⁵³, and
    the correctly rounded product (1 − 2⁻⁵³)·h is below h for every integer 1 ≤ h ≤ 2⁵³
    (tested), so no clipping is needed.
    """
    return (u * high).astype(np.int64)
