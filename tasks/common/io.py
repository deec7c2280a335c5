"""File I/O every task shares: image decoding with clear errors, and atomic writes.

Datasets are large and real folders hold the odd broken file, so decoding raises one
exception type (`ImageReadError`) that datasets catch to skip-and-count instead of dying.
Result files, checkpoints and indexes are written through `atomic_write` so that a crash
never leaves a half-written file under the final name.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from backbone.fileio import atomic_write

log = logging.getLogger(__name__)

# What every task's folder readers treat as an image (matched case-insensitively on the suffix).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class ImageReadError(ValueError):
    """An image file that cannot be decoded; the message names the file."""


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode `path` to an RGB uint8 array of shape (H, W, 3)."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            return np.array(img.convert("RGB"))
    except FileNotFoundError:
        raise ImageReadError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ImageReadError(f"{path}: not a readable image ({err})") from err


class SkipCounter:
    """Counts images skipped because they could not be decoded, and logs each one once."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def __len__(self) -> int:
        return len(self.paths)

    def record(self, err: ImageReadError, path: str | os.PathLike) -> None:
        self.paths.append(str(path))
        log.warning("skipped corrupt image (%d so far): %s", len(self.paths), err)


def read_first_readable(paths_at, start: int, count: int, skipped: SkipCounter):
    """Return `(index, image)` for the first decodable item at or after `start` (wrapping).

    `paths_at(i)` gives the file of item i. Bad files are recorded in `skipped`; a dataset
    whose every file is bad raises, since silently looping forever helps nobody.
    """
    for offset in range(count):
        index = (start + offset) % count
        path = paths_at(index)
        try:
            return index, read_image(path)
        except ImageReadError as err:
            skipped.record(err, path)
    raise ImageReadError(f"no readable image among {count} files (first: {paths_at(start)})")


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(text)


def is_image_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display here); imported only by plotting code,
    since matplotlib is slow to import."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike, *, dpi: int = 100, **savefig_kwargs) -> Path:
    """Save a matplotlib figure as PNG atomically, then close it (figures are only ever written once)."""
    plt = pyplot()
    path = Path(path)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, **savefig_kwargs)
    plt.close(fig)
    return path


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence]) -> Path:
    """A CSV written atomically: the one way every task writes `predictions.csv` and tables."""
    path = Path(path)
    with atomic_write(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path
