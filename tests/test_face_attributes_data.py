"""Face-attribute data: CelebA's official text files and Kaggle's CSV copy written byte for byte in their
formats, attribute CSVs, unlabeled folders, every error naming its file and line, and the synthetic set."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tasks.face_attributes import ATTRIBUTES, AttributeCSV, CelebA, SyntheticAttributeFaces, UnlabeledImages
from tasks.face_attributes.data import (
    AttributeFormatError,
    FaceAttributesDataModule,
    read_attribute_names,
    read_celeba_attributes,
)
from tasks.face_attributes.synthetic import SyntheticUnlabeledFaces, synthetic_labels, write_synthetic_folder

CELEBA_NAMES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
    "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup "
    "High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose "
    "Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
    "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young"
).split()
PARTITION = [0, 0, 0, 0, 1, 1, 2, 2, 2]  # images 000001..000009
RNG = np.random.default_rng(0)
VALUES = np.where(RNG.random((len(PARTITION), len(CELEBA_NAMES))) < 0.3, 1, -1)


def image_name(i: int) -> str:
    return f"{i + 1:06d}.jpg"


def write_images(folder: Path, count: int = len(PARTITION)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):  # CelebA's aligned crops are 178 x 218; a smaller portrait is enough here
        pixels = np.full((26, 22, 3), 20 * i, np.uint8)
        Image.fromarray(pixels).save(folder / image_name(i), quality=95)


def attr_txt_lines(values=VALUES, names=CELEBA_NAMES) -> list[str]:
    """Exactly CelebA's layout: the count, the names with a trailing space, values in 3-wide fields."""
    rows = [image_name(i) + "".join(f"{v:>3d}" for v in row) for i, row in enumerate(values)]
    return [str(len(values)), " ".join(names) + " ", *rows]


def write_official(root: Path, lines: list[str] | None = None, partition: list[str] | None = None) -> Path:
    write_images(root / "img_align_celeba")
    (root / "list_attr_celeba.txt").write_text("\n".join(lines or attr_txt_lines()) + "\n")
    partition = partition or [f"{image_name(i)} {p}" for i, p in enumerate(PARTITION)]
    (root / "list_eval_partition.txt").write_text("\n".join(partition) + "\n")
    return root


def write_kaggle(root: Path) -> Path:
    write_images(root / "img_align_celeba" / "img_align_celeba")
    with open(root / "list_attr_celeba.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_id", *CELEBA_NAMES])
        writer.writerows([image_name(i), *row] for i, row in enumerate(VALUES.tolist()))
    with open(root / "list_eval_partition.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_id", "partition"])
        writer.writerows([image_name(i), p] for i, p in enumerate(PARTITION))
    return root


def test_official_layout_is_read_exactly(tmp_path):
    root = write_official(tmp_path)
    text = (root / "list_attr_celeba.txt").read_text().splitlines()
    assert text[1].endswith("Young ") and "  1" in text[2] and " -1" in text[2]  # the real file's quirks
    train, valid, test = (CelebA(root, split) for split in ("train", "valid", "test"))
    assert (len(train), len(valid), len(test)) == (4, 2, 3)
    assert train.attributes == CELEBA_NAMES  # the file's names, in its order
    image, targets = train[1]
    assert (
        image.shape == (3, 26, 22) and image.dtype == torch.float32 and -1 <= image.min() <= image.max() <= 1
    )
    assert targets.dtype == torch.float32 and targets.tolist() == ((VALUES[1] + 1) / 2).tolist()
    assert torch.equal(test.targets, torch.from_numpy(((VALUES[6:] + 1) / 2).astype(np.float32)))
    assert CelebA(root, "val").keys == valid.keys == ["000005.jpg", "000006.jpg"]
    with pytest.raises(ValueError, match="split must be one of"):
        CelebA(root, "validation")


