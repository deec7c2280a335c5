"""The PNG people look at after a face-attribute test: average precision per attribute, sorted."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tasks.common.io import pyplot, save_figure


def save_ap_bar_chart(attributes: Sequence[str], ap: Sequence[float | None], path: str | Path, *,
                      title: str = "average precision per attribute",
                      positive_rates: Sequence[float] | None = None) -> Path:
    """Horizontal bars, best attribute on top, the mean AP as a line; attributes without positives
    (no AP) are listed under the chart instead of drawn as zeros. `positive_rates` adds a tick at each
    attribute's rate of positives: the AP of a scorer that knows nothing."""
    rate_of = dict(zip(attributes, positive_rates, strict=True)) if positive_rates is not None else {}
    pairs = zip(attributes, ap, strict=True)
    scored = sorted(((v, name) for name, v in pairs if v is not None), reverse=True)
    excluded = [name for name, v in zip(attributes, ap, strict=True) if v is None]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.28 * max(len(scored), 1)))
    values = [v for v, _ in scored]
    names = [name for _, name in scored]
    positions = range(len(scored))
    ax.barh(list(positions), values, color="tab:blue")
    if rate_of:
        ax.scatter([rate_of[name] for name in names], list(positions), marker="|", s=120, color="black",
                   zorder=3, label="rate of positives (chance AP)")  # fmt: skip
        ax.legend(loc="lower right", fontsize=7)
    for y, value in zip(positions, values, strict=True):
        ax.text(min(value + 0.01, 0.93), y, f"{value:.3f}", va="center", fontsize=7)
    ax.set_yticks(list(positions), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("average precision")
    if values:
        mean = sum(values) / len(values)
        ax.axvline(mean, color="tab:red", linestyle="--", linewidth=1)
        title = f"{title}\nmean AP {mean:.3f} over {len(values)} attributes"
    ax.set_title(title, fontsize=10)
    if excluded:
        fig.text(0.01, 0.005, "no positives, not scored: " + ", ".join(excluded), fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)
