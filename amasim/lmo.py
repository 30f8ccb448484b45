"""The Linear Mixing Optimization (LMO) family (Chen et al. 2024, "Aioli"; notes §7).

Every method sets proportions p ∈ Δ^m over m groups to minimise the summed loss under a
mixing law.  Under the dynamic (linear) law ``L_i^{t+1} = L_i^t − Σ_j A^t_ij p_j`` the
greedy round is one exponentiated-gradient step on the column sums of A::

    p_j ← p_j · exp(η Σ_i A^t_ij),  renormalised                      (:func:`lmo_step`)

==================  =========================================  ==========================
method              A^t                                        ``scores`` of ``update``
==================  =========================================  ==========================
DoReMi              diag(excess loss)                          :func:`amasim.mixers.doremi`
:func:`skill_it`    A_ij = G_ji · L_i^t (G measured once)      per-group losses L^t (…, m)
:func:`aioli`       measured each round (LearnParams)           the estimate A^t (…, m, m)
:func:`dml_sweep`   static log-linear law, fitted by a sweep   (static weights)
==================  =========================================  ==========================

The mixers follow :mod:`amasim.mixers`' contract (pure ``init``/``update``/``weights``
over a ``NamedTuple`` state, leading replicate axes allowed).

>>> import numpy as np
>>> A = np.array([[0.5, 0.1], [0.0, 0.2]])
>>> log_w, w = lmo_step(np.log([0.5, 0.5]), A, step_size=1.0)   # gains = (0.5, 0.3)
>>> bool(w[0] > w[1]), bool(abs(w.sum() - 1) < 1e-12)
(True, True)
>>> mixer = aioli(step_size=1.0)
>>> state = mixer.init(2, seed=0)
>>> w, state = mixer.update(state, A)   # scores = the estimated A
>>> bool(np.allclose(w, lmo_step(np.log([0.5, 0.5]), A, 1.0)[1]))
True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from amasim import mixers, prng
from amasim.mixers import EGState, Mixer, check_positive, eg_step

__all__ = [
    "lmo_step",
    "check_groups",
    "skill_it",
    "skills_graph_from_runs",
    "SkillItState",
    "AioliState",
    "aioli",
    "smoothed_one_hot",
    "estimate_A",
    "sweep_orders",
    "DMLParams",
    "dml_canonical",
    "dml_law",
    "dml_fit",
    "dml_optimal_mixture",
    "dml_design",
    "dml_sweep",
    "dml",
]


# --------------------------------------------------------------------------- checks
def _square(name: str, value: Any) -> np.ndarray:
    """``value`` as a finite float array of shape (..., m, m)."""
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim < 2 or arr.shape[-1] != arr.shape[-2]:
        raise ValueError(f"{name} has shape {arr.shape}: expected a square (..., m, m) matrix")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _check_epsilon(epsilon: Any, m: int | None = None) -> float:
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float, np.floating)):
        raise TypeError(f"epsilon must be a real number, got {type(epsilon).__name__}")
    low = 1.0 / m if m is not None else 0.0
    if not low < epsilon < 1.0:
        where = f"(1/m, 1) = ({low:.4g}, 1) for m={m}" if m is not None else "(1/m, 1)"
        raise ValueError(
            f"epsilon={epsilon!r} must lie in {where}: the weight on the swept group must "
            "exceed the others' so the smoothed one-hot mixtures can be unmixed"
        )
    return float(epsilon)


def check_groups(m: Any, name: str = "m") -> int:
    """``m`` as an int >= 2 (LearnParams sweeps over two or more groups)."""
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(m).__name__}")
    if m < 2:
        raise ValueError(f"{name}={m} must be >= 2: LearnParams sweeps over two or more groups")
    return int(m)


def _check_state_shape(name: str, arr: np.ndarray, shape: tuple[int, ...]) -> None:
    if arr.shape != shape:
        raise ValueError(
            f"{name} has shape {arr.shape} but the state holds {shape}: pass one entry per "
            "group (and per replicate)"
        )


# ----------------------------------------------------------------- building block
def lmo_step(
    weights_log: np.ndarray, A: np.ndarray, step_size: float
) -> tuple[np.ndarray, np.ndarray]:
    """The greedy LMO step: log p ← log p + η·Σ_i A_ij, renormalised (via ``eg_step``).

    ``A`` has shape (..., m, m), ``A[..., i, j]`` = how much training on group j lowers
    group i's loss; ``weights_log`` (..., m).  Returns the new normalised log weights and
    the weights.  A diagonal A = diag(s) is the EG step on the scores s (DoReMi, AMA-R).
    """
    eta = check_positive("step_size", step_size)
    a = _square("A", A)
    log_w = np.asarray(weights_log, dtype=np.float64)
    if log_w.shape[-1:] != a.shape[-1:]:
        raise ValueError(
            f"weights_log has shape {log_w.shape} but A has shape {a.shape}: "
            "expected (..., m) with the m of A"
        )
    gains = np.add.reduce(a, axis=-2)  # gains_j = Σ_i A_ij
    return eg_step(log_w, gains, eta)


def _eg_init(num_tasks: int, seed: int | Sequence[int]) -> EGState:
    shape = (*mixers.replicate_shape(num_tasks, seed), num_tasks)
    return EGState(np.full(shape, -np.log(num_tasks)), np.full(shape, 1.0 / num_tasks))


def _no_counts(counts: Any, name: str) -> None:
    if counts is not None:
        raise ValueError(
            f"counts={counts!r}: {name} takes full-information scores; pass counts=None"
        )


# ------------------------------------------------------------------------ Skill-It
class SkillItState(NamedTuple):
    """Skill-It's state: the EG player and the skills graph G (..., m, m) it uses."""

    log_weights: np.ndarray
    weights: np.ndarray
    graph: np.ndarray


