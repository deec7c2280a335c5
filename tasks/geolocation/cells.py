"""PlaNet's adaptive partition of the Earth into S2 cells, and the `cells.csv` that records one.

PlaNet (Weyand et al. 2016, §3): start from coarse S2 cells; split a cell while it holds more than
`t_max` photos; then drop every cell holding fewer than `t_min`. The kept cells are the classes.

S2 itself comes from `s2cell` (tokens, cell centres, and the reference for lat/lon -> leaf cell id).
What is written here is what that library has no array form of: lat/lon -> leaf id for many points at
once (its own steps on numpy arrays, bit for bit its results), the parent of many cell ids at once (three
bit operations on uint64, checked against `s2cell.cell_id_to_parent_cell_id` in the tests) and the
level of an id, so millions of photos are partitioned by sorting their leaf ids once and walking down
the levels with numpy, with no Python object per photo.

A partition's cells are sorted by cell id (Hilbert-curve order), so class numbers are reproducible.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import s2cell

from tasks.common.io import write_csv

MAX_LEVEL = 30
CELLS_HEADER = ("class", "token", "level", "lat", "lon", "mean_lat", "mean_lon", "count")


# -- cell ids as arrays --------------------------------------------------------------------------
LEAF_CHUNK = 65_536  # points converted at once: a few MB of temporaries whatever the number of photos


def leaf_cell_ids(lat: Sequence[float], lon: Sequence[float]) -> np.ndarray:
    """Level-30 S2 cell ids (uint64) of points in degrees: `s2cell.lat_lon_to_cell_id`, on arrays.

    Bit for bit the library's: the same IEEE operations in the same order (products, quotients and
    square roots are correctly rounded in numpy as in Python), its own Hilbert lookup table, and the
    sines and cosines from `math`, as s2cell takes them (numpy's SIMD ones may differ in the last bit,
    which moves a point across a leaf-cell edge now and then). A chunk at a time, so 5 M photos cost
    their 40 MB of ids and not one Python float per coordinate; about 20 times faster than a call per
    point (`tests/test_geolocation_cells.py` checks it against that call on random and edge points).
    """
    lat, lon = np.asarray(lat, np.float64), np.asarray(lon, np.float64)
    if lat.shape != lon.shape or lat.ndim != 1:
        raise ValueError(f"lat and lon must be 1-D and of one length, got shapes {lat.shape}, {lon.shape}")
    ids = np.empty(len(lat), np.uint64)
    for start in range(0, len(lat), LEAF_CHUNK):
        stop = start + LEAF_CHUNK
        ids[start:stop] = _leaf_ids(lat[start:stop], lon[start:stop])
    return ids


def _math(function, values: np.ndarray) -> np.ndarray:
    return np.fromiter(map(function, values.tolist()), np.float64, count=len(values))


def _uv_to_ij(uv: np.ndarray) -> np.ndarray:
    """s2cell's `_s2_st_to_ij(_s2_uv_to_st(uv))`. Both of its branches take sqrt(1 + 3|uv|): for uv < 0,
    1 - 3uv is 1 + 3|uv| exactly, as rounding is symmetric in sign."""
    root = np.sqrt(1.0 + 3.0 * np.abs(uv))
    st = np.where(uv >= 0.0, 0.5 * root, 1.0 - 0.5 * root)
    return np.clip(np.floor(st * float(1 << MAX_LEVEL)), 0, (1 << MAX_LEVEL) - 1).astype(np.int64)


def _leaf_ids(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """`s2cell.lat_lon_to_cell_id(lat, lon, 30)` of one chunk, step by step as the library does it."""
    lat_rad, lon_rad = lat * (math.pi / 180.0), lon * (math.pi / 180.0)  # math.radians
    cos_lat = _math(math.cos, lat_rad)
    xyz = np.stack([cos_lat * _math(math.cos, lon_rad), cos_lat * _math(math.sin, lon_rad),
                    _math(math.sin, lat_rad)], axis=1)  # fmt: skip
    rows = np.arange(len(lat))
    face = np.argmax(np.abs(xyz), axis=1)  # the first largest component, as Python's max() picks it
    face += 3 * (xyz[rows, face] < 0.0)
    # face -> (u, v) = (xyz[1 - (face + 1) // 2], xyz[2 - face // 2]) / xyz[face % 3], negated on some faces
    w = xyz[rows, face % 3]
    u = xyz[rows, (1 - ((face + 1) >> 1)) % 3] / w
    v = xyz[rows, (2 - (face >> 1)) % 3] / w
    u = np.where(np.isin(face, (1, 2, 5)), -u, u)
    v = np.where(np.isin(face, (2, 4, 5)), -v, v)
    i, j = _uv_to_ij(u), _uv_to_ij(v)
    # s2cell.s2_face_ij_to_cell_id: 4 bits of i and of j and 2 of orientation -> 8 bits of curve position
    lookup = _hilbert_lookup()
    bits = face & 1
    ids = face.astype(np.uint64) << np.uint64(2 * MAX_LEVEL)
    for k in range(7, -1, -1):
        bits = lookup[bits | (((i >> (4 * k)) & 15) << 6) | (((j >> (4 * k)) & 15) << 2)]
        ids |= (bits >> 2).astype(np.uint64) << np.uint64(8 * k)
        bits &= 3
    return (ids << np.uint64(1)) | np.uint64(1)


@cache
def _hilbert_lookup() -> np.ndarray:
    """s2cell's table of (4 bits of i, 4 of j, orientation) -> (8 bits of position, orientation)."""
    from s2cell import s2cell as library

    library._s2_init_lookups()
    return np.array(library._S2_LOOKUP_POS, np.int64)


