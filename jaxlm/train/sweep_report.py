"""What a sweep's trials add up to: statistics across seeds, and the expected best validation performance of n
trials (Dodge et al. 2019, "Show Your Work"), the curve that lets a reader compare two methods at the
same tuning budget instead of at the best of however many trials each author happened to run.

Expected maximum of n trials drawn (with replacement) from the N observed results v_(1) <= ... <= v_(N), over their
empirical CDF F(v) = #{v_j <= v} / N:  E[max_n] = sum_i v_(i) (F(v_(i))^n - F(v_(i-1))^n),  F(v_(0)) = 0.
Ties count once: F jumps at each distinct value. For a metric where lower is better it is the expected minimum.
"""
from __future__ import annotations

import math
import os
from typing import Mapping, Sequence

import numpy as np
from etils import epath
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator


def _distinct_cdf(values: Sequence[float], higher_is_better: bool) -> tuple[np.ndarray, np.ndarray]:
    v = np.asarray(values, np.float64)
    if v.ndim != 1 or not len(v):
        raise ValueError(f"expected a non-empty list of trial results, got {values!r}")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"trial results must be finite (drop diverged trials first): {values!r}")
    v = v if higher_is_better else -v
    distinct, counts = np.unique(v, return_counts=True)
    return distinct, np.cumsum(counts) / len(v)


def expected_max(values: Sequence[float], n: int, higher_is_better: bool = True) -> tuple[float, float]:
    """(mean, standard deviation) of the best of n trials drawn with replacement from `values`."""
    if n < 1:
        raise ValueError(f"n={n} must be >= 1")
    distinct, cdf = _distinct_cdf(values, higher_is_better)
    p = cdf ** n - np.concatenate([[0.0], cdf[:-1]]) ** n  # P(max_n = distinct[i])
    mean = float(np.sum(p * distinct))
    var = max(float(np.sum(p * distinct ** 2)) - mean ** 2, 0.0)
    sign = 1.0 if higher_is_better else -1.0
    return sign * mean, math.sqrt(var)


def expected_max_curve(values: Sequence[float], higher_is_better: bool = True,
                       max_n: int | None = None) -> dict[str, list[float]]:
    """The curve for n = 1 .. max_n (default: the number of trials): {'n', 'mean', 'std'}."""
    points = [expected_max(values, n, higher_is_better) for n in range(1, (max_n or len(values)) + 1)]
    return {"n": list(range(1, len(points) + 1)), "mean": [m for m, _ in points], "std": [s for _, s in points]}


def across_seeds(values: Sequence[float]) -> dict[str, float | int]:
    """count, mean, sample standard deviation (ddof 1; 0 for one trial), min and max."""
    v = np.asarray(values, np.float64)
    if not len(v):
        return {"count": 0}
    return {"count": int(len(v)), "mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max())}


def plot_expected_max(curves: Mapping[str, Mapping[str, list[float]]], path: str, metric: str) -> str:
    """The curves (label -> expected_max_curve(...)) as a PNG, each with its +-1 std band (Agg, no display)."""
    fig = Figure(figsize=(7, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for label, curve in curves.items():
        n, mean, std = (np.asarray(curve[k], np.float64) for k in ("n", "mean", "std"))
        ax.plot(n, mean, "o-", label=label, linewidth=1.5, markersize=3)
        ax.fill_between(n, mean - std, mean + std, alpha=0.15)
    ax.set_xlabel("n: trials drawn from the sweep's results")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"expected best dev {metric}")
    ax.set_title("Expected validation performance (Dodge et al. 2019)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with epath.Path(path).open("wb") as f:  # matplotlib opens local paths only: hand it a file
        fig.savefig(f, format=os.path.splitext(path)[1][1:] or "png")
    return path
