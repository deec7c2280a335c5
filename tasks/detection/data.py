"""COCO-format detection data: the dataset, its collate function and the Lightning data module.

Annotations are parsed once with pycocotools, then boiled down to flat numpy arrays (boxes, labels,
per-image offsets): no per-record Python objects survive, so forked loader workers do not copy the
index page by page through reference counting, and images themselves are streamed from disk.

Label convention: COCO category ids (non-contiguous, 1..90 on COCO) map to contiguous labels 1..K in
sorted-id order; 0 is background. `label_to_cat_id` turns predictions back into COCO ids.

Data hygiene, decided once here so that no training run dies on one bad record:
- `iscrowd` boxes never reach the targets (COCOeval treats crowd regions itself, from the GT file);
- boxes reaching outside the image are clipped; boxes under 1 px wide or high after clipping are
  dropped. Both are counted (`clipped_boxes`, `dropped_boxes`) and logged;
- in training, images left without any box are dropped (a random crop needs a box to aim at);
  for evaluation every image is kept, so recall is measured on the full set;
- an image file that cannot be decoded is skipped (the next readable one is served) and counted in
  `skipped`. In evaluation that repeats the neighbour's image id: `metrics.DetectionResults` keeps
  one prediction set per id, so the unread image simply counts as missed.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
from pathlib import Path

import numpy as np
import torch
from pycocotools.coco import COCO
from torch.utils.data import DataLoader, Dataset

from tasks.common.data import DEFAULT_NUM_WORKERS, TaskDataModule
from tasks.common.io import SkipCounter, read_first_readable, unsafe_relative_name
from tasks.common.transforms import to_model_input
from tasks.detection.augment import detection_eval, detection_train
from tasks.detection.synthetic import MARKER_FILE, synth_marker_matches, write_synth_shapes

log = logging.getLogger(__name__)

REQUIRED_KEYS = ("images", "annotations", "categories")


INT64_MAX = 2**63 - 1
MAX_RECORDS_IN_MESSAGE = 10


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and -INT64_MAX <= value <= INT64_MAX


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _record_name(kind: str, number: int, record) -> str:
    rid = record.get("id") if isinstance(record, dict) else None
    return f"{kind}[{number}]" + (f" (id {rid!r:.40})" if rid is not None else "")


def validate_coco(dataset: dict, path: str | Path, *, evaluation: bool = False) -> dict:
    """Check a COCO instances dict record by record; every problem is a ValueError naming file and record.

    Images need a unique integer `id`, a `file_name` inside the image folder (relative, no `..`) and
    positive `width`/`height`; categories a unique integer `id` and a `name`; annotations a unique
    integer `id`, integer `image_id`/`category_id` and a `bbox` of 4 finite numbers (and, for
    `evaluation`, the `area` and `iscrowd` COCOeval reads). Annotations on image ids the file does
    not list are dropped from `dataset`, counted and logged (pycocotools would drop them silently).
    Returns the counts found.
    """
    images, categories, annotations = dataset["images"], dataset["categories"], dataset["annotations"]
    for key, value in (("images", images), ("categories", categories), ("annotations", annotations)):
        if not isinstance(value, list):
            raise ValueError(f"{path}: {key!r} must be a JSON list, got {type(value).__name__}")
    if not images:
        raise ValueError(f"{path}: 'images' is empty: nothing to train or evaluate on")
    image_ids: set[int] = set()
    for number, image in enumerate(images):
        name = _record_name("images", number, image)
        if not isinstance(image, dict):
            raise ValueError(f"{path}: {name} is not a JSON object")
        for key in ("id", "file_name", "width", "height"):
            if key not in image:
                raise ValueError(f"{path}: {name} has no {key!r}")
        if not _is_int(image["id"]):
            raise ValueError(f"{path}: {name} has id {image['id']!r:.40}; image ids are integers")
        if image["id"] in image_ids:
            raise ValueError(f"{path}: {name} repeats image id {image['id']}")
        image_ids.add(image["id"])
        file_name = image["file_name"]
        if not isinstance(file_name, str) or unsafe_relative_name(file_name):
            raise ValueError(
                f"{path}: {name} has file_name {file_name!r:.80}; it must be a path relative to the "
                "image folder, without '..'"
            )
        for key in ("width", "height"):
            if not _is_number(image[key]) or image[key] <= 0:
                raise ValueError(f"{path}: {name} has {key} {image[key]!r:.40}; must be a positive number")
    cat_ids: set[int] = set()
    for number, category in enumerate(categories):
        name = _record_name("categories", number, category)
        if not isinstance(category, dict) or not _is_int(category.get("id")):
            raise ValueError(f"{path}: {name} needs an integer 'id'")
        if category["id"] in cat_ids:
            raise ValueError(f"{path}: {name} repeats category id {category['id']}")
        if not isinstance(category.get("name"), str):
            raise ValueError(f"{path}: {name} needs a string 'name'")
        cat_ids.add(category["id"])
    orphans: list[int] = []
    ann_ids: set = set()
    for number, ann in enumerate(annotations):
        name = _record_name("annotations", number, ann)
        if not isinstance(ann, dict):
            raise ValueError(f"{path}: {name} is not a JSON object")
        for key in ("image_id", "category_id"):
            if not _is_int(ann.get(key)):
                raise ValueError(f"{path}: {name} has {key} {ann.get(key)!r:.40}; must be an integer")
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
            raise ValueError(f"{path}: {name} has bbox {bbox!r:.80}; must be [x, y, w, h], 4 finite numbers")
        if "id" in ann:
            if not _is_int(ann["id"]):
                raise ValueError(f"{path}: {name} has id {ann['id']!r:.40}; annotation ids are integers")
            if ann["id"] in ann_ids:
                raise ValueError(f"{path}: {name} repeats annotation id {ann['id']}")
            ann_ids.add(ann["id"])
        else:
            raise ValueError(f"{path}: {name} has no 'id' (COCO gives every annotation one)")
        if "iscrowd" in ann and ann["iscrowd"] not in (0, 1):  # False/True compare equal: accepted
            raise ValueError(f"{path}: {name} has iscrowd {ann['iscrowd']!r:.40}; must be 0 or 1")
        if "area" in ann and (not _is_number(ann["area"]) or ann["area"] < 0):
            raise ValueError(f"{path}: {name} has area {ann['area']!r:.40}; must be a number >= 0")
        if evaluation:
            for key in ("area", "iscrowd"):
                if key not in ann:
                    raise ValueError(f"{path}: {name} has no {key!r}, which COCO evaluation needs")
        if ann["image_id"] not in image_ids:
            orphans.append(number)
    if orphans:
        shown = ", ".join(str(annotations[n]["image_id"]) for n in orphans[:MAX_RECORDS_IN_MESSAGE])
        log.warning(
            "%s: %d annotations name image ids that 'images' does not list (e.g. %s); ignored",
            path, len(orphans), shown,
        )  # fmt: skip
        orphan_set = set(orphans)
        dataset["annotations"] = [ann for n, ann in enumerate(annotations) if n not in orphan_set]
    return {"images": len(images), "annotations": len(annotations), "orphan_annotations": len(orphans)}


def read_coco_json(
    annotation_file: str | Path, *, evaluation: bool = False, counts: dict | None = None
) -> dict:
    """Read and validate a COCO instances file (`validate_coco`, whose counts land in `counts`)."""
    path = Path(annotation_file)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: COCO annotation file not found")
    try:
        dataset = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise ValueError(f"{path}: not valid JSON ({type(err).__name__}: {err})") from err
    if not isinstance(dataset, dict) or any(key not in dataset for key in REQUIRED_KEYS):
        raise ValueError(f"{path}: not a COCO instances file (needs a JSON object with keys {REQUIRED_KEYS})")
    found = validate_coco(dataset, path, evaluation=evaluation)
    if counts is not None:
        counts.update(found)
    return dataset


def load_coco(annotation_file: str | Path) -> COCO:
    """`read_coco_json`, indexed by pycocotools."""
    coco = COCO()
    coco.counts = {}
    coco.dataset = read_coco_json(annotation_file, counts=coco.counts)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress chatter
        try:
            coco.createIndex()
        except (KeyError, TypeError) as err:
            raise ValueError(f"{annotation_file}: malformed COCO record, missing or bad field {err}") from err
    return coco


class CocoDetection(Dataset):
    """COCO detection images with targets `{boxes (xyxy px), labels, image_id, orig_size (h, w)}`.

    `transform` is an albumentations Compose called as `transform(image=, bboxes=, labels=)` with
    pascal_voc boxes (see `augment.py`); boxes come back in the transformed image's pixels.
    Images are returned as CHW floats in [-1, 1] (`to_model_input`).
    """

    def __init__(
        self, image_dir: str | Path, annotation_file: str | Path, *, transform=None, train: bool = False
    ) -> None:
        self.image_dir = Path(image_dir)
        self.annotation_file = Path(annotation_file)
        self.transform = transform
        self.train = train
        self.skipped = SkipCounter()
        coco = load_coco(annotation_file)
        self.orphan_annotations = coco.counts["orphan_annotations"]  # on image ids 'images' lacks; ignored
        cat_ids = sorted(coco.getCatIds())
        self.label_to_cat_id = {label: cat_id for label, cat_id in enumerate(cat_ids, start=1)}
        self.cat_id_to_label = {cat_id: label for label, cat_id in self.label_to_cat_id.items()}
        self.class_names = ["__background__"] + [coco.cats[cat_id]["name"] for cat_id in cat_ids]
        self._index(coco)

    @property
    def num_classes(self) -> int:
        """Foreground classes K (labels run 1..K)."""
        return len(self.class_names) - 1

    def _index(self, coco: COCO) -> None:
        self.crowd_boxes = self.clipped_boxes = self.dropped_boxes = self.images_without_boxes = 0
        image_ids, file_names, offsets = [], [], [0]
        # filled in place: a Python list of 1.5 M boxes would cost ~300 MB more at the peak (COCO-sized files)
        boxes = np.empty((len(coco.anns), 4), dtype=np.float32)
        labels = np.empty(len(coco.anns), dtype=np.int64)
        for image_id in sorted(coco.getImgIds()):
            record = coco.imgs[image_id]
            image_boxes, image_labels = self._usable_boxes(coco.imgToAnns[image_id], record)
            if not image_boxes:
                self.images_without_boxes += 1
                if self.train:
                    continue
            image_ids.append(image_id)
            file_names.append(record["file_name"])
            start, stop = offsets[-1], offsets[-1] + len(image_boxes)
            if image_boxes:
                boxes[start:stop] = image_boxes
                labels[start:stop] = image_labels
            offsets.append(stop)
        self._image_ids = np.asarray(image_ids, dtype=np.int64)
        self._file_names = np.asarray(file_names, dtype=str)
        self._boxes = boxes[: offsets[-1]].copy()
        self._labels = labels[: offsets[-1]].copy()
        self._offsets = np.asarray(offsets, dtype=np.int64)
        boxes = self._boxes
        log.info(
            "%s: %d images (%d without boxes%s), %d boxes; %d crowd ignored, %d clipped, %d dropped",
            self.annotation_file, len(image_ids), self.images_without_boxes,
            ", dropped for training" if self.train else "", len(boxes), self.crowd_boxes,
            self.clipped_boxes, self.dropped_boxes,
        )  # fmt: skip
        if self.dropped_boxes:
            log.warning("%s: dropped %d degenerate boxes", self.annotation_file, self.dropped_boxes)

    def _usable_boxes(self, annotations: list[dict], image: dict) -> tuple[list[list[float]], list[int]]:
        """Non-crowd boxes of one image as xyxy clipped to the image; updates the hygiene counters."""
        width, height = image["width"], image["height"]
        boxes, labels = [], []
        for ann in annotations:
            if ann.get("iscrowd", 0):
                self.crowd_boxes += 1
                continue
            if ann["category_id"] not in self.cat_id_to_label:
                raise ValueError(
                    f"{self.annotation_file}: annotation {ann.get('id')} names unknown category "
                    f"{ann['category_id']}"
                )
            bbox = ann.get("bbox")
            if not (isinstance(bbox, list) and len(bbox) == 4 and np.isfinite(bbox).all()):
                raise ValueError(f"{self.annotation_file}: annotation {ann.get('id')} has bad bbox {bbox!r}")
            x, y, w, h = bbox
            box = [min(max(x, 0), width), min(max(y, 0), height), min(max(x + w, 0), width),
                   min(max(y + h, 0), height)]  # fmt: skip
            if box[2] - box[0] < 1 or box[3] - box[1] < 1:
                self.dropped_boxes += 1
                continue
            self.clipped_boxes += box != [x, y, x + w, y + h]
            boxes.append(box)
            labels.append(self.cat_id_to_label[ann["category_id"]])
        return boxes, labels

    def __len__(self) -> int:
        return len(self._image_ids)

    def _image_path(self, index: int) -> Path:
        return self.image_dir / str(self._file_names[index])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        index, image = read_first_readable(self._image_path, index, len(self), self.skipped)
        start, stop = self._offsets[index], self._offsets[index + 1]
        boxes, labels = self._boxes[start:stop], self._labels[start:stop]
        orig_size = (int(image.shape[0]), int(image.shape[1]))
        if self.transform is not None:
            out = self.transform(image=image, bboxes=boxes, labels=labels)
            image = out["image"]
            boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
            labels = np.asarray(out["labels"], dtype=np.int64)
        target = {
            "boxes": torch.tensor(boxes, dtype=torch.float32),  # a copy: models may edit targets in place
            "labels": torch.tensor(labels, dtype=torch.int64),
            "image_id": int(self._image_ids[index]),
            "orig_size": orig_size,
        }
        return to_model_input(image), target


def detection_collate(batch: list[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    """Images and targets as lists: box counts differ per image (torchvision detection convention)."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


