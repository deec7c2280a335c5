"""Synthetic faces with 20 binary attributes, drawn by the suite's face renderer (`tasks.common.faces`).

Each image is a new person: a latent sex and age are drawn first, the attributes follow from them with
CelebA-like rates (from ~4 % for moustache and grey hair to ~48 % for smiling) and CelebA's
correlations (beards and moustaches on men, and moustaches mostly with beards; lipstick, make-up and
earrings mostly on women; grey hair and baldness with age; an open mouth more often with a smile), and
the face is rendered with those traits through `FaceExtras`. What makes the set hard in the ways that
matter for a face-attribute model:

* **graded traits, thresholded labels.** Smiles, open mouths, fringes, hair shades, brow thickness,
  lids and blush are continuous; the label says which side of a threshold the person is on, so the
  faces near it look alike whatever their labels (an annotator's doubt, built in);
* **look-alikes that are not the attribute.** Bare lips come in reds that lipstick also uses, light
  skin tones border on `Pale_Skin`, dark brown borders on black hair, short fringes on no fringe;
* **occlusion.** A hat hides a bald head and most of the hair's colour;
* **latent attributes.** `Male` is never drawn; it shows only through face shape, hair style and the
  attributes it makes likely;
* **small cues.** Earrings and narrow eyes are a few pixels at 128 px, behind the renderer's clutter,
  pose, lighting and sensor noise.

Items are a pure function of `(seed, split, index)`: the splits draw from different streams, so no face
is in two splits, and every run and worker sees the same data. The `unlabeled` split stands for the
unlimited unlabeled faces that distillation trains on: `SyntheticUnlabeledFaces` renders it and gives
out only `(image, key)`; its labels are never computed into a batch. Keys are `<split>/<index>.png`,
the names `write_synthetic_folder` gives the files, so a teacher file fits the rendered and the written
images alike.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from tasks.common.faces import FaceExtras, Identity, draw_face, render_photo, sample_identity
from tasks.common.io import atomic_write, write_csv
from tasks.common.transforms import to_model_input

ATTRIBUTES = (
    "Male", "Smiling", "Mouth_Slightly_Open", "Eyeglasses", "Wearing_Hat", "Beard", "Mustache", "Bangs",
    "Black_Hair", "Brown_Hair", "Blond_Hair", "Gray_Hair", "Bald", "Wearing_Earrings", "Wearing_Lipstick",
    "Heavy_Makeup", "Rosy_Cheeks", "Bushy_Eyebrows", "Narrow_Eyes", "Pale_Skin",
)  # fmt: skip
SPLITS = {"train": 0, "val": 1, "test": 2, "unlabeled": 3}

# Hair shade runs from black through browns to blond; labels cover parts of it, the gaps are "neither".
HAIR_SHADES = np.array([[18, 16, 16], [55, 38, 28], [100, 66, 40], [150, 110, 68], [205, 170, 105],
                        [230, 205, 140]], dtype=np.float64)
BLACK_BELOW, BROWN_FROM, BROWN_BELOW, BLOND_FROM = 0.2, 0.3, 0.62, 0.72
OTHER_HAIR = np.array([[165, 65, 30], [40, 60, 160], [160, 40, 120]], dtype=np.float64)  # red, dyed
PALE_SKIN = np.array([252, 236, 226], dtype=np.float64)
LIPSTICKS = np.array([[200, 20, 45], [225, 40, 110], [140, 15, 60], [235, 80, 90]], dtype=np.float64)
EYE_SHADOWS = np.array([[90, 50, 110], [60, 60, 70], [150, 90, 60], [50, 90, 140]], dtype=np.float64)
EARRINGS = np.array([[225, 190, 70], [215, 215, 225], [200, 40, 60], [40, 120, 200]], dtype=np.float64)
HATS = np.array([[30, 30, 120], [150, 20, 20], [40, 40, 40], [220, 220, 210], [30, 110, 50],
                 [200, 150, 60]], dtype=np.float64)
SMILE_THRESHOLD = 1.5  # Identity.smile is the mouth's curvature, uniform in [-6, 8]
MOUTH_OPEN_THRESHOLD = 1.5  # canvas pixels between the lips
BANGS_THRESHOLD = 0.45  # fringe length as a share of the forehead
BUSHY_BROWS = 6  # brow thickness in canvas pixels at which brows count as bushy
NARROW_BELOW = 0.62  # lid opening as a share of the eye


@dataclasses.dataclass(frozen=True)
class AttributeFace:
    identity: Identity
    extras: FaceExtras
    labels: np.ndarray  # bool, one per ATTRIBUTES entry


def _pick(rng: np.random.Generator, palette: np.ndarray, jitter: float) -> tuple[int, int, int]:
    base = palette[rng.integers(len(palette))] + rng.normal(0.0, jitter, 3)
    return tuple(int(c) for c in np.clip(base, 1, 255))


def _hair_shade(u: float, rng: np.random.Generator) -> tuple[int, int, int]:
    position = u * (len(HAIR_SHADES) - 1)
    low = int(min(position, len(HAIR_SHADES) - 2))
    colour = HAIR_SHADES[low] + (position - low) * (HAIR_SHADES[low + 1] - HAIR_SHADES[low])
    return tuple(int(c) for c in np.clip(colour + rng.normal(0, 6, 3), 1, 255))


def sample_face(rng: np.random.Generator) -> AttributeFace:
    """One person: a base identity from the shared sampler, then the attributes and their drawing."""
    base = sample_identity(rng)
    male = rng.random() < 0.42
    age = rng.random()
    a: dict[str, bool] = {}
    a["Male"] = bool(male)

    # Head hair: baldness and grey with age, otherwise a shade along black..blond, or red/dyed.
    bald = male and age > 0.72 and rng.random() < 0.35
    grey = not bald and age > 0.78 and rng.random() < 0.3
    a["Bald"] = bool(bald)
    shade = rng.beta(1.3, 2.2) if male else rng.beta(1.5, 1.5)
    other = not grey and rng.random() < 0.08
    if grey:
        level = rng.uniform(135, 235)
        hair = tuple(int(c) for c in np.clip(level + rng.normal(0, 5, 3), 1, 255))
    elif other:
        hair = _pick(rng, OTHER_HAIR, 12)
    else:
        hair = _hair_shade(shade, rng)
    plain = not (grey or other or bald)
    a["Black_Hair"] = plain and shade < BLACK_BELOW
    a["Brown_Hair"] = plain and BROWN_FROM <= shade < BROWN_BELOW
    a["Blond_Hair"] = plain and shade >= BLOND_FROM
    a["Gray_Hair"] = bool(grey)
    if bald:
        style = "bald"
    elif male:
        style = ("crew", "cap", "mohawk", "long")[rng.choice(4, p=[0.6, 0.27, 0.05, 0.08])]
    else:
        style = ("long", "bun", "cap", "crew")[rng.choice(4, p=[0.55, 0.22, 0.17, 0.06])]

    # Face shape: men a little wider with squarer jaws, the only direct cue of `Male`.
    half_width = rng.uniform(31, 40) if male else rng.uniform(28, 37)
    jaw = rng.uniform(0.35, 1.0) if male else rng.uniform(0.0, 0.65)
    bushy = rng.random() < (0.22 if male else 0.05)
    brows = int(rng.integers(BUSHY_BROWS, BUSHY_BROWS + 2)) if bushy else int(rng.integers(2, BUSHY_BROWS))
    a["Bushy_Eyebrows"] = bool(bushy)
    pale = rng.random() < 0.045
    skin = tuple(int(c) for c in np.clip(PALE_SKIN + rng.normal(0, 5, 3), 1, 255)) if pale else base.skin
    a["Pale_Skin"] = bool(pale)

    smile = rng.uniform(-6, 8)
    a["Smiling"] = smile > SMILE_THRESHOLD
    opening = rng.uniform(MOUTH_OPEN_THRESHOLD, 5) if rng.random() < (0.62 if a["Smiling"] else 0.32) else (
        rng.uniform(0, MOUTH_OPEN_THRESHOLD))
    a["Mouth_Slightly_Open"] = opening > MOUTH_OPEN_THRESHOLD
    glasses = base.glasses if base.glasses != "none" else "round"
    a["Eyeglasses"] = rng.random() < (0.04 + 0.07 * (age > 0.6))
    a["Wearing_Hat"] = rng.random() < 0.05
    beard = male and rng.random() < 0.36
    a["Beard"] = bool(beard)
    a["Mustache"] = bool(male and rng.random() < (0.26 if beard else 0.04))
    fringe = 0.0
    if style not in ("bald", "mohawk"):
        if rng.random() < (0.07 if male else 0.22):
            fringe = rng.uniform(BANGS_THRESHOLD, 1.0)
        elif rng.random() < 0.15:
            fringe = rng.uniform(0.1, BANGS_THRESHOLD)
    a["Bangs"] = fringe > BANGS_THRESHOLD
    a["Wearing_Earrings"] = rng.random() < (0.03 if male else 0.38)
    a["Wearing_Lipstick"] = rng.random() < (0.015 if male else 0.8)
    a["Heavy_Makeup"] = a["Wearing_Lipstick"] and rng.random() < 0.75
    blush = rng.uniform(0.25, 0.5) if rng.random() < (0.02 if male else 0.09) else rng.uniform(0, 0.1)
    a["Rosy_Cheeks"] = blush >= 0.25
    narrow = rng.random() < 0.11
    openness = rng.uniform(0.35, NARROW_BELOW) if narrow else rng.uniform(0.7, 1.0)
    a["Narrow_Eyes"] = bool(narrow)

    identity = dataclasses.replace(
        base,
        face_half_width=half_width,
        jaw=jaw,
        skin=skin,
        hair=hair,
        hair_style=style,
        brow_thickness=brows,
        smile=smile,
        glasses=glasses if a["Eyeglasses"] else "none",
        beard=bool(beard),
        mouth_height=max(base.mouth_height, base.eye_height + base.nose_length + 8),  # room for a moustache
    )
    extras = FaceExtras(
        hat=_pick(rng, HATS, 15) if a["Wearing_Hat"] else None,
        hat_height=rng.uniform(0.45, 0.65),
        bangs=fringe,
        moustache=rng.uniform(2.5, 5) if a["Mustache"] else 0.0,
        mouth_open=opening if opening > 0.6 else 0.0,
        lipstick=_pick(rng, LIPSTICKS, 15) if a["Wearing_Lipstick"] else None,
        earrings=_pick(rng, EARRINGS, 15) if a["Wearing_Earrings"] else None,
        earring_radius=rng.uniform(1.3, 3.0),
        eye_shadow=_pick(rng, EYE_SHADOWS, 15) if a["Heavy_Makeup"] else None,
        eye_shadow_alpha=rng.uniform(0.35, 0.7) if a["Heavy_Makeup"] else 0.0,
        blush=blush,
        eye_openness=openness,
    )
    labels = np.array([a[name] for name in ATTRIBUTES], dtype=bool)
    return AttributeFace(identity, extras, labels)


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, 7, SPLITS[split], index])  # 7: this task's stream of the renderer


def synthetic_labels(seed: int, split: str, count: int) -> np.ndarray:
    """(count, attributes) 0/1 labels of a split without rendering (label rates, pos_weight)."""
    return np.stack([sample_face(_rng(seed, split, i)).labels for i in range(count)]).astype(np.float32)


class SyntheticAttributeFaces(Dataset):
    """`count` faces of one split as `(CHW float tensor in [-1, 1], float 0/1 per attribute, key)`.

    `cache` keeps up to that many rendered images per process (about 48 KB each at 128 px): a
    labeled set is small and seen every epoch, and rendering is the cost of a small student's step.
    """

    def __init__(
        self,
        count: int,
        *,
        size: int = 128,
        seed: int = 0,
        split: str = "train",
        transform: Callable | None = None,
        cache: int = 0,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
        if count < 1:
            raise ValueError(f"count must be positive, got {count}")
        self.count, self.size, self.seed, self.split = count, size, seed, split
        self.transform = transform
        self.attributes = list(ATTRIBUTES)
        self.cache_limit = cache
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return self.count

    def key(self, index: int) -> str:
        return f"{self.split}/{index:06d}.png"

    def render(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The uint8 HWC photo of item `index` and its bool labels."""
        if not 0 <= index < self.count:
            raise IndexError(f"index {index} out of range for {self.count} items")
        if index in self._cache:
            return self._cache[index]
        rng = _rng(self.seed, self.split, index)
        face = sample_face(rng)
        photo = render_photo(*draw_face(face.identity, self.size, face.extras), rng)
        if len(self._cache) < self.cache_limit:
            self._cache[index] = (photo, face.labels)
        return photo, face.labels

    def image(self, index: int) -> np.ndarray:
        return self.render(index)[0]

    def labels(self) -> np.ndarray:
        """(count, attributes) 0/1 labels, without rendering."""
        return synthetic_labels(self.seed, self.split, self.count)

    def _tensor(self, image: np.ndarray) -> torch.Tensor:
        if self.transform is not None:
            image = self.transform(image=image)["image"]
        return to_model_input(image)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        image, labels = self.render(index)
        return self._tensor(image), torch.from_numpy(labels.astype(np.float32)), self.key(index)


