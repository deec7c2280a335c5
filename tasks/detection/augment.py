"""Box-safe image pipelines for detection (albumentations, boxes in pascal_voc pixels).

Training follows SSD (Liu et al. 2016, §2.2) as the TF Object Detection API configures it: photometric
distortion, the IoU-constrained random crop, horizontal flip, then a square resize to the model input.
albumentations 2.0.8 has no IoU-constrained crop (`RandomSizedBBoxSafeCrop` keeps every box,
`AtLeastOneBBoxRandomCrop` has no IoU floor), so `SSDRandomCrop` below is a small custom transform.
Boxes that end up mostly outside a crop are dropped by `min_visibility`; the rest are clipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import albumentations as A
import numpy as np
from albumentations.augmentations.crops.transforms import BaseCrop

from tasks.common.transforms import build_augmentation

SSD_MIN_IOUS = (None, 0.1, 0.3, 0.5, 0.7, 0.9)  # None: keep the whole image
MIN_VISIBILITY = 0.3


class SSDRandomCrop(BaseCrop):
    """SSD's random crop: the crop must overlap some box by at least a randomly chosen IoU.

    Each call picks a minimum IoU from `min_ious` (None keeps the image whole), then tries up to
    `max_trials` crops with sides in `scale` of the image and aspect ratio in `aspect_ratio`.
    A crop is accepted when it contains the centre of at least one box and its IoU with such a box
    reaches the minimum (torchvision's `RandomIoUCrop` rule). If no trial succeeds the image is kept whole.
    """

    def __init__(
        self,
        *,
        min_ious: Sequence[float | None] = SSD_MIN_IOUS,
        scale: tuple[float, float] = (0.3, 1.0),
        aspect_ratio: tuple[float, float] = (0.5, 2.0),
        max_trials: int = 40,
        p: float = 1.0,
    ) -> None:
        super().__init__(p=p)
        self.min_ious = tuple(min_ious)
        self.scale = scale
        self.aspect_ratio = aspect_ratio
        self.max_trials = max_trials

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        whole = {"crop_coords": (0, 0, width, height)}
        boxes = np.asarray(data.get("bboxes", np.zeros((0, 4))), dtype=np.float64)[:, :4]
        min_iou = self.min_ious[self.py_random.randrange(len(self.min_ious))]
        if min_iou is None or len(boxes) == 0:
            return whole
        boxes = boxes * [width, height, width, height]  # albumentations hands boxes over normalised
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        box_areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        for _ in range(self.max_trials):
            crop_w = self.py_random.uniform(*self.scale) * width
            crop_h = self.py_random.uniform(*self.scale) * height
            if not self.aspect_ratio[0] <= crop_w / crop_h <= self.aspect_ratio[1]:
                continue
            left = self.py_random.uniform(0, width - crop_w)
            top = self.py_random.uniform(0, height - crop_h)
            crop = np.array([left, top, left + crop_w, top + crop_h])
            inside = (
                (centres[:, 0] > crop[0]) & (centres[:, 0] < crop[2])
                & (centres[:, 1] > crop[1]) & (centres[:, 1] < crop[3])
            )  # fmt: skip
            if not inside.any():
                continue
            ix = np.clip(np.minimum(boxes[:, 2], crop[2]) - np.maximum(boxes[:, 0], crop[0]), 0, None)
            iy = np.clip(np.minimum(boxes[:, 3], crop[3]) - np.maximum(boxes[:, 1], crop[1]), 0, None)
            iou = ix * iy / (box_areas + crop_w * crop_h - ix * iy)
            if iou[inside].max() >= min_iou:
                x0, y0 = int(left), int(top)
                return {"crop_coords": (x0, y0, max(x0 + 1, int(crop[2])), max(y0 + 1, int(crop[3])))}
        return whole

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("min_ious", "scale", "aspect_ratio", "max_trials")


def _bbox_params() -> A.BboxParams:
    return A.BboxParams(
        format="pascal_voc",
        label_fields=["labels"],
        min_visibility=MIN_VISIBILITY,
        min_width=1,
        min_height=1,
        clip=True,
    )


def detection_train(
    size: int, *, seed: int | None = None, random_crop: bool = True, augment: list[dict] | None = None
) -> A.Compose:
    """Training augmentation ending in a `size` x `size` image; call with image, bboxes, labels.

    `augment` (a recipe's `data.augment`) replaces SSD's default pipeline, `ssd_train`; the boxes
    follow every transform, and the image is resized to `size` after them.
    """
    return build_augmentation(
        augment,
        partial(ssd_train, size, seed=seed, random_crop=random_crop),
        seed=seed,
        then=[A.Resize(height=size, width=size)],
        bbox_params=_bbox_params(),
    )


def ssd_train(size: int, *, seed: int | None = None, random_crop: bool = True) -> A.Compose:
    """SSD's photometric distortion, IoU crop and flip (TF's ssd_mobilenet_v1_coco).

    `random_crop=False` drops the IoU crop: on a set whose train and val images share one framing
    (synth-shapes) zooming in only teaches scales that never occur, and short runs converge faster.
    """
    crop = [SSDRandomCrop()] if random_crop else []
    return A.Compose(
        [
            A.ColorJitter(brightness=0.125, contrast=0.5, saturation=0.5, hue=0.05, p=0.5),
            *crop,
            A.HorizontalFlip(p=0.5),
            A.Resize(height=size, width=size),
        ],
        bbox_params=_bbox_params(),
        seed=seed,
    )


def detection_eval(size: int) -> A.Compose:
    """Square resize only, so predictions map back to the original image by a per-axis scale."""
    return A.Compose([A.Resize(height=size, width=size)], bbox_params=_bbox_params())
