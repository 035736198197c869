"""Pictures of what attention looks at (`mode=attention`): the plotting every task shares, with matplotlib.

Each task records its attention with `core.transformer.record_attention` and draws it with one of these: a token x
token heat map (text), or a picture over time with a strip under it on the same axis (speech, series).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure  # no pyplot: no GUI backend, nothing global (the Agg canvas draws the PNG)

from core.transformer import AttentionRecord

CMAP = "viridis"


def last_layer(records: list[AttentionRecord], kind: str = "self", index: int = -1) -> torch.Tensor:
    """Example `index`'s attention of the last recorded call of `kind`, averaged over heads: (T, S)."""
    calls = [r.probs for r in records if r.kind == kind]
    if not calls:
        raise RuntimeError(f"no {kind}-attention was recorded")  # an invariant: every task model attends
    return calls[-1][index].mean(0).cpu()


def token_heatmap(weights: torch.Tensor, rows: list[str], cols: list[str], title: str, path: Path,
                  row_label: str = "query", col_label: str = "key") -> Path:
    """A (rows x cols) heat map of attention weights, every row and column labelled with its token."""
    R, C = weights.shape
    width = max(5.0, 1.8 + 0.2 * C)
    fig = Figure(figsize=(width, max(3.5, 1.6 + 0.2 * R)))
    ax = fig.subplots()
    image = ax.imshow(weights.numpy(), cmap=CMAP, aspect="auto", vmin=0)
    ax.set_xticks(range(C), cols, rotation=90, fontsize=7)
    ax.set_yticks(range(R), rows, fontsize=7)
    ax.set_xlabel(col_label)
    ax.set_ylabel(row_label)
    ax.set_title(wrap(title, width), fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02, label="attention weight")
    return save(fig, path)


def panels_with_strip(title: str, width: float = 10.0) -> tuple[Figure, object, object]:
    """A figure of a main panel and, under it on the same x axis, a thin strip for the attention received."""
    fig = Figure(figsize=(width, 4.6))
    top, strip = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.set_title(wrap(title, width), fontsize=9)
    return fig, top, strip


def attention_strip(ax, starts: np.ndarray, widths: np.ndarray, values: np.ndarray, label: str) -> None:
    """One bar per token over the span of input it covers, as tall and as bright as the attention it receives."""
    scaled = values / max(float(values.max()), 1e-12)
    ax.bar(starts, values, width=widths, align="edge", color=colormaps[CMAP](scaled), edgecolor="0.3", linewidth=0.3)
    ax.set_ylabel(label, fontsize=8)
    ax.set_ylim(0, float(values.max()) * 1.1 or 1.0)


def shade_by_step(ax, values_per_step: np.ndarray, x0: float = 0.0) -> None:
    """Colour the background of `ax` step by step (one column per input step) by the attention that step gets."""
    low, high = ax.get_ylim()
    ax.imshow(values_per_step[None], cmap=CMAP, aspect="auto", alpha=0.35, zorder=0, interpolation="nearest",
              extent=(x0 - 0.5, x0 + len(values_per_step) - 0.5, low, high))
    ax.set_ylim(low, high)


def wrap(title: str, inches: float) -> str:
    """Break each line of a title to fit a figure `inches` wide (about 13 characters an inch at 9 points)."""
    return "\n".join(textwrap.fill(line, int(inches * 13)) for line in title.split("\n"))


def save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
