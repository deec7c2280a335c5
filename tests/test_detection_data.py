from __future__ import annotations

import json
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from tasks.detection.augment import SSDRandomCrop, detection_eval, detection_train
from tasks.detection.commands import main_synth_shapes
from tasks.detection.data import CocoDataModule, CocoDetection, detection_collate
from tasks.detection.synthetic import CATEGORY_IDS, SHAPES, write_synth_shapes

SMALL, LARGE = 32**2, 96**2


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    write_synth_shapes(root, images=30, seed=5)
    return root


def _write_jpeg(path: Path, size=(40, 60)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), 128, np.uint8)).save(path, format="JPEG")


def _fixture(tmp_path: Path, annotations: list[dict], *, images=None) -> tuple[Path, Path]:
    """A hand-written COCO file with non-contiguous ids 2, 7, 90; images are 60 wide, 40 high."""
    images = images or [{"id": 10, "file_name": "a.jpg"}, {"id": 20, "file_name": "b.jpg"}]
    for image in images:
        image.update(width=60, height=40)
        _write_jpeg(tmp_path / "img" / image["file_name"])
    dataset = {
        "images": images,
        "annotations": [{"id": i + 1, "iscrowd": 0, "area": 1.0, **a} for i, a in enumerate(annotations)],
        "categories": [{"id": 90, "name": "zebra"}, {"id": 2, "name": "bicycle"}, {"id": 7, "name": "train"}],
    }
    ann_file = tmp_path / "instances.json"
    ann_file.write_text(json.dumps(dataset))
    return tmp_path / "img", ann_file


def test_synth_writes_valid_coco_with_exact_counts_and_all_sizes(synth_root):
    train = COCO(str(synth_root / "annotations" / "instances_train.json"))
    val = COCO(str(synth_root / "annotations" / "instances_val.json"))
    assert (len(train.getImgIds()), len(val.getImgIds())) == (24, 6)
    assert not set(train.getImgIds()) & set(val.getImgIds())
    assert sorted(train.getCatIds()) == list(CATEGORY_IDS) == [1, 3, 5, 7, 9]
    for split, coco in (("train", train), ("val", val)):
        assert sorted(p.name for p in (synth_root / split).glob("*.jpg")) == sorted(
            img["file_name"] for img in coco.dataset["images"]
        )
        for img in coco.dataset["images"]:
            assert 1 <= len(coco.getAnnIds(imgIds=img["id"])) <= 5
    anns = train.dataset["annotations"] + val.dataset["annotations"]
    assert len({a["id"] for a in anns}) == len(anns)
    areas = np.array([a["area"] for a in anns])
    assert (areas < SMALL).any() and ((areas >= SMALL) & (areas <= LARGE)).any() and (areas > LARGE).any()
    assert {a["category_id"] for a in anns} == set(CATEGORY_IDS)
    for a in anns:
        x, y, w, h = a["bbox"]
        assert x >= 0 and y >= 0 and x + w <= 320 and y + h <= 320 and a["area"] == w * h


def test_synth_is_deterministic_by_seed(tmp_path, synth_root):
    main_synth_shapes(["--out", str(tmp_path / "same"), "--images", "30", "--seed", "5"])
    main_synth_shapes(["--out", str(tmp_path / "other"), "--images", "30", "--seed", "6"])
    ann = "annotations/instances_val.json"
    assert (tmp_path / "same" / ann).read_bytes() == (synth_root / ann).read_bytes()
    assert (tmp_path / "same/train/000003.jpg").read_bytes() == (synth_root / "train/000003.jpg").read_bytes()
    assert (tmp_path / "other" / ann).read_bytes() != (synth_root / ann).read_bytes()


