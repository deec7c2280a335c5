"""Peak memory of the detection data module on a COCO-sized annotation file (issue 16: must stay < 2 GiB).

Writes an instances file of `--images` images and `--boxes` boxes (streamed to disk, so building it
costs no memory here), then in a fresh process builds `CocoDataModule` on it (JSON parse, validation,
pycocotools index, the flat arrays) and iterates `--batches` training batches with `--workers`
loader workers. Images are a few tiny PNGs that every record points at, so the run measures the
annotation side, not decoding. Reports peak resident memory (VmHWM) of the main process after
set-up and after iterating, and of each worker (measured as in `peak_memory.py`).

    python benchmarks/memory_coco.py --images 200000 --boxes 1500000 --batches 200 --workers 2
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from peak_memory import (  # on the path
    benchmark_parser,
    measure_iteration,
    measure_setup,
    print_report,
    run_child,
)

SIDE = 32  # pixels of every tiny image (and of every record's width/height)
TINY_IMAGES = 50


def write_annotations(path: Path, *, images: int, boxes: int, seed: int) -> None:
    """A valid COCO instances file, written record by record."""
    rng = np.random.default_rng(seed)
    image_of_box = np.sort(rng.integers(1, images + 1, boxes))
    wh = rng.integers(2, 16, (boxes, 2))
    xy = rng.integers(0, SIDE - 16, (boxes, 2))
    cats = rng.integers(1, 81, boxes)
    with open(path, "w") as out:
        out.write('{"categories": [')
        out.write(", ".join(json.dumps({"id": c, "name": f"class{c}"}) for c in range(1, 81)))
        out.write('], "images": [')
        for start in range(0, images, 10_000):
            if start:
                out.write(", ")
            out.write(", ".join(
                f'{{"id": {i}, "file_name": "tiny{i % TINY_IMAGES}.png", "width": {SIDE}, "height": {SIDE}}}'
                for i in range(start + 1, min(start + 10_000, images) + 1)
            ))  # fmt: skip
        out.write('], "annotations": [')
        for start in range(0, boxes, 50_000):
            stop = min(start + 50_000, boxes)
            if start:
                out.write(", ")
            out.write(", ".join(
                f'{{"id": {k + 1}, "image_id": {image_of_box[k]}, "category_id": {cats[k]}, '
                f'"bbox": [{xy[k, 0]}, {xy[k, 1]}, {wh[k, 0]}, {wh[k, 1]}], "area": {wh[k, 0] * wh[k, 1]}, '
                '"iscrowd": 0}'
                for k in range(start, stop)
            ))  # fmt: skip
        out.write("]}")


def measure(root: Path, annotations: Path, *, batches: int, workers: int) -> dict:
    """In this (fresh) process: build the data module, iterate, report peaks."""
    import torch

    from tasks.detection.data import CocoDataModule

    torch.set_num_threads(2)

    def build() -> CocoDataModule:
        data = CocoDataModule(
            train_images=str(root), train_annotations=str(annotations), val_images=str(root),
            val_annotations=str(root / "val.json"), image_size=64, batch_size=32, num_workers=workers,
        )  # fmt: skip
        data.setup("fit")
        return data

    data, setup = measure_setup(build)

    def count(batch) -> dict[str, int]:
        images, targets = batch
        return {"images": len(images), "boxes": sum(len(t["boxes"]) for t in targets)}

    iteration = measure_iteration(data.train_dataloader(), batches, count)
    return {"train_images": len(data.train_set), "train_boxes": int(len(data.train_set._boxes)), **setup,
            **iteration}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200_000)
    parser.add_argument("--boxes", type=int, default=1_500_000)
    args = parser.parse_args(argv)
    if args.measure is not None:
        print(json.dumps(measure(args.measure, args.measure / "train.json", batches=args.batches,
                                 workers=args.workers)))  # fmt: skip
        return 0

    from PIL import Image

    with tempfile.TemporaryDirectory(prefix="memory-coco-") as tmp:
        root = Path(tmp)
        for i in range(TINY_IMAGES):
            Image.new("RGB", (SIDE, SIDE), (5 * i, 100, 200)).save(root / f"tiny{i}.png")
        started = time.perf_counter()
        write_annotations(root / "train.json", images=args.images, boxes=args.boxes, seed=args.seed)
        write_annotations(root / "val.json", images=100, boxes=500, seed=args.seed + 1)
        size_mib = (root / "train.json").stat().st_size / 2**20
        print(f"wrote {args.images} images / {args.boxes} boxes: {size_mib:.0f} MiB of JSON "
              f"in {time.perf_counter() - started:.1f} s")  # fmt: skip
        report = run_child(__file__, ["--measure", str(root), "--batches", str(args.batches),
                                      "--workers", str(args.workers)])  # fmt: skip
    return print_report(report)


if __name__ == "__main__":
    sys.exit(main())
