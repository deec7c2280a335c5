"""The query-and-matches grid that `search --save-grid` and the demo draw (PNG, matplotlib Agg)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from tasks.common.io import atomic_write

# one row: (query image, caption, [(match image or None, caption, correct or None), ...])
GridRow = tuple[np.ndarray, str, Sequence[tuple[np.ndarray | None, str, bool | None]]]
FRAME = {True: "tab:green", False: "tab:red", None: "0.6"}


def save_match_grid(path: str | os.PathLike, rows: Sequence[GridRow], *, cell: float = 1.6) -> None:
    """Query in the first column, matches by rank after it; frames green/red when correctness is known."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
