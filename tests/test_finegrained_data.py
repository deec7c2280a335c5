"""Fine-grained data: Stanford Dogs (official format), image folders, the synthetic set, the DataModule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from tasks.common.transforms import to_model_input
from tasks.finegrained.data import (
    FineGrainedDataModule,
    ImageFolderDataset,
    KeyedImages,
    StanfordDogs,
    read_boxes,
)
from tasks.finegrained.synthetic import MAX_CLASSES, SyntheticFineGrained, class_attributes

BREEDS = ["n02085620-Chihuahua", "n02095314-wire-haired_fox_terrier", "n02116738-African_hunting_dog"]
# (breed index, image number, split); 0-based breed index, written 1-based into the .mat files.
RECORDS = [
    (0, 1, "train"),
    (0, 2, "train"),
    (1, 3, "train"),
    (1, 4, "train"),
    (2, 5, "train"),
    (2, 6, "train"),
    (0, 7, "test"),
    (1, 8, "test"),
    (2, 9, "test"),
    (2, 10, "test"),
]
IMAGE_SIZE = (40, 30)  # width, height
BOXES = [(5, 4, 20, 18), (12, 10, 36, 25)]  # two dogs; their union is (5, 4, 36, 25)

VOC_OBJECT = (
    "<object><name>{name}</name><bndbox><xmin>{}</xmin><ymin>{}</ymin><xmax>{}</xmax><ymax>{}</ymax>"
    "</bndbox></object>"
)


def _cell(strings: list[str]) -> np.ndarray:
    """A MATLAB N x 1 cell array of char rows, as the official lists store them."""
    cell = np.empty((len(strings), 1), dtype=object)
    for i, s in enumerate(strings):
        cell[i, 0] = np.array([s])
    return cell


def _image_colour(breed: int, number: int) -> tuple[int, int, int]:
    return 40 * breed + 20, 10 * number, 200


@pytest.fixture
def dogs_root(tmp_path: Path) -> Path:
    root = tmp_path / "dogs"
    for split in ("train", "test"):
        files, annotations, labels = [], [], []
        for breed, number, record_split in RECORDS:
            if record_split != split:
                continue
            wnid = BREEDS[breed].split("-")[0]
            stem = f"{BREEDS[breed]}/{wnid}_{number}"
            image = Image.new("RGB", IMAGE_SIZE, _image_colour(breed, number))
            (root / "Images" / BREEDS[breed]).mkdir(parents=True, exist_ok=True)
            image.save(root / "Images" / f"{stem}.jpg", quality=95)
            annotation = root / "Annotation" / stem
            annotation.parent.mkdir(parents=True, exist_ok=True)
            objects = "".join(VOC_OBJECT.format(*box, name=BREEDS[breed]) for box in BOXES)
            annotation.write_text(f"<annotation><filename>{wnid}_{number}</filename>{objects}</annotation>")
            files.append(f"{stem}.jpg")
            annotations.append(stem)
            labels.append(breed + 1)
        (root / "lists").mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(
            root / "lists" / f"{split}_list.mat",
            {
                "file_list": _cell(files),
                "annotation_list": _cell(annotations),
                "labels": np.array(labels, dtype=np.float64)[:, None],
            },
        )
    return root


def test_stanford_dogs_classes_splits_and_labels(dogs_root: Path) -> None:
    train = StanfordDogs(dogs_root, "train")
    test = StanfordDogs(dogs_root, "test")
    assert train.classes == test.classes == ["Chihuahua", "wire-haired_fox_terrier", "African_hunting_dog"]
    assert (len(train), len(test)) == (6, 4)
    expected = [
        (str(dogs_root / "Images" / BREEDS[b] / f"{BREEDS[b].split('-')[0]}_{n}.jpg"), b)
        for b, n, split in RECORDS
        if split == "test"
    ]
    assert test.samples == expected
    tensor, label = test[3]
    assert label == 2 and tensor.shape == (3, IMAGE_SIZE[1], IMAGE_SIZE[0]) and tensor.dtype == torch.float32
    # JPEG is lossy: compare the decoded colour to the one written within a few levels.
    mean = (tensor.mean(dim=(1, 2)) + 1) * 127.5
    assert torch.allclose(mean, torch.tensor(_image_colour(2, 10), dtype=torch.float32), atol=3)


def test_stanford_dogs_crop_to_box_uses_union_of_objects(dogs_root: Path) -> None:
    assert read_boxes(dogs_root / "Annotation" / BREEDS[0] / "n02085620_1") == BOXES
    tensor, _ = StanfordDogs(dogs_root, "train", crop_to_box=True)[0]
    assert tensor.shape == (3, 25 - 4, 36 - 5)


def test_stanford_dogs_skips_and_counts_corrupt_jpeg(dogs_root: Path) -> None:
    (dogs_root / "Images" / BREEDS[0] / "n02085620_1.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    train = StanfordDogs(dogs_root, "train")
    tensor, label = train[0]
    assert label == 0  # the next readable item, n02085620_2, is also a Chihuahua
    assert len(train.skipped) == 1 and train.skipped.paths[0].endswith("n02085620_1.jpg")
    assert train[1][1] == 0 and len(train.skipped) == 1


def test_stanford_dogs_missing_list_or_images_is_a_clear_error(dogs_root: Path) -> None:
    (dogs_root / "lists" / "train_list.mat").unlink()
    with pytest.raises(FileNotFoundError, match=r"lists/train_list\.mat"):
        StanfordDogs(dogs_root, "test")
    with pytest.raises(FileNotFoundError, match=r"Images"):
        StanfordDogs(dogs_root.parent / "elsewhere", "train")


def test_stanford_dogs_label_disagreeing_with_folder_names_the_record(dogs_root: Path) -> None:
    mat = {
        k: v
        for k, v in scipy.io.loadmat(dogs_root / "lists" / "test_list.mat").items()
        if not k.startswith("__")
    }
    mat["labels"][1, 0] = 1  # a terrier labelled Chihuahua
    scipy.io.savemat(dogs_root / "lists" / "test_list.mat", mat)
    with pytest.raises(ValueError, match=r"test_list\.mat: record 1 .*n02095314_8"):
        StanfordDogs(dogs_root, "test")


def _write_folder(root: Path, layout: dict[str, int]) -> None:
    for name, count in layout.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (8, 6), (i, 0, 0)).save(root / name / f"{i}.png")


def test_image_folder_classes_labels_and_corrupt_skip(tmp_path: Path) -> None:
    _write_folder(tmp_path, {"n01440764": 2, "n01443537": 3})
    (tmp_path / "n01443537" / "notes.txt").write_text("not an image")
    (tmp_path / "n01443537" / "0_broken.jpg").write_bytes(b"garbage")  # sorts between 0.png and 1.png
    dataset = ImageFolderDataset(tmp_path)
    assert dataset.classes == ["n01440764", "n01443537"]
    assert [label for _, label in dataset.samples] == [0, 0, 1, 1, 1, 1]
    broken = [p for p, _ in dataset.samples].index(str(tmp_path / "n01443537" / "0_broken.jpg"))
    tensor, label = dataset[broken]
    assert label == 1 and tensor.shape == (3, 6, 8) and len(dataset.skipped) == 1


def test_synthetic_is_deterministic_balanced_and_split_dependent() -> None:
    dataset = SyntheticFineGrained(24, 3, size=48, seed=7, split="train")
    again = SyntheticFineGrained(24, 3, size=48, seed=7, split="train")
    assert len(dataset) == 72 and dataset.classes == again.classes and len(set(dataset.classes)) == 24
    for index in (0, 5, 71):
        image, label = dataset[index]
        assert image.shape == (3, 48, 48) and label == index % 24
        assert torch.equal(image, again[index][0])
    val = SyntheticFineGrained(24, 3, size=48, seed=7, split="val")
    other_seed = SyntheticFineGrained(24, 3, size=48, seed=8, split="train")
    assert not torch.equal(dataset[0][0], val[0][0]) and not torch.equal(dataset[0][0], other_seed[0][0])
    assert torch.equal(dataset[4][0], to_model_input(dataset.image(4)[0]))


def test_synthetic_classes_are_distinct_attribute_combinations() -> None:
    combos = {class_attributes(label) for label in range(MAX_CLASSES)}
    assert len(combos) == MAX_CLASSES
    with pytest.raises(ValueError, match="num_classes"):
        SyntheticFineGrained(MAX_CLASSES + 1, 1)


def test_datamodule_synthetic_loaders_and_predict_keys() -> None:
    dm = FineGrainedDataModule(
        "synthetic",
        image_size=32,
        batch_size=8,
        num_workers=0,
        synthetic_classes=20,
        synthetic_train_per_class=2,
        synthetic_val_per_class=1,
    )
    assert dm.num_classes == 20 and len(dm.class_names) == 20
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (8, 3, 32, 32) and labels.dtype == torch.int64
    assert len(dm.train_dataloader()) == 40 // 8 and len(dm.val_dataloader().dataset) == 20
    images, keys = next(iter(dm.predict_dataloader()))
    assert images.shape == (8, 3, 32, 32) and list(keys[:2]) == ["val/000000", "val/000001"]


def test_datamodule_stanford_dogs_and_predict_root(dogs_root: Path, tmp_path: Path) -> None:
    dm = FineGrainedDataModule("stanford_dogs", str(dogs_root), image_size=16, batch_size=4, num_workers=0)
    assert dm.class_names == ["Chihuahua", "wire-haired_fox_terrier", "African_hunting_dog"]
    dm.setup("fit")
    assert (len(dm.splits["train"]), len(dm.splits["val"])) == (6, 4)
    images, labels = next(iter(dm.val_dataloader()))
    assert images.shape == (4, 3, 16, 16) and labels.tolist() == [0, 1, 2, 2]
    _write_folder(tmp_path / "photos", {"a": 1, "b": 2})
    dm = FineGrainedDataModule(
        "stanford_dogs",
        str(dogs_root),
        image_size=16,
        batch_size=4,
        num_workers=0,
        predict_root=str(tmp_path / "photos"),
    )
    images, keys = next(iter(dm.predict_dataloader()))
    assert images.shape == (3, 3, 16, 16) and [Path(k).relative_to(tmp_path).as_posix() for k in keys] == [
        "photos/a/0.png",
        "photos/b/0.png",
        "photos/b/1.png",
    ]
    with pytest.raises(ValueError, match="root"):
        FineGrainedDataModule("imagefolder")


def test_keyed_images_report_the_file_actually_read(tmp_path: Path) -> None:
    _write_folder(tmp_path, {"x": 2})
    (tmp_path / "x" / "0.png").write_bytes(b"broken")
    _, key = KeyedImages(ImageFolderDataset(tmp_path))[0]
    assert key == str(tmp_path / "x" / "1.png")