def skill_it(step_size: float, *, graph: Any = None, apply: str = "resample") -> Mixer:
    """Skill-It (Chen et al. 2023) as an LMO method: A^t_ij = G_ji · L_i^t.

    ``graph`` is the fixed skills graph G (m, m), ``G[j, i]`` = how much training on group
    j alone lowers group i's loss (:func:`skills_graph_from_runs`), or one graph per
    replicate (R, m, m).  Without ``graph`` the mixer measures it as Skill-It does: its
    signal carries a sweep of m single-group runs from the start model (one tenth of the
    steps), which the driver runs and feeds to the first ``update`` as a
    :class:`~amasim.mixers.Sweep`.  Afterwards ``update`` takes the current per-group
    (validation) losses L^t, shape (..., m); the gains are Σ_i G_ji L_i = (G L)_j.  With
    G = I this is EG on the losses (Group DRO's step).
    """
    g = None if graph is None else _square("graph", graph)
    if g is not None and g.ndim > 3:
        raise ValueError(f"graph has shape {g.shape}: expected (m, m) or (R, m, m)")
    eta = check_positive("step_size", step_size)
    mixers.check_apply(apply)

    def init(num_tasks: int, seed: int | Sequence[int] = 0) -> SkillItState:
        eg = _eg_init(num_tasks, seed)
        if g is None:
            return SkillItState(*eg, np.zeros((*eg.weights.shape, num_tasks)))
        if num_tasks != g.shape[-1]:
            m = g.shape[-1]
            raise ValueError(f"num_tasks={num_tasks} but graph is {m}×{m}: one row per group")
        return SkillItState(*eg, np.broadcast_to(g, (*eg.weights.shape, num_tasks)))

    def update(state: SkillItState, scores: Any, counts: Any = None):
        _no_counts(counts, "skill_it")
        m = state.weights.shape[-1]
        if isinstance(scores, mixers.Sweep):  # the single-group runs: measure G
            measured = _graphs_from_sweep(scores, state.weights.shape)
            return state.weights, state._replace(graph=measured)
        losses = mixers.check_scores(scores, m)
        _check_state_shape("scores", losses, state.log_weights.shape)
        A = np.swapaxes(state.graph, -1, -2) * losses[..., :, None]  # A_ij = G_ji L_i
        log_w, w = lmo_step(state.log_weights, A, eta)
        return w, SkillItState(log_w, w, state.graph)

    requires = ("group_validation",)
    signal = mixers.Signal("validation", design=None if g is not None else np.eye, share=10)
    return Mixer(init, update, mixers.played_weights, "loss", apply, "skill-it", requires, signal)


