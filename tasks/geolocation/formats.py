"""Geotagged photo CSVs, parsed: the layouts people have, read into plain arrays (no images).

Two CSV forms are recognised from the header (column names can be overridden):

- MP-16 / Im2GPS3k / YFCC4k: `IMG_ID,LAT,LON[,...]`, `IMG_ID` the image path under the image root;
- OSV-5M `train.csv` / `test.csv`: `id,latitude,longitude,...,country,...,region,...,city,...`, images
  `images/{train,test}/<id>.jpg` (point `*_images` at `images/train`; the file is `<id>.jpg`).

A bad row (latitude outside [-90, 90], longitude outside [-180, 180], NaN, a missing column, a duplicate
id, an id that would name a file outside the image root (absolute, `..`), bytes that are not UTF-8) is a
`PhotoCSVError` naming the file and line, or with `skip_bad_rows` is skipped and counted.
`photo_target` is the target every geolocation dataset yields beside its image.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tasks.common.io import unsafe_relative_name

FORMATS = {  # kind: (id, lat, lon) column names, and how an id becomes a file under the image root
    "mp16": (("IMG_ID", "LAT", "LON"), "{id}"),
    "osv5m": (("id", "latitude", "longitude"), "{id}.jpg"),
}
# Columns kept beside id/lat/lon when present (the per-country report reads `country`).
EXTRA_COLUMNS = ("country", "region", "sub-region", "city")
CHUNK_ROWS = 65_536  # rows parsed into Python objects before they are packed into arrays


class PhotoCSVError(ValueError):
    """A photo CSV that does not parse; the message names the file and line."""


class StringColumn(Sequence):
    """Strings packed into one `bytes` object and an offsets array: a 5 M-row id column costs its
    characters plus 8 bytes a row, instead of a Python object each (~60 bytes), and loader workers
    forked from the process do not copy it page by page as they touch reference counts."""

    def __init__(self, blob: bytes, offsets: np.ndarray) -> None:
        self.blob, self.offsets = blob, offsets

    @classmethod
    def of(cls, values: Sequence[str]) -> StringColumn:
        encoded = [value.encode("utf-8") for value in values]
        offsets = np.zeros(len(encoded) + 1, np.int64)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        return cls(b"".join(encoded), offsets)

    @classmethod
    def concat(cls, parts: Sequence[StringColumn]) -> StringColumn:
        offsets, shift = [np.zeros(1, np.int64)], 0
        for part in parts:
            offsets.append(part.offsets[1:] + shift)
            shift += len(part.blob)
        return cls(b"".join(part.blob for part in parts), np.concatenate(offsets))

    def take(self, keep: np.ndarray) -> StringColumn:
        return StringColumn.of([self[int(i)] for i in np.flatnonzero(keep)])

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"row {index} out of range for {len(self)} rows")
        return self.blob[self.offsets[index] : self.offsets[index + 1]].decode("utf-8")

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"StringColumn({len(self)} rows)"


class CategoryColumn(Sequence):
    """A column of few distinct strings (country, region, city): a code per row and the values once."""

    def __init__(self, codes: np.ndarray, values: list[str]) -> None:
        self.codes, self.values = codes, values

    def take(self, keep: np.ndarray) -> CategoryColumn:
        return CategoryColumn(self.codes[keep], self.values)

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self.values[c] for c in self.codes[index]]
        return self.values[self.codes[index]]

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"CategoryColumn({len(self)} rows, {len(self.values)} values)"


@dataclass
class PhotoTable:
    """The rows of one photo CSV: ids, positions, the line each came from, and the extra columns kept
    (compact columns, not lists of Python strings: a table of millions of rows stays small)."""

    path: Path
    kind: str
    ids: Sequence[str]
    lat: np.ndarray
    lon: np.ndarray
    lines: np.ndarray
    extra: dict[str, Sequence[str]] = field(default_factory=dict)
    skipped: int = 0

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def countries(self) -> Sequence[str] | None:
        return self.extra.get("country")


def detect_kind(header: Sequence[str]) -> str | None:
    names = set(header)
    for kind, (columns, _) in FORMATS.items():
        if set(columns) <= names:
            return kind
    return None


def _columns(path: Path, header: list[str], given: tuple[str | None, ...]) -> tuple[str | None, list[str]]:
    """(kind, [id, lat, lon] column names) from the header, or an error naming what is missing."""
    kind = detect_kind(header)
    defaults = FORMATS[kind][0] if kind else (None, None, None)
    columns = [name or default for name, default in zip(given, defaults, strict=True)]
    missing = [name for name in columns if name is None or name not in header]
    if missing:
        known = "; ".join(f"{','.join(c)} ({k})" for k, (c, _) in FORMATS.items())
        raise PhotoCSVError(
            f"{path}:1: header {','.join(header)} lacks "
            f"{', '.join(repr(m) for m in missing if m) or 'the id/lat/lon columns'}; expected {known}, "
            "or name them with id_column / lat_column / lon_column"
        )
    return kind, columns


class _Rows:
    """The accepted rows of one file, parsed a chunk at a time into arrays."""

    def __init__(self, kept: list[str]) -> None:
        self.kept = kept
        self.ids: list[StringColumn] = []
        self.numbers: list[np.ndarray] = []  # (rows, 3): lat, lon, line
        self.hashes: list[np.ndarray] = []
        self.codes: dict[str, list[np.ndarray]] = {name: [] for name in kept}
        self.values: dict[str, dict[str, int]] = {name: {} for name in kept}
        self._clear()

    def _clear(self) -> None:
        self.pending_ids: list[str] = []
        self.pending: list[tuple[float, float, int]] = []
        self.pending_extra: dict[str, list[int]] = {name: [] for name in self.kept}

    def add(self, key: str, lat: float, lon: float, line: int, extra: list[str]) -> None:
        self.pending_ids.append(key)
        self.pending.append((lat, lon, line))
        for name, value in zip(self.kept, extra, strict=True):
            codes = self.values[name]
            self.pending_extra[name].append(codes.setdefault(value, len(codes)))
        if len(self.pending) >= CHUNK_ROWS:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        self.ids.append(StringColumn.of(self.pending_ids))
        self.hashes.append(np.array([hash(key) for key in self.pending_ids], np.int64))
        self.numbers.append(np.array(self.pending, np.float64).reshape(-1, 3))
        for name in self.kept:
            self.codes[name].append(np.array(self.pending_extra[name], np.int32))
        self._clear()

    def repeats(self) -> np.ndarray:
        """For each row, the earlier row holding the same id (-1 for none). Sorting 64-bit hashes finds
        the candidates without a dict of millions of strings; equal hashes are compared as strings."""
        self.flush()
        hashes = np.concatenate(self.hashes) if self.hashes else np.zeros(0, np.int64)
        first = np.full(len(hashes), -1, np.int64)
        order = np.argsort(hashes, kind="stable")  # equal hashes stay in row order
        sorted_hashes = hashes[order]
        same = np.flatnonzero(sorted_hashes[1:] == sorted_hashes[:-1]) + 1
        if len(same):
            ids = StringColumn.concat(self.ids)
            group: list[int] = []
            for position in same:
                if not group or sorted_hashes[position] != hashes[group[0]]:
                    group = [int(order[position - 1])]
                row = int(order[position])
                first[row] = next((g for g in group if ids[g] == ids[row]), -1)
                group.append(row)
        return first

    def table(self, path: Path, kind: str | None, skipped: int, *, skip_duplicates: bool,
              columns: list[str], before: int | None = None) -> PhotoTable:  # fmt: skip
        """The table of the rows so far; a repeated id is an error at its line (unless skipped).
        `before`: only raise for a repeat on an earlier line (the caller has a later error).

        Ends the reading: each kind of chunk is let go as soon as it is joined (hashes once the repeats
        are found, numbers once split into columns), so the peak is the table plus one joined column,
        not the table beside a full copy of its chunks (5 M rows: ~280 MB less)."""
        first = self.repeats()
        self.hashes = []
        lat, lon, lines = (
            np.concatenate([np.zeros(0), *(part[:, k] for part in self.numbers)]) for k in range(3)
        )
        self.numbers = []
        lines = lines.astype(np.int64)
        ids = StringColumn.concat(self.ids)
        self.ids = []
        repeated = np.flatnonzero(first >= 0)
        if len(repeated) and not skip_duplicates:
            row = int(repeated[0])
            if before is None or lines[row] < before:
                raise PhotoCSVError(
                    f"{path}:{lines[row]}: duplicate {columns[0]} {ids[row]!r} "
                    f"(first on line {lines[first[row]]})"
                )
        extra = {
            name: CategoryColumn(np.concatenate([np.zeros(0, np.int32), *self.codes[name]]),
                                 list(self.values[name]))
            for name in self.kept
        }  # fmt: skip
        if len(repeated):
            keep = first < 0
            ids, lat, lon, lines = ids.take(keep), lat[keep], lon[keep], lines[keep]
            extra = {name: column.take(keep) for name, column in extra.items()}
            skipped += len(repeated)
        return PhotoTable(path, kind or "custom", ids, lat, lon, lines, extra, skipped)


def _problem(row: list[str], at: list[int], columns: list[str], header: list[str], needed: list[int]):
    """(key, lat, lon, None) of a good row, or (None, None, None, what is wrong with it)."""
    lacking = [header[i] for i in needed if i >= len(row)]
    if lacking:
        fields = f"row has {len(row)} fields, header {len(header)}"
        return None, None, None, f"missing column {lacking[0]} ({fields})"
    key = row[at[0]].strip()
    if not key:
        return None, None, None, f"empty {columns[0]}"
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return None, None, None, f"{columns[0]} is not UTF-8 text"
    if unsafe_relative_name(key):  # the id names the image file: it must stay under the image root
        return None, None, None, f"{columns[0]} {key!r:.80} is absolute or has '..': outside the image root"
    try:
        lat, lon = float(row[at[1]]), float(row[at[2]])
    except ValueError:
        return None, None, None, f"{columns[1]}/{columns[2]} not numbers: {row[at[1]]!r}, {row[at[2]]!r}"
    if not (math.isfinite(lat) and math.isfinite(lon)):
        return None, None, None, f"{columns[1]}/{columns[2]} not finite: {lat}, {lon}"
    if not -90 <= lat <= 90:
        return None, None, None, f"{columns[1]} {lat} outside [-90, 90]"
    if not -180 <= lon <= 180:
        return None, None, None, f"{columns[2]} {lon} outside [-180, 180]"
    return key, lat, lon, None


def read_photo_csv(
    path: str | os.PathLike,
    *,
    id_column: str | None = None,
    lat_column: str | None = None,
    lon_column: str | None = None,
    skip_bad_rows: bool = False,
    extra_columns: Sequence[str] = EXTRA_COLUMNS,
) -> PhotoTable:
    """Read an MP-16-style or OSV-5M-style CSV (recognised from the header; names can be given).

    Streams the file a chunk of rows at a time into compact columns, so memory grows with the bytes
    of the ids and a few numbers a row, not with Python objects per field (5 M rows: see
    `benchmarks/memory_geolocation.py`). Bytes that are not UTF-8 are read as such and reported
    where they matter (an id, a kept column); they never stop the read with a decoder traceback.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: photo CSV not found")
    line = 1
    try:
        with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as handle:
            reader = csv.reader(handle)
            header = [h.strip() for h in next(reader, [])]
            kind, columns = _columns(path, header, (id_column, lat_column, lon_column))
            at = [header.index(name) for name in columns]
            kept = [name for name in dict.fromkeys(extra_columns) if name in header and name not in columns]
            kept_at = [header.index(name) for name in kept]
            rows = _Rows(kept)
            skipped = 0
            for row in reader:
                line = reader.line_num
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                key, lat, lon, problem = _problem(row, at, columns, header, at + kept_at)
                extra = [] if problem else [row[i].strip() for i in kept_at]
                if problem is None and any(not _is_text(value) for value in extra):
                    name = next(n for n, v in zip(kept, extra, strict=True) if not _is_text(v))
                    problem = f"{name} is not UTF-8 text"
                if problem is not None:
                    if not skip_bad_rows:
                        # a repeated id on an earlier line is the first error of the file
                        rows.table(path, kind, 0, skip_duplicates=False, columns=columns, before=line)
                        raise PhotoCSVError(f"{path}:{line}: {problem}")
                    skipped += 1
                    continue
                rows.add(key, lat, lon, line, extra)
    except csv.Error as err:
        raise PhotoCSVError(f"{path}:{line + 1}: not a CSV row ({err})") from None
    except UnicodeEncodeError as err:  # a header name that is not UTF-8, echoed in a message
        raise PhotoCSVError(f"{path}:1: header is not UTF-8 text ({err.reason})") from None
    rows.flush()
    table = rows.table(path, kind, skipped, skip_duplicates=skip_bad_rows, columns=columns)
    if not len(table):
        raise PhotoCSVError(
            f"{path}: no usable rows" + (f" ({table.skipped} bad rows skipped)" if table.skipped else "")
        )
    return table


def _is_text(value: str) -> bool:
    """False for a field holding bytes that were not UTF-8 (read as lone surrogates)."""
    return value.isascii() or not any("\udc80" <= ch <= "\udcff" for ch in value)


def image_pattern_for(table: PhotoTable, pattern: str | None) -> str:
    if pattern is not None:
        if "{id}" not in pattern:
            raise ValueError(f"image_pattern must contain {{id}}, got {pattern!r}")
        return pattern
    return FORMATS.get(table.kind, FORMATS["mp16"])[1]


def photo_target(labels: np.ndarray, lat: float, lon: float, key: str, country: str) -> dict:
    """The target beside every geolocation image: classes per partition, the position, key, country."""
    return {
        "cells": torch.from_numpy(np.asarray(labels, np.int64)),
        "coords": torch.tensor([lat, lon], dtype=torch.float64),
        "key": key,
        "country": country,
    }
