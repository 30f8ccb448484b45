"""Statement 5: the convergence bounds of AMA-R and AMA-S, as formulas of an instance's
constants (B, G, D, k), the horizon T, the batch size b and the step sizes.
Derivations: ``derivations/05_ama_r.md`` and ``derivations/05_ama_s.md``.

Every bound is on E[max_i E_i(θ̄_T)] − OPT where θ̄_T is ``oracle.average_theta`` (the
mean of θ_1..θ_T, what :func:`amasim.driver.run` evaluates).

>>> s = ama_r_steps(B=1.0, G=1.0, D=1.0, k=2, T=100)
>>> round(theorem_r(1.0, 1.0, 1.0, 2, 100, 1, *s), 4)
0.3455
>>> s = ama_s_ix_steps(B=1.0, G=1.0, D=1.0, k=3, T=10_000, b=8)
>>> round(theorem_ix(1.0, 1.0, 1.0, 3, 10_000, 8, *s), 4)  # (DG + 2.65 B)/√T + DG/T
0.0366
"""

from __future__ import annotations

import math

import numpy as np

from amasim.ama_s_ix import ix_steps

__all__ = [
    "prop2_steps",
    "prop2",
    "ama_r_steps",
    "theorem_r",
    "ama_s_steps",
    "theorem_s",
    "martingale_max",
    "notes_reconstruction",
    "ama_s_ix_steps",
    "theorem_ix",
    "theorem_ix_hp",
    "ix_lemma",
]

E1 = math.e - 1.0


# ----------------------------------------------------------------------- AMA-R
def prop2_steps(B: float, G: float, D: float, k: int, T: int) -> tuple[float, float]:
    """(η_θ, η_α) of Nemirovski et al. (2009, §3.2) behind Group DRO Prop. 2.

    Mirror SA on Θ × Δ_k with ω = ‖θ‖²/(2D²) + entropy/(2 ln k), stochastic gradients as in
    Sagawa et al.'s Alg. 1 (one group sampled uniformly, weight k): M_θ = kG, M_α = kB,
    M*² = D²M_θ² + 2 ln k·M_α², γ = 2/(M*√(5T)); the Euclidean step is γD², the
    entropic one 2γ ln k.
    """
    m_star = k * math.sqrt(D * D * G * G + 2.0 * B * B * math.log(k))
    gamma = 2.0 / (m_star * math.sqrt(5.0 * T))
    return gamma * D * D, 2.0 * gamma * math.log(k)


def prop2(B: float, G: float, D: float, k: int, T: int) -> float:
    """Sagawa et al. (2019) Prop. 2 as stated: 2m·√(10(B_Θ²B_∇² + B_ℓ² log m)/T)."""
    return 2.0 * k * math.sqrt(10.0 * (D * D * G * G + B * B * math.log(k)) / T)


def ama_r_steps(B: float, G: float, D: float, k: int, T: int) -> tuple[float, float]:
    """(η_θ, η_α) minimising :func:`theorem_r`'s leading terms: D/(G√T), √(ln k/(T·B(B/8+DG)))."""
    return D / (G * math.sqrt(T)), math.sqrt(math.log(k) / (T * B * (B / 8.0 + D * G)))


def theorem_r(
    B: float, G: float, D: float, k: int, T: int, b: int, eta_theta: float, eta_alpha: float
) -> float:
    """Theorem R (05_ama_r.md): AMA-R as coded (the updated α weights the θ step), b
    examples per task per step, any step sizes:

    T·bound = D²/(2η_θ) + η_θ T G²/2          projected SGD vs the fixed θ*
            + D G η_α B T                     θ step uses α_{t+1}, not α_t
            + ln k/η_α + η_α T B²/8           Hedge on batch scores in [0, B]
            + B √(T ln k/(2b))                realised best task vs noisy scores
            + D G                             average of θ_1..θ_T, not θ_0..θ_{T−1}
    """
    total = (
        D * D / (2 * eta_theta)
        + eta_theta * T * G * G / 2
        + D * G * eta_alpha * B * T
        + math.log(k) / eta_alpha
        + eta_alpha * T * B * B / 8
        + B * math.sqrt(T * math.log(k) / (2 * b))
        + D * G
    )
    return total / T


# ----------------------------------------------------------------------- AMA-S
def ama_s_steps(B: float, G: float, D: float, k: int, T: int) -> tuple[float, float, float]:
    """(η_θ, η_α, γ): projected SGD D/(G√T); EXP3 tuned as Auer et al. Cor. 3.2 with
    g = T·B, rewards scaled by B: γ = min(1, √(k ln k/((e−1)T))), η_α = γ/(kB)."""
    gamma = min(1.0, math.sqrt(k * math.log(k) / (E1 * T)))
    return D / (G * math.sqrt(T)), gamma / (k * B), gamma


def martingale_max(B: float, k: int, T: int, variance: float) -> float:
    """E max_j Σ_t X_tj for k martingale difference sequences with X ≤ B and conditional
    variance ≤ ``variance``: inf_λ [ln k + T·v·ψ(λB)/B²]/λ, ψ(u) = e^u − 1 − u (Bennett)."""
    if k == 1:
        return 0.0
    grid = np.exp(np.linspace(-12.0, 4.0, 4001)) / B  # λ; ψ(λB) grows like e^{λB}
    psi = np.expm1(grid * B) - grid * B
    values = (math.log(k) + T * variance * psi / (B * B)) / grid
    return float(values.min())