class CocoDataModule(TaskDataModule):
    """COCO-format train/val folders, or synth-shapes generated on first use.

    With `root`, images are read from `root/<split>` and annotations from
    `root/annotations/instances_<split>.json` (COCO 2017: `train_split="train2017"`); explicit
    paths override. With `synthetic_images > 0` and no annotations under `root`, synth-shapes is
    written there first; a matching earlier generation is reused, a real dataset is never overwritten.
    """

    def __init__(
        self,
        *,
        root: str | None = None,
        train_images: str | None = None,
        train_annotations: str | None = None,
        val_images: str | None = None,
        val_annotations: str | None = None,
        train_split: str = "train",
        val_split: str = "val",
        image_size: int = 300,
        batch_size: int = 32,
        num_workers: int = DEFAULT_NUM_WORKERS,
        synthetic_images: int = 0,
        synthetic_image_size: int = 320,
        random_crop: bool = True,
        augment: list[dict] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        self.save_hyperparameters()
        if synthetic_images > 0 and (root is None or train_split != "train" or val_split != "val"):
            raise ValueError("synthetic_images needs `root` and the default splits (train, val)")
        base = Path(root) if root is not None else None
        self.train_images = self._path(train_images, base, train_split)
        self.train_annotations = self._path(
            train_annotations, base, f"annotations/instances_{train_split}.json"
        )
        self.val_images = self._path(val_images, base, val_split)
        self.val_annotations = self._path(val_annotations, base, f"annotations/instances_{val_split}.json")
        self.image_size = image_size
        self.synthetic_images = synthetic_images
        self.synthetic_image_size = (synthetic_image_size, synthetic_image_size)
        self.random_crop = random_crop
        self.augment = augment
        self.root = base
        self.train_set: CocoDetection | None = None
        self.val_set: CocoDetection | None = None

    @staticmethod
    def _path(explicit: str | None, base: Path | None, relative: str) -> Path:
        if explicit is not None:
            return Path(explicit)
        if base is None:
            raise ValueError(f"give `root` or an explicit path for {relative}")
        return base / relative

    @property
    def val_annotation_file(self) -> Path:
        """The ground truth that `metrics.evaluate_coco` scores validation predictions against."""
        return self.val_annotations

    def prepare_data(self) -> None:
        if self.synthetic_images <= 0 or synth_marker_matches(
            self.root, images=self.synthetic_images, seed=self.seed, image_size=self.synthetic_image_size
        ):
            return
        if self.val_annotations.is_file() and not (self.root / MARKER_FILE).is_file():
            log.info("%s holds annotations not made by synth-shapes; using them as they are", self.root)
            return
        write_synth_shapes(
            self.root, images=self.synthetic_images, seed=self.seed, image_size=self.synthetic_image_size
        )

    def _validation_set(self) -> CocoDetection:
        """Built on first use: the model needs its classes and id mapping before `setup` runs."""
        if self.val_set is None:
            self.prepare_data()
            self.val_set = CocoDetection(
                self.val_images, self.val_annotations, transform=detection_eval(self.image_size)
            )
        return self.val_set

    @property
    def num_classes(self) -> int:
        return self._validation_set().num_classes

    @property
    def label_to_cat_id(self) -> dict[int, int]:
        return self._validation_set().label_to_cat_id

    @property
    def class_names(self) -> list[str]:
        return self._validation_set().class_names

    def setup(self, stage: str | None = None) -> None:
        self._validation_set()
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = CocoDetection(
                self.train_images,
                self.train_annotations,
                transform=detection_train(
                    self.image_size, seed=self.seed, random_crop=self.random_crop, augment=self.augment
                ),
                train=True,
            )
            if self.train_set.label_to_cat_id != self.val_set.label_to_cat_id:
                raise ValueError(
                    f"{self.train_annotations} and {self.val_annotations} list different categories"
                )

    def train_dataloader(self) -> DataLoader:
        return self.loader(self.train_set, train=True, collate_fn=detection_collate)

    def val_dataloader(self) -> DataLoader:
        return self.loader(self._validation_set(), collate_fn=detection_collate)

    # COCO's test-dev has no public ground truth: `test` and `predict` run on the evaluation split,
    # which `val_images`/`val_annotations` (or `val_split`) point at.
    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        return self.val_dataloader()
