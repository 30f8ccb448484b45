"""Statement 2: EXP3's regret bound (Auer, Cesa-Bianchi, Freund & Schapire 2002, Thm 3.1
and Cor. 3.2), for the mixer AMA-S actually runs.  Derivation: ``derivations/02_exp3.md``.

EXP3 with K arms, rewards x_t ∈ [0, 1]^K and exploration γ is
``amasim.mixers.ama_s(step_size=γ/K, smoothing=γ)`` fed one draw per round (counts =
one-hot of the drawn arm): its weights are (1 − γ)·softmax + γ/K and its gain is x/p for
the drawn arm, which is Auer's update w_i ← w_i·exp(γ x̂_i / K).  ``equivalence`` checks
this against a literal transcription of Auer's Figure 1 on the same draws.

For every adversary below, R independent runs (vectorised over replicates) estimate

* γ-form (Thm 3.1):  max_j E[G_j] − E[G_EXP3] ≤ (e − 1)·γ·max_j E[G_j] + K ln K / γ
* tuned (Cor. 3.2):  with g = T ≥ G_max, γ = min(1, √(K ln K / ((e − 1) g))):
                     max_j E[G_j] − E[G_EXP3] ≤ 2√(e − 1)·√(g K ln K)

With an adaptive adversary the rewards depend on the past draws, G_j is random, and
Auer's proof bounds max_j E[G_j] − E[G_EXP3] (the expectation inside the max): that is
the quantity measured.  E[G_EXP3] is estimated by Σ_t ⟨p_t, x_t⟩ per run (its conditional
expectation, same mean, lower variance).  A violation must exceed the bound by
``Z_SCORE`` standard errors.

Broken variants: ``no_importance_weighting`` (gain x instead of x/p for the drawn arm),
``no_exploration`` (γ = 0 in the weights but the same step γ/K).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import numpy as np

from amasim import mixers, prng
from proofs_check.base import Z_SCORE, Budget, Measurement

__all__ = [
    "VARIANTS",
    "ADVERSARIES",
    "make_mixer",
    "table_adversary",
    "play",
    "regret",
    "equivalence",
    "run",
]

VARIANTS = ("correct", "no_importance_weighting", "no_exploration")
E1 = math.e - 1.0

Adversary = Callable[[int, np.ndarray, np.ndarray], np.ndarray]


def make_mixer(gamma: float, k: int, variant: str = "correct") -> mixers.Mixer:
    """EXP3(γ) over k arms as the core builds it (or a broken variant)."""
    if variant == "no_importance_weighting":
        return mixers.exponentiated_gradient(gamma / k, smoothing=gamma, apply="resample")
    if variant == "no_exploration":
        return mixers.exponentiated_gradient(
            gamma / k, smoothing=0.0, importance_weighting=True, apply="resample"
        )
    return mixers.ama_s(gamma / k, gamma)


# ------------------------------------------------------------------ adversaries
def oblivious_random(k: int, horizon: int, seed: int) -> Adversary:
    """A fixed Bernoulli table (arm means spread in [0.3, 0.7]), the same for every run."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2]))
    table = (rng.random((horizon, k)) < np.linspace(0.3, 0.7, k)).astype(float)
    return lambda t, probs, last: np.broadcast_to(table[t], probs.shape)