def test_kaggle_layout_gives_the_same_data(tmp_path):
    official = write_official(tmp_path / "official")
    kaggle = write_kaggle(tmp_path / "kaggle")
    for split in ("train", "valid", "test"):
        a, b = CelebA(official, split), CelebA(kaggle, split)
        assert a.attributes == b.attributes and a.keys == b.keys and torch.equal(a.targets, b.targets)
        assert torch.equal(a[0][0], b[0][0])
    assert CelebA(kaggle, "train").image_root == kaggle / "img_align_celeba" / "img_align_celeba"


def test_google_drive_layout_is_found(tmp_path):
    write_official(tmp_path / "flat")
    root = tmp_path / "drive"
    (root / "Anno").mkdir(parents=True)
    (root / "Eval").mkdir()
    (root / "Img").mkdir()
    (tmp_path / "flat" / "list_attr_celeba.txt").rename(root / "Anno" / "list_attr_celeba.txt")
    (tmp_path / "flat" / "list_eval_partition.txt").rename(root / "Eval" / "list_eval_partition.txt")
    (tmp_path / "flat" / "img_align_celeba").rename(root / "Img" / "img_align_celeba")
    assert len(CelebA(root, "test")) == 3
    with pytest.raises(FileNotFoundError, match="no CelebA attribute file"):
        CelebA(tmp_path / "flat", "test")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda lines: lines.__setitem__(4, lines[4][:-3]),
            r"list_attr_celeba.txt:5: 000003.jpg has 39 values",
        ),
        (
            lambda lines: lines.__setitem__(3, lines[3] + "  1"),
            r"list_attr_celeba.txt:4: 000002.jpg has 41 values",
        ),
        (
            lambda lines: lines.__setitem__(6, lines[6][:-2] + " 0"),
            r"list_attr_celeba.txt:7: 000005.jpg has unknown "
            r"value '0' for Young \(expected -1 or 1\)",
        ),
        (
            lambda lines: lines.__setitem__(0, "10"),
            r"list_attr_celeba.txt:1: says 10 images but the file lists 9",
        ),
        (
            lambda lines: lines.__setitem__(0, "many"),
            r"list_attr_celeba.txt:1: expected the number of images",
        ),
        (
            lambda lines: lines.__setitem__(5, lines[2]),
            r"list_attr_celeba.txt:6: 000001.jpg is listed twice "
            r"\(first on line 3\)",
        ),
        (
            lambda lines: lines.__setitem__(1, "Smiling Male Smiling "),
            r"list_attr_celeba.txt:2: attribute "
            r"'Smiling' is named twice",
        ),
    ],
)
def test_attribute_file_errors_name_the_file_and_line(tmp_path, edit, message):
    lines = attr_txt_lines()
    edit(lines)
    root = write_official(tmp_path, lines)
    with pytest.raises(AttributeFormatError, match=message):
        CelebA(root, "train")


@pytest.mark.parametrize(
    ("partition", "message"),
    [
        (
            lambda rows: rows[:-1],
            r"list_attr_celeba.txt:11: 000009.jpg has no entry in .*list_eval_partition.txt",
        ),
        (lambda rows: rows + ["000010.jpg 2"], r"list_eval_partition.txt:10: 000010.jpg is not in "),
        (
            lambda rows: rows[:3] + ["000004.jpg 3"] + rows[4:],
            r"list_eval_partition.txt:4: 000004.jpg has "
            r"partition '3'",
        ),
        (
            lambda rows: rows[:2] + ["000003.jpg"] + rows[3:],
            r"list_eval_partition.txt:3: want `<image> <0\|1\|2>`",
        ),
        (lambda rows: rows + ["000001.jpg 0"], r"list_eval_partition.txt:10: 000001.jpg is listed twice"),
    ],
)
def test_a_partition_that_disagrees_is_an_error_at_its_line(tmp_path, partition, message):
    rows = partition([f"{image_name(i)} {p}" for i, p in enumerate(PARTITION)])
    root = write_official(tmp_path, partition=rows)
    with pytest.raises(AttributeFormatError, match=message):
        CelebA(root, "test")