def test_category_ids_map_to_contiguous_labels_and_back(tmp_path):
    image_dir, ann_file = _fixture(
        tmp_path,
        [
            {"image_id": 10, "category_id": 90, "bbox": [1, 2, 10, 10]},
            {"image_id": 10, "category_id": 2, "bbox": [20, 5, 10, 10]},
            {"image_id": 20, "category_id": 7, "bbox": [3, 3, 30, 20]},
        ],
    )
    ds = CocoDetection(image_dir, ann_file)
    assert ds.label_to_cat_id == {1: 2, 2: 7, 3: 90}
    assert {ds.cat_id_to_label[c]: c for c in (2, 7, 90)} == ds.label_to_cat_id
    assert ds.class_names == ["__background__", "bicycle", "train", "zebra"]
    assert ds.num_classes == 3
    _, target = ds[0]
    assert [ds.label_to_cat_id[int(label)] for label in target["labels"]] == [90, 2]
    assert target["image_id"] == 10 and target["orig_size"] == (40, 60)
    assert torch.equal(target["boxes"], torch.tensor([[1.0, 2, 11, 12], [20, 5, 30, 15]]))
    target["boxes"] += 100  # a model editing its targets in place must not corrupt the dataset
    assert torch.equal(ds[0][1]["boxes"], torch.tensor([[1.0, 2, 11, 12], [20, 5, 30, 15]]))


def test_crowd_ignored_and_bad_boxes_clipped_or_dropped_with_counts(tmp_path):
    image_dir, ann_file = _fixture(
        tmp_path,
        [
            {"image_id": 10, "category_id": 2, "bbox": [5, 5, 10, 10], "iscrowd": 1},
            {"image_id": 10, "category_id": 2, "bbox": [-4, 30, 20, 20]},  # clipped to [0, 30, 16, 40]
            {"image_id": 10, "category_id": 7, "bbox": [70, 5, 10, 10]},  # right of the image: dropped
            {"image_id": 10, "category_id": 7, "bbox": [10, 5, 0, 10]},  # zero width: dropped
            {"image_id": 10, "category_id": 7, "bbox": [59.5, 5, 5, 10]},  # 0.5 px after clipping: dropped
            {"image_id": 20, "category_id": 90, "bbox": [1, 1, 5, 5], "iscrowd": 1},  # only crowd
        ],
    )
    ds = CocoDetection(image_dir, ann_file, train=False)
    assert (ds.crowd_boxes, ds.clipped_boxes, ds.dropped_boxes, ds.images_without_boxes) == (2, 1, 3, 1)
    assert len(ds) == 2  # evaluation keeps the image that has no usable box
    _, target = ds[0]
    assert torch.equal(target["boxes"], torch.tensor([[0.0, 30, 16, 40]]))
    assert target["labels"].tolist() == [1]
    _, empty = ds[1]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].dtype == torch.int64
    assert len(CocoDetection(image_dir, ann_file, train=True)) == 1  # training drops it