def _graphs_from_sweep(sweep: mixers.Sweep, shape: tuple[int, ...]) -> np.ndarray:
    """Skill-It's graph of every replicate from a sweep over the one-hot mixtures."""
    m = shape[-1]
    if not np.array_equal(np.asarray(sweep.design), np.eye(m)):
        raise ValueError("Skill-It's sweep must run the m one-hot mixtures (design = eye(m))")
    start = np.asarray(sweep.start, dtype=np.float64).reshape(-1, m)
    after = np.asarray(sweep.after, dtype=np.float64).reshape(-1, m, m)
    graphs = [skills_graph_from_runs(b, a) for b, a in zip(start, after)]
    return np.stack(graphs).reshape(*shape, m)


def skills_graph_from_runs(loss_before: Any, loss_after: Any) -> np.ndarray:
    """The skills graph from single-group runs: ``G[j, i] = loss_before[i] − loss_after[j, i]``.

    ``loss_before`` (m,): every group's loss at the starting model; ``loss_after`` (m, m):
    row j holds every group's loss after training on group j alone.  G[j, i] > 0 means
    training on j helps i.  (Skill-It's graph; negative entries are kept.)

    >>> skills_graph_from_runs([2.0, 3.0], [[1.0, 2.5], [2.0, 1.0]]).tolist()
    [[1.0, 0.5], [0.0, 2.0]]
    """
    before = np.asarray(loss_before, dtype=np.float64)
    after = np.asarray(loss_after, dtype=np.float64)
    if before.ndim != 1 or before.size < 1:
        raise ValueError(f"loss_before has shape {before.shape}: expected (m,)")
    m = before.size
    if after.shape != (m, m):
        raise ValueError(
            f"loss_after has shape {after.shape}: expected ({m}, {m}), row j = losses after "
            "training on group j alone"
        )
    if not (np.isfinite(before).all() and np.isfinite(after).all()):
        raise ValueError("loss_before and loss_after must be finite")
    return before[None, :] - after


# --------------------------------------------------------------------------- Aioli
class AioliState(NamedTuple):
    """Aioli's state; shapes carry the leading replicate axes of ``seed``.

    ``log_weights``, ``weights`` (..., m): the EG player.  ``A`` (..., m, m): the (EMA'd)
    estimate used by the last update (zeros before the first).  ``num_updates``: rounds
    done; it is also the RNG position — round t's sweep orders are a pure function of
    ``(keys, t)`` (:mod:`amasim.prng`).  ``keys`` (R,) uint64, one per replicate
    (R = 1 for an int seed).  ``epsilon``, ``sweeps``: configuration the driver
    :func:`aioli_round` reads.
    """

    log_weights: np.ndarray
    weights: np.ndarray
    A: np.ndarray
    num_updates: int
    keys: np.ndarray
    epsilon: float
    sweeps: int


