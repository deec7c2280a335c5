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
