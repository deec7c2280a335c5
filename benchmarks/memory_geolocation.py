"""Peak memory of the geolocation data module on an MP-16-sized photo CSV (issue 16: must stay < 2 GiB).

Writes `--rows` rows (default 5 M; MP-16 has 4.7 M photos, OSV-5M's train.csv 4.9 M) in MP-16's own
layout, GeoEstimation's `mp16_places365.csv` (`IMG_ID,AUTHOR,LAT,LON,S3_Label,S16_Label,S365_Label,
Prob_indoor,Prob_natural,Prob_urban`, `IMG_ID` like `e9/0d/3455234798.jpg` under the image root), with
photos clustered around Zipf-weighted cities as real photos are. Then in a fresh process it builds
`GeolocationDataModule` on it (the streaming CSV parse, PlaNet's three adaptive S2 partitions made from
the training photos, every photo's class in each) and iterates `--batches` training batches with
`--workers` loader workers. Every `IMG_ID` resolves to one of a few tiny JPEGs through two levels of
symlinked folders, so the run measures the table side, not decoding. Reports peak resident memory
(VmHWM) of the main process after set-up and after iterating, and of each worker (`peak_memory.py`).

    flock /tmp/mobilenets-cpu.lock .venv/bin/python benchmarks/memory_geolocation.py \\
        --rows 5000000 --batches 200 --workers 2
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from geolocation_partition_speed import clustered  # benchmarks/ is on the path
from peak_memory import benchmark_parser, measure_iteration, measure_setup, print_report, run_child

HEADER = "IMG_ID,AUTHOR,LAT,LON,S3_Label,S16_Label,S365_Label,Prob_indoor,Prob_natural,Prob_urban"
FANOUT = 256  # MP-16's two levels of hex folders: `e9/0d/...`
PHOTO_BASE = 3_000_000_000  # a Flickr-like photo id for the file name
SIDE = 32
CHUNK = 100_000


def image_ids(rows: np.ndarray) -> list[str]:
    """`aa/bb/<photo>.jpg` for row numbers: unique per row, and only `rows // FANOUT**2` distinct leaf
    names, so a few real files behind symlinked folders serve them all."""
    return [f"{r % FANOUT:02x}/{r // FANOUT % FANOUT:02x}/{PHOTO_BASE + r // FANOUT**2}.jpg"
            for r in rows.tolist()]  # fmt: skip


def write_photo_csv(path: Path, *, rows: int, seed: int) -> None:
    """An MP-16 places365 CSV of `rows` photos, written a chunk at a time (no memory to speak of here)."""
    lat, lon = clustered(rows, seed)
    rng = np.random.default_rng(seed)
    with open(path, "w") as out:
        out.write(HEADER + "\n")
        for start in range(0, rows, CHUNK):
            stop = min(start + CHUNK, rows)
            number = np.arange(start, stop)
            authors = rng.integers(10_000_000, 99_999_999, stop - start).tolist()
            labels = rng.integers(0, [3, 16, 365], (stop - start, 3)).tolist()
            scores = rng.random((stop - start, 3)).tolist()
            out.write("".join(
                f"{key},{author}@N00,{a:.6f},{b:.6f},{s3},{s16},{s365},{p:.4f},{q:.4f},{r:.4f}\n"
                for key, author, a, b, (s3, s16, s365), (p, q, r) in zip(
                    image_ids(number), authors, lat[start:stop].tolist(), lon[start:stop].tolist(), labels,
                    scores, strict=True)
            ))  # fmt: skip


def write_image_tree(root: Path, rows: int) -> Path:
    """`root/images/aa/bb/<photo>.jpg` for every id `image_ids` gives: 256 links to one folder of 256
    links to one folder of tiny JPEGs."""
    from PIL import Image

    leaf, middle, images = root / "leaf", root / "middle", root / "images"
    for folder in (leaf, middle, images):
        folder.mkdir()
    for photo in range((rows - 1) // FANOUT**2 + 1):
        Image.new("RGB", (SIDE, SIDE), (photo * 3 % 256, 90, 160)).save(leaf / f"{PHOTO_BASE + photo}.jpg")
    for name in (f"{i:02x}" for i in range(FANOUT)):
        (middle / name).symlink_to(leaf, target_is_directory=True)
        (images / name).symlink_to(middle, target_is_directory=True)
    return images


def measure(root: Path, *, batches: int, workers: int) -> dict:
    """In this (fresh) process: build the data module, iterate, report peaks."""
    import torch

    from tasks.geolocation.data import GeolocationDataModule

    torch.set_num_threads(2)
    timings = {}

    def build() -> GeolocationDataModule:
        data = GeolocationDataModule(
            "csv", train_csv=str(root / "train.csv"), train_images=str(root / "images"),
            val_csv=str(root / "val.csv"), val_images=str(root / "images"), image_size=64, batch_size=32,
            num_workers=workers,
        )  # fmt: skip
        started = time.perf_counter()
        data.table("train")
        timings["parse_s"] = round(time.perf_counter() - started, 1)
        data.setup("fit")
        return data

    data, setup = measure_setup(build)
    iteration = measure_iteration(data.train_dataloader(), batches, lambda batch: {"images": len(batch[0])})
    return {"train_photos": len(data.splits["train"]), "cells": data.num_cells, **timings, **setup,
            **iteration}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5_000_000)
    args = parser.parse_args(argv)
    if args.measure is not None:
        import json

        print(json.dumps(measure(args.measure, batches=args.batches, workers=args.workers)))
        return 0

    with tempfile.TemporaryDirectory(prefix="memory-geolocation-") as tmp:
        root = Path(tmp)
        write_image_tree(root, args.rows)
        started = time.perf_counter()
        write_photo_csv(root / "train.csv", rows=args.rows, seed=args.seed)
        write_photo_csv(root / "val.csv", rows=1000, seed=args.seed + 1)
        size_mib = (root / "train.csv").stat().st_size / 2**20
        seconds = time.perf_counter() - started
        print(f"wrote {args.rows} photo rows: {size_mib:.0f} MiB of CSV in {seconds:.1f} s")
        report = run_child(__file__, ["--measure", str(root), "--batches", str(args.batches),
                                      "--workers", str(args.workers)])  # fmt: skip
    return print_report(report)


if __name__ == "__main__":
    sys.exit(main())
