"""Where the land is: a quarter-degree land mask shipped with the task, derived from `global-land-mask`.

`global-land-mask` ships NOAA's GLOBE land/sea raster at 1/120 degree (21600 x 43200 booleans): exact,
but importing it decompresses 930 MB and takes about 9 s, too slow for a data module that builds its
synthetic world at start-up and for every map we draw. `build_land_mask` reduces it once to a
quarter-degree grid (a cell is land when at least half of it is) and `land_mask.npz` (bit-packed,
13 kB) is that result, so nothing is downloaded or decompressed at run time. Rebuilt from the package
(a dev dependency) it agrees with the full raster on 99.4 % of uniformly drawn points; coasts differ.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np

from backbone.fileio import atomic_write

LAND_MASK_FILE = Path(__file__).with_name("land_mask.npz")
RESOLUTION_DEG = 0.25


def build_land_mask(path: str | Path = LAND_MASK_FILE, resolution: float = RESOLUTION_DEG) -> Path:
    """Write the reduced mask (rows from 90 N southwards, columns from 180 W eastwards)."""
    from global_land_mask import globe

    ocean = globe._mask  # (21600, 43200) True on water; row 0 at 90 N, column 0 at 180 W
    block = int(round(resolution * (ocean.shape[1] / 360)))
    rows, cols = ocean.shape[0] // block, ocean.shape[1] // block
    coarse = np.empty((rows, cols), bool)
    for r in range(rows):
        band = ocean[r * block : (r + 1) * block].reshape(block, cols, block)
        coarse[r] = band.mean(axis=(0, 2)) <= 0.5
    with atomic_write(Path(path)) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(
            handle,
            bits=np.packbits(coarse, axis=1),
            shape=np.array(coarse.shape),
            resolution=np.array(resolution),
        )
    return Path(path)


@cache
def land_mask() -> np.ndarray:
    """(720, 1440) booleans: True where the quarter-degree cell is mostly land."""
    with np.load(LAND_MASK_FILE) as saved:
        rows, cols = (int(v) for v in saved["shape"])
        return np.unpackbits(saved["bits"], axis=1, count=cols).astype(bool).reshape(rows, cols)


def is_land(lat, lon) -> np.ndarray:
    mask = land_mask()
    rows, cols = mask.shape
    lat, lon = np.asarray(lat, np.float64), (np.asarray(lon, np.float64) + 180) % 360 - 180
    r = np.clip(((90 - lat) / 180 * rows).astype(np.int64), 0, rows - 1)
    c = np.clip(((lon + 180) / 360 * cols).astype(np.int64), 0, cols - 1)
    return mask[r, c]
