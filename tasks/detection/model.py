"""The detection network: SSD or Faster R-CNN on a MobileNet, built from the recipe's options.

The parts live beside this file (`ssd.py`, `faster_rcnn.py`, `anchors.py`, one architecture each, as
torchvision lays out its detectors); this module is what the task module and tools build from.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from torch import nn

from backbone import MobileNetV1
from tasks.common.config import as_dataclass
from tasks.detection.faster_rcnn import TF_ANCHOR_SIZES, faster_rcnn_mobilenet
from tasks.detection.ssd import EXTRA_MIN_DEPTH, SSD_END_POINTS, HeadKind, ssd_mobilenet

Architecture = Literal["ssd", "frcnn"]


@dataclass
class SSDOptions:
    """Knobs of `ssd.ssd_mobilenet` beyond size and classes; defaults are TF's ssd_mobilenet_v1_coco."""

    min_scale: float = 0.2
    max_scale: float = 0.95
    extra_min_depth: int = EXTRA_MIN_DEPTH
    score_thresh: float = 0.01
    nms_thresh: float = 0.6
    detections_per_img: int = 100
    topk_candidates: int = 200
    iou_thresh: float = 0.5
    head: HeadKind = "conv1x1"
    end_points: tuple[str, ...] = SSD_END_POINTS
    reduce_lowest_layer: bool = True
    lowest_layer_scale: float = 0.1


@dataclass
class FasterRCNNOptions:
    """Knobs of `faster_rcnn.faster_rcnn_mobilenet`; the shorter image side is the module's `image_size`."""

    max_size: int = 1024
    anchor_sizes: tuple[int, ...] = TF_ANCHOR_SIZES
    crop_size: int = 14
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 300
    rpn_batch_size_per_image: int = 256
    box_batch_size_per_image: int = 64
    box_score_thresh: float = 0.01
    box_nms_thresh: float = 0.6
    box_detections_per_img: int = 100


def build_detector(
    *,
    architecture: Architecture,
    body: MobileNetV1,
    num_classes: int,
    image_size: int,
    ssd: SSDOptions | dict | None = None,
    frcnn: FasterRCNNOptions | dict | None = None,
) -> nn.Module:
    """A torchvision-style detector (`model(images)` -> detections; `model(images, targets)` -> losses)."""
    if architecture == "ssd":
        options = dataclasses.asdict(as_dataclass(SSDOptions, ssd))
        return ssd_mobilenet(body=body, num_classes=num_classes, image_size=image_size, **options)
    if architecture == "frcnn":
        options = dataclasses.asdict(as_dataclass(FasterRCNNOptions, frcnn))
        return faster_rcnn_mobilenet(body=body, num_classes=num_classes, min_size=image_size, **options)
    raise ValueError(f"architecture must be 'ssd' or 'frcnn', got {architecture!r}")