def test_corrupt_jpeg_is_skipped_and_counted(tmp_path):
    image_dir, ann_file = _fixture(tmp_path, [{"image_id": 20, "category_id": 2, "bbox": [1, 1, 9, 9]}])
    (image_dir / "a.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    ds = CocoDetection(image_dir, ann_file)
    image, target = ds[0]
    assert target["image_id"] == 20 and image.shape == (3, 40, 60)
    assert len(ds.skipped) == 1 and ds.skipped.paths == [str(image_dir / "a.jpg")]


def test_missing_or_invalid_annotation_file_names_the_file(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(FileNotFoundError, match="nope.json"):
        CocoDetection(tmp_path, missing)
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [')
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        CocoDetection(tmp_path, bad)
    bad.write_text('{"images": []}')
    with pytest.raises(ValueError, match="bad.json: not a COCO instances file"):
        CocoDetection(tmp_path, bad)


def test_eval_transform_scales_boxes_and_normalises(tmp_path):
    image_dir, ann_file = _fixture(tmp_path, [{"image_id": 10, "category_id": 2, "bbox": [6, 4, 30, 20]}])
    image, target = CocoDetection(image_dir, ann_file, transform=detection_eval(30))[0]
    assert image.shape == (3, 30, 30) and image.dtype == torch.float32
    assert -1.0 <= image.min() and image.max() <= 1.0
    assert torch.allclose(target["boxes"], torch.tensor([[3.0, 3, 18, 18]]))  # x * 30/60, y * 30/40
    assert target["orig_size"] == (40, 60)


def test_train_augmentation_keeps_boxes_inside_the_image(synth_root):
    ds = CocoDetection(
        synth_root / "train",
        synth_root / "annotations/instances_train.json",
        transform=detection_train(96, seed=0),
        train=True,
    )
    for i in range(len(ds)):
        image, target = ds[i]
        boxes = target["boxes"]
        assert image.shape == (3, 96, 96) and len(boxes) == len(target["labels"])
        assert (boxes >= 0).all() and (boxes <= 96).all()
        assert (boxes[:, 2:] - boxes[:, :2] >= 1).all()
        assert set(target["labels"].tolist()) <= set(range(1, len(SHAPES) + 1))


@pytest.mark.parametrize("min_iou", [0.3, 0.7])
def test_ssd_crop_reaches_the_requested_iou(min_iou):
    crop = A.Compose(
        [SSDRandomCrop(min_ious=(min_iou,))],
        bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"]),
        seed=1,
    )
    image = np.zeros((200, 300, 3), np.uint8)
    box = np.array([[30.0, 20, 270, 180]])
    box_area = 240 * 160
    cropped = 0
    for _ in range(30):
        out = crop(image=image, bboxes=box, labels=[1])
        if out["image"].shape == image.shape:
            continue  # no trial met the IoU: the image is kept whole, by design
        cropped += 1
        (x0, y0, x1, y1) = out["bboxes"][0]  # the box's part inside the crop, in crop pixels
        crop_area = out["image"].shape[0] * out["image"].shape[1]
        inter = (x1 - x0) * (y1 - y0)
        assert inter / (box_area + crop_area - inter) >= min_iou - 0.02  # crop corners are truncated to ints
    assert cropped >= 15


def test_collate_keeps_lists():
    batch = [(torch.zeros(3, 4, 4), {"boxes": torch.zeros(n, 4)}) for n in (0, 2)]
    images, targets = detection_collate(batch)
    assert [i.shape for i in images] == [(3, 4, 4)] * 2 and [len(t["boxes"]) for t in targets] == [0, 2]


def test_datamodule_generates_synthetic_data_once(tmp_path):
    dm = CocoDataModule(root=str(tmp_path), image_size=64, batch_size=4, num_workers=0, synthetic_images=10)
    dm.prepare_data()
    marker = tmp_path / "annotations/instances_val.json"
    stamp = marker.stat().st_mtime_ns
    again = CocoDataModule(
        root=str(tmp_path), image_size=64, batch_size=4, num_workers=0, synthetic_images=10
    )
    again.prepare_data()
    assert marker.stat().st_mtime_ns == stamp
    again.setup("fit")
    assert again.num_classes == len(SHAPES) and again.label_to_cat_id == dict(enumerate(CATEGORY_IDS, 1))
    assert again.val_annotation_file == marker
    images, targets = next(iter(again.train_dataloader()))
    assert len(images) == 4 and images[0].shape == (3, 64, 64) and len(targets) == 4
    assert sum(1 for _ in again.val_dataloader()) == 1  # 2 val images, batch 4


def test_synthetic_size_and_crop_come_from_the_datamodule(tmp_path):
    dm = CocoDataModule(
        root=str(tmp_path), image_size=96, num_workers=0, synthetic_images=10,
        synthetic_image_size=96, random_crop=False,
    )  # fmt: skip
    dm.setup("fit")
    val = json.loads(dm.val_annotation_file.read_text())["images"]
    assert {(image["height"], image["width"]) for image in val} == {(96, 96)}
    steps = [type(t).__name__ for t in dm.train_set.transform.transforms]
    assert steps == ["ColorJitter", "HorizontalFlip", "Resize"]  # no SSDRandomCrop
    assert "SSDRandomCrop" in [type(t).__name__ for t in detection_train(96).transforms]


def test_datamodule_never_overwrites_real_annotations(tmp_path):
    image_dir, ann_file = _fixture(
        tmp_path / "img_src", [{"image_id": 10, "category_id": 2, "bbox": [1, 1, 9, 9]}]
    )
    (tmp_path / "annotations").mkdir()
    real = tmp_path / "annotations/instances_val.json"
    real.write_bytes(ann_file.read_bytes())
    CocoDataModule(root=str(tmp_path), num_workers=0, synthetic_images=10).prepare_data()
    assert real.read_bytes() == ann_file.read_bytes() and not (tmp_path / "train").exists()
