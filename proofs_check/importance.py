"""Statement 3: AMA-S's importance-weighted gain is unbiased and bounded by B·k/c.
Derivation: ``derivations/03_importance.md``.

A batch of b examples is b i.i.d. draws (task i ~ α, then an example uniform in task i),
α = (1 − c)·q + c/k.  The mixer's gain for task i is
ĝ_i = n_i/(b·α_i)·ê_i (:func:`amasim.mixers.importance_weighted` of the per-task means
of :func:`amasim.scores.task_means`).  Claims, for every θ, q, c ∈ (0, 1], b ≥ 1:

* ``unbiased`` — E[ĝ_i] = E_i(θ), computed *exactly* by enumerating all (N)^b ordered
  batches of a tiny instance (N examples in all) with their probabilities;
* ``bounded``  — 0 ≤ ĝ_i ≤ B_θ·k/c over every batch, B_θ = the largest score at θ;
* ``mixer``    — ``ama_s``'s update equals ``eg_step`` on exactly this gain (so the
  estimate checked is the one the mixer uses).

Broken variants: ``no_importance_weighting`` (ĝ_i = ê_i for observed tasks: biased by
P(n_i > 0)), ``biased_sampler`` (batch drawn from q, weighted by α), ``no_smoothing``
(α = q: unbiased, but the weights exceed k/c).
"""

from __future__ import annotations

import itertools

import numpy as np

from amasim import mixers
from amasim.problems import PROBLEMS, make_problem
from amasim.scores import example_scores, task_means
from proofs_check.base import Budget, Measurement

__all__ = ["VARIANTS", "TinyCase", "draw_case", "enumerate_gain", "check_case", "run"]

VARIANTS = ("correct", "no_importance_weighting", "biased_sampler", "no_smoothing")


class TinyCase:
    """A tiny problem (≤ 4 examples per task), a point θ, weights q, smoothing c, batch b."""

    def __init__(self, family, sizes, dim, seed, theta, q, c, batch):
        self.problem = make_problem(family, sizes=tuple(sizes), dim=dim, seed=seed)
        self.theta, self.q, self.c, self.batch = np.asarray(theta), np.asarray(q), c, batch
        self.label = f"tiny-{family}{list(sizes)}b{batch}c{c:.2f}s{seed}"


def draw_case(rng: np.random.Generator) -> TinyCase:
    """A random tiny case (q is made skewed half of the time so α reaches c/k)."""
    k = int(rng.integers(2, 4))
    sizes = [int(v) for v in rng.integers(1, 5, size=k)]
    q = rng.dirichlet(np.full(k, 0.5))
    if rng.random() < 0.5:
        q = np.full(k, 0.01 / (k - 1))
        q[0] = 0.99
    dim = int(rng.integers(1, 4))
    theta = rng.standard_normal(dim)
    theta *= 3.0 * rng.random() / np.linalg.norm(theta)
    return TinyCase(
        str(rng.choice(PROBLEMS)),
        sizes,
        dim,
        int(rng.integers(0, 2**20)),
        theta,
        q,
        float(rng.uniform(0.05, 1.0)),
        int(rng.integers(1, 4)),
    )


def enumerate_gain(case: TinyCase, variant: str = "correct"):
    """Every ordered batch: probabilities (M,), gains (M, k), per-example scores (N,)."""
    p = case.problem
    k, sizes = p.num_tasks, np.asarray(p.sizes)
    alpha = case.q if variant == "no_smoothing" else mixers.smooth(case.q, case.c)
    sampler = case.q if variant == "biased_sampler" else alpha
    values, _ = example_scores("clipped", p.example_losses(case.theta), p.reference_losses)
    outcomes = np.array(list(itertools.product(range(len(values)), repeat=case.batch)))
    tasks = p.task_ids[outcomes]  # (M, b)
    prob = np.prod((sampler / sizes)[tasks], axis=1)
    means, counts = task_means(values[outcomes], tasks, k)
    if variant == "no_importance_weighting":
        gains = np.where(counts > 0, means, 0.0)
    else:
        gains = mixers.importance_weighted(means, counts, np.broadcast_to(alpha, means.shape))
    return prob, gains, values, means, counts, alpha


def check_case(case: TinyCase, variant: str = "correct") -> list[Measurement]:
    """The three measurements of the module doc on one tiny case."""
    prob, gains, values, means, counts, alpha = enumerate_gain(case, variant)
    target = case.problem.task_scores(case.theta)
    expected = prob @ gains
    scale = 1.0 + float(np.abs(target).max())
    k = case.problem.num_tasks
    b_theta = float(values.max())
    out = [
        Measurement(
            f"{case.label}:unbiased",
            float(np.abs(expected - target).max()),
            1e-10 * scale,
            0.0,
            {"total_probability": float(prob.sum())},
        ),
        Measurement(
            f"{case.label}:bounded", float(gains.max()), b_theta * k / case.c, 1e-12 * scale
        ),
        Measurement(f"{case.label}:nonnegative", float(-gains.min()), 0.0),
    ]
    # the mixer feeds exactly this gain to eg_step (checked on a few batches)
    eta = 0.3
    mixer = mixers.ama_s(eta, case.c)
    state = mixers.EGState(np.log(case.q)[None, :], alpha[None, :])
    err = 0.0
    for j in np.linspace(0, len(prob) - 1, 5).astype(int):
        _, new = mixer.update(state, means[j : j + 1], counts[j : j + 1])
        ref, _ = mixers.eg_step(np.log(case.q)[None, :], gains[j : j + 1], eta)
        err = max(err, float(np.abs(new.log_weights - ref).max()))
    out.append(Measurement(f"{case.label}:mixer", err, 1e-12))
    return out


def run(budget: Budget, variant: str = "correct", seed: int = 0) -> list[Measurement]:
    """``2 × budget.instances`` random tiny cases."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 5]))
    return [m for _ in range(2 * budget.instances) for m in check_case(draw_case(rng), variant)]
