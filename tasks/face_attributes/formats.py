"""Face-attribute label files, parsed (REFERENCE §8): CelebA's official text files and Kaggle's CSV copy,
any attribute CSV, and where each CelebA layout keeps them.

* CelebA official: `list_attr_celeba.txt` (line 1 the image count; line 2 the attribute names, with a
  trailing space; then `000001.jpg -1  1 ...`, values -1/1 right-aligned so the spacing is ragged),
  `list_eval_partition.txt` (`000001.jpg 0`, 0/1/2 = train/valid/test), images in `img_align_celeba/`.
  The Google Drive copy's `Anno/`, `Eval/` and `Img/` sub-folders are found too.
* CelebA on Kaggle: `list_attr_celeba.csv` (`image_id,<names>`, -1/1), `list_eval_partition.csv`
  (`image_id,partition`), images under `img_align_celeba/img_align_celeba/`.
* Any attribute CSV: `image,<attr>,...` with 0/1 or -1/1 values (one encoding per file).

Attribute names always come from the file. A row with the wrong number of values, an unknown value, a
duplicated image, an image name that is not a path inside the image folder (absolute, `..`, empty), bytes
that are not UTF-8, a line `csv` cannot split, or a partition file that disagrees with the attribute file
is an `AttributeFormatError` naming the file and line; a file without rows, or a split without images, is
one naming the file. Files are decoded whole (CelebA's largest is 26 MB), so a bad byte is placed on its
line instead of surfacing as a decoder traceback halfway through a read.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.common.io import unsafe_relative_name

CELEBA_SPLITS = {"train": 0, "valid": 1, "val": 1, "test": 2}


class AttributeFormatError(ValueError):
    """A label or partition file that does not parse; the message names the file and line."""


@dataclass
class AttributeTable:
    """An attribute file, parsed: image names in file order, 0/1 values, and each row's line number."""

    path: Path
    attributes: list[str]
    images: list[str]
    values: np.ndarray  # (images, attributes) uint8 0/1
    lines: list[int]

    def __len__(self) -> int:
        return len(self.images)

    def rows(self, indices: Sequence[int]) -> AttributeTable:
        """The table of the rows at `indices` (one split of a CelebA file)."""
        return AttributeTable(self.path, self.attributes, [self.images[i] for i in indices],
                              self.values[list(indices)], [self.lines[i] for i in indices])  # fmt: skip


def _decode(path: Path, data: bytes, first_line: int = 1) -> str:
    """`data` as UTF-8 text (a BOM dropped); bytes that are not UTF-8 are an error at their line."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = first_line + data.count(b"\n", 0, err.start)
        raise AttributeFormatError(
            f"{path}:{line}: bytes that are not UTF-8 text ({err.reason} at byte {err.start}); "
            "save the file as UTF-8"
        ) from None


def _read_text(path: Path) -> str:
    return _decode(path, path.read_bytes())


def _csv_rows(path: Path, text: str | io.TextIOBase):
    """(line, fields) of each CSV record of `text` (a string, or a file opened with `newline=""`); a
    record `csv` cannot split (a field over its 128 kB limit) is an error at its line."""
    reader = csv.reader(io.StringIO(text, newline="") if isinstance(text, str) else text)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            raise AttributeFormatError(f"{path}:{reader.line_num}: not a CSV record ({err})") from None
        yield reader.line_num, row


def _check_image(path: Path, line: int, image: str) -> str:
    if unsafe_relative_name(image):
        raise AttributeFormatError(
            f"{path}:{line}: image name {image!r:.80} must be a path relative to the image folder, "
            "without '..'"
        )
    return image


def _check_names(path: Path, line: int, names: Sequence[str]) -> list[str]:
    names = [name.strip() for name in names]
    if not names or any(not name for name in names):
        raise AttributeFormatError(f"{path}:{line}: expected attribute names, got {' '.join(names)!r}")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise AttributeFormatError(f"{path}:{line}: attribute {name!r} is named twice")
        seen.add(name)
    return names


class _Values:
    """Converts one file's label strings to 0/1: -1/1 (CelebA), 0/1, never both in one file."""

    def __init__(self, path: Path, allowed: tuple[str, ...]) -> None:
        self.path, self.allowed = path, allowed
        self.negative: str | None = "-1" if allowed == ("-1", "1") else None

    def row(self, line: int, image: str, names: Sequence[str], raw: Sequence[str]) -> list[int]:
        out = []
        for name, value in zip(names, raw, strict=True):
            value = value.strip()
            if value == "1":
                out.append(1)
                continue
            if value in ("-1", "0") and value in self.allowed:
                if self.negative is None:
                    self.negative = value
                elif value != self.negative:
                    raise AttributeFormatError(
                        f"{self.path}:{line}: {image} has {value} for {name}, but the file's negatives are "
                        f"{self.negative} (use 0/1 or -1/1 throughout)"
                    )
                out.append(0)
                continue
            raise AttributeFormatError(
                f"{self.path}:{line}: {image} has unknown value {value!r} for {name} "
                f"(expected {' or '.join(self.allowed)})"
            )
        return out


