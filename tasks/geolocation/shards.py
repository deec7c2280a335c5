"""WebDataset shards of a photo CSV, for MP-16's scale (4.7 M photos): written by `mobilenets geolocation
shards`, read by `ShardedGeoImages`. Each rank, and each loader worker within it, reads its own shards,
and every rank yields the same number of samples per epoch, so DDP ranks stay in step.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from tasks.common.io import ImageReadError, SkipCounter
from tasks.common.transforms import to_model_input
from tasks.geolocation.formats import PhotoTable, image_pattern_for, photo_target

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
        return to_model_input(image), photo_target(
            labels, meta["lat"], meta["lon"], str(meta["id"]), str(meta.get("country", ""))
        )

