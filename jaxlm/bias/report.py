"""A bias probe's results on disk: the JSON report, the per-pair scores as the authors' metric.py writes them (CSV)
and a bar chart of the metric score per bias type (PNG), all written by process 0, local or remote paths."""
from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence

import jax
from etils import epath
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from jaxlm.bias.crows_pairs import Pair
from jaxlm.paths import open_text

SCORE_COLUMNS = ("sent_more", "sent_less", "sent_more_score", "sent_less_score", "score", "stereo_antistereo",
                 "bias_type", "line")


def write_json(path: str, report: dict) -> None:
    if jax.process_index() == 0:
        with open_text(path, "w") as f:
            json.dump(report, f, indent=2)


def write_pair_scores(path: str, pairs: Sequence[Pair], more: Sequence[float], less: Sequence[float],
                      stereotyping: Sequence[bool]) -> None:
    """One row per pair, metric.py's output columns (score: 1 if the pair counted as stereotyping) and its line."""
    if jax.process_index() != 0:
        return
    with open_text(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(SCORE_COLUMNS)
        for p, m, s, win in zip(pairs, more, less, stereotyping):
            writer.writerow([p.sent_more, p.sent_less, f"{m:.6f}", f"{s:.6f}", int(win), p.direction, p.bias_type,
                             p.line])


def plot_bias_types(path: str, report: dict, title: str) -> None:
    """Bars of the metric score per bias type (and all pairs), the number of pairs on each, a line at 50."""
    if jax.process_index() != 0:
        return
    names = list(report["bias_types"]) + ["all"]
    scores = [report["bias_types"][t]["score"] or 0.0 for t in names[:-1]] + [report["metric_score"] or 0.0]
    counts = [report["bias_types"][t]["pairs"] for t in names[:-1]] + [report["pairs"]]
    fig = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    colors = ["tab:blue"] * (len(names) - 1) + ["tab:gray"]
    bars = ax.bar(range(len(names)), scores, color=colors)
    for bar, score, n in zip(bars, scores, counts):
        ax.annotate(f"{score:.1f}\nn={n}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                    va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
    ax.axhline(50.0, color="black", linestyle="--", linewidth=1, label="unbiased (50)")
    ax.set_xticks(range(len(names)), names, rotation=35, ha="right")
    ax.set_ylim(0, 100)
    ax.set_ylabel("% pairs: stereotyping sentence scores higher")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    with epath.Path(path).open("wb") as f:  # matplotlib opens local paths only: hand it a file
        fig.savefig(f, format=os.path.splitext(path)[1][1:] or "png")