def aioli(
    step_size: float,
    *,
    sweeps: int = 2,
    epsilon: float = 0.75,
    ema: float | None = None,
    normalise: bool = False,
) -> Mixer:
    """Aioli (Chen et al. 2024): the greedy LMO step on an A measured every round.

    ``update(state, scores)`` takes ``scores`` = the estimated A^t, shape (..., m, m)
    (``A[..., i, j]``: drop of group i's loss per unit proportion of group j), as
    :func:`estimate_A` returns it; :func:`aioli_round` measures it with short training
    rounds and calls ``update``.  Before the EG step A is optionally normalised
    (``normalise``: divided by max |A_ij| per replicate, so η is scale-free) and smoothed
    (``ema`` = γ ∈ (0, 1]: Ā^t = γ·A^t + (1 − γ)·Ā^{t−1}, Ā^1 = A^1).  ``counts`` must be
    ``None``.  ``sweeps`` k ≥ 1 and ``epsilon`` ε ∈ (1/m, 1) configure LearnParams.
    """
    eta = check_positive("step_size", step_size)
    if isinstance(sweeps, bool) or not isinstance(sweeps, (int, np.integer)):
        raise TypeError(f"sweeps must be an int, got {type(sweeps).__name__}")
    if sweeps < 1:
        raise ValueError(f"sweeps={sweeps} must be >= 1: LearnParams needs one sweep at least")
    eps = _check_epsilon(epsilon)
    if ema is not None:
        gamma = check_positive("ema", ema)
        if gamma > 1:
            raise ValueError(f"ema={ema!r} must lie in (0, 1]: the weight of the new estimate")
    if not isinstance(normalise, (bool, np.bool_)):
        raise TypeError(f"normalise must be a bool, got {type(normalise).__name__}")

    def init(num_tasks: int, seed: int | Sequence[int] = 0) -> AioliState:
        m = check_groups(num_tasks, "num_tasks")
        _check_epsilon(eps, m)
        eg = _eg_init(m, seed)
        keys = prng.replicate_keys(seed, stream=prng.AIOLI_STREAM)
        A = np.zeros((*eg.weights.shape, m))
        return AioliState(eg.log_weights, eg.weights, A, 0, keys, eps, int(sweeps))

    def update(state: AioliState, scores: Any, counts: Any = None):
        _no_counts(counts, "aioli")
        A = _square("scores", scores)
        _check_state_shape("scores", A, state.A.shape)
        if normalise:
            scale = np.max(np.abs(A), axis=(-2, -1), keepdims=True)
            A = np.divide(A, scale, out=np.zeros_like(A), where=scale > 0)
        if ema is not None and state.num_updates > 0:
            A = gamma * A + (1.0 - gamma) * state.A
        log_w, w = lmo_step(state.log_weights, A, eta)
        new = AioliState(log_w, w, A, state.num_updates + 1, state.keys, eps, state.sweeps)
        return w, new

    requires = ("group_validation",)
    signal = mixers.Signal("learnparams", share=4)
    return Mixer(init, update, mixers.played_weights, "loss", "resample", "aioli", requires, signal)


def smoothed_one_hot(m: int, epsilon: float) -> np.ndarray:
    """W (m, m): row j is the LearnParams mixture, ε on group j and (1 − ε)/(m − 1) elsewhere."""
    m = check_groups(m)
    eps = _check_epsilon(epsilon, m)
    off = (1.0 - eps) / (m - 1)
    return np.full((m, m), off) + (eps - off) * np.eye(m)


def estimate_A(drops: Any, epsilon: float) -> np.ndarray:
    """Unmix LearnParams' loss drops into A (Aioli's LearnParams, last step).

    ``drops[..., s, j, i]`` is the drop of group i's validation loss in sweep s while
    training on the smoothed one-hot mixture W_j (:func:`smoothed_one_hot`); shape
    (..., sweeps, m, m).  Averaging over sweeps gives G (..., m, m) and, under the linear
    law drop_i(p) = Σ_k A_ik p_k, G = W Aᵀ: solving W A_i = G_{·i} for every i recovers
    A exactly from noise-free drops.  Returns A (..., m, m).
    """
    d = np.asarray(drops, dtype=np.float64)
    if d.ndim < 3 or d.shape[-1] != d.shape[-2]:
        raise ValueError(f"drops has shape {d.shape}: expected (..., sweeps, m, m)")
    if d.shape[-3] < 1:
        raise ValueError("drops holds no sweep (shape[-3] = 0): sweeps must be >= 1")
    if not np.isfinite(d).all():
        raise ValueError("drops contains NaN or infinite values")
    m = d.shape[-1]
    W = smoothed_one_hot(m, epsilon)
    G = d.mean(axis=-3)  # (..., m, m): G[j, i]
    return np.swapaxes(np.linalg.solve(W, G), -1, -2)


def sweep_orders(state: AioliState) -> np.ndarray:
    """The random group order of every sweep of the next round, shape (..., sweeps, m).

    A pure function of ``(state.keys, state.num_updates)``: random permutations by
    argsort of counter-based uniforms.
    """
    m = state.weights.shape[-1]
    u = prng.uniform(state.keys, state.num_updates, state.sweeps * m)  # (R, sweeps·m)
    orders = np.argsort(u.reshape(-1, state.sweeps, m), axis=-1, kind="stable")
    return orders.reshape((*state.weights.shape[:-1], state.sweeps, m))


