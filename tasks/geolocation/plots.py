"""The PNGs people look at: the error CDF, a world map of errors, the partition on the map.

Maps are drawn offline on an equirectangular (plate carrée) grid over the shipped land mask
(`landmask.py`): no tiles, coastlines or anything else is downloaded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from tasks.common.io import pyplot, save_figure
from tasks.geolocation.cells import Partition, cell_outline
from tasks.geolocation.landmask import land_mask
from tasks.geolocation.metrics import SCALES_KM


def _world_axes(figsize=(13, 6.8)):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=figsize)
    land = land_mask()
    background = np.where(land[..., None], np.array([0.80, 0.78, 0.70]), np.array([0.86, 0.92, 0.97]))
    ax.imshow(background, extent=(-180, 180, -90, 90), origin="upper", interpolation="nearest")
    ax.set_xlim(-180, 180)
    ax.set_ylim(-90, 90)
    ax.set_xticks(range(-180, 181, 60))
    ax.set_yticks(range(-90, 91, 30))
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")
    return fig, ax


def save_error_map(
    true_lat: Sequence[float],
    true_lon: Sequence[float],
    pred_lat: Sequence[float],
    pred_lon: Sequence[float],
    distances_km: Sequence[float],
    path: str | Path,
    *,
    title: str = "",
    max_lines: int = 3000,
) -> Path:
    """Lines from each true position to its prediction, coloured by error (log km)."""
    from matplotlib.collections import LineCollection
    from matplotlib.colors import LogNorm

    fig, ax = _world_axes()
    tl, to, pl, po, d = (
        np.asarray(v, np.float64) for v in (true_lat, true_lon, pred_lat, pred_lon, distances_km)
    )
    if len(d) > max_lines:
        keep = np.random.default_rng(0).choice(len(d), max_lines, replace=False)
        tl, to, pl, po, d = tl[keep], to[keep], pl[keep], po[keep], d[keep]
    po = po + 360 * np.round((to - po) / 360)  # the short way round the antimeridian
    norm = LogNorm(vmin=1, vmax=20000)
    segments = np.stack([np.stack([to, tl], 1), np.stack([po, pl], 1)], 1)
    order = np.argsort(-d)  # long errors underneath, short on top
    lines = LineCollection(segments[order], cmap="plasma_r", norm=norm, linewidths=0.7, alpha=0.75)
    lines.set_array(np.clip(d[order], 1, None))
    ax.add_collection(lines)
    ax.scatter(to, tl, s=4, c="black", zorder=3, label="true position")
    ax.scatter(po, pl, s=10, marker="x", c="tab:blue", zorder=4, linewidths=0.8, label="prediction")
    bar = fig.colorbar(lines, ax=ax, fraction=0.025, pad=0.01)
    bar.set_label("error (km, log scale)")
    for km in SCALES_KM.values():
        bar.ax.axhline(km, color="white", linewidth=0.8)
    ax.legend(loc="lower left", fontsize=8)
    median = float(np.median(d)) if len(d) else float("nan")
    ax.set_title(title or f"{len(d)} photos: truth -> prediction, median error {median:.0f} km")
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def save_error_cdf(
    distances_by_name: Mapping[str, Sequence[float]], path: str | Path, *, title: str = ""
) -> Path:
    """Share of photos within d km, one line per method, the five scales marked."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, distances in distances_by_name.items():
        d = np.sort(np.clip(np.asarray(distances, np.float64), 0.1, None))
        ax.step(
            d, np.arange(1, len(d) + 1) / len(d), where="post", label=f"{name} (median {np.median(d):.0f} km)"
        )
    for label, km in SCALES_KM.items():
        ax.axvline(km, color="grey", linestyle=":", linewidth=1)
        ax.text(
            km,
            1.01,
            f"{label}\n{km} km",
            ha="center",
            va="bottom",
            fontsize=8,
            transform=ax.get_xaxis_transform(),
        )
    ax.set_xscale("log")
    ax.set_xlim(0.5, 20037)
    ax.set_ylim(0, 1)
    ax.set_xlabel("great-circle error (km)")
    ax.set_ylabel("share of photos within")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title or "error CDF", pad=28)
    fig.tight_layout()
    return save_figure(fig, path)


def save_partition_map(
    part: Partition,
    path: str | Path,
    *,
    photos: tuple[np.ndarray, np.ndarray] | None = None,
    title: str = "",
    max_photos: int = 20000,
) -> Path:
    """The kept cells' outlines, filled by photo count (log), over the photos as dots."""
    from matplotlib.collections import PolyCollection
    from matplotlib.colors import LogNorm

    fig, ax = _world_axes()
    if photos is not None:
        lat, lon = (np.asarray(v) for v in photos)
        if len(lat) > max_photos:
            keep = np.random.default_rng(0).choice(len(lat), max_photos, replace=False)
            lat, lon = lat[keep], lon[keep]
        ax.scatter(lon, lat, s=0.5, c="black", alpha=0.4, zorder=2, linewidths=0)
    polygons, counts = [], []
    for cell, count in zip(part.cell_id, part.count, strict=True):
        outline = cell_outline(int(cell))[:, ::-1]  # (lon, lat)
        lon = outline[:, 0]
        copies = [outline]
        if lon.max() - lon.min() > 180:  # straddles the antimeridian: draw it on both edges of the map
            east = np.where(lon < 0, lon + 360, lon)
            copies = [np.stack([east, outline[:, 1]], 1), np.stack([east - 360, outline[:, 1]], 1)]
        polygons += copies
        counts += [count] * len(copies)
    cells = PolyCollection(
        polygons,
        cmap="viridis",
        norm=LogNorm(vmin=max(part.count.min(), 1), vmax=max(part.count.max(), 2)),
        edgecolors="black",
        linewidths=0.3,
        alpha=0.55,
        zorder=3,
    )
    cells.set_array(np.asarray(counts))
    ax.add_collection(cells)
    fig.colorbar(cells, ax=ax, fraction=0.025, pad=0.01).set_label("photos in cell (log)")
    rule = f" t_max={part.t_max}, t_min={part.t_min}:" if part.t_max is not None else ""
    ax.set_title(
        title
        or f"S2 partition{rule} {len(part)} cells, {int(part.count.sum())} photos kept, "
        f"{part.dropped} in dropped cells"
    )
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)
