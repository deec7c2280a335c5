"""Garbage in, clear error out (issue 16), for the geolocation photo CSVs and the face-attribute label
files: property-based tests of the MP-16 / Im2GPS3k / OSV-5M layouts and custom column names, of CelebA's
official text files, Kaggle's CSV copy and any attribute CSV, and of image names that would escape the
image folder, across every parser that reads image paths from a file.

As in `test_reliability_fuzz.py`: inputs are near-valid files with a few lines broken (a value, a field
count, the header, quoting, encoding, a repeated record), and each either loads, with the table
consistent, or raises the suite's own error (a `ValueError` subclass) naming the file and the line; never
a KeyError, IndexError, TypeError, a decoder's or `csv`'s traceback or a crash from deep inside. Sizes are
bounded (a handful of rows, one over-long field of ~140 kB at most), so the module needs a few MB. The
inputs each parser saw are counted (`pytest -s -k fuzz` prints them).
"""

from __future__ import annotations

import json
from functools import partial

import numpy as np
import pytest
from helpers.fuzz import (  # noqa: F401 - fuzz_workdir: the `workdir` fixture
    COUNTS,
    FUZZ,
    assert_names_line,
    clean_folder,
    encoded,
    fuzz_workdir,
    mutated_lines,
)
from hypothesis import given
from hypothesis import strategies as st

from tasks.common.io import unsafe_relative_name

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
def photo_csv(draw, layout: str):
    """(bytes, column options, skip_bad_rows): a valid CSV of `layout`, then mutations."""
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
    return draw(encoded(text)), options, draw(st.booleans())


@pytest.mark.parametrize("layout", sorted(LAYOUTS))  # one run each: every layout reaches its happy path
@FUZZ
@given(case=st.data())
def test_geolocation_photo_csvs_load_or_name_the_file_and_line(workdir, layout, case):
    from tasks.geolocation.data import GeoImages, read_photo_csv

    data, options, skip = case.draw(photo_csv(layout), label="file")
    tally = COUNTS.saw(f"geolocation CSV ({layout})")
    path = workdir / "photos.csv"
    path.write_bytes(data)
    try:
        table = read_photo_csv(path, skip_bad_rows=skip, **options)
    except Exception as err:  # noqa: BLE001 - the assertion is on its type and message
        assert_names_line(err, path)
        tally["refused"] += 1
        return
    tally["loaded"] += 1
    n = len(table)
    assert n >= 1 and len(table.lat) == len(table.lon) == len(table.lines) == n
    assert np.all(np.abs(table.lat) <= 90) and np.all(np.abs(table.lon) <= 180)
    assert len(set(table.ids)) == n and not any(unsafe_relative_name(key) for key in table.ids)
    assert np.all(np.diff(table.lines) > 0)
    for column in table.extra.values():
        assert len(column) == n and all(isinstance(value, str) for value in column)
    if table.skipped:
        tally["loaded with rows skipped"] += 1
    root = clean_folder(workdir / "geo-images")
    images = GeoImages(table, root)  # builds without touching the (missing) images
    assert all(images.path(i).resolve().is_relative_to(root.resolve()) for i in range(n))


# -- CelebA files and attribute CSVs ---------------------------------------------------------------
ATTRIBUTE_NAMES = ["Smiling", "Male", "Bald", "Young"]
CELEBA_FILES = {  # layout: (attribute file, partition file)
    "official": ("list_attr_celeba.txt", "list_eval_partition.txt"),
    "kaggle": ("list_attr_celeba.csv", "list_eval_partition.csv"),
    "csv": ("labels.csv", None),
}


def _celeba_text(lines: list[list[str]]) -> str:
    """CelebA's own spacing: the count, the names with a trailing space, values right-aligned in 3."""
    rendered = [" ".join(line) + " " if number == 1 else "".join([line[0], *(f"{t:>3}" for t in line[1:])])
                if line else "" for number, line in enumerate(lines)]  # fmt: skip
    return "\n".join(rendered) + "\n"


@st.composite
def celeba_files(draw, layout: str):
    """{file name: bytes}: CelebA's attribute and partition files in the official (text) or Kaggle (CSV)
    layout, or one attribute CSV of 0/1 or -1/1 values; valid (every split has images), then each file
    mutated line by line and encoded (Latin-1, a stray byte, a BOM, CRLF, a field over csv's limit)."""
    names = draw(st.lists(st.sampled_from(ATTRIBUTE_NAMES), min_size=1, max_size=4, unique=True))
    count = draw(st.integers(1 if layout == "csv" else 3, 6))
    folder = draw(st.sampled_from(["", "faces/"])) if layout == "csv" else ""
    images = [f"{folder}{i + 1:06d}.jpg" for i in range(count)]
    negative = "0" if layout == "csv" and draw(st.booleans()) else "-1"
    rows = [[image, *(draw(st.sampled_from([negative, "1"])) for _ in names)] for image in images]
    splits = draw(st.permutations(["0", "1", "2"])) + [str(draw(st.integers(0, 2))) for _ in images[3:]]
    partition = [[image, split] for image, split in zip(images, splits, strict=False)]
    attributes_name, partition_name = CELEBA_FILES[layout]
    if layout == "official":
        texts = {attributes_name: _celeba_text(draw(mutated_lines([[str(count)], names, *rows]))),
                 partition_name: "\n".join(" ".join(line) for line in draw(mutated_lines(partition))) + "\n"}
    else:
        first = "image" if layout == "csv" else "image_id"
        texts = {attributes_name: [[first, *names], *rows]}
        if partition_name:
            texts[partition_name] = [["image_id", "partition"], *partition]
        texts = {file: "\n".join(",".join(line) for line in draw(mutated_lines(lines))) + "\n"
                 for file, lines in texts.items()}  # fmt: skip
    return {file: draw(encoded(text)) for file, text in texts.items()}


