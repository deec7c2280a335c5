"""Geotagged photo data: the CSVs people have, WebDataset shards of them, the synthetic set, the DataModule.

Two CSV forms are recognised from the header (column names can be overridden):

- MP-16 / Im2GPS3k / YFCC4k: `IMG_ID,LAT,LON[,...]`, `IMG_ID` the image path under the image root;
- OSV-5M `train.csv` / `test.csv`: `id,latitude,longitude,...,country,...,region,...,city,...`, images
  `images/{train,test}/<id>.jpg` (point `*_images` at `images/train`; the file is `<id>.jpg`).

A bad row (latitude outside [-90, 90], longitude outside [-180, 180], NaN, a missing column, a duplicate
id) is an error naming the file and line, or with `skip_bad_rows` is skipped and counted. A missing or
corrupt image is skipped and counted when it is read (`tasks.common.io.read_first_readable`).

Datasets hold paths and numbers only, never decoded images. At MP-16's scale (4.7 M photos) training
reads WebDataset shards (`mobilenets geolocation shards` writes them): each rank, and each loader worker
within it, reads its own shards, and every rank yields the same number of samples per epoch, so DDP
ranks stay in step.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path
from typing import Literal

import albumentations as A
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from tasks.common.classification import ImageFiles
from tasks.common.data import DEFAULT_NUM_WORKERS, TaskDataModule
from tasks.common.io import ImageReadError, SkipCounter, read_first_readable
from tasks.common.transforms import (
    build_augmentation,
    classification_eval,
    classification_train,
    to_model_input,
)
from tasks.geolocation.cells import Partition, leaf_cell_ids, partitions, read_cells_csv
from tasks.geolocation.synthetic import SyntheticGeo, World, make_world

FORMATS = {  # kind: (id, lat, lon) column names, and how an id becomes a file under the image root
    "mp16": (("IMG_ID", "LAT", "LON"), "{id}"),
    "osv5m": (("id", "latitude", "longitude"), "{id}.jpg"),
}
# Columns kept beside id/lat/lon when present (the per-country report reads `country`).
EXTRA_COLUMNS = ("country", "region", "sub-region", "city")


@dataclass
class PhotoTable:
    """The rows of one photo CSV: ids, positions, the line each came from, and the extra columns kept."""

    path: Path
    kind: str
    ids: list[str]
    lat: np.ndarray
    lon: np.ndarray
    lines: np.ndarray
    extra: dict[str, list[str]] = field(default_factory=dict)
    skipped: int = 0

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def countries(self) -> list[str] | None:
        return self.extra.get("country")


def detect_kind(header: Sequence[str]) -> str | None:
    names = set(header)
    for kind, (columns, _) in FORMATS.items():
        if set(columns) <= names:
            return kind
    return None


def read_photo_csv(
    path: str | os.PathLike,
    *,
    id_column: str | None = None,
    lat_column: str | None = None,
    lon_column: str | None = None,
    skip_bad_rows: bool = False,
    extra_columns: Sequence[str] = EXTRA_COLUMNS,
) -> PhotoTable:
    """Read an MP-16-style or OSV-5M-style CSV (recognised from the header; names can be given)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: photo CSV not found")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = [h.strip() for h in next(reader, [])]
        kind = detect_kind(header)
        defaults = FORMATS[kind][0] if kind else (None, None, None)
        columns = [
            given or default
            for given, default in zip((id_column, lat_column, lon_column), defaults, strict=True)
        ]
        missing = [name for name in columns if name is None or name not in header]
        if missing or None in columns:
            known = "; ".join(f"{','.join(c)} ({k})" for k, (c, _) in FORMATS.items())
            raise ValueError(
                f"{path}:1: header {','.join(header)} lacks "
                f"{', '.join(repr(m) for m in missing if m) or 'the id/lat/lon columns'}; expected {known}, "
                "or name them with id_column / lat_column / lon_column"
            )
        at = [header.index(name) for name in columns]
        kept = [name for name in extra_columns if name in header and name not in columns]
        kept_at = [header.index(name) for name in kept]
        width = max(at + kept_at) + 1
        ids, lats, lons, lines = [], [], [], []
        extra: dict[str, list[str]] = {name: [] for name in kept}
        first_line: dict[str, int] = {}
        skipped = 0
        for line, row in enumerate(reader, start=2):
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            problem = None
            if len(row) < width:
                lacking = [header[i] for i in at + kept_at if i >= len(row)]
                problem = f"missing column {lacking[0]} (row has {len(row)} fields, header {len(header)})"
            else:
                key = row[at[0]].strip()
                try:
                    lat, lon = float(row[at[1]]), float(row[at[2]])
                except ValueError:
                    lat = lon = None
                if not key:
                    problem = f"empty {columns[0]}"
                elif lat is None:
                    problem = f"{columns[1]}/{columns[2]} not numbers: {row[at[1]]!r}, {row[at[2]]!r}"
                elif not (math.isfinite(lat) and math.isfinite(lon)):
                    problem = f"{columns[1]}/{columns[2]} not finite: {lat}, {lon}"
                elif not -90 <= lat <= 90:
                    problem = f"{columns[1]} {lat} outside [-90, 90]"
                elif not -180 <= lon <= 180:
                    problem = f"{columns[2]} {lon} outside [-180, 180]"
                elif key in first_line:
                    problem = f"duplicate {columns[0]} {key!r} (first on line {first_line[key]})"
            if problem is not None:
                if not skip_bad_rows:
                    raise ValueError(f"{path}:{line}: {problem}")
                skipped += 1
                continue
            first_line[key] = line
            ids.append(key)
            lats.append(lat)
            lons.append(lon)
            lines.append(line)
            for name, i in zip(kept, kept_at, strict=True):
                extra[name].append(row[i].strip())
    if not ids:
        raise ValueError(f"{path}: no usable rows" + (f" ({skipped} bad rows skipped)" if skipped else ""))
    return PhotoTable(
        path, kind or "custom", ids, np.array(lats), np.array(lons), np.array(lines), extra, skipped
    )


