"""Every verdict of the project, from one piece of code: paired tests over shared seeds,
Holm's correction over a stated family, non-inferiority against a margin stated in advance,
counts over instances with a sign test, and evaluation noise from an item bootstrap.

**One test** (:func:`paired_test`) compares the claimed better method A with B on one
instance.  Both ran on the same seeds, so the unit is the seed: d_s = B_s − A_s (lower is
better; A_s − B_s otherwise) is A's advantage on seed s, the estimate is d̄ over the n
seeds, its standard error s_d/√n, and the test is Student's t with n − 1 degrees of
freedom (scipy's ``ttest_rel``), the interval d̄ ± t₀.₉₇₅,ₙ₋₁·s_d/√n.

* "A beats B": H₀ δ = 0, two-sided.  The claim *holds* when the Holm-adjusted p is at
  most α = 0.05 and d̄ > 0, is *reversed* when it is and d̄ < 0, and is *n.s.* otherwise.
* "A is at least as good as B" (non-inferiority, ``margin`` m > 0, stated in advance):
  H₀ δ = −m, two-sided, so it *holds* when A is shown to be worse by less than m and is
  *reversed* when A is shown to be worse by more than m.  Unadjusted, "holds" is "the
  95% interval's lower end lies above −m": the ICH E9 convention, a one-sided test at
  2.5%.  Without a margin such a claim could never fail.

**A family** (:func:`decide`) is the list of tests one study states before it runs; Holm's
step-down correction (:func:`holm`) over it keeps the chance of *any* false "holds" or
"reversed" at or below α, whatever the dependence between the tests.

**Over instances** (:func:`over_instances`) a claim tested on N instances (problem seeds ×
settings, or LLM data sets) counts the instances where it holds, is reversed or is n.s.,
and runs a two-sided sign test (scipy's ``binomtest``) on the signs of the N instance
estimates (against −m for a non-inferiority claim; ties dropped), Holm-corrected over the
study's claims.  Its estimate is the mean of the instance estimates with a Student-t
interval over instances (df N − 1).  Its verdict:

===================  =================================================================
agrees               holds on every instance
disagrees            reversed on every instance
mixed                holds on some instances and is reversed on others (or the sign
                     test goes against the instances that are significant)
mostly agrees        reversed on none, and holds on more than half or the sign test
                     favours the claim (Holm p ≤ α)
mostly disagrees     the mirror image
not significant      otherwise
===================  =================================================================

**Evaluation noise** (:func:`item_bootstrap_variance`): when per-item values exist (LLM
metrics over held-out pairs or prompts), the variance of d̄ adds the bootstrap variance
of d̄ over the evaluation items (resampled within each task, the same resample for both
methods and every seed) to the seeds' s_d²/n; the interval and p keep t with n − 1 df.
That interval covers the difference expected on new seeds *and* new evaluation items; it
counts the seed × item interaction twice, so it errs wide.

Every record (:data:`FIELDS`) has fixed field names; its ``sentence`` is written from its
numbers, never by hand.

>>> test = paired_test([0.30, 0.32, 0.31], [0.50, 0.55, 0.49])  # lower is better
>>> round(test.estimate, 4), test.df
(0.2033, 2)
>>> [r["verdict"] for r in decide([record(Claim("A beats B", "a", "b"), test)])]
['holds']
>>> holm([0.01, 0.04, 0.03]).round(2).tolist()
[0.03, 0.06, 0.06]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "ALPHA",
    "LEVEL",
    "CONVEX_MARGIN",
    "LLM_EXCESS_MARGIN",
    "LLM_EXACT_MATCH_MARGIN",
    "FIELDS",
    "Claim",
    "Paired",
    "interval",
    "paired_test",
    "holm",
    "sign_test",
    "item_bootstrap_variance",
    "record",
    "decide",
    "over_instances",
    "sentence",
    "verdict_cells",
]

#: the level of every test (family-wise, after Holm) and of every interval
ALPHA = 0.05
LEVEL = 0.95

#: Non-inferiority margin of the convex studies, in worst-task clipped excess (the same
#: units as the gap to the exact optimum, since OPT is common to both methods).  It is the
#: size of the gap AMA-R itself leaves at the studies' budget on the default instances
#: (0.0011–0.0017, the README's equal-budget table), a twentieth of AMA-R's advantage over
#: stratified mixing there (0.02–0.06) and 0.3–0.6% of the optimum's value: a method within
#: it keeps ≥ 95% of what adaptive mixing gains over a static mixture and is at most one
#: AMA-R gap farther from the optimum.  Stated before the paired statistics were computed.
CONVEX_MARGIN = 1e-3

#: Non-inferiority margin of the LLM study on worst-task clipped excess (nats per pair, the
#: DPO loss's units), as issue 23 proposes: 3% of the DPO loss at initialisation (log 2),
#: about 5% of the best method's worst-task excess in ``small-cpu`` (0.38) and a tenth of
#: one seed's standard deviation there — smaller than any difference the study can resolve,
#: so "non-inferior" is a statement about the interval, not about noise.
LLM_EXCESS_MARGIN = 0.02

#: Non-inferiority margin of the LLM study on worst-task exact match: one held-out prompt
#: of the 50 per task (1/50), the metric's own resolution.
LLM_EXACT_MATCH_MARGIN = 0.02

#: the fixed fields of every verdict record (:func:`record`, :func:`over_instances`)
FIELDS = (
    "claim",
    "instances",
    "estimate",
    "interval",
    "df",
    "p",
    "p_holm",
    "margin",
    "verdict",
    "sentence",
)


class Claim(NamedTuple):
    """A claim stated before the study runs: ``better`` has a lower (or, for a higher-is-
    better metric, higher) value than ``worse``; ``noninferior``: ``better`` is at least as
    good as ``worse``, up to the study's margin.  ``source`` names the paper; ``suite``
    the comparison it is measured on (the convex studies)."""

    statement: str
    better: str
    worse: str
    noninferior: bool = False
    source: str = ""
    suite: str = ""


class Paired(NamedTuple):
    """One paired test: ``estimate`` d̄ (the claimed better method's advantage), its
    standard error, ``df`` = n − 1, the 95% ``interval``, t against ``null`` (0, or −margin)
    and its two-sided p; ``se``, ``interval``, ``t`` and ``p`` are ``None`` with one seed."""

    estimate: float
    se: float | None
    df: int
    interval: tuple[float, float] | None
    t: float | None
    p: float | None
    n: int
    margin: float | None


def _finite(values: Sequence[float], what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=float).ravel()
    if arr.size == 0 or not np.isfinite(arr).all():
        raise ValueError(f"{what} is not finite ({arr.tolist()}): no figure is printed from it")
    return arr


def interval(values: Sequence[float], what: str = "values", level: float = LEVEL) -> dict:
    """Mean, standard deviation and Student-t half-width (``ci95``, t at n − 1 df) over
    seeds; ``ci95`` is ``None`` for one value (no interval from one sample).

    >>> row = interval([1.0, 2.0, 3.0])
    >>> row["mean"], row["std"], round(row["ci95"], 4)  # t(0.975, 2) = 4.3027
    (2.0, 1.0, 2.4841)
    """
    from scipy.stats import t

    arr = _finite(values, what)
    n = arr.size
    std = float(arr.std(ddof=1)) if n > 1 else 0.0
    half = float(t.ppf(0.5 + level / 2, n - 1) * std / math.sqrt(n)) if n > 1 else None
    return {"mean": float(arr.mean()), "std": std, "ci95": half, "n": n, "values": arr.tolist()}


def paired_test(
    better: Sequence[float],
    worse: Sequence[float],
    *,
    lower_is_better: bool = True,
    margin: float | None = None,
    extra_variance: float = 0.0,
    level: float = LEVEL,
) -> Paired:
    """The paired t-test of "``better`` beats ``worse``" (or, with ``margin``, "is no worse
    by ``margin`` or more"), entry s of each the same seed; ``extra_variance`` adds to the
    variance of d̄ (:func:`item_bootstrap_variance`).  Against a constant (an exact
    optimum), pass it repeated: the test is then the one-sample t.

    >>> test = paired_test([1.0, 2.0, 3.5], [1.5, 2.5, 3.9])
    >>> round(test.estimate, 4), test.df, round(test.p, 4)
    (0.4667, 2, 0.0051)
    """
    from scipy.stats import t as student_t

    a, b = _finite(better, "the claimed better method"), _finite(worse, "the compared method")
    if a.size != b.size:
        raise ValueError(f"paired values need the same seeds: {a.size} against {b.size} values")
    if margin is not None and not margin > 0:
        raise ValueError(f"margin={margin!r}: a non-inferiority margin must be > 0")
    if extra_variance < 0 or not math.isfinite(extra_variance):
        raise ValueError(f"extra_variance={extra_variance!r} must be finite and >= 0")
    d = b - a if lower_is_better else a - b
    n, estimate = d.size, float(d.mean())
    null = -margin if margin is not None else 0.0
    if n < 2:
        return Paired(estimate, None, 0, None, None, None, n, margin)
    se = math.sqrt(float(d.var(ddof=1)) / n + extra_variance)
    crit = float(student_t.ppf(0.5 + level / 2, n - 1))
    if se == 0.0:  # every seed the same difference: no noise to test against
        t = 0.0 if estimate == null else math.copysign(math.inf, estimate - null)
        p = 1.0 if estimate == null else 0.0
    else:
        t = (estimate - null) / se
        p = float(2 * student_t.sf(abs(t), n - 1))
    span = (estimate - crit * se, estimate + crit * se)
    return Paired(estimate, se, n - 1, span, t, min(p, 1.0), n, margin)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (Holm 1979), in the order given: the i-th
    smallest p becomes max over j ≤ i of min(1, (m − j + 1)·p₍ⱼ₎).  Rejecting where the
    adjusted p ≤ α keeps the family-wise error ≤ α under any dependence.

    >>> holm([0.04, 0.001]).tolist()
    [0.04, 0.002]
    """
    p = np.asarray(pvalues, dtype=float)
    if p.size and (not np.isfinite(p).all() or (p < 0).any() or (p > 1).any()):
        raise ValueError(f"p-values must lie in [0, 1], got {p.tolist()}")
    order = np.argsort(p, kind="stable")
    m = p.size
    stepped = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out = np.empty(m)
    out[order] = np.maximum.accumulate(stepped)
    return out


def sign_test(estimates: Sequence[float], *, margin: float | None = None) -> dict[str, Any]:
    """Two-sided sign test over instances: how many instance estimates favour the claim
    (lie above 0, or above −``margin``), how many go against it, ties dropped, and scipy's
    exact ``binomtest`` p (1 when every instance ties).

    >>> sign_test([0.2, 0.1, 0.3, 0.4, 0.5, 0.6])
    {'favour': 6, 'against': 0, 'ties': 0, 'p': 0.03125}
    """
    from scipy.stats import binomtest

    e = _finite(estimates, "instance estimates")
    null = -margin if margin is not None else 0.0
    favour, against = int((e > null).sum()), int((e < null).sum())
    trials = favour + against
    p = float(binomtest(favour, trials, 0.5).pvalue) if trials else 1.0
    return {"favour": favour, "against": against, "ties": int(e.size - trials), "p": p}


_REDUCE: dict[str, Callable[..., np.ndarray]] = {"mean": np.mean, "max": np.max, "min": np.min}


def _tasks(values: Any, what: str) -> list[np.ndarray]:
    arrays = [values] if isinstance(values, np.ndarray) and values.ndim == 2 else list(values)
    out = [np.asarray(a, dtype=float) for a in arrays]
    if not out or any(a.ndim != 2 or a.shape[1] < 1 or not np.isfinite(a).all() for a in out):
        raise ValueError(f"{what}: give one finite (seeds, items) array per task")
    return out


def item_bootstrap_variance(
    better: Any,
    worse: Any,
    *,
    reduce: str = "mean",
    lower_is_better: bool = True,
    resamples: int = 2000,
    seed: int = 0,
) -> float:
    """Bootstrap variance of d̄ over the evaluation items, the seeds held fixed.

    ``better`` and ``worse`` hold per-seed × per-item values of each task — one (n, I_t)
    array per task (or one array for one task), row s the seed s of both methods, column
    i the same item for both.  A seed's metric is ``reduce`` (``"mean"``, ``"max"`` — the
    worst task of an excess —, ``"min"`` — the worst task of an accuracy) over the tasks of
    the task's item mean.  Each of ``resamples`` draws resamples every task's items with
    replacement, the same indices for both methods and every seed (the items are shared,
    so the pairing over items is kept), and recomputes d̄; the draws come from
    ``numpy.random.SeedSequence(seed)``.  Pass the result as ``extra_variance`` to
    :func:`paired_test`.

    >>> rng = np.random.default_rng(0)
    >>> a, b = rng.random((5, 50)), rng.random((5, 50)) + 0.1
    >>> 0 < item_bootstrap_variance(a, b) < 0.01
    True
    """
    if reduce not in _REDUCE:
        raise ValueError(f"reduce={reduce!r} is unknown: use one of {', '.join(_REDUCE)}")
    a, b = _tasks(better, "better"), _tasks(worse, "worse")
    if [x.shape for x in a] != [x.shape for x in b] or len({x.shape[0] for x in a}) != 1:
        raise ValueError("better and worse need the same seeds and items, task by task")
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 2:
        raise ValueError(f"resamples={resamples!r} must be an int >= 2")
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    fold = _REDUCE[reduce]
    means = np.empty(resamples)
    for r in range(resamples):
        picks = [rng.integers(0, x.shape[1], x.shape[1]) for x in a]
        ma = fold(np.stack([x[:, i].mean(axis=1) for x, i in zip(a, picks)], -1), axis=-1)
        mb = fold(np.stack([x[:, i].mean(axis=1) for x, i in zip(b, picks)], -1), axis=-1)
        means[r] = float(np.mean(mb - ma if lower_is_better else ma - mb))
    return float(means.var(ddof=1))


def record(claim: Claim, test: Paired, **context: Any) -> dict[str, Any]:
    """The verdict record of one test, before its family is decided (:func:`decide` fills
    ``p_holm``, ``verdict`` and ``sentence``); ``context`` (seeds, the methods compared, the
    setting) is kept beside the fixed :data:`FIELDS`."""
    out = {
        "claim": claim.statement,
        "instances": 1,
        "estimate": test.estimate,
        "interval": None if test.interval is None else list(test.interval),
        "df": test.df,
        "p": test.p,
        "p_holm": None,
        "margin": test.margin,
        "verdict": None,
        "sentence": "",
        "seeds": test.n,
        "noninferior": claim.noninferior,
    }
    return out | context


def _outcome(rec: dict[str, Any], alpha: float) -> str:
    if rec["p_holm"] is None:
        return "untested"
    if rec["p_holm"] > alpha:
        return "n.s."
    null = -rec["margin"] if rec.get("margin") is not None else 0.0
    return "holds" if rec["estimate"] > null else "reversed"


def decide(
    records: Sequence[dict[str, Any]], *, alpha: float = ALPHA, family: str = ""
) -> list[dict[str, Any]]:
    """Holm over ``records`` (the stated family; one with one seed is left untested), and
    each record's ``verdict`` (holds / reversed / n.s.) and ``sentence``.  Returns new
    records; ``family`` names the family in them."""
    out = [dict(r) for r in records]
    tested = [r for r in out if r["p"] is not None]
    for r, adjusted in zip(tested, holm([r["p"] for r in tested])):
        r["p_holm"] = float(adjusted)
    for r in out:
        r["verdict"] = _outcome(r, alpha)
        r["family"] = {"name": family, "tests": len(tested), "alpha": alpha}
        r["sentence"] = sentence(r)
    return out


def _claim_verdict(counts: Mapping[str, int], n: int, sign_p: float, favour: bool) -> str:
    holds, reversed_ = counts["holds"], counts["reversed"]
    if holds == n:
        return "agrees"
    if reversed_ == n:
        return "disagrees"
    if holds and reversed_:
        return "mixed"
    if holds > n / 2 or (sign_p <= ALPHA and favour):
        return "mostly agrees" if not reversed_ else "mixed"
    if reversed_ > n / 2 or (sign_p <= ALPHA and not favour):
        return "mostly disagrees" if not holds else "mixed"
    return "not significant"


def over_instances(
    claims: Sequence[Claim],
    instance_records: Mapping[str, Sequence[dict[str, Any]]],
    *,
    alpha: float = ALPHA,
) -> list[dict[str, Any]]:
    """One summary per claim over its decided instance records (``instance_records[claim.
    statement]``, after :func:`decide` over the study's instance family): the counts, the
    sign test (against the records' margin for a non-inferiority claim; Holm over
    ``claims``), the mean instance estimate with its t interval over instances, and the
    verdict of the module docstring's table.

    >>> claim = Claim("A beats B", "a", "b")
    >>> tests = [paired_test([0.1, 0.2, 0.1], [0.3 + i, 0.5 + i, 0.4 + i]) for i in range(6)]
    >>> records = decide([record(claim, t) for t in tests])
    >>> row = over_instances([claim], {"A beats B": records})[0]
    >>> row["verdict"], row["counts"], row["sign_test"]["favour"]
    ('agrees', {'holds': 6, 'reversed': 0, 'n.s.': 0}, 6)
    """
    rows = []
    for claim in claims:
        recs = list(instance_records[claim.statement])
        if not recs:
            raise ValueError(f"claim {claim.statement!r} has no instance record")
        margins = {r.get("margin") for r in recs}
        if len(margins) != 1:
            raise ValueError(f"claim {claim.statement!r}: its instances have margins {margins}")
        m = margins.pop()
        estimates = [r["estimate"] for r in recs]
        sign = sign_test(estimates, margin=m)
        spread = interval(estimates, f"{claim.statement}: instance estimates")
        half = spread["ci95"]
        counts = {k: sum(r["verdict"] == k for r in recs) for k in ("holds", "reversed", "n.s.")}
        rows.append(
            {
                "claim": claim.statement,
                "instances": len(recs),
                "estimate": spread["mean"],
                "interval": None
                if half is None
                else [spread["mean"] - half, spread["mean"] + half],
                "df": len(recs) - 1,
                "p": sign["p"],
                "p_holm": None,
                "margin": m,
                "verdict": None,
                "sentence": "",
                "counts": counts,
                "sign_test": sign,
                **claim._asdict(),
            }
        )
    for row, adjusted in zip(rows, holm([r["p"] for r in rows])):
        row["p_holm"] = float(adjusted)
        favour = row["sign_test"]["favour"] > row["sign_test"]["against"]
        row["verdict"] = _claim_verdict(row["counts"], row["instances"], row["p_holm"], favour)
        row["family"] = {"name": "claims (sign tests)", "tests": len(rows), "alpha": alpha}
        row["sentence"] = sentence(row)
    return rows


def _num(x: float) -> str:
    return f"{x:+.3g}" if abs(x) >= 1e-3 or x == 0 else f"{x:+.2e}"


def _p(x: float) -> str:
    return f"{x:.2g}" if x >= 1e-4 else f"{x:.1e}"


def sentence(rec: Mapping[str, Any]) -> str:
    """The verdict in words, from the record's numbers (claim, estimate, interval, df, p
    after Holm, instances, margin).

    >>> sentence({"claim": "A beats B", "instances": 1, "estimate": 0.2, "interval": [0.1,
    ...           0.3], "df": 4, "p": 0.001, "p_holm": 0.004, "margin": None, "verdict":
    ...           "holds", "family": {"tests": 4}})
    'A beats B: holds — advantage +0.2 (95% CI [+0.1, +0.3], df 4), p = 0.001, Holm p = 0.004 over 4 tests.'
    """  # noqa: E501
    claim, verdict = rec["claim"], rec["verdict"]
    if rec.get("metric"):
        claim += f", on {rec['metric']}"
    if rec["p_holm"] is None:
        return f"{claim}: untested (one seed) — advantage {_num(rec['estimate'])}."
    ci = rec["interval"]
    span = f"95% CI [{_num(ci[0])}, {_num(ci[1])}], df {rec['df']}" if ci else f"df {rec['df']}"
    tests = (rec.get("family") or {}).get("tests")
    holm_p = f"Holm p = {_p(rec['p_holm'])}" + (f" over {tests} tests" if tests else "")
    margin = f", margin {rec['margin']:g}" if rec.get("margin") is not None else ""
    if "counts" in rec:  # a claim over instances
        c, s = rec["counts"], rec["sign_test"]
        return (
            f"{claim}: {verdict} — holds on {c['holds']}, reversed on {c['reversed']}, n.s. "
            f"on {c['n.s.']} of {rec['instances']} instances; mean advantage "
            f"{_num(rec['estimate'])} ({span}){margin}; sign test {s['favour']} for, "
            f"{s['against']} against, p = {_p(rec['p'])}, {holm_p}."
        )
    where = "" if rec["instances"] == 1 else f" on {rec['instances']} instances"
    return (
        f"{claim}: {verdict}{where} — advantage {_num(rec['estimate'])} ({span}){margin}, "
        f"p = {_p(rec['p'])}, {holm_p}."
    )


def verdict_cells(rec: Mapping[str, Any], digits: int = 3) -> list[str]:
    """A decided record as markdown cells: the advantage with its 95% interval (and the
    margin of a non-inferiority claim), p, Holm p and the verdict in bold.

    >>> verdict_cells({"estimate": 0.25, "interval": [0.2, 0.3], "p": 0.001, "p_holm": 0.003,
    ...                "margin": None, "verdict": "holds"})
    ['+0.25 (+0.2, +0.3)', '0.001', '0.003', '**holds**']
    """
    ci = rec["interval"]
    cell = f"{rec['estimate']:+.{digits}g}"
    if ci is not None:
        cell += f" ({ci[0]:+.{digits}g}, {ci[1]:+.{digits}g})"
    if rec.get("margin") is not None:
        cell += f"; margin {rec['margin']:g}"
    p = "–" if rec["p"] is None else _p(rec["p"])
    p_holm = "–" if rec["p_holm"] is None else _p(rec["p_holm"])
    return [cell, p, p_holm, f"**{rec['verdict']}**"]