def _table(path: Path, names: list[str], rows: list[tuple[int, str, list[int]]]) -> AttributeTable:
    if not rows:
        raise AttributeFormatError(f"{path}: lists no images (only a header)")
    seen: dict[str, int] = {}
    for line, image, _ in rows:
        if image in seen:
            first = seen[image]
            raise AttributeFormatError(f"{path}:{line}: {image} is listed twice (first on line {first})")
        seen[image] = line
    values = np.array([v for _, _, v in rows], dtype=np.uint8).reshape(len(rows), len(names))
    return AttributeTable(path, names, [r[1] for r in rows], values, [r[0] for r in rows])


def read_celeba_attributes(path: str | os.PathLike) -> AttributeTable:
    """`list_attr_celeba.txt` (also CelebAMask-HQ's `CelebAMask-HQ-attribute-anno.txt`)."""
    path = Path(path)
    lines = _read_text(path).split("\n")  # not splitlines(): form feeds and the like do not end a line here
    if len(lines) < 2:
        raise AttributeFormatError(f"{path}: want the image count on line 1 and the names on line 2")
    if not (count_text := lines[0].strip()).isascii() or not count_text.isdigit():
        raise AttributeFormatError(f"{path}:1: expected the number of images, got {lines[0]!r:.80}")
    count = int(count_text)
    names = _check_names(path, 2, lines[1].split())
    converter = _Values(path, ("-1", "1"))
    rows = []
    for number, text in enumerate(lines[2:], start=3):
        parts = text.split()
        if not parts:
            continue
        if len(parts) != len(names) + 1:
            raise AttributeFormatError(
                f"{path}:{number}: {parts[0]:.80} has {len(parts) - 1} values for {len(names)} attributes"
            )
        image = _check_image(path, number, parts[0])
        rows.append((number, image, converter.row(number, image, names, parts[1:])))
    if len(rows) != count:
        raise AttributeFormatError(f"{path}:1: says {count} images but the file lists {len(rows)}")
    return _table(path, names, rows)


def read_attribute_csv(path: str | os.PathLike, *, celeba: bool = False) -> AttributeTable:
    """`image,<attr>,...` (or Kaggle's `image_id,...`): the first column names the image."""
    path = Path(path)
    allowed = ("-1", "1") if celeba else ("-1", "0", "1")
    converter = _Values(path, allowed)
    records = _csv_rows(path, _read_text(path))
    _, header = next(records, (1, None))
    if header is None:
        raise AttributeFormatError(f"{path}:1: empty file (want a header `image,<attr>,...`)")
    names = _check_names(path, 1, header[1:])
    rows = []
    for number, row in records:
        if not row or all(not cell.strip() for cell in row):
            continue
        image = row[0].strip()
        if len(row) != len(names) + 1:
            raise AttributeFormatError(
                f"{path}:{number}: {image:.80} has {len(row) - 1} values for {len(names)} attributes"
            )
        _check_image(path, number, image)
        rows.append((number, image, converter.row(number, image, names, row[1:])))
    return _table(path, names, rows)


def read_attribute_names(path: str | os.PathLike) -> list[str]:
    """Just the names of an attribute file (line 2 of CelebA's text file, or a CSV header): cheap."""
    path = Path(path)
    if path.suffix.lower() == ".csv":  # the first record, which a quoted name may spread over lines
        with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as handle:
            line, header = next(_csv_rows(path, handle), (1, []))
        try:
            ",".join(header).encode("utf-8")
        except UnicodeEncodeError:  # the bytes the decoder could not read, kept as lone surrogates
            raise AttributeFormatError(f"{path}:{line}: header bytes that are not UTF-8 text") from None
        return _check_names(path, 1, header[1:])
    with open(path, "rb") as handle:
        handle.readline()
        return _check_names(path, 2, _decode(path, handle.readline(), first_line=2).split())


