"""Face-attribute datasets and the DataModule: CelebA (official and Kaggle layouts), any attribute CSV,
unlabeled face folders, and the synthetic set.

The label files are parsed in `formats.py` (every error names the file and line). A row naming a missing
image is skipped and counted (a partial download still trains), and an image that does not decode is
replaced by the next readable one and counted. An unlabeled folder is every image under it, at any
depth; no label file is read.

Items are `(image, targets, key)` for labeled data (`targets` float 0/1 per attribute) and
`(image, key)` for unlabeled data, `key` being the image's path relative to its folder: the name a
distillation teacher's outputs file (`export-logits`) is indexed by. `CelebA` itself, the public data
set, gives `(image, targets)`; `.keyed()` adds the key.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import albumentations as A
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.dataloader import default_collate

from tasks.common.config import as_dataclass
from tasks.common.data import DEFAULT_NUM_WORKERS, TaskDataModule
from tasks.common.io import IMAGE_EXTENSIONS, ImageReadError, SkipCounter, read_first_readable, read_image
from tasks.common.transforms import build_augmentation, to_model_input
from tasks.face_attributes.formats import (  # noqa: F401 - public here too
    CELEBA_SPLITS,
    AttributeFormatError,
    AttributeTable,
    CelebALayout,
    check_partition_agrees,
    find_celeba,
    read_attribute_csv,
    read_attribute_names,
    read_celeba_attributes,
    read_celeba_split,
    read_partition,
    split_images,
)
from tasks.face_attributes.synthetic import ATTRIBUTES, SyntheticAttributeFaces, SyntheticUnlabeledFaces

log = logging.getLogger(__name__)


# -- datasets ------------------------------------------------------------------------------------
def _list_files(folder: Path) -> set[str]:
    """Names in a folder, listed once: a stat per row of a 200k-row file would be slower."""
    with os.scandir(folder) as entries:
        return {entry.name for entry in entries}


class AttributeImages(Dataset):
    """Images with a 0/1 vector each: `(image, targets)` items; `keyed()` for `(image, targets, key)`.

    Rows whose image file is missing are dropped at construction and counted in `missing`; an image
    that does not decode is replaced, when read, by the next readable one (`skipped`).
    """

    def __init__(
        self,
        image_root: str | os.PathLike,
        keys: Sequence[str],
        targets: np.ndarray,
        attributes: Sequence[str],
        *,
        transform: Callable | None = None,
        source: str | os.PathLike | None = None,
        check_files: bool = True,
    ) -> None:
        self.image_root = Path(image_root)
        if not self.image_root.is_dir():
            raise FileNotFoundError(f"{self.image_root}: image folder not found")
        keys = list(keys)
        targets = np.asarray(targets, dtype=np.float32).reshape(len(keys), len(attributes))
        self.missing: list[str] = []
        if check_files:
            present = _present(self.image_root, keys)
            self.missing = [key for key, ok in zip(keys, present, strict=True) if not ok]
            if self.missing:
                log.warning(
                    "%s: skipped %d of %d rows whose image is missing under %s (first: %s)",
                    source or self.image_root, len(self.missing), len(keys), self.image_root, self.missing[0],
                )  # fmt: skip
                keys = [key for key, ok in zip(keys, present, strict=True) if ok]
                targets = targets[np.asarray(present, dtype=bool)]
        if not keys:
            raise FileNotFoundError(f"{source or self.image_root}: none of the listed images exists under "
                                    f"{self.image_root}")  # fmt: skip
        self.keys = keys
        self.targets = torch.from_numpy(np.ascontiguousarray(targets))
        self.attributes = list(attributes)
        self.transform = transform
        self.skipped = SkipCounter()

    def __len__(self) -> int:
        return len(self.keys)

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        index, image = read_first_readable(lambda i: self.image_root / self.keys[i], index, len(self),
                                           self.skipped)  # fmt: skip
        if self.transform is not None:
            image = self.transform(image=image)["image"]
        return to_model_input(image), self.targets[index], self.keys[index]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, targets, _ = self.load(index)
        return image, targets

    def labels(self) -> np.ndarray:
        return self.targets.numpy()

    def keyed(self) -> KeyedAttributeImages:
        return KeyedAttributeImages(self)


def _present(root: Path, keys: Sequence[str]) -> list[bool]:
    listed: dict[Path, set[str]] = {}
    present = []
    for key in keys:
        path = root / key
        folder = path.parent
        if folder not in listed:
            listed[folder] = _list_files(folder) if folder.is_dir() else set()
        present.append(path.name in listed[folder])
    return present


class KeyedAttributeImages(Dataset):
    """`(image, targets, key)` items of an `AttributeImages`."""

    def __init__(self, dataset: AttributeImages) -> None:
        self.dataset = dataset
        self.attributes = dataset.attributes

    @property
    def transform(self):  # seed_worker_augmentation reseeds it
        return self.dataset.transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        return self.dataset.load(index)

    def labels(self) -> np.ndarray:
        return self.dataset.labels()


class CelebA(AttributeImages):
    """CelebA (Liu et al. 2015) under `root`, official or Kaggle layout, one split of its partition.

    `split` is "train", "valid" (or "val") or "test"; `attributes` are the names in file order (CelebA's
    40, or whatever the file has). Items are `(image tensor in [-1, 1], float tensor of 0/1 per attribute)`.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", *, transform: Callable | None = None):
        if split not in CELEBA_SPLITS:
            raise ValueError(f"split must be one of {sorted(CELEBA_SPLITS)}, got {split!r}")
        self.layout = layout = find_celeba(root)
        table = read_celeba_split(layout, split)
        self.split = split
        super().__init__(
            layout.images, table.images, table.values, table.attributes, transform=transform,
            source=layout.attributes,
        )  # fmt: skip


