"""A fine-grained data set drawn on the fly, so the task trains and tests with no download.

Every image shows the same kind of object, a bird-like glyph, and the classes differ only in
small parts of it: the number of stripes on the body, a dark cap or mask on the head, the shape of the
tail and whether the head has a crest. Everything large varies per image and carries no label:
position, size, rotation, mirroring, body colour, background colour and clutter, lighting and
sensor noise. That is what makes Stanford Dogs hard, in miniature: a nearest neighbour on raw
pixels is near chance (`benchmarks/finegrained_pixel_nn.py`), while a small MobileNet learns the
parts in a few CPU minutes.

Images are a pure function of (seed, split, index), so nothing is stored and every run and
worker sees the same data.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from tasks.common.transforms import to_model_input

STRIPE_COUNTS = (0, 1, 2, 3)
HEAD_MARKS = ("plain", "cap", "mask")
TAILS = ("fork", "fan")
CRESTS = ("bare", "crest")
# Class c is the mixed-radix number (stripes, head, tail, crest), stripes fastest: the first 24
# classes (the default) vary stripes, head and tail; more classes bring in the crest.
ATTRIBUTE_SIZES = (len(STRIPE_COUNTS), len(HEAD_MARKS), len(TAILS), len(CRESTS))
MAX_CLASSES = math.prod(ATTRIBUTE_SIZES)
SPLITS = {"train": 0, "val": 1, "test": 2}

# Glyph geometry in object units (the whole glyph is about one unit long, facing +x).
BODY_HALF_AXES = (0.30, 0.17)
HEAD_CENTRE, HEAD_RADIUS = (0.31, -0.12), 0.12
EYE_CENTRE, EYE_RADIUS = (0.36, -0.11), 0.03
CAP_BOTTOM, MASK_HALF_HEIGHT = -0.15, 0.055
STRIPE_HALF_WIDTH = 0.025
TAIL_ROOT_X, TAIL_LENGTH = -0.27, 0.26
# Nuisance ranges, per image.
SCALE_RANGE = (0.68, 0.95)  # glyph length as a fraction of the image side
ROTATION_DEGREES = 30.0  # uniform in +-this: perched birds are photographed roughly upright
CLUTTER_COUNT = (3, 9)


def class_attributes(label: int) -> tuple[int, str, str, str]:
    """(stripe count, head mark, tail, crest) of class `label`."""
    digits = []
    for size in ATTRIBUTE_SIZES:
        digits.append(label % size)
        label //= size
    stripes, head, tail, crest = digits
    return STRIPE_COUNTS[stripes], HEAD_MARKS[head], TAILS[tail], CRESTS[crest]


def class_name(label: int) -> str:
    stripes, head, tail, crest = class_attributes(label)
    return f"{stripes}stripe-{head}head-{tail}tail-{crest}"


def _ellipse(centre, half_axes, points: int = 28) -> np.ndarray:
    angle = np.linspace(0, 2 * np.pi, points, endpoint=False)
    return np.stack([centre[0] + half_axes[0] * np.cos(angle), centre[1] + half_axes[1] * np.sin(angle)], 1)


def _glyph_parts(label: int) -> list[tuple[np.ndarray, str]]:
    """Polygons (object units) of the glyph with a colour role each, back to front."""
    stripes, head, tail, crest = class_attributes(label)
    a, b = BODY_HALF_AXES
    parts: list[tuple[np.ndarray, str]] = []
    if tail == "fork":
        for side in (-1, 1):
            prong = [
                [TAIL_ROOT_X, 0.0],
                [TAIL_ROOT_X, 0.05 * side],
                [TAIL_ROOT_X - TAIL_LENGTH, 0.17 * side],
                [TAIL_ROOT_X - TAIL_LENGTH + 0.06, 0.10 * side],
            ]
            parts.append((np.array(prong), "mark"))
    else:
        fan = np.linspace(-0.6, 0.6, 9)
        rim = np.stack([TAIL_ROOT_X - TAIL_LENGTH * np.cos(fan), TAIL_LENGTH * np.sin(fan)], 1)
        parts.append((np.vstack([[TAIL_ROOT_X + 0.03, 0.0], rim]), "mark"))
    parts.append((_ellipse((0.0, 0.0), (a, b)), "body"))
    if crest == "crest":
        hx, hy = HEAD_CENTRE
        parts.append(
            (np.array([[hx - 0.07, hy - 0.08], [hx - 0.02, hy - 0.24], [hx + 0.05, hy - 0.09]]), "body")
        )
    parts.append((_ellipse(HEAD_CENTRE, (HEAD_RADIUS, HEAD_RADIUS)), "body"))
    if head == "cap":
        parts.append((_head_band(HEAD_CENTRE[1] - HEAD_RADIUS, CAP_BOTTOM), "mark"))
    parts.append((np.array([[0.41, -0.16], [0.52, -0.11], [0.41, -0.07]]), "beak"))
    centres = np.linspace(-0.15, 0.12, stripes) if stripes > 1 else np.zeros(stripes)  # one stripe: mid-body
    for x in centres:
        xs = np.array([x - STRIPE_HALF_WIDTH, x + STRIPE_HALF_WIDTH])
        ys = 0.92 * b * np.sqrt(1 - (xs / a) ** 2)
        parts.append((np.array([[xs[0], -ys[0]], [xs[1], -ys[1]], [xs[1], ys[1]], [xs[0], ys[0]]]), "mark"))
    parts.append((_ellipse(EYE_CENTRE, (EYE_RADIUS, EYE_RADIUS), 16), "mark"))
    if head == "mask":
        parts.append((_head_band(EYE_CENTRE[1] - MASK_HALF_HEIGHT, EYE_CENTRE[1] + MASK_HALF_HEIGHT), "mark"))
    return parts


def _head_band(top: float, bottom: float) -> np.ndarray:
    """The part of the head disc between two horizontal lines (object units, y down)."""
    hx, hy = HEAD_CENTRE
    ys = np.linspace(top, bottom, 6)
    half_widths = np.sqrt(np.clip(HEAD_RADIUS**2 - (ys - hy) ** 2, 0, None))
    return np.concatenate([np.stack([hx - half_widths, ys], 1), np.stack([hx + half_widths, ys], 1)[::-1]])


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A colour gradient with random strokes and blobs: clutter at the glyph's own scale."""
    corners = rng.uniform(0, 255, (2, 2, 3)).astype(np.float32)
    image = cv2.resize(corners, (size, size), interpolation=cv2.INTER_LINEAR)
    for _ in range(rng.integers(*CLUTTER_COUNT)):
        colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
        p, q = (tuple(int(v) for v in rng.integers(0, size, 2)) for _ in range(2))
        if rng.random() < 0.5:
            cv2.line(image, p, q, colour, int(rng.integers(1, max(2, size // 16))), cv2.LINE_AA)
        else:
            axes = tuple(int(v) for v in rng.integers(2, max(3, size // 6), 2))
            cv2.ellipse(image, p, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1, cv2.LINE_AA)
    return image


def render(label: int, rng: np.random.Generator, size: int) -> np.ndarray:
    """One (size, size, 3) uint8 image of class `label`, nuisances drawn from `rng`."""
    image = _background(rng, size)
    scale = rng.uniform(*SCALE_RANGE) * size
    angle = np.deg2rad(rng.uniform(-ROTATION_DEGREES, ROTATION_DEGREES))
    mirror = rng.choice((-1.0, 1.0))
    transform = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    transform = transform @ np.diag([1.0, mirror])
    slack = max(0.0, size / 2 - 0.42 * scale)
    centre = size / 2 + rng.uniform(-slack, slack, 2)
    body = rng.uniform(90, 215) + rng.uniform(-25, 25, 3)
    colours = {"body": body, "beak": body * 0.6 + 60, "mark": body * 0.2}
    for polygon, role in _glyph_parts(label):
        points = polygon @ transform.T + centre
        cv2.fillPoly(
            image,
            [np.round(points * 16).astype(np.int32)],
            tuple(float(c) for c in colours[role]),
            cv2.LINE_AA,
            shift=4,
        )
    gain = rng.uniform(0.65, 1.25) * rng.uniform(0.9, 1.1, 3)
    image = image * gain + rng.uniform(-20, 20) + rng.normal(0, rng.uniform(2, 10), image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


class SyntheticFineGrained(Dataset):
    """`num_classes` x `samples_per_class` glyph images, rendered when indexed.

    Labels cycle through the classes (item i has label i % num_classes), so every split is
    balanced. `transform` is an albumentations pipeline applied before `to_model_input`.
    """

    def __init__(
        self,
        num_classes: int = 24,
        samples_per_class: int = 100,
        *,
        size: int = 64,
        seed: int = 0,
        split: str = "train",
        transform: Callable | None = None,
    ) -> None:
        if not 2 <= num_classes <= MAX_CLASSES:
            raise ValueError(f"num_classes must be in [2, {MAX_CLASSES}], got {num_classes}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
        self.num_classes = num_classes
        self.samples_per_class = samples_per_class
        self.size = size
        self.seed = seed
        self.split = split
        self.transform = transform
        self.classes = [class_name(label) for label in range(num_classes)]

    def __len__(self) -> int:
        return self.num_classes * self.samples_per_class

    def image(self, index: int) -> tuple[np.ndarray, int]:
        """The raw uint8 image and label of item `index`, before any transform."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        label = index % self.num_classes
        rng = np.random.default_rng([self.seed, SPLITS[self.split], index])
        return render(label, rng, self.size), label

    def key(self, index: int) -> str:
        """How predictions name item `index`."""
        return f"{self.split}/{index:06d}"

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.image(index)
        if self.transform is not None:
            image = self.transform(image=image)["image"]
        return to_model_input(image), label


__all__ = ["SyntheticFineGrained", "class_attributes", "class_name", "render", "MAX_CLASSES"]
