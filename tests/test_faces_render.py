"""The shared face renderer is part of every synthetic face set's definition: pin its pixels.

The reference is each photo's 8x8 grid of block means (5 unseen people x 3 photos at 64 and 80 px,
seed 3), saved when the renderer moved to tasks/common/faces.py with opencv 5.0. A hash of the pixels
would be exact but breaks on OpenCV releases: 5.1 anti-aliases 5 of 288,000 values one level
differently. Block means absorb that (a one-level change moves a mean by 0.02) while anything a code
change does (an extra random draw, a moved or recoloured feature) moves some block by whole levels.
"""

from pathlib import Path

import numpy as np

from tasks.face_embedding.synthetic import SyntheticFaces

REFERENCE = Path(__file__).with_name("fixtures") / "face_embedding_render_blocks.npz"
GRID = 8


def block_means(size: int) -> np.ndarray:
    faces = SyntheticFaces(5, 3, size=size, seed=3, identity_offset=100_000)
    photos = np.stack([faces.image(index) for index in range(len(faces))]).astype(np.float64)
    cell = size // GRID
    return photos.reshape(len(faces), GRID, cell, GRID, cell, 3).mean(axis=(2, 4))


def test_face_embedding_photos_are_unchanged_by_renderer_extensions():
    reference = np.load(REFERENCE)
    for size in (64, 80):
        difference = np.abs(block_means(size) - reference[f"size{size}"].astype(np.float64))
        assert difference.max() < 0.25, f"{size} px photos changed: a block mean moved {difference.max():.2f}"
