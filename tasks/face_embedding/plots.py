"""The query-and-matches grid that `search --save-grid` and the demo draw (PNG, matplotlib Agg)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from tasks.common.io import pyplot, save_figure

# one row: (query image, caption, [(match image or None, caption, correct or None), ...])
GridRow = tuple[np.ndarray, str, Sequence[tuple[np.ndarray | None, str, bool | None]]]
FRAME = {True: "tab:green", False: "tab:red", None: "0.6"}


def save_match_grid(path: str | os.PathLike, rows: Sequence[GridRow], *, cell: float = 1.6) -> None:
    """Query in the first column, matches by rank after it; frames green/red when correctness is known."""
    plt = pyplot()
    columns = 1 + max(len(matches) for _, _, matches in rows)
    fig, axes = plt.subplots(
        len(rows), columns, figsize=(cell * columns, cell * 1.25 * len(rows)), squeeze=False
    )
    for row_axes, (query, caption, matches) in zip(axes, rows, strict=True):
        cells = [(query, caption, None, "tab:blue"), *((img, cap, ok, FRAME[ok]) for img, cap, ok in matches)]
        for ax in row_axes:
            ax.set_axis_off()
        # a row may hold fewer matches than there are columns
        for ax, (image, text, _, colour) in zip(row_axes, cells, strict=False):
            ax.set_axis_on()
            ax.set_xticks([])
            ax.set_yticks([])
            if image is not None:
                ax.imshow(image)
            for spine in ax.spines.values():
                spine.set(color=colour, linewidth=3)
            ax.set_title(text, fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def roc_curve_png(path: str | os.PathLike, far_: np.ndarray, val: np.ndarray, *, title: str = "ROC") -> None:
    """The verification ROC from `metrics.roc_points`."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(np.maximum(far_, 1e-5), val)
    ax.set(xscale="log", xlim=(1e-4, 1), ylim=(0, 1.01), xlabel="FAR (false accepts / different pairs)",
           ylabel="VAL (true accepts / same pairs)", title=title)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