def celeba_split_images(root: str | os.PathLike, split: str) -> tuple[Path, list[str]]:
    """(image folder, image names) of a CelebA split from the partition file alone: no labels read."""
    layout = find_celeba(root)
    return layout.images, split_images(read_partition(layout.partition), split, layout.partition)


class AttributeCSV(AttributeImages):
    """Any `image,<attr>,...` CSV (0/1 or -1/1); images are relative to `image_root` (default: its folder)."""

    def __init__(self, path: str | os.PathLike, image_root: str | os.PathLike | None = None, *,
                 transform: Callable | None = None) -> None:
        table = read_attribute_csv(path)
        root = Path(image_root) if image_root is not None else Path(path).parent
        super().__init__(root, table.images, table.values, table.attributes, transform=transform, source=path)


class UnlabeledImages(Dataset):
    """Images under `root` (all of them, at any depth, or the `keys` given) as `(image, key)`.

    No label file is read: this is what a student distils on. A file that does not decode is counted in
    `skipped` and, with `drop_unreadable`, given as None (`collate_readable` drops it: `export-logits` and
    `predict` must not write one image's output under another's key); otherwise the next readable image
    takes its place, as in training.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        keys: Sequence[str] | None = None,
        *,
        transform: Callable | None = None,
        drop_unreadable: bool = False,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: image folder not found")
        if keys is None:
            files = (p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
            keys = sorted(p.relative_to(self.root).as_posix() for p in files)
            if not keys:
                raise FileNotFoundError(f"{self.root}: no {'/'.join(IMAGE_EXTENSIONS)} images found")
        self.keys = list(keys)
        self.transform = transform
        self.drop_unreadable = drop_unreadable
        self.skipped = SkipCounter()

    def __len__(self) -> int:
        return len(self.keys)

    def _tensor(self, image: np.ndarray) -> torch.Tensor:
        if self.transform is not None:
            image = self.transform(image=image)["image"]
        return to_model_input(image)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str] | None:
        if self.drop_unreadable:
            path = self.root / self.keys[index]
            try:
                image = read_image(path)
            except ImageReadError as err:
                self.skipped.record(err, path)
                return None
            return self._tensor(image), self.keys[index]
        index, image = read_first_readable(lambda i: self.root / self.keys[i], index, len(self), self.skipped)
        return self._tensor(image), self.keys[index]


def collate_readable(items: list) -> tuple | None:
    """`default_collate` over the items that could be read (None for an all-unreadable batch)."""
    items = [item for item in items if item is not None]
    return default_collate(items) if items else None


# -- transforms ----------------------------------------------------------------------------------
def face_eval_transform(size: int) -> A.Compose:
    """Aligned crops keep the whole face: the shorter side to `size`, then the centre square
    (CelebA's 178 x 218 loses 14 px of background above and below at 128 px)."""
    return A.Compose([A.SmallestMaxSize(max_size=size), A.CenterCrop(height=size, width=size)])


def face_train_transform(size: int, *, seed: int | None = None) -> A.Compose:
    """Mirror, a little pose and colour jitter: attributes are the same on a mirrored face."""
    return A.Compose([
        A.SmallestMaxSize(max_size=size),
        A.CenterCrop(height=size, width=size),
        A.Affine(scale=(0.95, 1.05), translate_percent=(-0.04, 0.04), rotate=(-6, 6), p=0.7),
        A.HorizontalFlip(p=0.5),
        A.ColorJitter(brightness=0.15, contrast=0.15, saturation=0.15, hue=0.0, p=0.5),
    ], seed=seed)  # fmt: skip


# -- the data module -----------------------------------------------------------------------------
@dataclass
class SyntheticAttributesConfig:
    """Sizes of the synthetic splits: `train` labeled faces, `unlabeled` other faces (distillation)."""

    train: int = 2000
    val: int = 1000
    test: int = 2000
    unlabeled: int = 20000
    seed: int = 0
    cache: int = 5000  # rendered images each process keeps per split (48 KB each at 128 px)


DatasetName = Literal["synthetic", "celeba", "csv"]


class FaceAttributesDataModule(TaskDataModule):
    """Labeled train/val/test splits of one data set, and, with `train_on: unlabeled`, unlabeled faces
    to train on instead of the labeled train split (distillation; no label file is read for them).

    * `synthetic` (default): `synthetic.train` labeled faces, or `synthetic.unlabeled` other faces;
    * `celeba`: `root` in either layout, its partition's train/valid/test;
    * `csv`: `train_csv`, `val_csv`, `test_csv` (default: the val CSV), images under `image_root`.

    Unlabeled faces are `unlabeled_root` (any folder) when given; otherwise the synthetic set's
    unlabeled split, or CelebA's train images listed from the partition file alone. Attribute names
    come from the labeled data's file and reach the model through `TaskSpec.links`. `predict` runs on
    every image under `predict_root`, or on the test split.
    """

    def __init__(
        self,
        dataset: DatasetName = "synthetic",
        root: str | None = None,
        *,
        train_csv: str | None = None,
        val_csv: str | None = None,
        test_csv: str | None = None,
        image_root: str | None = None,
        train_on: Literal["labeled", "unlabeled"] = "labeled",
        unlabeled_root: str | None = None,
        synthetic: SyntheticAttributesConfig | dict | None = None,
        image_size: int = 128,
        batch_size: int = 64,
        eval_batch_size: int = 200,
        num_workers: int = DEFAULT_NUM_WORKERS,
        augment: list[dict] | None = None,
        predict_root: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        if dataset not in ("synthetic", "celeba", "csv"):
            raise ValueError(f"dataset must be synthetic, celeba or csv, got {dataset!r}")
        if dataset == "celeba" and root is None:
            raise ValueError("dataset=celeba needs root= (the folder holding CelebA)")
        if dataset == "csv" and (val_csv is None or train_csv is None and train_on == "labeled"):
            raise ValueError("dataset=csv needs val_csv and, unless train_on=unlabeled, train_csv")
        if train_on not in ("labeled", "unlabeled"):
            raise ValueError(f"train_on must be labeled or unlabeled, got {train_on!r}")
        self.save_hyperparameters()
        self.dataset = dataset
        self.root = root
        self.csvs = {"train": train_csv, "val": val_csv, "test": test_csv or val_csv}
        self.image_root = image_root
        self.train_on = train_on
        self.unlabeled_root = unlabeled_root
        self.synthetic = as_dataclass(SyntheticAttributesConfig, synthetic)
        self.image_size = image_size
        self.eval_batch_size = eval_batch_size
        self.augment = augment
        self.predict_root = predict_root
        self._attribute_names: list[str] | None = None
        self.splits: dict[str, Dataset] = {}

    # -- what the model needs ----------------------------------------------------------------
    @property
    def attribute_names(self) -> list[str]:
        """From the labeled data's file, read without its rows."""
        if self._attribute_names is None:
            if self.dataset == "synthetic":
                self._attribute_names = list(ATTRIBUTES)
            elif self.dataset == "celeba":
                self._attribute_names = read_attribute_names(find_celeba(self.root).attributes)
            else:
                self._attribute_names = read_attribute_names(self.csvs["val"])
        return self._attribute_names

    @property
    def num_attributes(self) -> int:
        return len(self.attribute_names)

    @property
    def labeled_training(self) -> bool:
        return self.train_on == "labeled"

    def label_frequencies(self) -> np.ndarray:
        """Positive rate of each attribute on the labeled train split (for `pos_weight`)."""
        train = self.splits.get("train") if self.labeled_training else None
        if train is None:
            train = self._labeled("train", transform=None)
        return train.labels().mean(axis=0)

    # -- datasets --------------------------------------------------------------------------------
    def train_transform(self) -> A.Compose:
        size = self.image_size
        if self.dataset == "synthetic" and self.unlabeled_root is None:
            # the renderer already varies pose and light: a mirror is all the synthetic faces need
            default = partial(A.Compose, [A.HorizontalFlip(p=0.5)], seed=self.seed)
        else:
            default = partial(face_train_transform, size, seed=self.seed)
        then = [A.SmallestMaxSize(max_size=size), A.CenterCrop(height=size, width=size)]
        return build_augmentation(self.augment, default, seed=self.seed, then=then)

    def _labeled(self, split: str, transform: Callable | None) -> Dataset:
        if self.dataset == "synthetic":
            cfg = self.synthetic
            count = {"train": cfg.train, "val": cfg.val, "test": cfg.test}[split]
            return SyntheticAttributeFaces(
                count, size=self.image_size, seed=cfg.seed, split=split, transform=transform, cache=cfg.cache
            )
        if transform is None:
            transform = face_eval_transform(self.image_size)
        if self.dataset == "celeba":
            return CelebA(self.root, "valid" if split == "val" else split, transform=transform).keyed()
        return AttributeCSV(self.csvs[split], self.image_root, transform=transform).keyed()

    def _unlabeled(self, transform: Callable) -> Dataset:
        if self.unlabeled_root is not None:
            return UnlabeledImages(self.unlabeled_root, transform=transform)
        if self.dataset == "synthetic":
            cfg = self.synthetic
            return SyntheticUnlabeledFaces(
                cfg.unlabeled, size=self.image_size, seed=cfg.seed, transform=transform, cache=cfg.cache
            )
        if self.dataset == "celeba":
            images, keys = celeba_split_images(self.root, "train")
            return UnlabeledImages(images, keys, transform=transform)
        raise ValueError("train_on=unlabeled with dataset=csv needs unlabeled_root (a folder of faces)")

    def make_dataset(self, split: str) -> Dataset:
        if split == "train":
            transform = self.train_transform()
            return self._labeled("train", transform) if self.labeled_training else self._unlabeled(transform)
        return self._labeled(split, None)

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("val", "test"), "predict": ()}
        for split in wanted.get(stage, ("train", "val", "test")):
            if split not in self.splits:
                self.splits[split] = self.make_dataset(split)

    def train_dataloader(self) -> DataLoader:
        return self.loader(self.splits["train"], train=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader(self.splits["val"], batch_size=self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self.loader(self.splits["test"], batch_size=self.eval_batch_size)

    def threshold_dataloader(self) -> DataLoader | None:
        """The validation split, on which test-time decision thresholds are chosen."""
        if "val" not in self.splits:
            self.splits["val"] = self.make_dataset("val")
        return self.loader(self.splits["val"], batch_size=self.eval_batch_size, persistent=False)

    def predict_dataloader(self) -> DataLoader:
        """Batches of `(images, keys)`; unreadable files under `predict_root` are skipped and counted."""
        if self.predict_root is not None:
            images = UnlabeledImages(self.predict_root, transform=face_eval_transform(self.image_size),
                                     drop_unreadable=True)  # fmt: skip
            return self.loader(images, batch_size=self.eval_batch_size, collate_fn=collate_readable)
        test = self.splits.get("test") or self.make_dataset("test")
        return self.loader(_WithoutTargets(test), batch_size=self.eval_batch_size)


class _WithoutTargets(Dataset):
    """`(image, key)` items of a labeled split: what `predict` consumes."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        image, _, key = self.dataset[index]
        return image, key
