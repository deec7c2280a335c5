"""Procedural synthetic faces: many identities, rendered on the fly, for tests and the default recipe.

The set is built so that *identity* and *pixels* disagree. Each identity fixes a symmetric face
(shape, proportions, skin/hair/eye/lip colours, hair style, eyebrows, nose, mouth, ears, glasses,
beard, moles) drawn from a generator seeded by `(seed, identity)`; each image of it draws, from a generator
seeded by `(seed, identity, image)`, a cluttered background, a pose (rotation, scale, shift), an
illumination (brightness, gradient, colour cast) and sensor noise. Those nuisances move most pixels,
so nearest neighbour on raw pixels is poor (`raw_pixel_nn_top1`), while the identity cues stay
visible to a small network. Identities are symmetric because face pipelines flip horizontally.

Training and test sets are disjoint identity ranges of one seed: `SyntheticFaces(500, ..)` holds
identities 0..499 and `SyntheticFaces(100, .., identity_offset=100_000)` holds unseen people.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from tasks.common.faces import Identity, draw_face, render_photo, sample_identity
from tasks.common.io import atomic_write
from tasks.common.transforms import to_model_input
from tasks.face_embedding.metrics import first_image_gallery, identification_topk

FACE_LAYER_CACHE_SIZE = 2048  # identities whose drawn face each process keeps (~200 MB at 80 px)


class SyntheticFaces(Dataset):
    """`num_identities` people x `images_per_identity` photos, deterministic and rendered on demand.

    Items are `(CHW float tensor in [-1, 1], label)`; labels are 0..num_identities-1 in order, and
    `identities[label]` is the person's global name (`synth_<id>`), unique across offsets.
    """

    def __init__(
        self,
        num_identities: int,
        images_per_identity: int,
        *,
        size: int = 64,
        seed: int = 0,
        identity_offset: int = 0,
        transform: Callable | None = None,
    ) -> None:
        if num_identities < 1 or images_per_identity < 1:
            raise ValueError("need at least one identity and one image per identity")
        self.num_identities = num_identities
        self.images_per_identity = images_per_identity
        self.size = size
        self.seed = seed
        self.identity_offset = identity_offset
        self.transform = transform
        self.identities = [f"synth_{identity_offset + i:06d}" for i in range(num_identities)]
        self.labels = [i for i in range(num_identities) for _ in range(images_per_identity)]
        self._face_layers: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.labels)

    def identity(self, label: int) -> Identity:
        return sample_identity(np.random.default_rng([self.seed, self.identity_offset + label]))

    def face_layer(self, label: int) -> tuple[np.ndarray, np.ndarray]:
        """The identity drawn at output size, before any nuisance: the same for all of its photos.

        Drawing is 40 % of a photo's cost and training renders every identity thousands of times,
        so each process keeps the most recent layers (about 100 KB each at 80 px).
        """
        cache = self._face_layers
        if label in cache:
            cache[label] = cache.pop(label)  # most recently used goes last
        else:
            if len(cache) >= FACE_LAYER_CACHE_SIZE:
                del cache[next(iter(cache))]
            cache[label] = draw_face(self.identity(label), self.size)
        return cache[label]

    def image(self, index: int) -> np.ndarray:
        """HWC uint8 RGB photo number `index` (identity-major order)."""
        label, number = divmod(index, self.images_per_identity)
        rng = np.random.default_rng([self.seed, self.identity_offset + label, 1 + number])
        return render_photo(*self.face_layer(label), rng)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.image(index)
        if self.transform is not None:
            image = self.transform(image=image)["image"]
        return to_model_input(image), self.labels[index]


def write_identity_folders(faces: SyntheticFaces, out_dir: str | os.PathLike, *,
                           quality: int = 95) -> dict[str, int]:
    """Write `out_dir/<identity>/<identity>_0001.jpg ...` (LFW naming); return images per identity."""
    out_dir = Path(out_dir)
    counts: dict[str, int] = {}
    for index in tqdm(range(len(faces)), desc=f"writing {out_dir}", unit="img"):
        label, number = divmod(index, faces.images_per_identity)
        name = faces.identities[label]
        with atomic_write(out_dir / name / f"{name}_{number + 1:04d}.jpg") as tmp:
            Image.fromarray(faces.image(index)).save(tmp, format="JPEG", quality=quality)
        counts[name] = number + 1
    return counts


def raw_pixel_nn_top1(faces: SyntheticFaces) -> float:
    """Top-1 identification from raw pixels (L2), gallery = first photo of each identity.

    The floor a learned embedding must clear; the synthetic set is only useful while it is low.
    """
    pixels = np.stack([faces.image(i).reshape(-1) for i in range(len(faces))]).astype(np.float32)
    labels = np.asarray(faces.labels)
    gallery, probes = first_image_gallery(labels)
    return identification_topk(pixels[gallery], labels[gallery], pixels[probes], labels[probes],
                               ks=(1,), metric="euclidean")[1]
