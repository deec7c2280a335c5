"""Image classification pieces shared by every task that predicts a class per image.

Fine-grained classification uses all of it; geolocation is classification over Earth cells and face
attributes is 40 binary classifications, so they reuse the datasets and what is written after a run.

Datasets share one loading path (`LabelledImages`): decode with `read_image`, skip and count a file
that does not decode (a 20k-image folder always has one), apply an albumentations pipeline, then
`to_model_input`. Skip counts are per worker process.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix
from torchvision.datasets.folder import find_classes, make_dataset

from tasks.common.io import IMAGE_EXTENSIONS, SkipCounter, pyplot, read_first_readable, save_figure, write_csv
from tasks.common.transforms import to_model_input

log = logging.getLogger(__name__)

MAX_NAMES_IN_MESSAGE = 20


class LabelledImages(Dataset):
    """(path, label) samples decoded on access; subclasses may crop each image first."""

    def __init__(
        self, samples: list[tuple[str, int]], classes: list[str], *, transform: Callable | None = None
    ):
        self.samples = samples
        self.classes = classes
        self.transform = transform
        self.skipped = SkipCounter()

    def __len__(self) -> int:
        return len(self.samples)

    def crop(self, index: int, image: np.ndarray) -> np.ndarray:
        return image

    def load(self, index: int) -> tuple[np.ndarray, int, str]:
        """Image (after `crop`, before `transform`), label and path; a corrupt file yields the next."""
        index, image = read_first_readable(lambda i: self.samples[i][0], index, len(self), self.skipped)
        path, label = self.samples[index]
        return self.crop(index, image), label, path

    def to_tensor(self, image: np.ndarray) -> torch.Tensor:
        if self.transform is not None:
            image = self.transform(image=image)["image"]
        return to_model_input(image)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label, _ = self.load(index)
        return self.to_tensor(image), label


class ImageFolderDataset(LabelledImages):
    """`root/<class>/**/*.{jpg,jpeg,png}` with classes in sorted folder order (ImageNet train/val).

    `classes` fixes the label of every class name: an evaluation split must be labelled with the
    training split's classes (`root/train`), not its own folders, or one class folder missing from
    `val/` would shift every later label. A class of `classes` absent here is logged as a warning
    (its accuracy is undefined); a folder here that `classes` lacks is an error naming it.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        transform: Callable | None = None,
        classes: Sequence[str] | None = None,
    ) -> None:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: image folder not found")
        try:
            found, _ = find_classes(root)
        except FileNotFoundError:
            raise FileNotFoundError(f"{root}: no class folders (expected {root}/<class>/<image>)") from None
        given = classes is not None
        if classes is None:
            classes = found
        else:
            classes = list(classes)
            extra = sorted(set(found) - set(classes))
            if extra:
                raise ValueError(
                    f"{root}: class folders {extra} are not classes of the training split "
                    f"({len(classes)} classes); a model trained on it cannot predict them"
                )
            absent = [name for name in classes if name not in set(found)]
            if absent:
                log.warning(
                    "%s: %d of the %d training classes have no folder here: %s",
                    root, len(absent), len(classes), absent[:MAX_NAMES_IN_MESSAGE],
                )  # fmt: skip
        class_to_idx = {name: label for label, name in enumerate(classes)}
        # an evaluation split may lack a class (warned above); the training split defines them all
        samples = make_dataset(root, {name: class_to_idx[name] for name in found}, IMAGE_EXTENSIONS,
                               allow_empty=given)  # fmt: skip
        if not samples:
            raise FileNotFoundError(f"{root}: no {'/'.join(IMAGE_EXTENSIONS)} images in its class folders")
        super().__init__(samples, classes, transform=transform)


class ImageFiles(LabelledImages):
    """Every image under `root`, unlabelled (label -1): the input of `predict` on new photos."""

    def __init__(self, root: str | os.PathLike, *, transform: Callable | None = None) -> None:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: prediction folder not found")
        paths = sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not paths:
            raise FileNotFoundError(f"{root}: no {'/'.join(IMAGE_EXTENSIONS)} images found")
        super().__init__([(path, -1) for path in paths], [], transform=transform)


class KeyedImages(Dataset):
    """Items of `dataset` as (tensor, key), the key naming the image in a prediction file: the file
    path of a `LabelledImages` item, or what a generated dataset's `key(index)` calls it."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        if isinstance(self.dataset, LabelledImages):
            image, _, path = self.dataset.load(index)
            return self.dataset.to_tensor(image), path
        return self.dataset[index][0], self.dataset.key(index)



# -- metrics and result files ------------------------------------------------------------------
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
    fig, ax = pyplot().subplots(figsize=(side, side))
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
    save_figure(fig, path)


def write_topk_csv(path: Path, rows: Sequence[tuple[str, Sequence[str], Sequence[float]]]) -> None:
    """One line per image: path, then (class, score) for the top k classes."""
    k = max((len(classes) for _, classes, _ in rows), default=0)
    header = ["image"] + [f"{field}{i + 1}" for i in range(k) for field in ("class", "score")]
    lines = []
    for image, classes, scores in rows:
        pairs = zip(classes, (f"{score:.5f}" for score in scores), strict=True)
        lines.append([image] + [value for pair in pairs for value in pair])
    write_csv(path, header, lines)
