"""Statement 6: reweighting and resampling have the same expected update; resampling has
no larger variance (Li et al., "Upsample or Upweight?").  Derivation:
``derivations/06_reweight_vs_resample.md``.

At a fixed θ and task weights α, with per-example score gradients ∇s_z, task means μ_i,
task second moments m_i = mean_{z∈D_i} ‖∇s_z‖² and the natural task frequencies
p_i = |D_i|/N, the minibatch estimates of b i.i.d. examples are

* resample (upsample, AMA-S):  z ~ α (task), uniform in the task, weight 1;
* reweight (upweight, Li et al.): z uniform over the union (task ~ p), weight α_i/p_i.

Both have mean Σ_i α_i μ_i = ∇_θ Σ_i α_i E_i(θ); with r_i = α_i/p_i,

  b·(tr Cov_reweight − tr Cov_resample) = Σ_i p_i m_i r_i (r_i − 1)        (identity)

which is ≥ 0 when m_i is non-decreasing in r_i (Chebyshev's sum inequality), in particular
when every task has the same m_i (then it is m·χ²(α‖p)).  It can be negative otherwise.

Check ``reweight_resample`` (proven): (a) exact expectation of the *code's* sampler
(:func:`amasim.prng.categorical` hits task i with probability exactly computable on its
2⁻⁵³ grid) equals Σ α_i μ_i, with μ_i the simulator's own gradient; (b) Monte Carlo
frequencies of :meth:`SimulatedOracle.sample` batches drawn like :func:`amasim.driver.run`
draws them; (c) the identity; (d) the inequality for α satisfying the hypothesis.
Broken variant ``biased_sampler``: tasks drawn ∝ |D_i| (forgetting to resample).

Check ``li_variance`` (measured, not proven): the inequality at α = α* (the minimax
weights AMA converges to) and at random α, hypothesis or not; and AMA-R's own stratified
reweighting (b/k examples per task, weight α_i) against resampling.
"""

from __future__ import annotations

import math

import numpy as np

from amasim import prng
from amasim.scores import example_scores
from amasim.simulator import SimulatedOracle
from proofs_check.base import Budget, Measurement
from proofs_check.convexity import code_gradient
from proofs_check.instances import Instance, draw_instances

__all__ = ["VARIANTS", "moments", "sampler_probabilities", "check_instance", "run", "run_li"]

VARIANTS = ("correct", "biased_sampler")
_BATCH = 8


def example_gradients(inst: Instance, theta: np.ndarray) -> np.ndarray:
    """∇s_z(θ) of the clipped score for every example, shape (n, d)."""
    p = inst.problem
    preds = p.features @ theta
    if p.loss == "squared":
        slope = preds - p.targets
    else:
        slope = -1.0 / (1.0 + np.exp(preds - p.targets))
    _, dvalues = example_scores("clipped", p.example_losses(theta), p.reference_losses)
    return (dvalues * slope)[:, None] * p.features


def moments(inst: Instance, theta: np.ndarray):
    """(μ (k,d), m (k,), p (k,)) at θ."""
    p = inst.problem
    grads = example_gradients(inst, theta)
    sizes = np.asarray(p.sizes, dtype=float)
    mu = np.add.reduceat(grads, p.offsets[:-1], axis=0) / sizes[:, None]
    m = np.add.reduceat((grads * grads).sum(1), p.offsets[:-1]) / sizes
    return mu, m, sizes / sizes.sum()


def variances(mu, m, p, alpha, b: int) -> dict[str, float]:
    """tr Cov of each b-example estimate (closed forms, derivation §2)."""
    mean = alpha @ mu
    k = len(alpha)
    within = m - (mu * mu).sum(1)
    return {
        "resample": float(alpha @ m - mean @ mean) / b,
        "reweight": float((alpha**2 / p) @ m - mean @ mean) / b,
        "stratified": float((alpha**2) @ within) * k / b,
    }


def sampler_probabilities(alpha: np.ndarray) -> np.ndarray:
    """P(categorical(u, α) = i) exactly, u uniform on the grid {j·2⁻⁵³}."""
    grid = 2.0**53
    cdf = np.cumsum(alpha)
    edges = np.concatenate([[0.0], np.ceil(cdf[:-1] * grid), [grid]])
    return np.diff(edges) / grid


def _sampler_weights(inst: Instance, alpha: np.ndarray, variant: str) -> np.ndarray:
    p = np.asarray(inst.problem.sizes, dtype=float)
    return p / p.sum() if variant == "biased_sampler" else alpha