def test_a_row_whose_image_is_missing_is_skipped_and_counted(tmp_path, caplog):
    root = write_official(tmp_path)
    (root / "img_align_celeba" / "000002.jpg").unlink()
    (root / "img_align_celeba" / "000004.jpg").unlink()
    train = CelebA(root, "train")
    assert train.missing == ["000002.jpg", "000004.jpg"] and train.keys == ["000001.jpg", "000003.jpg"]
    assert train.targets[1].tolist() == ((VALUES[2] + 1) / 2).tolist()  # labels stay with their images
    assert "skipped 2 of 4 rows whose image is missing" in caplog.text
    for name in ("000001.jpg", "000003.jpg"):
        (root / "img_align_celeba" / name).unlink()
    with pytest.raises(FileNotFoundError, match="none of the listed images exists"):
        CelebA(root, "train")


def test_an_undecodable_image_is_replaced_by_the_next_and_counted(tmp_path):
    root = write_official(tmp_path)
    (root / "img_align_celeba" / "000007.jpg").write_bytes(b"not a jpeg")
    test = CelebA(root, "test").keyed()
    image, targets, key = test[0]
    assert key == "000008.jpg" and targets.tolist() == ((VALUES[7] + 1) / 2).tolist()
    assert len(test.dataset.skipped) == 1


def test_attribute_csv_with_either_encoding(tmp_path):
    write_images(tmp_path / "faces", 4)
    for encoding, (neg, pos) in {"01": (0, 1), "pm": (-1, 1)}.items():
        path = tmp_path / f"labels_{encoding}.csv"
        path.write_text(
            "image,Smiling,Eyeglasses\n"
            f"faces/000001.jpg,{pos},{neg}\nfaces/000002.jpg,{neg},{neg}\n\nfaces/000003.jpg,{pos},{pos}\n"
        )
        data = AttributeCSV(path)
        assert data.attributes == ["Smiling", "Eyeglasses"] and len(data) == 3
        assert data.targets.tolist() == [[1, 0], [0, 0], [1, 1]]
        assert read_attribute_names(path) == ["Smiling", "Eyeglasses"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("a.jpg,1,0\nb.jpg,1\n", r"labels.csv:3: b.jpg has 1 values for 2 attributes"),
        (
            "a.jpg,1,0\nb.jpg,1,-1\n",
            r"labels.csv:3: b.jpg has -1 for Eyeglasses, but the file's negatives are 0",
        ),
        (
            "a.jpg,1,yes\n",
            r"labels.csv:2: a.jpg has unknown value 'yes' for Eyeglasses \(expected -1 or 0 or 1\)",
        ),
        ("a.jpg,1,2\n", r"labels.csv:2: a.jpg has unknown value '2'"),
    ],
)
def test_attribute_csv_errors_name_the_file_and_line(tmp_path, body, message):
    path = tmp_path / "labels.csv"
    path.write_text("image,Smiling,Eyeglasses\n" + body)
    with pytest.raises(AttributeFormatError, match=message):
        AttributeCSV(path)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"a.jpg,1\n\xe9t\xe9.jpg,0\n", r"labels.csv:3: bytes that are not UTF-8 text"),  # Latin-1
        (b"a.jpg,1\nb.jpg," + b"1" * 140_000 + b"\n", r"labels.csv:3: not a CSV record \(field larger"),
        (b"../up.jpg,1\n", r"labels.csv:2: image name '../up.jpg' must be a path relative to the"),
        (b"a.jpg,1\n/etc/x.jpg,0\n", r"labels.csv:3: image name '/etc/x.jpg' must be a path relative"),
        (b"C:\\faces\\a.jpg,1\n", r"labels.csv:2: image name 'C:\\\\faces"),
        (b",1\n", r"labels.csv:2: image name '' must be"),
        (b"", r"labels.csv: lists no images"),
    ],
)
def test_attribute_csv_refuses_bytes_records_and_names_it_cannot_use(tmp_path, data, message):
    path = tmp_path / "labels.csv"
    path.write_bytes(b"image,Smiling\n" + data)
    # csv's field limit is process-wide and some libraries raise it on import: test at the default
    default_limit = csv.field_size_limit(131_072)
    try:
        with pytest.raises(AttributeFormatError, match=message):
            AttributeCSV(path, tmp_path)
    finally:
        csv.field_size_limit(default_limit)