def oblivious_switch(k: int, horizon: int, seed: int) -> Adversary:
    """Arm 0 pays 1 for the first third, then arm 1 pays 1: the best arm changes late."""
    del seed

    def rewards(t: int, probs: np.ndarray, last: np.ndarray) -> np.ndarray:
        x = np.zeros_like(probs)
        x[:, 0 if t < horizon // 3 else 1] = 1.0
        return x

    return rewards


def adaptive_lowest(k: int, horizon: int, seed: int) -> Adversary:
    """Pays 1 to the arm EXP3 currently plays least (reads p_t before the draw)."""
    del horizon, seed
    return lambda t, probs, last: (probs == probs.min(axis=1, keepdims=True)).astype(float)


def adaptive_punish(k: int, horizon: int, seed: int) -> Adversary:
    """Pays 1 to every arm except the one drawn last round (reads the past draw)."""
    del horizon, seed

    def rewards(t: int, probs: np.ndarray, last: np.ndarray) -> np.ndarray:
        return (np.arange(k)[None, :] != last[:, None]).astype(float)

    return rewards


def table_adversary(table: np.ndarray, adaptive: bool = False) -> Adversary:
    """Rewards from a (T, K) table in [0, 1]; ``adaptive`` zeroes the arm drawn last round
    (so the rewards depend on the algorithm's past draws)."""
    table = np.asarray(table, dtype=float)

    def rewards(t: int, probs: np.ndarray, last: np.ndarray) -> np.ndarray:
        x = np.broadcast_to(table[t], probs.shape).copy()
        if adaptive:
            x[np.arange(len(last)), np.maximum(last, 0)] *= last < 0
        return x

    return rewards


ADVERSARIES: dict[str, Callable[[int, int, int], Adversary]] = {
    "oblivious-random": oblivious_random,
    "oblivious-switch": oblivious_switch,
    "adaptive-lowest": adaptive_lowest,
    "adaptive-punish": adaptive_punish,
}


# ------------------------------------------------------------------------ game
def play(mixer: mixers.Mixer, adversary: Adversary, k: int, horizon: int, runs: int, seed: int):
    """R runs of the bandit game; returns (expected gain Σ⟨p_t,x_t⟩ (R,), arm gains (R,k))."""
    keys = prng.replicate_keys(list(range(seed * runs, (seed + 1) * runs)), stream=3)
    state = mixer.init(k, seed=list(range(runs)))
    last = np.full(runs, -1)
    gain_alg, gain_arms = np.zeros(runs), np.zeros((runs, k))
    rows = np.arange(runs)
    for t in range(horizon):
        probs = mixer.weights(state)
        x = adversary(t, probs, last)
        drawn = prng.categorical(prng.uniform(keys, t, 1), probs)[:, 0]
        counts = np.zeros((runs, k), dtype=np.int64)
        counts[rows, drawn] = 1
        gain_alg += np.einsum("rk,rk->r", probs, x)
        gain_arms += x
        _, state = mixer.update(state, x, counts)
        last = drawn
    return gain_alg, gain_arms


def regret(
    adversary: str | Adversary,
    gamma: float | None,
    k: int,
    horizon: int,
    runs: int,
    seed: int,
    variant: str = "correct",
) -> Measurement:
    """One measurement: γ-form if ``gamma`` is given, else the tuned form with g = T.

    ``adversary`` is a name of :data:`ADVERSARIES` or an :data:`Adversary` function.
    """
    tuned = gamma is None
    g = float(horizon)
    if tuned:
        gamma = min(1.0, math.sqrt(k * math.log(k) / (E1 * g)))
    mixer = make_mixer(gamma, k, variant)
    if isinstance(adversary, str):
        adv = ADVERSARIES[adversary](k, horizon, seed)
    else:
        adv, adversary = adversary, "custom"
    with _quiet(variant):
        gain_alg, gain_arms = play(mixer, adv, k, horizon, runs, seed)
    best = int(np.argmax(gain_arms.mean(axis=0)))
    g_max = float(gain_arms[:, best].mean())
    diff = gain_arms[:, best] - gain_alg
    measured = float(diff.mean())
    if tuned:
        bound = 2.0 * math.sqrt(E1) * math.sqrt(g * k * math.log(k))
    else:
        bound = E1 * gamma * g_max + k * math.log(k) / gamma
    se = float(diff.std(ddof=1) / math.sqrt(runs)) if runs > 1 else 0.0
    form = "tuned" if tuned else f"gamma={gamma:g}"
    return Measurement(
        f"{adversary}:{form}:K={k}:T={horizon}",
        measured,
        bound,
        Z_SCORE * se,
        {"gamma": gamma, "G_max": g_max, "se": se},
    )


def auer_exp3_probs(rewards: np.ndarray, uniforms: np.ndarray, gamma: float) -> np.ndarray:
    """Auer et al. (2002) Figure 1, transcribed literally (weights renormalised each round,
    which leaves p unchanged); returns p_t for every round, shape (T, K)."""
    horizon, k = rewards.shape
    w = np.ones(k)
    out = np.empty((horizon, k))
    for t in range(horizon):
        p = (1 - gamma) * w / w.sum() + gamma / k
        out[t] = p
        i = int(np.searchsorted(np.cumsum(p)[:-1], uniforms[t], side="right"))
        x_hat = rewards[t, i] / p[i]
        w[i] *= math.exp(gamma * x_hat / k)
        w /= w.sum()
    return out


def equivalence(k: int = 4, horizon: int = 300, seed: int = 0, variant: str = "correct"):
    """max_t |p_t(core mixer) − p_t(Auer)| on a random reward table and shared draws."""
    gamma = 0.2
    rng = np.random.default_rng(np.random.SeedSequence([seed, 3]))
    rewards = rng.random((horizon, k))
    keys = prng.replicate_keys([seed], stream=4)
    uniforms = np.array([prng.uniform(keys, t, 1)[0, 0] for t in range(horizon)])
    mixer = make_mixer(gamma, k, variant)
    state = mixer.init(k, seed=[0])
    core = np.empty((horizon, k))
    with _quiet(variant):
        core = _core_probs(mixer, state, rewards, uniforms, core)
    err = float(np.abs(core - auer_exp3_probs(rewards, uniforms, gamma)).max())
    return Measurement(f"equivalence:K={k}:T={horizon}", err, 1e-9)


def _quiet(variant: str):
    """Without exploration a weight can reach 0 and x/p is 0/0: the broken variant's
    NaN gains are part of what is being shown, not a warning to raise."""
    if variant == "no_exploration":
        return np.errstate(divide="ignore", invalid="ignore")
    return contextlib.nullcontext()


def _core_probs(mixer, state, rewards, uniforms, core):
    horizon, k = rewards.shape
    for t in range(horizon):
        p = mixer.weights(state)
        core[t] = p[0]
        i = prng.categorical(uniforms[t : t + 1][None, :], p)[0, 0]
        counts = np.zeros((1, k), dtype=np.int64)
        counts[0, i] = 1
        _, state = mixer.update(state, rewards[t][None, :], counts)
    return core


def run(budget: Budget, variant: str = "correct", seed: int = 0) -> list[Measurement]:
    """Every adversary, the γ-form at γ = 0.1 and the tuned form, K = 3 (and K = 5 on the
    default budget); plus the equivalence with Auer's transcription."""
    out = [equivalence(seed=seed, variant=variant)]
    arms = (3,) if budget.name == "quick" else (3, 5)
    for j, name in enumerate(ADVERSARIES):
        for k in arms:
            for gamma in (0.1, None):
                out.append(
                    regret(
                        name,
                        gamma,
                        k,
                        budget.exp3_horizon,
                        budget.exp3_replicates,
                        seed + j,
                        variant,
                    )
                )
    return out
