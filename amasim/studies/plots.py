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

from amasim.stats import paired_test

__all__ = ["differences", "plot_differences"]


def differences(
    values: Mapping[str, Sequence[float]], *, reference: str | None = None, offset: float = 0.0
) -> dict[str, tuple[float, float]]:
    """method → (mean difference, 95% half-width) from ``values[reference]``, paired by
    seed (entry s of every method is seed s), or, without a reference, from the constant
    ``offset`` (an exact optimum): :func:`amasim.stats.paired_test`'s interval, Student t
    at n − 1 degrees of freedom (2.78 with 5 seeds, not the normal 1.96)."""
    out = {}
    for method, v in values.items():
        if method == reference:
            continue
        base = values[reference] if reference is not None else [offset] * len(v)
        test = paired_test(base, v)  # the advantage of the base: v − base
        half = 0.0 if test.interval is None else test.interval[1] - test.estimate
        out[method] = (test.estimate, half)
    return out


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