def test_celeba_files_it_cannot_use_are_errors_naming_the_file_and_line(tmp_path):
    lines = attr_txt_lines()
    root = write_official(tmp_path / "latin1", lines)
    (root / "list_attr_celeba.txt").write_bytes("\n".join(lines[:4] + ["caf\u00e9.jpg" + lines[4][6:]])
                                               .encode("latin-1"))  # fmt: skip
    with pytest.raises(AttributeFormatError, match=r"list_attr_celeba.txt:5: bytes that are not UTF-8"):
        CelebA(root, "train")
    (root / "list_attr_celeba.txt").write_bytes(b"9\nSmiling \xff\n")
    with pytest.raises(AttributeFormatError, match=r"list_attr_celeba.txt:2: bytes that are not UTF-8"):
        read_attribute_names(root / "list_attr_celeba.txt")

    escaping = [f"{image_name(i)} {p}" for i, p in enumerate(PARTITION)] + ["../../etc/passwd 0"]
    root = write_official(tmp_path / "escaping", partition=escaping)
    with pytest.raises(AttributeFormatError, match=r"partition.txt:10: image name '../../etc/passwd'"):
        CelebA(root, "train")
    lines = attr_txt_lines()
    lines[3] = "/abs/000002.jpg" + lines[3][len("000002.jpg"):]
    root = write_official(tmp_path / "absolute", lines)
    with pytest.raises(AttributeFormatError, match=r"list_attr_celeba.txt:4: image name '/abs/000002.jpg'"):
        CelebA(root, "train")


def test_a_split_without_images_is_an_error_naming_the_partition(tmp_path):
    """Not "none of the listed images exists": every image is there, the partition has no test rows."""
    rows = [f"{image_name(i)} {min(p, 1)}" for i, p in enumerate(PARTITION)]
    root = write_official(tmp_path, partition=rows)
    assert len(CelebA(root, "valid")) == 5
    with pytest.raises(AttributeFormatError, match=r"list_eval_partition.txt: no images of split 'test'"):
        CelebA(root, "test")
    rows = [f"{image_name(i)} {max(p, 1)}" for i, p in enumerate(PARTITION)]
    (root / "list_eval_partition.txt").write_text("\n".join(rows) + "\n")
    distill = FaceAttributesDataModule("celeba", str(root), train_on="unlabeled", num_workers=0)
    with pytest.raises(AttributeFormatError, match=r"no images of split 'train'"):
        distill.make_dataset("train")  # the unlabeled train images come from the partition alone


def test_celeba_text_file_parser_accepts_celebamask_hq_style_counts(tmp_path):
    path = tmp_path / "CelebAMask-HQ-attribute-anno.txt"
    path.write_text("2\nBald Smiling \n0.jpg  1 -1\n1.jpg -1  1\n")
    table = read_celeba_attributes(path)
    assert table.images == ["0.jpg", "1.jpg"] and table.values.tolist() == [[1, 0], [0, 1]]


def test_unlabeled_folder_lists_every_image_at_any_depth(tmp_path):
    write_images(tmp_path / "a", 2)
    write_images(tmp_path / "b" / "c", 1)
    (tmp_path / "notes.txt").write_text("not an image")
    folder = UnlabeledImages(tmp_path)
    assert folder.keys == ["a/000001.jpg", "a/000002.jpg", "b/c/000001.jpg"]
    image, key = folder[2]
    assert image.shape == (3, 26, 22) and key == "b/c/000001.jpg"
    (tmp_path / "a" / "000002.jpg").write_bytes(b"broken")
    assert folder[1][1] == "b/c/000001.jpg" and len(folder.skipped) == 1  # training: the next readable image
    strict = UnlabeledImages(tmp_path, drop_unreadable=True)
    assert strict[1] is None and len(strict.skipped) == 1  # export/predict: dropped, never mislabelled


