"""Fine-grained classification data: Stanford Dogs, any class-per-folder tree, and the synthetic set.

The image datasets are `tasks.common.classification.LabelledImages`; this module adds Stanford
Dogs' official lists and boxes, and the DataModule that picks a data set and its splits.
"""

from __future__ import annotations

import itertools
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Literal

import albumentations as A
import numpy as np
import scipy.io
from torch.utils.data import DataLoader
from torchvision.datasets.folder import find_classes

from tasks.common.classification import ImageFiles, ImageFolderDataset, KeyedImages, LabelledImages
from tasks.common.data import DEFAULT_NUM_WORKERS, TaskDataModule
from tasks.common.io import unsafe_relative_name
from tasks.common.transforms import build_augmentation, classification_eval, classification_train
from tasks.finegrained.synthetic import SyntheticFineGrained

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, exclusive end


class StanfordDogs(LabelledImages):
    """Stanford Dogs (Khosla et al. 2011) in its official layout under `root`.

    `root/lists/{train,test}_list.mat` give the split (keys `file_list`, `labels`, 1-based);
    images are `root/Images/<wnid>-<breed>/<file>.jpg`. Class names come from the train list, so
    both splits agree, and are the folder name after its first '-' (breeds contain hyphens).
    With `crop_to_box`, each image is cut to the union of the boxes in
    `root/Annotation/<wnid>-<breed>/<file stem>`: an image with two dogs shows two of the same
    breed, and keeping both avoids picking one arbitrarily.
    """

    SPLITS = ("train", "test")

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        *,
        transform: Callable | None = None,
        crop_to_box: bool = False,
    ) -> None:
        if split not in self.SPLITS:
            raise ValueError(f"split must be one of {self.SPLITS}, got {split!r}")
        self.root = Path(root)
        images = self.root / "Images"
        if not images.is_dir():
            raise FileNotFoundError(f"{images}: Stanford Dogs image folder not found")
        folders = stanford_dogs_folders(self.root)
        samples = []
        for record, (relative, label) in enumerate(
            _read_split_list(self.root / "lists" / f"{split}_list.mat")
        ):
            folder = relative.split("/")[0]
            if label >= len(folders):
                raise ValueError(
                    f"{self.root / 'lists' / f'{split}_list.mat'}: record {record} ({relative}) has label "
                    f"{label + 1}, beyond the {len(folders)} classes of train_list.mat"
                )
            if folders[label] != folder:
                raise ValueError(
                    f"{self.root / 'lists' / f'{split}_list.mat'}: record {record} ({relative}) has label "
                    f"{label + 1}, which train_list.mat gives to {folders[label]}"
                )
            samples.append((str(images / relative), label))
        super().__init__(samples, [breed_name(folder) for folder in folders], transform=transform)
        self.crop_to_box = crop_to_box

    def annotation_path(self, index: int) -> Path:
        relative = Path(self.samples[index][0]).relative_to(self.root / "Images")
        return self.root / "Annotation" / relative.with_suffix("")

    def crop(self, index: int, image: np.ndarray) -> np.ndarray:
        if not self.crop_to_box:
            return image
        x0, y0, x1, y1 = union_box(read_boxes(self.annotation_path(index)))
        height, width = image.shape[:2]
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
        return image[y0:y1, x0:x1] if x1 > x0 and y1 > y0 else image


def breed_name(folder: str) -> str:
    """'n02095314-wire-haired_fox_terrier' -> 'wire-haired_fox_terrier'."""
    return folder.split("-", 1)[1] if "-" in folder else folder


def stanford_dogs_folders(root: str | os.PathLike) -> list[str]:
    """Class folders in label order, read from `root/lists/train_list.mat` (small, fast)."""
    path = Path(root) / "lists" / "train_list.mat"
    folders: dict[int, str] = {}
    for record, (relative, label) in enumerate(_read_split_list(path)):
        folder = relative.split("/")[0]
        if folders.setdefault(label, folder) != folder:
            raise ValueError(
                f"{path}: record {record} puts {folder} under label {label + 1}, "
                f"already used by {folders[label]}"
            )
    if max(folders) != len(folders) - 1:  # labels are 0..max, so a gap means max >= len (no huge range)
        gaps = itertools.filterfalse(folders.__contains__, itertools.count())
        missing = [m + 1 for m in itertools.islice(gaps, 10)]
        raise ValueError(
            f"{path}: labels run to {max(folders) + 1} but only {len(folders)} have images; "
            f"labels {missing}{' ...' if max(folders) + 1 - len(folders) > 10 else ''} have no image"
        )
    return [folders[label] for label in range(len(folders))]