class SyntheticUnlabeledFaces(SyntheticAttributeFaces):
    """Faces of the `unlabeled` split as `(image, key)`: what distillation trains on, without labels."""

    def __init__(self, count: int, **options) -> None:
        super().__init__(count, split="unlabeled", **options)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        return self._tensor(self.image(index)), self.key(index)


def write_synthetic_folder(faces: SyntheticAttributeFaces, out_dir: str | os.PathLike, *,
                           labels_csv: bool = True) -> Path:
    """Write the faces as `out_dir/<key>` PNGs (lossless: the same pixels as rendered) and, unless
    `labels_csv` is false, `out_dir/<split>_attributes.csv` (`image,<attr>,...` with 0/1 values)."""
    out_dir = Path(out_dir)
    rows = []
    for index in range(len(faces)):
        image, labels = faces.render(index)
        with atomic_write(out_dir / faces.key(index)) as tmp:
            Image.fromarray(image).save(tmp, format="PNG")
        rows.append([faces.key(index), *(int(v) for v in labels)])
    if labels_csv:
        write_csv(out_dir / f"{faces.split}_attributes.csv", ["image", *faces.attributes], rows)
    return out_dir


__all__ = [
    "ATTRIBUTES",
    "SyntheticAttributeFaces",
    "SyntheticUnlabeledFaces",
    "sample_face",
    "synthetic_labels",
    "write_synthetic_folder",
]