def _frequency_z(inst: Instance, alpha: np.ndarray, variant: str, draws: int, seed: int) -> float:
    """Largest |z| of example frequencies in batches drawn like train.run (resample)."""
    oracle = SimulatedOracle(inst.problem)
    oracle.reset([seed])
    keys = prng.replicate_keys([seed], stream=0)
    sampler = _sampler_weights(inst, alpha, variant)[None, :]
    counts = np.zeros(len(inst.problem.targets))
    steps = draws // 256
    for t in range(steps):
        ids = prng.categorical(prng.uniform(keys, t, 256), sampler)
        np.add.at(counts, oracle.sample(ids).data[0], 1)
    total = steps * 256
    sizes = np.asarray(inst.problem.sizes)
    target = (alpha / sizes)[inst.problem.task_ids]
    z = (counts / total - target) / np.sqrt(target * (1 - target) / total)
    return float(np.abs(z).max())


def check_instance(inst: Instance, variant: str = "correct", seed: int = 0, draws: int = 40_960):
    """(a)–(d) of the module doc at a random θ, random α, and an α meeting the hypothesis."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 6]))
    theta = rng.standard_normal(inst.problem.dim)
    theta *= inst.D * rng.random() / np.linalg.norm(theta)
    mu, m, p = moments(inst, theta)
    k, out = inst.k, []
    code_mu = np.array([code_gradient(inst, theta, i) for i in range(k)])
    scale = 1.0 + float(np.abs(code_mu).max())
    out.append(
        Measurement(f"{inst.label}:per-example", float(np.abs(code_mu - mu).max()), 1e-6 * scale)
    )
    alpha = rng.dirichlet(np.ones(k))
    sampled = sampler_probabilities(_sampler_weights(inst, alpha, variant))
    err = float(np.linalg.norm(sampled @ code_mu - alpha @ code_mu))
    out.append(Measurement(f"{inst.label}:expectation", err, 1e-12 * scale))
    nz = len(inst.problem.targets)
    out.append(
        Measurement(
            f"{inst.label}:frequencies",
            _frequency_z(inst, alpha, variant, draws, seed),
            math.sqrt(2 * math.log(2 * nz)) + 2.0,
        )
    )
    # the identity, then the inequality under the hypothesis (r sorted like m)
    r = np.sort(rng.uniform(0.2, 5.0, size=k))[np.argsort(np.argsort(m))]
    hyp = p * r / (p @ r)
    v = variances(mu, m, p, hyp, _BATCH)
    r = hyp / p
    gap = _BATCH * (v["reweight"] - v["resample"])
    out.append(
        Measurement(
            f"{inst.label}:identity",
            abs(gap - float(p @ (m * r * (r - 1)))),
            1e-9 * (1 + float(m.max()) * float(r.max()) ** 2),
        )
    )
    out.append(
        Measurement(
            f"{inst.label}:variance",
            v["resample"],
            v["reweight"],
            1e-12 * (1 + v["reweight"]),
            {"alpha": hyp.tolist()},
        )
    )
    return out


def run(budget: Budget, variant: str = "correct", seed: int = 0) -> list[Measurement]:
    insts = draw_instances(budget.instances, seed)
    return [m for j, inst in enumerate(insts) for m in check_instance(inst, variant, seed + j)]


def run_li(budget: Budget, variant: str = "correct", seed: int = 0) -> list[Measurement]:
    """Li et al.'s inequality where it is not proven: α*, random α; and AMA-R's reweighting."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7]))
    out = []
    for inst in draw_instances(budget.instances, seed):
        for where, theta in (("theta*", inst.theta_star), ("random", None)):
            if theta is None:
                theta = rng.standard_normal(inst.problem.dim)
                theta *= inst.D * rng.random() / np.linalg.norm(theta)
            mu, m, p = moments(inst, theta)
            for name, alpha in (
                ("alpha*", inst.alpha_star),
                ("random", rng.dirichlet(np.ones(inst.k))),
            ):
                v = variances(mu, m, p, alpha, _BATCH * inst.k)
                label = f"{inst.label}:{where}:{name}"
                out.append(
                    Measurement(
                        f"{label}:vs-upweight",
                        v["resample"],
                        v["reweight"],
                        1e-12 * (1 + v["reweight"]),
                    )
                )
                out.append(
                    Measurement(
                        f"{label}:vs-ama-r",
                        v["resample"],
                        v["stratified"],
                        1e-12 * (1 + v["stratified"]),
                    )
                )
    return out