# ----------------------------------------------------------------------------- DML
class DMLParams(NamedTuple):
    """The static log-linear law L_i(p) = c_i + b_i exp(−Σ_j A_ij p_j): c, b (m,), A (m, m).

    On the simplex (Σ_j p_j = 1) b_i and a constant added to row i of A are confounded:
    (b_i, A_i·) and (b_i e^{−δ}, A_i· − δ) give the same law.  :func:`dml_fit` returns the
    canonical gauge of :func:`dml_canonical`, min_j A_ij = 0.
    """

    c: np.ndarray
    b: np.ndarray
    A: np.ndarray


def dml_canonical(params: DMLParams) -> DMLParams:
    """The same law on Δ^m in the gauge min_j A_ij = 0 (b_i is group i's excess at the
    least helpful vertex)."""
    c, b, A = (np.asarray(v, dtype=np.float64) for v in params)
    shift = A.min(axis=-1)
    return DMLParams(c, b * np.exp(-shift), A - shift[..., None])


def dml_law(params: DMLParams, proportions: Any) -> np.ndarray:
    """The predicted per-group losses at ``proportions`` (..., m), shape (..., m)."""
    p = np.asarray(proportions, dtype=np.float64)
    return params.c + params.b * np.exp(-(p @ np.asarray(params.A).T))


def dml_fit(proportions: Any, losses: Any) -> DMLParams:
    """Fit the log-linear law per group from a sweep of n runs (data mixing laws, Ye et al.).

    ``proportions`` (n, m): the mixture of each run (rows on the simplex); ``losses``
    (n, m): every group's final loss in that run.  Group i's m + 1 identifiable
    parameters are fitted by ``scipy.optimize.least_squares`` (Levenberg–Marquardt,
    analytic Jacobian) from a log-linear regression start, in the gauge A_im = 0, and
    returned in :func:`dml_canonical`'s gauge.  Needs n ≥ m + 1 runs.
    """
    from scipy.optimize import least_squares

    p = np.asarray(proportions, dtype=np.float64)
    y = np.asarray(losses, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"proportions has shape {p.shape}: expected (n, m)")
    if y.shape != p.shape:
        raise ValueError(f"losses has shape {y.shape} but proportions {p.shape}: expected equal")
    n, m = p.shape
    if n < m + 1:
        raise ValueError(f"proportions has {n} runs: the law needs n >= m + 1 = {m + 1}")
    if not (np.isfinite(p).all() and np.isfinite(y).all()):
        raise ValueError("proportions and losses must be finite")
    if (p < 0).any() or not np.allclose(p.sum(axis=1), 1.0, atol=1e-9):
        raise ValueError("proportions must be mixtures: rows >= 0 summing to 1")
    q = p[:, :-1]  # gauge A_im = 0: the exponent is Σ_{j<m} A_ij p_j
    c, b, A = np.zeros(m), np.zeros(m), np.zeros((m, m))
    design = np.hstack([np.ones((n, 1)), q])
    for i in range(m):
        yi = y[:, i]
        spread = max(float(np.ptp(yi)), 1e-12)
        c0 = float(yi.min()) - 0.5 * spread
        coef = np.linalg.lstsq(design, np.log(yi - c0), rcond=None)[0]
        x0 = np.concatenate([[c0, np.exp(coef[0])], -coef[1:]])

        def residual(x: np.ndarray, yi=yi) -> np.ndarray:
            return x[0] + x[1] * np.exp(-(q @ x[2:])) - yi

        def jacobian(x: np.ndarray) -> np.ndarray:
            e = np.exp(-(q @ x[2:]))
            return np.hstack([np.ones((n, 1)), e[:, None], -(x[1] * e)[:, None] * q])

        fit = least_squares(
            residual, x0, jac=jacobian, method="lm", xtol=1e-15, ftol=1e-15, gtol=1e-15
        )
        c[i], b[i], A[i, :-1] = fit.x[0], fit.x[1], fit.x[2:]
    return dml_canonical(DMLParams(c, b, A))