def _lsb(level: int | np.ndarray) -> np.ndarray:
    return np.left_shift(np.uint64(1), (2 * (MAX_LEVEL - np.asarray(level, np.int64))).astype(np.uint64))


def parent_ids(ids: np.ndarray, level: int | np.ndarray) -> np.ndarray:
    """The level-`level` ancestor of every id (S2's `parent(level)`: keep the bits above the new lowest
    set bit, set it). `level` must not be finer than any id's own level."""
    lsb = _lsb(level)
    parents = ids & ~(lsb - np.uint64(1))
    parents |= lsb  # in place: one array the size of `ids`, not two
    return parents


def cell_levels(ids: np.ndarray) -> np.ndarray:
    """The level of every cell id: 30 minus half the position of its lowest set bit."""
    ids = np.asarray(ids, np.uint64)
    lowest = ids & (~ids + np.uint64(1))
    return MAX_LEVEL - np.log2(lowest.astype(np.float64)).astype(np.int64) // 2


def contains(cell_ids: np.ndarray, point_ids: np.ndarray) -> np.ndarray:
    """Whether each cell contains the leaf (or finer-or-equal cell) id beside it: S2's range test."""
    lsb = cell_ids & (~cell_ids + np.uint64(1))
    return (point_ids >= cell_ids - (lsb - np.uint64(1))) & (point_ids <= cell_ids + (lsb - np.uint64(1)))


def signed(ids: np.ndarray) -> np.ndarray:
    """uint64 ids as int64 bit patterns (torch has no uint64 buffers); `unsigned` undoes it."""
    return np.asarray(ids, np.uint64).view(np.int64)


def unsigned(ids: np.ndarray) -> np.ndarray:
    return np.asarray(ids, np.int64).view(np.uint64)


# -- positions on the sphere -------------------------------------------------------------------
def to_xyz(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    lat, lon = np.radians(lat), np.radians(lon)
    return np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], axis=-1)


