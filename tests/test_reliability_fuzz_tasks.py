"""Garbage in, clear error out (issue 16), for the geolocation photo CSVs: property-based tests of the
MP-16 / Im2GPS3k / OSV-5M layouts and custom column names. (CelebA's files are not fuzzed yet: a draft
found crashes the parsers do not handle, see the closing note of 2026-12-02.)

As in `test_reliability_fuzz.py`: inputs are near-valid files with a few lines broken (a value, a field
count, the header, quoting, encoding, a repeated record), and each either loads, with the table
consistent, or raises the suite's own error (a `ValueError` subclass) naming the file; never a
KeyError, IndexError, TypeError, a decoder's traceback or a crash from deep inside. Sizes are bounded
(a handful of rows, one over-long field of ~140 kB at most), so the module needs a few MB. `SEEN`
counts the inputs each parser received (`pytest -s` prints it).
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_reliability_fuzz import FUZZ, assert_suite_error

SEEN: Counter = Counter()


@pytest.fixture(scope="module")
def workdir():
    path = Path(tempfile.mkdtemp(prefix="fuzz-tasks-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)
    print("\nreliability fuzz (tasks): generated inputs per parser:", dict(SEEN))


def _clean(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def assert_names_line(err: BaseException, path: Path) -> None:
    """The suite's error, naming the file, and the line wherever one row is to blame."""
    assert_suite_error(err, path)
    message = str(err)
    whole_file = ("no usable rows", "says ", "no entry in", "is not in", "no images of split")
    if not any(words in message for words in whole_file):
        assert re.search(re.escape(str(path)) + r":\d+", message), f"no line number: {message}"


# -- text-level mutations shared by both formats ---------------------------------------------------
BAD_TOKENS = ["", " ", "x", "nan", "inf", "-inf", "1e400", "91", "-90.0001", "180.5", "\u00b2", "\u0661",
              "9" * 40, '"', 'a"b', "\x00", "1;2", "\u00e9", "..", "../up.jpg", "/abs.jpg", "C:\\d.jpg",
              "0", "1", "-1", "2", "+1", "1.0", "-0"]  # fmt: skip


@st.composite
def mutated_lines(draw, lines: list[list[str]], *, protect_header: bool = False):
    """0-4 mutations of a tokenised file: a token replaced, a field dropped or added, a line removed,
    duplicated or blanked, two lines swapped."""
    lines = [list(line) for line in lines]
    first = 1 if protect_header else 0
    for _ in range(draw(st.integers(0, 4))):
        if len(lines) <= first:
            break
        at = draw(st.integers(first, len(lines) - 1))
        op = draw(st.sampled_from(["token", "token", "drop field", "add field", "drop line",
                                   "duplicate line", "blank line", "swap"]))  # fmt: skip
        if op == "token" and lines[at]:
            lines[at][draw(st.integers(0, len(lines[at]) - 1))] = draw(st.sampled_from(BAD_TOKENS))
        elif op == "drop field" and lines[at]:
            lines[at].pop(draw(st.integers(0, len(lines[at]) - 1)))
        elif op == "add field":
            lines[at].append(draw(st.sampled_from(BAD_TOKENS)))
        elif op == "drop line":
            lines.pop(at)
        elif op == "duplicate line":
            lines.insert(at, list(lines[at]))
        elif op == "blank line":
            lines.insert(at, [])
        elif op == "swap":
            other = draw(st.integers(first, len(lines) - 1))
            lines[at], lines[other] = lines[other], lines[at]
    return lines


@st.composite
def encoded(draw, text: str) -> bytes:
    """UTF-8 (with or without a BOM, LF or CRLF), Latin-1, a stray invalid byte, or an over-long field."""
    if draw(st.booleans()):
        text = text.replace("\n", "\r\n")
    how = draw(st.sampled_from(["utf-8", "utf-8", "utf-8", "bom", "latin-1", "invalid byte", "long field"]))
    if how == "bom":
        return b"\xef\xbb\xbf" + text.encode("utf-8")
    if how == "latin-1":
        return text.encode("latin-1", "replace")
    data = text.encode("utf-8")
    if how == "invalid byte" and data:
        at = draw(st.integers(0, len(data) - 1))
        return data[:at] + b"\xff\xfe" + data[at:]
    if how == "long field":  # over csv's 128 kB field limit
        return data + b"long.jpg,1,2," + b"7" * 140_000 + b"\n"
    return data


