"""Time `evaluate_coco` on pycocotools against faster-coco-eval, on one large synthetic COCO set.

Ground truth: `--images` images of 640x480 with 1-15 boxes each over 80 categories (COCO's ids,
non-contiguous). Results: `--dets` detections per image, a jittered copy of every true box and random
boxes for the rest, so matching is as busy as a real detector's output. Both backends score the same
files in the same run; the table gives each one's wall time and the ratio, and checks that the 12
stats agree.

    python benchmarks/coco_eval_speed.py --images 5000 --dets 100
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from tasks.common.io import write_text_atomic
from tasks.detection.metrics import BACKENDS, STAT_NAMES, evaluate_coco, write_results_json

COCO_CATEGORY_IDS = [i for i in range(1, 91) if i not in {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}]
WIDTH, HEIGHT = 640, 480


def _random_boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    """xywh boxes of mixed sizes, inside the image."""
    w = np.exp(rng.uniform(np.log(8), np.log(400), n))
    h = np.clip(w * np.exp(rng.normal(0, 0.4, n)), 4, HEIGHT - 1)
    x = rng.uniform(0, WIDTH - w)
    y = rng.uniform(0, HEIGHT - h)
    return np.stack([x, y, w, h], axis=1)


def build_files(out_dir: Path, *, images: int, dets: int, seed: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    gt = {
        "info": {"description": "coco_eval_speed"},
        "images": [
            {"id": i + 1, "file_name": f"{i:06d}.jpg", "width": WIDTH, "height": HEIGHT}
            for i in range(images)
        ],
        "categories": [{"id": c, "name": f"class_{c}"} for c in COCO_CATEGORY_IDS],
        "annotations": [],
    }
    results = []
    for image_id in range(1, images + 1):
        n_gt = int(rng.integers(1, 16))
        boxes = _random_boxes(rng, n_gt)
        cats = rng.choice(COCO_CATEGORY_IDS, n_gt)
        for box, cat in zip(boxes, cats, strict=True):
            ann_id = len(gt["annotations"]) + 1
            crowd = int(rng.uniform() < 0.01)
            gt["annotations"].append(
                {"id": ann_id, "image_id": image_id, "category_id": int(cat), "bbox": box.tolist(),
                 "area": float(box[2] * box[3]), "iscrowd": crowd}
            )  # fmt: skip
        jittered = boxes * np.exp(rng.normal(0, 0.08, boxes.shape)) + rng.normal(0, 2, boxes.shape)
        noise = _random_boxes(rng, dets - n_gt)
        det_boxes = np.concatenate([jittered, noise])
        det_cats = np.concatenate([cats, rng.choice(COCO_CATEGORY_IDS, dets - n_gt)])
        scores = np.concatenate([rng.uniform(0.3, 1.0, n_gt), rng.uniform(0.0, 0.7, dets - n_gt)])
        results.extend(
            {"image_id": image_id, "category_id": int(c), "bbox": b.tolist(), "score": float(s)}
            for b, c, s in zip(det_boxes, det_cats, scores, strict=True)
        )
    gt_file, results_file = out_dir / "gt.json", out_dir / "dets.json"
    write_text_atomic(gt_file, json.dumps(gt))
    write_results_json(results_file, results)
    return gt_file, results_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--dets", type=int, default=100, help="detections per image")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        gt_file, results_file = build_files(Path(tmp), images=args.images, dets=args.dets, seed=args.seed)
        built = time.perf_counter() - start
        print(f"built {args.images} images, {args.images * args.dets} detections in {built:.1f} s")
        timings, stats = {}, {}
        for backend in BACKENDS:
            start = time.perf_counter()
            evaluation = evaluate_coco(gt_file, results_file, backend=backend)
            timings[backend] = time.perf_counter() - start
            stats[backend] = [evaluation[name] for name in STAT_NAMES]
    reference = timings["pycocotools"]
    print("\n| backend | seconds | speed-up vs pycocotools | AP |\n|---|---:|---:|---:|")
    for name in BACKENDS:
        print(f"| {name} | {timings[name]:.2f} | {reference / timings[name]:.2f}x | {stats[name][0]:.4f} |")
    gap = np.abs(np.subtract(stats["pycocotools"], stats["faster_coco_eval"])).max()
    print(f"\nlargest difference over the 12 stats: {gap:.2e}")


if __name__ == "__main__":
    main()
