"""Figures that show differences: each method's difference from a reference, with its 95%
interval, methods sorted, the zero line marked — one panel per setting.

>>> diffs = differences({"a": [1.0, 1.1, 0.9], "b": [2.0, 2.1, 1.9]}, reference="b")
>>> round(diffs["a"][0], 3), sorted(diffs)
(-1.0, ['a'])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = ["differences", "plot_differences"]


def differences(
    values: Mapping[str, Sequence[float]], *, reference: str | None = None, offset: float = 0.0
) -> dict[str, tuple[float, float]]:
    """method → (mean difference, 95% half-width) from ``values[reference]`` (its seeds as an
    independent sample) or, without a reference, from the constant ``offset`` (an exact
    optimum).  Half-widths are Student-t: t₀.₉₇₅ with n − 1 degrees of freedom against a
    constant, with Welch–Satterthwaite's degrees of freedom against a reference (with 5
    seeds t is 2.3–2.8, not the normal 1.96)."""
    from scipy.stats import t as student_t

    out = {}
    base = np.asarray(values[reference], float) if reference is not None else None
    for method, v in values.items():
        if method == reference:
            continue
        v = np.asarray(v, float)
        parts = [_mean_variance(v)]  # (variance of the mean, its degrees of freedom)
        if base is not None:
            parts.append(_mean_variance(base))
        var = sum(p for p, _ in parts)
        # Welch–Satterthwaite: (Σ s²/n)² / Σ (s²/n)²/(n − 1); a part without spread adds none
        df = var**2 / sum(p**2 / d for p, d in parts if p > 0) if var > 0 else 1.0
        half = float(student_t.ppf(0.975, df) * np.sqrt(var)) if var > 0 else 0.0
        centre = v.mean() - (base.mean() if base is not None else offset)
        out[method] = (float(centre), half)
    return out


def _mean_variance(v: np.ndarray) -> tuple[float, int]:
    """(variance of the sample mean s²/n, n − 1); (0, 1) for a single value."""
    return (float(v.var(ddof=1) / v.size), v.size - 1) if v.size > 1 else (0.0, 1)


def plot_differences(
    panels: Mapping[str, Mapping[str, tuple[float, float]]],
    path: str | Path,
    *,
    xlabel: str,
    title: str,
    columns: int = 4,
) -> None:
    """One horizontal bar chart per panel: methods sorted by difference, 95% intervals,
    the zero line (the reference) marked; a panel whose largest difference dwarfs the
    median one is drawn on a symmetric-log axis, linear near zero."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(panels)
    cols = min(columns, len(names))
    rows = -(-len(names) // cols)
    height = 0.22 * max(len(p) for p in panels.values()) + 1.2
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, height * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        items = sorted(panels[name].items(), key=lambda kv: kv[1][0])
        y = np.arange(len(items))
        means = [m for _, (m, _) in items]
        half = [h for _, (_, h) in items]
        colors = ["C3" if m - h > 0 else "C2" if m + h < 0 else "C7" for m, h in zip(means, half)]
        ax.barh(y, means, xerr=half, color=colors, height=0.7, error_kw={"lw": 0.8})
        ax.axvline(0.0, color="k", lw=0.8)
        spread = sorted(abs(m) + h for m, h in zip(means, half) if abs(m) + h > 0)
        if spread and spread[-1] > 20 * spread[len(spread) // 2]:
            # a few huge differences (the merges) would flatten the rest: linear up to the
            # median's scale, logarithmic beyond
            ax.set_xscale("symlog", linthresh=spread[len(spread) // 2], linscale=2.0)
        ax.set_yticks(y)
        ax.set_yticklabels([m for m, _ in items], fontsize=6)
        ax.tick_params(axis="x", labelsize=6)
        ax.set_title(name, fontsize=8)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel(xlabel, fontsize=7)
    fig.suptitle(title + "  (green: lower beyond the 95% interval, red: higher)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