def read_partition(path: str | os.PathLike) -> dict[str, tuple[int, int]]:
    """`list_eval_partition.txt` (`000001.jpg 0`) or `.csv` (`image_id,partition`): image -> (split, line)."""
    path = Path(path)
    entries: dict[str, tuple[int, int]] = {}
    text = _read_text(path)
    if path.suffix.lower() == ".csv":
        records = _csv_rows(path, text)
        _, header = next(records, (1, None))
        if header is None or [h.strip() for h in header[:2]] != ["image_id", "partition"]:
            raise AttributeFormatError(f"{path}:1: want the header `image_id,partition`, got {header!r:.80}")
    else:
        records = ((number, line.split()) for number, line in enumerate(text.split("\n"), start=1))
    for number, parts in records:
        if not parts or all(not p.strip() for p in parts):
            continue
        if len(parts) != 2:
            raise AttributeFormatError(f"{path}:{number}: want `<image> <0|1|2>`, got {parts!r:.80}")
        image, value = _check_image(path, number, parts[0].strip()), parts[1].strip()
        if value not in ("0", "1", "2"):
            raise AttributeFormatError(
                f"{path}:{number}: {image} has partition {value!r:.20} (0 train, 1 valid, 2 test)"
            )
        if image in entries:
            raise AttributeFormatError(
                f"{path}:{number}: {image} is listed twice (first on line {entries[image][1]})"
            )
        entries[image] = (int(value), number)
    return entries


def split_images(partition: dict[str, tuple[int, int]], split: str, partition_path: Path) -> list[str]:
    """The images of one split of a partition, in file order; a split without any is an error (it
    would otherwise run and report nothing)."""
    if split not in CELEBA_SPLITS:
        raise ValueError(f"split must be one of {sorted(CELEBA_SPLITS)}, got {split!r}")
    wanted = CELEBA_SPLITS[split]
    images = [image for image, (value, _) in partition.items() if value == wanted]
    if not images:
        raise AttributeFormatError(
            f"{partition_path}: no images of split {split!r} (partition {wanted}) among {len(partition)} rows"
        )
    return images


def check_partition_agrees(table: AttributeTable, partition: dict[str, tuple[int, int]],
                           partition_path: Path) -> None:
    """Both files list the same images: the first image in only one of them is an error at its line."""
    for image, line in zip(table.images, table.lines, strict=True):
        if image not in partition:
            raise AttributeFormatError(
                f"{table.path}:{line}: {image} has no entry in {partition_path} (the files disagree)"
            )
    if len(partition) != len(table):
        known = set(table.images)
        image, (_, line) = next((i, e) for i, e in partition.items() if i not in known)
        raise AttributeFormatError(
            f"{partition_path}:{line}: {image} is not in {table.path} (the files disagree)"
        )


@dataclass(frozen=True)
class CelebALayout:
    attributes: Path
    partition: Path
    images: Path
    kaggle: bool


def find_celeba(root: str | os.PathLike) -> CelebALayout:
    """Recognise the official layout (flat or Drive's Anno/Eval/Img) or Kaggle's CSV copy under `root`."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: CelebA root not found")
    kaggle = root / "list_attr_celeba.csv"
    if kaggle.is_file():
        nested = root / "img_align_celeba" / "img_align_celeba"
        images = nested if nested.is_dir() else root / "img_align_celeba"
        return CelebALayout(kaggle, root / "list_eval_partition.csv", images, True)
    for attributes, partition, images in (
        ("list_attr_celeba.txt", "list_eval_partition.txt", "img_align_celeba"),
        ("Anno/list_attr_celeba.txt", "Eval/list_eval_partition.txt", "Img/img_align_celeba"),
    ):
        if (root / attributes).is_file():
            return CelebALayout(root / attributes, root / partition, root / images, False)
    raise FileNotFoundError(
        f"{root}: no CelebA attribute file (looked for list_attr_celeba.txt, Anno/list_attr_celeba.txt "
        "and Kaggle's list_attr_celeba.csv)"
    )


def read_celeba_split(layout: CelebALayout, split: str) -> AttributeTable:
    """One split of CelebA's labels: the attribute file (official text or Kaggle CSV) and the partition,
    checked against each other; the rows of `split`, in file order."""
    table = read_attribute_csv(layout.attributes, celeba=True) if layout.kaggle else (
        read_celeba_attributes(layout.attributes))  # fmt: skip
    if not layout.partition.is_file():
        raise FileNotFoundError(f"{layout.partition}: CelebA partition file not found")
    partition = read_partition(layout.partition)
    check_partition_agrees(table, partition, layout.partition)
    wanted = set(split_images(partition, split, layout.partition))
    return table.rows([i for i, image in enumerate(table.images) if image in wanted])
