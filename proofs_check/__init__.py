"""proofs_check: amasim's convergence theory as executable, falsifiable checks.

Each statement of ``derivations/`` is a :class:`Check`: a function that computes both
sides of the statement on concrete instances (drawn convex instances of the core's
families, hand-built adversarial ones, adversarial reward sequences) and returns
:class:`Measurement` records; every check also knows deliberately broken
implementations (``Check.variants[1:]``) that it must reject.

    python -m proofs_check [--budget quick|default] [--out results] [--figures figures]

>>> from proofs_check import CHECKS, run_check
>>> result = run_check("importance", budget="quick")
>>> result.passed, result.verdict
(True, 'holds')
>>> run_check("importance", budget="quick", variant="no_importance_weighting").passed
False
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from proofs_check import (
    bound_checks,
    convexity,
    exp3,
    importance,
    ix_lemma,
    online_to_batch,
    reweight_vs_resample,
)
from proofs_check.base import BUDGETS, Budget, Check, CheckResult, Measurement

__all__ = [
    "CHECKS",
    "BUDGETS",
    "Budget",
    "Check",
    "CheckResult",
    "Measurement",
    "run_check",
    "run_all",
    "main",
    "write_bound_figures",
]


def _check(name, statement, kind, derivation, variants, run) -> tuple[str, Check]:
    return name, Check(name, statement, kind, f"derivations/{derivation}", tuple(variants), run)


#: Every statement, in the order of derivations/ (name -> Check).
CHECKS: dict[str, Check] = dict(
    [
        _check(
            "convexity",
            "E_i convex, per-example scores in [0, B], code step = (sub)gradient",
            "proven",
            "01_convexity.md",
            convexity.VARIANTS,
            convexity.run,
        ),
        _check(
            "exp3",
            "EXP3 regret ≤ (e−1)γG_max + K ln K/γ and ≤ 2√(e−1)·√(gK ln K), "
            "adaptive adversaries included; ama_s = Auer's EXP3",
            "proven",
            "02_exp3.md",
            exp3.VARIANTS,
            exp3.run,
        ),
        _check(
            "importance",
            "AMA-S importance-weighted gain: E[ĝ] = E(θ) exactly, 0 ≤ ĝ ≤ B·k/c",
            "proven",
            "03_importance.md",
            importance.VARIANTS,
            importance.run,
        ),
        _check(
            "online_to_batch",
            "gap(θ̄_T, ᾱ_T) ≤ (Reg_θ + Reg_α)/T, both regrets from the same run",
            "proven",
            "04_online_to_batch.md",
            online_to_batch.VARIANTS,
            online_to_batch.run,
        ),
        _check(
            "ama_r_prop2",
            "AMA-R: E[gap_T] ≤ 2k·√(10(D²G² + B² ln k)/T) (Group DRO Prop. 2)",
            "proven",
            "05_ama_r.md",
            bound_checks.VARIANTS["ama_r_prop2"],
            bound_checks.run_check("ama_r_prop2"),
        ),
        _check(
            "ama_r",
            "AMA-R: E[gap_T] ≤ Theorem R (= O(1/√T))",
            "proven",
            "05_ama_r.md",
            bound_checks.VARIANTS["ama_r"],
            bound_checks.run_check("ama_r"),
        ),
        _check(
            "ama_s",
            "AMA-S: E[gap_T] ≤ Theorem S (projected SGD + EXP3 + realised-best term)",
            "proven",
            "05_ama_s.md",
            bound_checks.VARIANTS["ama_s"],
            bound_checks.run_check("ama_s"),
        ),
        _check(
            "ama_s_notes",
            "AMA-S: E[gap_T] ≤ (DG + 2√(e−1)·B·√(k ln k))/√T (notes §4, conjectured)",
            "measured",
            "05_ama_s.md",
            bound_checks.VARIANTS["ama_s_notes"],
            bound_checks.run_check("ama_s_notes"),
        ),
        _check(
            "reweight_resample",
            "reweight and resample: same expected step; resampling "
            "variance ≤ upweighting when m_i is non-decreasing in α_i/p_i",
            "proven",
            "06_reweight_vs_resample.md",
            reweight_vs_resample.VARIANTS,
            reweight_vs_resample.run,
        ),
        _check(
            "li_variance",
            "resampling variance ≤ upweighting and ≤ AMA-R's stratified "
            "reweighting, any α (Li et al., general case)",
            "measured",
            "06_reweight_vs_resample.md",
            ("correct",),
            reweight_vs_resample.run_li,
        ),
        _check(
            "ama_s_ix",
            "AMA-S-IX: E[gap_T] ≤ Theorem IX "
            "= (DG + B√(2 ln k)(√(k/b) + √(k/b+1)))/√T + DG/T at its tuning",
            "proven",
            "07_ama_s_ix.md",
            bound_checks.VARIANTS["ama_s_ix"],
            bound_checks.run_check("ama_s_ix"),
        ),
        _check(
            "ama_s_ix_hp",
            "AMA-S-IX: gap_T ≤ Theorem IX's high-probability form (δ = 1e-4) on every seed",
            "proven",
            "07_ama_s_ix.md",
            bound_checks.VARIANTS["ama_s_ix_hp"],
            bound_checks.run_check("ama_s_ix_hp"),
        ),
        _check(
            "ix_lemma",
            "Lemma IX (Neu 2015, Lemma 1, batches): Σ_t(ℓ̂_tj − ℓ_tj) ≤ B ln(k/δ)/(2γb) "
            "for every task w.p. ≥ 1 − δ; E max_j ≤ B ln k/(2γb)",
            "proven",
            "07_ama_s_ix.md",
            ix_lemma.VARIANTS,
            ix_lemma.run,
        ),
    ]
)


def _budget(budget: str | Budget) -> Budget:
    if isinstance(budget, Budget):
        return budget
    if budget not in BUDGETS:
        raise ValueError(f"budget={budget!r} is unknown: use one of {', '.join(BUDGETS)}")
    return BUDGETS[budget]


def run_check(
    name: str, budget: str | Budget = "default", variant: str = "correct", seed: int = 0
) -> CheckResult:
    """Run one check on one variant and return its :class:`CheckResult`."""
    if name not in CHECKS:
        raise ValueError(f"check {name!r} is unknown: use one of {', '.join(CHECKS)}")
    check = CHECKS[name]
    if variant not in check.variants:
        raise ValueError(f"{name} has no variant {variant!r}: use one of {check.variants}")
    start = time.perf_counter()
    measurements = check.run(_budget(budget), variant, seed)
    return CheckResult(
        name=name,
        statement=check.statement,
        kind=check.kind,
        derivation=check.derivation,
        variant=variant,
        measurements=tuple(measurements),
        seconds=time.perf_counter() - start,
    )


def run_all(
    budget: str | Budget = "default", seed: int = 0, names: Sequence[str] | None = None
) -> list[CheckResult]:
    """Every check (or ``names``) on its correct variant."""
    return [run_check(name, budget, "correct", seed) for name in (names or CHECKS)]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m proofs_check`` (also ``amasim prove``); returns the exit status."""
    from proofs_check.cli import main as cli_main

    return cli_main(argv)


def write_bound_figures(out_dir, quick: bool = False, seed: int = 0):
    """Draw ``out_dir/bounds_<problem>.png`` for every convex family; returns the paths."""
    from proofs_check.report import write_bound_figures as write

    return write(out_dir, quick=quick, seed=seed)
