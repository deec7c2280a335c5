"""Geotagged photo datasets and the DataModule: photos of a CSV under an image root, WebDataset shards
of them (`shards.py`), the synthetic set, or a folder to predict on.

The CSV layouts (MP-16 / Im2GPS3k / YFCC4k, OSV-5M) are parsed in `formats.py`; a bad row is an error
naming the file and line, or with `skip_bad_rows` is skipped and counted. A missing or corrupt image is
skipped and counted when it is read (`tasks.common.io.read_first_readable`).

Datasets hold paths and numbers only, never decoded images. At MP-16's scale (4.7 M photos) training
reads WebDataset shards (`mobilenets geolocation shards` writes them).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from functools import cached_property, partial
from pathlib import Path
from typing import Literal

import albumentations as A
import numpy as np
from torch.utils.data import DataLoader, Dataset, IterableDataset

from tasks.common.classification import ImageFiles
from tasks.common.data import DEFAULT_NUM_WORKERS, TaskDataModule
from tasks.common.io import SkipCounter, read_first_readable
from tasks.common.transforms import (
    build_augmentation,
    classification_eval,
    classification_train,
    to_model_input,
)
from tasks.geolocation.cells import Partition, leaf_cell_ids, partitions, read_cells_csv
from tasks.geolocation.formats import (  # noqa: F401 - public here too (tests, commands, benchmarks)
    EXTRA_COLUMNS,
    FORMATS,
    PhotoCSVError,
    PhotoTable,
    detect_kind,
    image_pattern_for,
    photo_target,
    read_photo_csv,
)
from tasks.geolocation.shards import SHARD_INDEX, ShardedGeoImages, read_shard_index, write_shards  # noqa: F401
from tasks.geolocation.synthetic import SyntheticGeo, World, make_world


class GeoImages(Dataset):
    """The photos of a `PhotoTable` under `root`, decoded on access; (image tensor, target) items.

    `labels` is (photos, partitions), the class of each photo in each partition (-1: a dropped cell).
    """

    def __init__(
        self,
        table: PhotoTable,
        root: str | os.PathLike,
        *,
        labels: np.ndarray | None = None,
        image_pattern: str | None = None,
        transform: Callable | None = None,
    ) -> None:
        self.table = table
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: image root of {table.path} not found")
        self.pattern = image_pattern_for(table, image_pattern)
        self.labels = np.zeros((len(table), 0), np.int64) if labels is None else labels
        self.transform = transform
        self.skipped = SkipCounter()

    def __len__(self) -> int:
        return len(self.table)

    def path(self, index: int) -> Path:
        return self.root / self.pattern.format(id=self.table.ids[index])

    def key(self, index: int) -> str:
        return self.table.ids[index]

    def __getitem__(self, index: int):
        index, image = read_first_readable(self.path, index, len(self), self.skipped)
        if self.transform is not None:
            image = self.transform(image=image)["image"]
        countries = self.table.countries
        target = photo_target(
            self.labels[index],
            self.table.lat[index],
            self.table.lon[index],
            self.key(index),
            countries[index] if countries is not None else "",
        )
        return to_model_input(image), target


class FolderImages(Dataset):
    """Every image under a folder, no CSV: what `predict` runs on (`data.predict_root`)."""

    def __init__(self, root: str | os.PathLike, *, transform: Callable | None = None) -> None:
        self.files = ImageFiles(root, transform=transform)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        image, _, path = self.files.load(index)
        return self.files.to_tensor(image), photo_target(np.zeros(0), math.nan, math.nan, path, "")


# -- the DataModule --------------------------------------------------------------------------------
DatasetName = Literal["synthetic", "csv"]


class GeolocationDataModule(TaskDataModule):
    """Train/val/test/predict loaders of geotagged photos, and the partitions the model classifies over.

    `dataset: csv` reads `{train,val,test}_csv` with images under `{train,val,test}_images` (val falls
    back to test); `train_shards` (a folder written by `mobilenets geolocation shards`) replaces the
    training CSV's images. The partitions are `cells_files` (cells.csv, coarse to fine), or are made from
    the training photos with `t_max` (one partition per value) and `t_min`. `num_cells` and
    `cell_tables` are what the model gets (`TaskSpec.links`).

    Batches are (images, target) with target `cells` (batch, partitions), `coords` (lat, lon), `key`
    and `country` (empty when unknown). `predict_root` predicts on every image of a folder.
    """

    def __init__(
        self,
        dataset: DatasetName = "synthetic",
        *,
        train_csv: str | None = None,
        train_images: str | None = None,
        train_shards: str | None = None,
        val_csv: str | None = None,
        val_images: str | None = None,
        test_csv: str | None = None,
        test_images: str | None = None,
        image_pattern: str | None = None,
        id_column: str | None = None,
        lat_column: str | None = None,
        lon_column: str | None = None,
        skip_bad_rows: bool = False,
        cells_files: list[str] | None = None,
        t_max: list[int] | None = None,
        t_min: int = 50,
        min_level: int = 0,
        max_level: int = 30,
        image_size: int = 224,
        batch_size: int = 32,
        num_workers: int = DEFAULT_NUM_WORKERS,
        augment: list[dict] | None = None,
        synthetic_cities: int = 120,
        synthetic_regions: int = 30,
        synthetic_train: int = 24000,
        synthetic_val: int = 1000,
        synthetic_test: int = 2000,
        predict_root: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        if dataset not in ("synthetic", "csv"):
            raise ValueError(f"dataset must be synthetic or csv, got {dataset!r}")
        if dataset == "csv" and cells_files is None and train_csv is None:
            raise ValueError("dataset=csv needs train_csv (to partition) or cells_files")
        self.save_hyperparameters()
        self.dataset = dataset
        self.options = dict(
            id_column=id_column, lat_column=lat_column, lon_column=lon_column, skip_bad_rows=skip_bad_rows
        )
        self.files = {
            "train": (train_csv, train_images),
            "val": (val_csv or test_csv, val_images or test_images),
            "test": (test_csv, test_images),
        }
        self.train_shards = train_shards
        self.image_pattern = image_pattern
        self.cells_files = cells_files
        self.t_max = list(t_max) if t_max is not None else [5000, 2000, 1000]
        self.t_min, self.min_level, self.max_level = t_min, min_level, max_level
        self.image_size = image_size
        self.augment = augment
        self.synthetic = dict(
            cities=synthetic_cities,
            regions=synthetic_regions,
            counts={"train": synthetic_train, "val": synthetic_val, "test": synthetic_test},
        )
        self.predict_root = predict_root
        self._partitions: list[Partition] | None = None
        self._tables: dict[str, PhotoTable] = {}
        self._leaves: dict[str, np.ndarray] = {}  # see `table_leaves`
        self.splits: dict[str, Dataset] = {}

    # -- what the model needs ----------------------------------------------------------------------
    @cached_property
    def world(self) -> World:
        return make_world(self.seed, cities=self.synthetic["cities"], regions=self.synthetic["regions"])

    def table(self, split: str) -> PhotoTable:
        if split not in self._tables:
            csv_path, _ = self.files[split]
            if csv_path is None:
                raise ValueError(f"dataset=csv needs {split}_csv for the {split} split")
            self._tables[split] = read_photo_csv(csv_path, **self.options)
            if self._tables[split].skipped:
                print(f"{csv_path}: skipped {self._tables[split].skipped} bad rows")
        return self._tables[split]

    def table_leaves(self, split: str) -> np.ndarray:
        """Leaf cell ids of a CSV split's photos, made once: partitioning the training photos and
        labelling them take the same ids. `make_dataset` drops them once the split is labelled."""
        if split not in self._leaves:
            table = self.table(split)
            self._leaves[split] = leaf_cell_ids(table.lat, table.lon)
        return self._leaves[split]

    @property
    def partitions(self) -> list[Partition]:
        """Read from `cells_files`, or made from the training photos (one per `t_max`), coarse first."""
        if self._partitions is None:
            if self.cells_files:
                self._partitions = [read_cells_csv(path) for path in self.cells_files]
            else:
                if self.dataset == "synthetic":
                    train = SyntheticGeo(self.world, self.synthetic["counts"]["train"], seed=self.seed)
                    lat, lon, source = train.lat, train.lon, "synthetic train split"
                else:
                    table = self.table("train")
                    lat, lon, source = table.lat, table.lon, str(table.path)
                self._partitions = partitions(
                    lat,
                    lon,
                    t_max=self.t_max,
                    t_min=self.t_min,
                    min_level=self.min_level,
                    max_level=self.max_level,
                    leaf_ids=self.table_leaves("train") if self.dataset == "csv" else None,
                )
                for part in self._partitions:
                    print(
                        f"partition t_max={part.t_max} t_min={part.t_min} of {source}: {len(part)} cells, "
                        f"{part.dropped} of {len(lat)} photos in dropped cells"
                    )
        return self._partitions

    @property
    def num_cells(self) -> list[int]:
        return [len(part) for part in self.partitions]

    @property
    def cell_tables(self) -> list[dict]:
        return [part.as_dict() for part in self.partitions]

    def assign(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        """(photos, partitions) classes of positions, -1 outside every kept cell of a partition."""
        return self.classify(leaf_cell_ids(lat, lon))

    def classify(self, leaves: np.ndarray) -> np.ndarray:
        """`assign` from leaf cell ids, a partition at a time into one array (no stack of copies)."""
        labels = np.empty((len(leaves), len(self.partitions)), np.int64)
        for k, part in enumerate(self.partitions):
            labels[:, k] = part.assign(leaves)
        return labels

    # -- datasets ----------------------------------------------------------------------------------
    def train_transform(self) -> A.Compose:
        if self.dataset == "synthetic":  # the renderer already varies layout; it mirrors, too
            default = partial(A.Compose, [], seed=self.seed)
        else:
            default = partial(classification_train, self.image_size, scale=(0.5, 1.0), seed=self.seed)
        size = self.image_size
        return build_augmentation(self.augment, default, seed=self.seed, then=[A.Resize(size, size)])

    def make_dataset(self, split: Literal["train", "val", "test"]) -> Dataset:
        train = split == "train"
        transform = self.train_transform() if train else None
        if self.dataset == "synthetic":
            data = SyntheticGeo(
                self.world,
                self.synthetic["counts"][split],
                split=split,
                size=self.image_size,
                seed=self.seed,
                transform=transform,
            )
            data.labels = self.assign(data.lat, data.lon)
            return data if train else data.with_countries()
        if train and self.train_shards:
            return ShardedGeoImages(
                self.train_shards,
                self.assign,
                transform=transform,
                batch_size=self.batch_size,
                seed=self.seed,
            )
        table = self.table(split)
        _, images = self.files[split]
        if images is None:
            raise ValueError(f"dataset=csv needs {split}_images (the image root of {table.path})")
        labels = self.classify(self.table_leaves(split))
        del self._leaves[split]
        return GeoImages(
            table,
            images,
            labels=labels,
            image_pattern=self.image_pattern,
            transform=transform or classification_eval(self.image_size),
        )

    def setup(self, stage: str | None = None) -> None:
        predict = () if self.predict_root is not None else ("test",)
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": predict}
        for split in wanted.get(stage, ("train", "val", "test")):
            if split not in self.splits:
                self.splits[split] = self.make_dataset(split)

    def train_dataloader(self) -> DataLoader:
        data = self.splits["train"]
        if isinstance(data, IterableDataset):
            return self.loader(data, train=False)  # the dataset shuffles; a DataLoader cannot
        return self.loader(data, train=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader(self.splits["val"])

    def test_dataloader(self) -> DataLoader:
        return self.loader(self.splits["test"])

    def predict_dataloader(self) -> DataLoader:
        """The test split (keys: its ids), or every image of `predict_root` (keys: file paths)."""
        if self.predict_root is not None:
            return self.loader(
                FolderImages(self.predict_root, transform=classification_eval(self.image_size))
            )
        return self.loader(self.splits["test"] if "test" in self.splits else self.make_dataset("test"))
