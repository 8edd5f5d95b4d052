"""Static plots for the report: matplotlib (Agg) figures serialised as inline SVG text.

Owns: drawing bars and histograms for one build or two (comparison mode draws both series on
the same axes). Every plot gets axis labels with units; captions are the report's business.
Must not: compute statistics; it draws what it is given.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

COLORS = ("#3b6ea5", "#e08a2c", "#5a9e5a", "#b5485d")
WIDTH_IN, HEIGHT_IN = 7.2, 3.0


def _svg(fig: Any, salt: str) -> str:
    """The figure as an <svg> element (no XML prolog), text kept as text, ids salted per plot so
    that several inline SVGs in one page never share an id."""
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": salt}):
        fig.savefig(buf, format="svg", metadata={"Date": None}, bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]


def _axes(height: float = HEIGHT_IN) -> tuple[Any, Any]:
    fig, ax = plt.subplots(figsize=(WIDTH_IN, height), dpi=100)
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_axisbelow(True)  # grid lines behind the bars
    ax.grid(axis="y", alpha=0.3)
    return fig, ax


def bars(
    salt: str,
    categories: Sequence[str],
    series: Sequence[tuple[str, Sequence[float]]],
    ylabel: str,
    xlabel: str = "",
    horizontal: bool = False,
) -> str:
    """Grouped bars: one group per category, one bar per series (one build, or A and B)."""
    n = max(1, len(series))
    many = len(categories) > 8
    height = max(HEIGHT_IN, 0.28 * len(categories) + 1) if horizontal else HEIGHT_IN + many * 0.8
    fig, ax = _axes(height)
    width = 0.8 / n
    positions = range(len(categories))
    for i, (label, values) in enumerate(series):
        offsets = [p - 0.4 + width * (i + 0.5) for p in positions]
        draw = ax.barh if horizontal else ax.bar
        draw(offsets, list(values), width * 0.95, label=label, color=COLORS[i % len(COLORS)])
    if horizontal:
        ax.set_yticks(list(positions), list(categories))
        ax.invert_yaxis()
        ax.set_xlabel(ylabel)
        ax.grid(axis="x", alpha=0.3)
        ax.grid(axis="y", visible=False)
        if xlabel:
            ax.set_ylabel(xlabel)
    else:
        ax.set_xticks(
            list(positions),
            list(categories),
            rotation=35 if many else 0,
            ha="right" if many else "center",
        )
        ax.set_ylabel(ylabel)
        if xlabel:
            ax.set_xlabel(xlabel)
    if n > 1:
        ax.legend(frameon=False)
    return _svg(fig, salt)


def _edge_label(value: float, unit: str) -> str:
    """Bin edges as people read them: durations past a minute in minutes or hours."""
    if unit == "s" and value >= 3600:
        return f"{value / 3600:g}h"
    if unit == "s" and value >= 120:
        return f"{value / 60:g}m"
    return f"{value:g}"


def histogram(
    salt: str,
    edges: Sequence[float],
    series: Sequence[tuple[str, Sequence[float]]],
    xlabel: str,
    ylabel: str,
    categorical: bool = False,
    unit: str = "",
) -> str:
    """A fixed-edge histogram. With one series, bars; with several, outlined steps so both
    builds stay visible. `categorical` draws uneven bins (durations: 0.5 s ... 2 h) at equal
    widths, labelled by their edges, which reads better than a log axis with a zero edge."""
    fig, ax = _axes()
    n_bins = len(edges) - 1
    if categorical:
        lefts = list(range(n_bins))
        widths = [1.0] * n_bins
    else:
        lefts = list(edges[:-1])
        widths = [edges[i + 1] - edges[i] for i in range(n_bins)]
    for i, (label, values) in enumerate(series):
        color = COLORS[i % len(COLORS)]
        if len(series) == 1:
            ax.bar(lefts, list(values), widths, align="edge", color=color, label=label)
        else:
            xs = [*lefts, lefts[-1] + widths[-1]]
            ax.stairs(list(values), xs, label=label, color=color, linewidth=1.8)
    if categorical:
        step = max(1, (n_bins + 1) // 20)
        ticks = list(range(0, n_bins + 1, step))
        ax.set_xticks(ticks, [_edge_label(edges[t], unit) for t in ticks], fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if len(series) > 1:
        ax.legend(frameon=False)
    return _svg(fig, salt)


def lines(
    salt: str,
    series: Sequence[tuple[str, Sequence[float], Sequence[float]]],
    xlabel: str,
    ylabel: str,
) -> str:
    """One marked line per series (label, xs, ys): a figure against the training step."""
    fig, ax = _axes()
    for i, (label, xs, ys) in enumerate(series):
        ax.plot(list(xs), list(ys), marker="o", label=label, color=COLORS[i % len(COLORS)])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if len(series) > 1:
        ax.legend(frameon=False)
    return _svg(fig, salt)
