"""Classification metrics and the files a person looks at after a run: confusion matrix PNG, top-k CSV."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torchmetrics import MetricCollection  # noqa: E402
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix  # noqa: E402

from tasks.common.io import atomic_write  # noqa: E402


def classification_metrics(num_classes: int) -> MetricCollection:
    """top-1, top-5 (top-k capped by the class count) and mean per-class accuracy."""
    return MetricCollection(
        {
            "top1": MulticlassAccuracy(num_classes, top_k=1, average="micro"),
            "top5": MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro"),
            "mean_class_acc": MulticlassAccuracy(num_classes, average="macro"),
        }
    )


def confusion_matrix(num_classes: int) -> MulticlassConfusionMatrix:
    return MulticlassConfusionMatrix(num_classes)


def save_confusion_png(matrix: torch.Tensor, class_names: Sequence[str], path: Path) -> None:
    """Row-normalised confusion matrix; class names on the axes while they stay legible."""
    counts = matrix.float()
    normalised = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
    n = len(class_names)
    side = min(4 + 0.25 * n, 30)
    fig, ax = plt.subplots(figsize=(side, side))
    image = ax.imshow(normalised.numpy(), cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046)
    if n <= 60:
        ax.set_xticks(range(n), class_names, rotation=90, fontsize=7)
        ax.set_yticks(range(n), class_names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    accuracy = counts.diag().sum() / counts.sum().clamp(min=1)
    ax.set_title(f"confusion matrix (row-normalised), top-1 {accuracy:.1%}")
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def write_topk_csv(path: Path, rows: Sequence[tuple[str, Sequence[str], Sequence[float]]]) -> None:
    """One line per image: path, then (class, score) for the top k classes."""
    k = max((len(classes) for _, classes, _ in rows), default=0)
    header = ["image"] + [f"{field}{i + 1}" for i in range(k) for field in ("class", "score")]
    with atomic_write(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for image, classes, scores in rows:
            pairs = zip(classes, (f"{score:.5f}" for score in scores), strict=True)
            writer.writerow([image] + [value for pair in pairs for value in pair])