# -- geolocation photo CSVs ------------------------------------------------------------------------
OSV5M_HEADER = ["id", "latitude", "longitude", "thumb_original_url", "country", "sequence", "captured_at",
                "lon_bin", "lat_bin", "cell", "region", "sub-region", "city", "land_cover"]  # fmt: skip
IM2GPS_HEADER = ["IMG_ID", "AUTHOR", "LAT", "LON", "S3_Label", "S16_Label", "S365_Label", "Prob_indoor"]
LAYOUTS = {  # header, a row maker, the column names to pass (custom layouts only)
    "mp16": (["IMG_ID", "LAT", "LON"], lambda i, lat, lon: [f"{i:02d}/a1/{1000 + i}.jpg", lat, lon], {}),
    "im2gps3k": (IM2GPS_HEADER, lambda i, lat, lon: [f"{i}_o.jpg", "ann", lat, lon, "1", "2", "3", "0.1"],
                 {}),
    "osv5m": (OSV5M_HEADER, lambda i, lat, lon: [str(99000 + i), lat, lon, "http://x", ["FR", "JP"][i % 2],
                                                 "s", "1", "2", "3", "c", "R", "0", "Paris", "5"], {}),
    "custom": (["photo", "y", "x"], lambda i, lat, lon: [f"p{i}.jpg", lat, lon],
               {"id_column": "photo", "lat_column": "y", "lon_column": "x"}),
}  # fmt: skip


@st.composite
def photo_csv(draw):
    """(layout, bytes, column options, skip_bad_rows): a valid CSV of one layout, then mutations."""
    layout = draw(st.sampled_from(sorted(LAYOUTS)))
    header, row, options = LAYOUTS[layout]
    coordinate = st.floats(-90, 90, allow_nan=False).map(lambda v: f"{v:.5f}")
    lines = [list(header)]
    for i in range(draw(st.integers(1, 6))):
        lines.append(row(i, draw(coordinate), draw(coordinate)))
    if draw(st.integers(0, 5)) == 0:  # the header itself broken: a column renamed, dropped or doubled
        op = draw(st.sampled_from(["rename", "drop", "double", "empty"]))
        at = draw(st.integers(0, len(header) - 1))
        if op == "rename":
            lines[0][at] = draw(st.sampled_from(["lat", "Id", "", "LAT ", "\u00e9"]))
        elif op == "drop":
            lines[0].pop(at)
        elif op == "double":
            lines[0].insert(at, lines[0][at])
        else:
            lines[0] = []
    lines = draw(mutated_lines(lines, protect_header=True))
    text = "\n".join(",".join(line) for line in lines) + draw(st.sampled_from(["", "\n"]))
    if draw(st.integers(0, 7)) == 0:
        text = draw(st.sampled_from(['"unterminated,1,2\n', "\x00\x00\n", ",,,\n", "IMG_ID\n", ""])) + text
    return layout, draw(encoded(text)), options, draw(st.booleans())


@FUZZ
@given(case=photo_csv())
def test_geolocation_photo_csvs_load_or_name_the_file_and_line(workdir, case):
    from tasks.geolocation.data import GeoImages, read_photo_csv

    layout, data, options, skip = case
    SEEN[f"geolocation CSV ({layout})"] += 1
    path = workdir / "photos.csv"
    path.write_bytes(data)
    try:
        table = read_photo_csv(path, skip_bad_rows=skip, **options)
    except Exception as err:  # noqa: BLE001 - the assertion is on its type and message
        assert_names_line(err, path)
        return
    SEEN[f"geolocation CSV ({layout}): loaded"] += 1
    n = len(table)
    assert n >= 1 and len(table.lat) == len(table.lon) == len(table.lines) == n
    assert np.all(np.abs(table.lat) <= 90) and np.all(np.abs(table.lon) <= 180)
    assert len(set(table.ids)) == n and all(key and ".." not in key.split("/") for key in table.ids)
    assert np.all(np.diff(table.lines) > 0)
    for column in table.extra.values():
        assert len(column) == n and all(isinstance(value, str) for value in column)
    root = _clean(workdir / "geo-images")
    images = GeoImages(table, root)  # builds without touching the (missing) images
    assert all(str(images.path(i)).startswith(str(root)) for i in range(n))