def to_lat_lon(xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    return np.degrees(np.arctan2(z, np.hypot(x, y))), np.degrees(np.arctan2(y, x))


def spherical_means(groups: np.ndarray, lat: np.ndarray, lon: np.ndarray, count: int):
    """Mean position (normalised mean of unit vectors) of the points of each group 0..count-1; points in
    group -1 (a dropped cell) are left out. The unit vectors are made `LEAF_CHUNK` points at a time into
    one (3, points) array and summed by one `bincount` per axis in the points' order (so the sums are
    those of the whole arrays at once), with no copies of the inputs or (points, 3) temporaries."""
    lat, lon = np.asarray(lat, np.float64), np.asarray(lon, np.float64)
    bins = np.asarray(groups, np.int64) + 1  # group -1 -> bin 0, cut off below
    xyz = np.empty((3, len(bins)))
    for start in range(0, len(bins), LEAF_CHUNK):
        part = slice(start, start + LEAF_CHUNK)
        xyz[:, part] = to_xyz(lat[part], lon[part]).T
    sums = np.stack([np.bincount(bins, weights=axis, minlength=count + 1)[1:] for axis in xyz], axis=1)
    return to_lat_lon(sums)


# -- the partition -------------------------------------------------------------------------------
@dataclass
class Partition:
    """Kept cells, sorted by id; `dropped` photos fell in cells under `t_min`."""

    cell_id: np.ndarray  # uint64
    level: np.ndarray
    lat: np.ndarray  # cell centre (s2cell)
    lon: np.ndarray
    mean_lat: np.ndarray  # mean position of the cell's photos, on the sphere
    mean_lon: np.ndarray
    count: np.ndarray
    dropped: int = 0
    t_max: int | None = None
    t_min: int | None = None

    def __len__(self) -> int:
        return len(self.cell_id)

    @property
    def tokens(self) -> list[str]:
        return [s2cell.cell_id_to_token(int(c)) for c in self.cell_id]

    def assign(self, leaf_ids: np.ndarray) -> np.ndarray:
        """The class of each leaf id, -1 where it lies in no kept cell (the finest, should cells nest).

        `LEAF_CHUNK` ids at a time: each level's parents and lookups are then a few small arrays, not
        five arrays the size of millions of photos."""
        leaf_ids = np.asarray(leaf_ids, np.uint64)
        classes = np.full(len(leaf_ids), -1, np.int64)
        members = [np.flatnonzero(self.level == level) for level in np.unique(self.level)]
        by_level = [(int(self.level[m[0]]), m, self.cell_id[m]) for m in members]  # ids sorted, as cell_id
        for start in range(0, len(leaf_ids), LEAF_CHUNK):
            chunk, found = leaf_ids[start : start + LEAF_CHUNK], classes[start : start + LEAF_CHUNK]
            for level, cells, ids in by_level:
                parents = parent_ids(chunk, level)
                where = np.searchsorted(ids, parents).clip(max=len(ids) - 1)
                hit = ids[where] == parents
                found[hit] = cells[where[hit]]
        return classes

    def as_dict(self) -> dict[str, list]:
        """Plain lists (what the data module hands the model, and what a checkpoint may hold)."""
        return {
            "cell_id": signed(self.cell_id).tolist(),
            "lat": self.lat.tolist(),
            "lon": self.lon.tolist(),
            "mean_lat": self.mean_lat.tolist(),
            "mean_lon": self.mean_lon.tolist(),
            "count": self.count.tolist(),
        }

    @classmethod
    def from_dict(cls, table: dict[str, list]) -> Partition:
        ids = unsigned(np.asarray(table["cell_id"], np.int64))
        return cls(
            cell_id=ids,
            level=cell_levels(ids),
            **{key: np.asarray(table[key], np.float64) for key in ("lat", "lon", "mean_lat", "mean_lon")},
            count=np.asarray(table["count"], np.int64),
        )


def partition(
    leaf_ids: np.ndarray,
    lat: np.ndarray,
    lon: np.ndarray,
    *,
    t_max: int,
    t_min: int,
    min_level: int = 0,
    max_level: int = MAX_LEVEL,
) -> tuple[Partition, np.ndarray]:
    """PlaNet's rule over photos given by leaf ids (and their positions, for the cell means).

    Returns the partition and each photo's class (-1 for photos in dropped cells). A cell at
    `max_level` is kept whole however many photos it holds.
    """
    if not 0 <= min_level <= max_level <= MAX_LEVEL:
        raise ValueError(f"need 0 <= min_level <= max_level <= 30, got {min_level}, {max_level}")
    if t_max < 1 or t_min < 0:
        raise ValueError(f"t_max must be >= 1 and t_min >= 0, got {t_max}, {t_min}")
    if t_min > t_max:
        raise ValueError(f"t_min ({t_min}) must not exceed t_max ({t_max})")
    leaf_ids = np.asarray(leaf_ids, np.uint64)
    order = np.argsort(leaf_ids, kind="stable")
    remaining, photos = leaf_ids[order], order  # parents of sorted ids stay sorted
    found_ids, found_levels, found_counts, found_photos = [], [], [], []
    level = min_level
    while remaining.size:
        parents = parent_ids(remaining, level)
        starts = np.flatnonzero(np.r_[True, parents[1:] != parents[:-1]])
        counts = np.diff(np.r_[starts, remaining.size])
        final = (counts <= t_max) | (level >= max_level)
        found_ids.append(parents[starts][final])
        found_levels.append(np.full(int(final.sum()), level))
        found_counts.append(counts[final])
        in_final = np.repeat(final, counts)
        found_photos.append(photos[in_final])
        remaining, photos = remaining[~in_final], photos[~in_final]
        level += 1
    ids, levels, counts = (np.concatenate(parts) for parts in (found_ids, found_levels, found_counts))
    members = np.concatenate(found_photos)  # photos grouped by found cell, in the cells' order
    keep = counts >= t_min
    order = np.argsort(ids[keep], kind="stable")
    new_index = np.full(len(ids), -1, np.int64)
    new_index[np.flatnonzero(keep)[order]] = np.arange(int(keep.sum()))
    classes = np.full(len(leaf_ids), -1, np.int64)
    classes[members] = np.repeat(new_index, counts)
    kept_ids = ids[keep][order]
    mean_lat, mean_lon = spherical_means(classes, lat, lon, len(kept_ids))
    centres = np.array([s2cell.cell_id_to_lat_lon(int(c)) for c in kept_ids]).reshape(-1, 2)
    result = Partition(
        cell_id=kept_ids,
        level=levels[keep][order],
        lat=centres[:, 0],
        lon=centres[:, 1],
        mean_lat=mean_lat,
        mean_lon=mean_lon,
        count=counts[keep][order],
        dropped=int(counts[~keep].sum()),
        t_max=t_max,
        t_min=t_min,
    )
    return result, classes


def partitions(
    lat: np.ndarray,
    lon: np.ndarray,
    *,
    t_max: Sequence[int],
    t_min: int,
    min_level: int = 0,
    max_level: int = MAX_LEVEL,
    leaf_ids: np.ndarray | None = None,
) -> list[Partition]:
    """Several partitions of the same photos (ISNs, GeoEstimation: coarse, middle, fine `t_max`)."""
    ids = leaf_cell_ids(lat, lon) if leaf_ids is None else leaf_ids
    return [
        partition(ids, lat, lon, t_max=t, t_min=t_min, min_level=min_level, max_level=max_level)[0]
        for t in t_max
    ]


def ancestors(fine: Partition, coarse: Partition) -> np.ndarray:
    """For every cell of `fine`, the index of the `coarse` cell containing it (or equal), else -1."""
    found = np.full(len(fine), -1, np.int64)
    for level in np.unique(coarse.level):
        members = np.flatnonzero(coarse.level == level)
        ids = coarse.cell_id[members]
        finer = fine.level >= level
        parents = parent_ids(fine.cell_id[finer], int(level))
        where = np.searchsorted(ids, parents).clip(max=len(ids) - 1)
        hit = ids[where] == parents
        rows = np.flatnonzero(finer)[hit]
        found[rows] = members[where[hit]]
    return found


# -- cells.csv -----------------------------------------------------------------------------------
def write_cells_csv(path: str | os.PathLike, part: Partition) -> Path:
    rows = (
        [i, token, int(level), f"{a:.6f}", f"{b:.6f}", f"{c:.6f}", f"{d:.6f}", int(n)]
        for i, (token, level, a, b, c, d, n) in enumerate(
            zip(
                part.tokens,
                part.level,
                part.lat,
                part.lon,
                part.mean_lat,
                part.mean_lon,
                part.count,
                strict=True,
            )
        )
    )
    return write_csv(path, CELLS_HEADER, rows)


def read_cells_csv(path: str | os.PathLike) -> Partition:
    """A `cells.csv` back into a Partition; any malformed line is an error naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: cells file not found (write one with `mobilenets geolocation partition`)"
        )
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != CELLS_HEADER:
            raise ValueError(f"{path}:1: expected header {','.join(CELLS_HEADER)}, got {header}")
        ids, levels, numbers, counts = [], [], [], []
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(CELLS_HEADER):
                raise ValueError(f"{path}:{line}: expected {len(CELLS_HEADER)} fields, got {len(row)}")
            try:
                number, level, count = int(row[0]), int(row[2]), int(row[7])
                values = [float(v) for v in row[3:7]]
            except ValueError:
                raise ValueError(
                    f"{path}:{line}: class, level and count must be integers, "
                    f"lat/lon/mean_lat/mean_lon numbers: {row}"
                ) from None
            if number != len(ids):
                raise ValueError(f"{path}:{line}: class {number} out of order (expected {len(ids)})")
            token = row[1].strip()
            if not s2cell.token_is_valid(token):
                raise ValueError(f"{path}:{line}: {token!r} is not a valid S2 token")
            cell = s2cell.token_to_cell_id(token)
            if s2cell.cell_id_to_level(cell) != level:
                raise ValueError(
                    f"{path}:{line}: token {token} is a level-{s2cell.cell_id_to_level(cell)} "
                    f"cell, the row says level {level}"
                )
            if not all(math.isfinite(v) for v in values) or abs(values[0]) > 90 or abs(values[2]) > 90:
                raise ValueError(f"{path}:{line}: positions must be finite, latitudes within [-90, 90]")
            ids.append(cell)
            levels.append(level)
            numbers.append(values)
            counts.append(count)
    if not ids:
        raise ValueError(f"{path}: no cells")
    cell_id = np.array(ids, np.uint64)
    if np.any(cell_id[1:] <= cell_id[:-1]):
        raise ValueError(
            f"{path}: cells must be sorted by cell id with no repeats (as `partition` writes them)"
        )
    table = np.array(numbers, np.float64)
    return Partition(cell_id, np.array(levels), *table.T, count=np.array(counts, np.int64))


# -- geometry for maps -------------------------------------------------------------------------
def cell_outline(cell_id: int, points_per_edge: int = 6) -> np.ndarray:
    """(k, 2) lat/lon of a cell's boundary (edges sampled, since S2 edges are curved on a lat/lon map).

    `s2cell` exposes a cell's face and (i, j) but no vertices; the corners are its (i, j) square's,
    mapped back through s2cell's own (private) st->uv->xyz helpers so the projection is the library's.
    """
    from s2cell.s2cell import _s2_face_uv_to_xyz, _s2_st_to_uv

    level = s2cell.cell_id_to_level(cell_id)
    face, i, j = s2cell.s2_cell_id_to_face_ij(cell_id)
    size = 1 << (MAX_LEVEL - level)
    i0, j0 = (i // size) * size, (j // size) * size
    t = np.linspace(0.0, 1.0, points_per_edge, endpoint=False)
    square = np.concatenate(
        [
            np.stack([i0 + t * size, np.full_like(t, j0)], 1),
            np.stack([np.full_like(t, i0 + size), j0 + t * size], 1),
            np.stack([i0 + size - t * size, np.full_like(t, j0 + size)], 1),
            np.stack([np.full_like(t, i0), j0 + size - t * size], 1),
        ]
    )
    xyz = np.array(
        [_s2_face_uv_to_xyz(face, (_s2_st_to_uv(a / 2**30), _s2_st_to_uv(b / 2**30))) for a, b in square],
        np.float64,
    )
    lat, lon = to_lat_lon(xyz / np.linalg.norm(xyz, axis=1, keepdims=True))
    return np.stack([lat, lon], 1)
