"""Synth-shapes: a small COCO-format detection set that a CPU can learn in minutes.

The files are real COCO (JPEG folders + `instances_<split>.json`), so the synthetic run goes through
exactly the loader, evaluator and CLI that a COCO run uses. Category ids are deliberately
non-contiguous (1, 3, 5, ...) so the id <-> label mapping is exercised as it is on COCO (1..90, 80 used).
Objects come in all three COCO area classes (small < 32², medium, large > 96²) so every AP column
means something. Shapes are crisp and few per image (1-5) on moderately cluttered backgrounds: hard
enough that a detector must look, easy enough that a small SSD reaches high mAP quickly.

Each image draws from its own generator seeded by (seed, index): the set is deterministic and any
image can be regenerated alone.
"""

from __future__ import annotations

import colorsys
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from tasks.common.io import atomic_write, write_text_atomic

SHAPES = ("circle", "square", "triangle", "star", "cross")
CATEGORY_IDS = tuple(2 * i + 1 for i in range(len(SHAPES)))  # 1, 3, 5, ...: non-contiguous on purpose
SPLITS = ("train", "val")
MARKER_FILE = "synth_shapes.json"  # records how a folder was generated, so regeneration can be skipped
FORMAT_VERSION = 1

# Object side in pixels per COCO area class; areas below are bbox areas (side²).
# Small shapes start at 22 px: below that an SSD300's smallest anchors (30 px) cannot reach IoU 0.5.
SIDE_RANGES = {"small": (22, 31), "medium": (33, 95), "large": (97, 170)}
SIZE_CLASS_PROBS = (0.2, 0.45, 0.35)
MAX_COVERED = 0.25  # objects may overlap, but never cover more than this share of each other


def _shape_polygon(shape: str, x0: float, y0: float, side: float) -> list[tuple[float, float]] | None:
    """Outline of `shape` filling the box (x0, y0, side, side) edge to edge; None for a circle."""
    cx, cy = x0 + side / 2, y0 + side / 2
    if shape == "circle":
        return None
    if shape == "square":
        return [(x0, y0), (x0 + side, y0), (x0 + side, y0 + side), (x0, y0 + side)]
    if shape == "triangle":
        return [(cx, y0), (x0 + side, y0 + side), (x0, y0 + side)]
    if shape == "star":
        # Five outer tips and five inner corners, stretched so the tips touch the box on every side.
        angles = [math.pi / 2 + k * math.pi / 5 for k in range(10)]
        radii = [1.0 if k % 2 == 0 else 0.42 for k in range(10)]
        xs = [r * math.cos(a) for r, a in zip(radii, angles, strict=True)]
        ys = [-r * math.sin(a) for r, a in zip(radii, angles, strict=True)]
        x_lo, x_hi, y_lo, y_hi = min(xs), max(xs), min(ys), max(ys)
        return [
            (x0 + (x - x_lo) / (x_hi - x_lo) * side, y0 + (y - y_lo) / (y_hi - y_lo) * side)
            for x, y in zip(xs, ys, strict=True)
        ]
    if shape == "cross":
        t = side * 0.16  # half the bar thickness
        return [
            (cx - t, y0), (cx + t, y0), (cx + t, cy - t), (x0 + side, cy - t), (x0 + side, cy + t),
            (cx + t, cy + t), (cx + t, y0 + side), (cx - t, y0 + side), (cx - t, cy + t),
            (x0, cy + t), (x0, cy - t), (cx - t, cy - t),
        ]  # fmt: skip
    raise ValueError(f"unknown shape {shape!r}")


def _background(rng: np.random.Generator, height: int, width: int) -> Image.Image:
    """Muted gradient + noise + a few random lines: clutter a detector must learn to ignore."""
    corners = rng.uniform(60, 190, size=(2, 2, 3))
    ys = np.linspace(0, 1, height)[:, None, None]
    xs = np.linspace(0, 1, width)[None, :, None]
    top = corners[0, 0] * (1 - xs) + corners[0, 1] * xs
    bottom = corners[1, 0] * (1 - xs) + corners[1, 1] * xs
    pixels = top * (1 - ys) + bottom * ys + rng.normal(0, 12, size=(height, width, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 9))):
        ends = rng.uniform(0, 1, size=4) * [width, height, width, height]
        grey = int(rng.integers(40, 220))
        draw.line(list(ends), fill=(grey, grey, grey), width=int(rng.integers(1, 3)))
    return image


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    """A saturated colour, so shapes stand out against the muted background."""
    rgb = colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.65, 1.0), rng.uniform(0.55, 1.0))
    return tuple(int(c * 255) for c in rgb)


