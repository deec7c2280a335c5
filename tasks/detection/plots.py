"""Pictures and tables of a COCO evaluation: PR curves, per-category AP, boxes drawn on images.

Everything reads the dict that `metrics.evaluate_coco` returns, so a plot always shows the same
numbers as the table beside it.
"""

from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from tasks.common.io import atomic_write, pyplot, save_figure, write_text_atomic

plt = pyplot()

RECALL_POINTS = np.linspace(0.0, 1.0, 101)  # COCOeval's recall thresholds
AREA_ALL, MAX_DETS_100 = 0, -1


def _pr_curve(precision: np.ndarray, *, category: int | None, iou_index: int | None) -> np.ndarray:
    """Precision at each recall point: averaged over categories (and IoUs when `iou_index` is None).

    Undefined entries (-1: no ground truth) are left out of the averages, as COCOeval does.
    """
    p = precision[:, :, :, AREA_ALL, MAX_DETS_100]  # [T, R, K]
    p = p if category is None else p[:, :, category : category + 1]
    p = p if iou_index is None else p[iou_index : iou_index + 1]
    p = np.where(p > -1, p, np.nan)
    with warnings.catch_warnings():  # all-undefined columns give NaN, which plots as a gap
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(p, axis=(0, 2))


def _draw_curves(ax, precision: np.ndarray, category: int | None, title: str) -> None:
    iou_thresholds = np.linspace(0.5, 0.95, precision.shape[0])
    iou_75 = int(np.argmin(abs(iou_thresholds - 0.75)))
    for label, iou_index in (("IoU .50", 0), ("IoU .75", iou_75), ("IoU .50:.95", None)):
        curve = _pr_curve(precision, category=category, iou_index=iou_index)
        area = np.nanmean(curve) if np.isfinite(curve).any() else float("nan")
        ax.plot(RECALL_POINTS, curve, label=f"{label} (AP {area:.3f})")
    ax.set(title=title, xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize="small")


def _save(fig, path: Path) -> Path:
    return save_figure(fig, path, dpi=110, bbox_inches="tight")


def plot_pr_curves(evaluation: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """Write `pr_curves.png` (all categories) and `pr_curves_per_category.png` (one panel each)."""
    out_dir = Path(out_dir)
    precision = np.asarray(evaluation["precision"])
    fig, ax = plt.subplots(figsize=(5, 4.5))
    _draw_curves(ax, precision, None, "all categories")
    paths = [_save(fig, out_dir / "pr_curves.png")]
    names = evaluation["category_names"]
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.6 * rows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k < len(names):
            _draw_curves(ax, precision, k, names[k])
        else:
            ax.axis("off")
    fig.tight_layout()
    paths.append(_save(fig, out_dir / "pr_curves_per_category.png"))
    return paths


def write_ap_tables(evaluation: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """Per-category AP / AP50 / AP75 as `per_category_ap.csv` and `per_category_ap.md`."""
    out_dir = Path(out_dir)
    rows = [
        (name, cat_id, evaluation["per_category"][name])
        for name, cat_id in zip(evaluation["category_names"], evaluation["category_ids"], strict=True)
    ]
    csv_path = out_dir / "per_category_ap.csv"
    with atomic_write(csv_path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["category", "category_id", "AP", "AP50", "AP75"])
        for name, cat_id, ap in rows:
            writer.writerow([name, cat_id, f"{ap['AP']:.4f}", f"{ap['AP50']:.4f}", f"{ap['AP75']:.4f}"])
    lines = ["| category | id | AP | AP50 | AP75 |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {n} | {c} | {a['AP']:.4f} | {a['AP50']:.4f} | {a['AP75']:.4f} |" for n, c, a in rows]
    lines.append(
        f"| **all** | | {evaluation['AP']:.4f} | {evaluation['AP50']:.4f} | {evaluation['AP75']:.4f} |"
    )
    md_path = out_dir / "per_category_ap.md"
    write_text_atomic(md_path, "\n".join(lines) + "\n")
    return [csv_path, md_path]


def draw_detections(
    image: np.ndarray,
    path: str | Path,
    *,
    boxes: Sequence[Sequence[float]],
    labels: Sequence[int],
    scores: Sequence[float],
    class_names: Sequence[str],
    score_threshold: float = 0.3,
    gt_boxes: Sequence[Sequence[float]] = (),
) -> Path:
    """Save `image` (HWC uint8) with predicted xyxy boxes above `score_threshold`, ground truth in white."""
    canvas = Image.fromarray(np.ascontiguousarray(image))
    draw = ImageDraw.Draw(canvas)
    for box in gt_boxes:
        draw.rectangle([float(v) for v in box], outline=(255, 255, 255), width=1)
    cmap = plt.get_cmap("tab10")
    for box, label, score in zip(boxes, labels, scores, strict=True):
        if score < score_threshold:
            continue
        colour = tuple(int(255 * c) for c in cmap(int(label) % 10)[:3])
        x0, y0, x1, y1 = (float(v) for v in box)
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=2)
        draw.text((x0 + 2, max(0.0, y0 - 11)), f"{class_names[int(label)]} {score:.2f}", fill=colour)
    path = Path(path)
    with atomic_write(path) as tmp:
        canvas.save(tmp, format="PNG")
    return path