def image_pattern_for(table: PhotoTable, pattern: str | None) -> str:
    if pattern is not None:
        if "{id}" not in pattern:
            raise ValueError(f"image_pattern must contain {{id}}, got {pattern!r}")
        return pattern
    return FORMATS.get(table.kind, FORMATS["mp16"])[1]


def _target(labels: np.ndarray, lat: float, lon: float, key: str, country: str) -> dict:
    return {
        "cells": torch.from_numpy(np.asarray(labels, np.int64)),
        "coords": torch.tensor([lat, lon], dtype=torch.float64),
        "key": key,
        "country": country,
    }


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
        target = _target(
            self.labels[index],
            self.table.lat[index],
            self.table.lon[index],
            self.key(index),
            countries[index] if countries else "",
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
        return self.files.to_tensor(image), _target(np.zeros(0), math.nan, math.nan, path, "")


# -- shards --------------------------------------------------------------------------------------
SHARD_INDEX = "shards.json"


def write_shards(
    table: PhotoTable,
    root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    shard_size: int = 10_000,
    image_pattern: str | None = None,
    max_side: int | None = None,
) -> dict:
    """Write the photos of `table` as WebDataset tars `out/shard-NNNNNN.tar` plus `out/shards.json`
    (file and sample count of each shard). Each sample is the image (`jpg`) and `json` with id, lat, lon
    and the kept columns. `max_side` re-encodes larger images smaller; otherwise the file's bytes go in
    as they are. Unreadable images are skipped and counted."""
    import webdataset as wds
    from PIL import Image

    root, out = Path(root), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pattern = image_pattern_for(table, image_pattern)
    counts: list[int] = []
    skipped = 0
    # maxsize off: shards split by count alone, so the index's counts are exact
    with wds.ShardWriter(
        str(out / "shard-%06d.tar"), maxcount=shard_size, maxsize=float("inf"), verbose=0
    ) as sink:
        for i, key in enumerate(table.ids):
            path = root / pattern.format(id=key)
            try:
                data = path.read_bytes()
                with Image.open(io.BytesIO(data)) as image:
                    image.load()
                    if max_side and max(image.size) > max_side:
                        image.thumbnail((max_side, max_side))
                        buffer = io.BytesIO()
                        image.convert("RGB").save(buffer, format="JPEG", quality=90)
                        data = buffer.getvalue()
            except (OSError, SyntaxError, ValueError):
                skipped += 1
                continue
            meta = {
                "id": key,
                "lat": float(table.lat[i]),
                "lon": float(table.lon[i]),
                **{name: values[i] for name, values in table.extra.items()},
            }
            sink.write({"__key__": f"{i:09d}", "jpg": data, "json": meta})
            if not counts or counts[-1] == shard_size:
                counts.append(0)
            counts[-1] += 1
    index = {
        "shards": [{"file": f"shard-{n:06d}.tar", "count": c} for n, c in enumerate(counts)],
        "total": sum(counts),
        "skipped": skipped,
        "source": str(table.path),
    }
    (out / SHARD_INDEX).write_text(json.dumps(index, indent=1))
    return index


def read_shard_index(folder: str | os.PathLike) -> tuple[list[Path], list[int]]:
    folder = Path(folder)
    path = folder / SHARD_INDEX
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: shard index not found (write shards with `mobilenets geolocation shards`)"
        )
    try:
        index = json.loads(path.read_text())
        files = [folder / entry["file"] for entry in index["shards"]]
        counts = [int(entry["count"]) for entry in index["shards"]]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a shard index ({err})") from err
    for file in files:
        if not file.is_file():
            raise FileNotFoundError(f"{file}: listed in {path} but missing")
    return files, counts


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ShardedGeoImages(IterableDataset):
    """Photos from WebDataset shards; rank r of W reads shards r, r+W, ... and loader worker k of K
    reads every K-th of those. Each rank yields `len(self)` samples an epoch (total // W), cycling its
    shards if they hold fewer, so no rank waits at a collective for another. Within a worker, samples
    pass a shuffle buffer of `shuffle_buffer`; shard order is reshuffled every epoch. Each worker's share
    is a multiple of `batch_size`, so training never sees a ragged batch (BatchNorm needs two samples).
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        assign: Callable[[np.ndarray, np.ndarray], np.ndarray],
        *,
        transform: Callable | None = None,
        shuffle_buffer: int = 1000,
        batch_size: int = 1,
        seed: int = 0,
    ) -> None:
        self.files, self.counts = read_shard_index(folder)
        self.assign = assign
        self.transform = transform
        self.shuffle_buffer = shuffle_buffer
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self.skipped = SkipCounter()

    def __len__(self) -> int:
        per_rank = sum(self.counts) // _rank_and_world()[1]
        return per_rank - per_rank % self.batch_size

    def _quota_and_files(self) -> tuple[int, list[Path]]:
        rank, world = _rank_and_world()
        if len(self.files) < world:
            raise ValueError(f"{len(self.files)} shards cannot feed {world} ranks: write smaller shards")
        mine = list(range(rank, len(self.files), world))
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        quota = len(self)
        if workers > 1:
            if len(mine) < workers:
                raise ValueError(f"rank {rank} has {len(mine)} shards for {workers} loader workers")
            mine = mine[worker::workers]
            batches = quota // self.batch_size
            quota = (batches // workers + (worker < batches % workers)) * self.batch_size
        return quota, [self.files[i] for i in mine]

    def samples(self) -> Iterator[tuple[bytes, dict]]:
        """(image bytes, metadata) of this rank's and worker's share, in an epoch-dependent order."""
        import webdataset as wds

        quota, files = self._quota_and_files()
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        produced = 0
        while produced < quota:
            order = [str(files[i]) for i in rng.permutation(len(files))]
            pipeline = wds.WebDataset(
                order, shardshuffle=False, nodesplitter=None, workersplitter=None, empty_check=False
            )
            for sample in pipeline:
                yield sample["jpg"], json.loads(sample["json"])
                produced += 1
                if produced == quota:
                    return

    def __iter__(self):
        rng = np.random.default_rng([self.seed, 1_000_003, self.epoch])
        buffer: list = []
        for data, meta in self.samples():
            buffer.append((data, meta))
            if len(buffer) >= self.shuffle_buffer:
                yield self._decode(*buffer.pop(int(rng.integers(len(buffer)))))
        rng.shuffle(buffer)
        for item in buffer:
            yield self._decode(*item)

    def _decode(self, data: bytes, meta: dict):
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as img:
                image = np.array(img.convert("RGB"))
        except (OSError, SyntaxError, ValueError) as err:
            self.skipped.record(
                ImageReadError(f"{meta.get('id')}: not a readable image ({err})"), meta.get("id")
            )
            image = np.zeros((32, 32, 3), np.uint8)  # a stand-in keeps the epoch length fixed
        if self.transform is not None:
            image = self.transform(image=image)["image"]
        labels = self.assign(np.array([meta["lat"]]), np.array([meta["lon"]]))[0]
        return to_model_input(image), _target(
            labels, meta["lat"], meta["lon"], str(meta["id"]), str(meta.get("country", ""))
        )


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
        leaves = leaf_cell_ids(lat, lon)
        return np.stack([part.assign(leaves) for part in self.partitions], axis=1)

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
        return GeoImages(
            table,
            images,
            labels=self.assign(table.lat, table.lon),
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