def theorem_s(
    B: float,
    G: float,
    D: float,
    k: int,
    T: int,
    b: int,
    eta_theta: float,
    eta_alpha: float,
    gamma: float,
) -> float:
    """Theorem S (05_ama_s.md): AMA-S as coded, batch of b drawn from α = (1−γ)q + γ/k,
    importance-weighted gains, η_α ≤ γ/(kB):

    T·bound = D²/(2η_θ) + η_θ T G²/2                   projected SGD vs the fixed θ*
            + γ T B + (1−γ) ln k/η_α + (e−2) η_α k B² T   EXP3 (Auer Thm 3.1 proof)
            + (1−γ)·M                                  realised best task vs estimates
            + D G                                      average of θ_1..θ_T
    with M = :func:`martingale_max` at conditional variance B²((k/γ − 1)/b + 1/4).
    """
    if eta_alpha * B * k / gamma > 1 + 1e-12:
        raise ValueError("Theorem S needs η_α·B·k/γ ≤ 1 (so that η_α·ĝ ≤ 1)")
    variance = B * B * ((k / gamma - 1.0) / b + 0.25)
    total = (
        D * D / (2 * eta_theta)
        + eta_theta * T * G * G / 2
        + gamma * T * B
        + (1 - gamma) * math.log(k) / eta_alpha
        + (math.e - 2) * eta_alpha * k * B * B * T
        + (1 - gamma) * martingale_max(B, k, T, variance)
        + D * G
    )
    return total / T


def notes_reconstruction(B: float, G: float, D: float, k: int, T: int) -> float:
    """The notes' §4 conjecture (DG + 2√(e−1)·B·√(k ln k))/√T — not a theorem (see 05_ama_s.md)."""
    return (D * G + 2 * math.sqrt(E1) * B * math.sqrt(k * math.log(k))) / math.sqrt(T)


# -------------------------------------------------------------------- AMA-S-IX
def ama_s_ix_steps(
    B: float, G: float, D: float, k: int, T: int, b: int
) -> tuple[float, float, float]:
    """(η_θ, η, γ) of Theorem IX's tuning: D/(G√T), and :func:`amasim.ama_s_ix.ix_steps`
    (γ = √(ln k/(2bkT)), η = √(2 ln k/(T(k/b + 1)))/B)."""
    eta, gamma = ix_steps(T, k, b, B)
    return D / (G * math.sqrt(T)), eta, gamma


def theorem_ix(
    B: float,
    G: float,
    D: float,
    k: int,
    T: int,
    b: int,
    eta_theta: float,
    eta: float,
    gamma: float,
) -> float:
    """Theorem IX (07_ama_s_ix.md): AMA-S-IX as coded, b examples a step drawn from α_t,
    EXP3-IX on the losses B − score, any η, γ > 0:

    T·bound = D²/(2η_θ) + η_θ T G²/2                   projected SGD vs the fixed θ*
            + ln k/η + η T B² (k/b + 1)/2              Hedge on ℓ̂ ≥ 0 (second moment)
            + γ k B T                                 the IX bias of the learner's loss
            + B ln k/(2γb)                            realised best task (Lemma IX)
            + D G                                     average of θ_1..θ_T
    """
    total = (
        D * D / (2 * eta_theta)
        + eta_theta * T * G * G / 2
        + math.log(k) / eta
        + eta * T * B * B * (k / b + 1) / 2
        + gamma * k * B * T
        + B * math.log(k) / (2 * gamma * b)
        + D * G
    )
    return total / T


def theorem_ix_hp(
    B: float,
    G: float,
    D: float,
    k: int,
    T: int,
    b: int,
    eta_theta: float,
    eta: float,
    gamma: float,
    delta: float,
) -> float:
    """Theorem IX, high-probability form: with probability ≥ 1 − δ, gap_T ≤ this.

    T·bound = D²/(2η_θ) + η_θ T G²/2 + 2DG√(2T ln(4/δ))          SGD + Azuma (θ noise)
            + ln k/η + (ηB/2 + γ)(kBT + B ln(4/δ)/(2γb))          Hedge + IX bias, Lemma IX
            + B ln(4k/δ)/(2γb)                                  Lemma IX, every task
            + B √(T ln(4/δ)/(2b))                                Hoeffding (batch scores)
            + D G
    """
    log4 = math.log(4 / delta)
    total = (
        D * D / (2 * eta_theta)
        + eta_theta * T * G * G / 2
        + 2 * D * G * math.sqrt(2 * T * log4)
        + math.log(k) / eta
        + (eta * B / 2 + gamma) * (k * B * T + B * log4 / (2 * gamma * b))
        + B * math.log(4 * k / delta) / (2 * gamma * b)
        + B * math.sqrt(T * log4 / (2 * b))
        + D * G
    )
    return total / T


def ix_lemma(B: float, k: int, b: int, gamma: float, delta: float) -> float:
    """Lemma IX (Neu 2015, Lemma 1, for batches of b and losses in [0, B]): with probability
    ≥ 1 − δ, simultaneously for every task j, Σ_t (ℓ̂_tj − ℓ_tj) ≤ B ln(k/δ)/(2γb)."""
    return B * math.log(k / delta) / (2 * gamma * b)