def test_datamodule_reads_names_from_the_file_and_unlabeled_training_reads_no_labels(tmp_path):
    root = write_official(tmp_path)
    data = FaceAttributesDataModule("celeba", str(root), image_size=16, num_workers=0, batch_size=2)
    assert data.attribute_names == CELEBA_NAMES and data.num_attributes == 40
    assert data.label_frequencies().tolist() == pytest.approx(((VALUES[:4] + 1) / 2).mean(axis=0).tolist())
    # Distillation on CelebA's train images: only the partition is read. Break every label row to prove it.
    lines = attr_txt_lines()
    (root / "list_attr_celeba.txt").write_text(
        "\n".join(lines[:2] + [row + " 7" for row in lines[2:]]) + "\n"
    )
    unlabeled = FaceAttributesDataModule(
        "celeba", str(root), train_on="unlabeled", image_size=16, num_workers=0
    )
    train = unlabeled.make_dataset("train")
    assert len(train) == 4 and len(train[0]) == 2 and train[0][1] == "000001.jpg"
    with pytest.raises(AttributeFormatError, match="list_attr_celeba.txt:3"):
        unlabeled.make_dataset("val")  # evaluation still reads (and checks) the labels


def test_synthetic_faces_are_deterministic_varied_and_celeba_like():
    faces = SyntheticAttributeFaces(6, size=64, seed=3, split="train")
    again = SyntheticAttributeFaces(6, size=64, seed=3, split="train")
    assert all(np.array_equal(faces.image(i), again.image(i)) for i in range(6))
    other_seed = SyntheticAttributeFaces(6, size=64, seed=4, split="train")
    test_split = SyntheticAttributeFaces(6, size=64, seed=3, split="test")
    assert not np.array_equal(faces.image(0), other_seed.image(0))
    assert not np.array_equal(faces.image(0), test_split.image(0))
    image, targets, key = faces[2]
    assert image.shape == (3, 64, 64) and targets.shape == (len(ATTRIBUTES),) and key == "train/000002.png"
    assert len(ATTRIBUTES) >= 12

    labels = synthetic_labels(0, "train", 3000)
    rates = dict(zip(ATTRIBUTES, labels.mean(axis=0), strict=True))
    assert 0.03 < min(rates.values()) and max(rates.values()) < 0.55  # CelebA-like imbalance
    assert sum(rate < 0.1 for rate in rates.values()) >= 5 and sum(rate > 0.3 for rate in rates.values()) >= 4
    column = {name: labels[:, i] for i, name in enumerate(ATTRIBUTES)}

    def correlation(a: str, b: str) -> float:
        return float(np.corrcoef(column[a], column[b])[0, 1])

    assert correlation("Beard", "Mustache") > 0.3 and correlation("Male", "Beard") > 0.3
    assert (
        correlation("Male", "Wearing_Lipstick") < -0.6
        and correlation("Wearing_Lipstick", "Heavy_Makeup") > 0.6
    )
    assert np.array_equal(faces.labels(), synthetic_labels(3, "train", 6))  # labels without rendering agree


def test_unlabeled_faces_carry_no_labels_and_write_out_pixel_identical(tmp_path):
    faces = SyntheticUnlabeledFaces(3, size=48, seed=0)
    item = faces[1]
    assert len(item) == 2 and item[1] == "unlabeled/000001.png"
    out = write_synthetic_folder(faces, tmp_path / "faces", labels_csv=False)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "unlabeled",
        "unlabeled/000000.png",
        "unlabeled/000001.png",
        "unlabeled/000002.png",
    ]  # no label file
    folder = UnlabeledImages(out)
    assert folder.keys == [faces.key(i) for i in range(3)]
    assert torch.equal(folder[2][0], faces[2][0])

    labeled = SyntheticAttributeFaces(2, size=48, seed=0, split="val")
    write_synthetic_folder(labeled, tmp_path / "labeled")
    table = AttributeCSV(tmp_path / "labeled" / "val_attributes.csv")
    assert table.attributes == list(ATTRIBUTES) and table.targets.tolist() == labeled.labels().tolist()