def _check_attribute_table(table, images_seen: set) -> None:
    n = len(table)
    assert n >= 1 and table.values.shape == (n, len(table.attributes)) and table.values.dtype == np.uint8
    assert set(np.unique(table.values)) <= {0, 1}
    assert len(set(table.images)) == n and not any(unsafe_relative_name(image) for image in table.images)
    assert np.all(np.diff(table.lines) > 0) and len(table.lines) == n
    assert not images_seen & set(table.images), "an image in two splits"
    images_seen |= set(table.images)


@pytest.mark.parametrize("layout", sorted(CELEBA_FILES))
@FUZZ
@given(case=st.data())
def test_celeba_and_attribute_files_load_or_name_the_file_and_line(workdir, layout, case):
    from tasks.face_attributes.formats import (
        find_celeba,
        read_attribute_csv,
        read_attribute_names,
        read_celeba_split,
    )

    files = case.draw(celeba_files(layout), label="files")
    tally = COUNTS.saw(f"face attributes ({layout})")
    root = clean_folder(workdir / "celeba")
    for name, data in files.items():
        (root / name).write_bytes(data)
    paths = [root / name for name in files]
    if layout == "csv":
        loads = {"rows": partial(read_attribute_csv, paths[0])}
    else:
        celeba = find_celeba(root)
        loads = {split: partial(read_celeba_split, celeba, split) for split in ("train", "valid", "test")}
    images_seen: set = set()
    for split, load in loads.items():
        try:
            table = load()
        except Exception as err:  # noqa: BLE001 - the assertion is on its type and message
            assert_names_line(err, *paths)
            tally[f"{split} refused"] += 1
            continue
        tally[f"{split} loaded"] += 1
        _check_attribute_table(table, images_seen)
        assert read_attribute_names(paths[0]) == table.attributes  # the cheap header read agrees


# -- image names outside the image folder, refused by every parser that reads them ----------------
unsafe_names = st.one_of(
    st.tuples(
        st.sampled_from(["../", "..\\", "/", "\\", "C:", "C:\\", "//server/share/", "faces/../../",
                         "a\\..\\..\\"]),
        st.sampled_from(["x.jpg", "faces/y.png", "..", ""]),
    ).map("".join),
    st.sampled_from(["..", "a\x00.jpg", "faces/\x00"]),
)


def _photo_csv(path, name):
    path.write_text(f"IMG_ID,LAT,LON\nsafe/0.jpg,1.5,2.5\n{name},3.5,4.5\n")


def _attribute_csv(path, name):
    path.write_text(f"image,Smiling\nsafe/0.jpg,1\n{name},0\n")


def _celeba_txt(path, name):
    path.write_text(f"2\nSmiling Male \nsafe.jpg  1 -1\n{name} -1  1\n")


def _partition_txt(path, name):
    path.write_text(f"safe.jpg 0\n{name} 1\n")


def _coco_json(path, name):
    images = [{"id": 1, "file_name": "safe/0.jpg", "width": 8, "height": 8},
              {"id": 2, "file_name": name, "width": 8, "height": 8}]  # fmt: skip
    path.write_text(json.dumps({"images": images, "annotations": [], "categories": [{"id": 1, "name": "a"}]}))


def _coco_images(dataset, path):
    return dataset(path.parent, path, train=False)


def _parsers():
    """name: (file name, writer of a file whose second record names `name`, loader, what to find in
    the error: the line or record of that name)."""
    from tasks.detection.data import CocoDetection
    from tasks.face_attributes.formats import read_attribute_csv, read_celeba_attributes, read_partition
    from tasks.geolocation.formats import read_photo_csv

    return {
        "photo CSV": ("photos.csv", _photo_csv, read_photo_csv, ":3:"),
        "attribute CSV": ("labels.csv", _attribute_csv, read_attribute_csv, ":3:"),
        "CelebA attributes": ("list_attr_celeba.txt", _celeba_txt, read_celeba_attributes, ":4:"),
        "CelebA partition": ("list_eval_partition.txt", _partition_txt, read_partition, ":2:"),
        "COCO JSON": ("instances.json", _coco_json, partial(_coco_images, CocoDetection), "images[1]"),
    }


@pytest.mark.parametrize("parser", ["photo CSV", "attribute CSV", "CelebA attributes", "CelebA partition",
                                    "COCO JSON"])  # fmt: skip
@FUZZ
@given(name=unsafe_names)
def test_image_names_outside_the_image_folder_are_refused_at_their_record(workdir, parser, name):
    file_name, write, load, where = _parsers()[parser]
    tally = COUNTS.saw(f"unsafe image names ({parser})")
    assert unsafe_relative_name(name)
    folder = clean_folder(workdir / "unsafe")
    path = folder / file_name
    write(path, "safe/1.jpg" if parser != "CelebA attributes" else "safe1.jpg")
    load(path)  # the same file with a harmless name loads: the refusal below is the name's doing
    write(path, name)
    try:
        load(path)
    except ValueError as err:
        assert str(path) in str(err) and where in str(err), err
        tally["refused"] += 1
        return
    raise AssertionError(f"{parser} accepted the image name {name!r}")
