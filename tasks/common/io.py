"""File I/O every task shares: image decoding with clear errors, and atomic writes.

Datasets are large and real folders hold the odd broken file, so decoding raises one
exception type (`ImageReadError`) that datasets catch to skip-and-count instead of dying.
Result files, checkpoints and indexes are written through `atomic_write` so that a crash
never leaves a half-written file under the final name.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path, PureWindowsPath

import numpy as np
from PIL import Image, UnidentifiedImageError

from backbone.fileio import atomic_write

log = logging.getLogger(__name__)

# What every task's folder readers treat as an image (matched case-insensitively on the suffix).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class ImageReadError(ValueError):
    """An image file that cannot be decoded; the message names the file."""


# Over-large images are treated as corrupt: PIL's decompression-bomb limit (about 89 Mpx, 9500 x 9500)
# is far beyond any photo a task trains on, and a 20000 x 20000 PNG would need 1.2 GB to decode.
MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
# Below this side length an image holds nothing to learn from (and crops of it degenerate).
MIN_IMAGE_SIDE = 2


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode `path` to an RGB uint8 array of shape (H, W, 3).

    Raises `ImageReadError` naming the file for anything that is not a usable image: missing,
    a directory, empty, truncated, bad checksums, over `MAX_IMAGE_PIXELS` (checked from the header,
    before decoding) or under `MIN_IMAGE_SIDE` pixels on a side.
    """
    path = Path(path)
    try:
        source = path
        if path.suffix.lower() == ".png":  # Pillow skips the CRCs of image data chunks; check them all
            source = io.BytesIO(data := path.read_bytes())
            _check_png_chunks(data, path)
        with Image.open(source) as img:
            width, height = img.size
            if width * height > MAX_IMAGE_PIXELS:
                raise ImageReadError(
                    f"{path}: {width}x{height} px is over the {MAX_IMAGE_PIXELS} pixel limit "
                    "(a decompression bomb or a mistaken file); treated as corrupt"
                )
            if min(width, height) < MIN_IMAGE_SIDE:
                raise ImageReadError(f"{path}: {width}x{height} px is too small to be an image of anything")
            img.load()
            return np.array(img.convert("RGB"))
    except FileNotFoundError:
        raise ImageReadError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ImageReadError(f"{path}: is a directory, not an image file") from None
    except Image.DecompressionBombError as err:
        raise ImageReadError(f"{path}: over the decompression-bomb pixel limit ({err})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as err:
        if isinstance(err, ImageReadError):
            raise
        raise ImageReadError(f"{path}: not a readable image ({err})") from err


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _check_png_chunks(data: bytes, path: Path) -> None:
    """Every chunk of a PNG up to IEND is complete and matches its CRC (a corrupted copy fails here)."""
    if not data.startswith(PNG_SIGNATURE):
        return  # not a PNG after all: let Pillow identify it
    offset = len(PNG_SIGNATURE)
    while offset + 8 <= len(data):
        length = int.from_bytes(data[offset : offset + 4], "big")
        kind = data[offset + 4 : offset + 8]
        end = offset + 8 + length
        if end + 4 > len(data):
            raise ImageReadError(f"{path}: truncated PNG ({kind!r} chunk at byte {offset} runs past the end)")
        if zlib.crc32(data[offset + 4 : end]) != int.from_bytes(data[end : end + 4], "big"):
            raise ImageReadError(f"{path}: PNG chunk {kind!r} at byte {offset} fails its CRC (corrupt file)")
        if kind == b"IEND":
            return
        offset = end + 4
    raise ImageReadError(f"{path}: truncated PNG (no IEND chunk)")


class SkipCounter:
    """Counts images skipped because they could not be decoded, and logs each one.

    `paths` and `len()` are this process's; `total` also counts what forked loader workers skipped
    (a counter in shared memory), which is what a run logs as its `data/skipped_*` metric. Sent to a
    spawned process the counter is that process's own.
    """

    def __init__(self) -> None:
        self.paths: list[str] = []
        self._shared = _shared_counter()

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def total(self) -> int:
        return int(self._shared.value) if self._shared is not None else len(self.paths)

    def record(self, err: ImageReadError, path: str | os.PathLike) -> None:
        self.paths.append(str(path))
        if self._shared is not None:
            with self._shared.get_lock():
                self._shared.value += 1
        log.warning("skipped corrupt image (%d so far): %s", len(self.paths), err)

    def __getstate__(self) -> dict:
        return {"paths": list(self.paths), "_shared": None}  # shared memory travels only by fork


def _shared_counter():
    try:
        import multiprocessing

        return multiprocessing.get_context("fork").Value("q", 0)
    except (OSError, ValueError, ImportError):  # no fork or no shared memory here: count locally
        return None


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


def unsafe_relative_name(name: str) -> bool:
    """True for an image name from a data file that would read outside its image folder (or nothing):
    empty, absolute, a drive, a `..` part (with `/` or `\\`), or a NUL byte. Every parser that takes
    image paths from a file the user did not write (COCO `file_name`, Stanford Dogs' split lists,
    CelebA and attribute CSV rows, photo CSV ids) refuses these, since joining one to the image root
    would escape it."""
    posix = name.replace("\\", "/")
    if not posix or posix.startswith("/") or ".." in posix.split("/") or "\0" in name:
        return True
    # Windows: a name with a drive (which every absolute one not caught above has) holds a colon;
    # parsing only those keeps a 5 M-row photo CSV from spending a minute in PureWindowsPath
    return ":" in name and PureWindowsPath(name).drive != ""


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


def read_checkpoint(path: str | os.PathLike) -> dict:
    """A torch checkpoint as a dict, loaded with `weights_only=True` (a pickle that would run code is
    refused); every failure is a `FileNotFoundError` / `ValueError` naming the file."""
    import torch  # here, so the image and CSV helpers above stay importable without torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a file that is not a torch save
        raise ValueError(f"{path}: not a loadable torch checkpoint ({err})") from err
    if not isinstance(saved, dict):
        raise ValueError(f"{path}: expected a checkpoint dict, got {type(saved).__name__}")
    return saved