def dml_optimal_mixture(params: DMLParams) -> np.ndarray:
    """argmin over p ∈ Δ^m of Σ_i L_i(p) under the fitted law (scipy SLSQP, from uniform).

    Convex when every b_i ≥ 0.  The result is clipped at 0 and renormalised onto Δ^m.
    """
    from scipy.optimize import minimize

    c, b, A = (np.asarray(v, dtype=np.float64) for v in params)
    m = c.shape[0]
    if b.shape != (m,) or A.shape != (m, m):
        raise ValueError(f"params has c {c.shape}, b {b.shape}, A {A.shape}: expected m, m, m×m")

    def total(p: np.ndarray) -> tuple[float, np.ndarray]:
        e = b * np.exp(-(A @ p))
        return float(c.sum() + e.sum()), -(e @ A)

    res = minimize(
        total,
        np.full(m, 1.0 / m),
        jac=True,
        method="SLSQP",
        bounds=[(0.0, 1.0)] * m,
        constraints=[{"type": "eq", "fun": lambda p: p.sum() - 1.0, "jac": lambda p: np.ones(m)}],
        options={"ftol": 1e-14, "maxiter": 1000},
    )
    p = np.clip(res.x, 0.0, None)
    return p / p.sum()


def dml_design(m: int) -> np.ndarray:
    """DML's sweep: smoothed one-hots at ε = 0.75 and 0.5 (0.625 for m = 2, where ε must
    exceed 1/m), and the uniform mixture — 2m + 1 mixtures, shape (2m + 1, m)."""
    second = 0.5 if m > 2 else 0.625
    return np.vstack(
        [smoothed_one_hot(m, 0.75), smoothed_one_hot(m, second), np.full((1, m), 1 / m)]
    )


def dml_sweep(*, apply: str = "resample") -> Mixer:
    """DML as a method: fit the log-linear law on a sweep, then play its optimum, statically.

    Its signal is a sweep of :func:`dml_design`'s 2m + 1 mixtures (a quarter of the steps,
    each run from the start model); the first ``update`` receives it as a
    :class:`~amasim.mixers.Sweep`, fits :func:`dml_fit` per replicate and returns
    :func:`dml_optimal_mixture`; later updates change nothing.
    """
    mixers.check_apply(apply)

    def init(num_tasks: int, seed: int | Sequence[int] = 0) -> mixers.StaticState:
        shape = (*mixers.replicate_shape(num_tasks, seed), num_tasks)
        return mixers.StaticState(np.full(shape, 1.0 / num_tasks))

    def update(state: mixers.StaticState, scores: Any, counts: Any = None):
        if not isinstance(scores, mixers.Sweep):
            return state.weights, state
        after = np.asarray(scores.after, dtype=np.float64).reshape(-1, *scores.design.shape)
        fitted = [dml_optimal_mixture(dml_fit(scores.design, y)) for y in after]
        weights = np.stack(fitted).reshape(state.weights.shape)
        return weights, mixers.StaticState(weights)

    requires = ("group_validation",)
    signal = mixers.Signal("sweep", design=dml_design, share=4)
    return Mixer(init, update, lambda s: s.weights, "loss", apply, "dml", requires, signal)


def dml(fixed_weights: Any, *, apply: str = "resample") -> Mixer:
    """A static mixer playing ``fixed_weights`` (e.g. :func:`dml_optimal_mixture`'s p).

    Built with :mod:`amasim.mixers`' static machinery; weights are renormalised.
    """
    w = np.asarray(fixed_weights, dtype=np.float64)
    if w.ndim != 1 or w.size == 0:
        raise ValueError(f"fixed_weights has shape {w.shape}: expected a non-empty (m,) vector")
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"fixed_weights={w.tolist()} must be finite, >= 0, with a positive sum")
    w = w / w.sum()
    mixers.check_apply(apply)

    def weights_for(num_tasks: int) -> np.ndarray:
        if num_tasks != w.size:
            raise ValueError(f"dml got {w.size} fixed_weights but num_tasks={num_tasks}")
        return w

    return mixers.static_weights(weights_for, "loss", apply, "dml")
