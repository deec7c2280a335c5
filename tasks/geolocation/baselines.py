"""The baselines a geolocation model must beat, scored on the same test photos with the same metrics.

- most populous cell: answer every photo with one partition's biggest cell (at the mean position of its
  training photos): what a model that learned nothing but the prior would say. Each partition offers
  its biggest cell and the one that scores best on the test photos is kept, in the baseline's favour;
- nearest neighbour on raw pixels (im2gps-style retrieval, Hays & Efros 2008, with Torralba's tiny
  images as the descriptor): each test photo takes the position of the training photo whose
  `size` x `size` thumbnail is closest in L2 over raw RGB values.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from tasks.common.transforms import from_model_input
from tasks.geolocation.cells import Partition
from tasks.geolocation.metrics import geo_metrics, great_circle_km


def most_populous_cells(parts: list[Partition]) -> list[tuple[float, float]]:
    """The mean position of each partition's biggest cell."""
    return [(float(p.mean_lat[np.argmax(p.count)]), float(p.mean_lon[np.argmax(p.count)])) for p in parts]


def thumbnails(
    dataset: Dataset, size: int, *, batch_size: int = 256, num_workers: int = 0, limit: int | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(photos, size*size*3) float32 raw-pixel thumbnails, (photos, 2) positions and keys of a dataset."""
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, shuffle=False)
    pixels, coords, keys = [], [], []
    for images, target in loader:
        for image in images:
            small = cv2.resize(from_model_input(image), (size, size), interpolation=cv2.INTER_AREA)
            pixels.append(small.reshape(-1).astype(np.float32))
        coords.append(target["coords"].numpy())
        keys += list(target["key"])
        if limit is not None and len(keys) >= limit:
            break
    n = len(keys) if limit is None else min(limit, len(keys))
    return np.stack(pixels)[:n], np.concatenate(coords)[:n], keys[:n]


def nearest_neighbour(train: np.ndarray, test: np.ndarray, *, chunk: int = 512) -> np.ndarray:
    """Index of the closest training row (L2) for every test row."""
    a = torch.from_numpy(train)
    a_norm = (a * a).sum(dim=1)
    found = []
    for start in range(0, len(test), chunk):
        b = torch.from_numpy(test[start : start + chunk])
        found.append((a_norm[None, :] - 2 * b @ a.T).argmin(dim=1))  # |b|^2 is the same for every row
    return torch.cat(found).numpy()


def score_baselines(
    parts: list[Partition], train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]
) -> dict[str, dict]:
    """Five-scale scores of both baselines; `train`/`test` are (thumbnails, positions)."""
    (train_pixels, train_coords), (test_pixels, test_coords) = train, test
    priors = [
        geo_metrics(great_circle_km(test_coords[:, 0], test_coords[:, 1], a, b))
        for a, b in most_populous_cells(parts)
    ]
    match = nearest_neighbour(train_pixels, test_pixels)
    pixel = great_circle_km(
        test_coords[:, 0], test_coords[:, 1], train_coords[match, 0], train_coords[match, 1]
    )
    best = max(priors, key=lambda scores: scores["geoscore"])
    return {"most_populous_cell": best, "pixel_nearest_neighbour": geo_metrics(pixel)}
