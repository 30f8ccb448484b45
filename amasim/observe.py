"""How the driver obtains each signal a mixer observes from an oracle (:class:`Signal`).

The batch signal is observed inside the training step (:class:`amasim.driver.Mixing`);
the others need optional oracle capabilities (:mod:`amasim.capabilities`) and are here:

================  ======================================================  ==================
signal            what is measured                                        function
================  ======================================================  ==================
``validation``    every group's validation score, ``evaluate_groups``     (called directly)
``alignment``     ⟨∇L_i, ∇L_target⟩ (DGA) or Σ_j ⟨∇L_i, ∇L_j⟩ (DoGE)      alignment_scores
``learnparams``   Aioli's A^t from short runs on smoothed one-hots        aioli_round
a ``design``      short runs from the start model on fixed mixtures       sweep
================  ======================================================  ==================

Every function here drives the oracle only through the capability protocols, so any
oracle that offers them works.

>>> import numpy as np
>>> from amasim.problems import make_problem
>>> from amasim.simulator import SimulatedOracle
>>> oracle = SimulatedOracle(make_problem("quadratic", sizes=(30, 10), dim=3))
>>> result = sweep(oracle, [0, 1], np.eye(2), steps=5, learning_rate=0.1)
>>> result.start.shape, result.after.shape
((2, 2), (2, 2, 2))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from amasim import lmo
from amasim.capabilities import require_capabilities
from amasim.mixers import Mixer, Sweep

__all__ = ["ALIGNMENTS", "alignment_scores", "aioli_round", "sweep"]

ALIGNMENTS = ("target", "generalization")


def sweep(
    oracle: Any,
    seeds: Sequence[int],
    design: Any,
    *,
    steps: int,
    learning_rate: float,
    batch_size: int = 8,
) -> Sweep:
    """Short runs from the start model, one per mixture of ``design`` (n, m).

    Needs the ``"mixture_rounds"`` and ``"group_validation"`` capabilities.  Reads every
    group's validation loss after ``reset(seeds)``, then for each mixture: ``reset(seeds)``
    (a fresh copy of the start model), ``steps`` steps of ``train_on_mixture``, every
    group's validation loss.  Skill-It's graph is the sweep over the one-hot mixtures
    (:func:`amasim.lmo.skills_graph_from_runs`), DML's law is fitted on its
    :func:`amasim.lmo.dml_design`.  The oracle is left after the last run: reset it.
    """
    require_capabilities(oracle, ("mixture_rounds", "group_validation"), "a sweep")
    mixtures = np.asarray(design, dtype=np.float64)
    m = len(oracle.task_names)
    if mixtures.ndim != 2 or mixtures.shape[1] != m or not len(mixtures):
        raise ValueError(f"design has shape {mixtures.shape}: expected (n, {m}) mixtures")
    seeds = list(seeds)
    oracle.reset(seeds)
    start = np.asarray(oracle.evaluate_groups(), dtype=np.float64)
    after = []
    for mixture in mixtures:
        oracle.reset(seeds)
        oracle.train_on_mixture(mixture, steps, learning_rate=learning_rate, batch_size=batch_size)
        after.append(np.asarray(oracle.evaluate_groups(), dtype=np.float64))
    return Sweep(mixtures, start, np.stack(after, axis=1))


def alignment_scores(oracle: Any, kind: str = "target", *, normalize: bool = False) -> np.ndarray:
    """Per-task alignment at the oracle's current θ, shape (R, k).

    ``"target"`` (DGA): a_i = ⟨∇L_i, ∇L_target⟩.  ``"generalization"`` (DoGE):
    a_i = Σ_j ⟨∇L_i, ∇L_j⟩ = ⟨∇L_i, Σ_j ∇L_j⟩.  With ``normalize`` the inner products
    are divided by the norm of the reference gradient (the target's or the sum), which
    makes the scale of the step size independent of the loss scale.
    """
    if kind not in ALIGNMENTS:
        raise ValueError(f"kind={kind!r} is unknown: use one of {', '.join(ALIGNMENTS)}")
    needs = ("task_gradients", "target_set") if kind == "target" else ("task_gradients",)
    require_capabilities(oracle, needs, f"{kind} alignment")
    grads = np.asarray(oracle.task_gradients())
    if grads.ndim != 3:
        raise ValueError(f"task_gradients() returned shape {grads.shape}: expected (R, k, d)")
    ref = np.asarray(oracle.target_gradient()) if kind == "target" else grads.sum(axis=1)
    if ref.shape != (grads.shape[0], grads.shape[2]):
        raise ValueError(f"reference gradient has shape {ref.shape}: expected (R, d)")
    scores = np.einsum("rkd,rd->rk", grads, ref)
    if normalize:
        scores = scores / np.maximum(np.linalg.norm(ref, axis=-1, keepdims=True), 1e-300)
    return scores


def aioli_round(
    mixer: Mixer,
    state: lmo.AioliState,
    oracle: Any,
    *,
    steps: int = 1,
    learning_rate: float,
    batch_size: int = 8,
    losses: Any = None,
) -> tuple[np.ndarray, lmo.AioliState, np.ndarray]:
    """One Aioli round on ``oracle``: LearnParams, then ``mixer.update``.

    ``oracle`` needs the ``"mixture_rounds"`` and ``"group_validation"`` capabilities
    (:mod:`amasim.capabilities`), with the state's replicates.  For every sweep and
    every group j (in :func:`amasim.lmo.sweep_orders`' order) the round trains ``steps`` steps on
    the smoothed one-hot W_j (``oracle.train_on_mixture``) and records the drop of every
    group's validation loss (``oracle.evaluate_groups()``); :func:`amasim.lmo.estimate_A` unmixes
    the drops.  ``losses`` are the current validation losses (read if ``None``).
    Returns ``(weights, new_state, A)`` — A before the mixer's normalisation and EMA.
    The LearnParams steps train the model; training on ``weights`` for the rest of the
    round is the caller's.
    """
    require_capabilities(oracle, ("mixture_rounds", *mixer.requires), f"mixer {mixer.name!r}")
    m = lmo.check_groups(len(oracle.task_names))
    if state.weights.shape[-1] != m:
        raise ValueError(f"the oracle has {m} groups but the state {state.weights.shape[-1]}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps={steps!r} must be an int >= 1 (training steps per mixture)")
    batch = state.weights.shape[:-1]
    W = lmo.smoothed_one_hot(m, state.epsilon)
    orders = lmo.sweep_orders(state)

    def validation() -> np.ndarray:
        out = np.asarray(oracle.evaluate_groups(), dtype=np.float64)
        if out.shape != (*batch, m) and out.shape != (1, *batch, m):
            raise ValueError(
                f"evaluate_groups() returned shape {out.shape}: expected {(*batch, m)}, every "
                "group's validation loss for the state's replicates"
            )
        return out.reshape(*batch, m)

    before = validation() if losses is None else np.asarray(losses, dtype=np.float64)
    if before.shape != (*batch, m):
        raise ValueError(f"losses has shape {before.shape}: expected {(*batch, m)}")
    drops = np.zeros((*batch, state.sweeps, m, m))
    for s in range(state.sweeps):
        for q in range(m):
            group = orders[..., s, q]  # (...,)
            oracle.train_on_mixture(
                W[group], int(steps), learning_rate=learning_rate, batch_size=batch_size
            )
            after = validation()
            index = np.broadcast_to(group[..., None, None], (*batch, 1, m))
            target = drops[..., s, :, :]
            np.put_along_axis(target, index, (before - after)[..., None, :], axis=-2)
            drops[..., s, :, :] = target
            before = after
    A = lmo.estimate_A(drops, state.epsilon)
    weights, new_state = mixer.update(state, A)
    return weights, new_state, A