def _read_split_list(path: Path) -> list[tuple[str, int]]:
    """(relative image path, 0-based label) records of an official split .mat file."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: Stanford Dogs split list not found (the official lists.tar "
            "unpacks to <root>/lists/{train,test}_list.mat)"
        )
    try:
        mat = scipy.io.loadmat(path)
    except Exception as err:  # scipy raises MatReadError, ValueError, OSError, TypeError... on non-MAT bytes
        raise ValueError(f"{path}: not a readable MATLAB file ({type(err).__name__}: {err})") from err
    for key in ("file_list", "labels"):
        if key not in mat:
            raise ValueError(
                f"{path}: missing key {key!r} (has {sorted(k for k in mat if not k.startswith('__'))})"
            )
    if not isinstance(mat["file_list"], np.ndarray) or not isinstance(mat["labels"], np.ndarray):
        raise ValueError(f"{path}: file_list and labels must be MATLAB arrays")
    files = [_mat_string(entry, path, record) for record, entry in enumerate(mat["file_list"].ravel())]
    labels = np.asarray(mat["labels"]).ravel()
    if len(files) != len(labels):
        raise ValueError(f"{path}: {len(files)} files but {len(labels)} labels")
    if not files:
        raise ValueError(f"{path}: the split list is empty (no file_list entries)")
    if labels.dtype.kind not in "iuf":
        raise ValueError(f"{path}: labels are {labels.dtype} values, not numbers (1-based integers)")
    records = []
    for record, (relative, label) in enumerate(zip(files, labels, strict=True)):
        if not np.isfinite(label) or label != int(label) or label < 1:
            raise ValueError(
                f"{path}: record {record} ({relative}) has label {label}; labels are 1-based integers"
            )
        if unsafe_relative_name(relative) or "/" not in relative:
            raise ValueError(
                f"{path}: record {record} has file {relative!r}; expected '<wnid>-<breed>/<file>.jpg' "
                "relative to Images/"
            )
        records.append((relative, int(label) - 1))
    return records


def _mat_string(entry, path: Path, record: int) -> str:
    """A MATLAB cell entry, a (1,)-array of str nested in object arrays, as a plain str."""
    while isinstance(entry, np.ndarray):
        if entry.size == 0:
            raise ValueError(f"{path}: record {record} of file_list is empty")
        entry = entry.ravel()[0]
    if not isinstance(entry, str):
        kind = type(entry).__name__
        raise ValueError(f"{path}: record {record} of file_list is {kind} {entry!r:.80}, not a path")
    return entry


def read_boxes(path: str | os.PathLike) -> list[Box]:
    """Every `object/bndbox` of a Stanford Dogs (PASCAL VOC style) annotation file."""
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: annotation not found (needed for crop_to_box)") from None
    except ET.ParseError as err:
        raise ValueError(f"{path}: not valid XML ({err})") from err
    boxes = []
    for number, node in enumerate(root.iter("bndbox")):
        try:
            x0, y0, x1, y1 = (int(float(node.findtext(tag))) for tag in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError):
            raise ValueError(
                f"{path}: object {number} has a bndbox without numeric xmin/ymin/xmax/ymax"
            ) from None
        boxes.append((x0, y0, x1, y1))
    if not boxes:
        raise ValueError(f"{path}: no object/bndbox")
    return boxes


def union_box(boxes: list[Box]) -> Box:
    return (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )


DatasetName = Literal["synthetic", "stanford_dogs", "imagefolder"]


class FineGrainedDataModule(TaskDataModule):
    """Train/val/test/predict loaders for one fine-grained data set.

    Splits: Stanford Dogs validates and tests on its test list (the paper reports test top-1);
    an image folder uses `root/train` and `root/val` (val also serves as test); the synthetic set
    has its own train/val/test. Real data gets the paper's random-resized-crop + flip; the
    synthetic set only a flip, because its renderer already varies pose, scale and background,
    and random crops would cut off the small parts that define its classes. `augment` replaces
    either (a list of albumentations transforms; `[]` for none), followed by a resize to
    `image_size`. `predict_root` predicts on every image in a folder instead of the validation split.
    """

    def __init__(
        self,
        dataset: DatasetName = "synthetic",
        root: str | None = None,
        *,
        image_size: int = 224,
        batch_size: int = 32,
        num_workers: int = DEFAULT_NUM_WORKERS,
        augment: list[dict] | None = None,
        crop_to_box: bool = False,
        synthetic_classes: int = 24,
        synthetic_train_per_class: int = 300,
        synthetic_val_per_class: int = 40,
        predict_root: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        if dataset not in ("synthetic", "stanford_dogs", "imagefolder"):
            raise ValueError(f"dataset must be synthetic, stanford_dogs or imagefolder, got {dataset!r}")
        if dataset != "synthetic" and root is None:
            raise ValueError(f"dataset={dataset!r} needs root= (the data set's folder)")
        self.save_hyperparameters()
        self.dataset = dataset
        self.root = root
        self.image_size = image_size
        self.augment = augment
        self.crop_to_box = crop_to_box
        self.synthetic_classes = synthetic_classes
        self.synthetic_train_per_class = synthetic_train_per_class
        self.synthetic_val_per_class = synthetic_val_per_class
        self.predict_root = predict_root
        self._class_names: list[str] | None = None
        self.splits: dict[str, LabelledImages | SyntheticFineGrained] = {}

    @property
    def class_names(self) -> list[str]:
        """Known without loading images: read from the split list or the folder names."""
        if self._class_names is None:
            if self.dataset == "synthetic":
                self._class_names = SyntheticFineGrained(self.synthetic_classes, 1).classes
            elif self.dataset == "stanford_dogs":
                self._class_names = [breed_name(folder) for folder in stanford_dogs_folders(self.root)]
            else:
                self._class_names = find_classes(Path(self.root) / "train")[0]
        return self._class_names

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def train_transform(self) -> A.Compose:
        if self.dataset == "synthetic":
            default = partial(A.Compose, [A.HorizontalFlip(p=0.5)], seed=self.seed)
        else:
            default = partial(classification_train, self.image_size, seed=self.seed)
        size = self.image_size
        return build_augmentation(self.augment, default, seed=self.seed, then=[A.Resize(size, size)])

    def make_dataset(self, split: Literal["train", "val", "test"]) -> LabelledImages | SyntheticFineGrained:
        train = split == "train"
        if self.dataset == "synthetic":
            per_class = self.synthetic_train_per_class if train else self.synthetic_val_per_class
            return SyntheticFineGrained(
                self.synthetic_classes,
                per_class,
                size=self.image_size,
                seed=self.seed,
                split=split,
                transform=self.train_transform() if train else None,
            )
        transform = self.train_transform() if train else classification_eval(self.image_size)
        if self.dataset == "stanford_dogs":
            return StanfordDogs(
                self.root, "train" if train else "test", transform=transform, crop_to_box=self.crop_to_box
            )
        # every split is labelled by the training split's classes (a val/ lacking one must not shift labels)
        return ImageFolderDataset(
            Path(self.root) / ("train" if train else "val"), transform=transform, classes=self.class_names
        )

    def setup(self, stage: str | None = None) -> None:
        predict = () if self.predict_root is not None else ("val",)
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": predict}
        for split in wanted.get(stage, ("train", "val", "test")):
            if split not in self.splits:
                self.splits[split] = self.make_dataset(split)

    def train_dataloader(self) -> DataLoader:
        return self.loader(self.splits["train"], train=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader(self.splits["val"])

    def test_dataloader(self) -> DataLoader:
        return self.loader(self.splits["test"])

    def predict_dataloader(self) -> DataLoader:
        """Batches of (images, keys): file paths, or `<split>/<index>` for the synthetic set."""
        if self.predict_root is not None:
            dataset = ImageFiles(self.predict_root, transform=classification_eval(self.image_size))
        else:
            dataset = self.splits["val"] if "val" in self.splits else self.make_dataset("val")
        return self.loader(KeyedImages(dataset))