def covered_share(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over the smaller box: IoU would let a small shape hide wholly inside a big one."""
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return ix * iy / min(a[2] * a[3], b[2] * b[3])


def render_image(seed: int, index: int, image_size: tuple[int, int]) -> tuple[Image.Image, list[dict]]:
    """Draw image `index` of the set; returns it with its objects as `{bbox: [x, y, w, h], shape}`."""
    rng = np.random.default_rng([seed, index])
    height, width = image_size
    image = _background(rng, height, width)
    draw = ImageDraw.Draw(image)
    objects: list[dict] = []
    for _ in range(int(rng.integers(1, 6))):
        size_class = rng.choice(list(SIDE_RANGES), p=SIZE_CLASS_PROBS)
        low, high = SIDE_RANGES[size_class]
        high = min(high, height - 1, width - 1)  # small images cap the large class at their side
        side = int(rng.integers(min(low, high), high + 1))
        for _attempt in range(20):  # rejection-sample a placement that does not bury another object
            box = [
                int(rng.integers(0, width - side + 1)),
                int(rng.integers(0, height - side + 1)),
                side,
                side,
            ]
            if all(covered_share(box, other["bbox"]) <= MAX_COVERED for other in objects):
                break
        else:
            continue
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        polygon = _shape_polygon(shape, box[0], box[1], side)
        corners = [box[0], box[1], box[0] + side - 1, box[1] + side - 1]
        if polygon is None:
            draw.ellipse(corners, fill=_colour(rng))
        else:
            draw.polygon([(min(x, corners[2]), min(y, corners[3])) for x, y in polygon], fill=_colour(rng))
        objects.append({"bbox": box, "shape": shape})
    return image, objects


def write_synth_shapes(
    out_dir: str | Path,
    *,
    images: int,
    seed: int = 0,
    image_size: tuple[int, int] = (320, 320),
    val_fraction: float = 0.2,
) -> dict[str, Path]:
    """Write `images` images split into train/val with COCO annotations; returns the annotation files.

    Image ids are unique across both splits (index + 1). `area` is the box area, which is what sets
    a shape's COCO size class here. A marker file records (images, seed, image_size) so callers can
    skip regeneration (`synth_marker_matches`).
    """
    if images < 2:
        raise ValueError(f"synth-shapes needs at least 2 images (one per split), got {images}")
    out_dir = Path(out_dir)
    n_val = min(max(1, round(images * val_fraction)), images - 1)
    split_of = {index: ("val" if index >= images - n_val else "train") for index in range(images)}
    categories = [
        {"id": cat_id, "name": name, "supercategory": "shape"}
        for cat_id, name in zip(CATEGORY_IDS, SHAPES, strict=True)
    ]
    name_to_cat = dict(zip(SHAPES, CATEGORY_IDS, strict=True))

    def render(index: int) -> tuple[Image.Image, list[tuple[list[float], int]]]:
        image, objects = render_image(seed, index, image_size)
        return image, [(obj["bbox"], name_to_cat[obj["shape"]]) for obj in objects]

    return write_coco_set(
        out_dir,
        render=render,
        split_of=split_of,
        categories=categories,
        description="synth-shapes",
        marker_file=MARKER_FILE,
        marker=_marker(images, seed, image_size, val_fraction),
    )


def write_coco_set(
    out_dir: Path,
    *,
    render: Callable[[int], tuple[Image.Image, list[tuple[list[float], int]]]],
    split_of: dict[int, str],
    categories: list[dict],
    description: str,
    marker_file: str,
    marker: dict,
) -> dict[str, Path]:
    """Render image `i` for every key of `split_of` into `out_dir/<split>/` with COCO annotation files.

    `render(i)` returns the image and its objects as (xywh box, category id). Image ids are unique
    across splits (index + 1); `area` is the box area. The marker file is removed first and written
    last, so a crash part-way never leaves a set that looks complete.
    """
    splits = sorted(set(split_of.values()))
    datasets = {
        split: {
            "info": {"description": description, "version": str(marker.get("version", 1)), "year": 2026},
            "licenses": [],
            "images": [],
            "annotations": [],
            "categories": categories,
        }
        for split in splits
    }
    marker_path = out_dir / marker_file
    if marker_path.is_file():  # an earlier generation: unmark it first, so a crash cannot leave it "complete"
        marker_path.unlink()
        for stale in [p for split in splits for p in (out_dir / split).glob("*.jpg")]:
            stale.unlink()
    for split in splits:
        (out_dir / split).mkdir(parents=True, exist_ok=True)
    annotation_id = 1
    for index in tqdm(sorted(split_of), desc=description, unit="img"):
        split = split_of[index]
        image, objects = render(index)
        file_name = f"{index:06d}.jpg"
        with atomic_write(out_dir / split / file_name) as tmp:
            image.save(tmp, format="JPEG", quality=92)
        datasets[split]["images"].append(
            {"id": index + 1, "file_name": file_name, "height": image.height, "width": image.width}
        )
        for (x, y, w, h), category_id in objects:
            datasets[split]["annotations"].append(
                {
                    "id": annotation_id,
                    "image_id": index + 1,
                    "category_id": category_id,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
            annotation_id += 1
    files = {split: out_dir / "annotations" / f"instances_{split}.json" for split in splits}
    for split, path in files.items():
        write_text_atomic(path, json.dumps(datasets[split]))
    write_text_atomic(marker_path, json.dumps(marker))
    return files


def _marker(images: int, seed: int, image_size: Sequence[int], val_fraction: float) -> dict:
    return {
        "version": FORMAT_VERSION,
        "images": images,
        "seed": seed,
        "image_size": list(image_size),
        "val_fraction": val_fraction,
    }


def synth_marker_matches(
    out_dir: str | Path,
    *,
    images: int,
    seed: int = 0,
    image_size: tuple[int, int] = (320, 320),
    val_fraction: float = 0.2,
) -> bool:
    """True when `out_dir` already holds a complete synth-shapes set made with these arguments."""
    out_dir = Path(out_dir)
    marker = out_dir / MARKER_FILE
    if not marker.is_file() or not all(
        (out_dir / "annotations" / f"instances_{s}.json").is_file() for s in SPLITS
    ):
        return False
    try:
        return json.loads(marker.read_text()) == _marker(images, seed, image_size, val_fraction)
    except json.JSONDecodeError:
        return False
